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

/// The largest gRPC message either end accepts (a transfer chunk is 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
