//! Slow and stalled links, through a throttling TCP proxy on loopback between one site and the
//! aggregator (real mutual TLS and gRPC pass through it untouched): a site on a slow link that keeps
//! sending gets its update in, however long it takes; a site whose link stalls mid-upload is refused
//! after `rounds.transfer_idle_s` of silence and leaves that round alone: the others' round closes at
//! its deadline and is committed without it, and the site takes part again over a working link.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::RoundStore;
use fedlnm_e2e::{RunningAggregator, provision_study_with, site_config};
use fedlnm_protocol::{Client, Task, UpdateFormat};
use fedlnm_shared::config::{RoundSettings, SiteRole};
use fedlnm_shared::federation::SiteRoundMetrics;
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The study id `provision_study_with` is given (the other tests' `common::STUDY`).
const STUDY: &str = "thyroid";

/// What the proxy does to the site's bytes (towards the aggregator) on connections opened from now on.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// At most this many bytes per second.
    Throttled {
        bytes_per_second: usize,
    },
    /// Forwards this many bytes, then nothing more (the connection stays open).
    StallsAfter {
        bytes: usize,
    },
    Clear,
}

/// A TCP proxy on loopback to `upstream`; returns its port and the switch of its link behaviour.
async fn proxy(upstream: u16) -> (u16, Arc<Mutex<Link>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let link = Arc::new(Mutex::new(Link::Clear));
    let switch = link.clone();
    tokio::spawn(async move {
        loop {
            let (site, _) = listener.accept().await.unwrap();
            let mode = *link.lock().unwrap();
            tokio::spawn(async move {
                let aggregator = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                let (mut site_read, mut site_write) = site.into_split();
                let (mut agg_read, mut agg_write) = aggregator.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut agg_read, &mut site_write).await;
                });
                let mut buffer = vec![0u8; 16 * 1024];
                let mut forwarded = 0usize;
                loop {
                    let n = match site_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    match mode {
                        Link::Throttled { bytes_per_second } => {
                            // The link's speed (a simulated slow line), not a wait for an outcome.
                            let seconds = n as f64 / bytes_per_second as f64;
                            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                        }
                        Link::StallsAfter { bytes } if forwarded + n > bytes => {
                            std::future::pending::<()>().await;
                        }
                        Link::StallsAfter { .. } | Link::Clear => {}
                    }
                    if agg_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    forwarded += n;
                }
            });
        }
    });
    (port, switch)
}

/// An initial model of 1M parameters (4 MB updates: several 1 MiB chunks).
fn model() -> NamedTensors {
    NamedTensors {
        tensors: vec![
            NamedTensor::new("image.fc.weight", vec![1000, 1000], vec![0.0; 1_000_000]).unwrap(),
            NamedTensor::new("head.bias", vec![2], vec![0.1, -0.1]).unwrap(),
        ],
    }
}

fn delta(k: f32) -> Vec<u8> {
    let tensors = NamedTensors {
        tensors: vec![
            NamedTensor::new("image.fc.weight", vec![1000, 1000], vec![k; 1_000_000]).unwrap(),
            NamedTensor::new("head.bias", vec![2], vec![k, -k]).unwrap(),
        ],
    };
    tensors.to_safetensors_bytes(&BTreeMap::new()).unwrap()
}

async fn client(study_dir: &Path, site: &str, port: u16) -> Client {
    Client::connect(&site_config(
        study_dir,
        site,
        &format!("https://localhost:{port}"),
    ))
    .await
    .unwrap()
}

/// The next task that is not "wait".
async fn next(client: &mut Client) -> Task {
    loop {
        match client.get_task().await.unwrap() {
            Task::Wait { .. } => {}
            task => return task,
        }
    }
}

/// Trains (uploads `delta(k)`) for `round`.
async fn train(mut client: Client, round: u64, k: f32) -> Result<(), fedlnm_protocol::ClientError> {
    let Task::Train(task) = next(&mut client).await else {
        panic!("expected a training task");
    };
    assert_eq!(task.round, round);
    client
        .upload_update(round, UpdateFormat::SafetensorsDelta, 100, &delta(k))
        .await
        .map(|_| ())
}

