//! Authentication against a malicious server (Bonawitz et al. 2017, the active variant): what a site
//! signs, with which key, and how it checks what its peers signed.
//!
//! The protocol only needs two capabilities, given by the transport: a [`Signer`] (the site's own study
//! credential and its private key) and a [`PeerVerifier`] (the study's authority, which says whether a
//! credential belongs to a named participant and checks a signature made with it). Each signed value is
//! an unambiguous SHA-256 transcript under its own domain tag that binds the study, round and
//! configuration hash (hence the model version and attempt: a signature from another round or attempt
//! never verifies), the signing site and the value signed.

use super::config::Transcript;
use super::messages::PeerKey;
use super::{RoundConfig, SiteId};

/// A site's signing capability: its study credential (for instance its X.509 certificate, DER) and
/// signatures made with the matching private key.
pub trait Signer: Send + Sync {
    /// What peers verify signatures against (sent with the round-0 keys).
    fn credential(&self) -> &[u8];
    /// Signs `message`.
    ///
    /// # Errors
    /// The key cannot sign (a failure of the primitive), described.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// The study's authority, as a site (or the server) checks its peers with it.
pub trait PeerVerifier: Send + Sync {
    /// Checks that `credential` was issued by the study to the participant `identity` and that
    /// `signature` over `message` was made with its key.
    ///
    /// # Errors
    /// Why not (untrusted credential, another identity, a bad signature), described.
    fn verify(
        &self,
        identity: &str,
        credential: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), String>;
}

/// A site's signer and its view of the study's authority: what a client of a
/// [`crate::Security::MaliciousServer`] instance needs.
#[derive(Clone)]
pub struct Authentication {
    pub signer: std::sync::Arc<dyn Signer>,
    pub peers: std::sync::Arc<dyn PeerVerifier>,
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authentication")
            .field("credential_bytes", &self.signer.credential().len())
            .finish_non_exhaustive()
    }
}

/// What a site signs in round 0: its mask public key and its channel public keys.
pub(crate) fn keys_transcript(
    config: &RoundConfig,
    site: SiteId,
    mask_public_key: &[u8; 32],
    channel_public_keys: &[PeerKey],
) -> [u8; 32] {
    let mut t = instance_transcript(b"fedlnm-secagg-keys-v1", config, site);
    t.bytes(mask_public_key);
    t.u64(channel_public_keys.len() as u64);
    for key in channel_public_keys {
        t.u64(u64::from(key.peer.0));
        t.bytes(&key.public_key);
    }
    t.finish()
}

/// What a site signs in round 3: the survivor set U3 it was told.
pub(crate) fn survivors_transcript(config: &RoundConfig, site: SiteId, survivors: &[SiteId]) -> [u8; 32] {
    let mut t = instance_transcript(b"fedlnm-secagg-survivors-v1", config, site);
    t.u64(survivors.len() as u64);
    for v in survivors {
        t.u64(u64::from(v.0));
    }
    t.finish()
}

fn instance_transcript(domain: &[u8], config: &RoundConfig, site: SiteId) -> Transcript {
    let mut t = Transcript::new(domain);
    t.bytes(config.study_id().as_bytes());
    t.u64(config.round());
    t.bytes(&config.config_hash());
    t.u64(u64::from(site.0));
    t
}
