//! The aggregator's secure round over SecAgg+'s sparse graph (`rounds.secure_aggregation_graph`):
//! `SecureAggregation` driven through its whole round by real `SecAggClient`s, one per site, with
//! every message encoded as on the wire. The decoded average must be plain FedAvg's, each site must
//! receive the keys and shares of its own neighbourhood only, and a site that drops out after sharing
//! must be unmasked from its neighbours alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failed test.

#[path = "support/in_memory.rs"]
mod in_memory;
use in_memory::{open_secure, pending, ready, reply};

use std::time::{Duration, Instant};

use fedlnm_aggregator::aggregation::{Aggregation, Upload};
use fedlnm_aggregator::store::ModelBlob;
use fedlnm_protocol::payload::{decode, encode};
use fedlnm_protocol::{RoundAggregation, SecAggStage, UpdateFormat};
use fedlnm_shared::config::{
    AggregatorConfig, HararySettings, RoundSettings, SecureAggregationGraph, ThreatModel,
};
use fedlnm_shared::federation::fedavg::FedAvg;
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::secagg::{KeyDirectory, SecAggClient, ShareDelivery, UnmaskRequest};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};

const SITES: usize = 12;
const DEGREE: usize = 4;
const LEN: usize = 1000;

fn config(names: &[String]) -> AggregatorConfig {
    let rounds = RoundSettings {
        min_sites: 2,
        threat_model: ThreatModel::HonestButCuriousAggregator,
        secure_aggregation_graph: SecureAggregationGraph::Harary(HararySettings {
            degree: Some(DEGREE),
            dropout_fraction: 0.1,
            corrupt_fraction: 0.0,
        }),
        ..RoundSettings::default()
    };
    in_memory::training_sites_config("graph-study", names, rounds)
}

fn model(seed: u64) -> NamedTensors {
    let values = (0..LEN as u64)
        .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    NamedTensors {
        tensors: vec![NamedTensor::new("head.weight", vec![LEN], values).unwrap()],
    }
}

#[test]
fn a_sparse_graph_round_decodes_fedavg_from_each_site_s_neighbourhood_alone() {
    let names: Vec<String> = (1..=SITES).map(|k| format!("S{k}")).collect();
    let config = config(&names);
    let global = ModelBlob::new(
        0,
        model(0),
        ModelConfig::tiny(fedlnm_shared::model_config::Modality::Multimodal),
    )
    .unwrap();
    let mut aggregation = open_secure(&config, &global, &names);

    // Round 0: every site's configuration names the sparse graph.
    let mut clients = Vec::new();
    for site in &names {
        let Some(RoundAggregation::Secure {
            config: secagg,
            site_id,
        }) = aggregation.task_fields(site)
        else {
            panic!("{site} is not invited");
        };
        let round_config = secagg.validate().unwrap();
        assert_eq!(
            round_config.neighbours(site_id).len(),
            DEGREE,
            "{site}'s neighbours"
        );
        let (client, advertise) = SecAggClient::new(round_config, site_id).unwrap();
        aggregation
            .accept_message(site, SecAggStage::AdvertiseKeys, &encode(&advertise))
            .unwrap();
        clients.push((site.clone(), site_id, client));
    }
    pending(aggregation.advance(Instant::now()));

    // Round 1: each site's directory holds at most its two-hop neighbourhood, never all 12.
    for (site, id, client) in &mut clients {
        let directory: KeyDirectory = decode(
            &reply(&aggregation, site, SecAggStage::AdvertiseKeys),
            "key directory",
        )
        .unwrap();
        let keys = directory.sites.len();
        assert!(keys <= 2 * DEGREE + 1, "{site} got {keys} sites' keys");
        assert!(directory.sites.iter().any(|k| k.header.site == *id));
        let shares = client.share_keys(&directory).unwrap();
        assert_eq!(
            shares.encrypted_shares.len(),
            DEGREE,
            "{site} shares with its neighbours only"
        );
        aggregation
            .accept_message(site, SecAggStage::ShareKeys, &encode(&shares))
            .unwrap();
    }
    pending(aggregation.advance(Instant::now()));

    // Round 2: the last site drops out after sharing; the others upload n_k·Δ_k.
    let mut plain = FedAvg::new(&global.weights, |_| true);
    let dropped = names.len() - 1;
    for (k, (site, _, client)) in clients.iter_mut().enumerate() {
        let delivery: ShareDelivery = decode(
            &reply(&aggregation, site, SecAggStage::ShareKeys),
            "share delivery",
        )
        .unwrap();
        assert!(
            delivery.senders.len() <= DEGREE + 1,
            "{site}'s delivery names its neighbourhood only"
        );
        if k == dropped {
            continue;
        }
        let delta = model(k as u64 + 1);
        let n = 100 + k as u64;
        plain.add(site, &delta, n).unwrap();
        let masked = encode(&client.masked_input(&delivery, &delta, n).unwrap());
        aggregation
            .accept_upload(&Upload {
                site,
                format: UpdateFormat::MaskedInput,
                n_samples: n,
                payload: std::sync::Arc::new(masked),
                scan: None,
            })
            .unwrap();
    }
    // The dropped site's deadline: close the uploads without it.
    pending(aggregation.advance(Instant::now() + Duration::from_secs(3601)));

    // Round 4: the survivors unmask; the aggregate is plain FedAvg's over the eleven.
    for (site, _, client) in clients.iter_mut().take(dropped) {
        let request: UnmaskRequest = decode(
            &reply(&aggregation, site, SecAggStage::UnmaskRequest),
            "unmask request",
        )
        .unwrap();
        aggregation
            .accept_message(
                site,
                SecAggStage::UnmaskResponse,
                &encode(&client.unmask(&request).unwrap()),
            )
            .unwrap();
    }
    let aggregate = ready(aggregation.advance(Instant::now()));
    assert_eq!(aggregate.dropped, [names[dropped].clone()]);
    let expected = plain.average().unwrap();
    let (got, want) = (
        &aggregate.average_delta.tensors[0].values,
        &expected.tensors[0].values,
    );
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-6,
        "the sparse-graph average is {worst} away from FedAvg's"
    );
}
