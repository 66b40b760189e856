//! The site's side of the protocol: one state machine per round that turns server messages and the
//! site's delta into its replies.

use std::collections::BTreeMap;

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::auth::{Authentication, keys_transcript};
use super::crypto::{ShareContext, channel_key, pairwise_mask_seed, seal_shares};
use super::messages::{
    AdvertiseKeys, ConsistencyResponse, EncryptedShare, KeyDirectory, PeerKey, RevealedShare, RoundHeader,
    ShareKeys, SiteHeader, UnmaskRequest, UnmaskResponse,
};
use super::prg::MaskSeed;
use super::shamir::{self, Share};
use super::{RoundConfig, RoundStage, SecAggError, SiteId};
use fedlnm_tensors::parallel::available_threads;
mod consistency;
mod input;
mod survivors;

/// One site's state for one round. Create it with [`SecAggClient::new`] (or, against a malicious
/// server, [`SecAggClient::new_authenticated`]), then feed it the server's messages in order:
/// [`share_keys`](Self::share_keys), [`masked_input`](Self::masked_input),
/// [`consistency_check`](Self::consistency_check) (malicious-server instances only),
/// [`unmask`](Self::unmask).
pub struct SecAggClient {
    config: RoundConfig,
    site: SiteId,
    /// The stage whose server message the client expects next.
    stage: RoundStage,
    rng: SystemRandom,
    mask_secret: StaticSecret,
    /// b_u, the self-mask secret.
    self_secret: Zeroizing<[u8; 32]>,
    /// One ring ephemeral key per peer, consumed by the single agreement it serves.
    channel_secrets: BTreeMap<SiteId, EphemeralPrivateKey>,
    /// The site's own round-0 message, as it sent it.
    advertised: AdvertiseKeys,
    /// Signing and peer verification (malicious-server instances).
    auth: Option<Authentication>,
    /// The credential of every peer of U1 whose round-0 signature verified.
    credentials: BTreeMap<SiteId, Vec<u8>>,
    /// The survivor set U3 this site signed in round 3, and its answer (repeated if asked again).
    signed: Option<(Vec<SiteId>, ConsistencyResponse)>,
    /// K_uv for every peer of U1.
    channel_keys: BTreeMap<SiteId, Zeroizing<[u8; 32]>>,
    /// s_uv for every peer of U1.
    pairwise_seeds: BTreeMap<SiteId, MaskSeed>,
    /// U2, once known.
    senders: Vec<SiteId>,
    /// The shares this site holds: (share of s_v^sk, share of b_v) for every v of U2, itself included.
    held: BTreeMap<SiteId, (Share, Share)>,
    /// Which secret of each peer this site has revealed: it never reveals both.
    revealed: BTreeMap<SiteId, Revealed>,
    /// Threads that masking may use.
    threads: usize,
    /// The site's own secret for the stochastic rounding (and noise) stream; none: the OS generator.
    rounding_secret: Option<Zeroizing<[u8; 32]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revealed {
    SelfMask,
    MaskKey,
}

impl SecAggClient {
    /// Starts round 0: makes the mask key pair (x25519-dalek, Shamir-shareable), one ring X25519 channel
    /// key pair per peer, and the self-mask seed b_u, and returns the [`AdvertiseKeys`] message.
    ///
    /// # Errors
    /// [`SecAggError::NotInRound`] if `site` is not a participant; [`SecAggError::Unauthenticated`]
    /// for a malicious-server instance; [`SecAggError::Crypto`] if the OS generator fails.
    pub fn new(config: RoundConfig, site: SiteId) -> Result<(Self, AdvertiseKeys), SecAggError> {
        Self::start(config, site, None)
    }

    /// As [`Self::new`], for an instance that protects against a malicious server: the round-0 keys
    /// carry the site's credential and signature, and the client verifies its peers with `auth`.
    ///
    /// # Errors
    /// As [`Self::new`]; [`SecAggError::Crypto`] if the key cannot sign.
    pub fn new_authenticated(
        config: RoundConfig,
        site: SiteId,
        auth: Authentication,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        Self::start(config, site, Some(auth))
    }

