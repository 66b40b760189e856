//! Secure aggregation of weighted model deltas (Bonawitz et al., CCS 2017, and its sparse-graph
//! variant SecAgg+, Bell et al., CCS 2020), as pure in-process state machines exchanging plain
//! serializable messages; the transport only relays them.
//!
//! # Protocol
//! One instance per federated round, over the complete communication graph by default (2–255 sites;
//! the study has 2–50) or a random Harary graph ([`Graph`], section *SecAgg+* below),
//! dropouts at any stage, against a malicious server ([`Security::MaliciousServer`], the study's
//! default: signed keys and the consistency check, 2n/3 < t) or an honest-but-curious one
//! ([`Security::CuriousServer`]: rounds 0, 1, 2 and 4, n/2 < t). [`SecAggClient`] (one per site) and
//! [`SecAggServer`] run Bonawitz's rounds:
//!
//! 0. **AdvertiseKeys**: each site u sends its mask public key s_u^pk and channel public keys
//!    ([`AdvertiseKeys`]); against a malicious server also its study credential and its signature
//!    of the keys, bound to the instance. The server closes the stage with U1 ([`KeyDirectory`]);
//!    each site verifies every peer's signature (credential issued by the study to the identity the
//!    configuration names for that peer) before it uses any key.
//! 1. **ShareKeys**: u Shamir-shares (t-of-|U1|) its mask secret key s_u^sk and its self-mask seed b_u
//!    and sends each peer v its share pair encrypted under K_uv ([`ShareKeys`]); the server routes
//!    them ([`ShareDelivery`], U2).
//! 2. **MaskedInputCollection**: u uploads y_u = q(n_u·Δ_u) ‖ n_u + PRG(b_u) + Σ_{v>u} PRG(s_uv)
//!    − Σ_{v<u} PRG(s_uv) (mod 2^64, v over U2) ([`MaskedInput`]); the server adds the uploads and
//!    closes with U3 ([`ConsistencyCheck`]).
//! 3. **ConsistencyCheck** (malicious server only; a curious server closes it at once): each survivor
//!    checks U3 (within U2, with itself, at least t) and signs it ([`ConsistencyResponse`]); asked
//!    again it repeats that answer and refuses any other set. The server relays the signatures of
//!    U4 ⊆ U3 in the [`UnmaskRequest`]; a site reveals nothing unless U3 is the set it signed and at
//!    least t members of U3 signed that same set in this instance ([`SecAggError::Inconsistent`]).
//!    With 2n/3 < t, two different survivor sets cannot both gather t honest signatures, so a server
//!    that tells some sites that v dropped and others that it survived gets the shares of one of v's
//!    secrets at most. The check covers U3, not the U2 a site is told in its delivery: a server that
//!    shows v a U2 of W ∪ C ∪ {v} only (C its colluding sites), so that v masks with those alone, and
//!    then declares W dropped, could strip v's masks. v accepts its delivery only if that U2 has t
//!    members (|W| ≥ t − 1 − |C|), and the U3 without W must still gather t signatures
//!    (|W| ≤ n − t), so the attack needs |C| ≥ 2t − n − 1: **against a malicious server the
//!    protocol tolerates at most 2t − n − 2 colluding sites** (2⌊2n/3⌋ − n at the study's default
//!    t = ⌊2n/3⌋ + 1: 1 at 3 or 5 sites, 10 at 30, 9 at 31, so slightly fewer than n/3).
//! 4. **Unmasking**: each site of U4 reveals shares of b_v for v ∈ U3 and of s_v^sk for v ∈ U2 \ U3,
//!    never both for the same v (enforced by the client, also across repeated requests)
//!    ([`UnmaskResponse`]). The server reconstructs the secrets (checking a reconstructed s_v^sk
//!    against s_v^pk, and extra shares against the polynomial), removes the self masks of U3 and the
//!    dangling pairwise masks between U3 and the dropped sites, and decodes [`Aggregate`]. A site that
//!    uploaded and then vanished stays in the sum (it is in U3; its b_u is rebuilt from the others).
//!
//! Deltas go in and aggregates come out as [`fedlnm_tensors::NamedTensors`], the project's one weights
//! type; the round's layout ([`TensorSpec`]s, checked name by name and shape by shape) is taken from
//! the global model with [`tensor_specs`].
//!
//! Any stage with fewer than t sites aborts the instance ([`SecAggError::TooFewSurvivors`]): no partial
//! result. A bad message is rejected with a typed error naming the site and round, and leaves the
//! receiving state unchanged.
//!
//! # SecAgg+: a sparse random graph (Bell et al. 2020)
//! With [`Graph::Harary`] `{ degree: k, .. }` every step above happens between neighbours only:
//! * **The graph** is H(n, k): the participants placed on a ring in an order drawn by Fisher–Yates
//!   (rejection sampling, no modulo bias) from the AES-128-CTR stream ([`prg`]) of
//!   HKDF(salt, "fedlnm-secagg-graph-v1"), each linked to its k/2 predecessors and k/2 successors
//!   ([`RoundConfig::neighbours`]). The salt covers the configuration hash, which covers the graph
//!   (degree and declared fractions): every party derives the same graph from public values, a new
//!   one for every instance, and the server cannot choose it once the configuration is fixed (it
//!   could only regenerate instances, see below). With n ≤ k + 1 the graph is complete: the protocol
//!   is then exactly Bonawitz's (tested), under its own configuration hash.
//! * **Keys and shares**: u advertises one channel key per neighbour, and Shamir-shares s_u^sk and
//!   b_u t-of-(k+1) over its **closed** neighbourhood N[u] = N(u) ∪ {u} (as Flower's num_shares =
//!   k + 1 does): u keeps its own share, so a survivor's b_u needs t − 1 neighbours besides itself,
//!   and t, (k+1)/2 < t, has the same meaning as Bonawitz's n/2 < t with n replaced by the k + 1
//!   sites that hold shares. A dropped site's s_v^sk is rebuilt from its k neighbours alone, which is
//!   why the parameter checks ask t ≤ k − (dropped neighbours).
//! * **Masks**: y_u carries PRG(s_uv) for v ∈ N(u) ∩ U2 only; each pair's masks still cancel in the
//!   sum (opposite signs), and the server removes only the dangling masks of a dropped v with its
//!   surviving neighbours. Per site: O(k) key agreements, shares and masks instead of O(n).
//! * **Unmasking**: u reveals shares of its neighbours only: b_v for v ∈ N[u] ∩ U3, s_v^sk for
//!   v ∈ N(u) ∩ (U2 \ U3), never both for one v. The server relays to each site the key directory of
//!   its two-hop neighbourhood ([`KeyDirectory::for_site`]) and U2 ∩ N[v] in its delivery.
//! * **Aborts**: at every stage the server aborts ([`SecAggError::NeighbourhoodTooSmall`], naming the
//!   site and stage) if any site whose secrets may be needed has fewer than t of the remaining sites
//!   in its closed neighbourhood, and ([`SecAggError::TooFewSurvivors`]) if fewer than n − ⌊δn⌋
//!   remain in all ([`RoundConfig::min_survivors`]: the declared dropout fraction δ, on which the
//!   connectivity argument rests). A site refuses likewise for its own neighbourhood and for a
//!   survivor list below n − ⌊δn⌋.
//! * **Against a malicious server**, a site signs the whole U3 it is told (as before), and reveals a
//!   share of v only if at least t members of N[v] signed that same U3 (each signature verified with
//!   the credential of the signer's round-0 keys; the two-hop directory carries them). Why this is
//!   enough for one site: an honest site signs one set per instance. If the server got honest
//!   shares of s_v^sk (v told dropped, set S) and of b_v (v told surviving, set S' ≠ S), both S and S'
//!   gathered t signatures in N[v]; only the c corrupt members of N[v] can sign both, so
//!   2t − c ≤ k + 1. With 2t − (k + 2) > c_max (the check of [`check_harary_parameters`], one
//!   stricter than this argument needs, for the U2 attack of stage 3 above with k + 1 in place of n),
//!   that is impossible: honest sites release shares of at most one of v's secrets, and the corrupt
//!   ones hold c < t. In the complete graph N[v] is everyone and the rule is Bonawitz's 2n/3 < t.
//!   Unlike the complete graph, different neighbourhoods may be shown different sets. Each site's
//!   status (dropped or surviving) is still decided at most once, by the one set that gathers t
//!   signatures in its neighbourhood; but the sites a server declares dropped in different
//!   neighbourhoods add up: each shown set leaves out at most ⌊δn⌋ sites (the global floor), their
//!   union may leave out more. The reference implementation's feasibility rule for this setting,
//!   γ + 2δ ≤ 0.9 instead of γ + δ ≤ 0.9, reflects that; Bell et al.'s connectivity bound (honest
//!   survivors stay connected, so the server learns only sums over large sets of honest sites) is
//!   checked here with ⌊δn⌋ + ⌊γn⌋ removed sites, so against a malicious server the declared δ should
//!   be twice the expected dropouts. This is our reading of Bell et al.'s semi-malicious analysis,
//!   not a proof; it is tested against a server that splits one neighbourhood between two sets
//!   (`shared/tests/secagg_plus.rs`). Like the complete graph's, the check covers U3 only, not the U2
//!   each site is told in its delivery; the parameter check's extra margin is what covers that.
//!
//! **Parameters.** [`SecAggConfig::validate`] checks: k even, 2 ≤ k (k ≥ n − 1: complete); per
//! neighbourhood (k+1)/2 < t ≤ k + 1, and 2(k+1)/3 < t against a malicious server; and, for the
//! declared fractions δ (dropouts) and γ (sites colluding with the server), Bell et al.'s three
//! events at σ = 40, η = 20 ([`check_harary_parameters`]: the honest survivors stay connected, which
//! needs k ≳ (2·log2 n + σ)/log2(1/(γ+δ)); t exceeds the corrupt neighbours a site may have (or
//! 2t − (k+2) does, against a malicious server); t ≤ k minus the dropped neighbours it may have).
//! [`recommend_harary`] gives the least (k, t) for n, δ and γ. A server that regenerates instances
//! (new attempts) to draw a graph that suits its colluders gains one trial per instance: 2^g trials
//! cost g of the 40 bits of the privacy events.
//!
//! # Authentication
//! The transport supplies a [`Signer`] (the site's study certificate and its key) and a
//! [`PeerVerifier`] (the study CA); the crate signs SHA-256 transcripts under their own domain tags
//! ("fedlnm-secagg-keys-v1", "fedlnm-secagg-survivors-v1") of the study, round, configuration hash,
//! signing site and value, so a signature from another round, attempt, study or site never
//! verifies. A server given the verifier ([`SecAggServer::with_verifier`]) refuses a bad signature
//! as its sender's fault on receipt, so that one hostile site becomes a dropout instead of making
//! every honest site abort.
//!
//! # Primitives
//! * **Mask key pair: x25519-dalek** `StaticSecret`. ring's `agreement` keys are `EphemeralPrivateKey`s
//!   that can be neither exported nor used twice, but s_u^sk must be Shamir-shared (the server rebuilds
//!   it when u drops) and agrees with every peer; ring has no API for a raw X25519 scalar.
//! * **Channel keys: ring** `agreement::X25519`. Because a ring ephemeral key agrees exactly once, each
//!   site advertises one channel public key per peer (n − 1 keys of 32 bytes); K_uv =
//!   HKDF(X25519(c_u→v, c_v→u), salt, "enc" ‖ round ‖ min(u,v) ‖ max(u,v)).
//! * **KDF: HKDF-SHA256 (ring)**, salt = SHA-256(study id ‖ round ‖ config hash), with the domains
//!   "mask" (s_uv, info "mask" ‖ min ‖ max), "enc" and "self" (the PRG seed of the self mask is
//!   HKDF(b_u, salt, "self" ‖ u)). The config hash covers tensor names and shapes, FedBN patterns,
//!   quantization, threshold, participants, model version, study, round ([`RoundConfig::config_hash`]).
//! * **AEAD: ChaCha20-Poly1305 (ring)**. The plaintext is the two shares followed by (u, v, round,
//!   config hash, study), which are also the AAD; K_uv carries one message each way, so the nonce is
//!   the direction.
//! * **PRG: AES-128-CTR (`aes` + `ctr`, AES-NI chosen at run time)**, key = HKDF-Expand(seed,
//!   "fedlnm-secagg-prg-aes-128-ctr-v1", 16 bytes), counter block j = j (128-bit big-endian); mask
//!   elements 2j and 2j+1 are the two little-endian halves of block j (in Z_2^32, elements 4j..4j+3
//!   its four little-endian u32 words); seekable, so slices are masked on scoped threads ([`prg`]). The spec's ChaCha20 keystream stays selectable for the benchmark
//!   (2.7× slower per core on these AMD EPYC cores); the configuration hash names the generator.
//! * **Secret sharing**: Shamir over GF(2^8), byte-wise, constant-time ([`shamir`]); evaluation point
//!   of a site = its 1-based index in the sorted participant list (also in a Harary graph: the points
//!   of a neighbourhood are distinct and non-zero).
//! * **Randomness**: `ring::rand::SystemRandom` (keys, b_u, Shamir coefficients, the key of the
//!   stochastic-rounding stream unless the site seeds it). Stochastic rounding and the DP noise draw
//!   from AES-128-CTR under HKDF-Expand(seed, "fedlnm-secagg-rounding-aes-128-ctr-v1", 16 bytes)
//!   ([`quantize::RoundingSource`]; ChaCha20 before, a third of the speed). Secrets are zeroized on
//!   drop (`zeroize`; x25519-dalek's own).
//!
//! # Quantization (defaults in [`QuantizationConfig`])
//! Ring Z_2^64, signed two's-complement fixed point with f = 32 fractional bits; each element of
//! n_k·Δ_k is clipped to ±C, C = 2^20, and rounded stochastically (unbiased, error < 2^-32 per site
//! and element); n_k is one more element, as an exact integer. Headroom is checked at configuration
//! time: n·(⌈C·2^f⌉ + 1) ≤ 2^63 − 1 (defaults: 50·(2^52 + 1) < 2^57.7) and n·max_sample_count too;
//! otherwise [`SecAggError::QuantizationHeadroom`]. The decoded FedAvg delta Σ n_kΔ_k / Σ n_k is within
//! |U3|·2^-f / Σ n_k of the exact average of the clipped inputs per element (then rounded to f32).
//!
//! A training instance may use the ring Z_2^32 instead ([`Ring::Z2_32`], Flower's SecAgg+ ring): half
//! the bytes on the wire and half the mask stream, with C = 2^12 and f = 18 − ⌈log2 n⌉
//! ([`QuantizationConfig::z2_32`]), the same headroom rule against 2^31 − 1. Sites mask their
//! quantized vector mod 2^64 with 32-bit mask words and send it reduced mod 2^32; the server sums
//! 32-bit uploads into a u64 accumulator, unmasks likewise, and reduces mod 2^32 only when decoding
//! (2^32 divides 2^64, so the result is the sum in Z_2^32). Counts and ring sums stay in Z_2^64.
//!
//! # Statistics and differential privacy
//! An instance of [`InputKind::Counts`] sums non-negative integer vectors exactly (the pools' score
//! histograms: [`SecAggClient::masked_counts`], [`SecAggServer::finish_counts`]); its last element
//! carries 1 per site. An instance of [`InputKind::Ring`] sums vectors of Z_2^64 modulo 2^64 that the
//! caller encodes and decodes (the study's analyses: signed fixed point, [`SecAggClient::masked_ring`],
//! [`SecAggServer::finish_ring`]). A training instance with [`DistributedNoise`] has each site clip its delta to
//! L2 norm C, weigh 1 and add discrete Gaussian noise of deviation z·C/√t per element before masking
//! ([`noise`]), so the sum of at least t survivors carries deviation at least z·C.
//!
//! # FedBN
//! Tensors matching a `fedbn_exclude` pattern are never quantized, masked or sent; the aggregate
//! does not contain them.

