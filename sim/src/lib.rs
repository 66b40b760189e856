//! `fedlnm-sim`: the researcher's one command. A whole multicentre study on this machine, through the
//! production code paths: a throw-away study CA and startup kits (`provision`), synthetic sites with
//! different scanners and case mix, the aggregator (in-process, the same service as
//! `fedlnm-aggregator serve`) and one node per site (the same loop as `fedlnm-node run`), talking real
//! gRPC over mutual TLS 1.3 on loopback; then the study report (`fedlnm-aggregator report`).
//!
//! This is the one crate that links both sides of the federation; the node a hospital installs does
//! not.

pub mod designs;
pub mod methods;
mod plan;
pub mod resume;

use anyhow::{Context as _, bail};
use clap::Parser;
use fedlnm_aggregator::provision::{self, ProvisionOptions};
use fedlnm_aggregator::server::{self, FederationService};
use fedlnm_model::train;
use fedlnm_node::commands::model::{device_parser, write_checkpoint};
use fedlnm_node::commands::site_report::{SiteReportJob, write_site_report};
use fedlnm_shared::config::{
    AggregatorConfig, ComputeDevice, CrossValidationFold, LearningRateSchedule, NodeConfig,
    NormalisationStatistics, write_toml,
};
use fedlnm_shared::model_config::{ConfigFile, Modality};
use fedlnm_shared::synth::{self, OutputFormat, SiteProfile, SynthConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

use plan::{read_model_config, schedule_parser, study_model, study_plan};

/// fedlnm-sim: run a whole simulated multicentre study on this machine: a throw-away certificate
/// authority, synthetic sites with different scanners and case mix, the aggregator and every node
/// talking real mutual-TLS gRPC on loopback, then a results folder (tables and ROC plots).
#[derive(Debug, Clone, Parser)]
#[command(name = "fedlnm-sim", version, about, long_about = None)]
pub struct SimulateArgs {
    /// Output folder (created; must not exist or be empty): study/ (CA, kits, aggregator state),
    /// data/ (synthetic sites), results/ (tables and plots).
    #[arg(long, default_value = "fedlnm-simulation")]
    pub out: PathBuf,
    /// `--design methods`: carry on the run in --out that stopped (a crash, a reboot, Ctrl-C),
    /// given the same arguments: what it finished (the sites, each federated study, each single-shot
    /// model) is reused and the rest made again. Refused, naming what differs, for other arguments.
    #[arg(long)]
    pub resume: bool,
    /// Federated rounds (24: the best external AUC these defaults reach in about 4 minutes on 2
    /// cores; see the README).
    #[arg(long, default_value_t = 24)]
    pub rounds: u64,
    /// Training sites (profiles cycle through tertiary, community, rural).
    #[arg(long, default_value_t = 3)]
    pub train_sites: usize,
    /// External-validation sites (rural profile: another scanner and case mix; they never train).
    #[arg(long, default_value_t = 1)]
    pub validate_sites: usize,
    /// Patients per synthetic site.
    #[arg(long, default_value_t = 500)]
    pub patients: usize,
    /// Model input size in pixels (the tiny ResNet; 64 trains in minutes on 2 cores). The pictures
    /// are generated at twice this, at least 128 px (`quality`'s size at the default).
    #[arg(long, default_value_t = 64)]
    pub image_size: u32,
    /// Width of the tiny ResNet's first stage (channels double per stage).
    #[arg(long, default_value_t = 8)]
    pub base_width: usize,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    pub local_epochs: usize,
    /// Peak learning rate of the local AdamW.
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    /// Plain FedAvg: the aggregator sees each site's delta (default: secure aggregation).
    #[arg(long)]
    pub plain: bool,
    /// FedBN: normalisation layers stay local to each training site.
    #[arg(long)]
    pub fedbn: bool,
    /// The rounds' learning rate: `across-rounds` (one cosine decay over all the rounds, as the
    /// centralised model's over its epochs, so the last rounds settle) or `each-round` (every round's
    /// local training decays from the peak afresh); `rounds.learning_rate_schedule`.
    #[arg(long, value_parser = schedule_parser(), default_value = "across-rounds")]
    pub lr_schedule: LearningRateSchedule,
    /// The server learning rate: each round's model is w + this × the sites' average change (1:
    /// FedAvg; `rounds.server_learning_rate`).
    #[arg(long, default_value_t = 1.0)]
    pub server_lr: f64,
    /// Every site scores each round's model with its own normalisation statistics, re-estimated on
    /// its validation patients' pictures (AdaBN; `rounds.normalisation_statistics = "site"`).
    #[arg(long)]
    pub site_statistics: bool,
    /// FedProx proximal coefficient μ (0: FedAvg local training).
    #[arg(long, default_value_t = 0.0)]
    pub proximal_mu: f64,
    /// Differential privacy: noise on the masked sum over the clipping norm (0: none). Each site
    /// clips its delta to `--clip-norm` and adds its share of discrete Gaussian noise before masking;
    /// the report states the ε spent (at δ = 1e-5).
    #[arg(long, default_value_t = 0.0)]
    pub noise_multiplier: f64,
    /// Differential privacy: the L2 norm each training site clips its delta to.
    #[arg(long, default_value_t = 1.0)]
    pub clip_norm: f64,
    /// Seed of the synthetic data, the initial model and training.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, value_parser = device_parser(), default_value_t = ComputeDevice::Cpu)]
    pub device: ComputeDevice,
    /// The validation design: `single` (one study: internal validation on the training sites'
    /// held-out patients, external on the validate-only sites), `leave-one-site-out` (one study per
    /// site, that site held out as the external site; a random-effects summary of the held-out AUCs),
    /// `k-fold` (`--folds` studies; study j validates on fold j of every training site), or
    /// `model-comparison` (multimodal, image-only and report-only on the same patients; the sites'
    /// paired ΔAUC pooled by random effects).
    #[arg(long, value_enum, default_value_t = Design::Single)]
    pub design: Design,
    /// k of `--design k-fold`.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// The sites: `default` (training sites cycling through the tertiary, community and rural
    /// profiles, all of `--patients`; rural validate-only sites) or `skewed`, a non-IID federation
    /// of three training sites (S1 a referral centre with about 60% LNM on another scanner, S2
    /// community, S3 a small rural site with a quarter of `--patients`) and the rural external site.
    #[arg(long, value_enum, default_value_t = SiteSet::Default)]
    pub sites: SiteSet,
    /// The FedProx μ values `--design methods` compares (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1")]
    pub mu: Vec<f64>,
    /// The federated methods `--design methods` runs, each a whole study (comma-separated):
    /// fedavg-secure, fedavg-plain, fedprox (one study per `--mu`), fedbn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fedavg-secure,fedavg-plain,fedprox,fedbn"
    )]
    pub methods: Vec<FederatedMethod>,
    /// Model and training config (TOML with [model] and [train], e.g. configs/model-quality.toml):
    /// the model of every study (its modality set as the design needs; replaces --base-width, and
    /// the model's input size replaces --image-size's, which still sizes the generated pictures),
    /// and the training: a round's local training takes the file's learning rate, batch size, loss
    /// weights and augmentation, without early stopping or weight averaging; the single-shot models
    /// of `--design methods` train with all of it, early-stopping on the training sites' held-out
    /// patients when the file sets `patience`.
    #[arg(long, value_parser = read_model_config)]
    pub model_config: Option<ConfigFile>,
    /// `--design methods`: also score every model (FedBN aside: its external site already does) with
    /// each scoring site's normalisation statistics re-estimated on that site's own images first
    /// (AdaBN; no label is read): the external site's on its patients, each training site's on its
    /// held-out patients. A row "… + AdaBN" beside each model.
    #[arg(long)]
    pub adabn: bool,
}