    fn start(
        config: RoundConfig,
        site: SiteId,
        auth: Option<Authentication>,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        let round = config.round();
        // Signatures are made only where the instance asks for them: a curious-server instance
        // carries none, whatever the node holds.
        let auth = if config.is_authenticated() {
            Some(auth.ok_or(SecAggError::Unauthenticated { site, round })?)
        } else {
            None
        };
        if !config.is_participant(site) {
            return Err(SecAggError::NotInRound {
                site,
                round,
                stage: RoundStage::AdvertiseKeys,
            });
        }
        let crypto = |what| SecAggError::Crypto { site, round, what };
        let rng = SystemRandom::new();
        let mut mask_bytes = Zeroizing::new([0u8; 32]);
        rng.fill(mask_bytes.as_mut())
            .map_err(|_| crypto("mask key generation"))?;
        let mask_secret = StaticSecret::from(*mask_bytes);
        let mask_public = PublicKey::from(&mask_secret).to_bytes();
        let mut self_secret = Zeroizing::new([0u8; 32]);
        rng.fill(self_secret.as_mut())
            .map_err(|_| crypto("self-mask seed generation"))?;
        let mut channel_secrets = BTreeMap::new();
        let mut channel_publics = Vec::new();
        for &peer in config.neighbours(site) {
            let secret =
                EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| crypto("channel key generation"))?;
            let public = secret
                .compute_public_key()
                .map_err(|_| crypto("channel key generation"))?;
            let mut public_key = [0u8; 32];
            public_key.copy_from_slice(public.as_ref());
            channel_secrets.insert(peer, secret);
            channel_publics.push(PeerKey { peer, public_key });
        }
        let (credential, signature) = match &auth {
            Some(auth) => {
                let message = keys_transcript(&config, site, &mask_public, &channel_publics);
                let signature = auth
                    .signer
                    .sign(&message)
                    .map_err(|_| crypto("signing the round-0 keys"))?;
                (auth.signer.credential().to_vec(), signature)
            }
            None => (Vec::new(), Vec::new()),
        };
        let advertise = AdvertiseKeys {
            header: site_header(&config, site),
            mask_public_key: mask_public,
            channel_public_keys: channel_publics,
            credential,
            signature,
        };
        let client = Self {
            config,
            site,
            stage: RoundStage::AdvertiseKeys,
            rng,
            mask_secret,
            self_secret,
            channel_secrets,
            advertised: advertise.clone(),
            auth,
            credentials: BTreeMap::new(),
            signed: None,
            channel_keys: BTreeMap::new(),
            pairwise_seeds: BTreeMap::new(),
            senders: Vec::new(),
            held: BTreeMap::new(),
            revealed: BTreeMap::new(),
            threads: available_threads(),
            rounding_secret: None,
        };
        Ok((client, advertise))
    }

    /// This site's id.
    #[must_use]
    pub fn site(&self) -> SiteId {
        self.site
    }

    /// Whether the instance protects against a malicious server (round 3 and signatures).
    #[must_use]
    pub fn is_authenticated(&self) -> bool {
        self.auth.is_some()
    }

    /// Draws the stochastic rounding (and, with differential privacy, the noise) of this instance
    /// from a stream keyed by `secret` and the instance (study, round, attempt, site, input) instead of
    /// the OS generator: the same site secret and the same inputs give the same masked sum, hence a
    /// reproducible study. The secret must stay at the site: whoever knows it knows the site's
    /// rounding and noise.
    pub fn set_rounding_secret(&mut self, secret: [u8; 32]) {
        self.rounding_secret = Some(Zeroizing::new(secret));
    }

