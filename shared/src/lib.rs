//! fedlnm-shared: the library that the site node and the aggregator both use.
//!
//! Today it holds the exact clinical statistics engine ([`stats`]); the data, model, protocol and
//! crypto modules join it as the federation is built. It does no network I/O.

pub mod config;
pub mod stats;
