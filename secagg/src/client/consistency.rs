//! Against a malicious server: round 3 (the site signs the survivor set it is told) and the checks of
//! round 4 (the unmasking request names that set, signed by at least t of its members) and of the
//! peers' signatures.

use super::{SecAggClient, site_header};
use crate::auth::{Authentication, survivors_transcript};
use crate::messages::{ConsistencyCheck, ConsistencyResponse, UnmaskRequest};
use crate::{RoundStage, SecAggError, SiteId};

impl SecAggClient {
    /// Round 3, against a malicious server: checks the survivor set U3 like an unmasking request
    /// (within U2, with this site, at least t) and signs it. Asked again, the site gives the same
    /// answer for the same set and refuses any other.
    ///
    /// # Errors
    /// [`SecAggError::Inconsistent`] for a second, different set; a check for another round/study,
    /// with sites outside U2 or fewer than t survivors; a curious-server instance (no round 3).
    pub fn consistency_check(
        &mut self,
        check: &ConsistencyCheck,
    ) -> Result<ConsistencyResponse, SecAggError> {
        let (site, round) = (self.site, self.config.round());
        if let Some((signed, response)) = &self.signed {
            self.check_round_header(&check.header)?;
            if *signed != check.survivors {
                return Err(SecAggError::Inconsistent {
                    site,
                    round,
                    reason: "the server asked to sign a second, different survivor set".into(),
                });
            }
            return Ok(response.clone());
        }
        self.expect_stage(RoundStage::MaskedInputCollection)?;
        self.check_round_header(&check.header)?;
        let Some(auth) = &self.auth else {
            return Err(
                self.malformed("this instance has no consistency check (curious-server model)".into())
            );
        };
        self.check_survivor_lists(&check.survivors, &check.dropped, RoundStage::ConsistencyCheck)?;
        let message = survivors_transcript(&self.config, site, &check.survivors);
        let signature = auth.signer.sign(&message).map_err(|_| SecAggError::Crypto {
            site,
            round,
            what: "signing the survivor set",
        })?;
        let response = ConsistencyResponse {
            header: site_header(&self.config, site),
            signature,
        };
        self.signed = Some((check.survivors.clone(), response.clone()));
        self.stage = RoundStage::ConsistencyCheck;
        Ok(response)
    }

    /// Round 4 against a malicious server: U3 is the set this site signed, and for every owner v of a
    /// share this site holds, at least t distinct members of N[v] ∩ U3 signed that same set (each
    /// signature checked against the credential its round-0 keys came with; in the complete graph,
    /// t members of U3).
    pub(super) fn check_signed_survivors(
        &self,
        auth: &Authentication,
        request: &UnmaskRequest,
    ) -> Result<(), SecAggError> {
        let (site, round) = (self.site, self.config.round());
        let inconsistent = |reason: String| SecAggError::Inconsistent { site, round, reason };
        let Some((signed, _)) = &self.signed else {
            return Err(inconsistent("no survivor set was signed by this site".into()));
        };
        if *signed != request.survivors {
            return Err(inconsistent(format!(
                "the unmasking request names {} survivors, not the {} this site signed",
                request.survivors.len(),
                signed.len()
            )));
        }
        if request.signatures.windows(2).any(|w| w[0].site >= w[1].site) {
            return Err(self.malformed("survivor signatures are not sorted or repeat a site".into()));
        }
        let threshold = self.config.threshold();
        if request.signatures.len() < threshold {
            return Err(inconsistent(format!(
                "{} sites signed the survivor set, threshold is {threshold}",
                request.signatures.len()
            )));
        }
        // The owners this site would reveal a share of: the members of U2 it knows (itself and the
        // neighbours that sent it shares). Only signatures from their closed neighbourhoods count.
        let owners = &self.senders;
        let relevant = |w: SiteId| owners.iter().any(|&v| self.config.in_closed_neighbourhood(v, w));
        let mut verified = Vec::with_capacity(request.signatures.len());
        for entry in &request.signatures {
            let v = entry.site;
            if !signed.contains(&v) {
                return Err(inconsistent(format!("{v} signed but is not a survivor")));
            }
            if !relevant(v) {
                continue;
            }
            let message = survivors_transcript(&self.config, v, signed);
            let credential = if v == site {
                &self.advertised.credential
            } else {
                self.credentials
                    .get(&v)
                    .ok_or_else(|| inconsistent(format!("{v} has no verified credential")))?
            };
            self.verify_peer(auth, v, credential, &message, &entry.signature, "survivor set")
                .map_err(|error| match error {
                    SecAggError::BadSignature { peer, reason, .. } => inconsistent(format!(
                        "the signature of {peer} is not on the survivor set this site signed ({reason})"
                    )),
                    other => other,
                })?;
            verified.push(v);
        }
        // SecAgg+'s rule, per owner: t members of N[v] signed this same set. In the complete graph
        // N[v] is everyone, and the global count above already decided.
        for &v in owners {
            let signers = self.config.count_in_closed_neighbourhood(v, &verified);
            if signers < threshold {
                return Err(inconsistent(format!(
                    "only {signers} members of the closed neighbourhood of {v} signed the survivor set, \
                     threshold is {threshold}"
                )));
            }
        }
        Ok(())
    }

    /// Checks `signature` of `peer` over `message` with `credential`, which must be the study's
    /// credential of the identity the configuration gives `peer`.
    pub(super) fn verify_peer(
        &self,
        auth: &Authentication,
        peer: SiteId,
        credential: &[u8],
        message: &[u8],
        signature: &[u8],
        what: &'static str,
    ) -> Result<(), SecAggError> {
        let (site, round) = (self.site, self.config.round());
        let identity = self.config.identity(peer).ok_or(SecAggError::NotInRound {
            site: peer,
            round,
            stage: RoundStage::AdvertiseKeys,
        })?;
        auth.peers
            .verify(identity, credential, message, signature)
            .map_err(|reason| SecAggError::BadSignature {
                site,
                peer,
                round,
                what,
                reason,
            })
    }
}
