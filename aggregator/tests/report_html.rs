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
    // Each site's own calibration groups and decision curve, as it reported them: one curve per site,
    // and its net benefit at p_t = 0.2 in the table.
    for (id, per_site) in [("calibration-sites", 1), ("decision-sites", 1)] {
        let start = page
            .find(&format!("<figure class=\"chart {id}\">"))
            .unwrap_or_else(|| panic!("figure {id}"));
        let end = start + page[start..].find("</figure>").unwrap();
        let curves = page[start..end].matches("<polyline").count();
        assert!(curves >= per_site * last.sites.len(), "{id}: {curves} curves");
    }
    for site in &last.sites {
        let curves = site.curves.as_ref().unwrap();
        assert_eq!(curves.calibration.len(), 10);
        assert!(page.contains(&format!("<td>{}: model</td>", site.site)));
        assert!(
            page.contains(&format!("<td>{:.3}</td>", curves.net_benefit[19])),
            "{}",
            site.site
        );
    }
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

/// A stored analysis whose adjusted model is separated and one of whose sites refused: the page says
/// so in words and shows no odds ratio for the separated model, while the crude fits that exist are
/// shown with their CIs.
#[test]
fn a_separated_analysis_is_reported_as_such() {
    use fedlnm_aggregator::store::RoundStore;
    use fedlnm_shared::analysis::{AnalysisConfig, AnalysisResult, FitOutcome, SiteExclusion, SiteRate};
    use fedlnm_shared::stats::logistic::{FitStatus, LogisticFit, Separation, SeparationKind, TermEstimate};

    let records = study_rounds();
    let state = committed_study(&records);
    let analysis = AnalysisConfig::registered();
    let term = |name: &str, or: Option<(f64, f64, f64)>| TermEstimate {
        name: name.to_owned(),
        coef: or.map(|(o, _, _)| o.ln()),
        se: or.map(|_| 0.2),
        z: or.map(|_| 2.0),
        p: or.map(|_| 0.04),
        or: or.map(|(o, _, _)| o),
        or_ci_lower: or.map(|(_, l, _)| l),
        or_ci_upper: or.map(|(_, _, u)| u),
    };
    let fit = |status: FitStatus, terms: Vec<TermEstimate>, separation: Option<Separation>| LogisticFit {
        status,
        n: 300,
        n_positive: 100,
        outcome_rate: 1.0 / 3.0,
        loglik: (status == FitStatus::Ok).then_some(-180.0),
        iterations: 6,
        terms,
        separation,
    };
    let separated = fit(
        FitStatus::Separation,
        analysis.terms.iter().map(|t| term(t, None)).collect(),
        Some(Separation {
            kind: SeparationKind::QuasiComplete,
            terms: vec!["capsule_contact_over_25".to_owned()],
            n_boundary: 12,
        }),
    );
    let crude: Vec<FitOutcome> = analysis
        .terms
        .iter()
        .map(|t| FitOutcome {
            terms: vec![t.clone()],
            fit: Some(fit(
                FitStatus::Ok,
                vec![term("const", None), term(t, Some((1.9, 1.2, 3.01)))],
                None,
            )),
            error: None,
        })
        .collect();
    let result = AnalysisResult {
        sites: vec![SiteRate {
            site: "S1".to_owned(),
            n: 300,
            events: 100,
            rate: 1.0 / 3.0,
            ci_lower: 0.28,
            ci_upper: 0.39,
        }],
        pooled: None,
        excluded: vec![SiteExclusion {
            site: "S2".to_owned(),
            reason: "fewer than 10 labelled patients".to_owned(),
        }],
        adjusted: FitOutcome {
            terms: analysis.terms.clone(),
            fit: Some(separated),
            error: None,
        },
        crude,
        steps: 9,
        analysis,
    };
    RoundStore::open(state.path())
        .unwrap()
        .write_analysis(&result)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    report::write_report(state.path(), out.path()).unwrap();
    let page = std::fs::read_to_string(out.path().join(report::REPORT_HTML)).unwrap();
    assert!(page.contains(
        "separation: no finite odds ratio exists for this model; none is reported (quasi-complete \
         separation along capsule_contact_over_25; 12 patients predicted perfectly)"
    ));
    assert!(page.contains("not included: fewer than 10 labelled patients"));
    // Each term's row: the crude odds ratio, and a dash for the separated adjusted model.
    for name in &result.analysis.terms {
        assert!(
            page.contains(&format!(
                "<tr data-term=\"{name}\"><td>{name}</td><td>1.90 (1.20–3.01)</td><td>0.040</td><td class=\"undefined\">—</td>"
            )),
            "{name}"
        );
    }
    assert!(!page.contains("Adjusted model: n ="));
    // The forest plot shows the crude odds ratios only, under their heading.
    assert!(!page.contains(">Adjusted odds ratios</text>"));
    assert!(page.contains(">Crude odds ratios</text>"));
}
