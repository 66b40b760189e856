//! Provisioning a study: its certificate authority, the aggregator's server certificate and one startup
//! kit per site (certificate with the site id, private key with mode 0600, CA certificate, `node.toml`).
//!
//! Keys are ECDSA P-256 made with ring (through rcgen). A site's id is in its certificate's subject CN
//! and in a URI SAN `urn:fedlnm:site:<id>`; the aggregator authorizes every call by that id. Nothing is
//! ever overwritten: provisioning into a non-empty folder, or adding a site that exists, is an error.

use fedlnm_shared::config::{
    AggregatorConfig, ConfigError, NodeConfig, SiteEntry, SiteRole, TlsFiles, validate_site_id, write_toml,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

pub use fedlnm_shared::tls::SITE_URI_PREFIX;

/// File names inside a study folder.
pub const CA_CERT: &str = "ca/ca.pem";
pub const CA_KEY: &str = "ca/ca.key";
pub const AGGREGATOR_DIR: &str = "aggregator";
pub const SITES_DIR: &str = "sites";

/// What can go wrong while provisioning. Names the file or the site.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    InvalidSite(#[from] fedlnm_shared::config::InvalidSiteId),
    #[error("site '{0}' is listed twice")]
    DuplicateSite(String),
    #[error("{} already exists and is not empty: provisioning never overwrites a study", .0.display())]
    NotEmpty(PathBuf),
    #[error("site '{site}' already has a startup kit at {}", dir.display())]
    SiteExists { site: String, dir: PathBuf },
    #[error("site '{0}' is not part of this study (see the [[sites]] of aggregator.toml)")]
    UnknownSite(String),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The study certificate authority, loaded or freshly made.
pub struct StudyCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
}

/// A certificate and its private key, PEM-encoded.
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    #[must_use]
    pub fn days_from_now(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

impl StudyCa {
    /// A new CA for `study`, valid for `validity`.
    pub fn create(study: &str, validity: Validity) -> Result<Self, ProvisionError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("fedlnm study CA: {study}"));
        params.distinguished_name.push(DnType::OrganizationName, "fedlnm");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem,
            issuer: Issuer::new(params, key),
            key_pem,
        })
    }

    /// Loads the CA of an existing study folder.
    pub fn load(study_dir: &Path) -> Result<Self, ProvisionError> {
        let cert_pem = read(&study_dir.join(CA_CERT))?;
        let key_pem = read(&study_dir.join(CA_KEY))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self {
            cert_pem,
            issuer,
            key_pem,
        })
    }

    /// The CA certificate (PEM), which every party trusts.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The aggregator's server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        hosts: &[String],
        validity: Validity,
    ) -> Result<IssuedCertificate, ProvisionError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for host in hosts {
            params
                .subject_alt_names
                .push(match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.as_str().try_into()?),
                });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "fedlnm aggregator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, validity)
    }

    /// A site's client certificate: the site id in the CN and in a `urn:fedlnm:site:<id>` URI SAN.
    pub fn issue_site(&self, site: &str, validity: Validity) -> Result<IssuedCertificate, ProvisionError> {
        validate_site_id(site).map_err(ProvisionError::InvalidSite)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names.push(SanType::URI(
            format!("{SITE_URI_PREFIX}{site}").as_str().try_into()?,
        ));
        params.distinguished_name.push(DnType::CommonName, site);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        validity: Validity,
    ) -> Result<IssuedCertificate, ProvisionError> {
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What `provision` makes.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    pub study: String,
    pub train_sites: Vec<String>,
    pub validate_sites: Vec<String>,
    /// Host names / IP addresses in the aggregator's certificate (the first is what nodes dial).
    pub aggregator_hosts: Vec<String>,
    pub port: u16,
    pub valid_days: i64,
    pub out: PathBuf,
}

/// Round settings for a new study: secure aggregation with the smallest majority of the training
/// sites as threshold and quorum (plain FedAvg when there is a single training site), which tolerates
/// one dropout from three training sites on; deadlines in minutes, for the small models and few local
/// epochs of a first study (`aggregator.toml` says how to scale them).
fn default_rounds(n_train: usize) -> fedlnm_shared::config::RoundSettings {
    fedlnm_shared::config::RoundSettings {
        min_sites: n_train / 2 + 1,
        secure_aggregation: n_train >= 2,
        round_deadline_s: 3600,
        stage_timeout_s: 300,
        validation_deadline_s: 1800,
        ..fedlnm_shared::config::RoundSettings::default()
    }
}

