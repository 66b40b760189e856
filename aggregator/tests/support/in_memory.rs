//! An aggregator configuration held in memory (no files behind its paths) and a secure aggregation
//! driven by hand, for the tests and benchmarks that run an aggregation directly, without TLS or a
//! state folder.
#![allow(dead_code, clippy::unwrap_used)] // Each user takes part of it; a panic is a failed run.

use std::time::{Duration, Instant};

use fedlnm_aggregator::aggregation::{Aggregation, Poll, RoundAggregate};
use fedlnm_aggregator::secure::{Attempt, SecureAggregation};
use fedlnm_aggregator::store::ModelBlob;
use fedlnm_protocol::SecAggStage;
use fedlnm_shared::config::{
    AggregatorConfig, PrivacySettings, RoundSettings, SiteEntry, SiteRole, TlsFiles,
};
use fedlnm_shared::federation::LocalTensors;
use fedlnm_shared::model_config::TrainPlan;

/// Study `study` with the training sites `names` and the round settings `rounds`.
pub fn training_sites_config(study: &str, names: &[String], rounds: RoundSettings) -> AggregatorConfig {
    AggregatorConfig {
        study: study.to_owned(),
        listen: "127.0.0.1:0".to_owned(),
        state_dir: std::env::temp_dir(),
        tls: TlsFiles {
            certificate: "server.pem".into(),
            key: "server.key".into(),
            ca: "ca.pem".into(),
        },
        sites: names
            .iter()
            .map(|id| SiteEntry {
                id: id.clone(),
                role: SiteRole::Train,
            })
            .collect(),
        initial_model: None,
        metrics_listen: None,
        rounds,
        privacy: PrivacySettings::default(),
        train: TrainPlan::default(),
        analyses: Vec::new(),
    }
}

/// The secure aggregation of attempt 1 of round 1 between the training sites `names`, its deadline an
/// hour away.
pub fn open_secure(config: &AggregatorConfig, global: &ModelBlob, names: &[String]) -> SecureAggregation {
    let now = Instant::now();
    let attempt = Attempt {
        round: 1,
        attempt: 1,
        instance: 0,
        opened: now,
        deadline: now + Duration::from_secs(3600),
    };
    SecureAggregation::new(config, &attempt, global, &LocalTensors::default(), names, None).unwrap()
}

/// The aggregation's reply to `site` for `stage`, which must be ready.
pub fn reply(aggregation: &SecureAggregation, site: &str, stage: SecAggStage) -> Vec<u8> {
    aggregation.reply(site, stage).unwrap().unwrap()
}

/// The aggregation must still be waiting (its next stage open).
pub fn pending(poll: Poll) {
    assert!(matches!(poll, Poll::Pending), "expected the next stage to open");
}

/// The aggregation must be ready: its finisher's aggregate.
pub fn ready(poll: Poll) -> RoundAggregate {
    match poll {
        Poll::Ready(finish) => finish().unwrap(),
        Poll::Pending => panic!("the round is still pending with every site in"),
        Poll::Failed(reason) => panic!("the round failed: {reason}"),
    }
}
