//! Typed configuration files: the aggregator's `aggregator.toml` and each site's `node.toml`.
//!
//! Both are validated once at load; an unknown, missing or invalid key is an error that names the key
//! and the file. Relative paths inside a file are resolved against the file's own folder, so that a
//! startup kit can be moved as a whole.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod node;
mod rounds;
mod secure_graph;
pub use node::{CrossValidationFold, NodeConfig};
pub use rounds::{LearningRateSchedule, NormalisationStatistics, RoundSettings, ThreatModel};
pub use secure_graph::{HararySettings, SecureAggregationGraph};

/// A configuration that cannot be used: the one error of every configuration (`aggregator.toml`,
/// `node.toml`, `model.toml`, a model configuration in a checkpoint). Names the file, where the
/// configuration came from one, and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", file.display())]
    Unreadable { file: PathBuf, source: std::io::Error },
    #[error("{}: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("{}key '{key}': {problem}", location(file.as_deref()))]
    Invalid {
        /// `None` for a configuration checked in memory (then the caller knows where it came from).
        file: Option<PathBuf>,
        key: String,
        problem: String,
    },
    #[error("cannot write {}: {source}", file.display())]
    Unwritable { file: PathBuf, source: std::io::Error },
}

impl ConfigError {
    /// A value that is not allowed, in a configuration checked in memory.
    #[must_use]
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            file: None,
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The same error, naming `file` if it named no file yet.
    #[must_use]
    pub fn in_file(self, file: &Path) -> Self {
        match self {
            Self::Invalid {
                file: None,
                key,
                problem,
            } => Self::Invalid {
                file: Some(file.to_path_buf()),
                key,
                problem,
            },
            other => other,
        }
    }
}

fn location(file: Option<&Path>) -> String {
    file.map(|file| format!("{}: ", file.display()))
        .unwrap_or_default()
}

/// What a site does in the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteRole {
    /// Trains on its patients each round and validates every global model.
    Train,
    /// External validation centre: never trains, scores every global model on its own patients.
    Validate,
}

impl std::str::FromStr for SiteRole {
    type Err = String;

    /// `train` or `validate` (the TOML and command-line spelling).
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "train" => Ok(Self::Train),
            "validate" => Ok(Self::Validate),
            other => Err(format!("'{other}' is not a role: use train or validate")),
        }
    }
}

impl std::fmt::Display for SiteRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Validate => "validate",
        })
    }
}

/// One site as the study knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteEntry {
    pub id: String,
    pub role: SiteRole,
}

/// TLS material: this party's certificate and key, and the study CA that must have signed the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// `aggregator.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// The study's id (also in every site's config; salts the secure-aggregation keys).
    pub study: String,
    /// Address to listen on for nodes, e.g. "0.0.0.0:50051".
    pub listen: String,
    /// Folder where committed rounds (global models, state, metrics) are kept.
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    /// Every site of the study and its role.
    pub sites: Vec<SiteEntry>,
    /// The initial global model (a checkpoint from `fedlnm-node init-model`, or one pretrained
    /// elsewhere), committed as version 0 when the state folder has no committed round yet.
    #[serde(default)]
    pub initial_model: Option<PathBuf>,
    /// Address of the plain-HTTP Prometheus `/metrics` endpoint (keep it on an internal interface),
    /// e.g. "127.0.0.1:9464"; none when absent.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub rounds: RoundSettings,
    /// Differential privacy of the model updates (`[privacy]`; off by default).
    #[serde(default)]
    pub privacy: PrivacySettings,
    /// The training plan sent to every training site each round (`[train]`, the same keys as in a
    /// model.toml; `epochs` are the local epochs per round).
    #[serde(default)]
    pub train: crate::model_config::TrainPlan,
    /// The study's analyses of clinical factors (`[[analysis]]`, federated odds ratios), run after
    /// the last round.
    #[serde(default, rename = "analysis")]
    pub analyses: Vec<crate::analysis::AnalysisConfig>,
}

