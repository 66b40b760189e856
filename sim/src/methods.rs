//! Does the federation learn what pooling the patients would? (`--design methods`) On the same
//! synthetic sites, the same external (validate-only) site, the same model, initial weights, splits
//! and number of epochs seen per patient (rounds × local epochs):
//! - **centralised**: one training on the training sites' training patients pooled (each site split as
//!   its node splits, [`fedlnm_node::federation::SiteExamples::split`]), through the same entry point the
//!   nodes train with ([`train::train_local`]);
//! - **each site alone**: the same on one site's training patients;
//! - **FedAvg** with secure aggregation and plain, **FedProx** for each μ of `--mu`, and **FedBN**
//!   (normalisation layers local; the validate-only site re-estimates its normalisation statistics on
//!   its own unlabelled images), each a whole simulated study over mTLS (`--methods` chooses which);
//! - **a federated method's best round**: where a study's pooled internal AUC (the training sites'
//!   held-out patients) peaked before its last round, that round's model too, the federated
//!   counterpart of the single-shot models' early stopping (not FedBN's: its sites keep their own
//!   normalisation layers).
//!
//! `--model-config` sets the model and the single-shot models' whole plan (early stopping on the
//! held-out patients, weight averaging), e.g. the quality check's `configs/model-quality.toml`.
//!
//! Every model is scored on all of the external site's patients; each is compared with the
//! centralised model by the paired DeLong test on those patients, and with the generator's oracle AUC
//! on them. Writes `design.html` (table and the external AUC by round), `design.json` and `design.md`.
//!
//! A run that stopped carries on with `--resume` ([`super::resume`]): the sites, each finished
//! federated study and each trained single-shot model are reused.

use super::designs::{DesignOutcome, write_design};
use super::resume::Progress;
use super::{
    FederatedMethod, SimulateArgs, SimulationOutcome, generate_sites, oracle_auc, run_study, sites,
    study_model, study_plan,
};
use anyhow::{Context as _, bail};
use fedlnm_aggregator::report::html::{MethodRow, Versus, methods_markdown, methods_page};
use fedlnm_aggregator::store::RoundStore;
use fedlnm_model::train;
use fedlnm_node::commands::compare::{PatientScore, paired_comparison};
use fedlnm_node::commands::model::load_examples;
use fedlnm_node::federation::SiteExamples;
use fedlnm_shared::config::{LearningRateSchedule, NodeConfig, SiteRole};
use fedlnm_shared::features::Example;
use fedlnm_shared::federation::SiteRoundMetrics;
use fedlnm_shared::model_config::{Modality, ModelConfig, TrainPlan};
use fedlnm_shared::staging::Stage;
use fedlnm_shared::weights::NamedTensors;
use std::path::Path;
use std::time::Instant;

/// The external site's patients: every labelled one, as its node validates (its `validation`).
struct External {
    site: String,
    patients: SiteExamples,
}

/// What a model scored on the external site, and on the training sites' held-out patients.
struct Scored {
    external: SiteRoundMetrics,
    scores: Vec<PatientScore>,
    internal_auc: Option<f64>,
}

/// The held-out patients a model is scored on internally: the training sites' pooled (a site alone:
/// its own), with how many of them each site holds, in order (AdaBN re-estimates a site's
/// statistics on its own).
struct Internal<'a> {
    examples: &'a [Example],
    stages: &'a [Stage],
    per_site: Vec<usize>,
}

/// A site's patients of `dir`, encoded for `model` and split as its node splits them (`role`,
/// `fraction`).
fn load_split(
    dir: &Path,
    model: &ModelConfig,
    role: SiteRole,
    fraction: f64,
) -> anyhow::Result<SiteExamples> {
    SiteExamples::split(load_examples(dir, model, true, false)?, role, fraction, None)
}

