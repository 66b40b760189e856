//! Two models compared on this site's own patients: the paired DeLong test of their AUCs, from the
//! patient scores the node kept of each model's validation (`validation/round-NNNN.scores.json`,
//! patient-level, never sent). Only the result leaves the site: ΔAUC and its SE, which a study pools
//! across sites by random effects (`fedlnm-sim --design model-comparison`). The same test compares
//! two `predictions.csv` files of `evaluate` (`evaluate --compare-with`).

use crate::federation::OWN_RECORDS_DIR;
use anyhow::{Context as _, bail};
use fedlnm_shared::evaluation::Prediction;
use fedlnm_shared::features::Example;
use fedlnm_shared::stats::binary::{PairedDelong, paired_delong};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One validated patient's score under one model (site-local).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientScore {
    pub patient_id: String,
    pub lnm: bool,
    pub score: f64,
}

impl PatientScore {
    /// The scores of the labelled examples, in their order.
    #[must_use]
    pub fn of_predictions(examples: &[Example], predictions: &[Prediction]) -> Vec<Self> {
        examples
            .iter()
            .zip(predictions)
            .filter_map(|(example, prediction)| {
                Some(Self {
                    patient_id: example.patient_id.clone(),
                    lnm: example.targets?.lnm,
                    score: prediction.lnm_probability,
                })
            })
            .collect()
    }
}

/// Where a node keeps its patients' scores of round `round`'s model.
#[must_use]
pub fn scores_file(work_dir: &Path, round: u64) -> PathBuf {
    work_dir
        .join(OWN_RECORDS_DIR)
        .join(format!("round-{round:04}.scores.json"))
}

