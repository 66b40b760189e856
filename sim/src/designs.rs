//! Validation designs made of several simulated studies on the same synthetic sites:
//! leave-one-site-out (each site in turn is the external site of a study the others train) and k-fold
//! cross-validation across the federation (study j validates on fold j of every training site's
//! patients, as Cai et al. did with k = 5). Each study is a whole simulated study with its own report;
//! the design adds one page (`design.html`) and its rows as JSON (`design.json`) and markdown
//! (`design.md`).

use super::{SimSite, SimulateArgs, SimulationOutcome, prepare, run_study, sites};
use anyhow::{Context as _, bail};
use fedlnm_aggregator::report::html::{
    Comparison, ComparisonRow, DesignRow, DesignSummary, comparison_page, design_page, mean_and_sd,
    random_effects,
};
use fedlnm_aggregator::store::RoundStore;
use fedlnm_node::commands::compare::paired_comparison;
use fedlnm_shared::config::{CrossValidationFold, SiteRole};
use fedlnm_shared::federation::{RoundRecord, SiteRoundMetrics};
use fedlnm_shared::model_config::Modality;
use std::path::PathBuf;
use std::time::Instant;

/// The design's page, JSON and markdown in the output folder.
pub const DESIGN_PAGE: &str = "design.html";
pub const DESIGN_JSON: &str = "design.json";
pub const DESIGN_MARKDOWN: &str = "design.md";

/// What a design produced: its studies, its results (the rows of leave-one-site-out and k-fold, the
/// comparisons of a model comparison), and its files.
#[derive(Debug, Clone)]
pub struct DesignOutcome<T> {
    /// Each study's name (its folder under the output folder) and outcome.
    pub studies: Vec<(String, SimulationOutcome)>,
    pub results: T,
    /// The design's summary as markdown (also in `design.md`).
    pub summary: String,
    pub page: PathBuf,
    pub seconds: f64,
}

impl<T> DesignOutcome<T> {
    /// What the command line prints: the studies, the page and the summary.
    #[must_use]
    pub fn printed(&self) -> String {
        format!(
            "{} studies finished in {:.0} s; the design's page: {}\n\n{}",
            self.studies.len(),
            self.seconds,
            self.page.display(),
            self.summary
        )
    }
}

/// The last committed round of a study.
fn final_record(study: &SimulationOutcome) -> anyhow::Result<RoundRecord> {
    let store = RoundStore::open_existing(&study.state_dir)?;
    Ok(store.load_record(study.rounds)?)
}

fn row_of(label: &str, metrics: &SiteRoundMetrics, model_digest: &str) -> DesignRow {
    DesignRow {
        label: label.to_owned(),
        n: metrics.n_patients,
        n_positive: metrics.n_positive,
        auc: metrics.auc,
        ci_lower: metrics.auc_ci_lower,
        ci_upper: metrics.auc_ci_upper,
        variance: metrics.auc_variance,
        model_digest: model_digest.to_owned(),
    }
}

/// Leave-one-site-out: every site of the simulation (training and validate-only alike) is held out
/// once, as the only external site of a study that the others train; the rows are the held-out
/// sites' AUCs of their study's final model, summarised by random effects.
///
/// # Errors
/// Fewer than three sites (a study needs two training sites), or any study's failure (named).
pub async fn leave_one_site_out(args: &SimulateArgs) -> anyhow::Result<DesignOutcome<Vec<DesignRow>>> {
    let started = Instant::now();
    let base = sites(args);
    if base.len() < 3 {
        bail!(
            "leave-one-site-out needs at least 3 sites (two train while one is held out); \
             --train-sites plus --validate-sites is {}",
            base.len()
        );
    }
    let (out, data_dir) = prepare(args, &base).await?;
    let mut studies = Vec::new();
    let mut rows = Vec::new();
    for (held_out, _, _) in &base {
        let layout: Vec<SimSite> = base
            .iter()
            .map(|(id, profile, _)| (id.clone(), *profile, id != held_out))
            .collect();
        let name = format!("held-out-{held_out}");
        tracing::info!(held_out, "leave-one-site-out: next study");
        let study = run_study(
            args,
            &out.join(&name),
            &data_dir,
            &layout,
            None,
            Modality::Multimodal,
        )
        .await
        .with_context(|| format!("the study holding out {held_out}"))?;
        let record = final_record(&study)?;
        let metrics = record
            .sites
            .iter()
            .find(|site| &site.site == held_out && site.role == SiteRole::Validate)
            .with_context(|| format!("{held_out} reported no validation in {name}"))?;
        rows.push(row_of(held_out, metrics, &record.model_digest));
        studies.push((name, study));
    }
    let pooled = random_effects(&rows);
    let mut summary = table(&rows);
    match &pooled {
        Some(p) => summary.push_str(&format!(
            "\nRandom-effects summary of the held-out AUCs (k = {}): {:.3} ({:.3}–{:.3}), I² = {:.0}%{}\n",
            p.logit.sites.len(),
            p.auc,
            p.ci_lower,
            p.ci_upper,
            100.0 * p.logit.i2,
            match (p.prediction_lower, p.prediction_upper) {
                (Some(l), Some(u)) => format!(", prediction interval {l:.3}–{u:.3}"),
                _ => String::new(),
            }
        )),
        None => summary.push_str("\nFewer than two held-out AUCs with a variance: no summary.\n"),
    }
    let note = format!(
        "Leave-one-site-out: {} studies on the same synthetic sites; in each, one site never trains and \
         validates the final model as the external site ({} rounds of {} local epochs, secure \
         aggregation {}). Summary: random-effects meta-analysis of the held-out AUCs (logit scale, REML \
         τ², Knapp–Hartung CI, prediction interval).",
        rows.len(),
        args.rounds,
        args.local_epochs,
        if args.plain { "off" } else { "on" }
    );
    let page = design_page(
        "Leave-one-site-out validation",
        &note,
        &rows,
        DesignSummary::RandomEffects,
    );
    write_design(&out, studies, rows, summary, &page, started)
}

