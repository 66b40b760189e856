//! Throughput of the synthetic generator and the site loader (patients per second), PNG and DICOM,
//! against a baseline measured in the same run: raw PNG decoding of the same files. Prints a markdown
//! table. Not a timed test: run with `cargo bench -p fedlnm-node --bench data_throughput`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: a panic is a failed run.

use fedlnm_shared::data::{self, CropFractions, LoadOptions, Preprocess};
use fedlnm_shared::synth::{self, OutputFormat, SiteProfile, SynthConfig};
use std::time::Instant;

const PATIENTS: usize = 200;

fn main() {
    let mut rows = Vec::new();
    let png_dir = tempfile::tempdir().unwrap();
    let dcm_dir = tempfile::tempdir().unwrap();
    let config = |format| SynthConfig {
        site: "B1".to_owned(),
        n_patients: PATIENTS,
        seed: 7,
        profile: SiteProfile::named("community").unwrap(),
        format,
        image_size: 256,
    };
    let timed = |work: &mut dyn FnMut()| {
        let started = Instant::now();
        work();
        PATIENTS as f64 / started.elapsed().as_secs_f64()
    };
    // Baseline first needs files: generate PNG, then measure everything.
    let generate_png = timed(&mut || {
        synth::write_site(&config(OutputFormat::Png), png_dir.path()).unwrap();
    });
    let generate_dcm = timed(&mut || {
        synth::write_site(&config(OutputFormat::Dicom), dcm_dir.path()).unwrap();
    });
    let baseline = timed(&mut || {
        for entry in std::fs::read_dir(png_dir.path().join("images")).unwrap() {
            std::hint::black_box(image::open(entry.unwrap().path()).unwrap());
        }
    });
    rows.push(("raw PNG decode (baseline, image::open)", baseline));
    rows.push(("generate PNG site (256 px)", generate_png));
    rows.push(("generate DICOM site (256 px)", generate_dcm));
    for (size, name_png, name_dcm) in [
        (
            64,
            "load PNG site -> 64 px tensors",
            "load DICOM site -> 64 px tensors",
        ),
        (
            224,
            "load PNG site -> 224 px tensors",
            "load DICOM site -> 224 px tensors",
        ),
    ] {
        let options = LoadOptions {
            preprocess: Preprocess {
                size,
                crop: CropFractions::SYNTHETIC,
            },
            require_labels: true,
        };
        let png = timed(&mut || {
            let site = data::load_site("B1", png_dir.path(), &options).unwrap();
            assert_eq!(site.flow.included, PATIENTS);
        });
        let dcm = timed(&mut || {
            let site = data::load_site("B1", dcm_dir.path(), &options).unwrap();
            assert_eq!(site.flow.included, PATIENTS);
        });
        rows.push((name_png, png));
        rows.push((name_dcm, dcm));
    }
    println!("| step ({PATIENTS} patients, 1 thread) | patients/s | ratio to baseline |");
    println!("| --- | ---: | ---: |");
    for (name, rate) in rows {
        println!("| {name} | {rate:.0} | {:.2} |", rate / baseline);
    }
}
