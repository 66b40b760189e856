//! Federated rounds end to end with sites that upload *known* deltas over the real mutual-TLS gRPC
//! service (no training, so the FedAvg arithmetic can be checked exactly): the committed model equals
//! w + Σ n_k Δ_k / Σ n_k; every site's metrics are in the committed round; bad uploads (oversized,
//! corrupted, malformed, from a validation site, impersonating) are refused and change nothing; the
//! aggregator killed after round 2 resumes at round 3 from the same model digest, and an uncommitted
//! round is forgotten.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::{MODEL_FILE, RECORD_FILE, RoundStore};
use fedlnm_e2e::{RunningAggregator, browser, provision_study, small_model};
use fedlnm_protocol::generated::federation_client::FederationClient;
use fedlnm_protocol::generated::{
    AggregationKind, MetricsReport, ModelRequest, UpdateChunk, UpdateFormat, UpdateHeader, task,
};
use fedlnm_protocol::payload;
use fedlnm_protocol::transfer::upload_checksum;
use fedlnm_shared::config::{LearningRateSchedule, RoundSettings, SiteRole};
use fedlnm_shared::federation::{RoundRecord, ScoringStatistics, SiteRoundMetrics};
use fedlnm_shared::model_config::TrainPlan;
use fedlnm_shared::weights::{NamedTensor, NamedTensors, sha256_hex};
use std::collections::BTreeMap;
use std::path::Path;
use tonic::transport::Channel;

mod common;

use common::{STUDY, connect, http_get, next_task, scoring_statistics, scrape};

