//! Secure aggregation as the rounds run it, over the real mutual-TLS gRPC service, with sites that
//! drive the protocol by hand so that they can drop out at chosen moments and upload *known* deltas:
//! a site that vanishes after uploading stays in the sum (its self mask is rebuilt from the others'
//! shares), a site that vanishes before uploading is left out (its pairwise masks are removed), and
//! in both cases the committed model is the FedAvg of the sum within the quantization bound; with fewer
//! sites than the Shamir threshold the round is abandoned and nothing is committed. Against a
//! malicious aggregator (the default: signed keys and survivor sets, t > 2n/3), with four training
//! sites.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::RoundStore;
use fedlnm_e2e::{RunningAggregator, secagg_client, small_model};
use fedlnm_protocol::generated::federation_client::FederationClient;
use fedlnm_protocol::generated::{
    AggregationKind, MetricsReport, SecAggRequest, SecAggStage, TrainTask, UpdateChunk, UpdateFormat,
    UpdateHeader, task,
};
use fedlnm_protocol::payload as wire;
use fedlnm_protocol::transfer::upload_checksum;
use fedlnm_shared::config::{HararySettings, RoundSettings, SecureAggregationGraph, SiteRole, ThreatModel};
use fedlnm_shared::federation::{ScoringStatistics, SiteCohort, SiteRoundMetrics};
use fedlnm_shared::secagg::{
    ConsistencyCheck, Graph, KeyDirectory, MaskedVector, Ring, SecAggClient, SecAggConfig, ShareDelivery,
    SiteId, UnmaskRequest,
};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

mod common;

use common::{STUDY, connect, next_task, scoring_statistics};

/// Training sites' names, as the hand-driven sites' tasks need them (`'static`).
const TRAINING_SITES: [&str; 12] = [
    "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11", "S12",
];

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

