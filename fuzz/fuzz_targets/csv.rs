//! Fuzz target `csv`: the CSV reader: table::CsvReader and table::Table (body: `tests/src/fuzzing.rs`, `csv`).
#![no_main]

fedlnm_fuzz::target!(csv);
