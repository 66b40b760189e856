//! The one chunked transfer of the protocol, used by both directions (model downloads and update
//! uploads): the sender cuts a byte string into chunks of [`CHUNK_BYTES`]; the receiver, an
//! [`Assembler`], checks the announced size against its limit before reading anything, refuses chunks
//! out of order or past the announced size, hashes each chunk as it arrives (the SHA-256 is ready with
//! the last chunk) and checks size and digest at the end. There is no whole-transfer timeout: a slow
//! link that keeps sending is never cut off; the caller bounds the silence between two chunks.

use sha2::{Digest as _, Sha256};
use std::time::Duration;

/// Size of the chunks of every transfer (a gRPC message stays far below the 8 MiB message limit).
pub const CHUNK_BYTES: usize = 1 << 20;

/// A transfer that must not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("{what} of {announced} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        announced: u64,
        limit: u64,
    },
    #[error("{what}: a chunk at offset {offset} arrived where offset {expected} was due")]
    OutOfOrder {
        what: &'static str,
        offset: u64,
        expected: u64,
    },
    #[error("{what}: the sender declared {announced} bytes but {received} arrived")]
    WrongSize {
        what: &'static str,
        announced: u64,
        received: u64,
    },
    #[error("{what}: its SHA-256 does not match the announced digest: corrupted in transit")]
    Digest { what: &'static str },
    #[error("{what}: only the first chunk may carry a header")]
    MisplacedHeader { what: &'static str },
    #[error("{what}: no data for {} s", idle.as_secs())]
    Idle { what: &'static str, idle: Duration },
}

impl TransferError {
    /// The gRPC status this refusal travels as: the code tells the sender whether resending can help.
    #[must_use]
    pub fn status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::TooLarge { .. } => tonic::Status::resource_exhausted(message),
            Self::Digest { .. } => tonic::Status::data_loss(message),
            Self::Idle { .. } => tonic::Status::deadline_exceeded(message),
            Self::OutOfOrder { .. } | Self::WrongSize { .. } | Self::MisplacedHeader { .. } => {
                tonic::Status::invalid_argument(message)
            }
        }
    }
}

/// How many chunks `len` bytes travel in: at least one (an empty transfer is one empty chunk).
#[must_use]
pub fn chunk_count(len: usize) -> usize {
    len.div_ceil(CHUNK_BYTES).max(1)
}

/// Chunk `index` of `bytes` and its offset (empty past the end).
#[must_use]
pub fn chunk(bytes: &[u8], index: usize) -> (u64, &[u8]) {
    let start = index.saturating_mul(CHUNK_BYTES).min(bytes.len());
    let end = start.saturating_add(CHUNK_BYTES).min(bytes.len());
    (start as u64, &bytes[start..end])
}

/// The chunks of `bytes`, each with its offset.
pub fn chunks(bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    (0..chunk_count(bytes.len())).map(move |index| chunk(bytes, index))
}

/// The receiving end of one transfer.
#[derive(Debug)]
pub struct Assembler {
    what: &'static str,
    announced: u64,
    received: Vec<u8>,
    hasher: Sha256,
}

impl Assembler {
    /// Starts receiving `what` of `announced` bytes, refused when larger than `limit` (before any
    /// chunk is read: the buffer is allocated for the announced size only once it is allowed).
    ///
    /// # Errors
    /// [`TransferError::TooLarge`].
    pub fn new(what: &'static str, announced: u64, limit: u64) -> Result<Self, TransferError> {
        if announced > limit {
            return Err(TransferError::TooLarge {
                what,
                announced,
                limit,
            });
        }
        let capacity = usize::try_from(announced).unwrap_or(usize::MAX).min(1 << 30);
        Ok(Self {
            what,
            announced,
            received: Vec::with_capacity(capacity),
            hasher: Sha256::new(),
        })
    }

