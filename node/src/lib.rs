//! fedlnm-node: what runs at a hospital. The `stats` commands over CSV files, the site-data check and
//! the synthetic generator, the model commands (`train`, `evaluate`, `explain`, `bench`, `quality`),
//! and the client side of the federation (`check-in`, and `run`: the federated rounds,
//! [`federation`], over `fedlnm-protocol`'s mutual-TLS client). No server code: the simulated study
//! that runs both sides is `fedlnm-sim`.

pub mod cli;
pub mod commands;
pub mod federation;

pub use cli::{Cli, run};
