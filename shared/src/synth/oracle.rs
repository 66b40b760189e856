//! Oracle AUCs: how well the generator's own truth separates LNM+ from LNM- at a site, overall and for
//! the parts that the report/clinical fields and the image carry.
//!
//! The AUC here is a local Mann–Whitney implementation (midranks, exact for ties); it is to be swapped
//! for the statistics engine's binary AUC once that lands.

use super::cohort::{Covariate, PatientTruth, TrueLnmModel, covariate_values};
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

/// Mann–Whitney AUC (ties count one half). `None` when a class is empty.
#[must_use]
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let midrank = (start + 1 + end) as f64 / 2.0;
        order[start..end].iter().for_each(|&i| ranks[i] = midrank);
        start = end;
    }
    let positives = labels[..n].iter().filter(|&&l| l).count() as f64;
    let negatives = n as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let rank_sum: f64 = (0..n).filter(|&i| labels[i]).map(|i| ranks[i]).sum();
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
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
        .map(|(truth, report)| model.partial_logit(&reported_covariates(truth, report), |_| true))
        .collect();
    let image: Vec<f64> = cohort
        .iter()
        .map(|(truth, _)| model.partial_logit(&covariate_values(truth), |c: Covariate| c.visibility().image))
        .collect();
    Some(OracleAucs {
        multimodal: auc(&full, &labels)?,
        report_clinical: auc(&report, &labels)?,
        image: auc(&image, &labels)?,
    })
}

#[cfg(test)]
mod tests {
    use super::auc;

    /// The O(n²) definition: P(score+ > score-) + ½ P(tie).
    fn auc_by_pairs(scores: &[f64], labels: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li && !lj {
                    pairs += 1.0;
                    wins += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_matches_the_pairwise_definition_with_ties() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.05, 0.6, 0.6];
        let labels = [false, false, true, true, true, false, true, false, false, true];
        let fast = auc(&scores, &labels).unwrap();
        assert!((fast - auc_by_pairs(&scores, &labels)).abs() < 1e-12);
        assert_eq!(auc(&[0.1, 0.9], &[false, true]), Some(1.0));
        assert_eq!(auc(&[0.1, 0.9], &[true, true]), None);
    }
}
