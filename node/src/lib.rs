//! fedlnm-node: what runs at a hospital. The `stats` commands over CSV files, the site-data check and
//! the synthetic generator, the model commands (`train`, `evaluate`, `explain`, `bench`), and the client
//! side of the federation (`check-in`, and `run`: the federated rounds, [`federation`]).

pub mod cli;
pub mod client;
pub mod commands;
pub mod federation;
pub mod table;

pub use cli::{Cli, run};

/// The generated gRPC client of `shared/proto/fedlnm.proto` (a node is only ever a client).
#[allow(clippy::all, clippy::pedantic, unused_qualifications)]
pub mod proto {
    tonic::include_proto!("fedlnm.v1");
}
