//! fedlnm-shared: the library that the site node and the aggregator both use.
//!
//! It holds the exact clinical statistics engine ([`stats`]), AJCC staging ([`staging`]), the site data
//! format and loader ([`data`]) and the synthetic multicentre cohort generator ([`synth`]); the model,
//! protocol and crypto modules join it as the federation is built. It does no network I/O.

mod category;
pub mod data;
pub mod staging;
pub mod stats;
pub mod synth;
