//! fedlnm-shared: the library that the site node and the aggregator both use.
//!
//! Today it holds the exact clinical statistics engine ([`stats`]) and the secure-aggregation protocol
//! core ([`secagg`]); the data, model and protocol modules join it as the federation is built. It does
//! no network I/O.

pub mod secagg;
pub mod stats;
