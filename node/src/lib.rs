//! fedlnm-node: what runs at a hospital. Today: the `stats` commands over CSV files; the synthetic
//! data generator, local training and the federation client join as they are built.

pub mod cli;
pub mod commands;
pub mod table;

pub use cli::{Cli, run};
