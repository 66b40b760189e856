//! The plain-data side of federated rounds, shared by the node and the aggregator: what a site reports
//! after scoring a global model ([`SiteRoundMetrics`], with class-conditional score histograms on a
//! fixed grid for the pooled AUC, [`ScoreHistogram`]), what the aggregator commits per round
//! ([`RoundRecord`]), and weighted FedAvg over named tensors ([`fedavg`]). No network I/O, no burn.

pub mod fedavg;
mod histogram;
mod record;
pub mod wire;

pub use histogram::{HISTOGRAM_BINS, HistogramError, ScoreHistogram};
pub use record::{AggregationKind, PooledMetrics, RoundRecord, SiteRoundMetrics};

/// Stage names of the secure-aggregation messages on the wire (`SecAggRequest.stage`).
pub const STAGE_ADVERTISE_KEYS: &str = "advertise-keys";
pub const STAGE_SHARE_KEYS: &str = "share-keys";
/// No payload: waits for the list of survivors (UnmaskRequest).
pub const STAGE_UNMASK_REQUEST: &str = "unmask-request";
pub const STAGE_UNMASK_RESPONSE: &str = "unmask-response";
