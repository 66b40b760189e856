//! The typed errors of secure aggregation: every variant names the site and round it concerns.

use super::SiteId;

/// The protocol stage a message or a check belongs to (Bonawitz et al. 2017 rounds 0 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RoundStage {
    /// Round 0: every site advertises its public keys.
    AdvertiseKeys,
    /// Round 1: every site sends encrypted Shamir shares of its secrets to every other site.
    ShareKeys,
    /// Round 2: every site uploads its masked, quantized, weighted delta.
    MaskedInputCollection,
    /// Round 3: every survivor signs the survivor set it was told (against a malicious server; the
    /// server closes it at once otherwise).
    ConsistencyCheck,
    /// Round 4: survivors reveal the shares that let the server remove the masks.
    Unmasking,
    /// The aggregate was produced; the instance accepts nothing more.
    Done,
    /// Too few sites were left at some stage; the instance accepts nothing more.
    Aborted,
}

impl std::fmt::Display for RoundStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What went wrong in a secure-aggregation instance.
///
/// Errors about a message leave the receiving state machine exactly as it was before the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// A configuration field is invalid (checked once, when the round is configured).
    #[error("invalid secure-aggregation configuration: `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// The worst-case sum of the quantized inputs of all participants could wrap around the ring.
    #[error(
        "quantization could wrap: {sites} sites x (ceil(clip_bound {clip_bound} x 2^{fractional_bits}) + 1) \
         exceeds {max_signed} (ring Z_2^{ring_bits}); lower `clip_bound` or `fractional_bits`"
    )]
    QuantizationHeadroom {
        ring_bits: u32,
        max_signed: u64,
        sites: usize,
        clip_bound: f64,
        fractional_bits: u32,
    },
    /// A message names another study or round (a relay or replay from another instance).
    #[error(
        "{site}, round {round}: message is for study {got_study:?} round {got_round}, \
         expected study {expected_study:?}"
    )]
    WrongRound {
        site: SiteId,
        round: u64,
        got_study: String,
        got_round: u64,
        expected_study: String,
    },
    /// A message was produced under another configuration (shapes, threshold, participants, ...).
    #[error("{site}, round {round}: message was made under a different configuration hash")]
    ConfigMismatch { site: SiteId, round: u64 },
    /// A message from (or about) a site that is not a member of the round at this stage.
    #[error("{site}, round {round}: not a member of the round at stage {stage}")]
    NotInRound {
        site: SiteId,
        round: u64,
        stage: RoundStage,
    },
    /// A second message of the same stage from the same site (a replay).
    #[error("{site}, round {round}: duplicate message at stage {stage} (replay?)")]
    Duplicate {
        site: SiteId,
        round: u64,
        stage: RoundStage,
    },
    /// A message arrived at a state machine that is at another stage.
    #[error("{site}, round {round}: message for stage {got} but the instance is at stage {current}")]
    WrongStage {
        site: SiteId,
        round: u64,
        got: RoundStage,
        current: RoundStage,
    },
    /// A state machine was asked to close a stage it is not at.
    #[error("round {round}: cannot close stage {requested}, the instance is at stage {current}")]
    OutOfOrder {
        round: u64,
        requested: RoundStage,
        current: RoundStage,
    },
    /// A masked input of the wrong length.
    #[error("{site}, round {round}: masked input has {got} elements, expected {expected}")]
    WrongLength {
        site: SiteId,
        round: u64,
        expected: usize,
        got: usize,
    },
    /// A message is structurally wrong (missing or extra entries).
    #[error("{site}, round {round}: malformed message: {reason}")]
    Malformed {
        site: SiteId,
        round: u64,
        reason: String,
    },
    /// Fewer than `threshold` sites are left: the instance aborts and yields no partial result.
    #[error("round {round}: only {survivors} sites left at stage {stage}, threshold is {threshold}; aborted")]
    TooFewSurvivors {
        round: u64,
        stage: RoundStage,
        survivors: usize,
        threshold: usize,
    },
    /// A site's closed neighbourhood in the communication graph (SecAgg+) has fewer than t members
    /// left at some stage: its secrets could not be rebuilt. The instance aborts (server) or the site
    /// refuses to go on (client); no partial result.
    #[error(
        "round {round}: only {survivors} of the closed neighbourhood of {site} left at stage {stage}, \
         threshold is {threshold}; aborted"
    )]
    NeighbourhoodTooSmall {
        round: u64,
        stage: RoundStage,
        site: SiteId,
        survivors: usize,
        threshold: usize,
    },
    /// The instance aborted earlier; it accepts nothing more.
    #[error("round {round}: the secure-aggregation instance was aborted")]
    Aborted { round: u64 },
    /// An encrypted share failed authentication (tampered, or for another pair, round or study).
    #[error("{site}, round {round}: the encrypted share from {from} failed authentication")]
    ShareDecryption { site: SiteId, from: SiteId, round: u64 },
    /// A peer's public key is invalid (a low-order point: the shared secret would not be contributory).
    #[error("{site}, round {round}: public key of {peer} is invalid")]
    InvalidPeerKey { site: SiteId, peer: SiteId, round: u64 },
    /// The server asked a site to reveal both the self-mask share and the mask-key share of one peer.
    #[error("{site}, round {round}: refusing to reveal both the self-mask and the mask-key share of {peer}")]
    RefuseBothShares { site: SiteId, peer: SiteId, round: u64 },
    /// A peer's credential or signature does not verify (a substituted key, a replayed or forged
    /// signature, a credential of another participant or from outside the study).
    #[error("{site}, round {round}: the signature of {peer} on its {what} does not verify: {reason}")]
    BadSignature {
        site: SiteId,
        peer: SiteId,
        round: u64,
        what: &'static str,
        reason: String,
    },
    /// The server's account of the survivors is inconsistent (different sets to different sites, or
    /// not the set this site signed): the site reveals no share.
    #[error("{site}, round {round}: inconsistent survivor set, no unmasking share revealed: {reason}")]
    Inconsistent {
        site: SiteId,
        round: u64,
        reason: String,
    },
    /// A malicious-server instance was started without the site's signing key.
    #[error(
        "{site}, round {round}: this instance protects against a malicious server and needs the site's signing key"
    )]
    Unauthenticated { site: SiteId, round: u64 },
    /// A site's own delta is not finite (checked by the node before masking).
    #[error("{site}, round {round}: delta `{tensor}`[{index}] is not finite")]
    DeltaNotFinite {
        site: SiteId,
        round: u64,
        tensor: String,
        index: usize,
    },
    /// A site's own delta exceeds the configured L2 norm bound.
    #[error("{site}, round {round}: delta L2 norm {norm} exceeds the bound {bound}")]
    DeltaNormTooLarge {
        site: SiteId,
        round: u64,
        norm: f64,
        bound: f64,
    },
    /// A site's delta does not have the configured tensors and shapes.
    #[error("{site}, round {round}: delta does not match the model: {reason}")]
    DeltaShape {
        site: SiteId,
        round: u64,
        reason: String,
    },
    /// A site's sample count is zero or above the configured maximum.
    #[error("{site}, round {round}: sample count {n_samples} is outside 1..={max}")]
    SampleCount {
        site: SiteId,
        round: u64,
        n_samples: u64,
        max: u64,
    },
    /// The instance was configured for the other kind of input (weighted deltas vs counts).
    #[error("round {round}: this instance sums {configured:?} inputs, not {given:?}")]
    WrongInputKind {
        round: u64,
        configured: super::InputKind,
        given: super::InputKind,
    },
    /// A site's counts do not have the configured layout or exceed the configured total.
    #[error("{site}, round {round}: counts do not fit the instance: {reason}")]
    Counts {
        site: SiteId,
        round: u64,
        reason: String,
    },
    /// The server could not reconstruct a site's secret from the revealed shares.
    #[error("{site}, round {round}: cannot reconstruct its secret: {reason}")]
    Reconstruction {
        site: SiteId,
        round: u64,
        reason: String,
    },
    /// The decoded aggregate is impossible (a sample count or a site count that no survivors could
    /// send) or not of the expected length.
    #[error("round {round}: decoded aggregate is invalid: {reason}")]
    InvalidAggregate { round: u64, reason: String },
    /// The operating system's random generator or a primitive failed.
    #[error("{site}, round {round}: cryptographic failure in {what}")]
    Crypto {
        site: SiteId,
        round: u64,
        what: &'static str,
    },
}