/// A federated method of `--design methods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FederatedMethod {
    /// FedAvg with secure aggregation.
    FedavgSecure,
    /// FedAvg, plain aggregation.
    FedavgPlain,
    /// FedProx, one study per `--mu`, with secure aggregation.
    Fedprox,
    /// FedBN (normalisation layers local), with secure aggregation.
    Fedbn,
}

impl FederatedMethod {
    /// Every method, in `--methods`' default order.
    pub const ALL: [Self; 4] = [Self::FedavgSecure, Self::FedavgPlain, Self::Fedprox, Self::Fedbn];
}

/// How a simulation validates the federated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Design {
    /// One study.
    Single,
    /// Three studies on the same sites and patients: multimodal, image-only and report-only; each
    /// site compares multimodal with each single modality on its own patients (paired DeLong) and the
    /// ΔAUCs are pooled by random effects.
    ModelComparison,
    /// One study per site, each holding that site out as its external validation site.
    LeaveOneSiteOut,
    /// k studies, the j-th validating on fold j of every training site's patients.
    KFold,
    /// Federated quality against pooled and single-site training on the same sites: centralised,
    /// each site alone, FedAvg (secure and plain), FedProx for each `--mu`, FedBN; external AUC,
    /// gap to the oracle and to centralised (paired DeLong), by round.
    Methods,
}

