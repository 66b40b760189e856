//! Secure aggregation as the rounds run it, over the real mutual-TLS gRPC service, with sites that
//! drive the protocol by hand so that they can drop out at chosen moments and upload *known* deltas:
//! a site that vanishes after uploading stays in the sum (its self mask is rebuilt from the others'
//! shares), a site that vanishes before uploading is left out (its pairwise masks are removed), and
//! in both cases the committed model is the FedAvg of the sum within the quantization bound; with fewer
//! sites than the Shamir threshold the round is abandoned and nothing is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::RoundStore;
use fedlnm_e2e::{RunningAggregator, provision_study, small_model};
use fedlnm_protocol::generated::federation_client::FederationClient;
use fedlnm_protocol::generated::{
    AggregationKind, MetricsReport, SecAggRequest, SecAggStage, TrainTask, UpdateChunk, UpdateFormat,
    UpdateHeader, task,
};
use fedlnm_protocol::payload as wire;
use fedlnm_shared::config::{RoundSettings, SiteRole};
use fedlnm_shared::federation::{ScoreHistogram, SiteRoundMetrics};
use fedlnm_shared::secagg::{KeyDirectory, SecAggClient, SecAggConfig, ShareDelivery, SiteId, UnmaskRequest};
use fedlnm_shared::weights::{NamedTensor, NamedTensors, sha256_hex};
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

mod common;

use common::{STUDY, connect, next_task};

/// How far a site goes in a round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Complete,
    VanishAfterUpload,
    VanishBeforeUpload,
}

fn delta(k: f32) -> NamedTensors {
    NamedTensors {
        tensors: vec![
            NamedTensor::new("head.weight", vec![2, 3], vec![k, 0.0, -k, 2.0 * k, 0.5, 1.0]).unwrap(),
            NamedTensor::new("head.bias", vec![2], vec![k, -k]).unwrap(),
            NamedTensor::new("image.bn1.gamma", vec![2], vec![k, k]).unwrap(),
        ],
    }
}

async fn train_task(client: &mut FederationClient<Channel>, site: &str) -> TrainTask {
    match next_task(client, site).await {
        task::Kind::Train(train) => train,
        other => panic!("{site}: expected a training task, got {other:?}"),
    }
}

async fn exchange(
    client: &mut FederationClient<Channel>,
    site: &str,
    round: u64,
    stage: SecAggStage,
    payload: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    client
        .secure_aggregation(SecAggRequest {
            site: site.into(),
            study: STUDY.into(),
            round,
            stage: stage.into(),
            payload,
        })
        .await
        .map(|reply| reply.into_inner().payload)
}

/// A provisioned study served on loopback, whose hand-driven sites run as tasks.
struct SecureStudy {
    _dir: tempfile::TempDir,
    study_dir: PathBuf,
    state_dir: PathBuf,
    aggregator: RunningAggregator,
    url: String,
}

impl SecureStudy {
    async fn start(settings: RoundSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let study_dir = dir.path().join("study");
        let config = provision_study(&study_dir, STUDY, settings);
        let state_dir = config.state_dir.clone();
        let aggregator = RunningAggregator::start(config, 0).await;
        let url = aggregator.url.clone();
        Self {
            _dir: dir,
            study_dir,
            state_dir,
            aggregator,
            url,
        }
    }

    /// One site's part of the current round, as a task.
    fn run(
        &self,
        site: &'static str,
        scale: f32,
        n: u64,
        behaviour: Behaviour,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(site_round(
            self.study_dir.clone(),
            self.url.clone(),
            site,
            scale,
            n,
            behaviour,
        ))
    }
}