/// The single-shot model `name`: trained from `initial` on `train_set` for `plan.epochs` epochs, then
/// scored on the external site and the held-out patients `internal`; with the training's seconds.
/// With `plan.patience` (a `--model-config` plan) training stops early on `internal`'s AUC and keeps
/// its best epoch; otherwise it runs every epoch, as a node's round does. The trained model is kept in
/// `progress`, and a model an earlier run of the same arguments kept (`--resume`) is scored again
/// instead of trained.
#[allow(clippy::too_many_arguments)] // what a training needs, and where its result is kept
fn single_shot(
    progress: &Progress,
    name: &str,
    args: &SimulateArgs,
    model: &ModelConfig,
    initial: &NamedTensors,
    train_set: &[Example],
    plan: &TrainPlan,
    external: &External,
    internal: &Internal<'_>,
) -> anyhow::Result<(Scored, NamedTensors, f64)> {
    if let Some((weights, seconds)) = progress.trained(name, model)? {
        let scored = score(args, model, &weights, external, internal, false)?;
        return Ok((scored, weights, seconds));
    }
    let validation = if plan.patience > 0 { internal.examples } else { &[] };
    let started = Instant::now();
    let outcome = train::train_local(
        args.device,
        model,
        initial,
        train_set,
        validation,
        plan,
        &mut |_| {},
    )?;
    let scored = score(args, model, &outcome.weights, external, internal, false)?;
    let seconds = started.elapsed().as_secs_f64();
    // The table is written when every model is done; the log keeps each result as it comes.
    tracing::info!(
        model = name,
        patients = train_set.len(),
        best_epoch = outcome.best_epoch,
        external_auc = scored.external.auc,
        internal_auc = scored.internal_auc,
        seconds,
        "methods: a single-shot model trained and scored"
    );
    progress.keep_trained(name, model, &outcome.weights, seconds)?;
    Ok((scored, outcome.weights, seconds))
}

/// Scores `weights` on the external site and on the held-out patients `internal`; with `adapt`, each
/// site's normalisation statistics re-estimated on its own scored patients' images first (AdaBN).
fn score(
    args: &SimulateArgs,
    model: &ModelConfig,
    weights: &NamedTensors,
    external: &External,
    internal: &Internal<'_>,
    adapt: bool,
) -> anyhow::Result<Scored> {
    let patients = &external.patients;
    let adabn_seed = adapt.then_some(args.seed);
    let predict =
        |examples: &[Example]| train::predict_at_site(args.device, model, weights, examples, 32, adabn_seed);
    let predictions = predict(&patients.validation)?;
    let validation = SiteRoundMetrics::from_predictions(
        &external.site,
        SiteRole::Validate,
        &patients.validation,
        &predictions,
        &patients.validation_stages,
    )?;
    // AdaBN re-estimates each training site's statistics on its own held-out patients.
    let internal_predictions = if adapt {
        let mut start = 0;
        let mut all = Vec::with_capacity(internal.examples.len());
        for &n in &internal.per_site {
            all.extend(predict(&internal.examples[start..start + n])?);
            start += n;
        }
        all
    } else {
        predict(internal.examples)?
    };
    let internal_auc = SiteRoundMetrics::from_predictions(
        "internal",
        SiteRole::Train,
        internal.examples,
        &internal_predictions,
        internal.stages,
    )?
    .metrics
    .auc;
    Ok(Scored {
        scores: PatientScore::of_predictions(&patients.validation, &predictions),
        external: validation.metrics,
        internal_auc,
    })
}

fn row(method: &str, federated: bool, scored: &Scored, oracle: Option<f64>, seconds: f64) -> MethodRow {
    let m = &scored.external;
    MethodRow {
        method: method.to_owned(),
        federated,
        n: m.n_patients,
        n_positive: m.n_positive,
        auc: m.auc,
        ci_lower: m.auc_ci_lower,
        ci_upper: m.auc_ci_upper,
        gap_to_oracle: m.auc.zip(oracle).map(|(auc, oracle)| auc - oracle),
        vs_centralised: None,
        internal_auc: scored.internal_auc,
        kappa_t: m.kappa_t,
        kappa_n: m.kappa_n,
        kappa_stage: m.kappa_stage,
        seconds,
        auc_by_round: Vec::new(),
        model_digest: None,
    }
}

