//! Fuzz target `payload`: fedlnm_protocol::payload::decode of every payload type (secure aggregation, plans, metrics) (body: `tests/src/fuzzing.rs`, `payload`).
#![no_main]

fedlnm_fuzz::target!(payload);