/// One site's part of a secure round, stopping where `behaviour` says.
async fn site_round(
    study_dir: PathBuf,
    url: String,
    site: &'static str,
    scale: f32,
    n: u64,
    behaviour: Behaviour,
) {
    let mut client = connect(&study_dir, site, &url).await;
    let train = train_task(&mut client, site).await;
    assert_eq!(train.aggregation(), AggregationKind::Secure);
    let config: SecAggConfig = wire::decode(&train.secagg_config, "config").unwrap();
    let round = train.round;
    let (mut secagg, advertise) =
        SecAggClient::new(config.validate().unwrap(), SiteId(train.secagg_site_id)).unwrap();
    let directory: KeyDirectory = wire::decode(
        &exchange(
            &mut client,
            site,
            round,
            SecAggStage::AdvertiseKeys,
            wire::encode(&advertise),
        )
        .await
        .unwrap(),
        "directory",
    )
    .unwrap();
    let shares = secagg.share_keys(&directory).unwrap();
    let delivery: ShareDelivery = wire::decode(
        &exchange(
            &mut client,
            site,
            round,
            SecAggStage::ShareKeys,
            wire::encode(&shares),
        )
        .await
        .unwrap(),
        "delivery",
    )
    .unwrap();
    if behaviour == Behaviour::VanishBeforeUpload {
        return;
    }
    let masked = secagg.masked_input(&delivery, &delta(scale), n).unwrap();
    let payload = wire::encode(&masked);
    let header = UpdateHeader {
        site: site.into(),
        study: STUDY.into(),
        round,
        format: UpdateFormat::MaskedInput.into(),
        n_samples: 0,
        total_size: payload.len() as u64,
        digest: sha256_hex(&payload),
    };
    let chunks = vec![UpdateChunk {
        header: Some(header),
        data: payload,
    }];
    client.upload_update(tokio_stream::iter(chunks)).await.unwrap();
    if behaviour == Behaviour::VanishAfterUpload {
        return;
    }
    let request: UnmaskRequest = wire::decode(
        &exchange(&mut client, site, round, SecAggStage::UnmaskRequest, Vec::new())
            .await
            .unwrap(),
        "unmask request",
    )
    .unwrap();
    let response = secagg.unmask(&request).unwrap();
    exchange(
        &mut client,
        site,
        round,
        SecAggStage::UnmaskResponse,
        wire::encode(&response),
    )
    .await
    .unwrap();
}

/// Every site reports (synthetic) metrics for the model under validation; returns its digest.
async fn validate_all(study_dir: &Path, url: &str, round: u64) -> String {
    let mut digest = String::new();
    for site in ["S1", "S2", "S3", "S4"] {
        let mut client = connect(study_dir, site, url).await;
        let task::Kind::Validate(validate) = next_task(&mut client, site).await else {
            panic!("{site}: expected a validation task in round {round}");
        };
        assert_eq!(validate.round, round);
        let model = validate.model.unwrap();
        let y: Vec<bool> = (0..10).map(|i| i % 2 == 0).collect();
        let s: Vec<f64> = (0..10).map(|i| f64::from(i) / 10.0).collect();
        let metrics = SiteRoundMetrics {
            site: site.into(),
            role: if site == "S4" {
                SiteRole::Validate
            } else {
                SiteRole::Train
            },
            n_patients: 10,
            n_positive: 5,
            lnm_rate: 0.5,
            auc: Some(0.5),
            auc_ci_lower: None,
            auc_ci_upper: None,
            youden_threshold: None,
            sensitivity: None,
            specificity: None,
            brier: 0.25,
            kappa_t: None,
            kappa_n: None,
            kappa_stage: None,
            histogram: ScoreHistogram::from_scores(&y, &s).unwrap(),
        };
        digest.clone_from(&model.digest);
        client
            .report_metrics(MetricsReport {
                site: site.into(),
                study: STUDY.into(),
                round,
                model_digest: model.digest,
                metrics: wire::encode(&metrics),
            })
            .await
            .unwrap();
    }
    digest
}

