//! Fuzz target `protobuf`: prost decoding of the generated messages and their conversion to the typed messages (body: `tests/src/fuzzing.rs`, `protobuf`).
#![no_main]

fedlnm_fuzz::target!(protobuf);
