//! SecAgg+ (Bell et al. 2020) end to end, in process: secure aggregation over a random k-regular
//! Harary graph. The sum equals plain FedAvg at 30 and 100 sites, masks cancel between neighbours
//! only, dropouts at every stage still give the exact sum, a neighbourhood below the threshold
//! aborts (server) or is refused (client), a site reveals shares of its neighbours only and never both
//! of one site, the degenerate graph is Bonawitz's, and against a malicious server the
//! per-neighbourhood consistency rule holds. Every message is relayed as JSON bytes; each site gets
//! the key directory of its two-hop neighbourhood, as the aggregator relays it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

mod support;
use support::relay;
use support::round::{Dropouts, Inputs, Round, exact_fixed_point_sum, run_with_responses as run};

use std::collections::{BTreeMap, BTreeSet};

use fedlnm_shared::secagg::{
    ConsistencyCheck, ConsistencyResponse, Graph, RoundConfig, RoundStage, SecAggConfig, SecAggError,
    Security, SiteId, SurvivorSignature, UnmaskRequest, UnmaskResponse,
};
use fedlnm_shared::weights::NamedTensors;

const LEN: usize = 5;

fn harary(degree: usize, delta: f64, gamma: f64) -> Graph {
    Graph::Harary {
        degree,
        dropout_fraction: delta,
        corrupt_fraction: gamma,
    }
}

fn raw_config(n: u32, threshold: usize, round: u64, graph: Graph, malicious: bool) -> SecAggConfig {
    let participants: Vec<SiteId> = (1..=n).map(|i| SiteId(7 * i)).collect();
    SecAggConfig {
        security: if malicious {
            support::malicious(&participants)
        } else {
            Security::CuriousServer
        },
        graph,
        ..support::weighted_delta_config(participants, threshold, round, LEN)
    }
}

fn config(n: u32, threshold: usize, graph: Graph, malicious: bool) -> RoundConfig {
    raw_config(n, threshold, 1, graph, malicious).validate().unwrap()
}

/// [`support::round::dyadic_inputs`] with counts up to 1,000.
fn dyadic_inputs(config: &RoundConfig, seed: u64) -> Inputs {
    support::round::dyadic_inputs(config, seed, 1000)
}

/// Every revealed share is of a member of the responder's closed neighbourhood, and no site has
/// shares of both of its secrets revealed.
fn assert_reveals_are_local_and_exclusive(config: &RoundConfig, responses: &[UnmaskResponse]) {
    let mut self_masks = BTreeSet::new();
    let mut mask_keys = BTreeSet::new();
    for response in responses {
        let site = response.header.site;
        for share in &response.self_mask_shares {
            assert!(
                config.in_closed_neighbourhood(site, share.owner),
                "{site} revealed for {}",
                share.owner
            );
            self_masks.insert(share.owner);
        }
        for share in &response.mask_key_shares {
            assert!(
                config.in_closed_neighbourhood(site, share.owner),
                "{site} revealed for {}",
                share.owner
            );
            mask_keys.insert(share.owner);
        }
    }
    assert!(
        self_masks.is_disjoint(&mask_keys),
        "{:?}",
        self_masks.intersection(&mask_keys)
    );
}

fn sites(ids: &[u32]) -> Vec<SiteId> {
    ids.iter().map(|&i| SiteId(7 * i)).collect()
}

// ---------------------------------------------------------------- correctness