/// global + Σ n_k Δ_k / Σ n_k over `sites` (FedBN: `image.bn1.gamma` stays).
fn fedavg(global: &NamedTensors, sites: &[(f32, u64)]) -> NamedTensors {
    let total: u64 = sites.iter().map(|s| s.1).sum();
    let mut next = global.clone();
    for tensor in next.tensors.iter_mut().filter(|t| !t.name.contains("bn1")) {
        for (i, w) in tensor.values.iter_mut().enumerate() {
            let sum: f64 = sites
                .iter()
                .map(|&(k, n)| n as f64 * f64::from(delta(k).get(&tensor.name).unwrap().values[i]))
                .sum();
            *w += (sum / total as f64) as f32;
        }
    }
    next
}

fn assert_close(actual: &NamedTensors, expected: &NamedTensors) {
    for e in &expected.tensors {
        let a = actual.get(&e.name).unwrap();
        for (x, y) in a.values.iter().zip(&e.values) {
            // Quantization: |U3|·2^-32 / Σ n_k per element, then f32 rounding of the sum.
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                "{}: {:?} vs {:?}",
                e.name,
                a.values,
                e.values
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_rounds_survive_dropouts_and_abort_below_the_threshold() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let settings = RoundSettings {
        rounds: 3,
        min_sites: 2,
        secure_aggregation: true,
        fedbn: true,
        // Short enough to test dropouts in seconds, long enough for a slow CI machine to have all
        // three sites advertise and share within one stage.
        round_deadline_s: 10,
        stage_timeout_s: 5,
        validation_deadline_s: 60,
        ..RoundSettings::default()
    };
    let study = SecureStudy::start(settings).await;
    let (study_dir, state_dir, url) = (&study.study_dir, &study.state_dir, &study.url);
    let run = |site, scale, n, behaviour| study.run(site, scale, n, behaviour);

    // Round 1: S3 uploads, then vanishes before unmasking: it stays in the sum.
    let sites = [
        run("S1", 1.0, 100, Behaviour::Complete),
        run("S2", 2.0, 300, Behaviour::Complete),
        run("S3", -1.0, 600, Behaviour::VanishAfterUpload),
    ];
    for site in sites {
        site.await.unwrap();
    }
    validate_all(study_dir, url, 1).await;
    let store = RoundStore::open(state_dir).unwrap();
    let round1 = store.load(1).unwrap();
    assert_eq!(round1.record.contributors, ["S1", "S2", "S3"]);
    let expected1 = fedavg(&small_model(), &[(1.0, 100), (2.0, 300), (-1.0, 600)]);
    assert_close(&round1.model.weights, &expected1);
    assert_eq!(
        round1.model.weights.get("image.bn1.gamma").unwrap().values,
        vec![1.0, 1.0]
    );

    // Round 2: S3 shares its keys, then vanishes before uploading: its masks are removed.
    let sites = [
        run("S1", 0.5, 200, Behaviour::Complete),
        run("S2", -0.5, 200, Behaviour::Complete),
        run("S3", 9.0, 600, Behaviour::VanishBeforeUpload),
    ];
    for site in sites {
        site.await.unwrap();
    }
    validate_all(study_dir, url, 2).await;
    let round2 = store.load(2).unwrap();
    assert_eq!(
        (round2.record.contributors.clone(), round2.record.dropped.clone()),
        (vec!["S1".to_owned(), "S2".to_owned()], vec!["S3".to_owned()])
    );
    assert_close(
        &round2.model.weights,
        &fedavg(&round1.model.weights, &[(0.5, 200), (-0.5, 200)]),
    );

    // Round 3: only S1 turns up: below the threshold of 2 the round is abandoned, nothing committed.
    let mut s1 = connect(study_dir, "S1", url).await;
    let train = train_task(&mut s1, "S1").await;
    assert_eq!(train.round, 3);
    let config: SecAggConfig = wire::decode(&train.secagg_config, "config").unwrap();
    let (_, advertise) = SecAggClient::new(config.validate().unwrap(), SiteId(train.secagg_site_id)).unwrap();
    let refusal = exchange(
        &mut s1,
        "S1",
        3,
        SecAggStage::AdvertiseKeys,
        wire::encode(&advertise),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            refusal.code(),
            tonic::Code::Aborted | tonic::Code::FailedPrecondition
        ),
        "{refusal:?}"
    );
    assert_eq!(store.committed_rounds().unwrap(), vec![0, 1, 2]);
    assert_eq!(study.aggregator.service.committed().0, 2);
    study.aggregator.shut_down().await;
}

/// A node killed mid-round and started again (it checks in afresh) has lost its round secrets: the
/// round goes on at once without it, instead of waiting out the stage and round deadlines (an hour
/// here, so a round that waited would never finish within the test's bound), the restarted node is
/// never offered the round it lost nor refused as invalid, and it trains again at the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_round_is_dropped_at_once_and_rejoins_the_next_round() {
    let settings = RoundSettings {
        rounds: 2,
        min_sites: 2,
        secure_aggregation: true,
        fedbn: true,
        round_deadline_s: 3600,
        stage_timeout_s: 3600,
        validation_deadline_s: 3600,
        ..RoundSettings::default()
    };
    let study = SecureStudy::start(settings).await;
    let (study_dir, state_dir, url) = (&study.study_dir, &study.state_dir, &study.url);
    let run = |site, scale, n, behaviour| study.run(site, scale, n, behaviour);
    let bound = std::time::Duration::from_secs(120);

    // Round 1: S2 advertises and shares its keys, then its process dies; it starts again and checks in.
    let s1 = run("S1", 1.0, 100, Behaviour::Complete);
    let s3 = run("S3", -1.0, 300, Behaviour::Complete);
    run("S2", 5.0, 600, Behaviour::VanishBeforeUpload).await.unwrap();
    let restarted = fedlnm_e2e::site_config(study_dir, "S2", url);
    let mut s2 = fedlnm_protocol::Client::connect(&restarted).await.unwrap();
    assert_eq!(s2.check_in().await.unwrap().role, SiteRole::Train);
    // S1 and S3 finish the round without waiting for S2's upload.
    tokio::time::timeout(bound, async {
        s1.await.unwrap();
        s3.await.unwrap();
    })
    .await
    .expect("the round waited for the restarted site");
    // The restarted node is told to wait or to validate, never to train round 1 again.
    let next = loop {
        match s2.get_task().await.unwrap() {
            fedlnm_protocol::Task::Wait { .. } => {}
            other => break other,
        }
    };
    assert!(
        matches!(&next, fedlnm_protocol::Task::Validate(v) if v.round == 1),
        "{next:?}"
    );
    tokio::time::timeout(bound, validate_all(study_dir, url, 1))
        .await
        .expect("round 1 was not validated");
    let store = RoundStore::open(state_dir).unwrap();
    let round1 = store.load(1).unwrap();
    assert_eq!(
        (round1.record.contributors.clone(), round1.record.dropped.clone()),
        (vec!["S1".to_owned(), "S3".to_owned()], vec!["S2".to_owned()])
    );
    assert_close(
        &round1.model.weights,
        &fedavg(&small_model(), &[(1.0, 100), (-1.0, 300)]),
    );

    // Round 2: the restarted site trains again with the others.
    let sites = [
        run("S1", 0.5, 100, Behaviour::Complete),
        run("S2", 0.25, 100, Behaviour::Complete),
        run("S3", -0.5, 100, Behaviour::Complete),
    ];
    tokio::time::timeout(bound, async {
        for site in sites {
            site.await.unwrap();
        }
    })
    .await
    .expect("round 2 did not complete");
    tokio::time::timeout(bound, validate_all(study_dir, url, 2))
        .await
        .expect("round 2 was not validated");
    assert_eq!(store.load(2).unwrap().record.contributors, ["S1", "S2", "S3"]);
    study.aggregator.shut_down().await;
}
