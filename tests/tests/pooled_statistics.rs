//! The pooled validation statistics as the rounds run them, over the real mutual-TLS gRPC service,
//! with hand-driven sites: the training sites' score histograms are summed by secure aggregation
//! (the aggregator learns the sum, never one site's histogram), a site that vanishes after sharing
//! its keys is left out of the sum without holding it up past the validation deadline, hostile masked
//! statistics are refused by name and change nothing, and the committed round holds the exact sum of
//! the survivors' histograms and no per-site histogram.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::{RECORD_FILE, RoundStore};
use fedlnm_e2e::{RunningAggregator, secagg_client, small_model};
use fedlnm_protocol::generated::federation_client::FederationClient;
use fedlnm_protocol::generated::{
    MetricsReport, SecAggRequest, SecAggStage, UpdateChunk, UpdateFormat, UpdateHeader, task,
};
use fedlnm_protocol::payload as wire;
use fedlnm_protocol::transfer::upload_checksum;
use fedlnm_shared::config::{RoundSettings, SiteRole};
use fedlnm_shared::federation::{
    LocalTensors, ScoreHistogram, ScoringStatistics, SiteRoundMetrics, StageConfusion,
};
use fedlnm_shared::secagg::{
    ConsistencyCheck, InputKind, KeyDirectory, MaskedInput, SecAggConfig, ShareDelivery, SiteId,
    UnmaskRequest,
};
use fedlnm_shared::weights::NamedTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

mod common;

use common::{STUDY, connect, next_task};

async fn exchange(
    client: &mut FederationClient<Channel>,
    site: &str,
    stage: SecAggStage,
    payload: Vec<u8>,
) -> Vec<u8> {
    client
        .secure_aggregation(SecAggRequest {
            site: site.into(),
            study: STUDY.into(),
            round: 1,
            stage: stage.into(),
            payload,
        })
        .await
        .unwrap()
        .into_inner()
        .payload
}

/// Round 1's plain training: a zero delta of every tensor.
async fn train(study_dir: &Path, url: &str, site: &str) {
    let mut client = connect(study_dir, site, url).await;
    let task::Kind::Train(train) = next_task(&mut client, site).await else {
        panic!("{site}: expected the training task");
    };
    assert_eq!(train.round, 1);
    let mut delta: NamedTensors = small_model();
    for tensor in &mut delta.tensors {
        tensor.values.iter_mut().for_each(|v| *v = 0.0);
    }
    let payload = delta.to_safetensors_bytes(&BTreeMap::new()).unwrap();
    let header = UpdateHeader {
        site: site.into(),
        study: STUDY.into(),
        round: 1,
        format: UpdateFormat::SafetensorsDelta.into(),
        n_samples: 50,
        total_size: payload.len() as u64,
        digest: upload_checksum(&payload),
    };
    let chunk = UpdateChunk {
        header: Some(header),
        data: payload,
    };
    client.upload_update(tokio_stream::iter([chunk])).await.unwrap();
}

/// A site's histogram: `n` patients spread over the grid, a third of them with LNM.
fn histogram(seed: usize, n: usize) -> ScoreHistogram {
    let mut histogram = ScoreHistogram::empty();
    for patient in 0..n {
        let bin = (patient * 7919 + seed * 104_729) % histogram.positive.len();
        if patient % 3 == 0 {
            histogram.positive[bin] += 1;
        } else {
            histogram.negative[bin] += 1;
        }
    }
    histogram
}

/// Stage confusion matrices that count the histogram's patients: on each scale, patient k has the
/// pathological category k mod (k of the scale) and is predicted one category up (capped).
fn confusion_of(histogram: &ScoreHistogram) -> StageConfusion {
    let n = usize::try_from(histogram.n_positive() + histogram.n_negative()).unwrap();
    let mut confusion = StageConfusion::empty();
    for (cells, k) in [
        (&mut confusion.t, 7),
        (&mut confusion.n, 3),
        (&mut confusion.stage, 5),
    ] {
        for patient in 0..n {
            let truth = patient % k;
            cells[truth * k + (truth + 1).min(k - 1)] += 1;
        }
    }
    confusion
}

