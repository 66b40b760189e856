//! The generator's image signal survives down-sampling to the small model input: a reader who knows
//! where the nodule is can read the latent aggressiveness (the largest image-borne effect of the true
//! LNM model) from a 64-px picture, so the oracle AUC is a ceiling a model can approach.
#![allow(clippy::unwrap_used)] // Test helpers: a panic is a failed test.

mod reader;

use fedlnm_shared::synth::{self, OutputFormat, SiteProfile, SynthConfig};
use reader::{correlation, least_squares_fit, nodule_measurements};

#[test]
fn aggressiveness_is_legible_in_a_64_pixel_picture_at_every_site_profile() {
    for (k, profile) in ["tertiary", "community", "rural"].into_iter().enumerate() {
        let config = SynthConfig {
            site: format!("L{k}"),
            n_patients: 150,
            seed: 11 + k as u64,
            profile: SiteProfile::named(profile).unwrap(),
            format: OutputFormat::Png,
            image_size: 128,
        };
        let cohort = synth::generate_cohort(&config);
        let (aggressiveness, measurements): (Vec<f64>, Vec<[f64; 6]>) = cohort
            .patients
            .iter()
            .filter_map(|p| Some((p.truth.aggressiveness, nodule_measurements(p, &config)?)))
            .unzip();
        assert!(
            aggressiveness.len() >= 140,
            "{profile}: only {} of 150 nodules visible at 64 px",
            aggressiveness.len()
        );
        // A linear read-out of the measurements (fitted in sample: a ceiling for this simple reader).
        let read = least_squares_fit(&measurements, &aggressiveness);
        let r = correlation(&aggressiveness, &read);
        eprintln!("{profile}: correlation of aggressiveness with its 64-px read-out {r:.3}");
        assert!(
            r > 0.85,
            "{profile}: aggressiveness barely legible at 64 px (r = {r:.3})"
        );
    }
}
