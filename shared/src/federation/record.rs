//! What a site reports after scoring a global model, and what the aggregator commits for each round.
//! These are the files of the aggregator's state folder (`rounds/round-NNNN/round.json`) and the input
//! of the study report; they hold aggregate numbers only, never a patient-level value.

use super::{HISTOGRAM_BINS, ScoreHistogram, ScoringStatistics, SiteCohort, SiteCurves, StageConfusion};
use crate::config::SiteRole;
use serde::{Deserialize, Serialize};

/// One site's validation of one global model (statistics.md definitions, through the stats engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRoundMetrics {
    pub site: String,
    pub role: SiteRole,
    /// Validation patients scored (labelled).
    pub n_patients: u64,
    pub n_positive: u64,
    /// Pathologically confirmed LNM rate among them.
    pub lnm_rate: f64,
    /// AUC with its DeLong 95% CI; `None` without both classes.
    pub auc: Option<f64>,
    pub auc_ci_lower: Option<f64>,
    pub auc_ci_upper: Option<f64>,
    /// The AUC's DeLong variance (what the random-effects meta-analysis of the sites' AUCs weighs
    /// by); `None` with fewer than two patients of either class. Records written before sites
    /// reported it read as `None`.
    #[serde(default)]
    pub auc_variance: Option<f64>,
    pub youden_threshold: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub brier: f64,
    /// Calibration intercept and slope (logistic recalibration of logit(s), statistics.md); `None`
    /// unless that fit is `ok`.
    #[serde(default)]
    pub calibration_intercept: Option<f64>,
    #[serde(default)]
    pub calibration_slope: Option<f64>,
    /// The slope's SE (what the meta-analysis of the sites' slopes weighs by).
    #[serde(default)]
    pub calibration_slope_se: Option<f64>,
    /// Quadratic-weighted kappa of predicted vs pathological T, N and overall stage.
    pub kappa_t: Option<f64>,
    pub kappa_n: Option<f64>,
    pub kappa_stage: Option<f64>,
    /// Their large-sample SEs (Fleiss, Cohen & Everitt 1969), for the CIs κ ∓ z·SE; `None` where κ
    /// is, and in records written before sites reported them.
    #[serde(default)]
    pub kappa_t_se: Option<f64>,
    #[serde(default)]
    pub kappa_n_se: Option<f64>,
    #[serde(default)]
    pub kappa_stage_se: Option<f64>,
    /// The site's patient flow and the characteristics of its included patients (the node sends it
    /// with every report; `None` from a site that has not, and in older records).
    #[serde(default)]
    pub cohort: Option<SiteCohort>,
    /// The site's calibration groups and decision curve; `None` in older records.
    #[serde(default)]
    pub curves: Option<SiteCurves>,
    /// The normalisation statistics the site scored the model with (the node states it; the
    /// aggregator refuses metrics scored otherwise than the study's rule). `None` in records written
    /// before sites stated it, and in metrics computed outside a study.
    #[serde(default)]
    pub normalisation: Option<ScoringStatistics>,
}

/// What a node computes when it scores a model: the metrics it reports, and its class-conditional
/// score histogram on the study grid and its stage confusion matrices, which never leave the site on
/// their own: they go into the secure sum of the site's pool ([`PooledMetrics`]) and into the site's
/// own records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteValidation {
    pub metrics: SiteRoundMetrics,
    pub histogram: ScoreHistogram,
    /// Records written before the matrices were kept read as all zero.
    #[serde(default)]
    pub stage_confusion: StageConfusion,
}

/// The layout of a pool's secure sum of statistics (the names and shapes of the secure-aggregation
/// instance): the positive and the negative score histogram, [`HISTOGRAM_BINS`] counts each, then
/// the confusion matrices of T (7×7), N (3×3) and the overall stage (5×5), row-major.
pub const STATISTICS_TENSORS: [(&str, usize); 5] = [
    ("score_histogram.positive", HISTOGRAM_BINS),
    ("score_histogram.negative", HISTOGRAM_BINS),
    ("stage_confusion.t", 49),
    ("stage_confusion.n", 9),
    ("stage_confusion.stage", 25),
];

/// Every count of one site in [`STATISTICS_TENSORS`] adds up to at most this many times its
/// patients: once in the histograms, once in each of the three matrices.
pub const STATISTICS_COUNTS_PER_PATIENT: u64 = 4;