/// Local epochs per round in a new study (the training plan's default is for central training).
const DEFAULT_LOCAL_EPOCHS: usize = 2;

/// Where a new study's aggregator serves `/metrics`: loopback only (no TLS on that port).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// What the operator should know about a study's configuration (printed by `provision`).
#[must_use]
pub fn warnings(config: &AggregatorConfig) -> Vec<String> {
    let n_train = config.sites.iter().filter(|s| s.role == SiteRole::Train).count();
    let mut warnings = Vec::new();
    let rounds = &config.rounds;
    let needed = if rounds.secure_aggregation {
        rounds.threat_model.threshold(n_train, rounds.min_sites)
    } else {
        rounds.min_sites
    };
    if n_train >= 1 && needed >= n_train {
        let why = if needed > rounds.min_sites {
            format!(
                "secure aggregation against a malicious aggregator needs more than two thirds of the \
                 training sites at every stage: four or more tolerate one dropout, or set \
                 rounds.threat_model = \"honest-but-curious-aggregator\" (more than half; min_sites = {})",
                rounds.min_sites
            )
        } else {
            format!(
                "min_sites = {}: three or more training sites tolerate one dropout",
                rounds.min_sites
            )
        };
        warnings.push(format!(
            "with {n_train} training site(s) every round needs all of them: a single site that drops \
             out stops the round ({why})"
        ));
    }
    if config.initial_model.is_none() {
        warnings.push(
            "aggregator.toml names no initial_model yet: create one with `fedlnm-node init-model` and set \
             `initial_model` before `serve`"
                .to_owned(),
        );
    }
    warnings
}

/// Writes `aggregator.toml` with a comment above each setting saying what it does.
///
/// # Errors
/// The file cannot be written.
pub fn write_aggregator_toml(file: &Path, config: &AggregatorConfig) -> Result<(), ProvisionError> {
    let text = toml::to_string_pretty(config).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(file, commented(&text)).map_err(|source| {
        ProvisionError::Config(ConfigError::Unwritable {
            file: file.to_path_buf(),
            source,
        })
    })
}

