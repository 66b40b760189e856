//! Reads the committed rounds for the report through [`RoundStore`], without changing the state folder.

use super::ReportError;
use crate::store::{RECORD_FILE, RoundStore, StoreError};
use fedlnm_shared::analysis::AnalysisResult;
use fedlnm_shared::federation::{RoundRecord, ScoreHistogram};
use std::path::{Path, PathBuf};

/// One committed round as read from disk.
pub(super) struct CommittedRound {
    /// Its `round.json`, for error messages.
    pub(super) path: PathBuf,
    /// Only the last round keeps its pooled histograms (the ROC figure needs them; the rest would only
    /// take memory: 160 kB per pool and round).
    pub(super) record: RoundRecord,
}

/// Every committed round of `state_dir`, in round order. The folder is opened read-only
/// ([`RoundStore::open_existing`]): uncommitted rounds are skipped, not removed, and nothing is created.
pub(super) fn read_committed_rounds(state_dir: &Path) -> Result<Vec<CommittedRound>, ReportError> {
    let listing = |error| report_error(error, |path, source| ReportError::ListRounds { path, source });
    let store = RoundStore::open_existing(state_dir).map_err(listing)?;
    let numbers = store.committed_rounds().map_err(listing)?;
    let last = numbers.last().copied();
    let mut rounds = Vec::with_capacity(numbers.len());
    for round in numbers {
        let mut record = store
            .load_record(round)
            .map_err(|error| report_error(error, |path, source| ReportError::ReadRound { path, source }))?;
        if Some(round) != last {
            for pool in [
                &mut record.pooled_train_sites,
                &mut record.pooled_validation_sites,
            ]
            .into_iter()
            .flatten()
            {
                pool.histogram = ScoreHistogram {
                    positive: Vec::new(),
                    negative: Vec::new(),
                };
            }
        }
        rounds.push(CommittedRound {
            path: store.round_dir(round).join(RECORD_FILE),
            record,
        });
    }
    Ok(rounds)
}

/// The study's stored analyses (federated odds ratios), by name; none when there are none.
pub(super) fn read_analyses(state_dir: &Path) -> Result<Vec<AnalysisResult>, ReportError> {
    RoundStore::open_existing(state_dir)
        .and_then(|store| store.analyses())
        .map_err(ReportError::Analyses)
}

/// The report's error for what the store reported; `io` makes the error of a failed read or listing
/// (which of the two depends on the call). Each keeps the path the store named.
fn report_error(error: StoreError, io: fn(PathBuf, std::io::Error) -> ReportError) -> ReportError {
    match error {
        StoreError::Io { path, source, .. } => io(path, source),
        StoreError::InvalidRecord { path, source } => ReportError::ParseRound { path, source },
        StoreError::RoundMismatch {
            path,
            recorded,
            expected,
        } => ReportError::RoundMismatch {
            path,
            recorded,
            expected,
        },
        StoreError::DuplicateRound { round, first, second } => {
            ReportError::DuplicateRound { round, first, second }
        }
        other => ReportError::Store(other),
    }
}
