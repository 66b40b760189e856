//! Slow and stalled links, through a throttling TCP proxy on loopback between one site and the
//! aggregator (real mutual TLS and gRPC pass through it untouched): a site on a slow link that keeps
//! sending gets its update in, however long it takes; a site whose link stalls mid-upload is refused
//! after `rounds.transfer_idle_s` of silence and leaves that round alone: the others' round closes at
//! its deadline and is committed without it, and the site takes part again over a working link; a
//! site killed in the middle of its model download starts again, downloads again, and is in the round.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::RoundStore;
use fedlnm_e2e::{RunningAggregator, provision_study_with, site_config};
use fedlnm_protocol::{Client, Task, UpdateFormat};
use fedlnm_shared::config::{RoundSettings, SiteRole};
use fedlnm_shared::federation::{ScoringStatistics, SiteRoundMetrics};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The study id `provision_study_with` is given (the other tests' `common::STUDY`).
const STUDY: &str = "thyroid";

/// What the proxy does to a connection's bytes, in one direction, on connections opened from now on.
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

/// The link towards the aggregator (uploads) and towards the site (downloads).
#[derive(Debug, Clone, Copy)]
struct Links {
    up: Link,
    down: Link,
}

const CLEAR: Links = Links {
    up: Link::Clear,
    down: Link::Clear,
};

/// Copies `from` to `to` as `link` lets it.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, link: Link) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut forwarded = 0usize;
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match link {
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
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        forwarded += n;
    }
}

/// A TCP proxy on loopback to `upstream`; returns its port and the switch of its link behaviour.
async fn proxy(upstream: u16) -> (u16, Arc<Mutex<Links>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let links = Arc::new(Mutex::new(CLEAR));
    let switch = links.clone();
    tokio::spawn(async move {
        loop {
            let (site, _) = listener.accept().await.unwrap();
            let Links { up, down } = *links.lock().unwrap();
            tokio::spawn(async move {
                let aggregator = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                let (site_read, site_write) = site.into_split();
                let (agg_read, agg_write) = aggregator.into_split();
                tokio::spawn(pump(agg_read, site_write, down));
                pump(site_read, agg_write, up).await;
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

/// The longest any step of the test may take.
const BOUND: Duration = Duration::from_secs(120);

/// Waits (bounded) for every upload task to have succeeded; panics with `what` when they did not.
async fn all_uploaded(
    uploads: impl IntoIterator<Item = tokio::task::JoinHandle<Result<(), fedlnm_protocol::ClientError>>>,
    what: &str,
) {
    tokio::time::timeout(BOUND, async {
        for upload in uploads {
            upload.await.unwrap().unwrap();
        }
    })
    .await
    .expect(what);
}

/// The committed contributors of `round`, sorted (plain rounds record them in arrival order).
fn sorted_contributors(store: &RoundStore, round: u64) -> Vec<String> {
    let mut contributors = store.load(round).unwrap().record.contributors;
    contributors.sort();
    contributors
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
        let metrics = SiteRoundMetrics {
            normalisation: Some(ScoringStatistics::for_site(
                &task.local_tensors,
                task.adapt_normalisation,
                role,
            )),
            ..SiteRoundMetrics::without_patients(site, role)
        };
        client
            .report_metrics(round, &task.model.digest, &metrics, Vec::new())
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
        rounds: 3,
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

    // Round 1: S3's link carries 1 MB/s; its 4 MB upload takes seconds, with no silence of 3 s.
    *link.lock().unwrap() = Links {
        up: Link::Throttled {
            bytes_per_second: 1_000_000,
        },
        down: Link::Clear,
    };
    let s3 = client(&study_dir, "S3", slow_port).await;
    let uploads = [
        tokio::spawn(train(client(&study_dir, "S1", aggregator.port).await, 1, 1.0)),
        tokio::spawn(train(client(&study_dir, "S2", aggregator.port).await, 1, 2.0)),
        tokio::spawn(train(s3, 1, 3.0)),
    ];
    all_uploaded(uploads, "round 1's uploads did not complete").await;
    *link.lock().unwrap() = CLEAR;
    tokio::time::timeout(BOUND, validate(&study_dir, aggregator.port, 1))
        .await
        .expect("round 1 was not validated");
    let store = RoundStore::open(&state_dir).unwrap();
    let round1 = sorted_contributors(&store, 1);
    assert_eq!(round1, ["S1", "S2", "S3"], "the slow site's update is in");

    // Round 2: S3's link stalls after 1.5 MB of its upload.
    *link.lock().unwrap() = Links {
        up: Link::StallsAfter { bytes: 1_500_000 },
        down: Link::Clear,
    };
    let stalled = tokio::spawn(train(client(&study_dir, "S3", slow_port).await, 2, 3.0));
    let fast = [
        tokio::spawn(train(client(&study_dir, "S1", aggregator.port).await, 2, 1.0)),
        tokio::spawn(train(client(&study_dir, "S2", aggregator.port).await, 2, 2.0)),
    ];
    all_uploaded(fast, "round 2's uploads over clear links did not complete").await;
    // The round closes at its deadline without S3 (its stalled transfer refused after 3 s of silence);
    // S3, over a working link again, validates the new model with the others.
    *link.lock().unwrap() = CLEAR;
    tokio::time::timeout(BOUND, validate(&study_dir, slow_port, 2))
        .await
        .expect("round 2 was not validated");
    stalled.abort();
    let round2 = sorted_contributors(&store, 2);
    assert_eq!(round2, ["S1", "S2"]);
    assert_eq!(store.load(2).unwrap().record.dropped, ["S3"]);
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

    // Round 3: S3 is killed in the middle of its model download (1 MB/s down: 4 s for the model; its
    // connection dropped after about 1 s), then starts again and checks in: it downloads the model
    // again and its update is in the round, which waited for nothing else.
    *link.lock().unwrap() = Links {
        up: Link::Clear,
        down: Link::Throttled {
            bytes_per_second: 1_000_000,
        },
    };
    let mut s3 = client(&study_dir, "S3", slow_port).await;
    let Task::Train(task) = next(&mut s3).await else {
        panic!("S3: expected the training task of round 3");
    };
    let downloading = tokio::spawn(async move { s3.download_model(&task.model).await });
    // Time for part of the model to arrive (the scenario), then the kill.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !downloading.is_finished(),
        "the download was not in progress when the node was killed"
    );
    downloading.abort();
    assert!(downloading.await.unwrap_err().is_cancelled());
    *link.lock().unwrap() = CLEAR;
    let mut restarted = client(&study_dir, "S3", slow_port).await;
    restarted.check_in().await.unwrap();
    let uploads = [
        tokio::spawn(train(client(&study_dir, "S1", aggregator.port).await, 3, 1.0)),
        tokio::spawn(train(client(&study_dir, "S2", aggregator.port).await, 3, 2.0)),
        tokio::spawn(train(restarted, 3, 3.0)),
    ];
    all_uploaded(uploads, "round 3's uploads did not complete").await;
    tokio::time::timeout(BOUND, validate(&study_dir, aggregator.port, 3))
        .await
        .expect("round 3 was not validated");
    let round3 = sorted_contributors(&store, 3);
    assert_eq!(round3, ["S1", "S2", "S3"], "the restarted site's update is in");
    aggregator.shut_down().await;
}
