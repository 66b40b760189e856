//! The report's first section: the sites' patient flow and characteristics (as each node counted
//! them), and the validation patients and outcome events of the final model.

use super::figures::PoolFigures;
use super::section;
use super::sections::{cell, rate_with_ci, role_name};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{RoundRecord, SiteCohort, SiteRoundMetrics, TIRADS_LEVELS};
use maud::{Markup, html};

/// `n (p%)` of a count among `of`.
fn count_percent(n: u64, of: u64) -> String {
    if of == 0 {
        return format!("{n}");
    }
    #[allow(clippy::cast_precision_loss)] // Patient counts.
    let share = 100.0 * n as f64 / of as f64;
    format!("{n} ({share:.1}%)")
}

/// The age mean and SD of several sites together, exactly from their sizes, means and SDs.
fn pooled_age(cohorts: &[&SiteCohort]) -> Option<(f64, f64)> {
    #[allow(clippy::cast_precision_loss)] // Patient counts.
    let parts: Vec<(f64, f64, f64)> = cohorts
        .iter()
        .filter_map(|c| Some((c.included as f64, c.age_mean?, c.age_sd.unwrap_or(0.0))))
        .collect();
    let n: f64 = parts.iter().map(|p| p.0).sum();
    if n < 2.0 {
        return None;
    }
    let mean = parts.iter().map(|(k, m, _)| k * m).sum::<f64>() / n;
    let within: f64 = parts.iter().map(|(k, _, sd)| (k - 1.0).max(0.0) * sd * sd).sum();
    let between: f64 = parts.iter().map(|(k, m, _)| k * (m - mean).powi(2)).sum();
    Some((mean, ((within + between) / (n - 1.0)).sqrt()))
}

/// The flow and characteristics tables of `sites` (those that reported a cohort) and, with more
/// than one, their totals.
pub(super) fn flow_table(sites: &[SiteRoundMetrics]) -> Markup {
    let cohorts: Vec<(&str, SiteRole, &SiteCohort)> = sites
        .iter()
        .filter_map(|site| Some((site.site.as_str(), site.role, site.cohort.as_ref()?)))
        .collect();
    let total = |field: fn(&SiteCohort) -> u64| cohorts.iter().map(|(_, _, c)| field(c)).sum::<u64>();
    let all: Vec<&SiteCohort> = cohorts.iter().map(|(_, _, c)| *c).collect();
    html! {
        @if cohorts.is_empty() {
            p { "No site has reported its patient flow yet." }
        } @else {
            h3 { "Patient flow" }
            table class="flow" {
                thead { tr { th { "site" } th { "rows read" } th { "excluded" } th { "reasons" } th { "included" }
                    th { "labelled" } th { "training" } th { "validation" } } }
                tbody {
                    @for (site, _, c) in &cohorts {
                        tr { td { (site) } td { (c.read) } td { (c.read - c.included) }
                            td class="reasons" { @for (reason, n) in &c.excluded { (reason) ": " (n) br; } }
                            td { (c.included) } td { (c.labelled) } td { (c.training) } td { (c.validation) } }
                    }
                    @if cohorts.len() > 1 {
                    tr class="pooled" { td { "all sites" } td { (total(|c| c.read)) }
                        td { (total(|c| c.read - c.included)) } td {} td { (total(|c| c.included)) }
                        td { (total(|c| c.labelled)) } td { (total(|c| c.training)) } td { (total(|c| c.validation)) } }
                    }
                }
            }
            h3 { "Characteristics of the included patients" }
            table class="characteristics" {
                thead { tr { th { "site" } th { "n" } th { "age, mean (SD)" } th { "male" } th { "multifocal" }
                    @for level in 1..=TIRADS_LEVELS { th { "TR" (level) } }
                    th { "LNM (of labelled)" } } }
                tbody {
                    @for (site, role, c) in &cohorts {
                        tr data-site=(site) { td { (site) " (" (role) ")" } td { (c.included) }
                            (cell(match (c.age_mean, c.age_sd) {
                                (Some(mean), Some(sd)) => format!("{mean:.1} ({sd:.1})"),
                                (Some(mean), None) => format!("{mean:.1}"),
                                _ => "—".to_owned(),
                            }))
                            td { (count_percent(c.male, c.included)) } td { (count_percent(c.multifocal, c.included)) }
                            @for n in &c.tirads { td { (count_percent(*n, c.included)) } }
                            td { (count_percent(c.lnm, c.labelled)) } }
                    }
                    @if cohorts.len() > 1 {
                    @let included = total(|c| c.included);
                    tr class="pooled" { td { "all sites" } td { (included) }
                        (cell(pooled_age(&all).map_or_else(|| "—".to_owned(), |(m, sd)| format!("{m:.1} ({sd:.1})"))))
                        td { (count_percent(total(|c| c.male), included)) }
                        td { (count_percent(total(|c| c.multifocal), included)) }
                        @for level in 0..TIRADS_LEVELS {
                            td { (count_percent(all.iter().map(|c| c.tirads.get(level).copied().unwrap_or(0)).sum(), included)) }
                        }
                        td { (count_percent(total(|c| c.lnm), total(|c| c.labelled))) } }
                    }
                }
            }
        }
    }
}

