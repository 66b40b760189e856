//! The plain-data side of federated rounds, shared by the node and the aggregator: what a site reports
//! after scoring a global model ([`SiteRoundMetrics`]; its class-conditional score histogram on a fixed
//! grid, [`ScoreHistogram`], leaves the site only inside the secure sum of its pool, for the pooled
//! AUC, [`PooledMetrics`]), what the aggregator commits per round
//! ([`RoundRecord`]), the FedBN tensors that stay at each site ([`LocalTensors`]), and weighted FedAvg
//! over named tensors ([`fedavg`]). No network I/O, no burn.

mod cohort;
mod confusion;
mod curves;
pub mod fedavg;
mod histogram;
mod local;
mod record;

pub use cohort::{SiteCohort, TIRADS_LEVELS};
pub use confusion::{ConfusionError, STAGE_SCALES, StageConfusion};
pub use curves::{CALIBRATION_GROUPS, CalibrationGroup, SiteCurves, decision_thresholds};
pub use histogram::{HISTOGRAM_BINS, HistogramError, ScoreHistogram};
pub use local::{LocalTensors, ScoringStatistics};
pub use record::{
    AggregationKind, MAX_SITE_PATIENTS, MetricsError, PooledMetrics, PrivacySpent, RoundRecord,
    STATISTICS_COUNTS_PER_PATIENT, STATISTICS_TENSORS, SiteRoundMetrics, SiteValidation, pool_statistics,
};
