//! Integration tests of the site data loader and the synthetic generator: determinism, round trips
//! (PNG and DICOM), every bad-input case excluded with its named error, the deid-data DICOM fixtures,
//! stratified splits, and the oracle AUCs of the site profiles.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

use fedlnm_shared::data::{
    self, CropFractions, LoadOptions, PatientError, Preprocess, image::to_tensor, stratified_k_fold,
    stratified_split,
};
use fedlnm_shared::synth::{self, OutputFormat, PROFILE_NAMES, SiteProfile, SynthConfig};
use std::path::{Path, PathBuf};

fn config(site: &str, n_patients: usize, format: OutputFormat, profile: &str) -> SynthConfig {
    SynthConfig {
        site: site.to_owned(),
        n_patients,
        seed: 7,
        profile: SiteProfile::named(profile).unwrap(),
        format,
        image_size: 64,
    }
}

fn options() -> LoadOptions {
    LoadOptions {
        preprocess: Preprocess {
            size: 32,
            crop: CropFractions::SYNTHETIC,
        },
        require_labels: true,
    }
}

fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(all_files(&path));
        } else {
            files.push((
                path.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&path).unwrap(),
            ));
        }
    }
    files.sort();
    files
}

#[test]
fn same_seed_gives_byte_identical_sites_and_another_seed_does_not() {
    for format in [OutputFormat::Png, OutputFormat::Dicom] {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let cfg = config("S1", 24, format, "community");
        synth::write_site(&cfg, a.path()).unwrap();
        synth::write_site(&cfg, b.path()).unwrap();
        synth::write_site(
            &SynthConfig {
                seed: 8,
                ..cfg.clone()
            },
            c.path(),
        )
        .unwrap();
        let (files_a, files_b, files_c) = (all_files(a.path()), all_files(b.path()), all_files(c.path()));
        assert_eq!(
            files_a.len(),
            24 + 2,
            "manifest, summary and one image per patient"
        );
        assert!(
            files_a == files_b,
            "{format:?}: same seed must give identical bytes"
        );
        assert!(files_a != files_c, "{format:?}: another seed must differ");
    }
}

