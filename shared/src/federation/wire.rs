//! The byte encoding of secure-aggregation messages inside the gRPC envelope: bincode 2 over serde,
//! fixed-width integers (masked values are uniform in Z_2^64: varints would only make them longer),
//! with a size limit so that a hostile length prefix cannot make the receiver allocate without bound.

/// The bincode configuration of every protocol payload.
#[must_use]
pub fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<{ 1 << 31 }>()
}

/// Encodes a protocol message (serializing plain data cannot fail; an empty vector would be
/// refused by the receiver).
#[must_use]
pub fn encode<T: serde::Serialize>(message: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(message, config()).unwrap_or_default()
}

/// Decodes a protocol message; the error names what was expected.
///
/// # Errors
/// A malformed or truncated payload, or trailing bytes.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    let (message, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| format!("malformed {what}: {e}"))?;
    if used != bytes.len() {
        return Err(format!("malformed {what}: {} trailing bytes", bytes.len() - used));
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
        let error = decode::<(String, u64, Vec<u64>)>(&longer, "masked input").unwrap_err();
        assert!(
            error.contains("masked input") && error.contains("trailing"),
            "{error}"
        );
    }
}
