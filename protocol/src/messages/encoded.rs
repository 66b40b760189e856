//! [`Encoded`]: a message field's value in its payload encoding, decoded only when the receiver asks.

use crate::payload::{self, PayloadError};
use std::marker::PhantomData;

/// A value of type `T` carried in its payload encoding, decoded only when the receiver asks (after it
/// has authorized the sender), and only as the type the field declares.
#[derive(Debug)]
pub struct Encoded<T> {
    bytes: Vec<u8>,
    what: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            what: self.what,
            _type: PhantomData,
        }
    }
}

/// Equal encodings: the same bytes.
impl<T> PartialEq for Encoded<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> Eq for Encoded<T> {}

impl<T: serde::Serialize + serde::de::DeserializeOwned> Encoded<T> {
    /// Encodes `value`.
    #[must_use]
    pub fn new(value: &T, what: &'static str) -> Self {
        Self::from_bytes(payload::encode(value), what)
    }

    /// Bytes received in a message's field, to be decoded as `T` when asked.
    pub(super) fn from_bytes(bytes: Vec<u8>, what: &'static str) -> Self {
        Self {
            bytes,
            what,
            _type: PhantomData,
        }
    }

    /// The encoded bytes, for the message's field.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The encoded size in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload is empty (never a valid value).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The value.
    ///
    /// # Errors
    /// A malformed payload, named.
    pub fn decode(&self) -> Result<T, PayloadError> {
        payload::decode(&self.bytes, self.what)
    }
}
