//! fedlnm's end-to-end test crate: its tests (under `tests/`) read the source tree for architecture
//! invariants, and start real aggregators and nodes on loopback (real rustls handshakes, real gRPC,
//! real files). This library is their shared harness: provisioning a study with a known small initial
//! model, and an in-process aggregator that can be stopped cleanly or killed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a panic is a failed test.

pub mod browser;

use fedlnm_aggregator::provision::{self, ProvisionOptions};
use fedlnm_aggregator::server::{self, FederationService};
use fedlnm_aggregator::store::ModelBlob;
use fedlnm_shared::config::{AggregatorConfig, NodeConfig, RoundSettings};
use fedlnm_shared::model_config::{Modality, ModelConfig};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;

/// A small model layout with a FedBN-style normalisation tensor: enough for the aggregator, which
/// never builds the network (it only checks names, shapes and finiteness).
#[must_use]
pub fn small_model() -> NamedTensors {
    NamedTensors {
        tensors: vec![
            NamedTensor::new("head.weight", vec![2, 3], vec![0.5, -1.0, 2.0, 0.0, 1.5, -0.25]).unwrap(),
            NamedTensor::new("head.bias", vec![2], vec![0.1, -0.1]).unwrap(),
            NamedTensor::new("image.bn1.gamma", vec![2], vec![1.0, 1.0]).unwrap(),
        ],
    }
}

/// Provisions a study (S1–S3 train, S4 validate) in `out` with `small_model()` as the initial model
/// and the given round settings; returns the loaded aggregator config.
#[must_use]
pub fn provision_study(out: &Path, study: &str, rounds: RoundSettings) -> AggregatorConfig {
    provision_study_with(out, study, rounds, small_model())
}

/// [`provision_study`] with `initial` as the initial model.
#[must_use]
pub fn provision_study_with(
    out: &Path,
    study: &str,
    rounds: RoundSettings,
    initial_model: NamedTensors,
) -> AggregatorConfig {
    provision_sites(out, study, rounds, initial_model, &["S1", "S2", "S3"], &["S4"])
}

/// Provisions a study with four training sites (S1–S4) and one validation site (S5), `small_model()`
/// as the initial model: secure aggregation against a malicious aggregator (the default) then needs
/// t = 3, so one training site may drop out.
#[must_use]
pub fn provision_four_training_sites(out: &Path, study: &str, rounds: RoundSettings) -> AggregatorConfig {
    provision_sites(
        out,
        study,
        rounds,
        small_model(),
        &["S1", "S2", "S3", "S4"],
        &["S5"],
    )
}

/// [`provision_study_with`] with the given training and validation sites.
#[must_use]
pub fn provision_sites(
    out: &Path,
    study: &str,
    rounds: RoundSettings,
    initial_model: NamedTensors,
    train_sites: &[&str],
    validate_sites: &[&str],
) -> AggregatorConfig {
    provision::provision(&ProvisionOptions {
        study: study.into(),
        train_sites: train_sites.iter().map(|&s| s.to_owned()).collect(),
        validate_sites: validate_sites.iter().map(|&s| s.to_owned()).collect(),
        aggregator_hosts: vec!["localhost".into(), "127.0.0.1".into()],
        port: 0,
        valid_days: 30,
        out: out.to_path_buf(),
    })
    .unwrap();
    let file = out.join("aggregator/aggregator.toml");
    let mut config = AggregatorConfig::load(&file).unwrap();
    let initial = out.join("aggregator/initial.safetensors");
    let blob = ModelBlob::new(0, initial_model, ModelConfig::tiny(Modality::Multimodal)).unwrap();
    std::fs::write(&initial, &blob.bytes).unwrap();
    config.initial_model = Some(initial);
    // Tests that want /metrics choose a free port; the provisioned default would clash between tests.
    config.metrics_listen = None;
    config.rounds = rounds;
    fedlnm_shared::config::write_toml(&file, &config).unwrap();
    AggregatorConfig::load(&file).unwrap()
}

/// A running in-process aggregator (the same service as `fedlnm-aggregator serve`).
pub struct RunningAggregator {
    pub url: String,
    pub port: u16,
    pub service: FederationService,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningAggregator {
    /// Opens the study's state and serves it on 127.0.0.1 (`port` 0: any free port).
    pub async fn start(config: AggregatorConfig, port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = FederationService::open(config).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = service.clone();
        let task = tokio::spawn(async move {
            server::serve(serving, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            url: format!("https://localhost:{port}"),
            port,
            service,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The port of `/metrics` (for a config whose `metrics_listen` names port 0), once bound.
    pub async fn metrics_port(&self) -> u16 {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(address) = self.service.metrics_address() {
                return address.port();
            }
            assert!(tokio::time::Instant::now() < deadline, "/metrics was not bound");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops serving cleanly.
    pub async fn shut_down(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
    }

    /// Kills the aggregator: the serving task is aborted mid-flight and every in-memory state is
    /// dropped; only what was committed to disk survives (as after `kill -9`).
    pub async fn kill(mut self) {
        let task = self.task.take().unwrap();
        task.abort();
        let _ = task.await;
        drop(self.service);
    }
}

/// The node config of a provisioned site, pointed at `url`.
#[must_use]
pub fn site_config(study_dir: &Path, site: &str, url: &str) -> NodeConfig {
    let mut config = NodeConfig::load(&kit(study_dir, site).join("node.toml")).unwrap();
    config.aggregator = url.to_owned();
    config
}

/// The secure-aggregation client of `site` for an instance it was given, signing with the site's
/// startup kit (certificate, key, study CA) where the instance protects against a malicious
/// aggregator, as the node does.
#[must_use]
pub fn secagg_client(
    study_dir: &Path,
    site: &str,
    config: fedlnm_shared::secagg::SecAggConfig,
    site_id: fedlnm_shared::secagg::SiteId,
) -> (
    fedlnm_shared::secagg::SecAggClient,
    fedlnm_shared::secagg::AdvertiseKeys,
) {
    use fedlnm_shared::secagg::SecAggClient;
    let config = config.validate().unwrap();
    if config.is_authenticated() {
        let tls = site_config(study_dir, site, "https://127.0.0.1:1").tls;
        let auth = fedlnm_shared::signing::site_authentication(&tls).unwrap();
        SecAggClient::new_authenticated(config, site_id, auth).unwrap()
    } else {
        SecAggClient::new(config, site_id).unwrap()
    }
}

/// The startup kit folder of a site.
#[must_use]
pub fn kit(study_dir: &Path, site: &str) -> PathBuf {
    study_dir.join(provision::SITES_DIR).join(site)
}