/// `[privacy]` of `aggregator.toml`: differential privacy of what the aggregator learns from the
/// training rounds (site-level: one site's whole update is what is protected).
///
/// With `noise_multiplier` z > 0 each training site clips its delta to L2 norm `clip_norm` (C), the
/// sites are weighted equally, and each adds discrete Gaussian noise in the fixed-point domain before
/// masking, sized so that the masked sum of at least `min_sites` sites carries noise of standard
/// deviation at least z·C per weight (distributed discrete Gaussian, Kairouz, Liu & Steinke 2021).
/// The aggregator reports the (ε, δ) spent per round and over the study (Rényi DP accountant).
/// Requires secure aggregation: without it the aggregator would see each site's noisy update alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// Noise standard deviation on the sum over the clipping norm (z); 0 turns the noise off.
    pub noise_multiplier: f64,
    /// L2 norm each training site clips its delta to (the sensitivity of the sum to one site).
    pub clip_norm: f64,
    /// The δ of the reported (ε, δ) guarantee.
    pub delta: f64,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            noise_multiplier: 0.0,
            clip_norm: 1.0,
            delta: 1e-5,
        }
    }
}

impl PrivacySettings {
    /// Whether the study adds noise.
    #[must_use]
    pub fn is_on(&self) -> bool {
        self.noise_multiplier > 0.0
    }
}

/// Where the model runs: `device` in node.toml and `--device` on the node's command line, and the
/// backend that `train` dispatches to. Written "cpu" or "cuda" (TOML, `Display`, `FromStr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    /// The CPU (burn's Flex backend, all cores).
    #[default]
    Cpu,
    /// The first NVIDIA GPU (burn-cuda; needs a node built with the `cuda` feature).
    Cuda,
}

impl ComputeDevice {
    /// Every device, in the order a help text lists them.
    pub const ALL: [Self; 2] = [Self::Cpu, Self::Cuda];

    /// The device's name in node.toml and on the command line.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ComputeDevice {
    type Err = UnknownDevice;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|device| device.name() == name)
            .ok_or_else(|| UnknownDevice(name.to_owned()))
    }
}

/// A device name that is neither "cpu" nor "cuda".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device '{0}' (expected cpu or cuda)")]
pub struct UnknownDevice(pub String);

/// A site or study id that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid site id (1-64 letters, digits, '-' or '_')")]
pub struct InvalidSiteId(pub String);

/// A site id: 1 to 64 of ASCII letters, digits, '-' and '_'.
///
/// # Errors
/// [`InvalidSiteId`].
pub fn validate_site_id(id: &str) -> Result<(), InvalidSiteId> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidSiteId(id.to_owned()))
    }
}

impl AggregatorConfig {
    /// The plan a training site gets for `round`: `[train]` as configured, or its stretch of one
    /// cosine across the rounds (`rounds.learning_rate_schedule`).
    #[must_use]
    pub fn plan_for_round(&self, round: u64) -> crate::model_config::TrainPlan {
        match self.rounds.learning_rate_schedule {
            LearningRateSchedule::EachRound => self.train.clone(),
            LearningRateSchedule::AcrossRounds => self.train.for_round(round, self.rounds.rounds),
        }
    }

