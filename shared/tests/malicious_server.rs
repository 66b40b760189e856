//! Secure aggregation against a malicious server (Bonawitz et al. 2017, the active variant): every
//! site signs its round-0 keys and the survivor set with its study certificate key, checks its
//! peers' signatures with the study CA, and reveals no share on any inconsistency. Each test plays a
//! server that deviates from the protocol (by editing the messages an honest one would send) and
//! checks that the honest sites detect it, say why, and never let it gather the shares of both
//! secrets of one site. Certificates come from a real rcgen PKI; signatures are the node's own
//! (`fedlnm_shared::signing`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use fedlnm_shared::secagg::{
    AdvertiseKeys, Authentication, ConsistencyCheck, KeyDirectory, RoundConfig, SecAggClient, SecAggConfig,
    SecAggError, SecAggServer, ShareDelivery, SiteId, SurvivorSignature, UnmaskRequest, UnmaskResponse,
};
use fedlnm_shared::signing::SiteSigner;
use fedlnm_shared::weights::NamedTensors;
use support::Pki;

const LEN: usize = 16;

fn config(n: u32, threshold: usize, round: u64) -> RoundConfig {
    let participants: Vec<SiteId> = (1..=n).map(SiteId).collect();
    SecAggConfig {
        security: support::malicious(&participants),
        ..support::weighted_delta_config(participants, threshold, round, LEN)
    }
    .validate()
    .unwrap()
}

fn delta(site: SiteId) -> NamedTensors {
    NamedTensors::from_vectors([(
        "head.weight",
        vec![f32::from(u16::try_from(site.0).unwrap()) / 8.0; LEN],
    )])
}

/// An instance up to the key directory, with the sites' authentications from `pki`.
struct Instance {
    server: SecAggServer,
    clients: BTreeMap<SiteId, SecAggClient>,
    advertised: BTreeMap<SiteId, AdvertiseKeys>,
}

impl Instance {
    fn start(auths: &BTreeMap<SiteId, Authentication>, config: RoundConfig) -> Self {
        let mut server = SecAggServer::new(config.clone());
        let mut clients = BTreeMap::new();
        let mut advertised = BTreeMap::new();
        for &site in config.participants() {
            let (client, advertise) =
                SecAggClient::new_authenticated(config.clone(), site, auths[&site].clone()).unwrap();
            server.receive_keys(advertise.clone()).unwrap();
            clients.insert(site, client);
            advertised.insert(site, advertise);
        }
        Self {
            server,
            clients,
            advertised,
        }
    }

    /// Rounds 1 and 2, honestly: every site shares and uploads; returns the honest round-3 check.
    fn through_uploads(&mut self, directory: &KeyDirectory) -> ConsistencyCheck {
        for client in self.clients.values_mut() {
            self.server
                .receive_shares(client.share_keys(directory).unwrap())
                .unwrap();
        }
        let deliveries: Vec<ShareDelivery> = self.server.close_shares().unwrap();
        for delivery in &deliveries {
            let client = self.clients.get_mut(&delivery.to).unwrap();
            let masked = client.masked_input(delivery, &delta(delivery.to), 10).unwrap();
            self.server.receive_masked_input(masked).unwrap();
        }
        self.server.close_masked_inputs().unwrap()
    }
}

/// Which secrets of which owner the server has shares of, from the responses it got.
fn revealed(responses: &[UnmaskResponse]) -> (BTreeMap<SiteId, usize>, BTreeMap<SiteId, usize>) {
    let mut self_masks = BTreeMap::new();
    let mut mask_keys = BTreeMap::new();
    for response in responses {
        for share in &response.self_mask_shares {
            *self_masks.entry(share.owner).or_insert(0) += 1;
        }
        for share in &response.mask_key_shares {
            *mask_keys.entry(share.owner).or_insert(0) += 1;
        }
    }
    (self_masks, mask_keys)
}

/// The server never holds t shares of both the self mask and the mask key of one site.
fn assert_no_site_exposed(responses: &[UnmaskResponse], threshold: usize) {
    let (self_masks, mask_keys) = revealed(responses);
    for (owner, &count) in &mask_keys {
        let other = self_masks.get(owner).copied().unwrap_or(0);
        assert!(
            count < threshold || other < threshold,
            "the server gathered {count} mask-key and {other} self-mask shares of {owner}"
        );
    }
}

