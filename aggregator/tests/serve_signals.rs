//! `fedlnm-aggregator serve` as a service manager runs it: a separate process, logging to a pipe.
//! SIGTERM (a service manager's stop) ends it cleanly with exit code 0 and a line that says what
//! happens to the round in progress, and its log has no terminal colour codes.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::provision::{self, ProvisionOptions};
use fedlnm_aggregator::store::ModelBlob;
use fedlnm_shared::config::{AggregatorConfig, write_toml};
use fedlnm_shared::model_config::{Modality, ModelConfig};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

/// Provisions study "thyroid" in `dir/study` with `train_sites`, its kits dialling `port`.
fn provision_study(dir: &Path, train_sites: &[&str], port: u16) -> PathBuf {
    let study = dir.join("study");
    provision::provision(&ProvisionOptions {
        study: "thyroid".into(),
        train_sites: train_sites.iter().map(|&s| s.to_owned()).collect(),
        validate_sites: vec![],
        aggregator_hosts: vec!["localhost".into()],
        port,
        valid_days: 1,
        out: study.clone(),
    })
    .unwrap();
    study
}

/// The study's `aggregator.toml` and its config, made servable: a small initial model written and
/// named, any free port on loopback, no `/metrics`. The caller writes the config back.
fn servable_config(study: &Path) -> (PathBuf, AggregatorConfig) {
    let file = study.join(provision::AGGREGATOR_DIR).join("aggregator.toml");
    let mut config = AggregatorConfig::load(&file).unwrap();
    let initial = study.join(provision::AGGREGATOR_DIR).join("initial.safetensors");
    let weights = NamedTensors {
        tensors: vec![NamedTensor::new("head.bias", vec![2], vec![0.1, -0.1]).unwrap()],
    };
    let model = ModelBlob::new(0, weights, ModelConfig::tiny(Modality::Multimodal)).unwrap();
    std::fs::write(&initial, &model.bytes).unwrap();
    config.initial_model = Some(initial);
    config.listen = "127.0.0.1:0".into();
    config.metrics_listen = None;
    (file, config)
}

#[test]
fn sigterm_stops_the_aggregator_cleanly_with_a_plain_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let study = provision_study(dir.path(), &["S1", "S2", "S3"], 0);
    let (file, config) = servable_config(&study);
    write_toml(&file, &config).unwrap();

    let mut server = Command::new(env!("CARGO_BIN_EXE_fedlnm-aggregator"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("FEDLNM_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) for the aggregator to say it listens.
    let stdout = server.stdout.take().unwrap();
    let (listening, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            if line.starts_with("listening on") {
                let _ = listening.send(line);
            }
        }
    });
    said.recv_timeout(Duration::from_secs(60))
        .expect("the aggregator did not start listening");

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (exited, exit) = mpsc::channel();
    let mut stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        let _ = exited.send((server.wait().unwrap(), log));
    });
    let (status, log) = exit
        .recv_timeout(Duration::from_secs(60))
        .expect("the aggregator did not stop on SIGTERM");
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("SIGTERM") && log.contains("stopping"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a piped log:\n{log}");
}

/// `fedlnm-node run` as a service manager runs it, stopped with SIGTERM while it waits for an
/// aggregator that is not up yet (it retries, as behind a firewall that opens later): exit code 0 and
/// a line saying what the stop does to the round in progress.
#[test]
fn sigterm_stops_the_node_cleanly_with_a_line_saying_what_it_leaves() {
    let node = common::node_bin();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on that port: the node keeps retrying.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let study = provision_study(dir.path(), &["S1", "S2"], nowhere);
    let mut child = Command::new(node)
        .args(["run", "--config"])
        .arg(study.join(provision::SITES_DIR).join("S1").join("node.toml"))
        .env("FEDLNM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, line) = mpsc::channel();
    std::thread::spawn(move || {
        for text in BufReader::new(stderr).lines() {
            let _ = lines.send(text.unwrap_or_default());
        }
    });
    // It has started and is retrying when it says it cannot reach the aggregator.
    loop {
        let text = line
            .recv_timeout(Duration::from_secs(60))
            .expect("the node did not try to reach the aggregator");
        if text.contains("cannot reach the aggregator") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (exited, exit) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait().unwrap());
    });
    let status = exit
        .recv_timeout(Duration::from_secs(60))
        .expect("the node did not stop on SIGTERM");
    assert!(status.success(), "exit {status:?}");
    // The reader thread ends at the end of the pipe, after the exit: every line is in.
    let said: Vec<String> = line.iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("SIGTERM") && l.contains("leaves the round")),
        "{said:?}"
    );
}

/// A state folder the aggregator cannot create or write (here its parent is a regular file, which no
/// permission, root's included, lets anyone create a folder in): `serve` stops before it says it
/// listens, with a message naming the folder and what it could not do, and writes nothing.
#[test]
fn an_unusable_state_folder_stops_serve_before_it_listens_naming_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let study = provision_study(dir.path(), &["S1", "S2"], 0);
    let (file, mut config) = servable_config(&study);
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"a file where the state folder's parent should be").unwrap();
    config.state_dir = blocker.join("state");
    write_toml(&file, &config).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_fedlnm-aggregator"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains("cannot create the state folder") && stderr.contains("not-a-folder"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&blocker).unwrap(),
        b"a file where the state folder's parent should be"
    );
}
