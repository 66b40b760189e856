//! Fuzz target `safetensors`: safetensors parsing: plain uploads into FedAvg, NamedTensors and Checkpoint::from_bytes (body: `tests/src/fuzzing.rs`, `safetensors`).
#![no_main]

fedlnm_fuzz::target!(safetensors);
