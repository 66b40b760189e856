//! fedlnm-shared: the library that the site node and the aggregator both use.
//!
//! It holds the exact clinical statistics engine ([`stats`]), AJCC staging ([`staging`]), the site data
//! format and loader ([`data`]), the synthetic multicentre cohort generator ([`synth`]) and the
//! secure-aggregation protocol core ([`secagg`]); the model and the network protocol join it as the
//! federation is built. It does no network I/O.

mod category;
pub mod config;
pub mod data;
pub mod secagg;
pub mod staging;
pub mod stats;
pub mod synth;
pub mod tls;
