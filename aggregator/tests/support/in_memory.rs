//! An aggregator configuration held in memory (no files behind its paths), for the tests and
//! benchmarks that drive an aggregation directly, without TLS or a state folder.

use fedlnm_shared::config::{
    AggregatorConfig, PrivacySettings, RoundSettings, SiteEntry, SiteRole, TlsFiles,
};
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