mod auth;
mod client;
mod config;
mod crypto;
mod error;
mod messages;
pub mod noise;
pub mod prg;
pub mod quantize;
mod server;
pub mod shamir;

pub use auth::{Authentication, PeerVerifier, Signer};
pub use client::SecAggClient;
pub use config::{
    CORRECTNESS_BITS, DistributedNoise, Graph, HararyParameters, InputKind, MAX_PARTICIPANTS, ModelVersion,
    QuantizationConfig, Ring, RoundConfig, SECURITY_BITS, SecAggConfig, Security, TensorSpec,
    Z2_32_CLIP_BOUND, check_degree, check_harary_parameters, glob_match, recommend_harary,
    structural_minimum, tensor_specs,
};
pub use error::{RoundStage, SecAggError};
pub use messages::{
    AdvertiseKeys, ConsistencyCheck, ConsistencyResponse, EncryptedShare, KeyDirectory, MaskedInput,
    MaskedVector, PeerKey, RevealedShare, RoundHeader, ShareDelivery, ShareKeys, SiteHeader,
    SurvivorSignature, UnmaskRequest, UnmaskResponse,
};
pub use server::{Aggregate, CountSum, SecAggServer};

/// 32 bytes from the operating system's generator (a site's rounding secret, for instance).
///
/// # Errors
/// The generator failed.
pub fn random_secret() -> Result<[u8; 32], ring::error::Unspecified> {
    use ring::rand::SecureRandom as _;
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut secret)?;
    Ok(secret)
}

/// A site's identity in a study (the transport maps its mTLS identity to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SiteId(pub u32);

impl std::fmt::Display for SiteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "site {}", self.0)
    }
}