/// Aggregate metrics that agree with the histogram's counts, scored as a node of this study (no
/// FedBN, the model's own statistics) scores.
fn metrics_of(site: &str, role: SiteRole, histogram: &ScoreHistogram) -> Vec<u8> {
    let (positive, negative) = (histogram.n_positive(), histogram.n_negative());
    let n = positive + negative;
    wire::encode(&SiteRoundMetrics {
        lnm_rate: if n == 0 { 0.0 } else { positive as f64 / n as f64 },
        n_patients: n,
        n_positive: positive,
        normalisation: Some(ScoringStatistics::for_site(&LocalTensors::default(), false, role)),
        ..SiteRoundMetrics::without_patients(site, role)
    })
}

fn report(site: &str, digest: &str, metrics: Vec<u8>, masked_statistics: Vec<u8>) -> MetricsReport {
    MetricsReport {
        site: site.into(),
        study: STUDY.into(),
        round: 1,
        model_digest: digest.into(),
        metrics,
        masked_statistics,
    }
}

/// One training site's validation: joins its pool's secure sum and, unless it vanishes after the
/// shares, reports its metrics with its masked histogram and reveals its unmasking shares. The first
/// site also tries two hostile masked inputs first.
async fn pool_site(
    study_dir: PathBuf,
    url: String,
    site: &'static str,
    histogram: ScoreHistogram,
    vanish: bool,
) {
    let mut client = connect(&study_dir, site, &url).await;
    let task::Kind::Validate(validate) = next_task(&mut client, site).await else {
        panic!("{site}: expected the validation task");
    };
    let digest = validate.model.unwrap().digest;
    assert!(
        !validate.statistics_config.is_empty(),
        "{site} is in the training pool"
    );
    let config: SecAggConfig = wire::decode(&validate.statistics_config, "pool").unwrap();
    assert_eq!(config.input, InputKind::Counts);
    assert_eq!(config.model_version.model_digest, digest);
    let id = SiteId(validate.statistics_site_id);
    let (mut secagg, advertise) = secagg_client(&study_dir, site, config, id);
    let directory: KeyDirectory = wire::decode(
        &exchange(
            &mut client,
            site,
            SecAggStage::AdvertiseKeys,
            wire::encode(&advertise),
        )
        .await,
        "directory",
    )
    .unwrap();
    let shares = secagg.share_keys(&directory).unwrap();
    let delivery: ShareDelivery = wire::decode(
        &exchange(&mut client, site, SecAggStage::ShareKeys, wire::encode(&shares)).await,
        "delivery",
    )
    .unwrap();
    if vanish {
        return;
    }
    let confusion = confusion_of(&histogram);
    let masked = secagg
        .masked_counts(
            &delivery,
            &[
                &histogram.positive,
                &histogram.negative,
                &confusion.t,
                &confusion.n,
                &confusion.stage,
            ],
        )
        .unwrap();
    let metrics = metrics_of(site, SiteRole::Train, &histogram);
    if site == "S1" {
        let hostile = [
            (
                MaskedInput {
                    header: masked.header.clone(),
                    masked: fedlnm_shared::secagg::MaskedVector::Z2_64(vec![0; 5]),
                },
                "masked input has 5 elements",
            ),
            (
                MaskedInput {
                    header: fedlnm_shared::secagg::SiteHeader {
                        site: SiteId(id.0 + 1),
                        ..masked.header.clone()
                    },
                    masked: masked.masked.clone(),
                },
                "signed as",
            ),
        ];
        for (input, words) in hostile {
            let status = client
                .report_metrics(report(site, &digest, metrics.clone(), wire::encode(&input)))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains(words), "{}", status.message());
        }
    }
    client
        .report_metrics(report(site, &digest, metrics, wire::encode(&masked)))
        .await
        .unwrap();
    // Against a malicious aggregator (the default): sign the survivor set, get the others' signatures.
    let check: ConsistencyCheck = wire::decode(
        &exchange(&mut client, site, SecAggStage::ConsistencyCheck, Vec::new()).await,
        "check",
    )
    .unwrap();
    let signature = secagg.consistency_check(&check).unwrap();
    let request: UnmaskRequest = wire::decode(
        &exchange(
            &mut client,
            site,
            SecAggStage::ConsistencySignature,
            wire::encode(&signature),
        )
        .await,
        "request",
    )
    .unwrap();
    assert_eq!(
        request.dropped.len(),
        1,
        "one site vanished before its upload: {request:?}"
    );
    let response = secagg.unmask(&request).unwrap();
    exchange(
        &mut client,
        site,
        SecAggStage::UnmaskResponse,
        wire::encode(&response),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_statistics_are_the_exact_secure_sum_of_the_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    // Validation ends 3 s after it starts: S3 vanishes after sharing its keys, and the pool's upload
    // stage closes without it then (every other stage closes as soon as everyone answered).
    let settings = RoundSettings {
        rounds: 1,
        min_sites: 2,
        secure_aggregation: false,
        fedbn: false,
        round_deadline_s: 3600,
        stage_timeout_s: 3600,
        validation_deadline_s: 3,
        ..RoundSettings::default()
    };
    // Four training sites: against a malicious aggregator t = 3, so one may drop out.
    let config = fedlnm_e2e::provision_four_training_sites(&study_dir, STUDY, settings);
    let state_dir = config.state_dir.clone();
    let aggregator = RunningAggregator::start(config, 0).await;
    let url = aggregator.url.clone();
    for site in ["S1", "S2", "S3", "S4"] {
        train(&study_dir, &url, site).await;
    }

    let histograms: BTreeMap<&str, ScoreHistogram> = [
        ("S1", histogram(1, 90)),
        ("S2", histogram(2, 130)),
        ("S3", histogram(3, 70)),
        ("S4", histogram(5, 60)),
    ]
    .into();
    let sites: Vec<_> = ["S1", "S2", "S3", "S4"]
        .into_iter()
        .map(|site| {
            tokio::spawn(pool_site(
                study_dir.clone(),
                url.clone(),
                site,
                histograms[site].clone(),
                site == "S3",
            ))
        })
        .collect();
    // S5, the one validate-only site, is in no pool: it reports its metrics alone.
    let mut s5 = connect(&study_dir, "S5", &url).await;
    let task::Kind::Validate(validate) = next_task(&mut s5, "S5").await else {
        panic!("S5: expected the validation task");
    };
    assert!(validate.statistics_config.is_empty());
    let s5_histogram = histogram(4, 40);
    s5.report_metrics(report(
        "S5",
        &validate.model.unwrap().digest,
        metrics_of("S5", SiteRole::Validate, &s5_histogram),
        Vec::new(),
    ))
    .await
    .unwrap();
    for site in sites {
        site.await.unwrap();
    }

    // The committed round: the exact sum of S1's, S2's and S4's histograms, and no per-site histogram.
    aggregator.service.finished().await;
    let store = RoundStore::open(&state_dir).unwrap();
    let record = store.load(1).unwrap().record;
    let reported: Vec<&str> = record.sites.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(reported, ["S1", "S2", "S4", "S5"]);
    let pool = record.pooled_train_sites.as_ref().expect("the training pool");
    assert_eq!(pool.sites, ["S1", "S2", "S4"]);
    let mut plain_sum = histograms["S1"].clone();
    plain_sum.merge(&histograms["S2"]).unwrap();
    plain_sum.merge(&histograms["S4"]).unwrap();
    assert_eq!(pool.histogram, plain_sum);
    let mut plain_confusion = confusion_of(&histograms["S1"]);
    plain_confusion.add(&confusion_of(&histograms["S2"]));
    plain_confusion.add(&confusion_of(&histograms["S4"]));
    assert_eq!(pool.stage_confusion.as_ref(), Some(&plain_confusion));
    assert_eq!(pool.n_patients, 280);
    assert_eq!(pool.auc, plain_sum.auc().unwrap().map(|estimate| estimate.auc));
    assert!(record.pooled_validation_sites.is_none());
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.round_dir(1).join(RECORD_FILE)).unwrap()).unwrap();
    for site in stored["sites"].as_array().unwrap() {
        assert!(site.get("histogram").is_none(), "{site}");
    }
    aggregator.shut_down().await;
}
