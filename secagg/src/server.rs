//! The aggregator's side of the protocol: collects each stage's messages, decides who dropped, and
//! after unmasking decodes Σ n_k·Δ_k, Σ n_k and the FedAvg delta. It never sees one site's input.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::{PublicKey, StaticSecret};

use super::auth::{PeerVerifier, keys_transcript, survivors_transcript};
use super::client::check_header_fields;
use super::crypto::{pairwise_mask_seed, self_mask_seed};
use super::messages::{
    AdvertiseKeys, ConsistencyCheck, ConsistencyResponse, KeyDirectory, RoundHeader, ShareDelivery,
    ShareKeys, SiteHeader, SurvivorSignature, UnmaskRequest, UnmaskResponse,
};
use super::prg::{MaskSeed, Sign, apply_masks};
use super::shamir::{self, Share};
use super::{InputKind, RoundConfig, RoundStage, SecAggError, SiteId};
use fedlnm_tensors::NamedTensors;
use fedlnm_tensors::parallel::available_threads;

mod decode;
mod neighbourhoods;
mod receive;

/// The decoded result of one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub round: u64,
    /// Σ_k n_k over U3.
    pub total_samples: u64,
    /// The FedAvg delta Σ n_k Δ_k / Σ n_k over the survivors U3 (aggregated tensors only, in model
    /// order, with their configured shapes; FedBN tensors are absent).
    pub fedavg_delta: NamedTensors,
    /// The exact ring sum Σ q(n_k·Δ_k) in fixed point (last element: Σ n_k), for audit; decoded by
    /// [`Aggregate::weighted_sum`].
    pub fixed_point_sum: Vec<i64>,
    /// The fixed point's fractional bits (the instance's quantization).
    pub fractional_bits: u32,
    /// U3: the sites whose inputs are in the sum.
    pub survivors: Vec<SiteId>,
    /// U2 \ U3: sites that shared keys but did not upload; their pairwise masks were removed.
    pub dropped: Vec<SiteId>,
}

/// The decoded result of a statistics instance ([`crate::InputKind::Counts`]) or of a ring instance
/// ([`crate::InputKind::Ring`]: the sums modulo 2^64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountSum {
    pub round: u64,
    /// Σ_k counts_k over the survivors U3, one vector per configured tensor, in order.
    pub counts: Vec<Vec<u64>>,
    /// U3: the sites whose counts are in the sum.
    pub survivors: Vec<SiteId>,
    /// U2 \ U3: sites that shared keys but did not upload.
    pub dropped: Vec<SiteId>,
}

/// The server's state for one round. Feed it each stage's messages with `receive_*`; close a stage
/// (deadline reached or everyone answered) with `close_*`; the decision of who dropped is final.
/// Against a curious server there is no round 3: close it right after the masked inputs.
pub struct SecAggServer {
    config: RoundConfig,
    stage: RoundStage,
    keys: BTreeMap<SiteId, AdvertiseKeys>,
    u1: Vec<SiteId>,
    shares: BTreeMap<SiteId, ShareKeys>,
    u2: Vec<SiteId>,
    /// Σ y_u over the uploads summed so far (mod 2^64): O(m) memory whatever the site count.
    masked_sum: Vec<u64>,
    /// Uploads checked and counted in U3 but not yet summed (at most `max_held`; see `receive.rs`).
    held: Vec<receive::HeldMasked>,
    max_held: usize,
    u3: BTreeSet<SiteId>,
    survivors: Vec<SiteId>,
    dropped: Vec<SiteId>,
    /// Round 3: each survivor's signature of U3 (malicious-server instances).
    signatures: BTreeMap<SiteId, Vec<u8>>,
    /// U4: the sites asked to unmask (the signers of U3; U3 itself against a curious server).
    responders: Vec<SiteId>,
    responses: BTreeMap<SiteId, UnmaskResponse>,
    /// Checks the sites' signatures on receipt, so that a bad one is refused as that site's fault
    /// instead of aborting the instance at every honest site.
    verifier: Option<std::sync::Arc<dyn PeerVerifier>>,
    /// Threads that unmasking may use.
    threads: usize,
}

impl SecAggServer {
    /// A server waiting for round 0 (AdvertiseKeys).
    #[must_use]
    pub fn new(config: RoundConfig) -> Self {
        Self {
            config,
            stage: RoundStage::AdvertiseKeys,
            keys: BTreeMap::new(),
            u1: Vec::new(),
            shares: BTreeMap::new(),
            u2: Vec::new(),
            masked_sum: Vec::new(),
            held: Vec::new(),
            max_held: 1,
            u3: BTreeSet::new(),
            survivors: Vec::new(),
            dropped: Vec::new(),
            signatures: BTreeMap::new(),
            responders: Vec::new(),
            responses: BTreeMap::new(),
            verifier: None,
            threads: available_threads(),
        }
    }