async fn download(client: &mut FederationClient<Channel>, site: &str, version: u64) -> Vec<u8> {
    let mut stream = client
        .download_model(ModelRequest {
            site: site.into(),
            study: STUDY.into(),
            version,
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    bytes
}

/// The delta a site uploads: head.* scaled by `k` (the FedBN tensor is left out: FedBN is on).
fn delta(k: f32) -> NamedTensors {
    NamedTensors {
        tensors: vec![
            NamedTensor::new("head.weight", vec![2, 3], vec![k, 0.0, -k, 2.0 * k, 0.5, 1.0]).unwrap(),
            NamedTensor::new("head.bias", vec![2], vec![k, -k]).unwrap(),
        ],
    }
}

async fn upload(
    client: &mut FederationClient<Channel>,
    site: &str,
    round: u64,
    payload: Vec<u8>,
    n_samples: u64,
    tamper: impl FnOnce(&mut UpdateHeader),
) -> Result<(), tonic::Status> {
    let mut header = UpdateHeader {
        site: site.into(),
        study: STUDY.into(),
        round,
        format: UpdateFormat::SafetensorsDelta.into(),
        n_samples,
        total_size: payload.len() as u64,
        digest: upload_checksum(&payload),
    };
    tamper(&mut header);
    let chunks: Vec<UpdateChunk> = payload
        .chunks(7)
        .enumerate()
        .map(|(i, data)| UpdateChunk {
            header: (i == 0).then(|| header.clone()),
            data: data.to_vec(),
        })
        .collect();
    client.upload_update(tokio_stream::iter(chunks)).await.map(|_| ())
}

fn metrics(site: &str, k: u64, normalisation: ScoringStatistics) -> Vec<u8> {
    let metrics = SiteRoundMetrics {
        site: site.into(),
        role: SiteRole::Train,
        n_patients: 20,
        n_positive: 7,
        lnm_rate: 0.35,
        auc: Some(0.6 + k as f64 / 100.0),
        auc_ci_lower: Some(0.4),
        auc_ci_upper: Some(0.8),
        auc_variance: Some(0.01),
        youden_threshold: Some(0.5),
        sensitivity: Some(0.5),
        specificity: Some(0.5),
        brier: 0.2,
        calibration_intercept: Some(0.1),
        calibration_slope: Some(0.9),
        calibration_slope_se: Some(0.2),
        kappa_t: Some(0.3),
        kappa_n: Some(0.2),
        kappa_stage: Some(0.1),
        kappa_t_se: Some(0.1),
        kappa_n_se: None,
        kappa_stage_se: Some(0.1),
        cohort: None,
        curves: None,
        normalisation: Some(normalisation),
    };
    payload::encode(&metrics)
}

/// Runs one round with known deltas from all three training sites and metrics from all four sites;
/// returns the model digest of the round.
async fn run_round(study_dir: &Path, url: &str, round: u64) -> String {
    run_round_with_plans(study_dir, url, round).await.0
}

/// [`run_round`], also returning the training plan each training site was sent.
async fn run_round_with_plans(study_dir: &Path, url: &str, round: u64) -> (String, Vec<TrainPlan>) {
    let mut plans = Vec::new();
    let weights = [(1.0_f32, 100_u64), (2.0, 300), (-1.0, 600)];
    for (k, site) in ["S1", "S2", "S3"].iter().enumerate() {
        let mut client = connect(study_dir, site, url).await;
        let task::Kind::Train(train) = next_task(&mut client, site).await else {
            panic!("{site}: expected a training task in round {round}");
        };
        assert_eq!(train.round, round);
        assert_eq!(train.aggregation(), AggregationKind::Plain);
        assert_eq!(train.local_tensors, vec!["image.bn1.gamma".to_owned()]);
        plans.push(payload::decode(&train.plan, "training plan").unwrap());
        let model = train.model.unwrap();
        let bytes = download(&mut client, site, model.version).await;
        assert_eq!(
            sha256_hex(&bytes),
            model.digest,
            "{site}: downloaded model digest"
        );
        let (scale, n) = weights[k];
        let payload = delta(scale).to_safetensors_bytes(&BTreeMap::new()).unwrap();
        upload(&mut client, site, round, payload, n, |_| {})
            .await
            .unwrap();
    }
    let mut digest = String::new();
    for (k, site) in ["S1", "S2", "S3", "S4"].iter().enumerate() {
        let mut client = connect(study_dir, site, url).await;
        let task::Kind::Validate(validate) = next_task(&mut client, site).await else {
            panic!("{site}: expected a validation task in round {round}");
        };
        // As a node scores: by the study's rule (FedBN here: the training sites' own layers).
        let role = if *site == "S4" {
            SiteRole::Validate
        } else {
            SiteRole::Train
        };
        let normalisation = scoring_statistics(&validate, role);
        let model = validate.model.unwrap();
        digest.clone_from(&model.digest);
        client
            .report_metrics(MetricsReport {
                site: (*site).into(),
                study: STUDY.into(),
                round,
                model_digest: model.digest,
                metrics: metrics(site, k as u64, normalisation),
                masked_statistics: Vec::new(),
            })
            .await
            .unwrap();
    }
    (digest, plans)
}

fn expected_after(rounds: u32) -> NamedTensors {
    expected_after_at(rounds, 1.0)
}

/// The model after `rounds` rounds whose new model is w + η·Δ̄ (η = 1: FedAvg).
fn expected_after_at(rounds: u32, server_learning_rate: f32) -> NamedTensors {
    // Σ n_k Δ_k / Σ n_k with n = 100, 300, 600 and scales 1, 2, -1: (100 + 600 - 600) / 1000 = 0.1.
    let mean_k = 0.1_f32;
    let mut model = small_model();
    for _ in 0..rounds {
        let step = delta(mean_k);
        for t in &mut model.tensors {
            if let Some(d) = step.get(&t.name) {
                for (w, dv) in t.values.iter_mut().zip(&d.values) {
                    *w += server_learning_rate * dv;
                }
            }
        }
    }
    model
}

fn assert_close(actual: &NamedTensors, expected: &NamedTensors) {
    for e in &expected.tensors {
        let a = actual.get(&e.name).unwrap();
        assert_eq!(a.shape, e.shape, "{}", e.name);
        for (x, y) in a.values.iter().zip(&e.values) {
            assert!(
                (x - y).abs() < 1e-5,
                "{}: {:?} vs {:?}",
                e.name,
                a.values,
                e.values
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_fedavg_rounds_commit_resume_after_a_kill_and_refuse_bad_updates() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let settings = RoundSettings {
        rounds: 4,
        min_sites: 3,
        secure_aggregation: false,
        fedbn: true,
        ..RoundSettings::default()
    };
    let mut config = provision_study(&study_dir, STUDY, settings);
    // Port 0: the endpoint binds a free port itself (a port chosen beforehand may be taken meanwhile).
    config.metrics_listen = Some("127.0.0.1:0".to_owned());
    let state_dir = config.state_dir.clone();
    let aggregator = RunningAggregator::start(config.clone(), 0).await;
    let metrics_port = aggregator.metrics_port().await;
    let url = aggregator.url.clone();

    // Refused uploads in round 1, before any legitimate one: each leaves the round untouched.
    let good = delta(1.0).to_safetensors_bytes(&BTreeMap::new()).unwrap();
    let mut s1 = connect(&study_dir, "S1", &url).await;
    let refusal = upload(&mut s1, "S1", 1, good.clone(), 100, |h| h.total_size = 1 << 40)
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{refusal:?}");
    let refusal = upload(&mut s1, "S1", 1, good.clone(), 100, |h| {
        h.digest = format!("xxh3-128:{}", "0".repeat(32));
    })
    .await
    .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::DataLoss, "{refusal:?}");
    // A node of the protocol version before XXH3-128 checksums (a bare SHA-256) is told to update.
    let refusal = upload(&mut s1, "S1", 1, good.clone(), 100, |h| {
        h.digest = sha256_hex(&good)
    })
    .await
    .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");
    assert!(refusal.message().contains("update it"), "{}", refusal.message());
    let refusal = upload(&mut s1, "S1", 1, b"not a safetensors file".to_vec(), 100, |_| {})
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");
    assert!(
        refusal.message().contains("update from site S1"),
        "{}",
        refusal.message()
    );
    let refusal = upload(&mut s1, "S1", 2, good.clone(), 100, |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        refusal.code(),
        tonic::Code::FailedPrecondition,
        "wrong round: {refusal:?}"
    );
    let mut s4 = connect(&study_dir, "S4", &url).await;
    let refusal = upload(&mut s4, "S4", 1, good.clone(), 100, |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        refusal.code(),
        tonic::Code::PermissionDenied,
        "validation site: {refusal:?}"
    );
    let refusal = upload(&mut s1, "S2", 1, good.clone(), 100, |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        refusal.code(),
        tonic::Code::PermissionDenied,
        "impersonation: {refusal:?}"
    );
    let mut nan = delta(1.0);
    nan.tensors[1].values[0] = f32::NAN;
    let refusal = upload(
        &mut s1,
        "S1",
        1,
        nan.to_safetensors_bytes(&BTreeMap::new()).unwrap(),
        100,
        |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(
        refusal.code(),
        tonic::Code::InvalidArgument,
        "NaN delta: {refusal:?}"
    );
    assert_eq!(aggregator.service.committed().0, 0, "refusals changed the state");

    // Rounds 1 and 2: FedAvg of the known deltas, committed with every site's metrics.
    let digest1 = run_round(&study_dir, &url, 1).await;
    let digest2 = run_round(&study_dir, &url, 2).await;
    assert_ne!(digest1, digest2);
    let store = RoundStore::open(&state_dir).unwrap();
    assert_eq!(store.committed_rounds().unwrap(), vec![0, 1, 2]);
    for round in 1..=2_u32 {
        let committed = store.load(u64::from(round)).unwrap();
        assert_close(&committed.model.weights, &expected_after(round));
        // FedBN: the normalisation tensor never moves.
        assert_eq!(
            committed.model.weights.get("image.bn1.gamma").unwrap().values,
            vec![1.0, 1.0]
        );
        let record: RoundRecord = serde_json::from_str(
            &std::fs::read_to_string(store.round_dir(u64::from(round)).join(RECORD_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(record.contributors, ["S1", "S2", "S3"]);
        assert_eq!(record.total_samples, 1000);
        let sites: Vec<&str> = record.sites.iter().map(|s| s.site.as_str()).collect();
        assert_eq!(sites, ["S1", "S2", "S3", "S4"]);
        assert_eq!(record.sites[3].role, SiteRole::Validate);
        assert_eq!(record.sites[0].auc, Some(0.6));
        // The sites report without joining their pool's secure sum (S1–S3), and S4 alone is no
        // pool: nothing is pooled, never from the reports in the clear.
        assert!(record.pooled_train_sites.is_none());
        assert!(record.pooled_validation_sites.is_none());
        assert!(store.round_dir(u64::from(round)).join(MODEL_FILE).exists());
    }

    // Prometheus: rounds, bytes and refusals are counted.
    let metrics = scrape(metrics_port).await;
    for needle in [
        "fedlnm_rounds_committed_total 2",
        "fedlnm_round 3",
        "fedlnm_contributing_sites 3",
        "fedlnm_received_bytes_total{kind=\"update\"}",
        "fedlnm_refused_requests_total{reason=\"oversized-update\"} 1",
        "fedlnm_site_last_seen_timestamp_seconds{site=\"S4\"}",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle}:\n{metrics}");
    }

    // The live status page beside /metrics: where the study is, every site's last request, and the
    // report of the committed rounds, as a browser builds it.
    let status = http_get(metrics_port, "/status").await;
    assert!(status.contains("content-type: text/html"), "{status}");
    let dom = tokio::task::spawn_blocking(move || {
        browser::dump_dom(&format!("http://127.0.0.1:{metrics_port}/status"))
    })
    .await
    .unwrap();
    assert!(dom.contains("round 3 of 4: training"), "{dom}");
    assert!(dom.contains("round 2 committed"));
    for site in ["S1", "S2", "S3", "S4"] {
        assert!(
            dom.contains(&format!("<td>{site}</td>")),
            "the status page lacks site {site}"
        );
    }
    assert_eq!(browser::count(&dom, " s ago</td>"), 4, "every site was seen");
    // The report of round 2: every site's AUC is in the forest plot; nothing is pooled.
    assert_eq!(browser::count(&dom, "<g class=\"row\""), 4);
    assert!(dom.contains("<section id=\"heterogeneity\">"));

    // Round 3 starts: S1 uploads, then the aggregator is killed before the round completes.
    let mut s1 = connect(&study_dir, "S1", &url).await;
    let task::Kind::Train(train) = next_task(&mut s1, "S1").await else {
        panic!("round 3 task")
    };
    assert_eq!((train.round, train.model.unwrap().digest), (3, digest2.clone()));
    upload(&mut s1, "S1", 3, good.clone(), 100, |_| {}).await.unwrap();
    let port = aggregator.port;
    aggregator.kill().await;

    // Restarted on the same state folder and port: round 3 again, from round 2's model; S1's upload
    // of the killed round is gone, so S1 trains round 3 again; a node that reconnects just rejoins.
    let aggregator = RunningAggregator::start(config, port).await;
    let metrics_port = aggregator.metrics_port().await;
    assert_eq!(aggregator.service.committed(), (2, digest2.clone()));
    let mut s1 = connect(&study_dir, "S1", &aggregator.url).await;
    let task::Kind::Train(train) = next_task(&mut s1, "S1").await else {
        panic!("round 3 after restart")
    };
    assert_eq!((train.round, train.model.unwrap().digest), (3, digest2));
    // The restarted aggregator's gauges tell the study's state, read from the state folder (its
    // /metrics is bound before the gRPC service that just answered).
    let metrics = scrape(metrics_port).await;
    for needle in [
        "fedlnm_last_committed_round 2",
        "fedlnm_study_finished 0",
        "fedlnm_sites{role=\"train\"} 3",
        "fedlnm_sites{role=\"validate\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics after a restart lacks {needle}:\n{metrics}"
        );
    }
    let digest3 = run_round(&study_dir, &aggregator.url, 3).await;
    let committed = RoundStore::open(&state_dir).unwrap().load(3).unwrap();
    assert_eq!(committed.model.digest, digest3);
    assert_close(&committed.model.weights, &expected_after(3));
    aggregator.shut_down().await;
}

/// However many updates the aggregator may hold before summing them (`rounds.max_concurrent_uploads`:
/// one, summed as each arrives; two, summed in pairs; more than the sites, summed in one pass into the
/// average), a plain round commits the same model, to the bit, and it is the FedAvg of the deltas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_round_commits_the_same_model_whatever_the_updates_held_at_once() {
    let mut digests = Vec::new();
    for held in [1, 2, 8] {
        let dir = tempfile::tempdir().unwrap();
        let study_dir = dir.path().join("study");
        let settings = RoundSettings {
            rounds: 1,
            min_sites: 3,
            secure_aggregation: false,
            fedbn: true,
            max_concurrent_uploads: held,
            ..RoundSettings::default()
        };
        let config = provision_study(&study_dir, STUDY, settings);
        let state_dir = config.state_dir.clone();
        let aggregator = RunningAggregator::start(config, 0).await;
        let digest = run_round(&study_dir, &aggregator.url, 1).await;
        let committed = RoundStore::open(&state_dir).unwrap().load(1).unwrap();
        assert_eq!(
            committed.model.digest, digest,
            "{held} held: the validated model is committed"
        );
        assert_close(&committed.model.weights, &expected_after(1));
        digests.push(digest);
    }
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
}

/// A study with a server learning rate and one learning-rate decay across its rounds: each training
/// site is sent its round's stretch of the decay, and the committed model is w + η·Δ̄ each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rounds_follow_the_learning_rate_schedule_and_the_server_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let settings = RoundSettings {
        rounds: 2,
        min_sites: 3,
        secure_aggregation: false,
        fedbn: true,
        learning_rate_schedule: LearningRateSchedule::AcrossRounds,
        server_learning_rate: 2.5,
        ..RoundSettings::default()
    };
    let config = provision_study(&study_dir, STUDY, settings);
    let state_dir = config.state_dir.clone();
    let aggregator = RunningAggregator::start(config.clone(), 0).await;
    let mut starts = Vec::new();
    for round in 1..=2 {
        let (digest, plans) = run_round_with_plans(&study_dir, &aggregator.url, round).await;
        assert!(
            plans.iter().all(|p| *p == config.plan_for_round(round)),
            "round {round}"
        );
        starts.push(plans[0].learning_rate);
        let committed = RoundStore::open(&state_dir).unwrap().load(round).unwrap();
        assert_eq!(committed.model.digest, digest);
        assert_close(&committed.model.weights, &expected_after_at(round as u32, 2.5));
    }
    // Round 1 starts at the configured peak, round 2 where round 1's decay ended.
    let peak = config.train.learning_rate;
    assert_eq!(starts[0], peak);
    let round1 = config.plan_for_round(1);
    assert!(
        (starts[1] - peak * round1.min_lr_fraction).abs() < 1e-12,
        "{starts:?}"
    );
    assert!(starts[1] < peak);
}
