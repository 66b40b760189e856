//! Oracle AUCs: how well the generator's own truth separates LNM+ from LNM- at a site, overall and for
//! the parts that the report/clinical fields and the image carry.
//!
//! AUCs come from the statistics engine (`stats::binary`), the same code that scores the models.

use super::cohort::{Covariate, PatientTruth, TrueLnmModel, covariate_values, sigmoid};
use crate::data::report::{CapsuleContact, EchogenicFoci, Echogenicity, Margin, Pole, UltrasoundReport};
use serde::Serialize;

/// Oracle AUCs of one site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OracleAucs {
    /// AUC of the true LNM probability: the ceiling of any model on this site.
    pub multimodal: f64,
    /// AUC of the true model's linear predictor evaluated on what the report and clinical fields say
    /// (the reader's noisy readings of size, capsule contact, margin/ETE, foci, echogenicity; plus sex,
    /// age, multifocality and pole).
    pub report_clinical: f64,
    /// AUC of the true linear predictor restricted to the image-borne covariates at their true values.
    pub image: f64,
}

/// AUC of risk probabilities by the statistics engine (`stats::binary::auc_delong`); `None` when a
/// class is empty.
fn auc(probabilities: &[f64], labels: &[bool]) -> Option<f64> {
    crate::stats::binary::auc_delong(labels, probabilities)
        .ok()
        .flatten()
        .map(|estimate| estimate.auc)
}

/// The covariates as the report and clinical fields state them (image-borne ones as the reader saw them).
#[must_use]
pub fn reported_covariates(truth: &PatientTruth, report: &UltrasoundReport) -> [f64; 10] {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut values = covariate_values(truth);
    values[2] = flag(report.max_diameter_mm >= 10.0);
    values[4] = flag(report.margin == Margin::ExtrathyroidalExtension);
    values[5] = flag(report.capsule_contact == CapsuleContact::Over25);
    values[6] = flag(report.pole == Pole::Upper);
    values[7] = flag(report.echogenic_foci == EchogenicFoci::Punctate);
    values[8] = match report.margin {
        Margin::Smooth => 0.25,
        Margin::IllDefined => 0.45,
        Margin::LobulatedIrregular | Margin::ExtrathyroidalExtension => 0.65,
    };
    values[9] = if report.echogenicity == Echogenicity::VeryHypoechoic {
        1.0
    } else {
        0.0
    };
    values
}

/// The three oracle AUCs of a cohort (`None` when it has a single class).
#[must_use]
pub fn oracle_aucs(model: &TrueLnmModel, cohort: &[(PatientTruth, UltrasoundReport)]) -> Option<OracleAucs> {
    let labels: Vec<bool> = cohort.iter().map(|(truth, _)| truth.lnm).collect();
    let full: Vec<f64> = cohort.iter().map(|(truth, _)| truth.lnm_probability).collect();
    let report: Vec<f64> = cohort
        .iter()
        .map(|(truth, report)| sigmoid(model.partial_logit(&reported_covariates(truth, report), |_| true)))
        .collect();
    let image: Vec<f64> = cohort
        .iter()
        .map(|(truth, _)| {
            sigmoid(model.partial_logit(&covariate_values(truth), |c: Covariate| c.visibility().image))
        })
        .collect();
    Some(OracleAucs {
        multimodal: auc(&full, &labels)?,
        report_clinical: auc(&report, &labels)?,
        image: auc(&image, &labels)?,
    })
}