#[test]
fn loader_round_trips_what_the_generator_wrote_png_and_dicom() {
    let cfg_png = config("S2", 30, OutputFormat::Png, "tertiary");
    let cfg_dcm = config("S2", 30, OutputFormat::Dicom, "tertiary");
    let (png_dir, dcm_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    synth::write_site(&cfg_png, png_dir.path()).unwrap();
    synth::write_site(&cfg_dcm, dcm_dir.path()).unwrap();
    let cohort = synth::generate_cohort(&cfg_png);
    let png = data::load_site("S2", png_dir.path(), &options()).unwrap();
    let dcm = data::load_site("S2", dcm_dir.path(), &options()).unwrap();
    for site in [&png, &dcm] {
        assert_eq!(
            (site.flow.read, site.flow.included, site.flow.n_excluded()),
            (30, 30, 0),
            "{}",
            site.flow
        );
    }
    for ((generated, from_png), from_dcm) in cohort.patients.iter().zip(&png.patients).zip(&dcm.patients) {
        assert_eq!(from_png.record.patient_id, generated.record.patient_id);
        assert_eq!(from_png.record.clinical, generated.record.clinical);
        assert_eq!(from_png.record.report, generated.record.report);
        assert_eq!(from_png.record.labels, generated.record.labels);
        let expected = to_tensor(&synth::render_patient(generated, &cfg_png), &options().preprocess).unwrap();
        assert_eq!(from_png.images, vec![expected.clone()], "PNG pixels are lossless");
        assert_eq!(from_dcm.images, vec![expected], "DICOM pixels are lossless");
        assert_eq!(from_png.images[0].data.len(), 3 * 32 * 32);
    }
}

/// Rewrites one cell of the manifest (by patient row index and column name).
fn set_cell(dir: &Path, row: usize, column: &str, value: &str) {
    let file = dir.join("patients.csv");
    let mut reader = csv::Reader::from_path(&file).unwrap();
    let headers = reader.headers().unwrap().clone();
    let mut rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    let index = headers.iter().position(|h| h == column).unwrap();
    rows[row][index] = value.to_owned();
    let mut writer = csv::Writer::from_path(&file).unwrap();
    writer.write_record(&headers).unwrap();
    rows.iter().for_each(|r| writer.write_record(r).unwrap());
    writer.flush().unwrap();
}

fn image_of(dir: &Path, row: usize) -> PathBuf {
    dir.join("images").join(format!("S3-{:05}.png", row + 1))
}

#[test]
fn every_bad_input_is_excluded_with_its_named_error_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("S3", 20, OutputFormat::Png, "rural");
    synth::write_site(&cfg, dir.path()).unwrap();
    let d = dir.path();
    // Row 0: missing image file.
    std::fs::remove_file(image_of(d, 0)).unwrap();
    // Row 1: truncated PNG.
    let bytes = std::fs::read(image_of(d, 1)).unwrap();
    std::fs::write(image_of(d, 1), &bytes[..bytes.len() / 3]).unwrap();
    // Row 2: a DICOM without pixel data (under the PNG name: the loader sniffs the content).
    let object = dicom_object::InMemDicomObject::from_element_iter([dicom_core::DataElement::new(
        dicom_dictionary_std::tags::MODALITY,
        dicom_core::VR::CS,
        dicom_core::PrimitiveValue::from("US"),
    )]);
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(dicom_dictionary_std::uids::ULTRASOUND_IMAGE_STORAGE)
        .media_storage_sop_instance_uid("2.25.99");
    object
        .with_meta(meta)
        .unwrap()
        .write_to_file(image_of(d, 2))
        .unwrap();
    // Rows 3..: manifest faults.
    set_cell(d, 3, "margin", "spiky");
    set_cell(d, 4, "max_diameter_mm", "12,5mm");
    set_cell(d, 5, "lnm", "2");
    set_cell(d, 6, "patient_id", "S3-00006"); // duplicates row 5's id (line 7)
    set_cell(d, 7, "age_years", "");
    set_cell(d, 8, "ajcc_stage", "IVB"); // the age/T/N/M give another stage
    // Row 9: inference-only patient (no labels) while this run requires labels.
    for column in data::manifest::LABEL_COLUMNS {
        set_cell(d, 9, column, "");
    }
    // Row 10: an image file that is plain text.
    std::fs::write(image_of(d, 10), b"not an image").unwrap();

    let site = data::load_site("S3", d, &options()).unwrap();
    let expected: &[(u64, &str, &[&str])] = &[
        (
            2,
            "image file missing",
            &["S3-00001.png", "does not exist", "line 2"],
        ),
        (
            3,
            "image unreadable or corrupt",
            &["S3-00002.png", "corrupt or truncated PNG", "line 3"],
        ),
        (4, "DICOM without pixel data", &["S3-00003.png", "no pixel data"]),
        (
            5,
            "unknown category",
            &["line 5", "'margin'", "spiky", "lobulated_irregular"],
        ),
        (6, "not a number", &["line 6", "'max_diameter_mm'", "12,5mm"]),
        (7, "value out of range", &["line 7", "'lnm'", "0 or 1"]),
        (
            8,
            "duplicated patient id",
            &["line 8", "S3-00006", "first seen on line 7"],
        ),
        (9, "missing value", &["line 9", "'age_years'"]),
        (
            10,
            "inconsistent pathology labels",
            &["line 10", "ajcc_stage is IVB"],
        ),
        (11, "pathology labels missing", &["line 11", "S3-00010"]),
        (
            12,
            "image unreadable or corrupt",
            &["S3-00011.png", "neither PNG, JPEG nor DICOM"],
        ),
    ];
    assert_eq!(site.exclusions.len(), expected.len(), "{:#?}", site.exclusions);
    for (exclusion, (line, reason, needles)) in site.exclusions.iter().zip(expected) {
        let message = exclusion.error.to_string();
        assert_eq!(exclusion.line, *line, "{message}");
        assert_eq!(exclusion.error.reason(), *reason, "{message}");
        for needle in *needles {
            assert!(
                message.contains(needle),
                "'{message}' does not mention '{needle}'"
            );
        }
        if !matches!(exclusion.error, PatientError::Image { .. }) {
            assert!(message.contains("patients.csv"), "{message}");
        }
    }
    assert_eq!(
        (site.flow.read, site.flow.included, site.flow.n_excluded()),
        (20, 9, 11)
    );
    assert_eq!(site.flow.excluded["image unreadable or corrupt"], 2);
    let table = site.flow.to_string();
    assert!(
        table.contains("| read from the manifest | 20 |") && table.contains("| included | 9 |"),
        "{table}"
    );
}

