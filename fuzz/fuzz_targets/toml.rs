//! Fuzz target `toml`: the TOML configs: AggregatorConfig, NodeConfig, ConfigFile (model and plan) (body: `tests/src/fuzzing.rs`, `toml`).
#![no_main]

fedlnm_fuzz::target!(toml);
