//! fedlnm-aggregator: the study's only server. Today: provisioning of the study's certificates and
//! startup kits, the mutual-TLS gRPC service that authorizes every site by its certificate (the
//! federation rounds build on it), and the study report written from the committed rounds ([`report`]).

pub mod provision;
pub mod report;
pub mod server;

/// The generated gRPC types of `shared/proto/fedlnm.proto` (server, and a client for tests).
#[allow(clippy::all, clippy::pedantic, unused_qualifications)]
pub mod proto {
    tonic::include_proto!("fedlnm.v1");
}