/// Which synthetic sites a simulation generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SiteSet {
    Default,
    /// Strong label and scanner skew (see `--sites`).
    Skewed,
}

/// The profiles training sites cycle through.
const CYCLED_PROFILES: [&str; 3] = ["tertiary", "community", "rural"];

/// The simulated study's id.
const STUDY: &str = "simulated-lnm";

/// Where the sites' own reports are, inside the results folder: `sites/<id>/site-report.html`.
pub const SITE_REPORTS_DIR: &str = "sites";

/// What a simulation produced.
#[derive(Debug, Clone)]
pub struct SimulationOutcome {
    pub state_dir: PathBuf,
    pub results_dir: PathBuf,
    pub rounds: u64,
    pub final_digest: String,
    pub seconds: f64,
    /// Each site's node work folder (its own validation records are in `validation/`).
    pub node_work_dirs: Vec<(String, PathBuf)>,
}

impl SimulationOutcome {
    /// The patient scores `site`'s node kept of the final model (its own validation patients), as
    /// `fedlnm-node` keeps them for paired comparisons.
    ///
    /// # Errors
    /// No node of `site`, or its scores file cannot be read.
    pub fn final_scores(
        &self,
        site: &str,
    ) -> anyhow::Result<Vec<fedlnm_node::commands::compare::PatientScore>> {
        let work = self
            .node_work_dirs
            .iter()
            .find(|(id, _)| id == site)
            .map(|(_, work)| work)
            .with_context(|| format!("no node of {site}"))?;
        fedlnm_node::commands::compare::own_scores(work, self.rounds)
    }
}

/// The generator's oracle AUC (of the true LNM probability, multimodal) over all patients of the
/// generated site `site` in `data`, from its summary; `None` when the summary holds none.
///
/// # Errors
/// The summary cannot be read or is not JSON.
fn oracle_auc(data: &Path, site: &str) -> anyhow::Result<Option<f64>> {
    let file = data.join(site).join(synth::SUMMARY_FILE);
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
    )?;
    Ok(summary["oracle_auc"]["multimodal"].as_f64())
}