/// Every site reports (empty) metrics for `round`'s model.
async fn validate(study_dir: &Path, port: u16, round: u64) {
    for site in ["S1", "S2", "S3", "S4"] {
        let mut client = client(study_dir, site, port).await;
        let Task::Validate(task) = next(&mut client).await else {
            panic!("{site}: expected the validation of round {round}");
        };
        assert_eq!(task.round, round);
        let role = if site == "S4" {
            SiteRole::Validate
        } else {
            SiteRole::Train
        };
        let metrics = SiteRoundMetrics::without_patients(site, role);
        client
            .report_metrics(round, &task.model.digest, &metrics)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_gets_its_update_in_and_a_stalled_one_leaves_only_its_own_round() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let study_dir = dir.path().join("study");
    let settings = RoundSettings {
        rounds: 2,
        min_sites: 2,
        secure_aggregation: false,
        round_deadline_s: 15,
        stage_timeout_s: 15,
        transfer_idle_s: 3,
        validation_deadline_s: 600,
        ..RoundSettings::default()
    };
    let config = provision_study_with(&study_dir, STUDY, settings, model());
    let state_dir = config.state_dir.clone();
    let aggregator = RunningAggregator::start(config, 0).await;
    let (slow_port, link) = proxy(aggregator.port).await;
    let bound = Duration::from_secs(120);

    // Round 1: S3's link carries 1 MB/s; its 4 MB upload takes seconds, with no silence of 3 s.
    *link.lock().unwrap() = Link::Throttled {
        bytes_per_second: 1_000_000,
    };
    let s3 = client(&study_dir, "S3", slow_port).await;
    let uploads = [
        tokio::spawn(train(client(&study_dir, "S1", aggregator.port).await, 1, 1.0)),
        tokio::spawn(train(client(&study_dir, "S2", aggregator.port).await, 1, 2.0)),
        tokio::spawn(train(s3, 1, 3.0)),
    ];
    tokio::time::timeout(bound, async {
        for upload in uploads {
            upload.await.unwrap().unwrap();
        }
    })
    .await
    .expect("round 1's uploads did not complete");
    *link.lock().unwrap() = Link::Clear;
    tokio::time::timeout(bound, validate(&study_dir, aggregator.port, 1))
        .await
        .expect("round 1 was not validated");
    let store = RoundStore::open(&state_dir).unwrap();
    let mut round1 = store.load(1).unwrap().record;
    round1.contributors.sort();
    assert_eq!(
        round1.contributors,
        ["S1", "S2", "S3"],
        "the slow site's update is in"
    );

    // Round 2: S3's link stalls after 1.5 MB of its upload.
    *link.lock().unwrap() = Link::StallsAfter { bytes: 1_500_000 };
    let stalled = tokio::spawn(train(client(&study_dir, "S3", slow_port).await, 2, 3.0));
    let fast = [
        tokio::spawn(train(client(&study_dir, "S1", aggregator.port).await, 2, 1.0)),
        tokio::spawn(train(client(&study_dir, "S2", aggregator.port).await, 2, 2.0)),
    ];
    tokio::time::timeout(bound, async {
        for upload in fast {
            upload.await.unwrap().unwrap();
        }
    })
    .await
    .expect("round 2's uploads over clear links did not complete");
    // The round closes at its deadline without S3 (its stalled transfer refused after 3 s of silence);
    // S3, over a working link again, validates the new model with the others.
    *link.lock().unwrap() = Link::Clear;
    tokio::time::timeout(bound, validate(&study_dir, slow_port, 2))
        .await
        .expect("round 2 was not validated");
    stalled.abort();
    let mut round2 = store.load(2).unwrap().record;
    round2.contributors.sort();
    assert_eq!(round2.contributors, ["S1", "S2"]);
    assert_eq!(round2.dropped, ["S3"]);
    let expected = (1.0 * 100.0 + 2.0 * 100.0) / 200.0;
    let committed = store.load(2).unwrap();
    let fc = &committed.model.weights.get("image.fc.weight").unwrap().values;
    let after_round1 = (1.0 + 2.0 + 3.0) / 3.0;
    assert!((fc[0] - (after_round1 + expected)).abs() < 1e-5, "{}", fc[0]);
    let refused = aggregator.service.telemetry().refusals("idle-update");
    assert_eq!(
        refused, 1,
        "the stalled upload is counted as refused for its silence"
    );
    aggregator.shut_down().await;
}
