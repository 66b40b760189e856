//! The protocol's one serde encoding of Rust values inside protobuf `bytes` fields (training plans,
//! secure-aggregation configurations and messages, validation metrics): bincode 2 over serde,
//! fixed-width integers (masked values are uniform in Z_2^64: varints would only make them longer),
//! with a size limit so that a hostile length prefix cannot make the receiver allocate without bound,
//! and no trailing bytes.

/// The largest payload a length prefix may announce.
pub const PAYLOAD_LIMIT: usize = 1 << 31;

/// A payload that does not decode to what its field says it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {problem}")]
pub struct PayloadError {
    /// What the payload should have been ("training plan", "masked input", ...).
    pub what: &'static str,
    pub problem: String,
}

/// The bincode configuration of every payload.
#[must_use]
pub fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<PAYLOAD_LIMIT>()
}

/// Encodes a value. Serializing the protocol's plain-data types cannot fail (no maps with non-string
/// keys, no unsized sequences); should it ever, the empty payload is refused by every receiver.
#[must_use]
pub fn encode<T: serde::Serialize>(message: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(message, config()).unwrap_or_default()
}

/// Decodes a value; the error names `what` was expected.
///
/// # Errors
/// A malformed or truncated payload, or trailing bytes.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, PayloadError> {
    let (message, used) = bincode::serde::decode_from_slice(bytes, config()).map_err(|e| PayloadError {
        what,
        problem: e.to_string(),
    })?;
    if used != bytes.len() {
        return Err(PayloadError {
            what,
            problem: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation_and_trailing_bytes() {
        let message = (String::from("study"), 7_u64, vec![u64::MAX, 0, 3]);
        let bytes = encode(&message);
        let back: (String, u64, Vec<u64>) = decode(&bytes, "test message").unwrap_or_default();
        assert_eq!(back, message);
        assert!(decode::<(String, u64, Vec<u64>)>(&bytes[..bytes.len() - 1], "x").is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        let error = decode::<(String, u64, Vec<u64>)>(&longer, "masked input")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("masked input") && error.contains("trailing"),
            "{error}"
        );
    }
}
