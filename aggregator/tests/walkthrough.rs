//! The README walkthrough as a hospital and the central team run it: every step a separate OS process
//! (`fedlnm-aggregator provision`, `fedlnm-node synth`, `fedlnm-node init-model`,
//! `fedlnm-aggregator serve`, one `fedlnm-node run` per site), real mutual TLS on loopback, with a
//! crash in each part of a round, each process killed with SIGKILL and started again with the same
//! command, as a service manager would:
//!
//! - round 1: the validation-only site, killed while validating: its restarted twin validates, the
//!   round is committed with its metrics;
//! - round 2: a training site, killed in its second local epoch (after the key exchange): the round
//!   goes on at once with the other two (its pairwise masks removed), the restarted site trains round 3;
//! - round 3: a training site, killed right after its masked upload: its update stays in the sum;
//! - round 4: the aggregator, killed once it has accepted an update: restarted, it resumes after round
//!   3, the nodes reconnect on their own and round 4 is run again whole, never half-committed.
//!
//! The study's deadlines are the hour-scale ones of a real study (`round_deadline_s` 3600,
//! `stage_timeout_s` 600): every wait below is bounded by a few minutes, so a round that waited for a
//! dead process until a deadline fails the test instead of passing slowly. The time each crash cost
//! (kill to the round's commit) is printed.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::RoundStore;
use fedlnm_shared::config::{AggregatorConfig, NodeConfig, write_toml};
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

mod common;

use common::node_bin;

/// The longest any one step may take (a round of the tiny model takes seconds).
const STEP: Duration = Duration::from_secs(240);

fn aggregator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fedlnm-aggregator"))
}

/// Runs a one-shot command and returns its standard output; panics with its output if it fails.
fn run_ok(command: &mut Command) -> String {
    let output = command.env("FEDLNM_LOG", "warn").output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every line any long-running process printed, in arrival order, tagged with the process's name.
struct Logs {
    lines: Vec<(String, String)>,
    sender: Sender<(String, String)>,
    receiver: Receiver<(String, String)>,
}

impl Logs {
    fn new() -> Self {
        let (sender, receiver) = channel();
        Self {
            lines: Vec::new(),
            sender,
            receiver,
        }
    }

    fn forward(&self, name: &str, stream: impl Read + Send + 'static) {
        let sender = self.sender.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if sender.send((name.clone(), line)).is_err() {
                    break;
                }
            }
        });
    }

    /// The index of the first line at or after `since` from `process` containing every one of
    /// `words`; waits (bounded by [`STEP`]) for it to arrive.
    fn wait_for(&mut self, since: usize, process: &str, words: &[&str]) -> usize {
        let deadline = Instant::now() + STEP;
        let mut next = since;
        loop {
            while next < self.lines.len() {
                let (name, line) = &self.lines[next];
                if name == process && words.iter().all(|w| line.contains(w)) {
                    return next;
                }
                next += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(_) => panic!(
                    "{process} did not log {words:?} within {STEP:?}; the logs:\n{}",
                    self.dump()
                ),
            }
        }
    }

    /// Takes in every line that has arrived so far.
    fn drain(&mut self) {
        while let Ok(line) = self.receiver.try_recv() {
            self.lines.push(line);
        }
    }

    fn dump(&self) -> String {
        self.lines
            .iter()
            .map(|(name, line)| format!("[{name}] {line}\n"))
            .collect()
    }
}

/// A long-running process of the study, restartable with the same command.
struct Service {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    child: Child,
}

impl Service {
    fn start(logs: &Logs, name: &str, program: &Path, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let child = Self::spawn(logs, name, program, &args);
        Self {
            name: name.to_owned(),
            program: program.to_path_buf(),
            args,
            child,
        }
    }