#[test]
fn a_ragged_row_is_excluded_and_a_missing_column_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    synth::write_site(&config("S4", 12, OutputFormat::Png, "tertiary"), dir.path()).unwrap();
    let file = dir.path().join("patients.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}S4-99999,broken\n")).unwrap();
    let site = data::load_site("S4", dir.path(), &options()).unwrap();
    assert_eq!((site.flow.read, site.flow.included), (13, 12));
    assert_eq!(site.exclusions[0].error.reason(), "malformed manifest row");

    let header_without_sex = text.replacen(",sex,", ",gender,", 1);
    std::fs::write(&file, header_without_sex).unwrap();
    let error = data::load_site("S4", dir.path(), &options()).unwrap_err();
    assert!(error.to_string().contains("no column named 'sex'"), "{error}");
    let missing = data::load_site("S4", &dir.path().join("nowhere"), &options()).unwrap_err();
    assert!(
        missing.to_string().contains("cannot read the manifest"),
        "{missing}"
    );
}

/// The deid-data package's ultrasound DICOMs, located through Python (`pip install deid-data`).
fn deid_ultrasounds() -> PathBuf {
    let python = std::env::var("FEDLNM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import deid_data,os;print(os.path.dirname(deid_data.__file__))",
        ])
        .output()
        .expect("cannot start python3 (set FEDLNM_PYTHON)");
    assert!(
        output.status.success(),
        "deid-data is not installed: pip install deid-data\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
        .join("data")
        .join("ultrasounds")
}

