//! The protocol's one serde encoding of Rust values inside protobuf `bytes` fields (training plans,
//! secure-aggregation configurations and messages, validation metrics): bincode 2 over serde,
//! fixed-width integers (masked values are uniform in their ring: varints would only make them longer),
//! with a size limit so that a hostile length prefix cannot make the receiver allocate without bound,
//! and no trailing bytes.

use fedlnm_shared::secagg::{Ring, SiteHeader};

/// The largest payload a length prefix may announce (within a payload, at most 16 times its own size:
/// see [`decode`]).
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
    config_within::<PAYLOAD_LIMIT>()
}

/// The payload encoding, with length prefixes limited to `LIMIT` bytes in all.
fn config_within<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
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
    // A length prefix is honoured (its buffer allocated) before its bytes are read, so the limit on
    // what prefixes may announce is the payload's own size, rounded up to a step of 16x: a hostile
    // prefix then costs at most 16 times the bytes received (64 KiB at least), not `PAYLOAD_LIMIT`.
    let (message, used) = decode_prefix::<T>(bytes, what)?;
    if used != bytes.len() {
        return Err(PayloadError {
            what,
            problem: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(message)
}

/// A [`MaskedInput`](fedlnm_shared::secagg::MaskedInput) read in place: its header, decoded, its
/// ring, and its masked vector as the little-endian bytes of its elements, borrowed from `bytes` (the
/// encoding writes the vector as its variant, a u32, then a u64 element count followed by the
/// elements, fixed width: 8 bytes in Z_2^64, 4 in Z_2^32). What [`decode`] would give, without
/// copying the vector into a fresh one.
///
/// # Errors
/// A malformed header, an unknown ring, or an element count that does not match the bytes that
/// follow it.
pub fn masked_input_view(bytes: &[u8]) -> Result<(SiteHeader, Ring, &[u8]), PayloadError> {
    let (header, ring, elements) = masked_input_range(bytes)?;
    Ok((header, ring, &bytes[elements]))
}

/// [`masked_input_view`] as the range of `bytes` that holds the vector's elements (for a caller
/// that keeps the bytes and reads the elements later).
///
/// # Errors
/// As [`masked_input_view`].
pub fn masked_input_range(bytes: &[u8]) -> Result<(SiteHeader, Ring, std::ops::Range<usize>), PayloadError> {
    const WHAT: &str = "masked input";
    let problem = |problem: String| PayloadError { what: WHAT, problem };
    let (header, used) = decode_prefix::<SiteHeader>(bytes, WHAT)?;
    let Some((variant, rest)) = bytes[used..].split_first_chunk::<4>() else {
        return Err(problem("no ring after the header".to_owned()));
    };
    let ring = match u32::from_le_bytes(*variant) {
        0 => Ring::Z2_64,
        1 => Ring::Z2_32,
        other => return Err(problem(format!("unknown ring variant {other}"))),
    };
    let Some((count, elements)) = rest.split_first_chunk::<8>() else {
        return Err(problem("no element count after the ring".to_owned()));
    };
    let count = u64::from_le_bytes(*count);
    if usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(ring.bytes()))
        != Some(elements.len())
    {
        return Err(problem(format!(
            "{count} elements of {} announced, {} bytes follow",
            ring,
            elements.len()
        )));
    }
    Ok((header, ring, used + 12..bytes.len()))
}

/// A value decoded from the start of `bytes`, and the bytes it used; length prefixes are limited
/// as [`decode`] says.
fn decode_prefix<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<(T, usize), PayloadError> {
    let decoded = match bytes.len() {
        n if n <= 1 << 16 => decode_within::<{ 1 << 16 }, T>(bytes),
        n if n <= 1 << 20 => decode_within::<{ 1 << 20 }, T>(bytes),
        n if n <= 1 << 24 => decode_within::<{ 1 << 24 }, T>(bytes),
        n if n <= 1 << 28 => decode_within::<{ 1 << 28 }, T>(bytes),
        _ => decode_within::<PAYLOAD_LIMIT, T>(bytes),
    };
    decoded.map_err(|e| PayloadError {
        what,
        problem: e.to_string(),
    })
}

/// [`decode_from_slice`](bincode::serde::decode_from_slice) with length prefixes limited to `LIMIT`.
fn decode_within<const LIMIT: usize, T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, config_within::<LIMIT>())
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

    #[test]
    fn a_masked_input_read_in_place_is_what_decoding_gives() {
        use fedlnm_shared::secagg::{MaskedInput, MaskedVector, SiteId};
        let message = MaskedInput {
            header: SiteHeader {
                study_id: "study".into(),
                round: 3,
                config_hash: [7; 32],
                site: SiteId(2),
            },
            masked: MaskedVector::Z2_64(vec![u64::MAX, 0, 0x0102_0304_0506_0708]),
        };
        for masked in [
            message.masked.clone(),
            MaskedVector::Z2_32(vec![u32::MAX, 0, 0x0102_0304, 5, 6]),
        ] {
            let message = MaskedInput {
                masked,
                ..message.clone()
            };
            let bytes = encode(&message);
            let (header, ring, elements) = masked_input_view(&bytes).unwrap();
            assert_eq!(header, message.header);
            assert_eq!(ring, message.masked.ring());
            assert_eq!(elements, message.masked.to_le_bytes());
            // Truncated, longer, a count that disagrees with the bytes, or an unknown ring: refused,
            // named.
            let header_len = bytes.len() - 12 - elements.len();
            let mut unknown = bytes.clone();
            unknown[header_len] = 2;
            for bad in [
                &bytes[..bytes.len() - 1],
                &[bytes.as_slice(), &[0]].concat()[..],
                &bytes[..20],
                &unknown,
            ] {
                let error = masked_input_view(bad).unwrap_err();
                assert_eq!(error.what, "masked input");
            }
            assert!(
                masked_input_view(&unknown)
                    .unwrap_err()
                    .problem
                    .contains("unknown ring variant 2")
            );
        }
    }

    #[test]
    fn a_length_prefix_cannot_announce_more_than_the_payload_holds() {
        // A string announced at 1.5 GiB in a payload of 12 bytes: refused before anything is allocated
        // for it (the fuzzers' finding, fuzz/regressions/payload/).
        let mut bytes = (3_u64 << 29).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abcd");
        let error = decode::<String>(&bytes, "study id").unwrap_err().to_string();
        assert!(
            error.contains("study id") && error.contains("LimitExceeded"),
            "{error}"
        );
        // Within the payload's size the same prefix is honoured.
        let big = "x".repeat(100_000);
        assert_eq!(decode::<String>(&encode(&big), "text"), Ok(big));
    }
}