    fn spawn(logs: &Logs, name: &str, program: &Path, args: &[String]) -> Child {
        let mut child = Command::new(program)
            .args(args)
            .env("FEDLNM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        logs.forward(name, child.stdout.take().unwrap());
        logs.forward(name, child.stderr.take().unwrap());
        child
    }

    /// `kill -9`, then the same command again.
    fn kill_and_restart(&mut self, logs: &Logs) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(logs, &self.name, &self.program, &self.args);
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait_exit(&mut self, logs: &mut Logs) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {STEP:?}; the logs:\n{}",
                self.name,
                {
                    logs.drain();
                    logs.dump()
                }
            );
            // Polling a child's exit status: the bound above is the assertion, not this pause.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn round_of(line: &str) -> String {
    format!("round={line}")
}

/// The hospitals: S1–S4 train (four, so that one dropout leaves the t = 3 that secure aggregation
/// against a malicious aggregator needs), S5 validates.
const SITES: [&str; 5] = ["S1", "S2", "S3", "S4", "S5"];

/// The walkthrough's study, every process started: the aggregator (`serve --exit-when-finished`) and one
/// `run` per site (S1–S4 train, S5 validates), on synthetic sites of 40 patients, the tiny model.
struct Walkthrough {
    _dir: tempfile::TempDir,
    study: PathBuf,
    state_dir: PathBuf,
    logs: Logs,
    server: Service,
    nodes: Vec<Service>,
}

impl Walkthrough {
    fn start(rounds: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let study = root.join("study");
        let (aggregator, node) = (aggregator_bin(), node_bin());

        // Each hospital's data (first: the slow part, before a port is chosen).
        for (k, site) in SITES.iter().enumerate() {
            let data = root.join("data").join(site);
            run_ok(
                Command::new(&node)
                    .args(["synth", "--site", site, "--patients", "40", "--image-size", "64"])
                    .args(["--seed", &(k + 1).to_string(), "--out", data.to_str().unwrap()]),
            );
        }
        // The port is chosen as late as it can be (the kits name it), so that no other connection of
        // this machine takes it before the aggregator listens.
        let port = free_port();

        // Central team, once.
        run_ok(
            Command::new(&aggregator)
                .args(["provision", "--study", "demo", "--sites", "S1,S2,S3,S4"])
                .args([
                    "--validate-sites",
                    "S5",
                    "--aggregator-hosts",
                    "localhost",
                    "--port",
                    &port.to_string(),
                    "--out",
                    study.to_str().unwrap(),
                ]),
        );
        let model_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/model-tiny.toml");
        let initial = study.join("aggregator/initial-model.safetensors");
        run_ok(
            Command::new(&node)
                .arg("init-model")
                .arg("--config")
                .arg(&model_toml)
                .arg("--out")
                .arg(&initial),
        );
        let aggregator_toml = study.join("aggregator/aggregator.toml");
        let mut config = AggregatorConfig::load(&aggregator_toml).unwrap();
        config.initial_model = Some(initial);
        config.listen = format!("127.0.0.1:{port}");
        config.metrics_listen = None;
        config.rounds.rounds = rounds;
        config.rounds.round_deadline_s = 3600;
        config.rounds.stage_timeout_s = 600;
        config.rounds.validation_deadline_s = 3600;
        config.train.epochs = 2;
        config.train.batch_size = 8;
        write_toml(&aggregator_toml, &config).unwrap();
        let state_dir = AggregatorConfig::load(&aggregator_toml).unwrap().state_dir;
        assert_eq!(
            config.rounds.threat_model.threshold(4, config.rounds.min_sites),
            3,
            "against a malicious aggregator (the default), four training sites tolerate one dropout"
        );

        // Each hospital: its kit's node.toml names its data.
        let mut node_tomls = Vec::new();
        for site in SITES {
            let data = root.join("data").join(site);
            let file = study.join("sites").join(site).join("node.toml");
            let mut node_config = NodeConfig::load(&file).unwrap();
            node_config.data = data;
            write_toml(&file, &node_config).unwrap();
            node_tomls.push(file);
        }

        let mut logs = Logs::new();
        let server = Service::start(
            &logs,
            "aggregator",
            &aggregator,
            &[
                "serve",
                "--config",
                aggregator_toml.to_str().unwrap(),
                "--exit-when-finished",
                "--finished-grace-s",
                "1",
            ],
        );
        logs.wait_for(0, "aggregator", &["listening on"]);
        let nodes: Vec<Service> = SITES
            .iter()
            .zip(&node_tomls)
            .map(|(site, file)| {
                Service::start(&logs, site, &node, &["run", "--config", file.to_str().unwrap()])
            })
            .collect();
        Self {
            _dir: dir,
            study,
            state_dir,
            logs,
            server,
            nodes,
        }
    }