    /// What is being received.
    #[must_use]
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The bytes received so far.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received.len() as u64
    }

    /// One chunk; `offset` where the sender states it (downloads), `None` where chunks are only
    /// ordered by the stream (uploads).
    ///
    /// # Errors
    /// A chunk out of order, or one that goes past the announced size.
    pub fn push(&mut self, offset: Option<u64>, data: &[u8]) -> Result<(), TransferError> {
        let expected = self.received();
        if let Some(offset) = offset
            && offset != expected
        {
            return Err(TransferError::OutOfOrder {
                what: self.what,
                offset,
                expected,
            });
        }
        let after = expected + data.len() as u64;
        if after > self.announced {
            return Err(TransferError::WrongSize {
                what: self.what,
                announced: self.announced,
                received: after,
            });
        }
        self.hasher.update(data);
        self.received.extend_from_slice(data);
        Ok(())
    }

    /// The whole transfer, once its size and SHA-256 (lowercase hex) are the announced ones.
    ///
    /// # Errors
    /// [`TransferError::WrongSize`] or [`TransferError::Digest`].
    pub fn finish(self, digest: &str) -> Result<Vec<u8>, TransferError> {
        if self.received() != self.announced {
            return Err(TransferError::WrongSize {
                what: self.what,
                announced: self.announced,
                received: self.received(),
            });
        }
        if fedlnm_shared::weights::hex(&self.hasher.finalize()) != digest {
            return Err(TransferError::Digest { what: self.what });
        }
        Ok(self.received)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fedlnm_shared::weights::sha256_hex;
    use proptest::prelude::*;

    fn send(bytes: &[u8], limit: u64) -> Result<Vec<u8>, TransferError> {
        let mut assembler = Assembler::new("test transfer", bytes.len() as u64, limit)?;
        for (offset, data) in chunks(bytes) {
            assembler.push(Some(offset), data)?;
        }
        assembler.finish(&sha256_hex(bytes))
    }

    proptest! {
        #[test]
        fn chunks_reassemble_to_the_same_bytes(len in 0usize..3 * CHUNK_BYTES + 5, byte in any::<u8>()) {
            let bytes = vec![byte; len];
            prop_assert_eq!(chunks(&bytes).count(), len.div_ceil(CHUNK_BYTES).max(1));
            prop_assert!(chunks(&bytes).all(|(_, c)| c.len() <= CHUNK_BYTES));
            prop_assert_eq!(send(&bytes, len as u64).unwrap(), bytes);
        }
    }

    #[test]
    fn every_broken_transfer_is_refused_by_name() {
        let bytes: Vec<u8> = (0..=255).cycle().take(CHUNK_BYTES + 10).collect();
        assert!(matches!(
            send(&bytes, 100),
            Err(TransferError::TooLarge { announced, limit: 100, .. }) if announced == bytes.len() as u64
        ));

        let mut assembler = Assembler::new("model", bytes.len() as u64, u64::MAX).unwrap();
        let error = assembler.push(Some(5), &bytes[..5]).unwrap_err();
        assert!(matches!(
            error,
            TransferError::OutOfOrder {
                offset: 5,
                expected: 0,
                ..
            }
        ));

        let mut short = Assembler::new("model", 10, u64::MAX).unwrap();
        short.push(None, &bytes[..4]).unwrap();
        let error = short.finish(&sha256_hex(&bytes[..4])).unwrap_err();
        assert!(matches!(
            error,
            TransferError::WrongSize {
                announced: 10,
                received: 4,
                ..
            }
        ));
        assert_eq!(error.status().code(), tonic::Code::InvalidArgument);

        let mut long = Assembler::new("update", 4, u64::MAX).unwrap();
        assert!(matches!(
            long.push(None, &bytes[..5]),
            Err(TransferError::WrongSize { .. })
        ));

        let mut corrupted = Assembler::new("update", 4, u64::MAX).unwrap();
        corrupted.push(None, &bytes[..4]).unwrap();
        let error = corrupted.finish(&sha256_hex(&bytes[1..5])).unwrap_err();
        assert_eq!(error, TransferError::Digest { what: "update" });
        assert_eq!(error.status().code(), tonic::Code::DataLoss);
        assert!(error.to_string().contains("corrupted in transit"), "{error}");
    }
}