#[test]
fn an_honest_server_completes_and_the_sum_is_exact() {
    let pki = Pki::new("honest");
    let config = config(4, 3, 7);
    let auths = pki.authentications(config.participants());
    let mut instance = Instance::start(&auths, config.clone());
    instance.server = SecAggServer::new(config.clone()).with_verifier(pki.authority());
    for advertise in instance.advertised.values() {
        instance.server.receive_keys(advertise.clone()).unwrap();
    }
    let directory = instance.server.close_keys().unwrap();
    let check = instance.through_uploads(&directory);
    for (&site, client) in &mut instance.clients {
        let response = client.consistency_check(&check).unwrap();
        assert_eq!(response.header.site, site);
        instance.server.receive_consistency(response).unwrap();
    }
    let request = instance.server.close_consistency().unwrap();
    assert_eq!(request.signatures.len(), 4);
    for client in instance.clients.values_mut() {
        instance
            .server
            .receive_unmask_response(client.unmask(&request).unwrap())
            .unwrap();
    }
    let aggregate = instance.server.finish().unwrap();
    let expected = (1..=4).map(|s| f64::from(s) / 8.0).sum::<f64>() / 4.0;
    for &value in &aggregate.fedavg_delta.tensors[0].values {
        assert!(
            (f64::from(value) - expected).abs() < 1e-6,
            "{value} vs {expected}"
        );
    }
}

/// The attack the consistency check exists for: the server tells five sites that site 7 dropped
/// (they would reveal its mask key) and the other two that it survived (they would reveal its self
/// mask). With t = 5 > 2n/3, at most one of the two claims can gather t signatures; the other
/// sites refuse, and the server never holds t shares of both of site 7's secrets.
#[test]
fn different_survivor_sets_for_different_sites_are_detected() {
    let pki = Pki::new("split view");
    let config = config(7, 5, 3);
    let auths = pki.authentications(config.participants());
    let mut instance = Instance::start(&auths, config.clone());
    let directory = instance.server.close_keys().unwrap();
    let honest = instance.through_uploads(&directory);
    let all: Vec<SiteId> = config.participants().to_vec();
    let without_seven: Vec<SiteId> = all.iter().copied().filter(|&s| s != SiteId(7)).collect();
    // Site 7 really uploaded; the lie needs it listed as dropped, which the sites check against U2.
    let lie = ConsistencyCheck {
        survivors: without_seven.clone(),
        dropped: vec![SiteId(7)],
        ..honest.clone()
    };
    let (group_a, group_b): (Vec<SiteId>, Vec<SiteId>) = all.iter().partition(|s| s.0 <= 5);
    let mut signatures: BTreeMap<SiteId, (Vec<SiteId>, Vec<u8>)> = BTreeMap::new();
    for &site in &group_a {
        let response = instance
            .clients
            .get_mut(&site)
            .unwrap()
            .consistency_check(&lie)
            .unwrap();
        signatures.insert(site, (lie.survivors.clone(), response.signature));
    }
    for &site in &group_b {
        // Site 7 is not in the lie's survivors: it is told the truth, as site 6 is.
        let response = instance
            .clients
            .get_mut(&site)
            .unwrap()
            .consistency_check(&honest)
            .unwrap();
        signatures.insert(site, (honest.survivors.clone(), response.signature));
    }
    // A site asked twice with different sets refuses the second.
    let err = instance
        .clients
        .get_mut(&SiteId(6))
        .unwrap()
        .consistency_check(&lie)
        .unwrap_err();
    assert!(
        matches!(err, SecAggError::Inconsistent { site: SiteId(6), .. }),
        "{err:?}"
    );

    // The server builds, for each site, the most convincing request it can: the set that site
    // signed, with every signature it holds, on any set, relabelled as it likes.
    let request_for = |survivors: &[SiteId], dropped: Vec<SiteId>, only_matching: bool| UnmaskRequest {
        header: honest.header.clone(),
        survivors: survivors.to_vec(),
        dropped,
        signatures: signatures
            .iter()
            .filter(|(_, (set, _))| !only_matching || set.as_slice() == survivors)
            .map(|(&site, (_, signature))| SurvivorSignature {
                site,
                signature: signature.clone(),
            })
            .collect(),
    };
    let mut responses = Vec::new();
    for &site in &group_a {
        // Five signatures on the lie: t of them. These sites reveal site 7's mask key shares, as an
        // honest dropout would have them do; that alone does not unmask site 7's upload.
        let client = instance.clients.get_mut(&site).unwrap();
        responses.push(
            client
                .unmask(&request_for(&without_seven, vec![SiteId(7)], true))
                .unwrap(),
        );
    }
    for &site in &group_b {
        let client = instance.clients.get_mut(&site).unwrap();
        // Only two signatures on the truth: too few.
        let err = client.unmask(&request_for(&all, Vec::new(), true)).unwrap_err();
        assert!(
            matches!(&err, SecAggError::Inconsistent { reason, .. } if reason.contains("threshold is 5")),
            "{err:?}"
        );
        // All seven signatures, five of them on the other set: they do not verify on this one.
        let err = client.unmask(&request_for(&all, Vec::new(), false)).unwrap_err();
        assert!(
            matches!(&err, SecAggError::Inconsistent { reason, .. } if reason.contains("not on the survivor set")),
            "{err:?}"
        );
        // The set it did not sign: refused outright.
        let err = client
            .unmask(&request_for(&without_seven, vec![SiteId(7)], true))
            .unwrap_err();
        assert!(
            matches!(&err, SecAggError::Inconsistent { reason, .. } if reason.contains("not the 7 this site signed")),
            "{err:?}"
        );
    }
    let (self_masks, mask_keys) = revealed(&responses);
    assert_eq!(mask_keys.get(&SiteId(7)), Some(&5));
    assert_eq!(
        self_masks.get(&SiteId(7)),
        None,
        "no self-mask share of site 7 left any site"
    );
    assert_no_site_exposed(&responses, config.threshold());
}