/// The comment above each setting of a provisioned `aggregator.toml`, one per line: `key`, `section.key`
/// or `[section]` (its header), a colon, the comment.
const COMMENTS: &str = "\
study: The study's id (in every site's node.toml too).
listen: Address for the sites' gRPC over mutual TLS: the interface that faces the hospitals (0.0.0.0: all).
state_dir: Committed rounds (global models, records, metrics), relative to this file.
initial_model: The initial global model (`fedlnm-node init-model`), committed as round 0.
metrics_listen: Prometheus /metrics over plain HTTP: keep it on loopback or an internal interface.
[tls]: This server's certificate and key, and the study CA every site certificate must come from.
[sites]: A site of the study and its role (train, or validate: scores every model, never trains).
[rounds]: How the study runs its rounds.
rounds.rounds: Federated rounds.
rounds.min_sites: Training sites a round needs (secure aggregation's threshold is at least this, and > half or > 2/3 by threat_model).
rounds.round_deadline_s: Seconds a round waits for training updates (scale with model size and epochs).
rounds.stage_timeout_s: Seconds each secure-aggregation stage waits for missing sites (at most round_deadline_s).
rounds.validation_deadline_s: Seconds the aggregator waits for the sites' validation metrics.
rounds.long_poll_s: Seconds a site's request for a task waits (below any proxy idle timeout).
rounds.secure_aggregation: The aggregator only ever sees the sum of masked updates.
rounds.threat_model: malicious-aggregator (sites sign keys and survivor sets; > 2/3 of sites per stage) or honest-but-curious-aggregator.
rounds.fedbn: FedBN: normalisation layers stay at each site.
rounds.learning_rate_schedule: each_round (every round runs the [train] learning-rate decay afresh) or across_rounds (one decay over all the rounds).
rounds.server_learning_rate: The new model is w + this times the sites' average change (1: FedAvg).
rounds.normalisation_statistics: global (sites score the model's own normalisation statistics) or site (each site re-estimates them on its own pictures first, AdaBN).
rounds.max_delta_norm: Largest L2 norm of a site's weight delta (each node checks its own).
rounds.max_concurrent_uploads: Updates in memory at once, received or waiting to be summed (memory: this many updates, whatever the number of sites).
rounds.transfer_idle_s: Seconds an upload may stall (no data) before it is refused; slow links that keep sending are fine.
[privacy]: Differential privacy of the training rounds (needs secure aggregation).
privacy.noise_multiplier: Noise on the masked sum over the clipping norm; 0: no noise (the default).
privacy.clip_norm: L2 norm each training site clips its delta to.
privacy.delta: The delta of the (epsilon, delta) guarantee the aggregator reports.
[train]: The training plan sent to every training site each round.
train.epochs: Local epochs per round.
train.batch_size: Patients per step.
train.learning_rate: Peak learning rate of AdamW.
train.proximal_mu: FedProx proximal coefficient (0: FedAvg local training).
train.seed: Seed of shuffling and augmentation (each site and round derives its own).
[analysis]: An analysis of clinical factors after the last round: crude and adjusted odds ratios, each site sending only sums of its rows.
analysis.name: The analysis's name (its result is state/analyses/NAME.json).
analysis.outcome: lnm, lnm_central or lnm_lateral.
analysis.terms: Fields of the adjusted model (see docs/analyses.md); each also gets a crude model.
analysis.min_site_rows: Disclosure threshold: a site with fewer labelled patients refuses to take part.
analysis.max_iterations: Newton steps at most per fit.
[analysis.reference]: Reference level of each categorical term (default: its first level).
";

/// The entries of [`COMMENTS`]: (section, key, comment), key empty for a section header.
fn comments() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    COMMENTS.lines().filter_map(|line| {
        let (label, comment) = line.split_once(": ")?;
        let (section, key) = match label.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(section) => (section, ""),
            None => label.rsplit_once('.').unwrap_or(("", label)),
        };
        Some((section, key, comment))
    })
}