    /// Reads and validates `aggregator.toml`; relative paths become relative to its folder.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = read_toml(file)?;
        let invalid = |key: &str, problem: String| ConfigError::invalid(key, problem).in_file(file);
        validate_site_id(&config.study).map_err(|p| invalid("study", p.to_string()))?;
        config
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid("listen", e.to_string()))?;
        if config.sites.is_empty() {
            return Err(invalid("sites", "the study lists no site".to_owned()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, site) in config.sites.iter().enumerate() {
            validate_site_id(&site.id).map_err(|p| invalid(&format!("sites[{index}].id"), p.to_string()))?;
            if !seen.insert(site.id.clone()) {
                return Err(invalid(
                    &format!("sites[{index}].id"),
                    format!("site '{}' is listed twice", site.id),
                ));
            }
        }
        if config.sites.iter().all(|site| site.role != SiteRole::Train) {
            return Err(invalid("sites", "the study has no training site".to_owned()));
        }
        if let Some(address) = &config.metrics_listen {
            address
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("metrics_listen", e.to_string()))?;
        }
        let rounds = &config.rounds;
        let n_train = config.sites.iter().filter(|s| s.role == SiteRole::Train).count();
        if rounds.rounds == 0 {
            return Err(invalid("rounds.rounds", "must be at least 1".to_owned()));
        }
        if rounds.min_sites == 0 || rounds.min_sites > n_train {
            return Err(invalid(
                "rounds.min_sites",
                format!(
                    "{} with {n_train} training sites: must be 1..={n_train}",
                    rounds.min_sites
                ),
            ));
        }
        if rounds.secure_aggregation && (n_train < 2 || 2 * rounds.min_sites <= n_train) {
            return Err(invalid(
                "rounds.min_sites",
                format!(
                    "secure aggregation needs at least 2 training sites and min_sites > half of them \
                     (the Shamir threshold): {} of {n_train}",
                    rounds.min_sites
                ),
            ));
        }
        if rounds.secure_aggregation {
            rounds
                .threat_model
                .secure_aggregation_graph(n_train, rounds.min_sites, &rounds.secure_aggregation_graph)
                .map_err(|problem| invalid("rounds.secure_aggregation_graph", problem))?;
        }
        for (key, value) in [
            ("rounds.round_deadline_s", rounds.round_deadline_s),
            ("rounds.stage_timeout_s", rounds.stage_timeout_s),
            ("rounds.validation_deadline_s", rounds.validation_deadline_s),
            ("rounds.long_poll_s", rounds.long_poll_s),
            ("rounds.transfer_idle_s", rounds.transfer_idle_s),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1 second".to_owned()));
            }
        }
        // What happens within a round must fit in it: a stage or a silent upload that may outlast the
        // round's deadline would hold it past that deadline.
        for (key, value) in [
            ("rounds.stage_timeout_s", rounds.stage_timeout_s),
            ("rounds.transfer_idle_s", rounds.transfer_idle_s),
        ] {
            if value > rounds.round_deadline_s {
                return Err(invalid(
                    key,
                    format!(
                        "{value} s is longer than the round itself (rounds.round_deadline_s = {} s)",
                        rounds.round_deadline_s
                    ),
                ));
            }
        }
        if !(1..=1024).contains(&rounds.max_concurrent_uploads) {
            return Err(invalid(
                "rounds.max_concurrent_uploads",
                format!("must be 1 to 1024, not {}", rounds.max_concurrent_uploads),
            ));
        }
        if !(rounds.server_learning_rate > 0.0 && rounds.server_learning_rate <= 10.0) {
            return Err(invalid(
                "rounds.server_learning_rate",
                format!(
                    "must be in (0, 10] (1: FedAvg), not {}",
                    rounds.server_learning_rate
                ),
            ));
        }
        if !(rounds.max_delta_norm > 0.0 && rounds.max_delta_norm.is_finite()) {
            return Err(invalid(
                "rounds.max_delta_norm",
                "must be a positive number".to_owned(),
            ));
        }
        let privacy = &config.privacy;
        if !(privacy.noise_multiplier >= 0.0 && privacy.noise_multiplier.is_finite()) {
            return Err(invalid(
                "privacy.noise_multiplier",
                format!("{} is not a number ≥ 0", privacy.noise_multiplier),
            ));
        }
        if privacy.is_on() {
            if !rounds.secure_aggregation {
                return Err(invalid(
                    "privacy.noise_multiplier",
                    "differential privacy needs rounds.secure_aggregation = true: the noise is split \
                     among the sites, and only the masked sum carries all of it"
                        .to_owned(),
                ));
            }
            if !(privacy.clip_norm > 0.0 && privacy.clip_norm.is_finite()) {
                return Err(invalid(
                    "privacy.clip_norm",
                    format!("{} is not a positive number", privacy.clip_norm),
                ));
            }
            if !(privacy.delta > 0.0 && privacy.delta < 1.0) {
                return Err(invalid(
                    "privacy.delta",
                    format!("{} is not in (0, 1)", privacy.delta),
                ));
            }
        }
        config
            .train
            .validate()
            .map_err(|e| invalid("train", e.to_string()))?;
        crate::analysis::check_all(&config.analyses).map_err(|(key, problem)| invalid(&key, problem))?;
        let base = file.parent().unwrap_or(Path::new("."));
        config.state_dir = base.join(&config.state_dir);
        config.tls = config.tls.relative_to(base);
        config.initial_model = config.initial_model.map(|path| base.join(path));
        Ok(config)
    }

    /// The role of a site, if the study knows it.
    #[must_use]
    pub fn role_of(&self, site: &str) -> Option<SiteRole> {
        self.sites.iter().find(|s| s.id == site).map(|s| s.role)
    }
}

