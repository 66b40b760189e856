//! `report.html` on the report tests' study: every section is there, its numbers are the records'
//! (the random-effects summary is the statistics engine's meta-analysis of the sites' AUCs, the
//! pooled rows are the pools' secure sums), the page needs nothing outside itself, and a site name
//! cannot inject markup.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

mod report_fixture;

use fedlnm_aggregator::report::{self, html::SECTIONS};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::RoundRecord;
use fedlnm_shared::stats::meta::{SiteEstimate, pooled_auc, random_effects};
use report_fixture::{committed_study, study_rounds};

fn html_of(records: &[RoundRecord]) -> String {
    let state = committed_study(records);
    let out = tempfile::tempdir().unwrap();
    let summary = report::write_report(state.path(), out.path()).unwrap();
    let path = out.path().join(report::REPORT_HTML);
    assert!(summary.files_written.contains(&path));
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_section_is_there_with_the_records_numbers() {
    let records = study_rounds();
    let page = html_of(&records);
    let last = records.last().unwrap();
    for (anchor, title) in SECTIONS {
        assert!(
            page.contains(&format!("<section id=\"{anchor}\">")),
            "section {anchor}"
        );
        assert!(page.contains(title), "title {title}");
    }
    // Each site's row holds its AUC with CI as the records have it.
    for site in &last.sites {
        let auc = format!(
            "{:.3} ({:.3}–{:.3})",
            site.auc.unwrap(),
            site.auc_ci_lower.unwrap(),
            site.auc_ci_upper.unwrap()
        );
        assert!(
            page.contains(&format!("<tr data-site=\"{}\">", site.site)),
            "{}",
            site.site
        );
        assert!(page.contains(&auc), "{} {auc}", site.site);
    }
    // The summary over all sites is the engine's meta-analysis of the sites' AUCs and variances.
    let input: Vec<_> = last
        .sites
        .iter()
        .map(|s| (s.site.clone(), s.auc, s.auc_variance))
        .collect();
    let pooled = pooled_auc(&input).unwrap();
    let summary = format!(
        "{:.3} ({:.3}–{:.3})",
        pooled.auc, pooled.ci_lower, pooled.ci_upper
    );
    assert!(page.contains(&summary), "summary {summary}");
    assert!(page.contains(&format!("{:.2}", pooled.logit.q)));
    // The internal group has two sites: its own summary; the external one has one: none.
    let internal: Vec<_> = input
        .iter()
        .filter(|(name, _, _)| name.starts_with('S'))
        .cloned()
        .collect();
    let internal = pooled_auc(&internal).unwrap();
    assert!(page.contains(&format!(
        "{:.3} ({:.3}–{:.3})",
        internal.auc, internal.ci_lower, internal.ci_upper
    )));
    assert!(page.contains("External validation (validate-only sites)"));
    // The pooled rows come from the secure sums.
    let train_pool = last.pooled_train_sites.as_ref().unwrap();
    assert!(page.contains(&format!("{:.3}", train_pool.auc.unwrap())));
    // One forest row per site with an AUC; figures drawn from data.
    assert_eq!(page.matches("<g class=\"row\"").count(), last.sites.len());
    for figure in [
        "chart roc",
        "chart calibration",
        "chart decision",
        "chart auc-by-round",
        "forest auc-forest",
    ] {
        assert!(page.contains(&format!("<figure class=\"{figure}\">")), "{figure}");
    }
    assert!(page.contains("Youden threshold"));
    // The sites' calibration slopes, summarised by random effects with their SEs.
    let slopes: Vec<SiteEstimate> = last
        .sites
        .iter()
        .map(|s| SiteEstimate {
            site: s.site.clone(),
            estimate: s.calibration_slope.unwrap(),
            variance: s.calibration_slope_se.unwrap().powi(2),
        })
        .collect();
    let slope = random_effects(&slopes).unwrap();
    assert!(page.contains(&format!(
        "{:.3} ({:.3}–{:.3})",
        slope.estimate, slope.ci_lower, slope.ci_upper
    )));
    // The pooled stage agreement: the summed matrices, and κ with its CI from them.
    let confusion = train_pool.stage_confusion.as_ref().unwrap();
    for scale in ["T", "N", "stage"] {
        assert!(page.contains(&format!("<table class=\"confusion\" data-scale=\"{scale}\">")));
    }
    let stage = &confusion.quadratic_kappas()[2];
    let (kappa, se) = (stage.kappa.unwrap(), stage.se.unwrap());
    assert!(page.contains(&format!(
        "{kappa:.3} ({:.3} to {:.3})",
        kappa - 1.959963984540054 * se,
        kappa + 1.959963984540054 * se
    )));
    assert!(page.contains("No analysis of clinical factors has been run"));
    // Flow and characteristics per site, as each node counted them.
    assert!(page.contains("<table class=\"flow\">"));
    for site in &last.sites {
        let cohort = site.cohort.as_ref().unwrap();
        assert!(page.contains(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            site.site,
            cohort.read,
            cohort.read - cohort.included
        )));
        assert!(page.contains(&format!("<tr data-site=\"{0}\"><td>{0} (", site.site)));
    }
    assert!(page.contains("image file missing or unreadable: 3"));
}

#[test]
fn the_page_needs_nothing_outside_itself() {
    let page = html_of(&study_rounds());
    for forbidden in [
        "<script",
        "<link",
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
    ] {
        assert!(!page.contains(forbidden), "the report contains {forbidden}");
    }
    assert!(page.starts_with("<!DOCTYPE html>"));
}

#[test]
fn site_names_are_escaped() {
    let mut records = study_rounds();
    for record in &mut records {
        for site in &mut record.sites {
            if site.role == SiteRole::Validate {
                site.site = "<script>alert(1)</script>".to_owned();
            }
        }
        if let Some(pool) = &mut record.pooled_validation_sites {
            pool.sites = vec!["<script>alert(1)</script>".to_owned()];
        }
    }
    let page = html_of(&records);
    assert!(
        !page.contains("<script"),
        "markup from a site name reached the page"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}