/// A server that substitutes a site's public key (to learn the pairwise masks or read the shares
/// meant for it) cannot sign for it: every honest site refuses the directory before using any key,
/// whether the server keeps the site's signature, signs with another site's certificate, with its
/// own server certificate, or with a certificate of another study.
#[test]
fn a_substituted_public_key_is_detected() {
    let pki = Pki::new("substitution");
    let config = config(4, 3, 5);
    let auths = pki.authentications(config.participants());
    let mut instance = Instance::start(&auths, config.clone());
    let directory = instance.server.close_keys().unwrap();
    let victim = SiteId(2);
    let index = directory
        .sites
        .iter()
        .position(|e| e.header.site == victim)
        .unwrap();
    let other_study = Pki::new("another study");
    // Keys the server made for itself, advertised under the victim's id.
    let server_keys = signed_as(&config, victim, &pki.site("S3"));
    let cases: Vec<(&str, AdvertiseKeys, &str)> = vec![
        (
            "the victim's signature over the server's keys",
            AdvertiseKeys {
                credential: directory.sites[index].credential.clone(),
                signature: directory.sites[index].signature.clone(),
                ..server_keys.clone()
            },
            "the signature does not verify",
        ),
        ("another site's certificate", server_keys, "not S2's"),
        (
            "the aggregator's server certificate",
            signed_as(&config, victim, &pki.server()),
            "not a site certificate of this study",
        ),
        (
            "a site certificate of another study",
            signed_as(&config, victim, &other_study.site("S2")),
            "not a site certificate of this study",
        ),
    ];
    for (what, entry, reason) in cases {
        let mut forged = directory.clone();
        forged.sites[index] = entry;
        for (&site, client) in instance.clients.iter_mut().filter(|(s, _)| **s != victim) {
            let err = client.share_keys(&forged).unwrap_err();
            assert!(
                matches!(&err, SecAggError::BadSignature { site: s, peer, what: "round-0 keys", reason: r, .. }
                    if *s == site && *peer == victim && r.contains(reason)),
                "{what}: {err:?}"
            );
        }
    }
    // The rejections left every client as it was: the genuine directory still works.
    for client in instance.clients.values_mut() {
        client.share_keys(&directory).unwrap();
    }
}

