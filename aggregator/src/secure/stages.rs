//! When the stages of an instance close: all invited sites answered (none lost), or the stage's
//! deadline passed; the decision of who is in each set is the server's and final.

use super::SecureAggregation;
use fedlnm_protocol::payload::encode;
use fedlnm_shared::secagg::{
    ConsistencyCheck, KeyDirectory, RoundStage, SecAggServer, ShareDelivery, SiteId, UnmaskRequest,
};
use std::time::Instant;

/// Where the stages of an instance stand ([`SecureAggregation::drive`]).
pub(crate) enum Drive {
    Pending,
    Failed(String),
    /// Every stage before the end has closed: the server, with the survivors' shares, to finish
    /// (unmask and decode). Returned once.
    Unmasked(Box<SecAggServer>),
}

impl SecureAggregation {
    /// Closes the stages that are complete or past their deadline, up to the end of the unmasking
    /// stage, when it hands out the server to finish.
    pub(crate) fn drive(&mut self, now: Instant) -> Drive {
        if let Some(reason) = &self.failed {
            return Drive::Failed(reason.clone());
        }
        if self.finishing {
            return Drive::Pending;
        }
        let invited: Vec<SiteId> = self.ids.values().copied().collect();
        loop {
            match self.stage() {
                RoundStage::AdvertiseKeys => {
                    if self.waits_for(&invited, &self.advertised) && now < self.stage_deadline {
                        return Drive::Pending;
                    }
                    match self.server.close_keys() {
                        Ok(directory) => {
                            self.u1 = directory.sites.iter().map(|k| k.header.site).collect();
                            // Each site gets the entries it needs (all of them in the complete graph).
                            let whole = self
                                .config
                                .is_complete_graph()
                                .then(|| encode::<KeyDirectory>(&directory));
                            let directories = self
                                .u1
                                .iter()
                                .map(|&site| {
                                    let encoded = whole.clone().unwrap_or_else(|| {
                                        encode::<KeyDirectory>(&directory.for_site(&self.config, site))
                                    });
                                    (site, encoded)
                                })
                                .collect();
                            self.directory = Some(directories);
                            self.stage_deadline = now + self.stage_timeout;
                        }
                        Err(error) => return self.fail_drive(format!("key stage: {error}")),
                    }
                }
                RoundStage::ShareKeys => {
                    if self.waits_for(&self.u1, &self.shared) && now < self.stage_deadline {
                        return Drive::Pending;
                    }
                    match self.server.close_shares() {
                        Ok(deliveries) => {
                            // One delivery per member of U2 (its senders are U2 ∩ N[to] in a SecAgg+ graph).
                            self.u2 = deliveries.iter().map(|d| d.to).collect();
                            for delivery in deliveries {
                                self.deliveries
                                    .insert(delivery.to, encode::<ShareDelivery>(&delivery));
                            }
                        }
                        Err(error) => return self.fail_drive(format!("share stage: {error}")),
                    }
                }
                RoundStage::MaskedInputCollection => {
                    if self.waits_for(&self.u2, &self.uploaded) && now < self.round_deadline {
                        return Drive::Pending;
                    }
                    match self.server.close_masked_inputs() {
                        Ok(check) => {
                            self.u3 = check.survivors.clone();
                            if self.config.is_authenticated() {
                                self.consistency_check = Some(encode::<ConsistencyCheck>(&check));
                            }
                            self.stage_deadline = now + self.stage_timeout;
                        }
                        Err(error) => return self.fail_drive(format!("masked-input stage: {error}")),
                    }
                }
                RoundStage::ConsistencyCheck => {
                    // Against a curious aggregator there is no round 3: it closes at once.
                    if self.config.is_authenticated()
                        && self.waits_for(&self.u3, &self.signed)
                        && now < self.stage_deadline
                    {
                        return Drive::Pending;
                    }
                    match self.server.close_consistency() {
                        Ok(request) => {
                            self.u4 = if self.config.is_authenticated() {
                                request.signatures.iter().map(|s| s.site).collect()
                            } else {
                                request.survivors.clone()
                            };
                            self.unmask_request = Some(encode::<UnmaskRequest>(&request));
                            self.stage_deadline = now + self.stage_timeout;
                        }
                        Err(error) => return self.fail_drive(format!("consistency-check stage: {error}")),
                    }
                }
                RoundStage::Unmasking => {
                    if self.waits_for(&self.u4, &self.responded) && now < self.stage_deadline {
                        return Drive::Pending;
                    }
                    self.finishing = true;
                    let server = std::mem::replace(&mut self.server, SecAggServer::new(self.config.clone()));
                    return Drive::Unmasked(Box::new(server));
                }
                RoundStage::Done | RoundStage::Aborted => {
                    return self.fail_drive("the protocol instance ended without an aggregate".to_owned());
                }
            }
        }
    }

    fn fail_drive(&mut self, reason: String) -> Drive {
        self.failed = Some(reason.clone());
        Drive::Failed(reason)
    }
}