/// Runs the simulation (its design) and prints where its results are.
///
/// # Errors
/// As [`simulate`], [`designs::leave_one_site_out`], [`designs::k_fold`] and
/// [`designs::model_comparison`].
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    if args.resume && args.design != Design::Methods {
        bail!("--resume carries on a `--design methods` run only (this one's design has no pieces to reuse)");
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // A design of several studies prints what it made: (studies, seconds, page, summary).
    let design = match args.design {
        Design::Single => None,
        Design::LeaveOneSiteOut => Some(runtime.block_on(designs::leave_one_site_out(args))?.printed()),
        Design::KFold => Some(runtime.block_on(designs::k_fold(args))?.printed()),
        Design::ModelComparison => Some(runtime.block_on(designs::model_comparison(args))?.printed()),
        Design::Methods => Some(runtime.block_on(methods::methods(args))?.printed()),
    };
    if let Some(printed) = design {
        println!("{printed}");
        return Ok(());
    }
    let outcome = runtime.block_on(simulate(args))?;
    println!(
        "simulated study finished: {} rounds in {:.0} s; final model SHA-256 {}\nresults: {}",
        outcome.rounds,
        outcome.seconds,
        outcome.final_digest,
        outcome.results_dir.display()
    );
    let summary = outcome.results_dir.join("summary.md");
    if let Ok(text) = std::fs::read_to_string(&summary) {
        println!("\n{text}");
    }
    let oracle = against_oracle(&outcome)?;
    let file = outcome.results_dir.join(ORACLE_FILE);
    std::fs::write(&file, &oracle).with_context(|| format!("cannot write {}", file.display()))?;
    println!("{oracle}");
    Ok(())
}

/// The final model's AUC at each site beside the generator's oracle AUC on the same site (the AUC
/// of the true LNM probability: the ceiling of any model there), in `results/oracle.md`.
pub const ORACLE_FILE: &str = "oracle.md";

/// The table of [`ORACLE_FILE`]: every site's final validation AUC, its oracle AUC and the gap.
///
/// # Errors
/// The final round or a site's generator summary cannot be read.
pub fn against_oracle(outcome: &SimulationOutcome) -> anyhow::Result<String> {
    let store = fedlnm_aggregator::store::RoundStore::open_existing(&outcome.state_dir)?;
    let record = store.load_record(outcome.rounds)?;
    let data = outcome
        .results_dir
        .parent()
        .context("the results folder is inside the output folder")?
        .join("data");
    let mut text = String::from(
        "The final model against the generator's oracle (the AUC of the true LNM probability over all of \
         the site's patients; a training site's AUC is on its held-out patients)\n\n| site | role | AUC (95% CI) | oracle AUC | gap |\n|---|---|---|---:|---:|\n",
    );
    for site in &record.sites {
        let oracle = oracle_auc(&data, &site.site)?;
        let auc = match (site.auc, site.auc_ci_lower, site.auc_ci_upper) {
            (Some(a), Some(l), Some(u)) => format!("{a:.3} ({l:.3}–{u:.3})"),
            _ => "—".to_owned(),
        };
        text.push_str(&format!(
            "| {} | {} | {auc} | {} | {} |\n",
            site.site,
            site.role,
            oracle.map_or_else(|| "—".to_owned(), |o| format!("{o:.3}")),
            site.auc
                .zip(oracle)
                .map_or_else(|| "—".to_owned(), |(a, o)| format!("{:+.3}", a - o))
        ));
    }
    Ok(text)
}

