//! The configuration of one secure-aggregation instance, validated once, and the values derived from it
//! (aggregated layout, configuration hash, HKDF salt).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{SecAggError, SiteId};
use fedlnm_tensors::NamedTensors;

mod delta;
mod graph;
mod hash;
mod quantization;
use graph::Neighbourhoods;
pub use graph::{
    CORRECTNESS_BITS, Graph, HararyParameters, SECURITY_BITS, check_degree, check_harary_parameters,
    recommend_harary, structural_minimum,
};
pub(crate) use hash::Transcript;
use hash::config_hash;
pub use quantization::{QuantizationConfig, Ring, Z2_32_CLIP_BOUND};

/// Most participants a round may have: Shamir over GF(2^8) has 255 non-zero evaluation points.
pub const MAX_PARTICIPANTS: usize = 255;

/// One tensor of the model: its name and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of elements (product of the shape).
    #[must_use]
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no element.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The [`TensorSpec`]s of a model, in its order: what [`SecAggConfig::tensors`] needs to aggregate
/// deltas of `model` (typically the round's global model).
#[must_use]
pub fn tensor_specs(model: &NamedTensors) -> Vec<TensorSpec> {
    model
        .tensors
        .iter()
        .map(|tensor| TensorSpec {
            name: tensor.name.clone(),
            shape: tensor.shape.clone(),
        })
        .collect()
}

/// The global model a round's deltas are relative to (its SHA-256, hex) and the attempt of the round
/// (an abandoned round starts again as a new attempt: a distinct protocol instance, with its own
/// configuration hash, so that nothing from an abandoned attempt is accepted by the next).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model_digest: String,
    pub attempt: u64,
    /// Drawn at random by the server process that opened the attempt: attempt numbers start again
    /// when a server restarts, and this keeps the attempts of two processes (a restarted aggregator
    /// and the one it replaced) distinct instances too.
    pub instance: u64,
}

impl ModelVersion {
    /// Attempt `attempt` on `model_digest`, of server instance 0 (see [`Self::of_instance`]).
    #[must_use]
    pub fn new(model_digest: impl Into<String>, attempt: u64) -> Self {
        Self {
            model_digest: model_digest.into(),
            attempt,
            instance: 0,
        }
    }

    /// The same attempt, opened by the server process `instance`.
    #[must_use]
    pub fn of_instance(mut self, instance: u64) -> Self {
        self.instance = instance;
        self
    }
}

/// What the masked vector of an instance carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A training round: n_k·Δ_k in fixed point (quantized, clipped) and n_k; decoded as FedAvg
    /// ([`crate::SecAggServer::finish`]).
    #[default]
    WeightedDelta,
    /// Statistics: non-negative integer counts (score histograms, confusion matrices), one vector per
    /// configured "tensor", summed exactly with no quantization; a site's counts total at most
    /// `quantization.max_sample_count`, and one more element carries 1 per site (the sum is then the
    /// number of sites in it, checked). Decoded by [`crate::SecAggServer::finish_counts`].
    Counts,
    /// Elements of the ring Z_2^64, one vector per configured "tensor", summed modulo 2^64 with no
    /// quantization and no bound: the caller encodes (the study's analyses: signed fixed point whose
    /// scales make the true sum fit) and decodes; the sum reveals Σ_k x_k mod 2^64 and nothing else.
    /// One more element carries 1 per site, as for counts. Decoded by
    /// [`crate::SecAggServer::finish_ring`].
    Ring,
}

/// Distributed differential-privacy noise of a training instance (Kairouz, Liu & Steinke 2021):
/// each site clips its delta to L2 norm `clip_norm` (C), takes weight n_k = 1 (equal weights: with
/// sample-count weights the sensitivity would be max n_k · C), and adds discrete Gaussian noise of
/// standard deviation z·C/√t (t = the threshold) to every fixed-point element before masking, so that
/// the sum of the |U3| ≥ t survivors carries noise of standard deviation at least z·C ([`crate::noise`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistributedNoise {
    pub clip_norm: f64,
    /// z: the noise standard deviation on the sum over `clip_norm`.
    pub noise_multiplier: f64,
}

/// The aggregator an instance protects the sites against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// An honest-but-curious server: it follows the protocol and tries to learn from what it sees
    /// (Bonawitz's rounds 0, 1, 2 and 4; n/2 < t).
    CuriousServer,
    /// A malicious server, which may also substitute keys, replay messages and tell different sites
    /// different survivor sets: every site signs its round-0 keys and the survivor set it is told
    /// (round 3, the consistency check) with its study credential, verifies every peer's signatures
    /// before it uses a key or reveals a share, and the threshold is above two thirds (2n/3 < t).
    /// `identities` names the credential (the site id in its certificate) of every participant.
    MaliciousServer { identities: BTreeMap<SiteId, String> },
}