#[test]
fn the_sum_equals_plain_fedavg_at_30_and_100_sites() {
    for (n, degree, threshold, delta, gamma, malicious) in [
        (30, 8, 5, 0.1, 0.1, false),
        (30, 8, 7, 0.05, 0.0, true),
        (100, 14, 8, 0.05, 0.05, false),
    ] {
        let config = config(n, threshold, harary(degree, delta, gamma), malicious);
        assert!(!config.is_complete_graph());
        let inputs = dyadic_inputs(&config, u64::from(n));
        let (aggregate, responses) = run(&config, &inputs, &Dropouts::default()).unwrap();
        assert_eq!(
            aggregate.fixed_point_sum,
            exact_fixed_point_sum(&config, &inputs, config.participants()),
            "n = {n}"
        );
        // FedAvg within the quantization bound (exact here) plus the final f32 rounding.
        let total: u64 = inputs.values().map(|(_, n)| n).sum();
        assert_eq!(aggregate.total_samples, total);
        for (i, got) in aggregate
            .fedavg_delta
            .get("head.weight")
            .unwrap()
            .values
            .iter()
            .enumerate()
        {
            let want: f64 = inputs
                .values()
                .map(|(d, n)| *n as f64 * f64::from(d.get("head.weight").unwrap().values[i]))
                .sum::<f64>()
                / total as f64;
            let bound = f64::from(n) * 2f64.powi(-32) / total as f64 + want.abs() * 2f64.powi(-24);
            assert!((f64::from(*got) - want).abs() <= bound, "{got} vs {want}");
        }
        assert_reveals_are_local_and_exclusive(&config, &responses);
    }
}

#[test]
fn pairwise_masks_are_between_neighbours_only_and_cancel() {
    // All-zero inputs with weight 1: after removing the self masks (the server's work), what is left
    // of Σ y_u is the sum of the pairwise masks, which must cancel exactly.
    let config = config(30, 5, harary(8, 0.1, 0.1), false);
    let zeros: Inputs = config
        .participants()
        .iter()
        .map(|&s| {
            (
                s,
                (
                    NamedTensors::from_vectors([("head.weight", vec![0.0f32; LEN])]),
                    1,
                ),
            )
        })
        .collect();
    let (aggregate, _) = run(&config, &zeros, &Dropouts::default()).unwrap();
    let mut expected = vec![0i64; LEN + 1];
    expected[LEN] = 30;
    assert_eq!(aggregate.fixed_point_sum, expected);
    // A site's masked upload is not its input: the pairwise and self masks hide it.
    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let first = &deliveries[0];
    assert_eq!(
        first.senders.len(),
        config.neighbours(first.to).len() + 1,
        "U2 ∩ N[v]"
    );
    let upload = round
        .clients
        .get_mut(&first.to)
        .unwrap()
        .masked_input(first, &zeros[&first.to].0, 1)
        .unwrap();
    assert!((0..LEN).all(|i| upload.masked.get(i).is_some_and(|y| y != 0)));
}

#[test]
fn dropouts_at_every_stage_still_give_the_exact_sum() {
    let config = config(30, 5, harary(8, 0.1, 0.1), false);
    let inputs = dyadic_inputs(&config, 11);
    for drops in [
        Dropouts {
            before_shares: sites(&[3]),
            ..Dropouts::default()
        },
        Dropouts {
            before_upload: sites(&[4, 19]),
            ..Dropouts::default()
        },
        Dropouts {
            before_unmask: sites(&[5]),
            ..Dropouts::default()
        },
        Dropouts {
            before_shares: sites(&[1]),
            before_upload: sites(&[2]),
            before_unmask: sites(&[3]),
        },
    ] {
        let (aggregate, responses) = run(&config, &inputs, &drops).unwrap();
        // Sites that vanished after their upload stay in the sum.
        let survivors: Vec<SiteId> = config
            .participants()
            .iter()
            .copied()
            .filter(|s| !drops.before_shares.contains(s) && !drops.before_upload.contains(s))
            .collect();
        assert_eq!(aggregate.survivors, survivors);
        assert_eq!(aggregate.dropped, drops.before_upload);
        assert_eq!(
            aggregate.fixed_point_sum,
            exact_fixed_point_sum(&config, &inputs, &survivors)
        );
        assert_reveals_are_local_and_exclusive(&config, &responses);
        for response in &responses {
            for share in &response.mask_key_shares {
                assert!(drops.before_upload.contains(&share.owner));
            }
        }
    }
}

#[test]
fn more_dropouts_than_declared_abort() {
    // δ = 0.1 of 30: the fourth dropout aborts, wherever it is.
    let config = config(30, 5, harary(8, 0.1, 0.1), false);
    assert_eq!(config.min_survivors(), 27);
    let inputs = dyadic_inputs(&config, 12);
    let drops = Dropouts {
        before_upload: sites(&[1, 10, 20, 30]),
        ..Dropouts::default()
    };
    assert!(matches!(
        run(&config, &inputs, &drops),
        Err(SecAggError::TooFewSurvivors {
            stage: RoundStage::MaskedInputCollection,
            survivors: 26,
            threshold: 27,
            ..
        })
    ));
}

