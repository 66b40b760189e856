//! Load: many sites against one aggregator, over the real wire. `fedlnm-aggregator serve` runs as its
//! own OS process (as in production) on a provisioned study; this process simulates the sites, each
//! with its own mutual-TLS connection and certificate, doing what a node does on the wire: long-poll
//! its task, download the global model, run the secure-aggregation key exchange, upload its masked
//! update (or its plain safetensors delta), answer the unmasking request, and report (empty)
//! validation metrics. Local training is not simulated: every site uploads the same fixed delta.
//!
//! Reported per case: the wall time of a round (first training task handed out to last validation
//! report answered, the report that completes a round being answered once it is committed), the
//! aggregator's CPU seconds per round, its peak resident memory (`VmHWM`) and that peak against one
//! update's size, and the same at few sites: the baseline measured in the same run, so that the table
//! shows whether memory grows with the number of sites (it must not: at most
//! `rounds.max_concurrent_uploads` updates are in memory at once, received or held until summed).
//!
//! `cargo bench -p fedlnm-aggregator --bench load` (11M parameters, 10 and 50 sites);
//! `FEDLNM_LOAD_PARAMS=1000000 FEDLNM_LOAD_SITES=4,8` for a quick run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // A benchmark: a panic is a failure.

use fedlnm_aggregator::provision::{self, ProvisionOptions};
use fedlnm_aggregator::store::ModelBlob;
use fedlnm_protocol::payload;
use fedlnm_protocol::{Client, RoundAggregation, SecAggStage, Task, UpdateFormat};
use fedlnm_shared::config::{AggregatorConfig, NodeConfig, SiteRole, ThreatModel, write_toml};
use fedlnm_shared::federation::{ScoringStatistics, SiteRoundMetrics};
use fedlnm_shared::host::resident_memory;
use fedlnm_shared::model_config::{Modality, ModelConfig};
use fedlnm_shared::secagg::{KeyDirectory, SecAggClient, ShareDelivery, UnmaskRequest};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const TENSORS: usize = 11;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Secure,
}

struct Case {
    mode: Mode,
    sites: usize,
    rounds: u64,
}

struct Outcome {
    round_seconds: Vec<f64>,
    cpu_seconds: f64,
    peak_rss: u64,
    update_bytes: usize,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name).map_or_else(
        |_| default.to_vec(),
        |v| v.split(',').map(|s| s.trim().parse().unwrap()).collect(),
    )
}

fn model(params: usize, scale: f32) -> NamedTensors {
    let per = params / TENSORS;
    NamedTensors {
        tensors: (0..TENSORS)
            .map(|t| {
                let values = (0..per)
                    .map(|i| scale * ((i * 7 + t * 13) % 1000) as f32 / 1000.0)
                    .collect();
                NamedTensor::new(format!("layer{t}.weight"), vec![per], values).unwrap()
            })
            .collect(),
    }
}

