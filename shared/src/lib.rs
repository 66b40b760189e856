//! fedlnm-shared: the library that the site node and the aggregator both use.
//!
//! It holds the exact clinical statistics engine ([`stats`]), AJCC staging ([`staging`]), the site data
//! format and loader ([`data`]), the synthetic multicentre cohort generator ([`synth`]), the
//! secure-aggregation protocol core ([`secagg`]), typed configuration files ([`config`]) and TLS policy
//! ([`tls`]); the model's plain-data side (configs and digest in [`model_config`], named f32 weights and
//! safetensors in [`weights`], input encoding in [`features`], metrics in [`evaluation`]) and, behind the
//! `model` feature, the burn model (`model`) and its training (`train`). It does no network I/O.

mod category;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod evaluation;
pub mod features;
pub mod federation;
pub mod host;
#[cfg(feature = "model")]
pub mod model;
pub mod model_config;
pub mod process;
pub mod secagg;
pub mod staging;
pub mod stats;
pub mod synth;
pub mod tls;
#[cfg(feature = "model")]
pub mod train;
pub mod weights;