#[test]
fn a_neighbourhood_below_the_threshold_aborts_the_instance() {
    // 200 sites, 10 % dropouts: the recommended degree leaves fewer than ⌊δn⌋ dropouts in one
    // neighbourhood, so dropping most of one site's neighbours stays within δ but leaves it short.
    let n = 200;
    let parameters = fedlnm_shared::secagg::recommend_harary(n, 0.1, 0.0, false).unwrap();
    let (k, t) = (parameters.degree, parameters.threshold);
    let config = config(n as u32, t, harary(k, 0.1, 0.0), false);
    let victim = config.participants()[17];
    let lost: Vec<SiteId> = config.neighbours(victim)[..k - t + 2].to_vec();
    assert!(
        lost.len() <= n / 10,
        "within the declared dropouts: {} of {k}",
        lost.len()
    );
    let inputs = dyadic_inputs(&config, 13);
    let drops = Dropouts {
        before_upload: lost.clone(),
        ..Dropouts::default()
    };
    let error = run(&config, &inputs, &drops).unwrap_err();
    let SecAggError::NeighbourhoodTooSmall {
        stage,
        site,
        survivors,
        threshold,
        ..
    } = error
    else {
        panic!("{error:?}")
    };
    assert_eq!((stage, threshold), (RoundStage::MaskedInputCollection, t));
    assert!(survivors < t);
    let left: Vec<SiteId> = config
        .participants()
        .iter()
        .copied()
        .filter(|s| !lost.contains(s))
        .collect();
    assert_eq!(
        config.count_in_closed_neighbourhood(site, &left),
        survivors,
        "{site} named"
    );
}

#[test]
fn a_client_refuses_to_unmask_when_its_neighbourhood_is_below_the_threshold() {
    let config = config(30, 5, harary(8, 0.1, 0.1), false);
    let inputs = dyadic_inputs(&config, 14);
    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let check = round.upload(&deliveries, &inputs, &[]).unwrap();
    // A server that skips its own check: it declares 5 of u's 8 neighbours dropped after upload,
    // which leaves 4 of the 9 sites of N[u].
    let u = config.participants()[0];
    let gone: Vec<SiteId> = config.neighbours(u)[..5].to_vec();
    let request = UnmaskRequest {
        header: relay(&round.server.close_consistency().unwrap()).header,
        survivors: check
            .survivors
            .iter()
            .copied()
            .filter(|s| !gone.contains(s))
            .collect(),
        dropped: gone.clone(),
        signatures: Vec::new(),
    };
    let client = round.clients.get_mut(&u).unwrap();
    assert_eq!(
        client.unmask(&request),
        Err(SecAggError::NeighbourhoodTooSmall {
            round: 1,
            stage: RoundStage::Unmasking,
            site: u,
            survivors: 4,
            threshold: 5
        })
    );
}

#[test]
fn no_site_reveals_both_shares_of_a_neighbour() {
    let config = config(30, 5, harary(8, 0.1, 0.1), false);
    let inputs = dyadic_inputs(&config, 15);
    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let v = config.participants()[3];
    let check = round.upload(&deliveries, &inputs, &[v]).unwrap();
    let request: UnmaskRequest = relay(&round.server.close_consistency().unwrap());
    let u = config.neighbours(v)[0];
    let client = round.clients.get_mut(&u).unwrap();
    let response = client.unmask(&request).unwrap();
    assert_eq!(
        response
            .mask_key_shares
            .iter()
            .map(|s| s.owner)
            .collect::<Vec<_>>(),
        [v]
    );
    // Asked again with v among the survivors: the self-mask share of v would complete both.
    let mut again = request.clone();
    again.survivors = check.survivors.clone();
    again.survivors.push(v);
    again.survivors.sort_unstable();
    again.dropped.clear();
    assert_eq!(
        client.unmask(&again),
        Err(SecAggError::RefuseBothShares {
            site: u,
            peer: v,
            round: 1
        })
    );
}

