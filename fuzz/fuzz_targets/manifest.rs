//! Fuzz target `manifest`: the site loader: data::load_site of a site folder with the input as patients.csv (body: `tests/src/fuzzing.rs`, `manifest`).
#![no_main]

fedlnm_fuzz::target!(manifest);