impl SiteValidation {
    /// The site's input to its pool's secure sum, in [`STATISTICS_TENSORS`] order.
    #[must_use]
    pub fn statistics(&self) -> [&[u64]; 5] {
        let [t, n, stage] = self.stage_confusion.matrices();
        [&self.histogram.positive, &self.histogram.negative, t, n, stage]
    }
}

/// A pool's decoded secure sum, split back into its histogram and its stage confusion matrices.
///
/// # Errors
/// A sum whose layout is not [`STATISTICS_TENSORS`], or whose matrices do not count the histogram's
/// patients, named.
pub fn pool_statistics(counts: Vec<Vec<u64>>) -> Result<(ScoreHistogram, StageConfusion), String> {
    if counts.len() != STATISTICS_TENSORS.len() {
        return Err(format!(
            "the sum has {} tensors, the statistics layout {}",
            counts.len(),
            STATISTICS_TENSORS.len()
        ));
    }
    let mut counts = counts.into_iter();
    let mut next = || counts.next().unwrap_or_default();
    let histogram = ScoreHistogram {
        positive: next(),
        negative: next(),
    };
    histogram.check().map_err(|error| error.to_string())?;
    let confusion = StageConfusion {
        t: next(),
        n: next(),
        stage: next(),
    };
    confusion
        .check(histogram.n_positive().saturating_add(histogram.n_negative()))
        .map_err(|error| error.to_string())?;
    Ok((histogram, confusion))
}

/// The pooled AUC across the sites of one role, from the secure sum of their score histograms: the
/// aggregator learns the sum over the pool, never one site's histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledMetrics {
    /// The sites whose histograms are in the sum.
    pub sites: Vec<String>,
    pub n_patients: u64,
    pub n_positive: u64,
    pub auc: Option<f64>,
    pub auc_ci_lower: Option<f64>,
    pub auc_ci_upper: Option<f64>,
    /// The pooled AUC's DeLong variance (absent in records written before it was kept).
    #[serde(default)]
    pub auc_variance: Option<f64>,
    /// Σ over `sites` of their score histograms (the secure sum; the pooled ROC curve and decision
    /// curve come from it).
    pub histogram: ScoreHistogram,
    /// Σ over `sites` of their stage confusion matrices (the same secure sum; the pooled κ of T, N
    /// and stage come from it). Absent in records written before the matrices were summed.
    #[serde(default)]
    pub stage_confusion: Option<StageConfusion>,
}

/// How the round's updates were combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregationKind {
    /// The aggregator saw each site's delta (plain FedAvg).
    Plain,
    /// Bonawitz secure aggregation: the aggregator saw only Σ n_k Δ_k and Σ n_k.
    Secure,
}

/// One committed round: `rounds/round-NNNN/round.json` next to `global.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub study: String,
    /// 0 is the initial model; round r ≥ 1 trained from version r − 1 and produced version r.
    pub round: u64,
    /// SHA-256 (hex) of `global.safetensors` of this round.
    pub model_digest: String,
    /// The digest of the model configuration (the same in every round of a study).
    pub model_config_digest: String,
    pub aggregation: AggregationKind,
    /// Training sites whose updates are in this model, and their total patient count Σ n_k.
    pub contributors: Vec<String>,
    pub total_samples: u64,
    /// Training sites invited but not in the sum (missed the deadline or dropped).
    pub dropped: Vec<String>,
    /// Seconds from the round's start to the aggregate, and to the commit.
    pub aggregation_seconds: f64,
    pub round_seconds: f64,
    /// RFC 3339 time of the commit.
    pub committed_at: String,
    /// Every site's validation of this round's model (round 0 included: the untrained baseline).
    pub sites: Vec<SiteRoundMetrics>,
    /// Pooled over the training sites' validation patients, and over the validate-only sites'.
    pub pooled_train_sites: Option<PooledMetrics>,
    pub pooled_validation_sites: Option<PooledMetrics>,
    /// Differential privacy spent, when the study adds noise (`[privacy]`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacySpent>,
}