// ---------------------------------------------------------------- the graph

#[test]
fn the_graph_is_regular_symmetric_deterministic_and_new_for_each_instance() {
    let graph = harary(14, 0.05, 0.05);
    let a = config(100, 8, graph, false);
    let b = config(100, 8, graph, false);
    let next = raw_config(100, 8, 2, graph, false).validate().unwrap();
    for &u in a.participants() {
        assert_eq!(a.neighbours(u).len(), 14);
        assert_eq!(
            a.neighbours(u),
            b.neighbours(u),
            "deterministic from the configuration"
        );
        for &v in a.neighbours(u) {
            assert!(a.neighbours(v).contains(&u));
        }
    }
    let differing = a
        .participants()
        .iter()
        .filter(|&&u| a.neighbours(u) != next.neighbours(u))
        .count();
    assert!(
        differing > 90,
        "{differing} of 100 neighbourhoods changed with the round"
    );
}

#[test]
fn a_degenerate_harary_graph_is_bonawitz() {
    // n ≤ k + 1: every site is every other's neighbour, and the protocol is the complete graph's.
    let complete = config(9, 7, Graph::Complete, true);
    let degenerate = config(9, 7, harary(8, 0.0, 0.0), true);
    assert!(degenerate.is_complete_graph());
    for &u in complete.participants() {
        assert_eq!(degenerate.neighbours(u), complete.neighbours(u));
        assert_eq!(complete.neighbours(u).len(), 8);
    }
    let inputs = dyadic_inputs(&complete, 16);
    let (a, _) = run(&complete, &inputs, &Dropouts::default()).unwrap();
    let (b, _) = run(&degenerate, &inputs, &Dropouts::default()).unwrap();
    assert_eq!(a.fixed_point_sum, b.fixed_point_sum);
    assert_eq!(
        a.fixed_point_sum,
        exact_fixed_point_sum(&complete, &inputs, complete.participants())
    );
    // The graph is part of the configuration hash all the same.
    assert_ne!(complete.config_hash(), degenerate.config_hash());
}

