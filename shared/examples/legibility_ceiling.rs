//! How far below the oracle the pictures alone put any model, on the external site (S4) of
//! `fedlnm-sim --design methods --patients N --seed S` (rural profile, seed S·1000 + 3, pictures at
//! 128 px read at 64): the oracle AUC beside the ceiling of a reader who is given the nodule's outline
//! and reads its latent aggressiveness from the 64-px grey levels, every other covariate at its true
//! value (`tests/reader`). The model's own gap is what lies below that ceiling.
//!
//! `cargo run --release -p fedlnm-shared --example legibility_ceiling -- [--patients N] SEED...`
#![allow(clippy::unwrap_used, clippy::expect_used)] // A measurement script: a panic names the failure.

#[path = "../tests/reader/mod.rs"]
mod reader;

use fedlnm_shared::stats::binary::auc_delong;
use fedlnm_shared::synth::{self, OutputFormat, SiteProfile, SynthConfig};

fn main() {
    let mut patients = 2000;
    let mut seeds = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--patients" {
            patients = args.next().and_then(|n| n.parse().ok()).expect("--patients N");
        } else {
            seeds.push(arg.parse::<u64>().expect("a seed is a whole number"));
        }
    }
    assert!(
        !seeds.is_empty(),
        "usage: legibility_ceiling [--patients N] SEED..."
    );
    println!("| seed | oracle (S4) | reader's ceiling | gap | read-out r |");
    println!("|---:|---:|---:|---:|---:|");
    for seed in seeds {
        let config = SynthConfig {
            site: "S4".into(),
            n_patients: patients,
            seed: seed.wrapping_mul(1000).wrapping_add(3),
            profile: SiteProfile::named("rural").expect("the rural profile"),
            format: OutputFormat::Png,
            image_size: 128,
        };
        let cohort = synth::generate_cohort(&config);
        let labels: Vec<bool> = cohort.patients.iter().map(|p| p.truth.lnm).collect();
        let truth: Vec<f64> = cohort.patients.iter().map(|p| p.truth.lnm_probability).collect();
        let (capped, r) = reader::reader_capped_probabilities(&cohort, &config);
        let auc = |scores: &[f64]| auc_delong(&labels, scores).unwrap().expect("both classes").auc;
        let (oracle, ceiling) = (auc(&truth), auc(&capped));
        println!(
            "| {seed} | {oracle:.3} | {ceiling:.3} | {:.3} | {r:.3} |",
            oracle - ceiling
        );
    }
}
