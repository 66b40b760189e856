//! Memory of AdaBN (`evaluate --adapt-normalisation`, and every round of a study with
//! `rounds.normalisation_statistics = "site"`): the process's peak resident memory while it
//! re-estimates the statistics, against its peak while it scores the same patients (the baseline,
//! measured in the same run), for a small and a four times larger site. The ratio must stay near 1
//! whatever the size: AdaBN's forward passes in training mode must leave no autodiff graph behind
//! (burn 0.21 frees one only in a backward pass; before the fix, AdaBN on 2,000 patients peaked at
//! 4.9 GB against 0.2 GB for scoring them).
//!
//! The peak of each step is `VmHWM` after resetting it to the resident memory
//! (`/proc/self/clear_refs`, Linux). Not a timed test: `cargo bench -p fedlnm-node --bench
//! adapt_memory` prints a markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // A benchmark: a panic is a failed run.

use fedlnm_model::train;
use fedlnm_node::commands::model::{LoadedExamples, load_examples};
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::host::{reset_peak_resident_memory, resident_memory};
use fedlnm_shared::model_config::{Modality, ModelConfig};
use fedlnm_shared::synth::{self, OutputFormat, SiteProfile, SynthConfig};

const SMALL: usize = 250;

/// The peak resident memory of this process while `work` runs, in bytes.
fn peak_during(work: impl FnOnce()) -> u64 {
    reset_peak_resident_memory()
        .expect("resetting the peak resident memory needs Linux's /proc/self/clear_refs");
    work();
    resident_memory(None).expect("reading /proc/self/status").peak
}

fn main() {
    let config = ModelConfig::tiny(Modality::Multimodal);
    let weights = train::initial_weights(&config, 1);
    let mut rows = Vec::new();
    for patients in [SMALL, 4 * SMALL] {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path();
        synth::write_site(
            &SynthConfig {
                site: "B1".to_owned(),
                n_patients: patients,
                seed: 7,
                profile: SiteProfile::named("community").unwrap(),
                format: OutputFormat::Png,
                image_size: 128,
            },
            site,
        )
        .unwrap();
        let LoadedExamples { examples, .. } = load_examples(site, &config, false, false).unwrap();
        let scoring = peak_during(|| {
            std::hint::black_box(
                train::predict(ComputeDevice::Cpu, &config, &weights, &examples, 32).unwrap(),
            );
        });
        let adapting = peak_during(|| {
            std::hint::black_box(
                train::adapt_normalisation(ComputeDevice::Cpu, &config, &weights, &examples, 0).unwrap(),
            );
        });
        rows.push((patients, scoring, adapting));
    }
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!("| patients | scoring: peak RSS (MB, baseline) | AdaBN: peak RSS (MB) | AdaBN / scoring |");
    println!("| ---: | ---: | ---: | ---: |");
    for &(patients, scoring, adapting) in &rows {
        println!(
            "| {patients} | {:.0} | {:.0} | {:.2} |",
            mb(scoring),
            mb(adapting),
            adapting as f64 / scoring as f64
        );
    }
    for (patients, scoring, adapting) in rows {
        assert!(
            adapting as f64 <= 1.5 * scoring as f64,
            "AdaBN over {patients} patients peaked at {:.0} MB, scoring them at {:.0} MB: its forward \
             passes are leaving autodiff graphs behind",
            mb(adapting),
            mb(scoring)
        );
    }
}