#[test]
fn invalid_graph_configurations_name_the_field() {
    let field = |n: u32, t: usize, graph: Graph, malicious: bool| match raw_config(n, t, 1, graph, malicious)
        .validate()
    {
        Err(SecAggError::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    let cases = [
        (30, 5, harary(7, 0.1, 0.1), false, "graph.degree", "odd"),
        (30, 1, harary(0, 0.0, 0.0), false, "graph.degree", "below 2"),
        (30, 4, harary(8, 0.0, 0.0), false, "threshold", "(k+1)/2 < t"),
        (30, 10, harary(8, 0.0, 0.0), false, "threshold", "t ≤ k + 1"),
        (30, 6, harary(8, 0.0, 0.0), true, "threshold", "2(k+1)/3 < t"),
        (
            30,
            5,
            harary(8, 1.5, 0.1),
            false,
            "graph.dropout_fraction",
            "δ ≥ 1",
        ),
        (
            30,
            5,
            harary(8, 0.1, -1.0),
            false,
            "graph.corrupt_fraction",
            "γ < 0",
        ),
        (100, 3, harary(4, 0.2, 0.2), false, "graph.degree", "disconnects"),
        (
            30,
            7,
            harary(8, 0.1, 0.1),
            true,
            "threshold",
            "dropouts leave fewer than t",
        ),
    ];
    for (n, t, graph, malicious, expected, why) in cases {
        assert_eq!(field(n, t, graph, malicious), expected, "{why}");
    }
    raw_config(30, 7, 1, harary(8, 0.05, 0.0), true)
        .validate()
        .unwrap();
}

// ---------------------------------------------------------------- malicious server

/// Round 3 by hand: the server shows `set_of(site)` to each survivor; every site signs what it is
/// shown. Returns each site's request (its set with the signatures on that same set) and response.
fn split_view(
    round: &mut Round,
    check: &ConsistencyCheck,
    set_of: impl Fn(SiteId) -> Vec<SiteId>,
) -> BTreeMap<SiteId, Result<UnmaskResponse, SecAggError>> {
    let u2: Vec<SiteId> = round.config.participants().to_vec();
    let mut signed: BTreeMap<Vec<SiteId>, Vec<(SiteId, ConsistencyResponse)>> = BTreeMap::new();
    for &site in &check.survivors {
        let set = set_of(site);
        let shown = ConsistencyCheck {
            header: check.header.clone(),
            survivors: set.clone(),
            dropped: u2.iter().copied().filter(|s| !set.contains(s)).collect(),
        };
        let response = round
            .clients
            .get_mut(&site)
            .unwrap()
            .consistency_check(&shown)
            .unwrap();
        signed.entry(set).or_default().push((site, response));
    }
    let mut outcomes = BTreeMap::new();
    for (set, signatures) in &signed {
        let request = UnmaskRequest {
            header: check.header.clone(),
            survivors: set.clone(),
            dropped: u2.iter().copied().filter(|s| !set.contains(s)).collect(),
            signatures: signatures
                .iter()
                .map(|(site, r)| SurvivorSignature {
                    site: *site,
                    signature: r.signature.clone(),
                })
                .collect(),
        };
        for (site, _) in signatures {
            let outcome = round.clients.get_mut(site).unwrap().unmask(&request);
            outcomes.insert(*site, outcome);
        }
    }
    outcomes
}

#[test]
fn against_a_malicious_server_two_survivor_sets_never_both_unlock_one_site() {
    // n = 30, k = 8, t = 7 (> 2(k+1)/3 = 6). The server tells part of v's closed neighbourhood that v
    // survived and the rest that it dropped, and everyone outside N[v] that it survived.
    let config = config(30, 7, harary(8, 0.05, 0.0), true);
    let inputs = dyadic_inputs(&config, 17);
    let v = config.participants()[5];
    let neighbourhood = config.neighbours(v).to_vec();
    for told_dropped in [2, 5, 7, 8] {
        let (mut round, directory) = Round::start(&config);
        let deliveries = round.share(&directory, &[]).unwrap();
        let check = round.upload(&deliveries, &inputs, &[]).unwrap();
        let all = check.survivors.clone();
        let without_v: Vec<SiteId> = all.iter().copied().filter(|&s| s != v).collect();
        let b_group: Vec<SiteId> = neighbourhood[..told_dropped].to_vec();
        let outcomes = split_view(&mut round, &check, |site| {
            if b_group.contains(&site) {
                without_v.clone()
            } else {
                all.clone()
            }
        });
        let (mut self_mask, mut mask_key) = (0, 0);
        for outcome in outcomes.values() {
            match outcome {
                Ok(response) => {
                    self_mask += response.self_mask_shares.iter().filter(|s| s.owner == v).count();
                    mask_key += response.mask_key_shares.iter().filter(|s| s.owner == v).count();
                }
                Err(error) => assert!(matches!(error, SecAggError::Inconsistent { .. }), "{error:?}"),
            }
        }
        assert!(
            self_mask < 7 || mask_key < 7,
            "{told_dropped} told v dropped: {self_mask} self-mask and {mask_key} mask-key shares of v"
        );
        assert!(
            outcomes.values().any(Result::is_err),
            "{told_dropped}: some site must see the split"
        );
    }
}

#[test]
fn against_a_malicious_server_an_honest_run_completes_with_dropouts() {
    let config = config(30, 7, harary(8, 0.05, 0.0), true);
    let inputs = dyadic_inputs(&config, 18);
    let drops = Dropouts {
        before_upload: sites(&[9]),
        ..Dropouts::default()
    };
    let (aggregate, responses) = run(&config, &inputs, &drops).unwrap();
    let survivors: Vec<SiteId> = config
        .participants()
        .iter()
        .copied()
        .filter(|&s| s != SiteId(63))
        .collect();
    assert_eq!(
        aggregate.fixed_point_sum,
        exact_fixed_point_sum(&config, &inputs, &survivors)
    );
    assert_reveals_are_local_and_exclusive(&config, &responses);
}
