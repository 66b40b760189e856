//! `summary.md`: the last round as a markdown table and the pooled AUCs of every round.

use fedlnm_report::format::{
    aggregation_name, auc_with_ci, fixed, normalisation_statement, percent, short_digest,
};
use fedlnm_report::pools::{pooled_lnm_rate, pools};
use fedlnm_shared::federation::{PooledMetrics, RoundRecord};
use std::fmt::Write as _;

/// `summary.md`: the last round's table, then the pooled AUCs of every round.
pub(super) fn summary_markdown(records: &[&RoundRecord]) -> String {
    let mut text = String::new();
    let Some(last) = records.last() else {
        return text;
    };
    // Writing into a String cannot fail: the `let _ =` below discard an always-Ok result.
    let _ = writeln!(text, "## Study `{}`: final round {}\n", last.study, last.round);
    if last.contributors.is_empty() {
        let _ = writeln!(
            text,
            "Model `{}`: the initial model, before any training round.\n",
            short_digest(&last.model_digest),
        );
    } else if let Some(privacy) = &last.privacy {
        let _ = writeln!(
            text,
            "Model `{}`: {} aggregation of {}, differentially private (each site's delta clipped to \
             L2 norm {}, weighted equally, distributed discrete Gaussian noise of multiplier {}): \
             ε = {:.3} at δ = {:e} over the {} rounds, {:.3} for the last alone (site-level, Rényi DP \
             accountant).\n",
            short_digest(&last.model_digest),
            aggregation_name(last),
            last.contributors.join(", "),
            privacy.clip_norm,
            privacy.noise_multiplier,
            privacy.epsilon_study,
            privacy.delta,
            last.round,
            privacy.epsilon_round,
        );
    } else {
        let _ = writeln!(
            text,
            "Model `{}`: {} aggregation of {} ({} training patients).\n",
            short_digest(&last.model_digest),
            aggregation_name(last),
            last.contributors.join(", "),
            last.total_samples
        );
    }
    text.push_str(
        "| site | role | n | LNM rate | AUC (95% CI) | sensitivity / specificity at Youden | quadratic kappa T / N / stage |\n",
    );
    text.push_str("|---|---|---:|---:|---|---|---|\n");
    for site in &last.sites {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} / {} |",
            site.site,
            site.role,
            site.n_patients,
            percent(Some(site.lnm_rate)),
            auc_with_ci(site.auc, site.auc_ci_lower, site.auc_ci_upper),
            fixed(site.sensitivity),
            fixed(site.specificity),
            fixed(site.kappa_t),
            fixed(site.kappa_n),
            fixed(site.kappa_stage),
        );
    }
    for (name, role, pool) in pools(last) {
        let _ = writeln!(
            text,
            "| **{name}** ({}) | {role} | {} | {} | {} | — | — |",
            pool.sites.join(", "),
            pool.n_patients,
            percent(pooled_lnm_rate(pool)),
            auc_with_ci(pool.auc, pool.auc_ci_lower, pool.auc_ci_upper),
        );
    }
    if !last.sites.is_empty() {
        let _ = writeln!(text, "\n{}", normalisation_statement(last.round, &last.sites));
    }
    text.push_str("\nPooled AUC (95% CI) by round:\n\n");
    for record in records {
        if record.sites.is_empty() {
            let _ = writeln!(
                text,
                "- round {}: {} (no site validated it)",
                record.round,
                if record.round == 0 {
                    "the initial model"
                } else {
                    "model"
                }
            );
            continue;
        }
        let pooled = |pool: Option<&PooledMetrics>| {
            pool.map_or_else(
                || "not pooled".to_owned(),
                |pool| auc_with_ci(pool.auc, pool.auc_ci_lower, pool.auc_ci_upper),
            )
        };
        let _ = writeln!(
            text,
            "- round {}: training sites {}; validation sites {}",
            record.round,
            pooled(record.pooled_train_sites.as_ref()),
            pooled(record.pooled_validation_sites.as_ref()),
        );
    }
    text
}