/// Everything the server and all sites must agree on for one round (one instance of the protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecAggConfig {
    pub study_id: String,
    pub round: u64,
    /// The global model the deltas are relative to, and which start of the round this is.
    pub model_version: ModelVersion,
    /// The sites invited to the round (any order; duplicates are an error).
    pub participants: Vec<SiteId>,
    /// Shamir threshold t: the server needs t sites at every stage; n/2 < t ≤ n (2n/3 < t against a
    /// malicious server). With a Harary [`Graph`], t is per closed neighbourhood (k + 1 sites):
    /// (k+1)/2 < t ≤ k + 1 (2(k+1)/3 < t against a malicious server).
    pub threshold: usize,
    /// All tensors of the model, in order.
    pub tensors: Vec<TensorSpec>,
    /// FedBN: tensors whose name matches one of these patterns (`*` matches any run of characters) stay
    /// local: they are never quantized, masked or sent.
    pub fedbn_exclude: Vec<String>,
    pub quantization: QuantizationConfig,
    /// Bound on the L2 norm of a site's Δ_k over the aggregated tensors, checked by the site itself.
    pub max_delta_norm: f64,
    /// Weighted deltas (a training round) or integer counts (statistics).
    pub input: InputKind,
    /// Differential privacy: clipping and distributed noise (training instances only).
    pub privacy: Option<DistributedNoise>,
    /// Against which server the instance protects the sites (signatures and consistency check).
    pub security: Security,
    /// Which pairs of sites agree keys, share secrets and mask pairwise: all (Bonawitz) or the
    /// neighbours of a random Harary graph (SecAgg+).
    pub graph: Graph,
}

/// A validated [`SecAggConfig`] with its derived values. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RoundConfig {
    inner: std::sync::Arc<Derived>,
}

#[derive(Debug)]
struct Derived {
    config: SecAggConfig,
    participants: Vec<SiteId>,
    aggregated: Vec<TensorSpec>,
    vector_len: usize,
    config_hash: [u8; 32],
    salt: [u8; 32],
    neighbourhoods: Neighbourhoods,
    min_survivors: usize,
}