/// k-fold cross-validation across the federation: `--folds` studies on the same sites; in study j
/// every training site validates on fold j of its patients (stratified, fixed seed) and trains on the
/// others. The rows are the pooled AUCs of the training sites' fold-j patients (the secure sum of
/// their score histograms), summarised by their mean and SD; each study's report has the rest.
///
/// # Errors
/// `--folds` below 2, or any study's failure (named).
pub async fn k_fold(args: &SimulateArgs) -> anyhow::Result<DesignOutcome<Vec<DesignRow>>> {
    let started = Instant::now();
    if args.folds < 2 {
        bail!("--folds must be at least 2");
    }
    if args.train_sites < 2 {
        bail!("--train-sites must be at least 2 (FedAvg needs sites to average)");
    }
    let layout = sites(args);
    let (out, data_dir) = prepare(args, &layout).await?;
    let mut studies = Vec::new();
    let mut rows = Vec::new();
    for fold in 0..args.folds {
        let name = format!("fold-{fold}");
        tracing::info!(fold, folds = args.folds, "k-fold: next study");
        let cross_validation = CrossValidationFold {
            folds: args.folds,
            fold,
        };
        let study = run_study(
            args,
            &out.join(&name),
            &data_dir,
            &layout,
            Some(cross_validation),
            Modality::Multimodal,
        )
        .await
        .with_context(|| format!("the study of fold {fold}"))?;
        let record = final_record(&study)?;
        let pool = record
            .pooled_train_sites
            .as_ref()
            .with_context(|| format!("the training sites of {name} were not pooled"))?;
        rows.push(DesignRow {
            label: format!("fold {fold}"),
            n: pool.n_patients,
            n_positive: pool.n_positive,
            auc: pool.auc,
            ci_lower: pool.auc_ci_lower,
            ci_upper: pool.auc_ci_upper,
            variance: pool.auc_variance,
            model_digest: record.model_digest.clone(),
        });
        studies.push((name, study));
    }
    let mut summary = table(&rows);
    if let Some((mean, sd)) = mean_and_sd(&rows) {
        summary.push_str(&format!(
            "\nInternal AUC over {} folds: mean {mean:.3} (SD {sd:.3})\n",
            rows.len()
        ));
    }
    let note = format!(
        "{k}-fold cross-validation across the federation: {k} studies on the same synthetic sites; in \
         study j every training site validates on fold j of its own patients (stratified by LNM, fixed \
         seed) and trains on the other folds, so each patient is validated once. Rows: the pooled AUC of \
         the training sites' fold-j patients (secure sum of score histograms). Summary: mean and SD over \
         the folds.",
        k = args.folds
    );
    let page = design_page(
        &format!("{}-fold cross-validation", args.folds),
        &note,
        &rows,
        DesignSummary::MeanAndSd,
    );
    write_design(&out, studies, rows, summary, &page, started)
}

/// The models a comparison trains, the first compared with each of the others.
pub const COMPARED: [Modality; 3] = [Modality::Multimodal, Modality::ImageOnly, Modality::ReportOnly];