#[test]
fn real_ultrasound_dicoms_from_deid_data_load() {
    let dir = deid_ultrasounds();
    let grey = data::image::read_rgb(&dir.join("GREYSCALE_IMAGE.dcm"), 0).unwrap();
    assert_eq!(grey.dimensions(), (1024, 768));
    assert!(
        grey.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]),
        "MONOCHROME2 becomes equal RGB"
    );
    let rgb = data::image::read_rgb(&dir.join("RGB_IMAGE.dcm"), 0).unwrap();
    assert_eq!(rgb.dimensions(), (1024, 768));
    assert!(
        rgb.pixels().any(|p| p.0[0] != p.0[2]),
        "an RGB ultrasound has colour somewhere"
    );
    let multi = dir.join("ultrasound-multiframe.dcm");
    let frame = data::image::read_rgb(&multi, 12).unwrap();
    assert_eq!(frame.dimensions(), (800, 600));
    let first = data::image::read_rgb(&multi, 0).unwrap();
    assert_ne!(frame, first, "frames differ");
    let mean = frame.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / (800.0 * 600.0);
    assert!(
        mean > 5.0 && mean < 200.0,
        "planar configuration 1 de-interleaved into a plausible picture: {mean}"
    );
    let error = data::image::read_rgb(&multi, 30).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("frame 30 requested but it has 30 frame(s)"),
        "{error}"
    );
    let tensor = data::image::load_tensor(
        &dir.join("RGB_IMAGE.dcm"),
        0,
        &Preprocess {
            size: 64,
            crop: CropFractions::NONE,
        },
    )
    .unwrap();
    assert_eq!(tensor.data.len(), 3 * 64 * 64);
    assert!(tensor.data.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn stratified_split_and_k_fold_keep_proportions_and_cover_everyone() {
    let labels: Vec<bool> = (0..203).map(|i| i % 3 == 0).collect();
    let positives = labels.iter().filter(|&&l| l).count();
    let split = stratified_split(&labels, 0.2, 11).unwrap();
    let mut all: Vec<usize> = split.train.iter().chain(&split.validation).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..labels.len()).collect::<Vec<_>>(),
        "disjoint and complete"
    );
    let validation_positives = split.validation.iter().filter(|&&i| labels[i]).count();
    assert_eq!(validation_positives, (0.2 * positives as f64).round() as usize);
    assert_eq!(
        split.validation.len() - validation_positives,
        (0.2 * (labels.len() - positives) as f64).round() as usize
    );
    assert_eq!(split, stratified_split(&labels, 0.2, 11).unwrap(), "seeded");
    assert_ne!(split, stratified_split(&labels, 0.2, 12).unwrap());

    let folds = stratified_k_fold(&labels, 5, 3).unwrap();
    let mut validated = vec![0; labels.len()];
    for fold in &folds {
        fold.validation.iter().for_each(|&i| validated[i] += 1);
        assert_eq!(fold.train.len() + fold.validation.len(), labels.len());
        let fold_positives = fold.validation.iter().filter(|&&i| labels[i]).count();
        assert!(
            fold_positives.abs_diff(positives / 5) <= 1,
            "{fold_positives} of {positives}"
        );
        assert!(fold.validation.len().abs_diff(labels.len() / 5) <= 1);
    }
    assert!(
        validated.iter().all(|&count| count == 1),
        "every patient validated exactly once"
    );
    assert!(stratified_k_fold(&labels, 1, 3).is_err());
    assert!(stratified_split(&labels, 1.0, 3).is_err());
}

#[test]
fn oracle_aucs_sit_where_real_studies_find_them_and_sites_differ() {
    let mut rates = Vec::new();
    for name in PROFILE_NAMES {
        let cfg = SynthConfig {
            n_patients: 4000,
            ..config("S5", 1, OutputFormat::Png, name)
        };
        let cohort = synth::generate_cohort(&cfg);
        let summary = synth::summarise(&cfg, &cohort).unwrap();
        let oracle = summary.oracle_auc;
        println!("{name}: LNM rate {:.3}, oracle {oracle:?}", summary.lnm_rate);
        assert!((0.85..=0.92).contains(&oracle.multimodal), "{name}: {oracle:?}");
        assert!(
            (0.65..=0.75).contains(&oracle.report_clinical),
            "{name}: {oracle:?}"
        );
        assert!(
            oracle.image < oracle.multimodal && oracle.report_clinical < oracle.multimodal,
            "{name}: {oracle:?}"
        );
        // The referral centre is the skewed one on purpose (about 60% LNM).
        let expected = if *name == "referral" {
            0.55..=0.7
        } else {
            0.25..=0.5
        };
        assert!(
            expected.contains(&summary.lnm_rate),
            "{name}: {}",
            summary.lnm_rate
        );
        rates.push(summary.lnm_rate);
        // The true model is public: its design matrix pairs with the labels, its odds ratios are clinical.md's.
        let (design, labels) = cohort.design();
        assert_eq!((design.len(), labels.len()), (4000, 4000));
        assert!((cohort.model.odds_ratio(synth::Covariate::Male) - 1.7).abs() < 1e-12);
        assert!((cohort.model.odds_ratio(synth::Covariate::CapsuleContactOver25) - 3.5).abs() < 1e-12);
    }
    assert!(
        rates[0] > rates[2] + 0.03,
        "LNM prevalence differs by site: {rates:?}"
    );
}