    /// Every node finishes on its own, with the final model, then the aggregator exits 0.
    fn finish(&mut self) {
        let Self {
            logs,
            nodes,
            server,
            study,
            ..
        } = self;
        for node in nodes.iter_mut() {
            let status = node.wait_exit(logs);
            assert!(
                status.success(),
                "{} exited with {status}; the logs:\n{}",
                node.name,
                {
                    logs.drain();
                    logs.dump()
                }
            );
        }
        logs.drain();
        for site in SITES {
            assert!(
                logs.lines
                    .iter()
                    .any(|(name, line)| name == site && line.contains("study finished; final model saved")),
                "{site} did not save the final model"
            );
            let work_dir = NodeConfig::load(&study.join("sites").join(site).join("node.toml"))
                .unwrap()
                .work_dir;
            assert!(
                work_dir.join("final-global.safetensors").is_file(),
                "{site}: no final model"
            );
        }
        // The aggregator exits on its own once every site has been sent the final model.
        let status = server.wait_exit(logs);
        assert!(status.success(), "the aggregator exited with {status}");
        logs.wait_for(0, "aggregator", &["every site has been sent the final model"]);
    }
}

#[test]
fn the_walkthrough_survives_a_crash_in_every_part_of_a_round() {
    let mut walk = Walkthrough::start(4);
    let mut crash_costs = Vec::new();
    let Walkthrough {
        logs, server, nodes, ..
    } = &mut walk;

    // Round 1: the validation site dies while validating.
    let at = logs.wait_for(0, "S5", &["validation task", &round_of("1")]);
    let killed = Instant::now();
    nodes[4].kill_and_restart(logs);
    let at = logs.wait_for(at, "aggregator", &["round committed", &round_of("1")]);
    crash_costs.push((
        "validation site killed while validating (round 1)",
        killed.elapsed(),
    ));

    // Round 2: S2 dies in its second local epoch.
    let at = logs.wait_for(at, "S2", &["local epoch", &round_of("2"), "epoch=1"]);
    let killed = Instant::now();
    nodes[1].kill_and_restart(logs);
    let at = logs.wait_for(at, "aggregator", &["round committed", &round_of("2")]);
    crash_costs.push(("training site killed mid-training (round 2)", killed.elapsed()));

    // Round 3: S3 dies right after its masked upload.
    let at = logs.wait_for(at, "S3", &["update uploaded", &round_of("3")]);
    let killed = Instant::now();
    nodes[2].kill_and_restart(logs);
    let at = logs.wait_for(at, "aggregator", &["round committed", &round_of("3")]);
    crash_costs.push((
        "training site killed after its masked upload (round 3)",
        killed.elapsed(),
    ));

    // Round 4: the aggregator dies between the uploads and the commit.
    let at = logs.wait_for(at, "aggregator", &["update accepted", &round_of("4")]);
    let killed = Instant::now();
    server.kill_and_restart(logs);
    let at = logs.wait_for(
        at,
        "aggregator",
        &["resuming after the last committed round", &round_of("3")],
    );
    logs.wait_for(at, "aggregator", &["round committed", &round_of("4")]);
    crash_costs.push((
        "aggregator killed between uploads and commit (round 4)",
        killed.elapsed(),
    ));

    walk.finish();

    // What was committed: every round once, whole, with the contributors each crash implies.
    let store = RoundStore::open_existing(&walk.state_dir).unwrap();
    assert_eq!(store.committed_rounds().unwrap(), vec![0, 1, 2, 3, 4]);
    let records: Vec<_> = (1..=4).map(|round| store.load(round).unwrap().record).collect();
    let sites_of =
        |round: usize| -> Vec<&str> { records[round - 1].sites.iter().map(|s| s.site.as_str()).collect() };
    assert_eq!(
        sites_of(1),
        SITES,
        "round 1 lacks the restarted site's validation"
    );
    let training = &SITES[..4];
    assert_eq!(records[0].contributors, training);
    assert_eq!(
        records[1].contributors,
        ["S1", "S3", "S4"],
        "round 2 goes on without the killed site"
    );
    assert_eq!(records[1].dropped, ["S2"]);
    assert_eq!(
        records[2].contributors, training,
        "a masked upload survives its sender (which signed no survivor set)"
    );
    assert_eq!(records[3].contributors, training, "round 4 is run again whole");
    for record in &records {
        assert_eq!(sites_of(record.round as usize), SITES);
    }
    let names: Vec<String> = std::fs::read_dir(walk.state_dir.join("rounds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        5,
        "only whole rounds are in the state folder: {names:?}"
    );

    println!("| crash | kill → round committed |\n|---|---:|");
    for (case, cost) in crash_costs {
        println!("| {case} | {:.1} s |", cost.as_secs_f64());
    }
}

/// Sets the largest file the aggregator process may write (its soft limit, `prlimit`; `None`:
/// unlimited). The hard limit stays unlimited, so that the soft one may be raised again.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let soft = bytes.map_or_else(|| "unlimited".to_owned(), |b| b.to_string());
    let limit = format!("{soft}:unlimited");
    run_ok(
        Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--fsize={limit}")),
    );
}

