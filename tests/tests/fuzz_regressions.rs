//! The fuzzers' findings, kept forever: every file under `fuzz/regressions/<target>/` is replayed
//! through the very harness its `cargo fuzz` target calls (`tests/src/fuzzing.rs`, included below), on
//! stable, without libFuzzer. Each must return (decoded or refused) within a minute, never panic.
//!
//! The `seed-*` files are valid inputs (the fuzzers start from them), made by [`seeds`]; each must still
//! decode. When a format changes on purpose, write them again with
//! `FEDLNM_BLESS_SEEDS=1 cargo test -p fedlnm-e2e --test fuzz_regressions`. `scripts/fuzz` copies each
//! new finding here (`crash-*`, `oom-*`, `timeout-*`).
//!
//! The wire's seeds (payloads, protobuf messages, transfers) and the protobuf schema also make the
//! wire fingerprint pinned in `protocol/wire-fingerprint` with the protocol revision: a change
//! of either without a new [`PROTOCOL_REVISION`] fails [`the_protocol_revision_pins_the_wire`].

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

#[path = "../src/fuzzing.rs"]
mod fuzzing;

use fedlnm_protocol::PROTOCOL_REVISION;
use fedlnm_protocol::generated as pb;
use fedlnm_protocol::messages::{
    CheckInReply, Claim, Encoded, MetricsReport, ModelRef, RoundAggregation, SecAggMessage, SecAggStage,
    Task, TrainTask, UpdateFormat, UpdateHeader, ValidateTask,
};
use fedlnm_protocol::payload::encode;
use fedlnm_shared::checkpoint::Checkpoint;
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::data::{read_manifest, write_manifest};
use fedlnm_shared::federation::{LocalTensors, SiteCohort, SiteRoundMetrics};
use fedlnm_shared::model_config::{Modality, ModelConfig, TrainPlan};
use fedlnm_shared::secagg::shamir::Share;
use fedlnm_shared::secagg::{
    AdvertiseKeys, EncryptedShare, KeyDirectory, MaskedInput, MaskedVector, ModelVersion, PeerKey,
    QuantizationConfig, RevealedShare, RoundHeader, SecAggConfig, ShareDelivery, ShareKeys, SiteHeader,
    SiteId, TensorSpec, UnmaskRequest, UnmaskResponse,
};
use fedlnm_shared::synth::{self, OutputFormat, SynthConfig};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use prost::Message as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How long one input may take: far more than any input needs (milliseconds), so only a hang fails.
const HANG: Duration = Duration::from_secs(60);

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

/// The kept inputs of a target, sorted by name.
fn kept_inputs(target: &str) -> Vec<PathBuf> {
    let dir = regressions().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn harness(target: &str) -> fuzzing::Harness {
    fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, harness)| *harness)
        .unwrap_or_else(|| panic!("no harness for {target}"))
}

/// Runs `harness` on `bytes` on its own thread: its outcome, or why it gave none (a panic, a hang).
fn run_bounded(harness: fuzzing::Harness, bytes: Vec<u8>) -> Result<fuzzing::Outcome, String> {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(harness(&bytes));
    });
    match outcome.recv_timeout(HANG) {
        Ok(outcome) => Ok(outcome),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("no answer within {} s", HANG.as_secs())),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("panicked (message above)".to_owned()),
    }
}