/// A federated study's row: its final round's external metrics and scores, the pooled internal AUC,
/// and the external AUC of every round; and the round whose model scored the best pooled internal
/// AUC (the training sites' held-out patients, as the study recorded it; the later round on a tie),
/// if any round recorded one.
fn federated_row(
    method: &str,
    study: &SimulationOutcome,
    external: &str,
    oracle: Option<f64>,
) -> anyhow::Result<(MethodRow, Vec<PatientScore>, Option<u64>)> {
    let store = RoundStore::open_existing(&study.state_dir)?;
    let mut by_round = Vec::new();
    let mut best_internal: Option<(u64, f64)> = None;
    let mut last = None;
    for round in 1..=study.rounds {
        let record = store.load_record(round)?;
        if let Some(auc) = record
            .sites
            .iter()
            .find(|s| s.site == external)
            .and_then(|s| s.auc)
        {
            by_round.push((round, auc));
        }
        if let Some(auc) = record.pooled_train_sites.as_ref().and_then(|pool| pool.auc)
            && best_internal.is_none_or(|(_, best)| auc >= best)
        {
            best_internal = Some((round, auc));
        }
        last = Some(record);
    }
    let record = last.context("the study committed no round")?;
    let metrics = record
        .sites
        .iter()
        .find(|s| s.site == external)
        .with_context(|| format!("{method}: no metrics of {external} in the last round"))?
        .clone();
    let scored = Scored {
        scores: study.final_scores(external)?,
        external: metrics,
        internal_auc: record.pooled_train_sites.as_ref().and_then(|pool| pool.auc),
    };
    let mut row = row(method, true, &scored, oracle, study.seconds);
    row.auc_by_round = by_round;
    row.model_digest = Some(study.final_digest.clone());
    Ok((row, scored.scores, best_internal.map(|(round, _)| round)))
}