impl TlsFiles {
    fn relative_to(self, base: &Path) -> Self {
        Self {
            certificate: base.join(self.certificate),
            key: base.join(self.key),
            ca: base.join(self.ca),
        }
    }
}

/// Writes a configuration as TOML.
pub fn write_toml(file: &Path, value: &impl Serialize) -> Result<(), ConfigError> {
    let text = toml::to_string_pretty(value).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(file, text).map_err(|source| ConfigError::Unwritable {
        file: file.to_path_buf(),
        source,
    })
}

/// Reads a TOML file into `T` (a regular file, UTF-8); errors name the file.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let bytes = crate::files::read_regular(file).map_err(|source| ConfigError::Unreadable {
        file: file.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: "not UTF-8 text".to_owned(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const AGGREGATOR: &str = r#"
study = "thyroid"
listen = "127.0.0.1:50051"
state_dir = "state"
[tls]
certificate = "server.pem"
key = "server.key"
ca = "ca.pem"
[[sites]]
id = "S1"
role = "train"
[[sites]]
id = "S4"
role = "validate"
[[sites]]
id = "S2"
role = "train"
"#;

    #[test]
    fn loads_and_resolves_paths_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = AggregatorConfig::load(&write(dir.path(), "aggregator.toml", AGGREGATOR)).unwrap();
        assert_eq!(config.state_dir, dir.path().join("state"));
        assert_eq!(config.tls.ca, dir.path().join("ca.pem"));
        assert_eq!(config.role_of("S4"), Some(SiteRole::Validate));
        assert_eq!(config.role_of("S9"), None);
    }

    #[test]
    fn the_learning_rate_schedule_is_read_and_gives_each_round_its_plan() {
        let dir = tempfile::tempdir().unwrap();
        let default = AggregatorConfig::load(&write(dir.path(), "a.toml", AGGREGATOR)).unwrap();
        assert_eq!(
            default.rounds.learning_rate_schedule,
            LearningRateSchedule::EachRound
        );
        assert_eq!(default.plan_for_round(3), default.train);
        let text =
            format!("{AGGREGATOR}\n[rounds]\nrounds = 4\nlearning_rate_schedule = \"across_rounds\"\n");
        let across = AggregatorConfig::load(&write(dir.path(), "b.toml", &text)).unwrap();
        let plans: Vec<_> = (1..=4).map(|r| across.plan_for_round(r)).collect();
        assert_eq!(plans[0].learning_rate, across.train.learning_rate);
        assert_eq!(plans[3], across.train.for_round(4, 4));
        assert!(plans.windows(2).all(|p| p[1].learning_rate < p[0].learning_rate));
        assert_eq!(default.rounds.server_learning_rate, 1.0);
        for eta in ["0.0", "-1.0", "11.0", "nan"] {
            let text = format!("{AGGREGATOR}\n[rounds]\nserver_learning_rate = {eta}\n");
            let error = AggregatorConfig::load(&write(dir.path(), "eta.toml", &text))
                .unwrap_err()
                .to_string();
            assert!(error.contains("rounds.server_learning_rate"), "{error}");
        }
        let bad = text.replace("across_rounds", "sometimes");
        let error = AggregatorConfig::load(&write(dir.path(), "c.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("learning_rate_schedule") || error.contains("sometimes"),
            "{error}"
        );
    }

    #[test]
    fn the_normalisation_statistics_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let default = AggregatorConfig::load(&write(dir.path(), "a.toml", AGGREGATOR)).unwrap();
        assert_eq!(
            default.rounds.normalisation_statistics,
            NormalisationStatistics::Global
        );
        let text = format!("{AGGREGATOR}\n[rounds]\nnormalisation_statistics = \"site\"\n");
        let site = AggregatorConfig::load(&write(dir.path(), "b.toml", &text)).unwrap();
        assert_eq!(
            site.rounds.normalisation_statistics,
            NormalisationStatistics::Site
        );
        let bad = text.replace("\"site\"", "\"local\"");
        let error = AggregatorConfig::load(&write(dir.path(), "c.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("normalisation_statistics") && error.contains("local"),
            "{error}"
        );
    }

    #[test]
    fn the_example_configs_load() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let aggregator = AggregatorConfig::load(&configs.join("aggregator.toml")).unwrap();
        assert_eq!(aggregator.role_of("S4"), Some(SiteRole::Validate));
        // The example documents the defaults.
        assert_eq!(aggregator.rounds, RoundSettings::default());
        assert_eq!(
            aggregator.initial_model,
            Some(configs.join("initial-model.safetensors"))
        );
        assert_eq!(aggregator.train.epochs, 2);
        let node = NodeConfig::load(&configs.join("node.toml")).unwrap();
        assert_eq!((node.validation_fraction, node.device), (0.2, ComputeDevice::Cpu));
        assert_eq!(
            (node.site.as_str(), node.study.as_str()),
            ("S1", aggregator.study.as_str())
        );
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (AGGREGATOR.replace("127.0.0.1:50051", "nowhere"), "key 'listen'"),
            (
                AGGREGATOR.replace("id = \"S4\"", "id = \"S1\""),
                "key 'sites[1].id'",
            ),
            (
                AGGREGATOR.replace("id = \"S4\"", "id = \"S 4\""),
                "not a valid site id",
            ),
            (
                AGGREGATOR.replace("role = \"validate\"", "role = \"observer\""),
                "unknown variant `observer`",
            ),
            (
                AGGREGATOR.replace("state_dir", "state_folder"),
                "unknown field `state_folder`",
            ),
            (
                format!("{AGGREGATOR}\n[rounds]\nmin_sites = 3\n"),
                "key 'rounds.min_sites'",
            ),
            (
                format!("{AGGREGATOR}\n[rounds]\nround_deadline_s = 60\nstage_timeout_s = 600\n"),
                "key 'rounds.stage_timeout_s': 600 s is longer than the round itself",
            ),
            (
                format!("{AGGREGATOR}\n[rounds]\nround_deadline_s = 60\nstage_timeout_s = 30\n"),
                "key 'rounds.transfer_idle_s': 120 s is longer than the round itself",
            ),
            (
                format!("{AGGREGATOR}\n[rounds]\nround_deadline_s = 0\n"),
                "key 'rounds.round_deadline_s'",
            ),
            (
                format!(
                    "{AGGREGATOR}\n[rounds]\nsecure_aggregation_graph = {{ harary = {{ degree = 3, \
                     dropout_fraction = 0.1, corrupt_fraction = 0.1 }} }}\n"
                ),
                "key 'rounds.secure_aggregation_graph': degree 3",
            ),
            (format!("{AGGREGATOR}\n[train]\nbatch_size = 1\n"), "key 'train'"),
            (
                format!("metrics_listen = \"x\"\n{AGGREGATOR}"),
                "key 'metrics_listen'",
            ),
        ];
        for (text, expected) in cases {
            let error = AggregatorConfig::load(&write(dir.path(), "bad.toml", &text))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected) && error.contains("bad.toml"), "{error}");
        }
    }

    #[test]
    fn cross_validation_folds_are_checked() {
        let example =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node.toml"))
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let with =
            |table: &str| NodeConfig::load(&write(dir.path(), "node.toml", &format!("{example}\n{table}")));
        let node = with("[cross_validation]\nfolds = 5\nfold = 4\n").unwrap();
        assert_eq!(
            node.cross_validation,
            Some(CrossValidationFold { folds: 5, fold: 4 })
        );
        for (table, expected) in [
            (
                "[cross_validation]\nfolds = 1\nfold = 0\n",
                "key 'cross_validation.folds': 1 folds",
            ),
            (
                "[cross_validation]\nfolds = 5\nfold = 5\n",
                "key 'cross_validation.fold': fold 5 does not exist",
            ),
        ] {
            let error = with(table).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn device_names_agree_between_toml_display_and_from_str() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Holder {
            device: ComputeDevice,
        }
        for (device, name) in [(ComputeDevice::Cpu, "cpu"), (ComputeDevice::Cuda, "cuda")] {
            assert_eq!(device.to_string(), name);
            assert_eq!(name.parse::<ComputeDevice>(), Ok(device));
            let text = format!("device = \"{name}\"\n");
            assert_eq!(toml::to_string(&Holder { device }).unwrap(), text);
            assert_eq!(toml::from_str::<Holder>(&text).unwrap(), Holder { device });
        }
        let error = "gpu".parse::<ComputeDevice>().unwrap_err();
        assert_eq!(error.to_string(), "unknown device 'gpu' (expected cpu or cuda)");
    }
}