    /// Limits the threads that masking uses (default: the machine's available parallelism; at least
    /// 1), e.g. to leave cores to training. The masked input does not depend on it.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Round 1: checks the key directory (U1), agrees the pairwise mask seeds and channel keys with
    /// the neighbours in U1 (every peer in the complete graph), Shamir-shares s_u^sk and b_u
    /// (t-of-|U1 ∩ N[u]|) and encrypts one share pair to every neighbour. The directory may hold
    /// entries of non-neighbours (the whole of U1, or the two-hop neighbourhood that
    /// [`KeyDirectory::for_site`] keeps): their signatures are checked, their keys not used.
    ///
    /// Against a malicious server, every peer's keys must carry a verifying signature of its study
    /// credential (named by the configuration) over this instance.
    ///
    /// # Errors
    /// A directory for another round/study/configuration, with a foreign, duplicated or malformed
    /// entry, with substituted own keys, or with fewer than t sites; an invalid peer key;
    /// [`SecAggError::BadSignature`] for a peer's keys that its credential did not sign.
    pub fn share_keys(&mut self, directory: &KeyDirectory) -> Result<ShareKeys, SecAggError> {
        self.expect_stage(RoundStage::AdvertiseKeys)?;
        self.check_round_header(&directory.header)?;
        let (site, round) = (self.site, self.config.round());
        let mut u1 = Vec::with_capacity(directory.sites.len());
        for entry in &directory.sites {
            let v = entry.header.site;
            check_header_fields(
                &self.config,
                v,
                &entry.header.study_id,
                entry.header.round,
                &entry.header.config_hash,
            )?;
            if !self.config.is_participant(v) {
                return Err(SecAggError::NotInRound {
                    site: v,
                    round,
                    stage: RoundStage::AdvertiseKeys,
                });
            }
            if u1.last().is_some_and(|&last| last >= v) {
                return Err(self.malformed("key directory is not sorted by site, or repeats a site".into()));
            }
            u1.push(v);
            if v == site {
                if *entry != self.advertised {
                    return Err(self.malformed("the directory substitutes this site's own keys".into()));
                }
            } else {
                let keys_for_us = entry
                    .channel_public_keys
                    .iter()
                    .filter(|k| k.peer == site)
                    .count();
                let expected = usize::from(self.config.in_closed_neighbourhood(site, v));
                if keys_for_us != expected {
                    return Err(self.malformed(format!(
                        "{v} advertises {keys_for_us} channel keys for us, expected {expected}"
                    )));
                }
            }
        }
        let u1_here = self.config.closed_neighbourhood_members(site, &u1);
        self.check_neighbourhood(&u1_here, RoundStage::ShareKeys)?;
        if !u1.contains(&site) {
            return Err(self.malformed("the key directory leaves this site out".into()));
        }
        // Signatures before any key is used: a substituted or replayed key leaves the state intact.
        let mut credentials = BTreeMap::new();
        if let Some(auth) = &self.auth {
            for entry in directory.sites.iter().filter(|e| e.header.site != site) {
                let v = entry.header.site;
                let message = keys_transcript(
                    &self.config,
                    v,
                    &entry.mask_public_key,
                    &entry.channel_public_keys,
                );
                self.verify_peer(
                    auth,
                    v,
                    &entry.credential,
                    &message,
                    &entry.signature,
                    "round-0 keys",
                )?;
                credentials.insert(v, entry.credential.clone());
            }
        }
        // Only neighbours' keys are used.
        let here = &u1_here;
        let neighbour_entries = || {
            directory
                .sites
                .iter()
                .filter(move |e| e.header.site != site && here.contains(&e.header.site))
        };
        // Pairwise mask seeds first: they do not consume anything, so a bad key leaves the state intact.
        let mut seeds = BTreeMap::new();
        for entry in neighbour_entries() {
            let v = entry.header.site;
            let shared = self
                .mask_secret
                .diffie_hellman(&PublicKey::from(entry.mask_public_key));
            if !shared.was_contributory() {
                return Err(SecAggError::InvalidPeerKey { site, peer: v, round });
            }
            seeds.insert(
                v,
                pairwise_mask_seed(shared.as_bytes(), self.config.salt(), site, v),
            );
        }
        // Channel keys: each ring ephemeral key is consumed by its one agreement.
        let mut channel_keys = BTreeMap::new();
        for entry in neighbour_entries() {
            let v = entry.header.site;
            let peer_key = entry
                .channel_public_keys
                .iter()
                .find(|k| k.peer == site)
                .map(|k| k.public_key);
            let secret = self.channel_secrets.remove(&v);
            let (Some(peer_key), Some(secret)) = (peer_key, secret) else {
                self.stage = RoundStage::Aborted;
                return Err(self.malformed(format!("no channel key pair with {v}")));
            };
            let salt = *self.config.salt();
            let key = agreement::agree_ephemeral(secret, &UnparsedPublicKey::new(&X25519, peer_key), |z| {
                channel_key(z, &salt, round, site, v)
            })
            .map_err(|_| {
                self.stage = RoundStage::Aborted;
                SecAggError::InvalidPeerKey { site, peer: v, round }
            })?;
            channel_keys.insert(v, key);
        }
        let points: Vec<u8> = u1_here
            .iter()
            .filter_map(|&v| self.config.share_point(v))
            .collect();
        let t = self.config.threshold();
        let split_error = |_| SecAggError::Crypto {
            site,
            round,
            what: "Shamir split",
        };
        let mask_key_bytes = Zeroizing::new(self.mask_secret.to_bytes());
        let key_shares = shamir::split(&mask_key_bytes, t, &points, &self.rng).map_err(split_error)?;
        let seed_shares = shamir::split(&self.self_secret, t, &points, &self.rng).map_err(split_error)?;
        let hash = self.config.config_hash();
        let mut encrypted_shares = Vec::with_capacity(u1_here.len() - 1);
        for ((&v, key_share), seed_share) in u1_here.iter().zip(&key_shares).zip(&seed_shares) {
            if v == site {
                self.held.insert(site, (key_share.clone(), seed_share.clone()));
                continue;
            }
            let ctx = ShareContext {
                study_id: self.config.study_id(),
                round,
                config_hash: &hash,
                from: site,
                to: v,
            };
            // channel_keys has an entry for every v of U1 other than this site (built just above).
            let Some(key) = channel_keys.get(&v) else { continue };
            let ciphertext = seal_shares(key, &ctx, key_share, seed_share);
            encrypted_shares.push(EncryptedShare {
                from: site,
                to: v,
                ciphertext,
            });
        }
        self.pairwise_seeds = seeds;
        self.channel_keys = channel_keys;
        self.credentials = credentials;
        self.stage = RoundStage::ShareKeys;
        Ok(ShareKeys {
            header: site_header(&self.config, site),
            encrypted_shares,
        })
    }

