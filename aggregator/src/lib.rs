//! fedlnm-aggregator: the study's only server. Provisioning of the study's certificates and startup
//! kits ([`provision`]); the mutual-TLS gRPC service that authorizes every site by its certificate
//! ([`server`]); the round logic ([`study`]) with its pluggable aggregation ([`aggregation`]: plain
//! FedAvg, or [`secure`] aggregation by default); the atomic round store ([`store`]); Prometheus
//! metrics ([`telemetry`]); the study report written from the committed rounds ([`report`]).

pub mod aggregation;
pub mod provision;
pub mod report;
pub mod secure;
pub mod server;
pub mod statistics;
pub mod store;
pub mod study;
pub mod telemetry;