/// The (ε, δ) a committed round spent, and what the study has spent up to and including it: the
/// Gaussian mechanism with noise multiplier z on the sum of site updates clipped to L2 norm C (every
/// training site takes part in every round: no amplification by sampling), composed over the rounds
/// in Rényi DP and converted to (ε, δ) (`stats::privacy::RdpAccountant`). Site-level: what is
/// protected is one site's whole update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpent {
    pub noise_multiplier: f64,
    pub clip_norm: f64,
    pub delta: f64,
    /// ε of this round alone.
    pub epsilon_round: f64,
    /// ε of rounds 1 to this one together.
    pub epsilon_study: f64,
}

impl PrivacySpent {
    /// The privacy spent by `rounds` noisy rounds (the last one being this record's).
    ///
    /// # Errors
    /// A noise multiplier or δ the accountant refuses.
    pub fn after(
        noise_multiplier: f64,
        clip_norm: f64,
        delta: f64,
        rounds: u64,
    ) -> Result<Self, crate::stats::privacy::PrivacyError> {
        let epsilon = |steps: u64| -> Result<f64, crate::stats::privacy::PrivacyError> {
            let mut accountant = crate::stats::privacy::RdpAccountant::default();
            accountant.compose_poisson_gaussian(1.0, noise_multiplier, steps)?;
            Ok(accountant.epsilon(delta)?.0)
        };
        Ok(Self {
            noise_multiplier,
            clip_norm,
            delta,
            epsilon_round: epsilon(1)?,
            epsilon_study: epsilon(rounds)?,
        })
    }
}

impl PooledMetrics {
    /// The pooled metrics of `sites` from the sum of their histograms.
    ///
    /// # Errors
    /// A histogram not on the study grid.
    pub fn from_histogram(
        sites: Vec<String>,
        histogram: ScoreHistogram,
    ) -> Result<Self, super::HistogramError> {
        histogram.check()?;
        let estimate = histogram.auc().ok().flatten();
        Ok(Self {
            sites,
            n_patients: histogram.n_positive().saturating_add(histogram.n_negative()),
            n_positive: histogram.n_positive(),
            auc: estimate.map(|e| e.auc),
            auc_ci_lower: estimate.and_then(|e| e.ci_lower),
            auc_ci_upper: estimate.and_then(|e| e.ci_upper),
            auc_variance: estimate.and_then(|e| e.variance),
            histogram,
            stage_confusion: None,
        })
    }

    /// Checks the sum against what its sites reported one by one: Σ n_patients and Σ n_positive of
    /// `reports` (the sites of the sum) must be the histogram's counts. A site whose masked counts do
    /// not match its own report would make the pooled figures wrong.
    ///
    /// # Errors
    /// The two totals, when they differ, or a site of the sum without a report.
    pub fn check_against(&self, reports: &[&SiteRoundMetrics]) -> Result<(), String> {
        let mut patients = 0u64;
        let mut positive = 0u64;
        for site in &self.sites {
            let report = reports
                .iter()
                .find(|r| &r.site == site)
                .ok_or_else(|| format!("site {site} is in the sum but sent no metrics"))?;
            patients = patients.saturating_add(report.n_patients);
            positive = positive.saturating_add(report.n_positive);
        }
        if let Some(confusion) = &self.stage_confusion {
            confusion
                .check(self.n_patients)
                .map_err(|error| error.to_string())?;
        }
        if patients == self.n_patients && positive == self.n_positive {
            Ok(())
        } else {
            Err(format!(
                "the secure sum counts {} patients ({} with LNM), the sites' reports {patients} ({positive})",
                self.n_patients, self.n_positive
            ))
        }
    }
}

/// Why a site's validation metrics cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Statistics(#[from] crate::stats::StatsError),
    #[error(transparent)]
    Histogram(#[from] super::HistogramError),
}

/// The most validation patients one site may report: pooling expands a histogram to one row per
/// patient, so a report's counts are bounded before anything is allocated for them.
pub const MAX_SITE_PATIENTS: u64 = 1_000_000;

impl SiteRoundMetrics {
    /// The report of a site with no labelled validation patient: counts zero, every estimate absent.
    #[must_use]
    pub fn without_patients(site: &str, role: SiteRole) -> Self {
        Self {
            site: site.to_owned(),
            role,
            n_patients: 0,
            n_positive: 0,
            lnm_rate: 0.0,
            auc: None,
            auc_ci_lower: None,
            auc_ci_upper: None,
            auc_variance: None,
            youden_threshold: None,
            sensitivity: None,
            specificity: None,
            brier: 0.0,
            calibration_intercept: None,
            calibration_slope: None,
            calibration_slope_se: None,
            kappa_t: None,
            kappa_n: None,
            kappa_stage: None,
            kappa_t_se: None,
            kappa_n_se: None,
            kappa_stage_se: None,
            cohort: None,
            curves: None,
            normalisation: None,
        }
    }

