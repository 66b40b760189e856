//! fedlnm-node: what runs at a hospital. Today: the `stats` commands over CSV files and the model
//! commands (`train`, `evaluate`, `explain`, `bench`); the federation client joins as it is built.

pub mod cli;
pub mod commands;
pub mod table;

pub use cli::{Cli, run};