impl SecAggConfig {
    /// Validates the configuration once (threshold, shapes, quantization headroom) and derives the
    /// aggregated layout, the configuration hash and the HKDF salt.
    ///
    /// # Errors
    /// [`SecAggError::InvalidConfig`] naming the field, or [`SecAggError::QuantizationHeadroom`] when
    /// the sum of all participants' quantized inputs could wrap.
    pub fn validate(self) -> Result<RoundConfig, SecAggError> {
        let invalid = |field: &'static str, reason: String| SecAggError::InvalidConfig { field, reason };
        if self.study_id.is_empty() {
            return Err(invalid("study_id", "empty".into()));
        }
        let mut participants = self.participants.clone();
        participants.sort_unstable();
        if let Some(w) = participants.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid("participants", format!("{} appears twice", w[0])));
        }
        let n = participants.len();
        if !(2..=MAX_PARTICIPANTS).contains(&n) {
            return Err(invalid(
                "participants",
                format!("{n} sites, expected 2..={MAX_PARTICIPANTS}"),
            ));
        }
        let (members, group) = graph::check_threshold(&self, n)?;
        if let Security::MaliciousServer { identities } = &self.security {
            if 3 * self.threshold <= 2 * members {
                return Err(invalid(
                    "threshold",
                    format!(
                        "{} with {group} against a malicious server, expected 2m/3 < t <= m",
                        self.threshold
                    ),
                ));
            }
            if !identities.keys().eq(participants.iter()) {
                return Err(invalid(
                    "security.identities",
                    "must name exactly the participants".into(),
                ));
            }
            let mut names: Vec<&str> = identities.values().map(String::as_str).collect();
            names.sort_unstable();
            if names.iter().any(|name| name.is_empty()) || names.windows(2).any(|w| w[0] == w[1]) {
                return Err(invalid(
                    "security.identities",
                    "every participant needs its own non-empty identity".into(),
                ));
            }
        }
        let mut names: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid("tensors", format!("`{}` appears twice", w[0])));
        }
        // Shapes come from the wire: an element count that overflows is refused before any is used.
        let element_count = |t: &TensorSpec| t.shape.iter().try_fold(1_usize, |n, &d| n.checked_mul(d));
        if let Some(t) = self.tensors.iter().find(|t| element_count(t).is_none()) {
            return Err(invalid("tensors", format!("`{}` has too many elements", t.name)));
        }
        if let Some(t) = self.tensors.iter().find(|t| t.is_empty()) {
            return Err(invalid("tensors", format!("`{}` has no element", t.name)));
        }
        if self.fedbn_exclude.iter().any(String::is_empty) {
            return Err(invalid("fedbn_exclude", "empty pattern".into()));
        }
        if self.input != InputKind::WeightedDelta && !self.fedbn_exclude.is_empty() {
            return Err(invalid(
                "fedbn_exclude",
                "counts and ring sums have no local tensors: expected no pattern".into(),
            ));
        }
        let aggregated: Vec<TensorSpec> = self
            .tensors
            .iter()
            .filter(|t| !self.fedbn_exclude.iter().any(|p| glob_match(p, &t.name)))
            .cloned()
            .collect();
        if aggregated.is_empty() {
            return Err(invalid(
                "tensors",
                "every tensor is excluded by fedbn_exclude".into(),
            ));
        }
        let q = &self.quantization;
        if q.fractional_bits > q.ring.bits() - 2 {
            return Err(invalid(
                "quantization.fractional_bits",
                format!("{} > {} in {}", q.fractional_bits, q.ring.bits() - 2, q.ring),
            ));
        }
        if q.ring != Ring::Z2_64 && self.input != InputKind::WeightedDelta {
            return Err(invalid(
                "quantization.ring",
                format!("counts and ring sums need Z_2^64, not {}", q.ring),
            ));
        }
        if !(q.clip_bound.is_finite() && q.clip_bound > 0.0) {
            return Err(invalid(
                "quantization.clip_bound",
                format!("{} is not a positive number", q.clip_bound),
            ));
        }
        if !(1..=MAX_EXACT_COUNT).contains(&q.max_sample_count) {
            return Err(invalid(
                "quantization.max_sample_count",
                format!("{} not in 1..=2^53", q.max_sample_count),
            ));
        }
        check_headroom(n, q)?;
        if let Some(noise) = &self.privacy {
            if self.input != InputKind::WeightedDelta {
                return Err(invalid(
                    "privacy",
                    "noise is added to weighted deltas only".into(),
                ));
            }
            if !(noise.clip_norm.is_finite() && noise.clip_norm > 0.0) {
                return Err(invalid(
                    "privacy.clip_norm",
                    format!("{} is not a positive number", noise.clip_norm),
                ));
            }
            if !(noise.noise_multiplier.is_finite() && noise.noise_multiplier > 0.0) {
                return Err(invalid(
                    "privacy.noise_multiplier",
                    format!("{} is not a positive number", noise.noise_multiplier),
                ));
            }
            // An element is at most C (clipped) plus its noise; a draw beyond 64 standard deviations
            // has probability below 2^-2900. The sum of n sites must stay below 2^(k−1).
            let sigma = site_noise_sigma(noise, self.threshold, q.fractional_bits);
            let per_site = noise.clip_norm * scale(q.fractional_bits) + 1.0 + 64.0 * sigma;
            if per_site * n as f64 >= q.ring.max_signed() as f64 {
                return Err(invalid(
                    "privacy",
                    format!(
                        "{n} sites x (clip_norm {} + 64 noise deviations) could wrap the ring: lower \
                         the noise multiplier or the clipping norm",
                        noise.clip_norm
                    ),
                ));
            }
        }
        if !(self.max_delta_norm.is_finite() && self.max_delta_norm > 0.0) {
            return Err(invalid(
                "max_delta_norm",
                format!("{} is not a positive number", self.max_delta_norm),
            ));
        }
        // One element per aggregated weight, plus one for n_k.
        let vector_len = aggregated
            .iter()
            .try_fold(1_usize, |n, t| n.checked_add(t.len()))
            .ok_or_else(|| invalid("tensors", "too many elements in all".into()))?;
        let config_hash = config_hash(&self, &participants);
        let salt = {
            let mut t = Transcript::new(b"fedlnm-secagg-salt-v1");
            t.bytes(self.study_id.as_bytes());
            t.u64(self.round);
            t.bytes(&config_hash);
            t.finish()
        };
        let neighbourhoods = Neighbourhoods::derive(&self.graph, &participants, &salt);
        let min_survivors = match self.graph {
            Graph::Complete => self.threshold,
            Graph::Harary { dropout_fraction, .. } => {
                (n - graph::parameters_count(dropout_fraction, n)).max(self.threshold)
            }
        };
        Ok(RoundConfig {
            inner: std::sync::Arc::new(Derived {
                config: self,
                participants,
                aggregated,
                vector_len,
                config_hash,
                salt,
                neighbourhoods,
                min_survivors,
            }),
        })
    }
}

