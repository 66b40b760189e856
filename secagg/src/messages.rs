//! The plain, serializable messages of the protocol. The transport only relays them; every message
//! carries the study, round, configuration hash and (for site messages) the sender's site id, so a
//! message relayed from another round, study, configuration or site is detected by its receiver.

use serde::{Deserialize, Serialize};

use super::shamir::Share;
use super::{Ring, SiteId};

/// Identifies the instance a server message belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundHeader {
    pub study_id: String,
    pub round: u64,
    pub config_hash: [u8; 32],
}

/// Identifies the instance and the sending site of a site message. The transport checks that `site`
/// is the sender's mTLS identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteHeader {
    pub study_id: String,
    pub round: u64,
    pub config_hash: [u8; 32],
    pub site: SiteId,
}

/// A public key for the share channel with one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKey {
    pub peer: SiteId,
    pub public_key: [u8; 32],
}

/// Round 0, site → server: the site's X25519 mask public key s_u^pk and, for every other participant,
/// a one-use X25519 channel public key (ring's ephemeral keys agree once each; see the module doc).
/// Against a malicious server the site also sends its credential and its signature of the keys
/// (bound to the instance); both are empty otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    pub header: SiteHeader,
    pub mask_public_key: [u8; 32],
    pub channel_public_keys: Vec<PeerKey>,
    pub credential: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Round 0, server → every site of U1: the advertised keys of U1, sorted by site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDirectory {
    pub header: RoundHeader,
    pub sites: Vec<AdvertiseKeys>,
}

/// One encrypted pair of Shamir shares (of s_from^sk and b_from) for site `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    pub from: SiteId,
    pub to: SiteId,
    pub ciphertext: Vec<u8>,
}

/// Round 1, site → server: one encrypted share pair for every other site of U1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    pub header: SiteHeader,
    pub encrypted_shares: Vec<EncryptedShare>,
}

/// Round 1, server → each site of U2: U2 and the encrypted shares other members of U2 sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareDelivery {
    pub header: RoundHeader,
    pub to: SiteId,
    /// U2: the sites that sent their shares, sorted.
    pub senders: Vec<SiteId>,
    pub shares: Vec<EncryptedShare>,
}

/// Round 2, site → server: y_u, the masked quantized vector [q(n_u·Δ_u), n_u] in the instance's ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    pub header: SiteHeader,
    pub masked: MaskedVector,
}

/// The elements of a masked vector, in its ring's width. Encoded as the variant (a little-endian
/// u32: 0 for Z_2^64, 1 for Z_2^32), the element count (u64) and the little-endian elements, which
/// the server reads in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaskedVector {
    /// Elements of Z_2^64.
    Z2_64(Vec<u64>),
    /// Elements of Z_2^32.
    Z2_32(Vec<u32>),
}

impl MaskedVector {
    /// The ring of the elements.
    #[must_use]
    pub fn ring(&self) -> Ring {
        match self {
            Self::Z2_64(_) => Ring::Z2_64,
            Self::Z2_32(_) => Ring::Z2_32,
        }
    }

    /// Number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Z2_64(v) => v.len(),
            Self::Z2_32(v) => v.len(),
        }
    }

    /// Whether there is no element.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` zero-extended to u64, if there is one.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<u64> {
        match self {
            Self::Z2_64(v) => v.get(i).copied(),
            Self::Z2_32(v) => v.get(i).map(|&w| u64::from(w)),
        }
    }

    /// The elements' little-endian bytes, as the encoding lays them out after the count.
    #[must_use]
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Self::Z2_64(v) => v.iter().flat_map(|w| w.to_le_bytes()).collect(),
            Self::Z2_32(v) => v.iter().flat_map(|w| w.to_le_bytes()).collect(),
        }
    }
}

/// Round 3 (consistency check), server → each site of U3: who uploaded (U3) and who dropped after
/// sharing (U2 \ U3). Against a malicious server each site signs the U3 it is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyCheck {
    pub header: RoundHeader,
    pub survivors: Vec<SiteId>,
    pub dropped: Vec<SiteId>,
}

/// Round 3, site → server: the site's signature of the survivor set it was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyResponse {
    pub header: SiteHeader,
    pub signature: Vec<u8>,
}

/// One site's signature of a survivor set, as the server relays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurvivorSignature {
    pub site: SiteId,
    pub signature: Vec<u8>,
}

/// Round 4, server → each site that answered round 3: U3, U2 \ U3 and (against a malicious server)
/// the survivor-set signatures of at least t sites of U3, sorted by site; empty otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    pub header: RoundHeader,
    pub survivors: Vec<SiteId>,
    pub dropped: Vec<SiteId>,
    pub signatures: Vec<SurvivorSignature>,
}

/// One revealed share of a secret belonging to `owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    pub owner: SiteId,
    pub share: Share,
}

/// Round 4, site → server: shares of b_v for every survivor v, of s_v^sk for every dropped v.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    pub header: SiteHeader,
    pub self_mask_shares: Vec<RevealedShare>,
    pub mask_key_shares: Vec<RevealedShare>,
}