/// Signatures are bound to their instance: the server cannot replay a site's round-0 keys from an
/// earlier round (whose secrets it may have learnt) nor the survivor-set signatures of an earlier
/// round or attempt to convince a site that others agreed.
#[test]
fn signatures_replayed_from_another_round_are_detected() {
    let pki = Pki::new("replay");
    let old = config(4, 3, 5);
    let auths = pki.authentications(old.participants());
    // Round 5, complete up to the survivor signatures.
    let mut round5 = Instance::start(&auths, old.clone());
    let directory5 = round5.server.close_keys().unwrap();
    let check5 = round5.through_uploads(&directory5);
    let old_signatures: Vec<SurvivorSignature> = round5
        .clients
        .iter_mut()
        .map(|(&site, client)| SurvivorSignature {
            site,
            signature: client.consistency_check(&check5).unwrap().signature,
        })
        .collect();

    // Round 6: the server swaps in site 2's round-5 keys, relabelled for round 6.
    let new = config(4, 3, 6);
    let mut round6 = Instance::start(&auths, new.clone());
    let directory6 = round6.server.close_keys().unwrap();
    let mut replayed = directory6.clone();
    let index = replayed
        .sites
        .iter()
        .position(|e| e.header.site == SiteId(2))
        .unwrap();
    let mut old_keys = directory5.sites[index].clone();
    old_keys.header = directory6.sites[index].header.clone();
    replayed.sites[index] = old_keys;
    let err = round6
        .clients
        .get_mut(&SiteId(1))
        .unwrap()
        .share_keys(&replayed)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SecAggError::BadSignature {
                peer: SiteId(2),
                what: "round-0 keys",
                ..
            }
        ),
        "{err:?}"
    );

    // Round 6 goes on honestly to round 3, then the server relays round 5's survivor signatures
    // (same sites, same set) instead of the ones made for round 6.
    let check6 = round6.through_uploads(&directory6);
    let site = SiteId(1);
    let client = round6.clients.get_mut(&site).unwrap();
    let own = client.consistency_check(&check6).unwrap();
    let mut signatures = old_signatures;
    signatures[0].signature = own.signature;
    let request = UnmaskRequest {
        header: check6.header.clone(),
        survivors: check6.survivors.clone(),
        dropped: check6.dropped.clone(),
        signatures,
    };
    let err = client.unmask(&request).unwrap_err();
    assert!(
        matches!(&err, SecAggError::Inconsistent { reason, .. } if reason.contains("not on the survivor set")),
        "{err:?}"
    );
    assert!(err.to_string().contains("no unmasking share revealed"));
}

/// The server, given the study CA, refuses a site whose signature does not verify as that site's
/// fault (it drops out of the instance), instead of relaying it to abort every honest site.
#[test]
fn a_server_with_the_study_ca_refuses_a_bad_signature_on_receipt() {
    let pki = Pki::new("server check");
    let config = config(4, 3, 8);
    let auths = pki.authentications(config.participants());
    let mut server = SecAggServer::new(config.clone()).with_verifier(pki.authority());
    let (_, mut advertise) =
        SecAggClient::new_authenticated(config.clone(), SiteId(1), auths[&SiteId(1)].clone()).unwrap();
    advertise.mask_public_key[0] ^= 1;
    let err = server.receive_keys(advertise.clone()).unwrap_err();
    assert!(
        matches!(
            &err,
            SecAggError::BadSignature {
                site: SiteId(1),
                what: "round-0 keys",
                ..
            }
        ),
        "{err:?}"
    );
    advertise.signature.clear();
    let err = server.receive_keys(advertise).unwrap_err();
    assert!(
        matches!(&err, SecAggError::BadSignature { reason, .. } if reason.contains("no credential or signature"))
    );
    // The refusal left no trace: the site's genuine keys are accepted.
    let (_, genuine) = SecAggClient::new_authenticated(config, SiteId(1), auths[&SiteId(1)].clone()).unwrap();
    server.receive_keys(genuine).unwrap();
}

/// Round-0 keys for `site` signed with `issued`'s key and certificate (what a server that held that
/// key could produce).
fn signed_as(config: &RoundConfig, site: SiteId, issued: &support::Issued) -> AdvertiseKeys {
    let signer = SiteSigner::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    let any = Pki::new("unused").authority();
    SecAggClient::new_authenticated(
        config.clone(),
        site,
        Authentication {
            signer: Arc::new(signer),
            peers: any,
        },
    )
    .unwrap()
    .1
}

/// A startup kit whose key is not its certificate's (or is not PEM) is refused by name when the node
/// starts, not at the first round.
#[test]
fn a_site_key_that_is_not_its_certificates_is_refused_by_name() {
    let pki = Pki::new("kit");
    let (s1, s2) = (pki.site("S1"), pki.site("S2"));
    let err = SiteSigner::from_pem(s1.cert_pem.as_bytes(), s2.key_pem.as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains("does not belong to the certificate"),
        "{err}"
    );
    let err = SiteSigner::from_pem(b"not a certificate", s1.key_pem.as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains("site certificate is not valid PEM"),
        "{err}"
    );
    let err = fedlnm_shared::signing::StudyAuthority::from_ca_pem(b"").unwrap_err();
    assert!(err.to_string().contains("study CA"), "{err}");
}