pub(super) fn participants(record: &RoundRecord, pools: &[PoolFigures]) -> Markup {
    section(
        "participants",
        "TRIPOD+AI 20a, 20b, 21; TRIPOD-Cluster 10a, 10b",
        html! {
            p class="note" { "Each node counts its own patient flow (manifest rows read, excluded by reason, "
                "included) and summarises its included patients (age, sex, multifocality, ACR TI-RADS level "
                "of the structured report, LNM rate); only these counts leave the site, never a list of "
                "patients." }
            (flow_table(&record.sites))
            h3 { "Validation patients and outcome events" }
            p class="note" { "Labelled validation patients each site scored with the final model "
                "(training sites: their held-out patients; validate-only sites: all their labelled "
                "patients), and the pathologically confirmed LNM rate with its Wilson 95% interval." }
            table class="participants" {
                thead { tr { th { "site" } th { "role" } th { "patients" } th { "with LNM" } th { "LNM rate (95% CI)" } } }
                tbody {
                    @for site in &record.sites {
                        tr { td { (site.site) } td { (role_name(site.role)) } td { (site.n_patients) }
                             td { (site.n_positive) } (cell(rate_with_ci(site.n_positive, site.n_patients))) }
                    }
                    @for pool in pools {
                        @let n = pool.metrics.as_ref().map_or(0, |m| m.n);
                        @let events = pool.metrics.as_ref().map_or(0, |m| m.n_pos);
                        tr class="pooled" { td { (pool.name) } td { (pool.sites.join(", ")) } td { (n) }
                             td { (events) } (cell(rate_with_ci(events, n))) }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedlnm_shared::stats::sum::{mean, sample_variance};

    fn cohort_of(ages: &[f64]) -> SiteCohort {
        let n = ages.len() as u64;
        SiteCohort {
            read: n,
            excluded: std::collections::BTreeMap::new(),
            included: n,
            labelled: n,
            lnm: 0,
            training: 0,
            validation: n,
            age_mean: mean(ages),
            age_sd: sample_variance(ages).map(f64::sqrt),
            male: 0,
            multifocal: 0,
            tirads: vec![n, 0, 0, 0, 0],
        }
    }

    #[test]
    fn the_pooled_age_is_the_mean_and_sd_of_all_patients() {
        let a: Vec<f64> = (0..37).map(|i| 30.0 + f64::from(i) * 0.7).collect();
        let b: Vec<f64> = (0..11).map(|i| 61.0 - f64::from(i) * 1.3).collect();
        let (pooled_mean, pooled_sd) = pooled_age(&[&cohort_of(&a), &cohort_of(&b)]).unwrap();
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        assert!((pooled_mean - mean(&all).unwrap()).abs() < 1e-9);
        assert!((pooled_sd - sample_variance(&all).unwrap().sqrt()).abs() < 1e-9);
        assert_eq!(pooled_age(&[&cohort_of(&[40.0])]), None);
    }
}