    /// Round 4: reveals the share of b_v for every survivor v and of s_v^sk for every dropped v of its
    /// closed neighbourhood (everyone in the complete graph), after checking that the request is
    /// consistent with U2, that |U3 ∩ N[u]| ≥ t and |U3| ≥ the instance's minimum, and that no peer
    /// would have both of its secrets revealed (in this request or together with an earlier one).
    /// Against a malicious server, U3 must be the set this site signed in round 3, and for every v it
    /// reveals a share of, at least t members of N[v] must have signed that same set (verified).
    ///
    /// # Errors
    /// [`SecAggError::RefuseBothShares`] if a peer would have both secrets revealed;
    /// [`SecAggError::Inconsistent`] for another set than the one signed, or too few signatures;
    /// [`SecAggError::BadSignature`] for a signature that does not verify (on another set, forged
    /// or replayed); a request for another round/study, with sites outside U2, or with fewer than t
    /// survivors.
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskResponse, SecAggError> {
        let before_unmasking = if self.auth.is_some() {
            RoundStage::ConsistencyCheck
        } else {
            RoundStage::MaskedInputCollection
        };
        if self.stage != RoundStage::Unmasking {
            self.expect_stage(before_unmasking)?;
        }
        self.check_round_header(&request.header)?;
        let (site, round) = (self.site, self.config.round());
        if let Some(auth) = &self.auth {
            self.check_signed_survivors(auth, request)?;
        } else if !request.signatures.is_empty() {
            return Err(self.malformed("a curious-server instance carries no survivor signatures".into()));
        }
        for &v in &request.survivors {
            if request.dropped.contains(&v) || self.revealed.get(&v) == Some(&Revealed::MaskKey) {
                return Err(SecAggError::RefuseBothShares { site, peer: v, round });
            }
        }
        for &v in &request.dropped {
            if self.revealed.get(&v) == Some(&Revealed::SelfMask) {
                return Err(SecAggError::RefuseBothShares { site, peer: v, round });
            }
        }
        self.check_survivor_lists(&request.survivors, &request.dropped, RoundStage::Unmasking)?;

        let reveal = |v: &SiteId, pick: fn(&(Share, Share)) -> &Share| {
            self.held.get(v).map(|pair| RevealedShare {
                owner: *v,
                share: pick(pair).clone(),
            })
        };
        // Shares of the members of U2 this site was told of (its neighbourhood in a SecAgg+ graph).
        let reveal_all = |list: &[SiteId], pick: fn(&(Share, Share)) -> &Share| -> Option<Vec<_>> {
            list.iter()
                .filter(|v| self.senders.contains(v))
                .map(|v| reveal(v, pick))
                .collect()
        };
        let self_mask_shares = reveal_all(&request.survivors, |p| &p.1);
        let mask_key_shares = reveal_all(&request.dropped, |p| &p.0);
        // `held` has a share pair for every member of U2 (checked above that both lists are within U2).
        let (Some(self_mask_shares), Some(mask_key_shares)) = (self_mask_shares, mask_key_shares) else {
            return Err(self.malformed("no share held for a listed site".into()));
        };
        for share in &self_mask_shares {
            self.revealed.insert(share.owner, Revealed::SelfMask);
        }
        for share in &mask_key_shares {
            self.revealed.insert(share.owner, Revealed::MaskKey);
        }
        self.stage = RoundStage::Unmasking;
        Ok(UnmaskResponse {
            header: site_header(&self.config, site),
            self_mask_shares,
            mask_key_shares,
        })
    }