/// The comparison (see the module doc).
///
/// # Errors
/// Fewer than two training sites or no validate-only site, or any study's or training's failure.
pub async fn methods(args: &SimulateArgs) -> anyhow::Result<DesignOutcome<Vec<MethodRow>>> {
    let started = Instant::now();
    if args.train_sites < 2 || args.validate_sites < 1 {
        bail!("--design methods needs at least 2 training sites and 1 validate-only (external) site");
    }
    let layout = sites(args);
    let progress = Progress::open(args)?;
    let out = progress.out().to_path_buf();
    let data_dir = out.join("data");
    if !progress.data_ready(&data_dir)? {
        generate_sites(args, &layout, &data_dir).await?;
        progress.data_done(&layout)?;
    }
    let external_site = layout
        .iter()
        .find(|(_, _, train)| !*train)
        .map(|(id, _, _)| id.clone())
        .context("an external site")?;
    let oracle = oracle_auc(&data_dir, &external_site).ok().flatten();

    // The federated methods, each a whole study.
    // (secure aggregation off, FedBN, FedProx μ) of each method; the rest as the arguments say.
    let variant = |method: String, plain: bool, fedbn: bool, proximal_mu: f64| {
        let args = SimulateArgs {
            plain,
            fedbn,
            proximal_mu,
            ..args.clone()
        };
        (method, args)
    };
    let mut variants = Vec::new();
    for method in &args.methods {
        match method {
            FederatedMethod::FedavgSecure => {
                variants.push(variant("FedAvg (secure)".to_owned(), false, false, 0.0));
            }
            FederatedMethod::FedavgPlain => {
                variants.push(variant("FedAvg (plain)".to_owned(), true, false, 0.0));
            }
            FederatedMethod::Fedprox => {
                for &mu in &args.mu {
                    variants.push(variant(format!("FedProx μ = {mu}"), false, false, mu));
                }
            }
            FederatedMethod::Fedbn => variants.push(variant("FedBN (secure)".to_owned(), false, true, 0.0)),
        }
    }
    if variants.is_empty() {
        bail!("--methods names no federated method (and --mu no μ for fedprox)");
    }
    let mut studies = Vec::new();
    let mut federated = Vec::new();
    // Studies whose best round by internal AUC is not their last: scored below, with the baselines.
    let mut best_rounds = Vec::new();
    // With --adabn, each study's final model (FedBN's aside), scored again with AdaBN below.
    let mut finals = Vec::new();
    for (k, (method, variant)) in variants.iter().enumerate() {
        tracing::info!(method, "methods: next study");
        let folder = out.join(format!("study-{}", k + 1));
        let study = match progress.finished_study(&folder)? {
            Some(study) => study,
            None => {
                let study = run_study(variant, &folder, &data_dir, &layout, None, Modality::Multimodal)
                    .await
                    .with_context(|| format!("the {method} study"))?;
                progress.study_done(&folder, &study)?;
                study
            }
        };
        let (row, scores, best_round) = federated_row(method, &study, &external_site, oracle)?;
        federated.push((row, scores));
        // FedBN's global model has no trained normalisation layers of its own: its sites' are local.
        if !variant.fedbn {
            if let Some(round) = best_round
                && round < study.rounds
            {
                best_rounds.push((method.clone(), study.state_dir.clone(), round));
            }
            if args.adabn {
                finals.push((method.clone(), study.state_dir.clone(), study.rounds));
            }
        }
        studies.push((method.clone(), study));
    }

    // The single-shot baselines on the same splits, initial weights and epochs seen.
    let fraction = {
        let first = &studies.first().context("a study")?.1;
        let (site, _) = first.node_work_dirs.first().context("a node")?;
        let kit = first
            .state_dir
            .parent()
            .and_then(Path::parent)
            .context("the study folder")?;
        NodeConfig::load(&kit.join("sites").join(site).join("node.toml"))?.validation_fraction
    };
    let baseline_args = args.clone();
    let kept = progress.clone();
    let train_ids: Vec<String> = layout.iter().filter(|s| s.2).map(|s| s.0.clone()).collect();
    let data = data_dir.clone();
    let external_id = external_site.clone();
    // The single-shot models; then rows of models already trained: (name, scores, seconds, whether
    // federated, the model's digest where the row scores one unchanged model).
    type Rescored = (String, Scored, f64, bool, Option<String>);
    type Baselines = (Vec<(String, Scored, f64)>, Vec<Rescored>);
    let (baselines, best) = tokio::task::spawn_blocking(move || -> anyhow::Result<Baselines> {
        let args = baseline_args;
        let model = study_model(&args, Modality::Multimodal);
        let initial = train::initial_weights(&model, args.seed);
        // The same epochs seen per patient; with --model-config, its whole plan (early stopping on
        // the held-out patients, weight averaging).
        let base = match &args.model_config {
            Some(file) => TrainPlan {
                seed: args.seed,
                ..file.train.clone()
            },
            None => study_plan(&args),
        };
        let plan = TrainPlan {
            epochs: usize::try_from(args.rounds)
                .unwrap_or(usize::MAX)
                .saturating_mul(args.local_epochs),
            proximal_mu: 0.0,
            ..base
        };
        let splits = train_ids
            .iter()
            .map(|id| load_split(&data.join(id), &model, SiteRole::Train, fraction))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let external = External {
            patients: load_split(&data.join(&external_id), &model, SiteRole::Validate, fraction)?,
            site: external_id,
        };
        let examples: Vec<Example> = splits.iter().flat_map(|s| s.validation.clone()).collect();
        let stages: Vec<Stage> = splits.iter().flat_map(|s| s.validation_stages.clone()).collect();
        let internal = Internal {
            examples: &examples,
            stages: &stages,
            per_site: splits.iter().map(|s| s.validation.len()).collect(),
        };
        let mut results = Vec::new();
        // With --adabn: each model again, each scoring site with its own normalisation statistics.
        let mut adapted = Vec::new();
        let mut adapt = |name: &str, federated: bool, weights: &NamedTensors, internal: &Internal<'_>| {
            if !args.adabn {
                return Ok::<_, anyhow::Error>(());
            }
            let timer = Instant::now();
            let scored = score(&args, &model, weights, &external, internal, true)?;
            tracing::info!(
                external_auc = scored.external.auc,
                internal_auc = scored.internal_auc,
                "methods: {name} + AdaBN scored"
            );
            adapted.push((
                format!("{name} + AdaBN"),
                scored,
                timer.elapsed().as_secs_f64(),
                federated,
                None,
            ));
            Ok(())
        };
        let pooled: Vec<Example> = splits.iter().flat_map(|s| s.train.clone()).collect();
        let (scored, weights, seconds) = single_shot(
            &kept,
            "centralised",
            &args,
            &model,
            &initial,
            &pooled,
            &plan,
            &external,
            &internal,
        )?;
        results.push(("centralised".to_owned(), scored, seconds));
        adapt("centralised", false, &weights, &internal)?;
        for (id, split) in train_ids.iter().zip(&splits) {
            // Each site alone is validated internally on its own held-out patients.
            let own = Internal {
                examples: &split.validation,
                stages: &split.validation_stages,
                per_site: vec![split.validation.len()],
            };
            let name = format!("{id} alone");
            let (scored, weights, seconds) = single_shot(
                &kept,
                &name,
                &args,
                &model,
                &initial,
                &split.train,
                &plan,
                &external,
                &own,
            )?;
            results.push((name.clone(), scored, seconds));
            adapt(&name, false, &weights, &own)?;
        }
        for (method, state_dir, round) in finals {
            let committed = RoundStore::open_existing(&state_dir)?.load(round)?;
            adapt(&method, true, &committed.model.weights, &internal)?;
        }
        // The federated counterpart of early stopping: each study's model of its best round by the
        // pooled internal AUC, scored as the baselines are.
        let mut best = Vec::new();
        for (method, state_dir, round) in best_rounds {
            let timer = Instant::now();
            let committed = RoundStore::open_existing(&state_dir)?.load(round)?;
            let scored = score(
                &args,
                &model,
                &committed.model.weights,
                &external,
                &internal,
                false,
            )?;
            let name = format!("{method}, round {round} (best internal AUC)");
            best.push((
                name,
                scored,
                timer.elapsed().as_secs_f64(),
                true,
                Some(committed.model.digest.clone()),
            ));
        }
        best.append(&mut adapted);
        Ok((results, best))
    })
    .await??;

    let (_, central, _) = baselines.first().context("the centralised baseline")?;
    let central_scores = central.scores.clone();
    let versus = |scores: &[PatientScore]| -> anyhow::Result<_> {
        let test = paired_comparison(scores, &central_scores)?;
        Ok(Some(Versus {
            delta: test.delta,
            ci_lower: test.ci_lower,
            ci_upper: test.ci_upper,
            p: test.p,
        }))
    };
    let mut rows = Vec::new();
    for (k, (method, scored, seconds)) in baselines.iter().enumerate() {
        let mut row = row(method, false, scored, oracle, *seconds);
        if k > 0 {
            row.vs_centralised = versus(&scored.scores)?;
        }
        rows.push(row);
    }
    for (mut row, scores) in federated {
        row.vs_centralised = versus(&scores)?;
        rows.push(row);
    }
    for (method, scored, seconds, federated, digest) in &best {
        let mut row = row(method, *federated, scored, oracle, *seconds);
        row.vs_centralised = versus(&scored.scores)?;
        row.model_digest.clone_from(digest);
        rows.push(row);
    }
    let mut summary = methods_markdown(&rows);
    if let Some(oracle) = oracle {
        summary.push_str(&format!(
            "\nOracle AUC on the external site ({external_site}): {oracle:.3}\n"
        ));
    }
    let image = study_model(args, Modality::Multimodal).image;
    let mut note = format!(
        "On the same synthetic sites ({} training sites of {} patients, external site {external_site}) and \
         the same model (tiny ResNet, width {}, {} px), initial weights, per-site splits and epochs seen \
         per patient ({} rounds × {} local epochs = {} epochs for the single-shot models), seed {}. Every \
         model is scored on all of {external_site}'s patients; Δ is its AUC minus the centralised model's \
         there, by the paired DeLong test. Internal AUC: the training sites' held-out patients pooled (a \
         site alone: its own). Wall time: the whole study for federated methods (mTLS, validation and \
         reports included), the training and scoring for the others.",
        args.train_sites,
        args.patients,
        image.base_width,
        image.input_size,
        args.rounds,
        args.local_epochs,
        args.rounds * args.local_epochs as u64,
        args.seed
    );
    if let Some(file) = &args.model_config {
        note.push_str(&format!(
            " The single-shot models follow the model configuration's plan: up to that many epochs, \
             early stopping on the held-out patients (patience {}) and weight averaging (decay {}); a \
             federated method's model of its best round by internal AUC is their counterpart. A \
             round's local training: learning rate {}, batch {}.",
            file.train.patience, file.train.ema_decay, file.train.learning_rate, file.train.batch_size
        ));
    }
    if args.site_statistics {
        note.push_str(
            " Every site scored each round's federated model with its own normalisation statistics, \
             re-estimated on its validation patients' pictures (--site-statistics).",
        );
    }
    if args.adabn {
        note.push_str(
            " Rows \"+ AdaBN\": the same model scored with each scoring site's normalisation statistics \
             re-estimated on its own images first (the external site's on its patients, each training \
             site's on its held-out patients; no label is read); Δ is still against the centralised \
             model as trained.",
        );
    }
    if args.server_lr != 1.0 {
        note.push_str(&format!(
            " The federated models take {} times the sites' average change each round (--server-lr).",
            args.server_lr
        ));
    }
    note.push_str(match args.lr_schedule {
        LearningRateSchedule::AcrossRounds => {
            " The federated rounds' learning rate follows one cosine decay over all the rounds \
             (--lr-schedule across-rounds), as the single-shot models' does over their epochs."
        }
        LearningRateSchedule::EachRound => {
            " Each federated round's local training runs the whole learning-rate decay from the peak \
             (--lr-schedule each-round)."
        }
    });
    let page = methods_page(
        "Federated quality: the federation against pooled and single-site training",
        &note,
        &rows,
        oracle,
    );
    write_design(&out, studies, rows, summary, &page, started)
}
