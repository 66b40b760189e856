//! `[rounds]` of `aggregator.toml`: how a study runs its rounds (deadlines, secure aggregation and
//! its threat model, FedBN, the learning-rate schedule, the statistics sites score with).

use super::SecureAggregationGraph;
use crate::secagg::Ring;
use serde::{Deserialize, Serialize};

/// Which aggregator secure aggregation protects the sites against (`rounds.threat_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThreatModel {
    /// The aggregator may deviate from the protocol (substitute keys, replay messages, tell sites
    /// different survivor sets): each site signs its keys and the survivor set with its study key and
    /// checks its peers' signatures before it reveals anything; every stage needs more than two
    /// thirds of the sites (with 3 training sites, all of them).
    #[default]
    MaliciousAggregator,
    /// The aggregator follows the protocol and only tries to learn from what it sees: no signatures,
    /// and every stage needs more than half of the sites (tolerates more dropouts).
    HonestButCuriousAggregator,
}

impl ThreatModel {
    /// The Shamir threshold of an instance between `n` sites when the study needs at least
    /// `min_sites`: the smallest t the model allows (n/2 < t, or 2n/3 < t), raised to `min_sites`,
    /// at most n.
    #[must_use]
    pub fn threshold(self, n: usize, min_sites: usize) -> usize {
        let floor = match self {
            Self::MaliciousAggregator => 2 * n / 3 + 1,
            Self::HonestButCuriousAggregator => n / 2 + 1,
        };
        floor.max(min_sites).min(n)
    }

    /// Whether sites sign their keys and survivor sets.
    #[must_use]
    pub fn is_malicious(self) -> bool {
        self == Self::MaliciousAggregator
    }
}

/// `[rounds]` of `aggregator.toml`: how the study runs its rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundSettings {
    /// Number of federated rounds.
    pub rounds: u64,
    /// A round needs at least this many training sites' updates, or it is abandoned (nothing
    /// committed) and started again.
    pub min_sites: usize,
    /// Seconds from a round's start until the aggregator stops waiting for training updates; a site
    /// that misses it is left out of that round and rejoins at the next.
    pub round_deadline_s: u64,
    /// Seconds each secure-aggregation stage (keys, shares, unmasking) waits for missing sites.
    pub stage_timeout_s: u64,
    /// Seconds the aggregator waits for the sites' validation metrics of a new model.
    pub validation_deadline_s: u64,
    /// Seconds a node's request for its next task waits for one before the answer is "wait, ask
    /// again" (keep it below the idle timeout of any proxy between the sites and the aggregator).
    pub long_poll_s: u64,
    /// Secure aggregation (Bonawitz et al.): the aggregator only sees the sum of masked updates.
    pub secure_aggregation: bool,
    /// Which aggregator secure aggregation protects the sites against.
    pub threat_model: ThreatModel,
    /// Which training sites work with which in secure aggregation: `"complete"` (every site with every
    /// other: Bonawitz et al.; for a few dozen sites) or
    /// `{ harary = { dropout_fraction = 0.05, corrupt_fraction = 0.05 } }` (SecAgg+, Bell et al.:
    /// each site with a few others, drawn at random each round, optionally `degree = k`; for a hundred
    /// sites or more). The threshold is then per group of k + 1 sites.
    pub secure_aggregation_graph: SecureAggregationGraph,
    /// The ring of secure aggregation's masked vectors: `"z2_64"` (64-bit words; each element of
    /// n_k·Δ_k passes up to ±2^20 at 2^-32 resolution) or `"z2_32"` (32-bit words, as Flower's SecAgg+:
    /// half the bytes on the wire and half the mask work; each element of n_k·Δ_k passes up to ±4096,
    /// larger ones are clipped, at 2^-(18 − ⌈log2 sites⌉) resolution).
    pub secure_aggregation_ring: Ring,
    /// FedBN: normalisation layers stay local to each site (never uploaded, never averaged).
    pub fedbn: bool,
    /// The learning rate of the rounds' local training: `"each_round"` (every round runs `[train]`'s
    /// warm-up and cosine decay afresh) or `"across_rounds"` (one cosine decay over the study's rounds,
    /// as a centralised training's over its epochs: each round continues from where the last ended;
    /// [`crate::model_config::TrainPlan::for_round`]).
    pub learning_rate_schedule: LearningRateSchedule,
    /// The server learning rate η of FedOpt (Reddi et al. 2021) with plain SGD at the server: the new
    /// model is w + η·Δ̄. 1 is FedAvg; above 1 the agreed direction of the sites' changes is taken
    /// further each round. Normalisation running statistics always move by Δ̄ itself.
    pub server_learning_rate: f64,
    /// The batch-normalisation statistics each site scores a new model with: `"global"` (the model's
    /// own, the training sites' running statistics averaged, as published) or `"site"` (each site
    /// re-estimates them on its own validation patients' pictures before it scores: AdaBN, no label is
    /// read). A FedAvg site trains with batch statistics of its own patients only, so the averaged
    /// ones match no site. FedBN sites always score with their own.
    pub normalisation_statistics: NormalisationStatistics,
    /// Largest L2 norm of a site's weight delta (each node checks its own before masking).
    pub max_delta_norm: f64,
    /// Updates in the aggregator's memory at once: being received, or complete and held by the round
    /// (plain or secure) until it sums them (it sums this many together, in one pass over its running
    /// sum); further
    /// sites wait (their streams are held back by HTTP/2 flow control). Bounds the aggregator's memory
    /// by this many updates, whatever the number of sites; the number of sites or more gives the
    /// fastest plain rounds (all uploads summed in one pass, into the average itself).
    pub max_concurrent_uploads: usize,
    /// Seconds an upload may go without a chunk arriving before it is refused (that site leaves the
    /// round at its deadline; the others are not held up). A slow link that keeps sending is never
    /// cut off: this bounds silence, not duration.
    pub transfer_idle_s: u64,
}

impl Default for RoundSettings {
    fn default() -> Self {
        Self {
            rounds: 10,
            min_sites: 2,
            round_deadline_s: 6 * 3600,
            stage_timeout_s: 600,
            validation_deadline_s: 3600,
            long_poll_s: 20,
            secure_aggregation: true,
            threat_model: ThreatModel::default(),
            secure_aggregation_graph: SecureAggregationGraph::Complete,
            secure_aggregation_ring: Ring::Z2_64,
            fedbn: false,
            learning_rate_schedule: LearningRateSchedule::EachRound,
            server_learning_rate: 1.0,
            normalisation_statistics: NormalisationStatistics::Global,
            max_delta_norm: 1.0e4,
            max_concurrent_uploads: 4,
            transfer_idle_s: 120,
        }
    }
}

impl RoundSettings {
    /// Whether every site scores a new model with its own normalisation statistics (AdaBN).
    #[must_use]
    pub fn adapts_normalisation(&self) -> bool {
        self.normalisation_statistics == NormalisationStatistics::Site
    }
}

/// `rounds.learning_rate_schedule`: how the local learning rate moves over a study's rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearningRateSchedule {
    /// Each round's local training runs the plan's warm-up and cosine decay afresh.
    #[default]
    EachRound,
    /// One cosine decay over all the rounds: round r decays from where round r − 1 ended.
    AcrossRounds,
}

/// `rounds.normalisation_statistics`: which batch-normalisation statistics a site scores a model with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalisationStatistics {
    /// The model's own running statistics (what the study publishes).
    #[default]
    Global,
    /// Re-estimated on the scoring site's own validation patients' pictures first (AdaBN).
    Site,
}
