//! What the upload handler keeps of an upload: its bytes tied to the permit that counts them against
//! `rounds.max_concurrent_uploads`, and the `/metrics` label of a refused transfer.

use fedlnm_protocol::transfer::TransferError;

/// A complete upload's bytes with the permit that counts them against `rounds.max_concurrent_uploads`:
/// the permit is returned when the bytes are dropped, once the round has summed them.
pub(super) struct Received {
    pub(super) bytes: Vec<u8>,
    pub(super) _turn: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The `/metrics` label of a refused upload transfer.
pub(super) fn refusal_label(error: &TransferError) -> &'static str {
    match error {
        TransferError::TooLarge { .. } => "oversized-update",
        TransferError::WrongSize { .. } => "truncated-or-oversized-update",
        TransferError::Digest { .. } => "update-digest",
        TransferError::UnknownChecksum { .. } => "update-checksum-algorithm",
        TransferError::Idle { .. } => "idle-update",
        TransferError::OutOfOrder { .. } | TransferError::MisplacedHeader { .. } => "malformed-update",
    }
}