/// Model comparison: one study per modality in [`COMPARED`] on the same sites (same patients, same
/// splits, same seeds, the same epochs seen per patient); then every site compares the multimodal
/// model with each single-modality model on its own validation patients (the paired DeLong test
/// from the scores its node kept, `fedlnm-node`'s `compare`), and the sites' ΔAUCs are pooled by
/// random effects on the identity scale.
///
/// # Errors
/// Any study's failure, or a site whose two validations hold different patients (named).
pub async fn model_comparison(args: &SimulateArgs) -> anyhow::Result<DesignOutcome<Vec<Comparison>>> {
    let started = Instant::now();
    if args.train_sites < 2 {
        bail!("--train-sites must be at least 2 (FedAvg needs sites to average)");
    }
    let layout = sites(args);
    let (out, data_dir) = prepare(args, &layout).await?;
    let mut studies = Vec::new();
    for modality in COMPARED {
        tracing::info!(modality = modality.name(), "model comparison: next study");
        let study = run_study(
            args,
            &out.join(modality.name()),
            &data_dir,
            &layout,
            None,
            modality,
        )
        .await
        .with_context(|| format!("the {} study", modality.name()))?;
        studies.push((modality.name().to_owned(), study));
    }
    let (reference, others) = studies.split_first().context("three studies")?;
    let mut comparisons = Vec::new();
    for (modality, study) in others {
        let mut rows = Vec::new();
        for (site, _, _) in &layout {
            let a = reference.1.final_scores(site)?;
            let b = study.final_scores(site)?;
            let test = paired_comparison(&a, &b).with_context(|| format!("site {site}"))?;
            rows.push(ComparisonRow {
                site: site.clone(),
                n: a.len() as u64,
                n_positive: a.iter().filter(|s| s.lnm).count() as u64,
                auc_a: test.auc_a,
                auc_b: test.auc_b,
                delta: test.delta,
                se: test.se,
                ci_lower: test.ci_lower,
                ci_upper: test.ci_upper,
                p: test.p,
            });
        }
        comparisons.push(Comparison {
            label: format!("{} − {modality}", reference.0),
            rows,
        });
    }
    let mut summary = String::new();
    for comparison in &comparisons {
        summary.push_str(&format!(
            "ΔAUC {}\n\n| site | n | AUC a | AUC b | ΔAUC (95% CI) | p |\n|---|---:|---:|---:|---|---:|\n",
            comparison.label
        ));
        for row in &comparison.rows {
            summary.push_str(&format!(
                "| {} | {} | {:.3} | {:.3} | {:+.3} ({}) | {} |\n",
                row.site,
                row.n,
                row.auc_a,
                row.auc_b,
                row.delta,
                match (row.ci_lower, row.ci_upper) {
                    (Some(l), Some(u)) => format!("{l:+.3} to {u:+.3}"),
                    _ => "CI undefined".to_owned(),
                },
                row.p.map_or_else(
                    || "—".to_owned(),
                    |p| if p < 0.001 {
                        "<0.001".to_owned()
                    } else {
                        format!("{p:.3}")
                    }
                )
            ));
        }
        match comparison.pooled() {
            Some(p) => summary.push_str(&format!(
                "\nRandom-effects summary (k = {}): {:+.3} ({:+.3} to {:+.3}), I² = {:.0}%\n\n",
                p.sites.len(),
                p.estimate,
                p.ci_lower,
                p.ci_upper,
                100.0 * p.i2
            )),
            None => summary.push_str("\nFewer than two sites with an SE: no summary.\n\n"),
        }
    }
    let note = format!(
        "Model comparison: the multimodal, image-only and report-only models trained in three studies on \
         the same synthetic sites, patients, splits and seeds ({} rounds of {} local epochs, secure \
         aggregation {}). Each site compared the multimodal model with each single-modality model on its \
         own validation patients (the paired DeLong test, from the scores its node kept; only ΔAUC, its \
         SE and p left the site); the ΔAUCs are pooled by random effects (identity scale, REML, \
         Knapp–Hartung CI, prediction interval).",
        args.rounds,
        args.local_epochs,
        if args.plain { "off" } else { "on" }
    );
    let page = comparison_page(
        "Model comparison: multimodal against single modalities",
        &note,
        &comparisons,
    );
    write_design(&out, studies, comparisons, summary, &page, started)
}

/// The rows as a markdown table.
fn table(rows: &[DesignRow]) -> String {
    let mut text = String::from("| validated on | n | with LNM | AUC (95% CI) |\n|---|---:|---:|---|\n");
    for row in rows {
        let auc = match (row.auc, row.ci_lower, row.ci_upper) {
            (Some(auc), Some(l), Some(u)) => format!("{auc:.3} ({l:.3}–{u:.3})"),
            (Some(auc), _, _) => format!("{auc:.3}"),
            _ => "undefined".to_owned(),
        };
        text.push_str(&format!(
            "| {} | {} | {} | {auc} |\n",
            row.label, row.n, row.n_positive
        ));
    }
    text
}

/// Writes the design's page, its results as JSON and its summary as markdown into `out`.
pub(super) fn write_design<T: serde::Serialize>(
    out: &std::path::Path,
    studies: Vec<(String, SimulationOutcome)>,
    results: T,
    summary: String,
    page: &str,
    started: Instant,
) -> anyhow::Result<DesignOutcome<T>> {
    let page_file = out.join(DESIGN_PAGE);
    let json = serde_json::to_vec_pretty(&results)?;
    for (file, bytes) in [
        (page_file.clone(), page.as_bytes()),
        (out.join(DESIGN_JSON), json.as_slice()),
        (out.join(DESIGN_MARKDOWN), summary.as_bytes()),
    ] {
        std::fs::write(&file, bytes).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(DesignOutcome {
        studies,
        results,
        summary,
        page: page_file,
        seconds: started.elapsed().as_secs_f64(),
    })
}