/// Largest integer such that it and all smaller ones are exact in f64.
const MAX_EXACT_COUNT: u64 = 1 << 53;

/// The worst-case |Σ_k q_k| over all participants must stay below 2^(k−1) (two's complement in
/// Z_2^k): n · (ceil(C·2^f) + 1) ≤ 2^(k−1) − 1 (the +1 is stochastic rounding up), and n · max_count
/// likewise.
fn check_headroom(n: usize, q: &QuantizationConfig) -> Result<(), SecAggError> {
    let headroom = SecAggError::QuantizationHeadroom {
        ring_bits: q.ring.bits(),
        max_signed: q.ring.max_signed(),
        sites: n,
        clip_bound: q.clip_bound,
        fractional_bits: q.fractional_bits,
    };
    let per_site = (q.clip_bound * scale(q.fractional_bits)).ceil() + 1.0;
    if per_site >= 9_223_372_036_854_775_808.0 {
        return Err(headroom);
    }
    // per_site is an integer-valued f64 below 2^63: the conversion is exact.
    let worst = per_site as u128 * n as u128;
    let worst_count = u128::from(q.max_sample_count) * n as u128;
    let max = u128::from(q.ring.max_signed());
    if worst > max || worst_count > max {
        return Err(headroom);
    }
    Ok(())
}

/// The standard deviation, in ring units (2^-f), of the noise one site adds to each element:
/// z·C·2^f / √t.
fn site_noise_sigma(noise: &DistributedNoise, threshold: usize, fractional_bits: u32) -> f64 {
    noise.noise_multiplier * noise.clip_norm * scale(fractional_bits) / (threshold.max(1) as f64).sqrt()
}

/// 2^bits as f64 (exact for bits ≤ 1023).
pub(crate) fn scale(bits: u32) -> f64 {
    f64::from(2u32).powi(bits as i32)
}

impl RoundConfig {
    /// The configuration as given.
    #[must_use]
    pub fn config(&self) -> &SecAggConfig {
        &self.inner.config
    }
    #[must_use]
    pub fn study_id(&self) -> &str {
        &self.inner.config.study_id
    }
    #[must_use]
    pub fn round(&self) -> u64 {
        self.inner.config.round
    }
    #[must_use]
    pub fn threshold(&self) -> usize {
        self.inner.config.threshold
    }
    /// The participants, sorted.
    #[must_use]
    pub fn participants(&self) -> &[SiteId] {
        &self.inner.participants
    }
    /// The tensors that are aggregated (all minus the FedBN exclusions), in model order.
    #[must_use]
    pub fn aggregated_tensors(&self) -> &[TensorSpec] {
        &self.inner.aggregated
    }
    /// What the masked vector carries.
    #[must_use]
    pub fn input(&self) -> InputKind {
        self.inner.config.input
    }
    /// The differential-privacy noise of the instance, and the standard deviation (ring units) of
    /// what one site adds to each element.
    #[must_use]
    pub fn noise(&self) -> Option<(DistributedNoise, f64)> {
        let c = &self.inner.config;
        c.privacy.map(|noise| {
            (
                noise,
                site_noise_sigma(&noise, c.threshold, c.quantization.fractional_bits),
            )
        })
    }
    /// Against which server the instance protects the sites.
    #[must_use]
    pub fn security(&self) -> &Security {
        &self.inner.config.security
    }
    /// Whether sites sign their keys and survivor sets ([`Security::MaliciousServer`]).
    #[must_use]
    pub fn is_authenticated(&self) -> bool {
        matches!(self.inner.config.security, Security::MaliciousServer { .. })
    }
    /// The identity a participant's credential must carry (malicious-server instances only).
    #[must_use]
    pub fn identity(&self, site: SiteId) -> Option<&str> {
        match &self.inner.config.security {
            Security::MaliciousServer { identities } => identities.get(&site).map(String::as_str),
            Security::CuriousServer => None,
        }
    }
    /// Length of the masked vector: the aggregated weights (or counts) plus one element for n_k (or 1).
    #[must_use]
    pub fn vector_len(&self) -> usize {
        self.inner.vector_len
    }
    /// SHA-256 over every field of the configuration (shapes, quantization, threshold, participants,
    /// model version, study, round).
    #[must_use]
    pub fn config_hash(&self) -> [u8; 32] {
        self.inner.config_hash
    }
    /// HKDF salt: SHA-256(study id ‖ round ‖ config hash).
    #[must_use]
    pub fn salt(&self) -> &[u8; 32] {
        &self.inner.salt
    }
    /// Whether a tensor name is excluded from aggregation by FedBN.
    #[must_use]
    pub fn is_excluded(&self, name: &str) -> bool {
        self.inner
            .config
            .fedbn_exclude
            .iter()
            .any(|p| glob_match(p, name))
    }
    /// The Shamir evaluation point of a site: its 1-based index in the sorted participant list.
    #[must_use]
    pub fn share_point(&self, site: SiteId) -> Option<u8> {
        let index = self.inner.participants.binary_search(&site).ok()?;
        // validate() caps participants at 255, so index + 1 fits in u8.
        u8::try_from(index + 1).ok()
    }
    #[must_use]
    pub fn is_participant(&self, site: SiteId) -> bool {
        self.inner.participants.binary_search(&site).is_ok()
    }
}

