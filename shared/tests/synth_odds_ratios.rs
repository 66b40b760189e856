//! The statistics engine's logistic regression recovers the synthetic generator's true odds ratios on
//! a 5,000-patient cohort: each true coefficient lies inside its estimated 95% confidence interval.
//!
//! Ten covariates are tested at once, so the intervals are simultaneous 95% intervals (Bonferroni:
//! z = Φ⁻¹(1 − 0.025/10)); marginal 95% intervals would miss at least one true value in about 40% of
//! cohorts by design. The estimate must also be close in absolute terms, so a vacuously wide interval
//! cannot pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_shared::stats::design::{DesignSpec, TermColumn, TermSpec};
use fedlnm_shared::stats::logistic::{self, FitOptions, FitStatus};
use fedlnm_shared::synth::cohort::Covariate;
use fedlnm_shared::synth::profile::SiteProfile;
use fedlnm_shared::synth::{OutputFormat, SynthConfig, generate_cohort};

/// Φ⁻¹(1 − 0.05/20): the two-sided simultaneous 95% quantile for 10 coefficients.
const Z_SIMULTANEOUS: f64 = 2.807_033_768_343_811;

#[test]
fn logistic_regression_recovers_the_generator_odds_ratios() {
    for (profile, seed) in [("tertiary", 11), ("rural", 12)] {
        let config = SynthConfig {
            site: format!("OR-{profile}"),
            n_patients: 5000,
            seed,
            profile: SiteProfile::named(profile).unwrap(),
            format: OutputFormat::Png,
            image_size: 64,
        };
        let cohort = generate_cohort(&config);
        let (rows, lnm) = cohort.design();
        let terms: Vec<TermSpec> = Covariate::ALL
            .iter()
            .map(|c| TermSpec::numeric(c.name()))
            .collect();
        let spec = DesignSpec::new(terms).unwrap();
        let columns: Vec<Vec<f64>> = (0..Covariate::ALL.len())
            .map(|j| rows.iter().map(|r| r[j]).collect())
            .collect();
        let column_refs: Vec<TermColumn<'_>> = columns.iter().map(|c| TermColumn::Numeric(c)).collect();
        let design = spec.build(rows.len(), &column_refs).unwrap();
        let fit = logistic::fit(&design, &lnm, FitOptions::default()).unwrap();
        assert_eq!(fit.status, FitStatus::Ok, "{profile}");

        let mut marginal_misses = Vec::new();
        let truth = std::iter::once(("const", cohort.model.intercept)).chain(
            cohort
                .model
                .coefficients
                .iter()
                .map(|(c, beta)| (c.name(), *beta)),
        );
        for (estimate, (name, true_beta)) in fit.terms.iter().zip(truth) {
            assert_eq!(estimate.name, name);
            let (coef, se) = (estimate.coef.unwrap(), estimate.se.unwrap());
            if name != "const" {
                assert!(
                    (coef - true_beta).abs() <= Z_SIMULTANEOUS * se,
                    "{profile}: {name}: true log-OR {true_beta:.3} outside {coef:.3} ± {:.3}",
                    Z_SIMULTANEOUS * se
                );
                assert!(
                    se < 0.2,
                    "{profile}: {name}: SE {se:.3} too wide to prove anything"
                );
                if (coef - true_beta).abs() > fedlnm_shared::stats::Z_95 * se {
                    marginal_misses.push(name);
                }
            }
        }
        // Under the model, about half a miss of the marginal 95% intervals is expected per cohort.
        assert!(
            marginal_misses.len() <= 2,
            "{profile}: marginal 95% CIs missed {marginal_misses:?}"
        );
    }
}