/// User + system CPU seconds of a process.
fn cpu_of(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    (utime + stime) / ticks
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// Times of one round: first training task handed out, last validation report answered.
type Rounds = Arc<Mutex<BTreeMap<u64, (Instant, Instant)>>>;

fn mark(rounds: &Rounds, round: u64, start: bool) {
    let now = Instant::now();
    let mut rounds = rounds.lock().unwrap();
    let entry = rounds.entry(round).or_insert((now, now));
    if start {
        entry.0 = entry.0.min(now);
    } else {
        entry.1 = entry.1.max(now);
    }
}

/// One simulated site, until the study is finished.
async fn site(
    config: NodeConfig,
    delta: Arc<NamedTensors>,
    plain_payload: Arc<Vec<u8>>,
    masking: Arc<tokio::sync::Semaphore>,
    rounds: Rounds,
) {
    let mut client = Client::connect(&config).await.unwrap();
    client.check_in().await.unwrap();
    loop {
        match client.get_task().await.unwrap() {
            Task::Wait { retry_after, .. } => tokio::time::sleep(retry_after).await,
            Task::Finished { .. } => return,
            // The study's analyses after the last round: a bench site has no patients.
            Task::Analyse(task) => {
                let refusal = fedlnm_shared::analysis::AnalysisAnswer::Refused {
                    reason: "a load-bench site has no patients".into(),
                };
                client
                    .report_analysis(&task.analysis, task.step, &refusal)
                    .await
                    .unwrap();
            }
            Task::Validate(validate) => {
                client
                    .report_metrics(
                        validate.round,
                        &validate.model.digest,
                        &SiteRoundMetrics {
                            normalisation: Some(ScoringStatistics::for_site(
                                &validate.local_tensors,
                                validate.adapt_normalisation,
                                SiteRole::Train,
                            )),
                            ..SiteRoundMetrics::without_patients(&config.site, SiteRole::Train)
                        },
                        Vec::new(),
                    )
                    .await
                    .unwrap();
                mark(&rounds, validate.round, false);
            }
            Task::Train(train) => {
                mark(&rounds, train.round, true);
                let round = train.round;
                let model = client.download_model(&train.model).await.unwrap();
                drop(model);
                match train.aggregation {
                    RoundAggregation::Plain => {
                        let _turn = masking.acquire().await.unwrap();
                        client
                            .upload_update(round, UpdateFormat::SafetensorsDelta, 100, &plain_payload)
                            .await
                            .unwrap();
                    }
                    RoundAggregation::Secure {
                        config: secagg_config,
                        site_id,
                    } => {
                        let round_config = secagg_config.as_ref().clone().validate().unwrap();
                        let (mut secagg, advertise) = SecAggClient::new(round_config, site_id).unwrap();
                        let reply = client
                            .secure_aggregation(
                                round,
                                SecAggStage::AdvertiseKeys,
                                payload::encode(&advertise),
                            )
                            .await
                            .unwrap();
                        let directory: KeyDirectory = payload::decode(&reply, "directory").unwrap();
                        let shares = secagg.share_keys(&directory).unwrap();
                        let reply = client
                            .secure_aggregation(round, SecAggStage::ShareKeys, payload::encode(&shares))
                            .await
                            .unwrap();
                        let delivery: ShareDelivery = payload::decode(&reply, "delivery").unwrap();
                        // Masking is CPU-bound and each masked update is 8 bytes per parameter: a few
                        // sites at a time, each holding its update until the aggregator has taken it.
                        let turn = masking.clone().acquire_owned().await.unwrap();
                        let delta = delta.clone();
                        let (masked, secagg) = tokio::task::spawn_blocking(move || {
                            let masked = secagg.masked_input(&delivery, &delta, 100).unwrap();
                            (payload::encode(&masked), secagg)
                        })
                        .await
                        .unwrap();
                        let mut secagg = secagg;
                        client
                            .upload_update(round, UpdateFormat::MaskedInput, 0, &masked)
                            .await
                            .unwrap();
                        drop(masked);
                        drop(turn);
                        let reply = client
                            .secure_aggregation(round, SecAggStage::UnmaskRequest, Vec::new())
                            .await
                            .unwrap();
                        let request: UnmaskRequest = payload::decode(&reply, "unmask request").unwrap();
                        let response = secagg.unmask(&request).unwrap();
                        client
                            .secure_aggregation(
                                round,
                                SecAggStage::UnmaskResponse,
                                payload::encode(&response),
                            )
                            .await
                            .unwrap();
                    }
                }
            }
        }
    }
}

fn run_case(case: &Case, params: usize, ticks: f64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let names: Vec<String> = (1..=case.sites).map(|k| format!("S{k:02}")).collect();
    provision::provision(&ProvisionOptions {
        study: "load".into(),
        train_sites: names.clone(),
        validate_sites: vec![],
        aggregator_hosts: vec!["localhost".into()],
        port,
        valid_days: 1,
        out: study.clone(),
    })
    .unwrap();
    let aggregator_toml = study.join(provision::AGGREGATOR_DIR).join("aggregator.toml");
    let mut config = AggregatorConfig::load(&aggregator_toml).unwrap();
    let initial = study.join(provision::AGGREGATOR_DIR).join("initial.safetensors");
    let blob = ModelBlob::new(0, model(params, 0.0), ModelConfig::tiny(Modality::Multimodal)).unwrap();
    std::fs::write(&initial, &blob.bytes).unwrap();
    drop(blob);
    config.initial_model = Some(initial);
    config.listen = format!("127.0.0.1:{port}");
    config.metrics_listen = None;
    config.rounds.rounds = case.rounds;
    config.rounds.secure_aggregation = case.mode == Mode::Secure;
    // The simulated sites do not sign their keys (a node signs them with its study key): the load is
    // measured for the honest-but-curious protocol, without the signature checks.
    config.rounds.threat_model = ThreatModel::HonestButCuriousAggregator;
    config.rounds.round_deadline_s = 3600;
    config.rounds.stage_timeout_s = 3600;
    config.rounds.validation_deadline_s = 3600;
    write_toml(&aggregator_toml, &config).unwrap();

    let mut server = Command::new(env!("CARGO_BIN_EXE_fedlnm-aggregator"))
        .args(["serve", "--config"])
        .arg(&aggregator_toml)
        .env("FEDLNM_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.starts_with("listening on") {
            break;
        }
    }
    let pid = server.id();
    let cpu_before = cpu_of(pid, ticks);

    let delta = Arc::new(model(params, 1e-3));
    let plain_payload = Arc::new(delta.to_safetensors_bytes(&BTreeMap::new()).unwrap());
    let update_bytes = match case.mode {
        Mode::Plain => plain_payload.len(),
        Mode::Secure => 8 * params,
    };
    let rounds: Rounds = Arc::new(Mutex::new(BTreeMap::new()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let masking = Arc::new(tokio::sync::Semaphore::new(6));
        let tasks: Vec<_> = names
            .iter()
            .map(|name| {
                let node =
                    NodeConfig::load(&study.join(provision::SITES_DIR).join(name).join("node.toml")).unwrap();
                tokio::spawn(site(
                    node,
                    delta.clone(),
                    plain_payload.clone(),
                    masking.clone(),
                    rounds.clone(),
                ))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let cpu_seconds = cpu_of(pid, ticks) - cpu_before;
    let peak_rss = resident_memory(Some(pid)).unwrap().peak;
    server.kill().unwrap();
    server.wait().unwrap();
    let round_seconds = rounds
        .lock()
        .unwrap()
        .values()
        .map(|(start, end)| end.duration_since(*start).as_secs_f64())
        .collect();
    #[allow(clippy::cast_precision_loss)]
    Outcome {
        round_seconds,
        cpu_seconds: cpu_seconds / case.rounds as f64,
        peak_rss,
        update_bytes,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let params = env_list("FEDLNM_LOAD_PARAMS", &[11_000_000])[0];
    let site_counts = env_list("FEDLNM_LOAD_SITES", &[10, 50]);
    let ticks = clock_ticks();
    println!(
        "Load: {params} parameters, sites {site_counts:?}, one `fedlnm-aggregator serve` process, sites over mutual TLS on loopback\n"
    );
    println!(
        "| aggregation | sites | rounds | round wall time (s) | aggregator CPU per round (s) | aggregator peak RSS (MB) | peak RSS / one update | peak RSS vs {} sites |",
        site_counts[0]
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for mode in [Mode::Plain, Mode::Secure] {
        let mut baseline: Option<u64> = None;
        for &sites in &site_counts {
            let rounds = if mode == Mode::Plain { 2 } else { 1 };
            let started = Instant::now();
            let outcome = run_case(&Case { mode, sites, rounds }, params, ticks);
            let walls: Vec<String> = outcome.round_seconds.iter().map(|s| format!("{s:.1}")).collect();
            let base = *baseline.get_or_insert(outcome.peak_rss);
            #[allow(clippy::cast_precision_loss)]
            let (mb, per_update, vs_base) = (
                outcome.peak_rss as f64 / 1e6,
                outcome.peak_rss as f64 / outcome.update_bytes as f64,
                outcome.peak_rss as f64 / base as f64,
            );
            println!(
                "| {mode:?} | {sites} | {rounds} | {} | {:.1} | {mb:.0} | {per_update:.1}× | {vs_base:.2}× |",
                walls.join(", "),
                outcome.cpu_seconds
            );
            eprintln!(
                "({mode:?}, {sites} sites: {:.0} s in all)",
                started.elapsed().as_secs_f64()
            );
        }
    }
}