/// Secure FedBN rounds with hour-long deadlines: a test that finishes within its bounds proves that no
/// stage waited for a deadline.
fn hour_long(rounds: u64) -> RoundSettings {
    RoundSettings {
        rounds,
        min_sites: 3,
        secure_aggregation: true,
        fedbn: true,
        round_deadline_s: 3600,
        stage_timeout_s: 3600,
        validation_deadline_s: 3600,
        ..RoundSettings::default()
    }
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
    /// Four training sites S1–S4 and the validation site S5: against a malicious aggregator t = 3, so
    /// one may drop out.
    async fn start(settings: RoundSettings) -> Self {
        Self::start_with(settings, &TRAINING_SITES[..4], "S5").await
    }

    async fn start_with(settings: RoundSettings, train: &[&str], validator: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let study_dir = dir.path().join("study");
        let config =
            fedlnm_e2e::provision_sites(&study_dir, STUDY, settings, small_model(), train, &[validator]);
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
    ) -> tokio::task::JoinHandle<SecAggConfig> {
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

/// One site's part of a secure round, stopping where `behaviour` says; returns the round's
/// configuration as its task gave it.
async fn site_round(
    study_dir: PathBuf,
    url: String,
    site: &'static str,
    scale: f32,
    n: u64,
    behaviour: Behaviour,
) -> SecAggConfig {
    let mut client = connect(&study_dir, site, &url).await;
    let train = train_task(&mut client, site).await;
    assert_eq!(train.aggregation(), AggregationKind::Secure);
    let config: SecAggConfig = wire::decode(&train.secagg_config, "config").unwrap();
    let round = train.round;
    let (mut secagg, advertise) =
        secagg_client(&study_dir, site, config.clone(), SiteId(train.secagg_site_id));
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
    if let Graph::Harary { degree, .. } = config.graph {
        // SecAgg+: a site learns the keys of its two-hop neighbourhood at most, never the whole study.
        assert!(
            directory.sites.len() <= 2 * degree + 1,
            "{site} got {} sites' keys with degree {degree}",
            directory.sites.len()
        );
    }
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
        return config;
    }
    let masked = secagg.masked_input(&delivery, &delta(scale), n).unwrap();
    assert_eq!(masked.masked.ring(), config.quantization.ring);
    let payload = wire::encode(&masked);
    let header = UpdateHeader {
        site: site.into(),
        study: STUDY.into(),
        round,
        format: UpdateFormat::MaskedInput.into(),
        n_samples: 0,
        total_size: payload.len() as u64,
        digest: upload_checksum(&payload),
    };
    let chunks = vec![UpdateChunk {
        header: Some(header),
        data: payload,
    }];
    client.upload_update(tokio_stream::iter(chunks)).await.unwrap();
    if behaviour == Behaviour::VanishAfterUpload {
        return config;
    }
    let request = survivors(&mut client, site, round, &mut secagg).await.unwrap();
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
    config
}

/// Rounds 3 and 4 of a site that uploaded: against a malicious aggregator it asks for the survivor
/// set, signs it and gets back the unmasking request with the survivors' signatures; otherwise it asks
/// for the unmasking request.
async fn survivors(
    client: &mut FederationClient<Channel>,
    site: &str,
    round: u64,
    secagg: &mut SecAggClient,
) -> Result<UnmaskRequest, tonic::Status> {
    let reply = if secagg.is_authenticated() {
        let check: ConsistencyCheck = wire::decode(
            &exchange(client, site, round, SecAggStage::ConsistencyCheck, Vec::new()).await?,
            "consistency check",
        )
        .unwrap();
        let signature = secagg.consistency_check(&check).unwrap();
        exchange(
            client,
            site,
            round,
            SecAggStage::ConsistencySignature,
            wire::encode(&signature),
        )
        .await?
    } else {
        exchange(client, site, round, SecAggStage::UnmaskRequest, Vec::new()).await?
    };
    Ok(wire::decode(&reply, "unmask request").unwrap())
}

/// Every site of the four-training-site study reports (synthetic) metrics for the model under
/// validation; returns its digest.
async fn validate_all(study_dir: &Path, url: &str, round: u64) -> String {
    validate_sites(study_dir, url, round, &["S1", "S2", "S3", "S4", "S5"], "S5").await
}

/// Every one of `sites` reports (synthetic) metrics for the model under validation, `validator` as
/// the validation-only site; returns the model's digest.
async fn validate_sites(study_dir: &Path, url: &str, round: u64, sites: &[&str], validator: &str) -> String {
    let mut digest = String::new();
    for &site in sites {
        let mut client = connect(study_dir, site, url).await;
        let task::Kind::Validate(validate) = next_task(&mut client, site).await else {
            panic!("{site}: expected a validation task in round {round}");
        };
        assert_eq!(validate.round, round);
        let role = if site == validator {
            SiteRole::Validate
        } else {
            SiteRole::Train
        };
        // As a node scores: by the study's rule.
        let normalisation = scoring_statistics(&validate, role);
        let model = validate.model.unwrap();
        let metrics = SiteRoundMetrics {
            site: site.into(),
            role,
            n_patients: 10,
            n_positive: 5,
            lnm_rate: 0.5,
            auc: Some(0.5),
            auc_ci_lower: None,
            auc_ci_upper: None,
            auc_variance: None,
            youden_threshold: None,
            sensitivity: None,
            specificity: None,
            brier: 0.25,
            calibration_intercept: None,
            calibration_slope: None,
            calibration_slope_se: None,
            kappa_t: None,
            kappa_n: None,
            kappa_stage: None,
            kappa_t_se: None,
            kappa_n_se: None,
            kappa_stage_se: None,
            cohort: None,
            curves: None,
            normalisation: Some(normalisation),
        };
        digest.clone_from(&model.digest);
        client
            .report_metrics(MetricsReport {
                site: site.into(),
                study: STUDY.into(),
                round,
                model_digest: model.digest,
                metrics: wire::encode(&metrics),
                // These sites do not join their pool's secure sum: no pooled metrics (checked below).
                masked_statistics: Vec::new(),
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
        min_sites: 3,
        secure_aggregation: true,
        fedbn: true,
        // Short enough to test dropouts in seconds, long enough for a slow CI machine to have all
        // three sites advertise and share within one stage.
        round_deadline_s: 10,
        stage_timeout_s: 5,
        transfer_idle_s: 5,
        validation_deadline_s: 60,
        ..RoundSettings::default()
    };
    let study = SecureStudy::start(settings).await;
    let (study_dir, state_dir, url) = (&study.study_dir, &study.state_dir, &study.url);
    let run = |site, scale, n, behaviour| study.run(site, scale, n, behaviour);

    // Round 1: S3 uploads, then vanishes before the consistency check: it stays in the sum.
    let sites = [
        run("S1", 1.0, 100, Behaviour::Complete),
        run("S2", 2.0, 300, Behaviour::Complete),
        run("S3", -1.0, 600, Behaviour::VanishAfterUpload),
        run("S4", 0.5, 200, Behaviour::Complete),
    ];
    for site in sites {
        site.await.unwrap();
    }
    validate_all(study_dir, url, 1).await;
    let store = RoundStore::open(state_dir).unwrap();
    let round1 = store.load(1).unwrap();
    assert_eq!(round1.record.contributors, ["S1", "S2", "S3", "S4"]);
    let expected1 = fedavg(&small_model(), &[(1.0, 100), (2.0, 300), (-1.0, 600), (0.5, 200)]);
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
        run("S4", 0.25, 100, Behaviour::Complete),
    ];
    for site in sites {
        site.await.unwrap();
    }
    validate_all(study_dir, url, 2).await;
    let round2 = store.load(2).unwrap();
    assert_eq!(
        (round2.record.contributors.clone(), round2.record.dropped.clone()),
        (
            vec!["S1".to_owned(), "S2".to_owned(), "S4".to_owned()],
            vec!["S3".to_owned()]
        )
    );
    assert_close(
        &round2.model.weights,
        &fedavg(&round1.model.weights, &[(0.5, 200), (-0.5, 200), (0.25, 100)]),
    );

    // Round 3: only S1 turns up: below the threshold of 3 the round is abandoned, nothing committed.
    let mut s1 = connect(study_dir, "S1", url).await;
    let train = train_task(&mut s1, "S1").await;
    assert_eq!(train.round, 3);
    let config: SecAggConfig = wire::decode(&train.secagg_config, "config").unwrap();
    let (_, advertise) = secagg_client(study_dir, "S1", config, SiteId(train.secagg_site_id));
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

/// However many masked inputs the aggregator holds before summing them
/// (`rounds.max_concurrent_uploads`: one, summed as each arrives; two, summed in pairs; more than the
/// sites, summed together when the stage closes), and in either ring (`rounds.secure_aggregation_ring`:
/// the sites' tasks carry it and their uploads use it, checked in `site_round`), a secure round
/// commits the same model, to the bit, and it is the FedAvg of the deltas (these deltas quantize
/// exactly in both rings; dropouts in Z_2^32: `shared/tests/secagg_z2_32.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_round_commits_the_same_model_whatever_the_inputs_held_and_the_ring() {
    let mut models = Vec::new();
    for (held, ring) in [
        (1, Ring::Z2_64),
        (2, Ring::Z2_64),
        (8, Ring::Z2_64),
        (2, Ring::Z2_32),
    ] {
        let settings = RoundSettings {
            max_concurrent_uploads: held,
            secure_aggregation_ring: ring,
            ..hour_long(1)
        };
        let study = SecureStudy::start(settings).await;
        let sites = [
            study.run("S1", 1.0, 100, Behaviour::Complete),
            study.run("S2", 2.0, 300, Behaviour::Complete),
            study.run("S3", -1.0, 600, Behaviour::Complete),
            study.run("S4", 0.5, 200, Behaviour::Complete),
        ];
        for site in sites {
            assert_eq!(site.await.unwrap().quantization.ring, ring);
        }
        validate_all(&study.study_dir, &study.url, 1).await;
        let round = RoundStore::open(&study.state_dir).unwrap().load(1).unwrap();
        assert_eq!(
            round.record.contributors,
            ["S1", "S2", "S3", "S4"],
            "{held} held, {ring}"
        );
        assert_close(
            &round.model.weights,
            &fedavg(&small_model(), &[(1.0, 100), (2.0, 300), (-1.0, 600), (0.5, 200)]),
        );
        models.push((held, ring, round.model.digest.clone()));
        study.aggregator.shut_down().await;
    }
    assert!(models.iter().all(|(_, _, d)| *d == models[0].2), "{models:?}");
}

/// SecAgg+ (`rounds.secure_aggregation_graph = { harary = ... }`) over the real service: twelve
/// training sites, each working with four others. Every site's task names the sparse graph and its
/// key directory holds its two-hop neighbourhood only (checked in `site_round`); a site that shares
/// and vanishes before uploading is left out, one that vanishes after uploading stays in the sum, and
/// both rounds commit plain FedAvg of the contributors within the quantization bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_graph_rounds_over_mtls_commit_fedavg_with_dropouts() {
    const DEGREE: usize = 4;
    let settings = RoundSettings {
        rounds: 2,
        min_sites: 7,
        secure_aggregation: true,
        threat_model: ThreatModel::HonestButCuriousAggregator,
        secure_aggregation_graph: SecureAggregationGraph::Harary(HararySettings {
            degree: Some(DEGREE),
            dropout_fraction: 0.1,
            corrupt_fraction: 0.0,
        }),
        fedbn: true,
        round_deadline_s: 12,
        stage_timeout_s: 6,
        transfer_idle_s: 6,
        validation_deadline_s: 60,
        ..RoundSettings::default()
    };
    let study = SecureStudy::start_with(settings, &TRAINING_SITES, "S13").await;
    let (study_dir, state_dir, url) = (&study.study_dir, &study.state_dir, &study.url);
    let mut everyone = TRAINING_SITES.to_vec();
    everyone.push("S13");
    let scale = |k: usize| (k as f32 - 5.5) / 4.0;
    let count = |k: usize| 50 + 25 * k as u64;

    // Every training site's part of a round, `lost` stopping where `behaviour` says; each task must
    // name the sparse graph.
    let round = |sign: f32, lost: &str, behaviour: Behaviour| {
        let sites: Vec<_> = TRAINING_SITES
            .iter()
            .enumerate()
            .map(|(k, &site)| {
                let behaviour = if site == lost {
                    behaviour
                } else {
                    Behaviour::Complete
                };
                study.run(site, sign * scale(k), count(k), behaviour)
            })
            .collect();
        async move {
            for site in sites {
                let graph = site.await.unwrap().graph;
                assert!(
                    matches!(graph, Graph::Harary { degree: DEGREE, .. }),
                    "the task names {graph:?}"
                );
            }
        }
    };

    // Round 1: S12 shares its keys, then vanishes before uploading (1 of 12: the declared 10%).
    round(1.0, "S12", Behaviour::VanishBeforeUpload).await;
    validate_sites(study_dir, url, 1, &everyone, "S13").await;
    let store = RoundStore::open(state_dir).unwrap();
    let round1 = store.load(1).unwrap();
    assert_eq!(round1.record.dropped, ["S12"]);
    assert_eq!(round1.record.contributors.len(), 11);
    let contributors: Vec<(f32, u64)> = (0..11).map(|k| (scale(k), count(k))).collect();
    assert_close(&round1.model.weights, &fedavg(&small_model(), &contributors));

    // Round 2: S1 uploads, then vanishes: its self mask is rebuilt from its neighbours' shares alone.
    round(-1.0, "S1", Behaviour::VanishAfterUpload).await;
    validate_sites(study_dir, url, 2, &everyone, "S13").await;
    let round2 = store.load(2).unwrap();
    assert_eq!(round2.record.contributors.len(), 12);
    assert!(round2.record.contributors.iter().any(|site| site == "S1"));
    let contributors: Vec<(f32, u64)> = (0..12).map(|k| (-scale(k), count(k))).collect();
    assert_close(
        &round2.model.weights,
        &fedavg(&round1.model.weights, &contributors),
    );
    study.aggregator.shut_down().await;
}

/// A node killed mid-round and started again (it checks in afresh) has lost its round secrets: the
/// round goes on at once without it, instead of waiting out the stage and round deadlines (an hour
/// here, so a round that waited would never finish within the test's bound), the restarted node is
/// never offered the round it lost nor refused as invalid, and it trains again at the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_round_is_dropped_at_once_and_rejoins_the_next_round() {
    let study = SecureStudy::start(hour_long(2)).await;
    let (study_dir, state_dir, url) = (&study.study_dir, &study.state_dir, &study.url);
    let run = |site, scale, n, behaviour| study.run(site, scale, n, behaviour);
    let bound = std::time::Duration::from_secs(120);

    // Round 1: S2 advertises and shares its keys, then its process dies; it starts again and checks in.
    let s1 = run("S1", 1.0, 100, Behaviour::Complete);
    let s3 = run("S3", -1.0, 300, Behaviour::Complete);
    let s4 = run("S4", 0.5, 100, Behaviour::Complete);
    run("S2", 5.0, 600, Behaviour::VanishBeforeUpload).await.unwrap();
    let restarted = fedlnm_e2e::site_config(study_dir, "S2", url);
    let mut s2 = fedlnm_protocol::Client::connect(&restarted).await.unwrap();
    assert_eq!(s2.check_in().await.unwrap().role, SiteRole::Train);
    // S1, S3 and S4 finish the round without waiting for S2's upload.
    tokio::time::timeout(bound, async {
        s1.await.unwrap();
        s3.await.unwrap();
        s4.await.unwrap();
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
        (
            vec!["S1".to_owned(), "S3".to_owned(), "S4".to_owned()],
            vec!["S2".to_owned()]
        )
    );
    assert_close(
        &round1.model.weights,
        &fedavg(&small_model(), &[(1.0, 100), (-1.0, 300), (0.5, 100)]),
    );

    // Round 2: the restarted site trains again with the others.
    let sites = [
        run("S1", 0.5, 100, Behaviour::Complete),
        run("S2", 0.25, 100, Behaviour::Complete),
        run("S3", -0.5, 100, Behaviour::Complete),
        run("S4", 0.125, 100, Behaviour::Complete),
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
    assert_eq!(
        store.load(2).unwrap().record.contributors,
        ["S1", "S2", "S3", "S4"]
    );
    study.aggregator.shut_down().await;
}

/// Asserts that `result` is a refusal with `code` whose message names every one of `words`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, words: &[&str]) {
    let status = result.expect_err("a hostile message was accepted");
    assert_eq!(status.code(), code, "{status:?}");
    for word in words {
        assert!(status.message().contains(word), "{word:?} not in {status:?}");
    }
}

async fn upload_masked(
    client: &mut FederationClient<Channel>,
    site: &str,
    round: u64,
    format: UpdateFormat,
    payload: Vec<u8>,
    digest: String,
) -> Result<(), tonic::Status> {
    let header = UpdateHeader {
        site: site.into(),
        study: STUDY.into(),
        round,
        format: format.into(),
        n_samples: 0,
        total_size: payload.len() as u64,
        digest,
    };
    let chunks = vec![UpdateChunk {
        header: Some(header),
        data: payload,
    }];
    client.upload_update(tokio_stream::iter(chunks)).await.map(|_| ())
}

fn report(site: &str, round: u64, digest: &str, metrics: Vec<u8>) -> MetricsReport {
    MetricsReport {
        site: site.into(),
        study: STUDY.into(),
        round,
        model_digest: digest.into(),
        metrics,
        masked_statistics: Vec::new(),
    }
}

/// Hostile secure-aggregation messages and validation reports, at every stage of a round, over the
/// real service: each is refused with a specific status whose message names the problem, and none
/// changes the round: the honest sites then complete it and the committed model is exactly the
/// FedAvg of their deltas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_protocol_messages_and_reports_are_refused_by_name_and_change_nothing() {
    use tonic::Code;
    let study = SecureStudy::start(hour_long(1)).await;
    let (study_dir, state_dir, url) = (&study.study_dir, &study.state_dir, &study.url);
    // S2 to S4 are honest; every stage waits for S1 (hour-long deadlines), which misbehaves first.
    let honest = [
        study.run("S2", 2.0, 300, Behaviour::Complete),
        study.run("S3", -1.0, 600, Behaviour::Complete),
        study.run("S4", 0.5, 100, Behaviour::Complete),
    ];
    let mut s1 = connect(study_dir, "S1", url).await;
    let mut s5 = connect(study_dir, "S5", url).await;
    let train = train_task(&mut s1, "S1").await;
    let config: SecAggConfig = wire::decode(&train.secagg_config, "config").unwrap();
    let (mut secagg, advertise) = secagg_client(study_dir, "S1", config, SiteId(train.secagg_site_id));
    let keys = SecAggStage::AdvertiseKeys;
    // Keys that its signature does not cover (substituted on the way), and none at all.
    let mut substituted = advertise.clone();
    substituted.mask_public_key[0] ^= 1;
    refused(
        exchange(&mut s1, "S1", 1, keys, wire::encode(&substituted)).await,
        Code::InvalidArgument,
        &["signature of site 1 on its round-0 keys does not verify"],
    );
    let mut unsigned = advertise.clone();
    unsigned.signature.clear();
    refused(
        exchange(&mut s1, "S1", 1, keys, wire::encode(&unsigned)).await,
        Code::InvalidArgument,
        &["no credential or signature"],
    );

    // Key advertisement.
    refused(
        exchange(&mut s1, "S1", 1, keys, vec![1, 2, 3]).await,
        Code::InvalidArgument,
        &["key advertisement"],
    );
    let mut forged = advertise.clone();
    forged.header.site = SiteId(2);
    refused(
        exchange(&mut s1, "S1", 1, keys, wire::encode(&forged)).await,
        Code::InvalidArgument,
        &["signed as"],
    );
    let mut other_config = advertise.clone();
    other_config.header.config_hash = [7; 32];
    refused(
        exchange(&mut s1, "S1", 1, keys, wire::encode(&other_config)).await,
        Code::FailedPrecondition,
        &["configuration hash", "another start of this round"],
    );
    refused(
        exchange(&mut s1, "S1", 2, keys, wire::encode(&advertise)).await,
        Code::FailedPrecondition,
        &["round 2 is not open"],
    );
    refused(
        exchange(&mut s1, "S2", 1, keys, wire::encode(&advertise)).await,
        Code::PermissionDenied,
        &["speaks for site 'S2'"],
    );
    refused(
        exchange(&mut s5, "S5", 1, keys, wire::encode(&advertise)).await,
        Code::PermissionDenied,
        &["validation site"],
    );
    let unknown_stage = s1
        .secure_aggregation(SecAggRequest {
            site: "S1".into(),
            study: STUDY.into(),
            round: 1,
            stage: 42,
            payload: wire::encode(&advertise),
        })
        .await;
    refused(unknown_stage, Code::InvalidArgument, &["stage"]);
    // Past the transport's message limit: tonic refuses it before decoding (OutOfRange), or, when the
    // refusal reaches the client while it is still sending, the stream is reset (Internal).
    let oversized = exchange(
        &mut s1,
        "S1",
        1,
        keys,
        vec![0; fedlnm_protocol::MAX_MESSAGE_BYTES + 1],
    )
    .await;
    assert!(
        matches!(
            oversized.as_ref().map_err(tonic::Status::code),
            Err(Code::OutOfRange | Code::Internal)
        ),
        "{oversized:?}"
    );
    let directory: KeyDirectory = wire::decode(
        &exchange(&mut s1, "S1", 1, keys, wire::encode(&advertise))
            .await
            .unwrap(),
        "directory",
    )
    .unwrap();
    refused(
        exchange(&mut s1, "S1", 1, keys, wire::encode(&advertise)).await,
        Code::FailedPrecondition,
        &[],
    );

    // Encrypted shares.
    let shares = secagg.share_keys(&directory).unwrap();
    let share_stage = SecAggStage::ShareKeys;
    refused(
        exchange(&mut s1, "S1", 1, share_stage, wire::encode(&advertise)).await,
        Code::InvalidArgument,
        &["encrypted shares"],
    );
    let mut forged = shares.clone();
    forged.header.site = SiteId(3);
    refused(
        exchange(&mut s1, "S1", 1, share_stage, wire::encode(&forged)).await,
        Code::InvalidArgument,
        &["signed as"],
    );
    let delivery: ShareDelivery = wire::decode(
        &exchange(&mut s1, "S1", 1, share_stage, wire::encode(&shares))
            .await
            .unwrap(),
        "delivery",
    )
    .unwrap();

    // Masked input.
    let masked = secagg.masked_input(&delivery, &delta(1.0), 100).unwrap();
    let payload = wire::encode(&masked);
    let mut short = masked.clone();
    let MaskedVector::Z2_64(elements) = &mut short.masked else {
        panic!("a Z_2^64 instance sent {:?}", short.masked.ring());
    };
    elements.truncate(3);
    let short = wire::encode(&short);
    refused(
        upload_masked(
            &mut s1,
            "S1",
            1,
            UpdateFormat::MaskedInput,
            short.clone(),
            upload_checksum(&short),
        )
        .await,
        Code::InvalidArgument,
        &["has 3 elements"],
    );
    refused(
        upload_masked(
            &mut s1,
            "S1",
            1,
            UpdateFormat::MaskedInput,
            payload.clone(),
            upload_checksum(b"other"),
        )
        .await,
        Code::DataLoss,
        &["corrupted in transit"],
    );
    refused(
        upload_masked(
            &mut s1,
            "S1",
            1,
            UpdateFormat::SafetensorsDelta,
            payload.clone(),
            upload_checksum(&payload),
        )
        .await,
        Code::InvalidArgument,
        &["masked updates"],
    );
    upload_masked(
        &mut s1,
        "S1",
        1,
        UpdateFormat::MaskedInput,
        payload.clone(),
        upload_checksum(&payload),
    )
    .await
    .unwrap();
    refused(
        upload_masked(
            &mut s1,
            "S1",
            1,
            UpdateFormat::MaskedInput,
            payload.clone(),
            upload_checksum(&payload),
        )
        .await,
        Code::AlreadyExists,
        &["already uploaded"],
    );

    // Consistency check: the survivor set, then S1's signature of it.
    refused(
        exchange(&mut s1, "S1", 1, SecAggStage::UnmaskRequest, Vec::new()).await,
        Code::InvalidArgument,
        &["consistency check"],
    );
    let check: ConsistencyCheck = wire::decode(
        &exchange(&mut s1, "S1", 1, SecAggStage::ConsistencyCheck, Vec::new())
            .await
            .unwrap(),
        "consistency check",
    )
    .unwrap();
    let signature = secagg.consistency_check(&check).unwrap();
    let signing = SecAggStage::ConsistencySignature;
    let mut forged = signature.clone();
    forged.signature = vec![0x30, 0x06, 2, 1, 1, 2, 1, 1];
    refused(
        exchange(&mut s1, "S1", 1, signing, wire::encode(&forged)).await,
        Code::InvalidArgument,
        &["survivor set does not verify"],
    );
    let mut forged = signature.clone();
    forged.header.site = SiteId(2);
    refused(
        exchange(&mut s1, "S1", 1, signing, wire::encode(&forged)).await,
        Code::InvalidArgument,
        &["signed as"],
    );
    let request: UnmaskRequest = wire::decode(
        &exchange(&mut s1, "S1", 1, signing, wire::encode(&signature))
            .await
            .unwrap(),
        "unmask request",
    )
    .unwrap();
    assert_eq!(
        request.signatures.len(),
        4,
        "every training site signed the survivor set"
    );

    // Unmasking.
    let response = secagg.unmask(&request).unwrap();
    let unmask = SecAggStage::UnmaskResponse;
    refused(
        exchange(&mut s1, "S1", 1, unmask, vec![9; 40]).await,
        Code::InvalidArgument,
        &["unmasking shares"],
    );
    let mut forged = response.clone();
    forged.header.site = SiteId(2);
    refused(
        exchange(&mut s1, "S1", 1, unmask, wire::encode(&forged)).await,
        Code::InvalidArgument,
        &["signed as"],
    );
    exchange(&mut s1, "S1", 1, unmask, wire::encode(&response))
        .await
        .unwrap();
    for site in honest {
        site.await.unwrap();
    }

    // Validation reports.
    let task::Kind::Validate(validate) = next_task(&mut s1, "S1").await else {
        panic!("S1: expected the validation task");
    };
    let expected = scoring_statistics(&validate, SiteRole::Train);
    let expected_s5 = scoring_statistics(&validate, SiteRole::Validate);
    let digest = validate.model.unwrap().digest;
    let good = SiteRoundMetrics {
        site: "S1".into(),
        role: SiteRole::Train,
        n_patients: 10,
        n_positive: 5,
        lnm_rate: 0.5,
        auc: Some(0.5),
        auc_ci_lower: Some(0.1),
        auc_ci_upper: Some(0.9),
        auc_variance: Some(0.02),
        youden_threshold: Some(0.5),
        sensitivity: Some(0.6),
        specificity: Some(0.4),
        brier: 0.25,
        calibration_intercept: Some(-0.1),
        calibration_slope: Some(1.1),
        calibration_slope_se: Some(0.2),
        kappa_t: Some(0.1),
        kappa_n: None,
        kappa_stage: Some(-0.2),
        kappa_t_se: Some(0.1),
        kappa_n_se: None,
        kappa_stage_se: Some(0.1),
        cohort: None,
        curves: None,
        normalisation: Some(expected),
    };
    let with = |change: &dyn Fn(&mut SiteRoundMetrics)| {
        let mut metrics = good.clone();
        change(&mut metrics);
        wire::encode(&metrics)
    };
    let expected_statistics = format!("normalisation statistics \"{expected}\"");
    let wrong_statistics = [
        expected_statistics.as_str(),
        "say \"site_reestimated\"",
        "another release",
    ];
    let cases: Vec<(MetricsReport, Code, &[&str])> = vec![
        (
            report("S1", 1, &digest, vec![0xff; 17]),
            Code::InvalidArgument,
            &["malformed metrics"],
        ),
        (
            report("S1", 1, "0000", wire::encode(&good)),
            Code::InvalidArgument,
            &["not of round 1's model"],
        ),
        (
            report("S1", 5, &digest, wire::encode(&good)),
            Code::FailedPrecondition,
            &["not round 5"],
        ),
        (
            report("S2", 1, &digest, wire::encode(&good)),
            Code::PermissionDenied,
            &["speaks for site 'S2'"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.auc = Some(7.0))),
            Code::InvalidArgument,
            &["auc 7"],
        ),
        (
            report(
                "S1",
                1,
                &digest,
                with(&|m| {
                    m.curves = Some(fedlnm_shared::federation::SiteCurves {
                        calibration: vec![fedlnm_shared::federation::CalibrationGroup {
                            n: 3,
                            mean_predicted: 0.2,
                            observed_rate: 0.1,
                        }],
                        net_benefit: Vec::new(),
                    });
                }),
            ),
            Code::InvalidArgument,
            &["calibration groups hold 3 patients"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.brier = f64::NAN)),
            Code::InvalidArgument,
            &["brier NaN"],
        ),
        // Metrics scored otherwise than the study's rule gives the site (a node of another release
        // that re-estimated the statistics, or does not say) are refused: their figures would
        // measure another model.
        (
            report(
                "S1",
                1,
                &digest,
                with(&|m| m.normalisation = Some(ScoringStatistics::SiteReestimated)),
            ),
            Code::InvalidArgument,
            &wrong_statistics,
        ),
        (
            report("S1", 1, &digest, with(&|m| m.normalisation = None)),
            Code::InvalidArgument,
            &["metrics do not say"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.kappa_n = Some(-3.0))),
            Code::InvalidArgument,
            &["kappa_n -3"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.auc_variance = Some(-0.5))),
            Code::InvalidArgument,
            &["auc_variance -0.5"],
        ),
        (
            report(
                "S1",
                1,
                &digest,
                with(&|m| m.calibration_slope = Some(f64::INFINITY)),
            ),
            Code::InvalidArgument,
            &["calibration_slope inf"],
        ),
        (
            report(
                "S1",
                1,
                &digest,
                with(&|m| {
                    m.cohort = Some(SiteCohort {
                        read: 12,
                        excluded: BTreeMap::new(),
                        included: 12,
                        labelled: 12,
                        lnm: 5,
                        training: 2,
                        validation: 9,
                        age_mean: Some(50.0),
                        age_sd: None,
                        male: 3,
                        multifocal: 0,
                        tirads: vec![0, 0, 4, 4, 4],
                    });
                }),
            ),
            Code::InvalidArgument,
            &["cohort: 9 validation patients, but the report scores 10"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.kappa_t_se = Some(-1.0))),
            Code::InvalidArgument,
            &["kappa_t_se -1 is not a finite SE"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.lnm_rate = 0.9)),
            Code::InvalidArgument,
            &["lnm_rate 0.9"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.auc_ci_lower = Some(0.7))),
            Code::InvalidArgument,
            &["CI"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.n_positive = 11)),
            Code::InvalidArgument,
            &["n_positive 11 exceeds n_patients 10"],
        ),
        (
            report("S1", 1, &digest, with(&|m| m.n_patients = 1_000_000_000_000)),
            Code::InvalidArgument,
            &["exceeds"],
        ),
        (
            MetricsReport {
                masked_statistics: vec![0xff; 17],
                ..report("S1", 1, &digest, wire::encode(&good))
            },
            Code::InvalidArgument,
            &["masked input"],
        ),
    ];
    for (hostile, code, words) in cases {
        refused(s1.report_metrics(hostile).await, code, words);
    }
    // S5, the one validate-only site, is in no pool: masked statistics from it have nowhere to go.
    refused(
        s5.report_metrics(MetricsReport {
            masked_statistics: vec![0; 64],
            ..report(
                "S5",
                1,
                &digest,
                with(&|m| {
                    m.role = SiteRole::Validate;
                    m.normalisation = Some(expected_s5);
                }),
            )
        })
        .await,
        Code::InvalidArgument,
        &["in no pooled sum"],
    );
    validate_all(study_dir, url, 1).await;

    // Nothing hostile reached the committed round.
    let store = RoundStore::open(state_dir).unwrap();
    let round1 = store.load(1).unwrap();
    assert_eq!(round1.record.contributors, ["S1", "S2", "S3", "S4"]);
    assert_close(
        &round1.model.weights,
        &fedavg(&small_model(), &[(1.0, 100), (2.0, 300), (-1.0, 600), (0.5, 100)]),
    );
    let auc_s1 = round1.record.sites.iter().find(|m| m.site == "S1").unwrap().auc;
    assert_eq!(auc_s1, Some(0.5));
    study.aggregator.shut_down().await;
}
