//! fedlnm-shared: the plain data that the site node and the aggregator both use. No network I/O, no
//! burn.
//!
//! It holds AJCC staging ([`staging`]), the site data format and loader ([`data`]), the synthetic
//! multicentre cohort generator ([`synth`]), typed configuration files ([`config`]), TLS policy
//! ([`tls`]), the model's plain-data side (configs and digest in [`model_config`], checkpoints in
//! [`checkpoint`], input encoding in [`features`], metrics in [`evaluation`]), the federation's plain
//! data ([`federation`]), the one CSV reader ([`table`]) and what every binary does around `run`
//! ([`process`]).
//!
//! Three seams are crates of their own, re-exported here under their module names so that a path
//! reads the same everywhere: the statistics engine ([`stats`], `fedlnm-stats`: pure, no I/O), named
//! f32 weights ([`weights`], `fedlnm-tensors`) and secure aggregation ([`secagg`], `fedlnm-secagg`: no
//! transport). The burn model is `fedlnm-model`, which depends on this crate, never the reverse.

pub mod analysis;
mod category;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod data;
pub mod evaluation;
pub mod features;
pub mod federation;
pub mod files;
pub mod host;
pub mod model_config;
pub mod process;
pub mod signing;
pub mod staging;
pub mod synth;
pub mod table;
pub mod tls;

pub use fedlnm_secagg as secagg;
pub use fedlnm_stats as stats;
pub use fedlnm_tensors as weights;
