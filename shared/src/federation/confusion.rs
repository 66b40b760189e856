//! The stage confusion matrices of one validation (pathological against predicted T, N and overall
//! AJCC stage, on the declared scales): like the score histogram, a site's matrices leave it only
//! inside the secure sum of its pool, and the pooled matrices give the pooled weighted κ with its CI.

use crate::staging::{NCategory, Stage, TCategory};
use crate::stats::kappa::{KappaEstimate, KappaReport, Weighting, kappa_from_confusion};
use serde::{Deserialize, Serialize};

/// The three scales: name, categories (the row and column labels, in code order).
pub const STAGE_SCALES: [(&str, &[&str]); 3] = [
    ("T", &["T1a", "T1b", "T2", "T3a", "T3b", "T4a", "T4b"]),
    ("N", &["N0", "N1a", "N1b"]),
    ("stage", &["I", "II", "III", "IVA", "IVB"]),
];

/// k×k counts (row: pathology, column: prediction), row-major, for T (7 categories), N (3) and the
/// overall stage (5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageConfusion {
    pub t: Vec<u64>,
    pub n: Vec<u64>,
    pub stage: Vec<u64>,
}

/// Matrices that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfusionError {
    #[error("the {scale} confusion matrix has {found} cells; its scale needs {expected}")]
    WrongCells {
        scale: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("the {scale} confusion matrix counts {found} patients, the score histogram {expected}")]
    WrongTotal {
        scale: &'static str,
        found: u64,
        expected: u64,
    },
}

impl Default for StageConfusion {
    fn default() -> Self {
        Self::empty()
    }
}

impl StageConfusion {
    /// All zero, on the declared scales.
    #[must_use]
    pub fn empty() -> Self {
        let cells = |k: usize| vec![0; k * k];
        Self {
            t: cells(TCategory::ALL.len()),
            n: cells(NCategory::ALL.len()),
            stage: cells(Stage::ALL.len()),
        }
    }

    /// The matrices of an evaluation's κ reports.
    #[must_use]
    pub fn from_reports(t: &KappaReport, n: &KappaReport, stage: &KappaReport) -> Self {
        let flat = |report: &KappaReport| report.confusion.iter().flatten().copied().collect();
        Self {
            t: flat(t),
            n: flat(n),
            stage: flat(stage),
        }
    }

    /// Adds another's counts cell by cell (the plain sum that the pool's secure sum equals).
    pub fn add(&mut self, other: &Self) {
        for (mine, theirs) in [
            (&mut self.t, &other.t),
            (&mut self.n, &other.n),
            (&mut self.stage, &other.stage),
        ] {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a = a.saturating_add(*b);
            }
        }
    }

    /// The matrices in [`STAGE_SCALES`] order, flat.
    #[must_use]
    pub fn matrices(&self) -> [&[u64]; 3] {
        [&self.t, &self.n, &self.stage]
    }

    /// Checks the shapes, and that each matrix counts `patients` (every labelled validation patient
    /// has a pathological T, N and stage).
    ///
    /// # Errors
    /// The first matrix at fault.
    pub fn check(&self, patients: u64) -> Result<(), ConfusionError> {
        for ((scale, labels), cells) in STAGE_SCALES.iter().zip(self.matrices()) {
            let expected = labels.len() * labels.len();
            if cells.len() != expected {
                return Err(ConfusionError::WrongCells {
                    scale,
                    found: cells.len(),
                    expected,
                });
            }
            let found = cells.iter().fold(0u64, |sum, &c| sum.saturating_add(c));
            if found != patients {
                return Err(ConfusionError::WrongTotal {
                    scale,
                    found,
                    expected: patients,
                });
            }
        }
        Ok(())
    }

    /// The k×k rows of one matrix (`index` into [`STAGE_SCALES`]).
    #[must_use]
    pub fn rows(&self, index: usize) -> Vec<Vec<u64>> {
        let cells = self.matrices()[index];
        let k = STAGE_SCALES[index].1.len();
        cells.chunks(k.max(1)).map(<[u64]>::to_vec).collect()
    }

    /// Quadratic-weighted κ with its FCE SE and CI, for each scale.
    #[must_use]
    pub fn quadratic_kappas(&self) -> [KappaEstimate; 3] {
        [0, 1, 2].map(|index| kappa_from_confusion(&self.rows(index), Weighting::Quadratic))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::stats::kappa::cohen_kappa;

    #[test]
    fn the_kappa_of_the_matrices_is_the_kappa_of_the_rows() {
        let truth = [0, 1, 2, 2, 1, 0, 4, 3, 2, 2];
        let predicted = [0, 2, 2, 1, 1, 0, 3, 3, 2, 0];
        let t = cohen_kappa(&truth, &predicted, 7).unwrap();
        let n = cohen_kappa(
            &[0, 1, 2, 1, 0, 0, 1, 2, 2, 0],
            &[0, 1, 1, 1, 0, 1, 1, 2, 2, 0],
            3,
        )
        .unwrap();
        let stage = cohen_kappa(
            &[0, 1, 0, 0, 1, 0, 2, 3, 4, 0],
            &[0, 1, 0, 1, 1, 0, 2, 2, 4, 0],
            5,
        )
        .unwrap();
        let confusion = StageConfusion::from_reports(&t, &n, &stage);
        confusion.check(10).unwrap();
        let kappas = confusion.quadratic_kappas();
        assert_eq!(kappas[0], t.quadratic);
        assert_eq!(kappas[1], n.quadratic);
        assert_eq!(kappas[2], stage.quadratic);
    }

    #[test]
    fn matrices_of_the_wrong_shape_or_total_are_named() {
        let mut confusion = StageConfusion::empty();
        assert_eq!(confusion.check(0), Ok(()));
        confusion.n[4] = 3;
        assert_eq!(
            confusion.check(3),
            Err(ConfusionError::WrongTotal {
                scale: "T",
                found: 0,
                expected: 3
            })
        );
        confusion.t.pop();
        assert!(matches!(
            confusion.check(3),
            Err(ConfusionError::WrongCells {
                scale: "T",
                found: 48,
                expected: 49
            })
        ));
    }
}