fn commented(text: &str) -> String {
    let mut section = String::new();
    let mut out = String::from(
        "# fedlnm aggregator configuration, written by `fedlnm-aggregator provision`.\n# Each setting is \
         checked at start; an error names the key.\n\n",
    );
    for line in text.lines() {
        let trimmed = line.trim();
        let (header, key) = if let Some(name) = trimmed.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"))
        {
            (Some(name.to_owned()), "")
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            (Some(name.to_owned()), "")
        } else {
            (None, trimmed.split(" =").next().unwrap_or_default())
        };
        if let Some(name) = header {
            // A table of an array is commented once, at its first entry.
            let repeated = name == section && trimmed.starts_with("[[");
            section = name;
            if repeated {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        }
        if let Some((_, _, comment)) =
            comments().find(|(s, k, _)| *s == section && *k == key && (header_line(trimmed) == k.is_empty()))
        {
            out.push_str("# ");
            out.push_str(comment);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn header_line(line: &str) -> bool {
    line.starts_with('[')
}

/// Provisions a study into `options.out`: `ca/`, `aggregator/` (certificate, key, CA, `aggregator.toml`)
/// and `sites/<id>/` startup kits. Fails, writing nothing, if the folder is not empty.
pub fn provision(options: &ProvisionOptions) -> Result<AggregatorConfig, ProvisionError> {
    validate_site_id(&options.study).map_err(ProvisionError::InvalidSite)?;
    let mut sites = Vec::new();
    for (ids, role) in [
        (&options.train_sites, SiteRole::Train),
        (&options.validate_sites, SiteRole::Validate),
    ] {
        for id in ids {
            validate_site_id(id).map_err(ProvisionError::InvalidSite)?;
            if sites.iter().any(|s: &SiteEntry| &s.id == id) {
                return Err(ProvisionError::DuplicateSite(id.clone()));
            }
            sites.push(SiteEntry { id: id.clone(), role });
        }
    }
    if options.out.exists()
        && std::fs::read_dir(&options.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ProvisionError::NotEmpty(options.out.clone()));
    }
    let validity = Validity::days_from_now(options.valid_days);
    let ca = StudyCa::create(&options.study, validity)?;
    write_file(&options.out.join(CA_CERT), ca.cert_pem(), false)?;
    write_file(&options.out.join(CA_KEY), &ca.key_pem, true)?;

    let server = ca.issue_server(&options.aggregator_hosts, validity)?;
    let aggregator_dir = options.out.join(AGGREGATOR_DIR);
    write_file(&aggregator_dir.join("server.pem"), &server.cert_pem, false)?;
    write_file(&aggregator_dir.join("server.key"), &server.key_pem, true)?;
    write_file(&aggregator_dir.join("ca.pem"), ca.cert_pem(), false)?;
    let config = AggregatorConfig {
        study: options.study.clone(),
        listen: format!("0.0.0.0:{}", options.port),
        state_dir: PathBuf::from("state"),
        tls: TlsFiles {
            certificate: "server.pem".into(),
            key: "server.key".into(),
            ca: "ca.pem".into(),
        },
        sites: sites.clone(),
        initial_model: None,
        metrics_listen: Some(DEFAULT_METRICS_LISTEN.to_owned()),
        rounds: default_rounds(options.train_sites.len()),
        privacy: fedlnm_shared::config::PrivacySettings::default(),
        train: fedlnm_shared::model_config::TrainPlan {
            epochs: DEFAULT_LOCAL_EPOCHS,
            ..fedlnm_shared::model_config::TrainPlan::default()
        },
        analyses: vec![fedlnm_shared::analysis::AnalysisConfig::registered()],
    };
    write_aggregator_toml(&aggregator_dir.join("aggregator.toml"), &config)?;
    let url = aggregator_url(options);
    for site in &sites {
        write_site_kit(&ca, &options.out, &options.study, &site.id, &url, validity)?;
    }
    Ok(config)
}

/// Issues one more startup kit in an existing study folder and adds the site to `aggregator.toml`.
/// Touches no other site's files.
pub fn add_site(
    study_dir: &Path,
    site: &str,
    role: SiteRole,
    valid_days: i64,
) -> Result<PathBuf, ProvisionError> {
    validate_site_id(site).map_err(ProvisionError::InvalidSite)?;
    let config_file = study_dir.join(AGGREGATOR_DIR).join("aggregator.toml");
    let mut config = AggregatorConfig::load(&config_file)?;
    let kit = study_dir.join(SITES_DIR).join(site);
    if config.role_of(site).is_some() || kit.exists() {
        return Err(ProvisionError::SiteExists {
            site: site.to_owned(),
            dir: kit,
        });
    }
    // The URL the other kits use, from any existing node.toml, so the new site dials the same address.
    let url = existing_aggregator_url(study_dir, &config)
        .unwrap_or_else(|| format!("https://localhost:{}", port_of(&config.listen)));
    let ca = StudyCa::load(study_dir)?;
    write_site_kit(
        &ca,
        study_dir,
        &config.study,
        site,
        &url,
        Validity::days_from_now(valid_days),
    )?;
    // `load` resolved paths against the file; write them back relative, as provisioned.
    config.sites.push(SiteEntry {
        id: site.to_owned(),
        role,
    });
    config.state_dir = PathBuf::from("state");
    config.tls = TlsFiles {
        certificate: "server.pem".into(),
        key: "server.key".into(),
        ca: "ca.pem".into(),
    };
    write_aggregator_toml(&config_file, &config)?;
    Ok(kit)
}

/// Issues a new certificate and key for a site of the study (its certificate expiring, or its key
/// lost) into `out`, a new folder: `site.pem`, `site.key` (mode 0600) and `ca.pem`, for the hospital to
/// put in place of the same files of its kit. The study, its other sites and the old kit are untouched;
/// the old certificate stays valid until it expires.
pub fn renew_site(study_dir: &Path, site: &str, valid_days: i64, out: &Path) -> Result<(), ProvisionError> {
    let config = AggregatorConfig::load(&study_dir.join(AGGREGATOR_DIR).join("aggregator.toml"))?;
    if config.role_of(site).is_none() {
        return Err(ProvisionError::UnknownSite(site.to_owned()));
    }
    if out.exists() {
        return Err(ProvisionError::NotEmpty(out.to_path_buf()));
    }
    let ca = StudyCa::load(study_dir)?;
    let issued = ca.issue_site(site, Validity::days_from_now(valid_days))?;
    write_file(&out.join("site.pem"), &issued.cert_pem, false)?;
    write_file(&out.join("site.key"), &issued.key_pem, true)?;
    write_file(&out.join("ca.pem"), ca.cert_pem(), false)?;
    tracing::info!(site, out = %out.display(), valid_days, "renewed certificate written");
    Ok(())
}

fn write_site_kit(
    ca: &StudyCa,
    study_dir: &Path,
    study: &str,
    site: &str,
    url: &str,
    validity: Validity,
) -> Result<(), ProvisionError> {
    let kit = study_dir.join(SITES_DIR).join(site);
    let issued = ca.issue_site(site, validity)?;
    write_file(&kit.join("site.pem"), &issued.cert_pem, false)?;
    write_file(&kit.join("site.key"), &issued.key_pem, true)?;
    write_file(&kit.join("ca.pem"), ca.cert_pem(), false)?;
    let node = NodeConfig {
        site: site.to_owned(),
        study: study.to_owned(),
        aggregator: url.to_owned(),
        aggregator_name: None,
        tls: TlsFiles {
            certificate: "site.pem".into(),
            key: "site.key".into(),
            ca: "ca.pem".into(),
        },
        data: PathBuf::from("data"),
        work_dir: PathBuf::from("work"),
        validation_fraction: 0.2,
        cross_validation: None,
        device: fedlnm_shared::config::ComputeDevice::Cpu,
        model_config_digest: None,
        analysis: fedlnm_shared::analysis::SitePolicy::default(),
    };
    write_toml(&kit.join("node.toml"), &node)?;
    tracing::info!(site, kit = %kit.display(), "startup kit written");
    Ok(())
}

fn aggregator_url(options: &ProvisionOptions) -> String {
    let host = options
        .aggregator_hosts
        .first()
        .map_or("localhost", String::as_str);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("https://{host}:{}", options.port)
}

fn existing_aggregator_url(study_dir: &Path, config: &AggregatorConfig) -> Option<String> {
    config
        .sites
        .iter()
        .find_map(|s| NodeConfig::load(&study_dir.join(SITES_DIR).join(&s.id).join("node.toml")).ok())
        .map(|node| node.aggregator)
}

fn port_of(listen: &str) -> u16 {
    listen.parse::<std::net::SocketAddr>().map_or(50051, |a| a.port())
}

/// Writes a new file (never overwriting), creating its folder; private keys get mode 0600.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), ProvisionError> {
    fedlnm_shared::files::write_new(path, contents.as_bytes(), private).map_err(|source| {
        ProvisionError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn read(path: &Path) -> Result<String, ProvisionError> {
    std::fs::read_to_string(path).map_err(|source| ProvisionError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(out: PathBuf) -> ProvisionOptions {
        ProvisionOptions {
            study: "thyroid".into(),
            train_sites: vec!["S1".into(), "S2".into()],
            validate_sites: vec!["S4".into()],
            aggregator_hosts: vec!["localhost".into(), "127.0.0.1".into()],
            port: 50051,
            valid_days: 30,
            out,
        }
    }

    #[test]
    fn the_provisioned_aggregator_toml_is_commented_and_loads_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("study");
        let mut three = options(out.clone());
        three.train_sites.push("S3".into());
        let config = provision(&three).unwrap();
        let file = out.join(AGGREGATOR_DIR).join("aggregator.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            comments().count(),
            COMMENTS.lines().count(),
            "every line is an entry"
        );
        for (section, key, comment) in comments() {
            let written = config.initial_model.is_some() || key != "initial_model";
            assert!(
                !written || text.contains(&format!("# {comment}\n")),
                "[{section}] {key}: no comment in\n{text}"
            );
        }
        let mut loaded = AggregatorConfig::load(&file).unwrap();
        let base = file.parent().unwrap();
        assert_eq!(loaded.state_dir, base.join("state"));
        loaded.state_dir = config.state_dir.clone();
        loaded.tls = config.tls.clone();
        assert_eq!(
            loaded, config,
            "the commented file loads as the config it was written from"
        );
        assert_eq!(config.train.epochs, DEFAULT_LOCAL_EPOCHS);
        assert_eq!(config.metrics_listen.as_deref(), Some(DEFAULT_METRICS_LISTEN));
        // Three training sites: against a malicious aggregator (the default) every stage needs all
        // three, and provisioning says so and how to tolerate one dropout; against an honest-but-curious
        // one, one may drop out; two: none may.
        assert_eq!(config.rounds.min_sites, 2);
        assert!(
            warnings(&config)
                .iter()
                .any(|w| w.contains("drops out") && w.contains("honest-but-curious-aggregator")),
            "{:?}",
            warnings(&config)
        );
        let mut curious = config.clone();
        curious.rounds.threat_model = fedlnm_shared::config::ThreatModel::HonestButCuriousAggregator;
        assert!(warnings(&curious).iter().all(|w| !w.contains("drops out")));
        let config = provision(&options(dir.path().join("two"))).unwrap();
        assert!(
            warnings(&config).iter().any(|w| w.contains("drops out")),
            "{:?}",
            warnings(&config)
        );
    }

    #[test]
    fn provisions_kits_with_private_keys_and_loadable_configs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("study");
        let config = provision(&options(out.clone())).unwrap();
        assert_eq!(config.role_of("S4"), Some(SiteRole::Validate));
        let loaded = AggregatorConfig::load(&out.join("aggregator/aggregator.toml")).unwrap();
        assert_eq!(loaded.sites, config.sites);
        for site in ["S1", "S2", "S4"] {
            let kit = out.join("sites").join(site);
            let node = NodeConfig::load(&kit.join("node.toml")).unwrap();
            assert_eq!(
                (node.site.as_str(), node.aggregator.as_str()),
                (site, "https://localhost:50051")
            );
            let cert = std::fs::read_to_string(kit.join("site.pem")).unwrap();
            let der = pem_to_der(&cert);
            assert_eq!(fedlnm_shared::tls::site_of_certificate(&der).unwrap(), site);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(kit.join("site.key"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777;
                assert_eq!(
                    mode, 0o600,
                    "{site}'s private key must be readable by its owner only"
                );
            }
        }
    }

    #[test]
    fn never_overwrites_and_adds_one_site_without_touching_others() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("study");
        provision(&options(out.clone())).unwrap();
        assert!(matches!(
            provision(&options(out.clone())),
            Err(ProvisionError::NotEmpty(_))
        ));
        let s1_before = std::fs::read(out.join("sites/S1/site.pem")).unwrap();
        let kit = add_site(&out, "S5", SiteRole::Train, 30).unwrap();
        assert!(kit.join("site.key").is_file());
        assert_eq!(std::fs::read(out.join("sites/S1/site.pem")).unwrap(), s1_before);
        let config = AggregatorConfig::load(&out.join("aggregator/aggregator.toml")).unwrap();
        assert_eq!(config.role_of("S5"), Some(SiteRole::Train));
        assert!(matches!(
            add_site(&out, "S5", SiteRole::Train, 30),
            Err(ProvisionError::SiteExists { .. })
        ));
        assert!(matches!(
            add_site(&out, "bad id", SiteRole::Train, 30),
            Err(ProvisionError::InvalidSite(_))
        ));
    }

    #[test]
    fn duplicate_and_invalid_site_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut duplicate = options(dir.path().join("a"));
        duplicate.validate_sites = vec!["S1".into()];
        assert!(matches!(provision(&duplicate), Err(ProvisionError::DuplicateSite(s)) if s == "S1"));
        let mut invalid = options(dir.path().join("b"));
        invalid.train_sites = vec!["S1/../x".into()];
        assert!(matches!(provision(&invalid), Err(ProvisionError::InvalidSite(_))));
        assert!(
            !dir.path().join("a").exists() && !dir.path().join("b").exists(),
            "nothing written on refusal"
        );
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }
}