/// The aggregator's disk refuses the round's files (a file-size limit set on the running process, as
/// a full disk would): the commit fails with an error naming the file, nothing half-written is taken
/// for a round, the aggregator keeps serving and keeps the validated round in memory, and once the disk
/// takes writes again only the write is repeated (the round is not trained again) and the study
/// finishes as if nothing had happened.
#[test]
fn a_disk_that_refuses_the_commit_costs_a_round_never_the_state() {
    let mut walk = Walkthrough::start(2);
    let Walkthrough { logs, server, .. } = &mut walk;
    let at = logs.wait_for(0, "aggregator", &["round started", &round_of("1")]);
    // Smaller than the model file: its write fails with EFBIG (the aggregator handles SIGXFSZ).
    limit_file_size(server.child.id(), Some(4096));
    let at = logs.wait_for(
        at,
        "aggregator",
        &[
            "cannot commit the round; its write is tried again",
            &round_of("1"),
        ],
    );
    let line = &logs.lines[at].1;
    assert!(
        line.contains("global.safetensors") || line.contains("round.json"),
        "{line}"
    );
    let store = RoundStore::open_existing(&walk.state_dir).unwrap();
    assert_eq!(
        store.committed_rounds().unwrap(),
        vec![0],
        "a failed commit is not a round"
    );
    limit_file_size(walk.server.child.id(), None);
    let at = walk
        .logs
        .wait_for(at, "aggregator", &["round committed", &round_of("1")]);
    // Only the write was tried again: round 1 was trained once.
    let starts = walk.logs.lines[..at]
        .iter()
        .filter(|(name, line)| {
            name == "aggregator" && line.contains("round started") && line.contains("round=1 ")
        })
        .count();
    assert_eq!(starts, 1, "round 1 was trained again after its commit failed");
    walk.logs
        .wait_for(at, "aggregator", &["round committed", &round_of("2")]);
    walk.finish();
    assert_eq!(store.committed_rounds().unwrap(), vec![0, 1, 2]);
    for round in 1..=2 {
        let committed = store.load(round).unwrap();
        assert_eq!(committed.record.contributors, SITES[..4]);
    }
}
