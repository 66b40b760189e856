//! The study lock is never held for the slow end of a round: while an 11M-parameter secure round is
//! being unmasked, applied, serialized and hashed, a `GetTask` long poll and a `/metrics` scrape are
//! answered. The order is observed, not timed: the aggregation step is held at its start by a job
//! observer until the test has had both answers, and only then let go.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::study::JobKind;
use fedlnm_e2e::{RunningAggregator, provision_study_with, site_config};
use fedlnm_protocol::{Client, RoundAggregation, SecAggStage, Task, UpdateFormat, payload};
use fedlnm_shared::config::RoundSettings;
use fedlnm_shared::secagg::{ConsistencyCheck, KeyDirectory, ShareDelivery, UnmaskRequest};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

#[allow(dead_code)] // The hand-driven generated-client helpers are for the other round tests.
mod common;

use common::scrape;

const PARAMETERS: usize = 11_000_000;

fn model(value: f32) -> NamedTensors {
    NamedTensors {
        tensors: vec![
            NamedTensor::new("image.stem.weight", vec![PARAMETERS], vec![value; PARAMETERS]).unwrap(),
            NamedTensor::new("head.bias", vec![2], vec![value, -value]).unwrap(),
        ],
    }
}

/// One training site's secure round with the typed client: keys, shares, a masked delta of 0.001
/// everywhere, unmasking.
async fn secure_site(study_dir: PathBuf, url: String, site: &'static str) {
    let mut client = Client::connect(&site_config(&study_dir, site, &url))
        .await
        .unwrap();
    let train = loop {
        match client.get_task().await.unwrap() {
            Task::Train(train) => break train,
            Task::Wait { .. } => {}
            other => panic!("{site}: expected a training task, got {other:?}"),
        }
    };
    let RoundAggregation::Secure { config, site_id } = train.aggregation else {
        panic!("{site}: the round is not secure");
    };
    let round = train.round;
    let (mut secagg, advertise) = fedlnm_e2e::secagg_client(&study_dir, site, *config, site_id);
    let reply = client
        .secure_aggregation(round, SecAggStage::AdvertiseKeys, payload::encode(&advertise))
        .await
        .unwrap();
    let directory: KeyDirectory = payload::decode(&reply, "key directory").unwrap();
    let shares = secagg.share_keys(&directory).unwrap();
    let reply = client
        .secure_aggregation(round, SecAggStage::ShareKeys, payload::encode(&shares))
        .await
        .unwrap();
    let delivery: ShareDelivery = payload::decode(&reply, "share delivery").unwrap();
    let masked = secagg.masked_input(&delivery, &model(0.001), 100).unwrap();
    let bytes = payload::encode(&masked);
    client
        .upload_update(round, UpdateFormat::MaskedInput, 0, &bytes)
        .await
        .unwrap();
    // Against a malicious aggregator (the default): sign the survivor set first.
    let reply = client
        .secure_aggregation(round, SecAggStage::ConsistencyCheck, Vec::new())
        .await
        .unwrap();
    let check: ConsistencyCheck = payload::decode(&reply, "consistency check").unwrap();
    let signature = secagg.consistency_check(&check).unwrap();
    let reply = client
        .secure_aggregation(
            round,
            SecAggStage::ConsistencySignature,
            payload::encode(&signature),
        )
        .await
        .unwrap();
    let request: UnmaskRequest = payload::decode(&reply, "unmask request").unwrap();
    let response = secagg.unmask(&request).unwrap();
    client
        .secure_aggregation(round, SecAggStage::UnmaskResponse, payload::encode(&response))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_metrics_are_answered_while_a_large_round_is_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let settings = RoundSettings {
        rounds: 1,
        min_sites: 2,
        long_poll_s: 1,
        ..RoundSettings::default()
    };
    let mut config = provision_study_with(&study_dir, common::STUDY, settings, model(0.5));
    config.metrics_listen = Some("127.0.0.1:0".to_owned());
    let aggregator = RunningAggregator::start(config, 0).await;
    let metrics_port = aggregator.metrics_port().await;

    // The aggregation step reports that it started, then waits to be let go.
    let (started, aggregation_started) = mpsc::channel::<JobKind>();
    let (release, released) = mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    aggregator.service.observe_jobs(Arc::new(move |kind| {
        if matches!(kind, JobKind::Aggregate { .. }) {
            started.send(kind).unwrap();
            released.lock().unwrap().recv().unwrap();
        }
    }));

    let sites: Vec<_> = ["S1", "S2", "S3"]
        .into_iter()
        .map(|site| tokio::spawn(secure_site(study_dir.clone(), aggregator.url.clone(), site)))
        .collect();
    let kind = tokio::task::spawn_blocking(move || aggregation_started.recv().unwrap())
        .await
        .unwrap();
    assert_eq!(kind, JobKind::Aggregate { round: 1 });

    // The aggregation of round 1 is in flight (and held): the service still answers.
    let mut validator = Client::connect(&site_config(&study_dir, "S4", &aggregator.url))
        .await
        .unwrap();
    // A bound, not a timing claim: were the step holding the lock, this call would never return.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), validator.get_task())
        .await
        .expect("GetTask was not answered while the round was being aggregated");
    match answer.unwrap() {
        Task::Wait { reason, .. } => assert!(reason.contains("round 1 is being aggregated"), "{reason}"),
        other => panic!("expected to be told to wait while round 1 is aggregated, got {other:?}"),
    }
    let metrics = scrape(metrics_port).await;
    assert!(metrics.contains("fedlnm_round 1"), "{metrics}");
    assert!(metrics.contains("fedlnm_rounds_committed_total 0"), "{metrics}");

    // Let it go: the new model is offered for validation, the sum of three deltas of 0.001.
    release.send(()).unwrap();
    for site in sites {
        site.await.unwrap();
    }
    let validate = loop {
        match validator.get_task().await.unwrap() {
            Task::Validate(validate) => break validate,
            Task::Wait { .. } => {}
            other => panic!("expected the validation of round 1, got {other:?}"),
        }
    };
    assert_eq!(validate.round, 1);
    let bytes = validator.download_model(&validate.model).await.unwrap();
    let checkpoint = fedlnm_shared::checkpoint::Checkpoint::from_bytes(&bytes, Path::new("round 1")).unwrap();
    let stem = &checkpoint.weights.get("image.stem.weight").unwrap().values;
    assert_eq!(stem.len(), PARAMETERS);
    assert!(
        stem.iter().all(|w| (w - 0.501).abs() < 1e-4),
        "FedAvg of 0.001 deltas"
    );
    aggregator.shut_down().await;
}