/// A site of a simulation: its id, its synthetic profile, and whether it trains (else it only
/// validates).
pub type SimSite = (String, &'static str, bool);

/// Site ids and profiles of a simulation.
fn sites(args: &SimulateArgs) -> Vec<SimSite> {
    if args.sites == SiteSet::Skewed {
        return [
            ("S1", "referral", true),
            ("S2", "community", true),
            ("S3", "rural", true),
            ("S4", "rural", false),
        ]
        .into_iter()
        .map(|(id, profile, train)| (id.to_owned(), profile, train))
        .collect();
    }
    let mut sites = Vec::new();
    for k in 0..args.train_sites {
        sites.push((
            format!("S{}", k + 1),
            CYCLED_PROFILES[k % CYCLED_PROFILES.len()],
            true,
        ));
    }
    for k in 0..args.validate_sites {
        sites.push((format!("S{}", args.train_sites + k + 1), "rural", false));
    }
    sites
}

/// Patients of the site at `index` of [`sites`]: `--patients`, a quarter of it for the small rural
/// training site of the skewed set.
fn site_patients(args: &SimulateArgs, index: usize) -> usize {
    if args.sites == SiteSet::Skewed && index == 2 {
        (args.patients / 4).max(40)
    } else {
        args.patients
    }
}

/// Runs the simulated study (see the module doc) and writes the report.
///
/// # Errors
/// A non-empty output folder, bad arguments, or any failure of the study (named).
pub async fn simulate(args: &SimulateArgs) -> anyhow::Result<SimulationOutcome> {
    if args.train_sites < 2 {
        bail!("--train-sites must be at least 2 (FedAvg needs sites to average)");
    }
    let sites = sites(args);
    let (out, data_dir) = prepare(args, &sites).await?;
    run_study(args, &out, &data_dir, &sites, None, Modality::Multimodal).await
}

/// Creates the output folder (it must not exist or be empty) and generates `sites` into its
/// `data/`; returns both absolute paths. Every study of a design shares these sites.
async fn prepare(args: &SimulateArgs, sites: &[SimSite]) -> anyhow::Result<(PathBuf, PathBuf)> {
    fedlnm_node::commands::create_output_dir(&args.out, "a simulation")?;
    let out = std::fs::canonicalize(&args.out)?;
    let data_dir = out.join("data");
    generate_sites(args, sites, &data_dir).await?;
    Ok((out, data_dir))
}

/// Writes the synthetic sites into `data_dir` (one folder per site; a site's data depend on its
/// position in `sites`, its profile and the seed only).
async fn generate_sites(args: &SimulateArgs, sites: &[SimSite], data_dir: &Path) -> anyhow::Result<()> {
    let mut generation = Vec::new();
    for (k, (id, profile, _)) in sites.iter().enumerate() {
        let config = SynthConfig {
            site: id.clone(),
            n_patients: site_patients(args, k),
            seed: args.seed.wrapping_mul(1000).wrapping_add(k as u64),
            profile: SiteProfile::named(profile).with_context(|| format!("unknown profile {profile}"))?,
            format: OutputFormat::Png,
            image_size: (2 * args.image_size).max(128),
        };
        let dir = data_dir.join(id);
        generation.push(tokio::task::spawn_blocking(move || {
            synth::write_site(&config, &dir).map(|summary| (config.site, summary))
        }));
    }
    for handle in generation {
        let (site, summary) = handle.await?.context("generating a synthetic site")?;
        tracing::info!(
            site,
            lnm_rate = summary.lnm_rate,
            oracle_auc = ?summary.oracle_auc,
            "synthetic site generated"
        );
    }
    Ok(())
}

/// One study of a `modality` model on sites already generated in `data_dir`: `out/study/` (CA,
/// kits, the aggregator's state) and `out/results/` (the report). With `fold`, every training site
/// validates on that fold of its patients.
async fn run_study(
    args: &SimulateArgs,
    out: &Path,
    data_dir: &Path,
    sites: &[SimSite],
    fold: Option<CrossValidationFold>,
    modality: Modality,
) -> anyhow::Result<SimulationOutcome> {
    let started = Instant::now();
    // A throw-away study CA and kits, for the port we actually got.
    let listener = fedlnm_protocol::server::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let study_dir = out.join("study");
    let (train_ids, validate_ids): (Vec<_>, Vec<_>) = sites.iter().partition(|(_, _, train)| *train);
    provision::provision(&ProvisionOptions {
        study: STUDY.to_owned(),
        train_sites: train_ids.iter().map(|s| s.0.clone()).collect(),
        validate_sites: validate_ids.iter().map(|s| s.0.clone()).collect(),
        aggregator_hosts: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        port,
        valid_days: 7,
        out: study_dir.clone(),
    })?;

    // The study's model and plan.
    let aggregator_dir = study_dir.join(provision::AGGREGATOR_DIR);
    let model = study_model(args, modality);
    let initial = aggregator_dir.join("initial-model.safetensors");
    write_checkpoint(&initial, &model, &train::initial_weights(&model, args.seed))?;
    let aggregator_toml = aggregator_dir.join("aggregator.toml");
    let mut config = AggregatorConfig::load(&aggregator_toml)?;
    config.initial_model = Some(initial);
    config.listen = format!("127.0.0.1:{port}");
    // A simulation serves no /metrics (two simulations at once would clash on the provisioned port).
    config.metrics_listen = None;
    config.rounds.rounds = args.rounds;
    config.rounds.min_sites = train_ids.len() / 2 + 1;
    config.rounds.secure_aggregation = !args.plain;
    config.rounds.fedbn = args.fedbn;
    config.rounds.learning_rate_schedule = args.lr_schedule;
    config.rounds.server_learning_rate = args.server_lr;
    if args.site_statistics {
        config.rounds.normalisation_statistics = NormalisationStatistics::Site;
    }
    config.privacy.noise_multiplier = args.noise_multiplier;
    config.privacy.clip_norm = args.clip_norm;
    config.rounds.round_deadline_s = 3600;
    config.rounds.stage_timeout_s = 600;
    config.rounds.validation_deadline_s = 1800;
    config.train = study_plan(args);
    write_toml(&aggregator_toml, &config)?;
    let config = AggregatorConfig::load(&aggregator_toml)?;
    let state_dir = config.state_dir.clone();

    let mut nodes = Vec::new();
    let mut node_work_dirs = Vec::new();
    for (id, _, _) in sites {
        let kit = study_dir.join(provision::SITES_DIR).join(id);
        let node_toml = kit.join("node.toml");
        let mut node: NodeConfig = NodeConfig::load(&node_toml)?;
        node.data = data_dir.join(id);
        node.work_dir = kit.join("work");
        node.cross_validation = fold;
        // Each site's rounding secret follows from the simulation's seed: the same seed gives the
        // same study, secure aggregation included (a real site draws its own).
        std::fs::create_dir_all(&node.work_dir)?;
        let secret =
            fedlnm_shared::weights::sha256_hex(format!("fedlnm-sim rounding {} {id}", args.seed).as_bytes());
        let secret =
            fedlnm_node::federation::secret_from_hex(&secret).context("a SHA-256 is 64 hex digits")?;
        fedlnm_node::federation::write_rounding_secret(
            &node.work_dir.join(fedlnm_node::federation::ROUNDING_SECRET_FILE),
            &secret,
        )?;
        node_work_dirs.push((id.clone(), node.work_dir.clone()));
        node.device = args.device;
        write_toml(&node_toml, &node)?;
        nodes.push(NodeConfig::load(&node_toml)?);
    }

    // The aggregator and the nodes, over mutual TLS on loopback.
    let service = FederationService::open(config)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(service.clone(), listener, async {
        let _ = stopped.await;
    }));
    let mut node_tasks = tokio::task::JoinSet::new();
    for node in nodes {
        let site = node.site.clone();
        node_tasks.spawn(async move { (site, fedlnm_node::federation::Node::new(node).run().await) });
    }
    // The first node that fails stops the study: the others would wait for it until the deadlines.
    let mut failure = None;
    while let Some(joined) = node_tasks.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((site, Err(error))) => {
                failure.get_or_insert(error.context(format!("the node of site {site} stopped")));
                node_tasks.abort_all();
            }
            Err(error) if error.is_cancelled() => {}
            Err(error) => {
                failure.get_or_insert(anyhow::Error::new(error));
                node_tasks.abort_all();
            }
        }
    }
    let _ = stop.send(());
    server.await??;
    if let Some(error) = failure {
        return Err(error.context("a node of the simulated study failed"));
    }
    let (rounds, final_digest) = service.committed();

    let results_dir = out.join("results");
    fedlnm_aggregator::report::write_report(&state_dir, &results_dir)?;
    // Each site's own report, as its node writes it for the hospital alone (`fedlnm-node
    // site-report`), with the Grad-CAM overlays of its first two patients when the model has an image
    // branch to explain.
    for (id, work_dir) in &node_work_dirs {
        let job = SiteReportJob {
            site: id.clone(),
            study: STUDY.to_owned(),
            work_dir: work_dir.clone(),
            data: data_dir.join(id),
            device: args.device,
            out: results_dir.join(SITE_REPORTS_DIR).join(id),
            // The generator numbers a site's patients from 1.
            explain: if modality.uses_image() {
                (1..=2).map(|k| format!("{id}-{k:05}")).collect()
            } else {
                Vec::new()
            },
        };
        tokio::task::spawn_blocking(move || write_site_report(&job))
            .await?
            .with_context(|| format!("the site report of {id}"))?;
    }
    Ok(SimulationOutcome {
        state_dir,
        results_dir,
        rounds,
        final_digest,
        seconds: started.elapsed().as_secs_f64(),
        node_work_dirs,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn quality_config() -> String {
        format!("{}/../configs/model-quality.toml", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn a_model_config_sets_the_model_and_a_rounds_plan_without_early_stopping_or_averaging() {
        let args = SimulateArgs::try_parse_from([
            "fedlnm-sim",
            "--model-config",
            &quality_config(),
            "--local-epochs",
            "3",
            "--proximal-mu",
            "0.1",
            "--methods",
            "fedavg-secure,fedbn",
        ])
        .unwrap();
        let file = args.model_config.clone().unwrap();
        assert_eq!(
            args.methods,
            [FederatedMethod::FedavgSecure, FederatedMethod::Fedbn]
        );
        let model = study_model(&args, Modality::ImageOnly);
        assert_eq!(model.modality, Modality::ImageOnly);
        assert_eq!(model.image, file.model.image);
        assert_eq!(model.image.base_width, 16);
        let plan = study_plan(&args);
        assert_eq!((plan.epochs, plan.patience, plan.ema_decay), (3, 0, 0.0));
        assert_eq!(plan.proximal_mu, 0.1);
        assert_eq!(plan.seed, args.seed);
        assert_eq!(plan.learning_rate, file.train.learning_rate);
        assert_eq!(plan.batch_size, file.train.batch_size);
        assert!(file.train.patience > 0 && file.train.ema_decay > 0.0);
    }

    #[test]
    fn without_a_model_config_the_arguments_set_the_model_and_plan() {
        let args =
            SimulateArgs::try_parse_from(["fedlnm-sim", "--base-width", "12", "--image-size", "48"]).unwrap();
        let model = study_model(&args, Modality::Multimodal);
        assert_eq!((model.image.base_width, model.image.input_size), (12, 48));
        let plan = study_plan(&args);
        assert_eq!(plan.learning_rate, args.learning_rate);
        assert_eq!((plan.batch_size, plan.patience, plan.ema_decay), (16, 0, 0.0));
        assert_eq!(args.methods, FederatedMethod::ALL);
        assert_eq!(args.lr_schedule, LearningRateSchedule::AcrossRounds);
    }

    #[test]
    fn an_unusable_model_config_is_refused_naming_the_file() {
        let missing = SimulateArgs::try_parse_from(["fedlnm-sim", "--model-config", "no-such-model.toml"])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no-such-model.toml"), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        let text = std::fs::read_to_string(quality_config())
            .unwrap()
            .replace("learning_rate = 0.003", "learning_rate = -1.0");
        std::fs::write(&bad, text).unwrap();
        let error = SimulateArgs::try_parse_from(["fedlnm-sim", "--model-config", bad.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("bad.toml") && error.contains("learning_rate"),
            "{error}"
        );
    }
}