    /// Checks every signature a site sends (malicious-server instances) with the study's authority,
    /// and refuses the message of a site whose signature does not verify. Without it, signatures are
    /// relayed unchecked: the sites check them all the same (their check is the protection; the
    /// server's keeps one bad site from aborting the instance).
    #[must_use]
    pub fn with_verifier(mut self, verifier: std::sync::Arc<dyn PeerVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Limits the threads that unmasking uses (default: the machine's available parallelism; at
    /// least 1). The aggregate does not depend on it.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The current stage.
    #[must_use]
    pub fn stage(&self) -> RoundStage {
        self.stage
    }

    /// Round 0: records a site's advertised keys.
    ///
    /// # Errors
    /// Wrong stage, round, study or configuration; a non-participant; a duplicate; a key list that does
    /// not name every other participant exactly once. The state is unchanged on error.
    pub fn receive_keys(&mut self, msg: AdvertiseKeys) -> Result<(), SecAggError> {
        let site = msg.header.site;
        self.check_message(
            &msg.header,
            RoundStage::AdvertiseKeys,
            self.config.participants(),
            self.keys.contains_key(&site),
        )?;
        let mut peers: Vec<SiteId> = msg.channel_public_keys.iter().map(|k| k.peer).collect();
        peers.sort_unstable();
        if peers != self.config.neighbours(site) {
            return Err(self.malformed(
                site,
                "channel keys must name every neighbour (every other participant in the complete graph) \
                 exactly once",
            ));
        }
        if self.config.is_authenticated() {
            let message = keys_transcript(&self.config, site, &msg.mask_public_key, &msg.channel_public_keys);
            self.verify(site, &msg.credential, &message, &msg.signature, "round-0 keys")?;
        } else if !(msg.credential.is_empty() && msg.signature.is_empty()) {
            return Err(self.malformed(
                site,
                "a curious-server instance carries no credential or signature",
            ));
        }
        self.keys.insert(site, msg);
        Ok(())
    }

    /// Closes round 0: U1 is whoever advertised; aborts below the threshold (in all, and in any
    /// closed neighbourhood of a SecAgg+ graph). The directory holds all of U1; relay to each site
    /// its [`KeyDirectory::for_site`] in a SecAgg+ instance.
    ///
    /// # Errors
    /// [`SecAggError::TooFewSurvivors`] (the instance is then aborted) or a wrong stage.
    pub fn close_keys(&mut self) -> Result<KeyDirectory, SecAggError> {
        self.expect_stage(RoundStage::AdvertiseKeys)?;
        self.check_quorum(self.keys.len(), RoundStage::AdvertiseKeys)?;
        let u1: Vec<SiteId> = self.keys.keys().copied().collect();
        self.check_neighbourhoods(&u1, Some(&u1), RoundStage::AdvertiseKeys)?;
        self.u1 = u1;
        self.stage = RoundStage::ShareKeys;
        Ok(KeyDirectory {
            header: self.round_header(),
            sites: self.keys.values().cloned().collect(),
        })
    }

    /// Round 1: records a site's encrypted shares (one for every neighbour in U1).
    ///
    /// # Errors
    /// Wrong stage, round, study or configuration; a site outside U1; a duplicate; a share list that
    /// does not address every other member of U1 exactly once. The state is unchanged on error.
    pub fn receive_shares(&mut self, msg: ShareKeys) -> Result<(), SecAggError> {
        let site = msg.header.site;
        self.check_message(
            &msg.header,
            RoundStage::ShareKeys,
            &self.u1,
            self.shares.contains_key(&site),
        )?;
        if msg.encrypted_shares.iter().any(|s| s.from != site) {
            return Err(self.malformed(site, "a share's sender is not the message's sender"));
        }
        let mut recipients: Vec<SiteId> = msg.encrypted_shares.iter().map(|s| s.to).collect();
        recipients.sort_unstable();
        let mut expected = self.config.closed_neighbourhood_members(site, &self.u1);
        expected.retain(|&p| p != site);
        if recipients != expected {
            return Err(self.malformed(site, "shares must address every neighbour in U1 exactly once"));
        }
        self.shares.insert(site, msg);
        Ok(())
    }

    /// Closes round 1: U2 is whoever sent shares; returns one delivery per member v of U2, naming
    /// U2 ∩ N[v] (all of U2 in the complete graph).
    ///
    /// # Errors
    /// [`SecAggError::TooFewSurvivors`] (the instance is then aborted) or a wrong stage.
    pub fn close_shares(&mut self) -> Result<Vec<ShareDelivery>, SecAggError> {
        self.expect_stage(RoundStage::ShareKeys)?;
        self.check_quorum(self.shares.len(), RoundStage::ShareKeys)?;
        let u2: Vec<SiteId> = self.shares.keys().copied().collect();
        self.check_neighbourhoods(&u2, Some(&u2), RoundStage::ShareKeys)?;
        self.u2 = u2;
        let deliveries = self
            .u2
            .iter()
            .map(|&to| ShareDelivery {
                header: self.round_header(),
                to,
                senders: self.config.closed_neighbourhood_members(to, &self.u2),
                shares: self
                    .shares
                    .values()
                    .flat_map(|m| m.encrypted_shares.iter().filter(|s| s.to == to).cloned())
                    .collect(),
            })
            .collect();
        // The first upload becomes the running sum (see `receive`): no zeroed accumulator.
        self.masked_sum = Vec::new();
        self.stage = RoundStage::MaskedInputCollection;
        Ok(deliveries)
    }

    /// Closes round 2: U3 is whoever uploaded; the check names U3 and U2 \ U3 (for the sites to sign,
    /// against a malicious server).
    ///
    /// # Errors
    /// [`SecAggError::TooFewSurvivors`] (the instance is then aborted) or a wrong stage.
    pub fn close_masked_inputs(&mut self) -> Result<ConsistencyCheck, SecAggError> {
        self.expect_stage(RoundStage::MaskedInputCollection)?;
        self.check_quorum(self.u3.len(), RoundStage::MaskedInputCollection)?;
        let survivors: Vec<SiteId> = self.u3.iter().copied().collect();
        self.check_neighbourhoods(&survivors, None, RoundStage::MaskedInputCollection)?;
        self.survivors = survivors;
        self.dropped = self.u2.iter().copied().filter(|v| !self.u3.contains(v)).collect();
        self.sum_held();
        self.stage = RoundStage::ConsistencyCheck;
        Ok(ConsistencyCheck {
            header: self.round_header(),
            survivors: self.survivors.clone(),
            dropped: self.dropped.clone(),
        })
    }

    /// Round 3: records a survivor's signature of U3 (malicious-server instances).
    ///
    /// # Errors
    /// Wrong stage, round, study or configuration; a site outside U3; a duplicate; a curious-server
    /// instance; with a verifier, a signature that does not verify. The state is unchanged on error.
    pub fn receive_consistency(&mut self, msg: ConsistencyResponse) -> Result<(), SecAggError> {
        let site = msg.header.site;
        self.check_message(
            &msg.header,
            RoundStage::ConsistencyCheck,
            &self.survivors,
            self.signatures.contains_key(&site),
        )?;
        if !self.config.is_authenticated() {
            return Err(self.malformed(site, "a curious-server instance has no consistency check"));
        }
        let message = survivors_transcript(&self.config, site, &self.survivors);
        let credential = self
            .keys
            .get(&site)
            .map(|k| k.credential.clone())
            .unwrap_or_default();
        self.verify(site, &credential, &message, &msg.signature, "survivor set")?;
        self.signatures.insert(site, msg.signature);
        Ok(())
    }

    /// Closes round 3: U4 is whoever signed U3 (against a curious server, U3 itself, at once); the
    /// request names U3, U2 \ U3 and relays the signatures of U4.
    ///
    /// # Errors
    /// [`SecAggError::TooFewSurvivors`] (the instance is then aborted) or a wrong stage.
    pub fn close_consistency(&mut self) -> Result<UnmaskRequest, SecAggError> {
        self.expect_stage(RoundStage::ConsistencyCheck)?;
        if self.config.is_authenticated() {
            self.check_quorum(self.signatures.len(), RoundStage::ConsistencyCheck)?;
            let signers: Vec<SiteId> = self.signatures.keys().copied().collect();
            self.check_neighbourhoods(&signers, None, RoundStage::ConsistencyCheck)?;
            self.responders = signers;
        } else {
            self.responders = self.survivors.clone();
        }
        self.stage = RoundStage::Unmasking;
        Ok(UnmaskRequest {
            header: self.round_header(),
            survivors: self.survivors.clone(),
            dropped: self.dropped.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|(&site, signature)| SurvivorSignature {
                    site,
                    signature: signature.clone(),
                })
                .collect(),
        })
    }

    /// Round 4: records the revealed shares of a site u of U4.
    ///
    /// # Errors
    /// Wrong stage, round, study or configuration; a site outside U4; a duplicate; shares that do not
    /// cover exactly the survivors (self-mask) and the dropped sites (mask key) of N[u] (everyone in
    /// the complete graph), or carry another site's evaluation point. The state is unchanged on error.
    pub fn receive_unmask_response(&mut self, msg: UnmaskResponse) -> Result<(), SecAggError> {
        let site = msg.header.site;
        self.check_message(
            &msg.header,
            RoundStage::Unmasking,
            &self.responders,
            self.responses.contains_key(&site),
        )?;
        let point = self.config.share_point(site);
        let owners =
            |list: &[super::messages::RevealedShare]| list.iter().map(|r| r.owner).collect::<Vec<_>>();
        if owners(&msg.self_mask_shares) != self.config.closed_neighbourhood_members(site, &self.survivors)
            || owners(&msg.mask_key_shares) != self.config.closed_neighbourhood_members(site, &self.dropped)
        {
            return Err(self.malformed(
                site,
                "revealed shares must cover U3 (self masks) and U2 \\ U3 (mask keys)",
            ));
        }
        if msg
            .self_mask_shares
            .iter()
            .chain(&msg.mask_key_shares)
            .any(|r| Some(r.share.x) != point)
        {
            return Err(self.malformed(site, "a revealed share is not at the site's evaluation point"));
        }
        self.responses.insert(site, msg);
        Ok(())
    }

    /// Closes round 4 and decodes: reconstructs b_v of every survivor and s_v^sk of every dropped site
    /// (checked against its advertised public key), removes all masks, decodes and checks the sum.
    ///
    /// # Errors
    /// [`SecAggError::TooFewSurvivors`]; a secret that cannot be reconstructed (inconsistent shares);
    /// an invalid aggregate. Any error aborts the instance: there is never a partial result.
    pub fn finish(&mut self) -> Result<Aggregate, SecAggError> {
        self.finish_with(InputKind::WeightedDelta, Self::decode)
    }

    /// As [`Self::finish`], for a statistics instance: the exact sums of the sites' counts.
    ///
    /// # Errors
    /// As [`Self::finish`]; also a sum whose site element is not |U3| or whose counts exceed what
    /// |U3| sites may report (then some upload was not made by the protocol).
    pub fn finish_counts(&mut self) -> Result<CountSum, SecAggError> {
        self.finish_with(InputKind::Counts, Self::decode_counts)
    }

    /// As [`Self::finish`], for a ring instance: the sums modulo 2^64 of the sites' vectors.
    ///
    /// # Errors
    /// As [`Self::finish`]; also a sum whose site element is not |U3|.
    pub fn finish_ring(&mut self) -> Result<CountSum, SecAggError> {
        self.finish_with(InputKind::Ring, Self::decode_ring)
    }

    fn finish_with<T>(
        &mut self,
        input: InputKind,
        decode: fn(&mut Self) -> Result<T, SecAggError>,
    ) -> Result<T, SecAggError> {
        if self.config.input() != input {
            return Err(SecAggError::WrongInputKind {
                round: self.config.round(),
                configured: self.config.input(),
                given: input,
            });
        }
        self.expect_stage(RoundStage::Unmasking)?;
        self.check_quorum(self.responses.len(), RoundStage::Unmasking)?;
        let responders: Vec<SiteId> = self.responses.keys().copied().collect();
        self.check_neighbourhoods(&responders, None, RoundStage::Unmasking)?;
        let result = self.unmask().and_then(|()| decode(self));
        self.stage = if result.is_ok() {
            RoundStage::Done
        } else {
            RoundStage::Aborted
        };
        self.masked_sum = Vec::new();
        self.held = Vec::new();
        result
    }

    /// Removes every mask from the running sum.
    fn unmask(&mut self) -> Result<(), SecAggError> {
        let round = self.config.round();
        let t = self.config.threshold();
        let salt = *self.config.salt();
        let collect = |owner: SiteId, pick: fn(&UnmaskResponse) -> &[super::messages::RevealedShare]| {
            self.responses
                .values()
                .filter_map(|r| pick(r).iter().find(|s| s.owner == owner).map(|s| s.share.clone()))
                .collect::<Vec<Share>>()
        };
        let reconstruction = |site, e: shamir::ShamirError| SecAggError::Reconstruction {
            site,
            round,
            reason: e.to_string(),
        };
        let mut seeds: Vec<(MaskSeed, Sign)> = Vec::new();
        for &v in &self.survivors {
            let b =
                shamir::combine(&collect(v, |r| &r.self_mask_shares), t).map_err(|e| reconstruction(v, e))?;
            seeds.push((self_mask_seed(&b, &salt, v), Sign::Subtract));
        }
        for &v in &self.dropped {
            let bytes =
                shamir::combine(&collect(v, |r| &r.mask_key_shares), t).map_err(|e| reconstruction(v, e))?;
            let secret = StaticSecret::from(*bytes);
            // Every dropped site is in U2 ⊆ U1, whose keys were all recorded in round 0.
            let advertised = self.keys.get(&v).map(|k| k.mask_public_key);
            if Some(PublicKey::from(&secret).to_bytes()) != advertised {
                return Err(SecAggError::Reconstruction {
                    site: v,
                    round,
                    reason: "reconstructed mask key does not match the advertised public key".into(),
                });
            }
            // Only the survivors that are neighbours of v masked with it.
            for &u in self
                .survivors
                .iter()
                .filter(|&&u| self.config.in_closed_neighbourhood(v, u))
            {
                let Some(pk) = self.keys.get(&u).map(|k| k.mask_public_key) else {
                    continue;
                };
                let shared = secret.diffie_hellman(&PublicKey::from(pk));
                // y_u holds +PRG(s_uv) if v > u and −PRG(s_uv) if v < u: take it out.
                let sign = if v > u { Sign::Subtract } else { Sign::Add };
                seeds.push((pairwise_mask_seed(shared.as_bytes(), &salt, u, v), sign));
            }
        }
        let masks: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
        let ring = self.config.config().quantization.ring;
        apply_masks(&mut self.masked_sum, 0, &masks, ring, self.threads);
        Ok(())
    }

    fn check_message(
        &self,
        header: &SiteHeader,
        stage: RoundStage,
        members: &[SiteId],
        duplicate: bool,
    ) -> Result<(), SecAggError> {
        let (site, round) = (header.site, self.config.round());
        if self.stage == RoundStage::Aborted {
            return Err(SecAggError::Aborted { round });
        }
        check_header_fields(
            &self.config,
            site,
            &header.study_id,
            header.round,
            &header.config_hash,
        )?;
        if self.stage != stage {
            return Err(SecAggError::WrongStage {
                site,
                round,
                got: stage,
                current: self.stage,
            });
        }
        if !members.contains(&site) {
            return Err(SecAggError::NotInRound { site, round, stage });
        }
        if duplicate {
            return Err(SecAggError::Duplicate { site, round, stage });
        }
        Ok(())
    }

    fn expect_stage(&self, stage: RoundStage) -> Result<(), SecAggError> {
        let round = self.config.round();
        match self.stage {
            RoundStage::Aborted => Err(SecAggError::Aborted { round }),
            current if current != stage => Err(SecAggError::OutOfOrder {
                round,
                requested: stage,
                current,
            }),
            _ => Ok(()),
        }
    }

    fn check_quorum(&mut self, survivors: usize, stage: RoundStage) -> Result<(), SecAggError> {
        // t in the complete graph; n − ⌊δn⌋ (at least t) with a SecAgg+ graph.
        let threshold = self.config.min_survivors();
        if survivors < threshold {
            return Err(self.abort(SecAggError::TooFewSurvivors {
                round: self.config.round(),
                stage,
                survivors,
                threshold,
            }));
        }
        Ok(())
    }

    /// Aborts the instance for `reason` (no later message is taken, the running sum is freed) and
    /// returns it.
    fn abort(&mut self, reason: SecAggError) -> SecAggError {
        self.stage = RoundStage::Aborted;
        self.masked_sum = Vec::new();
        self.held = Vec::new();
        reason
    }

    /// Checks a site's signature with the verifier, if the server has one.
    fn verify(
        &self,
        site: SiteId,
        credential: &[u8],
        message: &[u8],
        signature: &[u8],
        what: &'static str,
    ) -> Result<(), SecAggError> {
        let round = self.config.round();
        let bad = |reason: String| SecAggError::BadSignature {
            site,
            peer: site,
            round,
            what,
            reason,
        };
        if credential.is_empty() || signature.is_empty() {
            return Err(bad("no credential or signature".into()));
        }
        let (Some(verifier), Some(identity)) = (&self.verifier, self.config.identity(site)) else {
            return Ok(());
        };
        verifier
            .verify(identity, credential, message, signature)
            .map_err(bad)
    }

    fn round_header(&self) -> RoundHeader {
        RoundHeader {
            study_id: self.config.study_id().to_owned(),
            round: self.config.round(),
            config_hash: self.config.config_hash(),
        }
    }

    fn malformed(&self, site: SiteId, reason: &str) -> SecAggError {
        SecAggError::Malformed {
            site,
            round: self.config.round(),
            reason: reason.to_owned(),
        }
    }
}