/// The scores a node kept of round `round`'s model.
///
/// # Errors
/// A missing or unreadable file (named).
pub fn own_scores(work_dir: &Path, round: u64) -> anyhow::Result<Vec<PatientScore>> {
    let file = scores_file(work_dir, round);
    let bytes = fedlnm_shared::files::read_regular(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a list of patient scores", file.display()))
}

/// The labelled patients' scores in a `predictions.csv` written by `evaluate` or `quality` (columns
/// `patient_id`, `lnm_score` and `lnm_true`, by name; rows without `lnm_true` are unlabelled and
/// skipped).
///
/// # Errors
/// A missing or unreadable file, a missing column, a value that is not a probability or a 0/1
/// outcome, or a patient listed twice, each named with the file and its line.
pub fn read_predictions(file: &Path) -> anyhow::Result<Vec<PatientScore>> {
    let bytes = fedlnm_shared::files::read_regular(file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let header = reader
        .headers()
        .with_context(|| format!("{}: no header line", file.display()))?
        .clone();
    let column = |name: &str| {
        header.iter().position(|h| h == name).with_context(|| {
            format!(
                "{} has no column {name} (not a predictions.csv of evaluate)",
                file.display()
            )
        })
    };
    let (id_col, score_col, truth_col) = (column("patient_id")?, column("lnm_score")?, column("lnm_true")?);
    let mut seen = std::collections::BTreeSet::new();
    let mut scores = Vec::new();
    for (k, record) in reader.records().enumerate() {
        // Line 1 is the header.
        let line = k + 2;
        let record = record.with_context(|| format!("{} line {line}: not a CSV row", file.display()))?;
        let field = |col: usize| record.get(col).unwrap_or("").trim();
        let patient_id = field(id_col).to_owned();
        if !seen.insert(patient_id.clone()) {
            bail!(
                "{} line {line}: patient {patient_id} is listed twice",
                file.display()
            );
        }
        let lnm = match field(truth_col) {
            "" => continue,
            "1" => true,
            "0" => false,
            other => bail!(
                "{} line {line}: lnm_true is {other:?}, not 0 or 1",
                file.display()
            ),
        };
        let score = field(score_col)
            .parse::<f64>()
            .ok()
            .filter(|p| (0.0..=1.0).contains(p))
            .with_context(|| {
                format!(
                    "{} line {line}: lnm_score {:?} is not a probability",
                    file.display(),
                    field(score_col)
                )
            })?;
        scores.push(PatientScore {
            patient_id,
            lnm,
            score,
        });
    }
    Ok(scores)
}

/// The paired DeLong test of model `a` against model `b` (ΔAUC = AUC(a) − AUC(b)) on the patients both
/// scored, matched by patient id.
///
/// # Errors
/// The two score lists hold different patients or outcomes (not the same validation set), one class
/// only, or rows the statistics engine refuses.
pub fn paired_comparison(a: &[PatientScore], b: &[PatientScore]) -> anyhow::Result<PairedDelong> {
    let by_id: BTreeMap<&str, &PatientScore> = b.iter().map(|s| (s.patient_id.as_str(), s)).collect();
    if by_id.len() != a.len() || a.len() != b.len() {
        bail!(
            "the two models were validated on different patients ({} and {} scores)",
            a.len(),
            b.len()
        );
    }
    let (mut y, mut score_a, mut score_b) = (Vec::new(), Vec::new(), Vec::new());
    for patient in a {
        let Some(other) = by_id.get(patient.patient_id.as_str()) else {
            bail!("patient {} was scored by one model only", patient.patient_id);
        };
        if other.lnm != patient.lnm {
            bail!("patient {} has two different outcomes", patient.patient_id);
        }
        y.push(patient.lnm);
        score_a.push(patient.score);
        score_b.push(other.score);
    }
    paired_delong(&y, &score_a, &score_b)?
        .context("the validated patients hold one class only: no AUC to compare")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(rows: &[(&str, bool, f64)]) -> Vec<PatientScore> {
        rows.iter()
            .map(|&(id, lnm, score)| PatientScore {
                patient_id: id.to_owned(),
                lnm,
                score,
            })
            .collect()
    }

    #[test]
    fn patients_are_matched_by_id_whatever_their_order() {
        let a = scores(&[
            ("p1", true, 0.9),
            ("p2", false, 0.2),
            ("p3", true, 0.6),
            ("p4", false, 0.7),
        ]);
        let b = scores(&[
            ("p4", false, 0.1),
            ("p3", true, 0.4),
            ("p2", false, 0.5),
            ("p1", true, 0.8),
        ]);
        let compared = paired_comparison(&a, &b).unwrap();
        let direct = paired_delong(
            &[true, false, true, false],
            &[0.9, 0.2, 0.6, 0.7],
            &[0.8, 0.5, 0.4, 0.1],
        )
        .unwrap()
        .unwrap();
        assert_eq!(compared, direct);
        assert_eq!((compared.auc_a, compared.auc_b), (0.75, 0.75));
        assert!(compared.delta.abs() < 1e-12);
    }

    #[test]
    fn predictions_files_are_read_by_column_name_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("predictions.csv");
        // Columns in another order than evaluate's, an unlabelled patient, extra columns.
        std::fs::write(
            &file,
            "lnm_true,t_pred,patient_id,lnm_score\n1,T1a,p1,0.9\n,T2,p2,0.4\n0,T1b,p3,0.25\n",
        )
        .unwrap();
        assert_eq!(
            read_predictions(&file).unwrap(),
            scores(&[("p1", true, 0.9), ("p3", false, 0.25)])
        );
        let refused = |text: &str| {
            std::fs::write(&file, text).unwrap();
            read_predictions(&file).unwrap_err().to_string()
        };
        let error = refused("patient_id,lnm_true\np1,1\n");
        assert!(error.contains("has no column lnm_score"), "{error}");
        let error = refused("patient_id,lnm_score,lnm_true\np1,0.9,1\np2,1.5,0\n");
        assert!(
            error.contains("line 3: lnm_score \"1.5\" is not a probability"),
            "{error}"
        );
        let error = refused("patient_id,lnm_score,lnm_true\np1,0.9,yes\n");
        assert!(error.contains("line 2: lnm_true is \"yes\""), "{error}");
        let error = refused("patient_id,lnm_score,lnm_true\np1,0.9,1\np1,0.8,1\n");
        assert!(error.contains("line 3: patient p1 is listed twice"), "{error}");
        let error = read_predictions(&dir.path().join("absent.csv")).unwrap_err();
        assert!(format!("{error:#}").contains("absent.csv"), "{error:#}");
    }

    #[test]
    fn different_validation_sets_are_refused_by_name() {
        let a = scores(&[("p1", true, 0.9), ("p2", false, 0.2)]);
        let other_patient = scores(&[("p1", true, 0.9), ("p9", false, 0.2)]);
        let error = paired_comparison(&a, &other_patient).unwrap_err().to_string();
        assert!(
            error.contains("patient p2 was scored by one model only"),
            "{error}"
        );
        let other_outcome = scores(&[("p1", true, 0.9), ("p2", true, 0.2)]);
        let error = paired_comparison(&a, &other_outcome).unwrap_err().to_string();
        assert!(error.contains("patient p2 has two different outcomes"), "{error}");
        let error = paired_comparison(&a, &a[..1]).unwrap_err().to_string();
        assert!(error.contains("different patients (2 and 1 scores)"), "{error}");
    }
}