/// Glob matching with `*` (any run of characters, possibly empty); every other character is literal.
#[must_use]
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            si = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config(n: u32, t: usize) -> SecAggConfig {
        SecAggConfig {
            study_id: "study".into(),
            round: 3,
            model_version: ModelVersion::new("v1", 1),
            participants: (1..=n).map(SiteId).collect(),
            threshold: t,
            tensors: vec![
                TensorSpec {
                    name: "conv.weight".into(),
                    shape: vec![2, 3],
                },
                TensorSpec {
                    name: "bn.weight".into(),
                    shape: vec![3],
                },
            ],
            fedbn_exclude: vec!["bn.*".into()],
            quantization: QuantizationConfig::default(),
            max_delta_norm: 10.0,
            input: InputKind::WeightedDelta,
            privacy: None,
            security: Security::CuriousServer,
            graph: Graph::Complete,
        }
    }

    fn malicious(mut c: SecAggConfig) -> SecAggConfig {
        c.security = Security::MaliciousServer {
            identities: c.participants.iter().map(|&s| (s, format!("S{}", s.0))).collect(),
        };
        c
    }

    #[test]
    fn tensor_specs_keep_the_model_order_and_shapes() {
        use fedlnm_tensors::NamedTensor;
        let model = NamedTensors {
            tensors: vec![
                NamedTensor::new("conv.weight", vec![2, 1, 2], vec![0.0; 4]).unwrap(),
                NamedTensor::new("bn.weight", vec![3], vec![1.0; 3]).unwrap(),
            ],
        };
        let mut c = config(3, 2);
        c.tensors = tensor_specs(&model);
        assert_eq!(
            c.tensors,
            [
                TensorSpec {
                    name: "conv.weight".into(),
                    shape: vec![2, 1, 2]
                },
                TensorSpec {
                    name: "bn.weight".into(),
                    shape: vec![3]
                }
            ]
        );
        assert_eq!(c.validate().unwrap().vector_len(), 4 + 1);
    }

    #[test]
    fn glob_table() {
        for (pattern, name, expected) in [
            ("bn.*", "bn.weight", true),
            ("*norm*", "layer1.batchnorm.bias", true),
            ("*.bn", "layer.bn", true),
            ("*.bn", "layer.bn.x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exact2", false),
            ("*", "", true),
        ] {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn validation_table() {
        let ok = config(5, 3).validate().unwrap();
        assert_eq!(ok.vector_len(), 6 + 1, "bn excluded, one element for n_k");
        assert_eq!(ok.share_point(SiteId(1)), Some(1));
        assert_eq!(ok.share_point(SiteId(5)), Some(5));
        assert_eq!(ok.share_point(SiteId(6)), None);
        let field = |c: SecAggConfig| match c.validate() {
            Err(SecAggError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(field(config(4, 2)), "threshold", "t must exceed n/2");
        assert_eq!(field(config(4, 5)), "threshold");
        assert_eq!(field(config(1, 1)), "participants");
        let mut c = config(3, 2);
        c.participants.push(SiteId(2));
        assert_eq!(field(c), "participants");
        let mut c = config(3, 2);
        c.fedbn_exclude = vec!["*".into()];
        assert_eq!(field(c), "tensors");
        let mut c = config(3, 2);
        c.max_delta_norm = f64::NAN;
        assert_eq!(field(c), "max_delta_norm");
        let mut c = config(3, 2);
        c.quantization.clip_bound = 0.0;
        assert_eq!(field(c), "quantization.clip_bound");
        // Against a malicious server: 2n/3 < t, and one distinct identity per participant.
        assert_eq!(field(malicious(config(6, 4))), "threshold", "t must exceed 2n/3");
        malicious(config(6, 5)).validate().unwrap();
        malicious(config(3, 3)).validate().unwrap();
        let mut c = malicious(config(3, 3));
        if let Security::MaliciousServer { identities } = &mut c.security {
            identities.remove(&SiteId(2));
        }
        assert_eq!(field(c), "security.identities");
        let mut c = malicious(config(3, 3));
        if let Security::MaliciousServer { identities } = &mut c.security {
            identities.insert(SiteId(2), "S1".into());
        }
        assert_eq!(field(c), "security.identities");
        // The protection is part of the configuration hash: sites of the two models never mix.
        let curious = config(3, 3).validate().unwrap();
        let active = malicious(config(3, 3)).validate().unwrap();
        assert_ne!(curious.config_hash(), active.config_hash());
    }

    #[test]
    fn headroom_is_enforced() {
        // 50 sites x 2^20 x 2^40 = 2^65.6: could wrap.
        let mut c = config(50, 26);
        c.quantization.fractional_bits = 40;
        assert!(matches!(
            c.validate(),
            Err(SecAggError::QuantizationHeadroom { sites: 50, .. })
        ));
        // The defaults leave 5 bits of headroom at 50 sites.
        config(50, 26).validate().unwrap();
        // The boundary: n · (C·2^f + 1) ≤ 2^63 − 1 with C·2^f = 2^62 − 2 at n = 2 is exactly allowed.
        let mut c = config(2, 2);
        c.quantization.fractional_bits = 0;
        c.quantization.clip_bound = (2f64.powi(62)) - 4096.0;
        c.validate().unwrap();
        let mut c = config(2, 2);
        c.quantization.fractional_bits = 0;
        c.quantization.clip_bound = 2f64.powi(62);
        assert!(matches!(
            c.validate(),
            Err(SecAggError::QuantizationHeadroom { .. })
        ));
    }

    #[test]
    fn config_hash_covers_every_field() {
        let base = config(3, 2).validate().unwrap().config_hash();
        type Change = Box<dyn Fn(&mut SecAggConfig)>;
        let variants: Vec<Change> = vec![
            Box::new(|c| c.study_id.push('x')),
            Box::new(|c| c.round += 1),
            Box::new(|c| c.model_version.model_digest.push('x')),
            Box::new(|c| c.model_version.attempt += 1),
            Box::new(|c| c.model_version.instance += 1),
            Box::new(|c| c.participants[2] = SiteId(9)),
            Box::new(|c| c.threshold = 3),
            Box::new(|c| c.tensors[0].shape = vec![3, 2]),
            Box::new(|c| c.tensors[0].name.push('x')),
            Box::new(|c| c.fedbn_exclude.push("zz".into())),
            Box::new(|c| c.quantization.fractional_bits = 31),
            Box::new(|c| c.quantization.clip_bound = 1000.0),
            Box::new(|c| c.quantization.max_sample_count = 7),
            Box::new(|c| c.max_delta_norm = 11.0),
            Box::new(|c| {
                c.graph = Graph::Harary {
                    degree: 2,
                    dropout_fraction: 0.0,
                    corrupt_fraction: 0.0,
                };
            }),
            Box::new(|c| {
                c.privacy = Some(DistributedNoise {
                    clip_norm: 1.0,
                    noise_multiplier: 1.0,
                });
            }),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut c = config(3, 2);
            change(&mut c);
            assert_ne!(c.validate().unwrap().config_hash(), base, "variant {i}");
        }
        // The input kind (counts take no FedBN pattern: compare without one).
        let mut weighted = config(3, 2);
        weighted.fedbn_exclude.clear();
        let mut counts = weighted.clone();
        counts.input = InputKind::Counts;
        assert_ne!(
            weighted.validate().unwrap().config_hash(),
            counts.validate().unwrap().config_hash()
        );
        // Participant order does not matter.
        let mut c = config(3, 2);
        c.participants.reverse();
        assert_eq!(c.validate().unwrap().config_hash(), base);
    }
}
