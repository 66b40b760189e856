//! Fuzz target `transfer`: fedlnm_protocol::transfer::Assembler driven by a chunk sequence read off the input (body: `tests/src/fuzzing.rs`, `transfer`).
#![no_main]

fedlnm_fuzz::target!(transfer);