    fn expect_stage(&self, expected: RoundStage) -> Result<(), SecAggError> {
        if self.stage == RoundStage::Aborted {
            return Err(SecAggError::Aborted {
                round: self.config.round(),
            });
        }
        if self.stage != expected {
            return Err(SecAggError::WrongStage {
                site: self.site,
                round: self.config.round(),
                got: next_stage(expected),
                current: next_stage(self.stage),
            });
        }
        Ok(())
    }

    fn check_round_header(&self, h: &RoundHeader) -> Result<(), SecAggError> {
        check_header_fields(&self.config, self.site, &h.study_id, h.round, &h.config_hash)
    }

    fn check_survivors(
        &self,
        survivors: usize,
        threshold: usize,
        stage: RoundStage,
    ) -> Result<(), SecAggError> {
        if survivors < threshold {
            return Err(SecAggError::TooFewSurvivors {
                round: self.config.round(),
                stage,
                survivors,
                threshold,
            });
        }
        Ok(())
    }

    fn malformed(&self, reason: String) -> SecAggError {
        SecAggError::Malformed {
            site: self.site,
            round: self.config.round(),
            reason,
        }
    }
}

/// The stage of the server message that a client waiting at `stage` consumes.
fn next_stage(stage: RoundStage) -> RoundStage {
    match stage {
        RoundStage::AdvertiseKeys => RoundStage::ShareKeys,
        RoundStage::ShareKeys => RoundStage::MaskedInputCollection,
        RoundStage::MaskedInputCollection => RoundStage::ConsistencyCheck,
        RoundStage::ConsistencyCheck | RoundStage::Unmasking => RoundStage::Unmasking,
        other => other,
    }
}

pub(crate) fn site_header(config: &RoundConfig, site: SiteId) -> SiteHeader {
    SiteHeader {
        study_id: config.study_id().to_owned(),
        round: config.round(),
        config_hash: config.config_hash(),
        site,
    }
}

/// Checks the study, round and configuration hash of a message; errors name `site`.
pub(crate) fn check_header_fields(
    config: &RoundConfig,
    site: SiteId,
    study_id: &str,
    round: u64,
    config_hash: &[u8; 32],
) -> Result<(), SecAggError> {
    if study_id != config.study_id() || round != config.round() {
        return Err(SecAggError::WrongRound {
            site,
            round: config.round(),
            got_study: study_id.to_owned(),
            got_round: round,
            expected_study: config.study_id().to_owned(),
        });
    }
    if *config_hash != config.config_hash() {
        return Err(SecAggError::ConfigMismatch { site, round });
    }
    Ok(())
}