/// Replays every kept input of `target`; seeds must decode.
fn replay(target: &str) {
    let harness = harness(target);
    let files = kept_inputs(target);
    assert!(!files.is_empty(), "fuzz/regressions/{target}/ keeps no input");
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match run_bounded(harness, std::fs::read(file).unwrap()) {
            Ok(Err(refusal)) if name.starts_with("seed-") => {
                failures.push(format!("{name}: a valid seed was refused: {refusal}"));
            }
            Ok(_) => {}
            Err(problem) => failures.push(format!("{name}: {problem}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} kept inputs fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

macro_rules! replay_tests {
    ($($target:ident),+ $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )+

        #[test]
        fn every_target_keeps_inputs_and_every_folder_is_a_target() {
            let tested = [$(stringify!($target)),+];
            let targets: Vec<&str> = fuzzing::TARGETS.iter().map(|(name, _)| *name).collect();
            assert_eq!(tested.as_slice(), targets.as_slice(), "every harness is replayed");
            let mut folders: Vec<String> = std::fs::read_dir(regressions())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            folders.sort();
            let mut expected: Vec<String> = targets.iter().map(|t| (*t).to_owned()).collect();
            expected.sort();
            assert_eq!(folders, expected, "fuzz/regressions/ holds one folder per target");
            let fuzz_targets = std::fs::read_to_string(regressions().join("../Cargo.toml")).unwrap();
            for target in targets {
                assert!(
                    fuzz_targets.contains(&format!("name = \"{target}\"")),
                    "fuzz/Cargo.toml has no target {target}"
                );
            }
        }
    };
}

replay_tests!(
    payload,
    protobuf,
    transfer,
    safetensors,
    image,
    csv,
    manifest,
    toml
);

#[test]
fn seeds_are_valid_and_kept() {
    let bless = std::env::var_os("FEDLNM_BLESS_SEEDS").is_some();
    let mut missing = Vec::new();
    for (target, name, bytes) in seeds() {
        let outcome = run_bounded(harness(target), bytes.clone()).unwrap();
        assert_eq!(outcome, Ok(()), "seed {target}/{name} is refused");
        let file = regressions().join(target).join(format!("seed-{name}"));
        if bless {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &bytes).unwrap();
        } else if !file.is_file() {
            missing.push(format!("{target}/seed-{name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "seeds missing from fuzz/regressions/: {missing:?}; write them with \
         FEDLNM_BLESS_SEEDS=1 cargo test -p fedlnm-e2e --test fuzz_regressions"
    );
}

/// The targets whose seeds are the wire between a node and the aggregator.
const WIRE_TARGETS: [&str; 3] = ["payload", "protobuf", "transfer"];

/// SHA-256 of the protobuf schema (comments dropped, white space collapsed: edits of the prose do
/// not count) and of every wire seed, in order.
fn wire_fingerprint() -> String {
    use sha2::{Digest as _, Sha256};
    let schema = include_str!("../../protocol/proto/fedlnm.proto");
    let mut hasher = Sha256::new();
    for line in schema.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for word in code.split_whitespace() {
            hasher.update(word.as_bytes());
            hasher.update(b" ");
        }
    }
    for (target, name, bytes) in seeds() {
        if WIRE_TARGETS.contains(&target) {
            for part in [
                target.as_bytes(),
                name.as_bytes(),
                &(bytes.len() as u64).to_le_bytes(),
                &bytes,
            ] {
                hasher.update(part);
            }
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The wire this release speaks is the one its protocol revision was pinned with: a change of the
/// schema or of a payload's encoding must come with a new [`PROTOCOL_REVISION`], so that nodes and
/// aggregators of different releases refuse each other instead of misreading each other.
#[test]
fn the_protocol_revision_pins_the_wire() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/wire-fingerprint");
    let fingerprint = wire_fingerprint();
    let line = |revision: u32, fingerprint: &str| format!("revision {revision} sha256 {fingerprint}\n");
    let pinned = std::fs::read_to_string(&file).unwrap_or_default();
    let pinned_revision: Option<u32> = pinned
        .strip_prefix("revision ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    if pinned == line(PROTOCOL_REVISION, &fingerprint) {
        return;
    }
    let bump = "the wire changed (the protobuf schema or a payload's encoding): bump \
                fedlnm_protocol::PROTOCOL_REVISION, then pin it with FEDLNM_BLESS_SEEDS=1 cargo test \
                -p fedlnm-e2e --test fuzz_regressions";
    assert_ne!(pinned_revision, Some(PROTOCOL_REVISION), "{bump}");
    if std::env::var_os("FEDLNM_BLESS_SEEDS").is_some() {
        std::fs::write(&file, line(PROTOCOL_REVISION, &fingerprint)).unwrap();
    } else {
        panic!(
            "PROTOCOL_REVISION is {PROTOCOL_REVISION}, pinned {pinned_revision:?}: pin it with \
             FEDLNM_BLESS_SEEDS=1 cargo test -p fedlnm-e2e --test fuzz_regressions"
        );
    }
}

#[test]
fn the_manifest_harness_has_its_images() {
    let names: Vec<&str> = fuzzing::site_images().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["a.png", "b.jpg", "c.dcm"]);
}

// ---- The valid seeds. ----

type Seed = (&'static str, &'static str, Vec<u8>);

/// Valid inputs of every target, made from the current code: (target, name, bytes).
fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(payload_seeds());
    seeds.extend(protobuf_seeds());
    seeds.extend(transfer_seeds());
    seeds.extend(safetensors_seeds());
    seeds.extend(image_seeds());
    seeds.extend(table_seeds());
    seeds.push(("manifest", "synthetic-site.csv", manifest_seed()));
    seeds.extend(toml_seeds());
    seeds
}

/// `kind` followed by `bytes`: the harnesses that read a selector byte first.
fn tagged(kind: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(bytes);
    out
}

const STUDY: &str = "thyroid-lnm";

fn site_header(site: u32) -> SiteHeader {
    SiteHeader {
        study_id: STUDY.into(),
        round: 3,
        config_hash: [7; 32],
        site: SiteId(site),
    }
}

fn round_header() -> RoundHeader {
    RoundHeader {
        study_id: STUDY.into(),
        round: 3,
        config_hash: [7; 32],
    }
}

fn advertise(site: u32) -> AdvertiseKeys {
    AdvertiseKeys {
        header: site_header(site),
        mask_public_key: [9; 32],
        channel_public_keys: (1..=3)
            .filter(|&peer| peer != site)
            .map(|peer| PeerKey {
                peer: SiteId(peer),
                public_key: [peer as u8; 32],
            })
            .collect(),
        credential: (0..120).collect(),
        signature: (0..71).rev().collect(),
    }
}

fn encrypted_share(from: u32, to: u32) -> EncryptedShare {
    EncryptedShare {
        from: SiteId(from),
        to: SiteId(to),
        ciphertext: (0..96).collect(),
    }
}

fn revealed(owner: u32, x: u8) -> RevealedShare {
    RevealedShare {
        owner: SiteId(owner),
        share: Share { x, y: [x; 32] },
    }
}

fn secagg_config() -> SecAggConfig {
    SecAggConfig {
        study_id: STUDY.into(),
        round: 3,
        model_version: ModelVersion::new("ab".repeat(32), 0),
        participants: vec![SiteId(1), SiteId(2), SiteId(3)],
        threshold: 3,
        tensors: vec![
            TensorSpec {
                name: "head.weight".into(),
                shape: vec![2, 3],
            },
            TensorSpec {
                name: "head.bias".into(),
                shape: vec![2],
            },
            TensorSpec {
                name: "image.bn1.gamma".into(),
                shape: vec![2],
            },
        ],
        fedbn_exclude: vec!["*.bn*".into()],
        quantization: QuantizationConfig::default(),
        max_delta_norm: 100.0,
        input: fedlnm_shared::secagg::InputKind::WeightedDelta,
        privacy: None,
        security: fedlnm_shared::secagg::Security::MaliciousServer {
            identities: (1..=3).map(|k| (SiteId(k), format!("S{k}"))).collect(),
        },
        graph: fedlnm_shared::secagg::Graph::Complete,
    }
}

fn site_metrics() -> SiteRoundMetrics {
    SiteRoundMetrics {
        site: "S4".into(),
        role: SiteRole::Validate,
        n_patients: 5,
        n_positive: 2,
        lnm_rate: 0.4,
        auc: Some(0.8333),
        auc_ci_lower: Some(0.4),
        auc_ci_upper: Some(1.0),
        auc_variance: Some(0.04),
        youden_threshold: Some(0.6),
        sensitivity: Some(1.0),
        specificity: Some(0.6667),
        brier: 0.12,
        calibration_intercept: None,
        calibration_slope: None,
        calibration_slope_se: None,
        kappa_t: Some(0.5),
        kappa_n: None,
        kappa_stage: Some(0.25),
        kappa_t_se: Some(0.1),
        kappa_n_se: None,
        kappa_stage_se: Some(0.1),
        cohort: Some(SiteCohort {
            read: 6,
            excluded: [("image file missing or unreadable".to_owned(), 1)].into(),
            included: 5,
            labelled: 5,
            lnm: 2,
            training: 0,
            validation: 5,
            age_mean: Some(47.2),
            age_sd: Some(9.5),
            male: 1,
            multifocal: 1,
            tirads: vec![0, 1, 1, 2, 1],
        }),
        curves: Some(fedlnm_shared::federation::SiteCurves {
            calibration: vec![
                fedlnm_shared::federation::CalibrationGroup {
                    n: 2,
                    mean_predicted: 0.3,
                    observed_rate: 0.0,
                },
                fedlnm_shared::federation::CalibrationGroup {
                    n: 3,
                    mean_predicted: 0.7,
                    observed_rate: 0.6667,
                },
            ],
            net_benefit: fedlnm_shared::federation::decision_thresholds()
                .iter()
                .map(|p| 0.4 - 0.6 * p / (1.0 - p))
                .collect(),
        }),
        normalisation: Some(fedlnm_shared::federation::ScoringStatistics::SiteReestimated),
    }
}

fn payload_seeds() -> Vec<Seed> {
    vec![
        ("payload", "advertise-keys", tagged(0, &encode(&advertise(1)))),
        (
            "payload",
            "key-directory",
            tagged(
                1,
                &encode(&KeyDirectory {
                    header: round_header(),
                    sites: vec![advertise(1), advertise(2), advertise(3)],
                }),
            ),
        ),
        (
            "payload",
            "share-keys",
            tagged(
                2,
                &encode(&ShareKeys {
                    header: site_header(1),
                    encrypted_shares: vec![encrypted_share(1, 2), encrypted_share(1, 3)],
                }),
            ),
        ),
        (
            "payload",
            "share-delivery",
            tagged(
                3,
                &encode(&ShareDelivery {
                    header: round_header(),
                    to: SiteId(2),
                    senders: vec![SiteId(1), SiteId(2), SiteId(3)],
                    shares: vec![encrypted_share(1, 2), encrypted_share(3, 2)],
                }),
            ),
        ),
        (
            "payload",
            "masked-input",
            tagged(
                4,
                &encode(&MaskedInput {
                    header: site_header(2),
                    masked: MaskedVector::Z2_64(vec![u64::MAX, 0, 1 << 40, 12_345, 7, 99, 3, 1]),
                }),
            ),
        ),
        (
            "payload",
            "masked-input-z2-32",
            tagged(
                4,
                &encode(&MaskedInput {
                    header: site_header(2),
                    masked: MaskedVector::Z2_32(vec![u32::MAX, 0, 1 << 20, 12_345, 7, 99, 3, 1]),
                }),
            ),
        ),
        (
            "payload",
            "unmask-request",
            tagged(
                5,
                &encode(&UnmaskRequest {
                    header: round_header(),
                    survivors: vec![SiteId(1), SiteId(2)],
                    dropped: vec![SiteId(3)],
                    signatures: vec![
                        fedlnm_shared::secagg::SurvivorSignature {
                            site: SiteId(1),
                            signature: vec![1; 70],
                        },
                        fedlnm_shared::secagg::SurvivorSignature {
                            site: SiteId(2),
                            signature: vec![2; 71],
                        },
                    ],
                }),
            ),
        ),
        (
            "payload",
            "consistency-check",
            tagged(
                10,
                &encode(&fedlnm_shared::secagg::ConsistencyCheck {
                    header: round_header(),
                    survivors: vec![SiteId(1), SiteId(2)],
                    dropped: vec![SiteId(3)],
                }),
            ),
        ),
        (
            "payload",
            "consistency-response",
            tagged(
                11,
                &encode(&fedlnm_shared::secagg::ConsistencyResponse {
                    header: site_header(2),
                    signature: (0..72).collect(),
                }),
            ),
        ),
        (
            "payload",
            "unmask-response",
            tagged(
                6,
                &encode(&UnmaskResponse {
                    header: site_header(1),
                    self_mask_shares: vec![revealed(1, 1), revealed(2, 1)],
                    mask_key_shares: vec![revealed(3, 1)],
                }),
            ),
        ),
        ("payload", "secagg-config", tagged(7, &encode(&secagg_config()))),
        ("payload", "train-plan", tagged(8, &encode(&TrainPlan::default()))),
        ("payload", "site-metrics", tagged(9, &encode(&site_metrics()))),
        (
            "payload",
            "analysis-request",
            tagged(12, &encode(&analysis_request())),
        ),
        (
            "payload",
            "analysis-answer",
            tagged(13, &encode(&analysis_answer())),
        ),
    ]
}

/// A Newton step of the registered analysis, with its secure sum between three sites.
fn analysis_request() -> fedlnm_shared::analysis::AnalysisRequest {
    use fedlnm_shared::analysis::{AnalysisConfig, AnalysisRun, SecureStep, ring};
    let sites: Vec<String> = ["S1", "S2", "S3"].map(String::from).to_vec();
    let run = AnalysisRun::new(AnalysisConfig::registered(), sites.clone(), Vec::new(), 2).unwrap();
    let mut request = run.request();
    request.step = 1;
    let mut config = secagg_config();
    config.input = ring::INPUT;
    config.fedbn_exclude.clear();
    config.tensors = ring::tensor_specs(&request.analysis, &request.fits).unwrap();
    request.sum = Some(Box::new(SecureStep {
        ids: sites.into_iter().zip(config.participants.clone()).collect(),
        config,
        rows: 120,
    }));
    request
}

/// A site's masked answer to that step (the masked input's bytes stand in: the sum checks them).
fn analysis_answer() -> fedlnm_shared::analysis::AnalysisAnswer {
    fedlnm_shared::analysis::AnalysisAnswer::Masked {
        n: 40,
        events: 13,
        input: encode(&secagg_config()),
    }
}

fn model_ref() -> ModelRef {
    ModelRef {
        version: 2,
        digest: "ab".repeat(32),
        size_bytes: 1234,
        config_digest: "cd".repeat(32),
    }
}

fn claim() -> Claim {
    Claim::new("S1".into(), STUDY.into())
}

fn protobuf_seeds() -> Vec<Seed> {
    let train = Task::Train(TrainTask {
        round: 3,
        model: model_ref(),
        plan: TrainPlan::default(),
        local_tensors: LocalTensors::from_names(vec!["image.bn1.gamma".to_owned()]),
        aggregation: RoundAggregation::Secure {
            config: Box::new(secagg_config()),
            site_id: SiteId(1),
        },
    });
    let validate = Task::Validate(ValidateTask {
        round: 3,
        model: model_ref(),
        local_tensors: LocalTensors::default(),
        adapt_normalisation: false,
        statistics: None,
    });
    let header = UpdateHeader {
        claim: claim(),
        round: 3,
        format: UpdateFormat::MaskedInput,
        n_samples: 0,
        total_size: 3,
        digest: "ef".repeat(32),
    };
    let secagg = SecAggMessage {
        claim: claim(),
        round: 3,
        stage: SecAggStage::AdvertiseKeys,
        payload: encode(&advertise(1)),
    };
    let report = MetricsReport {
        claim: claim(),
        round: 3,
        model_digest: "ab".repeat(32),
        metrics: Encoded::new(&site_metrics(), "validation metrics"),
        masked_statistics: (0..40).collect(),
    };
    let reply = CheckInReply {
        study: STUDY.into(),
        site: "S1".into(),
        role: SiteRole::Train,
        aggregator_version: "0.1.0".into(),
    };
    let chunk = pb::ModelChunk {
        offset: 0,
        data: (0..64).collect(),
        total_size: 64,
        digest: "ab".repeat(32),
    };
    let request = pb::CheckInRequest {
        site: "S1".into(),
        study: STUDY.into(),
        node_version: "0.1.0".into(),
        protocol_revision: PROTOCOL_REVISION,
    };
    vec![
        (
            "protobuf",
            "task-train-secure",
            tagged(0, &pb::Task::from(train).encode_to_vec()),
        ),
        (
            "protobuf",
            "task-validate",
            tagged(0, &pb::Task::from(validate).encode_to_vec()),
        ),
        (
            "protobuf",
            "task-analysis",
            tagged(
                0,
                &pb::Task::from(Task::Analyse(fedlnm_protocol::AnalysisTask {
                    analysis: "clinical-factors".into(),
                    step: 0,
                    request: analysis_request(),
                }))
                .encode_to_vec(),
            ),
        ),
        (
            "protobuf",
            "analysis-report",
            tagged(
                9,
                &pb::AnalysisReport::from(fedlnm_protocol::AnalysisReport {
                    claim: claim(),
                    analysis: "clinical-factors".into(),
                    step: 0,
                    answer: Encoded::new(&analysis_answer(), "analysis answer"),
                })
                .encode_to_vec(),
            ),
        ),
        (
            "protobuf",
            "update-chunk",
            tagged(
                1,
                &pb::UpdateChunk {
                    header: Some(header.into()),
                    data: vec![1, 2, 3],
                }
                .encode_to_vec(),
            ),
        ),
        (
            "protobuf",
            "secagg-request",
            tagged(2, &pb::SecAggRequest::from(secagg).encode_to_vec()),
        ),
        (
            "protobuf",
            "metrics-report",
            tagged(3, &pb::MetricsReport::from(report).encode_to_vec()),
        ),
        (
            "protobuf",
            "check-in-reply",
            tagged(4, &pb::CheckInResponse::from(reply).encode_to_vec()),
        ),
        ("protobuf", "model-chunk", tagged(5, &chunk.encode_to_vec())),
        (
            "protobuf",
            "secagg-reply",
            tagged(
                6,
                &pb::SecAggReply {
                    payload: encode(&round_header()),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "protobuf",
            "check-in-request",
            tagged(7, &request.encode_to_vec()),
        ),
        (
            "protobuf",
            "model-request",
            tagged(
                8,
                &pb::ModelRequest {
                    site: "S1".into(),
                    study: STUDY.into(),
                    version: 2,
                }
                .encode_to_vec(),
            ),
        ),
    ]
}

/// The transfer harness's input: limit, announced size, digest flag, then (control, length, data).
fn transfer_input(limit: u32, honest: bool, chunks: &[(u8, &[u8])]) -> Vec<u8> {
    let announced: usize = chunks.iter().map(|(_, data)| data.len()).sum();
    let mut out = limit.to_le_bytes().to_vec();
    out.extend_from_slice(&(announced as u32).to_le_bytes());
    out.push(u8::from(!honest));
    for (control, data) in chunks {
        out.push(*control);
        out.extend_from_slice(&(data.len() as u16).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

fn transfer_seeds() -> Vec<Seed> {
    let block: Vec<u8> = (0..=255).collect();
    vec![
        (
            "transfer",
            "upload-three-chunks",
            transfer_input(4096, true, &[(0, &block), (0, &block[..100]), (0, b"end")]),
        ),
        (
            "transfer",
            "download-with-offsets",
            transfer_input(1 << 20, true, &[(2, &block), (2, &block)]),
        ),
        ("transfer", "empty", transfer_input(0, true, &[])),
    ]
}

fn small_weights() -> NamedTensors {
    NamedTensors {
        tensors: vec![
            NamedTensor::new("head.weight", vec![2, 3], vec![0.5, -1.0, 2.0, 0.0, 1.5, -0.25]).unwrap(),
            NamedTensor::new("head.bias", vec![2], vec![0.1, -0.1]).unwrap(),
            NamedTensor::new("image.bn1.gamma", vec![2], vec![1.0, 1.0]).unwrap(),
        ],
    }
}

fn safetensors_seeds() -> Vec<Seed> {
    let checkpoint = Checkpoint {
        config: ModelConfig::tiny(Modality::Multimodal),
        weights: small_weights(),
    }
    .to_bytes()
    .unwrap();
    let mut delta = small_weights();
    delta.tensors.retain(|t| t.name.starts_with("head."));
    let delta = delta.to_safetensors_bytes(&Default::default()).unwrap();
    vec![
        ("safetensors", "plain-delta", tagged(0, &delta)),
        ("safetensors", "tensors", tagged(1, &checkpoint)),
        ("safetensors", "checkpoint", tagged(2, &checkpoint)),
    ]
}

fn image_seeds() -> Vec<Seed> {
    let images = fuzzing::site_images();
    let image = |name: &str| {
        let (_, bytes) = images.iter().find(|(n, _)| *n == name).unwrap();
        tagged(0, bytes)
    };
    vec![
        ("image", "png", image("a.png")),
        ("image", "jpeg", image("b.jpg")),
        ("image", "dicom", image("c.dcm")),
    ]
}

fn table_seeds() -> Vec<Seed> {
    let table = "y,score,t_true,t_pred,site\n1,0.91,2,2,S1\n0,0.12,0,1,S1\n1,0.55,3,3,S2\n0,0.40,1,1,S2\n\
                 0,0.05,0,0,S3\n1,0.77,2,1,S3\n";
    let quoted = "patient_id,report_text,lnm\nP1,\"solid, hypoechoic\nnodule\",1\nP2,\"甲状腺结节\",0\n";
    vec![
        ("csv", "scores-trimmed.csv", tagged(1, table.as_bytes())),
        ("csv", "quoted-multiline.csv", tagged(0, quoted.as_bytes())),
    ]
}

/// A synthetic site's manifest whose rows name the harness's images (and one link out of the folder).
fn manifest_seed() -> Vec<u8> {
    let config = SynthConfig {
        site: "S1".into(),
        n_patients: 8,
        seed: 11,
        profile: synth::profile::SiteProfile::named("tertiary").unwrap(),
        format: OutputFormat::Png,
        image_size: 64,
    };
    let names: [&[&str]; 5] = [
        &["a.png"],
        &["b.jpg"],
        &["c.dcm"],
        &["a.png", "c.dcm"],
        &["link.png"],
    ];
    let records: Vec<_> = synth::generate_cohort(&config)
        .patients
        .into_iter()
        .zip(names.iter().cycle())
        .map(|(patient, files)| {
            let mut record = patient.record;
            record.image_files = files.iter().map(|name| (*name).to_owned()).collect();
            record
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), &records).unwrap();
    assert_eq!(read_manifest(dir.path()).unwrap().records.len(), records.len());
    std::fs::read(dir.path().join("patients.csv")).unwrap()
}

fn toml_seeds() -> Vec<Seed> {
    let config = |name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(name),
        )
        .unwrap()
    };
    vec![
        ("toml", "aggregator.toml", tagged(0, &config("aggregator.toml"))),
        ("toml", "node.toml", tagged(1, &config("node.toml"))),
        ("toml", "model-tiny.toml", tagged(2, &config("model-tiny.toml"))),
        (
            "toml",
            "model-resnet18.toml",
            tagged(2, &config("model-resnet18.toml")),
        ),
    ]
}