    /// Checks a report received from a site: counts within [`MAX_SITE_PATIENTS`] (the positive ones
    /// among them), the LNM rate the positive fraction, probabilities and AUCs in [0, 1] (a CI around
    /// its AUC), kappas in [-1, 1], every value finite.
    ///
    /// # Errors
    /// The first field at fault, named, with its value.
    pub fn check(&self) -> Result<(), String> {
        if self.n_patients > MAX_SITE_PATIENTS {
            return Err(format!(
                "n_patients {} exceeds the {MAX_SITE_PATIENTS} one site may report",
                self.n_patients
            ));
        }
        if self.n_positive > self.n_patients {
            return Err(format!(
                "n_positive {} exceeds n_patients {}",
                self.n_positive, self.n_patients
            ));
        }
        let probability = |name: &str, value: f64| -> Result<(), String> {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} {value} is not in [0, 1]"))
            }
        };
        #[allow(clippy::cast_precision_loss)] // Counts are at most MAX_SITE_PATIENTS.
        let rate = if self.n_patients == 0 {
            0.0
        } else {
            self.n_positive as f64 / self.n_patients as f64
        };
        probability("lnm_rate", self.lnm_rate)?;
        if (self.lnm_rate - rate).abs() > 1e-9 {
            return Err(format!(
                "lnm_rate {} is not n_positive / n_patients = {rate}",
                self.lnm_rate
            ));
        }
        probability("brier", self.brier)?;
        for (name, value) in [
            ("auc", self.auc),
            ("auc_ci_lower", self.auc_ci_lower),
            ("auc_ci_upper", self.auc_ci_upper),
            ("sensitivity", self.sensitivity),
            ("specificity", self.specificity),
        ] {
            if let Some(value) = value {
                probability(name, value)?;
            }
        }
        if let (Some(auc), Some(lower), Some(upper)) = (self.auc, self.auc_ci_lower, self.auc_ci_upper)
            && !(lower <= auc && auc <= upper)
        {
            return Err(format!(
                "the AUC CI {lower}–{upper} does not contain the AUC {auc}"
            ));
        }
        for (name, value) in [
            ("kappa_t_se", self.kappa_t_se),
            ("kappa_n_se", self.kappa_n_se),
            ("kappa_stage_se", self.kappa_stage_se),
            ("calibration_slope_se", self.calibration_slope_se),
        ] {
            if let Some(se) = value
                && !(se.is_finite() && se >= 0.0)
            {
                return Err(format!("{name} {se} is not a finite SE"));
            }
        }
        for (name, value) in [
            ("youden_threshold", self.youden_threshold),
            ("calibration_intercept", self.calibration_intercept),
            ("calibration_slope", self.calibration_slope),
        ] {
            if let Some(value) = value
                && !value.is_finite()
            {
                return Err(format!("{name} {value} is not finite"));
            }
        }
        if let Some(curves) = &self.curves {
            curves.check(self.n_patients)?;
        }
        if let Some(variance) = self.auc_variance
            && !(variance.is_finite() && (0.0..=0.25).contains(&variance))
        {
            // The variance of a quantity in [0, 1] is at most 1/4.
            return Err(format!("auc_variance {variance} is not in [0, 0.25]"));
        }
        if let Some(cohort) = &self.cohort {
            cohort.check()?;
            if cohort.validation != self.n_patients {
                return Err(format!(
                    "cohort: {} validation patients, but the report scores {}",
                    cohort.validation, self.n_patients
                ));
            }
        }
        if self.auc_variance.is_some() && self.auc.is_none() {
            return Err("auc_variance is given without an AUC".to_owned());
        }
        for (name, value) in [
            ("kappa_t", self.kappa_t),
            ("kappa_n", self.kappa_n),
            ("kappa_stage", self.kappa_stage),
        ] {
            if let Some(kappa) = value
                && !(-1.0..=1.0).contains(&kappa)
            {
                return Err(format!("{name} {kappa} is not in [-1, 1]"));
            }
        }
        Ok(())
    }

    /// The metrics of one site's labelled validation patients (statistics.md through the stats engine:
    /// AUC with DeLong CI, Youden sensitivity/specificity, Brier, quadratic-weighted kappa for T, N and
    /// stage), and the site's score histogram (which stays at the site but for the secure sum).
    ///
    /// # Errors
    /// The statistics engine or the histogram rejects the data (e.g. a score outside [0, 1]).
    pub fn from_predictions(
        site: &str,
        role: SiteRole,
        examples: &[crate::features::Example],
        predictions: &[crate::evaluation::Prediction],
        truth_stages: &[crate::staging::Stage],
    ) -> Result<SiteValidation, MetricsError> {
        let report = crate::evaluation::evaluate(examples, predictions, truth_stages)?;
        let (y, s): (Vec<bool>, Vec<f64>) = examples
            .iter()
            .zip(predictions)
            .filter_map(|(e, p)| e.targets.map(|t| (t.lnm, p.lnm_probability)))
            .unzip();
        let histogram = ScoreHistogram::from_scores(&y, &s)?;
        let lnm = &report.lnm;
        let metrics = Self {
            site: site.to_owned(),
            role,
            n_patients: lnm.n,
            n_positive: lnm.n_pos,
            lnm_rate: lnm.lnm_rate,
            auc: lnm.auc,
            auc_ci_lower: lnm.auc_ci_lower,
            auc_ci_upper: lnm.auc_ci_upper,
            auc_variance: lnm.auc_var,
            youden_threshold: lnm.youden_threshold,
            sensitivity: lnm.youden_sensitivity,
            specificity: lnm.youden_specificity,
            brier: lnm.brier,
            calibration_intercept: lnm.calibration.calibration_intercept,
            calibration_slope: lnm.calibration.calibration_slope,
            calibration_slope_se: lnm.calibration.calibration_slope_se,
            kappa_t: report.t_kappa.quadratic.kappa,
            kappa_n: report.n_kappa.quadratic.kappa,
            kappa_stage: report.stage_kappa.quadratic.kappa,
            kappa_t_se: report.t_kappa.quadratic.se,
            kappa_n_se: report.n_kappa.quadratic.se,
            kappa_stage_se: report.stage_kappa.quadratic.se,
            cohort: None,
            curves: Some(SiteCurves::of_scores(&y, &s)),
            normalisation: None,
        };
        let stage_confusion =
            StageConfusion::from_reports(&report.t_kappa, &report.n_kappa, &report.stage_kappa);
        Ok(SiteValidation {
            metrics,
            histogram,
            stage_confusion,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn report(site: &str, n_patients: u64, n_positive: u64) -> SiteRoundMetrics {
        SiteRoundMetrics {
            n_patients,
            n_positive,
            ..SiteRoundMetrics::without_patients(site, SiteRole::Train)
        }
    }

    #[test]
    fn a_secure_sum_must_count_what_its_sites_reported() {
        let mut histogram = ScoreHistogram::empty();
        histogram.positive[10] = 3;
        histogram.negative[20] = 5;
        let pooled = PooledMetrics::from_histogram(vec!["A".into(), "B".into()], histogram).unwrap();
        assert_eq!((pooled.n_patients, pooled.n_positive), (8, 3));
        let (a, b) = (report("A", 4, 1), report("B", 4, 2));
        assert_eq!(pooled.check_against(&[&a, &b]), Ok(()));
        // B's masked counts said 4 patients, 2 with LNM; its report says 5 with 2.
        let lying = report("B", 5, 2);
        let error = pooled.check_against(&[&a, &lying]).unwrap_err();
        assert!(
            error.contains("8 patients (3 with LNM), the sites' reports 9 (3)"),
            "{error}"
        );
        let error = pooled.check_against(&[&a]).unwrap_err();
        assert!(
            error.contains("site B is in the sum but sent no metrics"),
            "{error}"
        );
    }

    #[test]
    fn a_report_cannot_count_more_lnm_patients_than_patients() {
        let error = report("A", 3, 4).check().unwrap_err();
        assert!(error.contains("n_positive 4 exceeds n_patients 3"), "{error}");
    }
}
