//! `rounds.json`: every round record, pretty-printed, without the score histograms.

use super::{ROUNDS_JSON, ReportError};
use fedlnm_shared::federation::RoundRecord;

/// `rounds.json`: the records without their histograms.
pub(super) fn rounds_json(records: &[&RoundRecord]) -> Result<Vec<u8>, ReportError> {
    let json_error = |source| ReportError::Json {
        file: ROUNDS_JSON,
        source,
    };
    let mut rounds = Vec::with_capacity(records.len());
    for record in records {
        let mut value = serde_json::to_value(record).map_err(json_error)?;
        for pool in ["pooled_train_sites", "pooled_validation_sites"] {
            if let Some(pool) = value.get_mut(pool).and_then(serde_json::Value::as_object_mut) {
                pool.shift_remove("histogram");
            }
        }
        rounds.push(value);
    }
    let mut bytes = serde_json::to_vec_pretty(&rounds).map_err(json_error)?;
    bytes.push(b'\n');
    Ok(bytes)
}
