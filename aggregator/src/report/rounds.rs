//! Reads the committed rounds of the aggregator's state folder, in round order, for the report.

use super::{ROUND_DIR_PREFIX, ROUND_FILE, ReportError};
use fedlnm_shared::federation::{RoundRecord, ScoreHistogram};
use std::path::{Path, PathBuf};

/// The round number of a committed round's folder name: `round-` and at least 4 digits.
/// `None` for anything else, including `.round-0003.partial` (a round being written).
#[must_use]
pub fn committed_round_number(folder_name: &str) -> Option<u64> {
    let digits = folder_name.strip_prefix(ROUND_DIR_PREFIX)?;
    if digits.len() < 4 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One committed round as read from disk.
pub(super) struct CommittedRound {
    /// Its `round.json`, for error messages.
    pub(super) path: PathBuf,
    /// Only the last round keeps its histograms (the ROC figure needs them; the rest would only take
    /// memory: 160 kB per site and round).
    pub(super) record: RoundRecord,
}

/// Every committed round under `rounds_dir`, in round order.
pub(super) fn read_committed_rounds(rounds_dir: &Path) -> Result<Vec<CommittedRound>, ReportError> {
    let list_error = |source| ReportError::ListRounds {
        path: rounds_dir.to_path_buf(),
        source,
    };
    let mut folders: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(rounds_dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            tracing::debug!(entry = %name, "skipping an uncommitted round");
            continue;
        }
        match committed_round_number(&name) {
            Some(round) if entry.path().is_dir() => folders.push((round, entry.path())),
            _ => tracing::warn!(entry = %entry.path().display(), "not a committed round folder: skipped"),
        }
    }
    folders.sort();
    if let Some(pair) = folders.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(ReportError::DuplicateRound {
            round: pair[0].0,
            first: pair[0].1.clone(),
            second: pair[1].1.clone(),
        });
    }

    let last_index = folders.len().saturating_sub(1);
    let mut rounds = Vec::with_capacity(folders.len());
    for (index, (round, folder)) in folders.into_iter().enumerate() {
        let path = folder.join(ROUND_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ReportError::ReadRound {
            path: path.clone(),
            source,
        })?;
        let mut record: RoundRecord =
            serde_json::from_slice(&bytes).map_err(|source| ReportError::ParseRound {
                path: path.clone(),
                source,
            })?;
        if record.round != round {
            return Err(ReportError::RoundMismatch {
                path,
                recorded: record.round,
                expected: round,
            });
        }
        if index != last_index {
            for site in &mut record.sites {
                site.histogram = ScoreHistogram {
                    positive: Vec::new(),
                    negative: Vec::new(),
                };
            }
        }
        rounds.push(CommittedRound { path, record });
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_round_folders_are_recognised_by_name() {
        let cases: [(&str, Option<u64>); 9] = [
            ("round-0000", Some(0)),
            ("round-0012", Some(12)),
            ("round-12345", Some(12_345)),
            ("round-012", None),
            ("round-12", None),
            (".round-0003.partial", None),
            ("round-0003.partial", None),
            ("round-+123", None),
            ("global.safetensors", None),
        ];
        for (name, expected) in cases {
            assert_eq!(committed_round_number(name), expected, "{name}");
        }
    }
}
