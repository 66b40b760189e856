//! fedlnm-protocol: the wire between a site node (always the client: it only dials out) and the
//! study's aggregator (the only server), and the only library that does network I/O.
//!
//! - [`generated`]: the one compilation of `proto/fedlnm.proto` (client and server). Nothing outside
//!   this crate names a generated type, except tests that must send hostile bytes.
//! - [`messages`]: the typed messages the node and the aggregator speak, converted to and from the
//!   generated ones in one place.
//! - [`payload`]: the one serde encoding of Rust values inside `bytes` fields.
//! - [`transfer`]: the one chunked transfer (size announced and checked first, SHA-256 at the end).
//! - [`client`]: the node's mutual-TLS client; behind the `server` feature (the aggregator's),
//!   `server`: the typed handler trait and `serve`, and `http`: the plain-HTTP text endpoint
//!   (`/metrics`).

pub mod client;
#[cfg(feature = "server")]
pub mod http;
pub mod messages;
pub mod payload;
#[cfg(feature = "server")]
pub mod server;
pub mod signals;
pub mod transfer;

/// The generated gRPC types of `proto/fedlnm.proto`.
#[allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]
pub mod generated {
    tonic::include_proto!("fedlnm.v1");
}

pub use client::{Client, ClientError};
pub use messages::{
    AnalysisReport, AnalysisTask, CheckIn, CheckInReply, Claim, Encoded, MetricsReport, ModelRef,
    ProtocolError, RoundAggregation, SecAggMessage, SecAggStage, Task, TrainTask, UpdateFormat, UpdateHeader,
    UploadReceipt, ValidateTask,
};
#[cfg(feature = "server")]
pub use server::{Caller, Download, FederationHandler, IncomingUpload, ServeError};
/// The refusal of a call, with the code that tells the caller whether retrying can help.
pub use tonic::{Code, Status};

/// The revision of the wire this release speaks: the schema of `proto/fedlnm.proto` and the encoding
/// of every [`payload`], and what each task asks of a node. A node sends it with its check-in and each
/// task request, and the aggregator answers with its own; each end refuses the other where they
/// differ (a node of another release would misread a task or send what the aggregator cannot read,
/// and an older node skips a field it does not know without a word). Bumped whenever either changes:
/// the wire fingerprint pinned in `protocol/wire-fingerprint` (from the fuzz seeds) fails until
/// it is. 0 is what a release from before the revision was numbered sends.
pub const PROTOCOL_REVISION: u32 = 1;

/// The refusal of a peer of another protocol revision (node or aggregator), naming both and what to
/// do.
#[must_use]
pub fn revision_mismatch(peer: &str, peer_revision: u32, peer_version: &str, own: &str) -> String {
    let version = if peer_version.is_empty() {
        String::new()
    } else {
        format!(" (fedlnm {peer_version})")
    };
    let numbered = if peer_revision == 0 {
        ", i.e. a release from before revisions were numbered"
    } else {
        ""
    };
    format!(
        "{peer}{version} speaks protocol revision {peer_revision}{numbered}; {own} (fedlnm {}) speaks \
         revision {PROTOCOL_REVISION}: the nodes and the aggregator of a study must run the same \
         fedlnm release",
        env!("CARGO_PKG_VERSION")
    )
}

/// The largest gRPC message either end accepts (a transfer chunk is 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_of_another_revision_is_named_with_both_revisions_and_stops_the_node() {
        let message = revision_mismatch("the aggregator", 0, "", "this node");
        assert!(message.starts_with("the aggregator speaks protocol revision 0, i.e. a release from before"));
        assert!(message.contains(&format!(
            "this node (fedlnm {}) speaks revision {PROTOCOL_REVISION}",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(message.ends_with("must run the same fedlnm release"));
        let newer = revision_mismatch("the aggregator", PROTOCOL_REVISION + 1, "9.0.0", "this node");
        assert!(newer.starts_with(&format!(
            "the aggregator (fedlnm 9.0.0) speaks protocol revision {}; ",
            PROTOCOL_REVISION + 1
        )));
        assert!(ClientError::Revision(newer).is_fatal());
    }
}
