//! The study report on a state folder of three committed rounds (two training sites, one external
//! validation site) whose metrics come from the statistics engine on generated scores: the tables read
//! back to the records, the JSON is the records without histograms, the figures are real PNGs,
//! uncommitted rounds are ignored and a bad round file is named and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

use fedlnm_aggregator::report::{self, ReportError};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::RoundRecord;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod report_fixture;

use report_fixture::{committed_study, round_dir, study_rounds, write_round};

fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    assert_eq!(headers.iter().collect::<Vec<_>>(), report::CSV_COLUMNS);
    reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            headers
                .iter()
                .map(str::to_owned)
                .zip(row.iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// The cell as a number; `None` for an empty cell.
fn cell(row: &BTreeMap<String, String>, column: &str) -> Option<f64> {
    let text = &row[column];
    (!text.is_empty()).then(|| text.parse().unwrap())
}

/// Checks one CSV row against its record, column by column.
fn assert_row_matches(row: &BTreeMap<String, String>, record: &RoundRecord) {
    let site_name = row["site"].as_str();
    assert_eq!(row["round"], record.round.to_string());
    assert_eq!(row["contributors"], record.contributors.join(";"));
    assert_eq!(row["total_samples"], record.total_samples.to_string());
    assert_eq!(row["model_digest"], record.model_digest);
    let aggregation = serde_json::to_value(record.aggregation).unwrap();
    assert_eq!(row["aggregation"], aggregation.as_str().unwrap());
    let expected: Vec<(&str, Option<f64>)> =
        if let Some(site) = record.sites.iter().find(|s| s.site == site_name) {
            assert_eq!(row["role"], site.role.to_string());
            assert_eq!(row["normalisation"], site.normalisation.unwrap().to_string());
            vec![
                ("n_patients", Some(site.n_patients as f64)),
                ("n_positive", Some(site.n_positive as f64)),
                ("lnm_rate", Some(site.lnm_rate)),
                ("auc", site.auc),
                ("auc_ci_lower", site.auc_ci_lower),
                ("auc_ci_upper", site.auc_ci_upper),
                ("youden_threshold", site.youden_threshold),
                ("sensitivity", site.sensitivity),
                ("specificity", site.specificity),
                ("brier", Some(site.brier)),
                ("kappa_t", site.kappa_t),
                ("kappa_n", site.kappa_n),
                ("kappa_stage", site.kappa_stage),
            ]
        } else {
            let (pool, role) = match site_name {
                report::POOLED_TRAIN => (record.pooled_train_sites.as_ref().unwrap(), "train"),
                report::POOLED_VALIDATION => (record.pooled_validation_sites.as_ref().unwrap(), "validate"),
                other => panic!("row for unknown site {other}"),
            };
            assert_eq!(row["role"], role);
            assert_eq!(row["normalisation"], "", "a pool's sites may differ");
            vec![
                ("n_patients", Some(pool.n_patients as f64)),
                ("n_positive", Some(pool.n_positive as f64)),
                ("lnm_rate", Some(pool.n_positive as f64 / pool.n_patients as f64)),
                ("auc", pool.auc),
                ("auc_ci_lower", pool.auc_ci_lower),
                ("auc_ci_upper", pool.auc_ci_upper),
                ("youden_threshold", None),
                ("sensitivity", None),
                ("specificity", None),
                ("brier", None),
                ("kappa_t", None),
                ("kappa_n", None),
                ("kappa_stage", None),
            ]
        };
    for (column, value) in expected {
        assert_eq!(
            cell(row, column),
            value,
            "round {} site {site_name} column {column}",
            record.round
        );
    }
}

/// Every (round, site) the records hold, pools included, in report order.
fn expected_keys(records: &[RoundRecord]) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for record in records {
        for site in &record.sites {
            keys.push((record.round.to_string(), site.site.clone()));
        }
        if record.pooled_train_sites.is_some() {
            keys.push((record.round.to_string(), report::POOLED_TRAIN.to_owned()));
        }
        if record.pooled_validation_sites.is_some() {
            keys.push((record.round.to_string(), report::POOLED_VALIDATION.to_owned()));
        }
    }
    keys
}

fn row_keys(rows: &[BTreeMap<String, String>]) -> Vec<(String, String)> {
    rows.iter()
        .map(|row| (row["round"].clone(), row["site"].clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Tests

#[test]
fn the_fixture_is_realistic() {
    // The checks below are only as good as their data: the model learns, round 0 has an undefined AUC.
    let records = study_rounds();
    let last = records.last().unwrap();
    assert!(last.sites.iter().all(|site| site.auc.unwrap() > 0.7));
    assert!(records[0].sites[2].auc.is_none());
    assert!(records[0].pooled_validation_sites.as_ref().unwrap().auc.is_none());
    assert!(last.pooled_train_sites.as_ref().unwrap().auc.unwrap() > 0.7);
}

#[test]
fn rounds_csv_has_a_row_per_round_site_and_pool_with_the_records_values() {
    let records = study_rounds();
    let state = committed_study(&records);
    let out = tempfile::tempdir().unwrap();
    let summary = report::write_report(state.path(), out.path()).unwrap();
    assert_eq!(summary.rounds_found, 3);
    assert_eq!(summary.final_round, 2);

    let rows = read_csv(&out.path().join(report::ROUNDS_CSV));
    assert_eq!(row_keys(&rows), expected_keys(&records));
    for row in &rows {
        let record = &records[row["round"].parse::<usize>().unwrap()];
        assert_row_matches(row, record);
    }
    // Undefined values are empty cells, never 0 or NaN.
    let v1_round0 = rows
        .iter()
        .find(|row| row["round"] == "0" && row["site"] == "V1")
        .unwrap();
    assert_eq!(v1_round0["auc"], "");
    assert_eq!(v1_round0["sensitivity"], "");
}

#[test]
fn final_sites_csv_holds_the_last_round_only() {
    let records = study_rounds();
    let state = committed_study(&records);
    let out = tempfile::tempdir().unwrap();
    report::write_report(state.path(), out.path()).unwrap();

    let rows = read_csv(&out.path().join(report::FINAL_SITES_CSV));
    assert_eq!(row_keys(&rows), expected_keys(&records[2..]));
    for row in &rows {
        assert_row_matches(row, &records[2]);
    }
}

#[test]
fn rounds_json_is_the_records_without_their_histograms() {
    let records = study_rounds();
    let state = committed_study(&records);
    let out = tempfile::tempdir().unwrap();
    report::write_report(state.path(), out.path()).unwrap();

    let text = std::fs::read_to_string(out.path().join(report::ROUNDS_JSON)).unwrap();
    assert!(!text.contains("histogram"));
    assert!(text.contains("\n  {"), "pretty-printed");
    let mut rounds: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(rounds.len(), records.len());
    // Putting the pools' histograms back gives the records exactly: nothing else was dropped or changed.
    for (value, record) in rounds.iter_mut().zip(&records) {
        assert_eq!(value["sites"].as_array().unwrap().len(), record.sites.len());
        for (name, pool) in [
            ("pooled_train_sites", &record.pooled_train_sites),
            ("pooled_validation_sites", &record.pooled_validation_sites),
        ] {
            if let Some(pool) = pool {
                value[name].as_object_mut().unwrap().insert(
                    "histogram".to_owned(),
                    serde_json::to_value(&pool.histogram).unwrap(),
                );
            }
        }
        let restored: RoundRecord = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(&restored, record);
    }
}

#[test]
fn figures_are_pngs_of_the_documented_size_with_curves_and_text() {
    let records = study_rounds();
    let state = committed_study(&records);
    let out = tempfile::tempdir().unwrap();
    report::write_report(state.path(), out.path()).unwrap();

    for (file, size) in [
        (report::ROC_FIGURE, report::ROC_FIGURE_SIZE),
        (report::AUC_FIGURE, report::AUC_FIGURE_SIZE),
    ] {
        let bytes = std::fs::read(out.path().join(file)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{file}");
        let picture = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        assert_eq!(picture.dimensions(), size, "{file}");
        // Coloured pixels (the curves: neither white, grey nor black) and, in the legend panel on
        // the right, black pixels (its text: the embedded font was used).
        let coloured = picture
            .pixels()
            .filter(|pixel| {
                let [r, g, b] = pixel.0;
                r.max(g).max(b) - r.min(g).min(b) > 60
            })
            .count();
        assert!(coloured > 2_000, "{file}: {coloured} coloured pixels");
        let legend_text = picture
            .enumerate_pixels()
            .filter(|(x, _, pixel)| *x > size.1.min(size.0 * 2 / 3) + 60 && pixel.0.iter().all(|&c| c < 80))
            .count();
        assert!(
            legend_text > 300,
            "{file}: {legend_text} dark pixels in the legend"
        );
    }
}

#[test]
fn summary_markdown_has_the_final_table_and_a_line_per_round() {
    let records = study_rounds();
    let state = committed_study(&records);
    let out = tempfile::tempdir().unwrap();
    report::write_report(state.path(), out.path()).unwrap();

    let summary = std::fs::read_to_string(out.path().join(report::SUMMARY_MD)).unwrap();
    let last = &records[2];
    for site in &last.sites {
        let row = summary
            .lines()
            .find(|line| line.starts_with(&format!("| {} |", site.site)))
            .unwrap_or_else(|| panic!("no table row for {}", site.site));
        let auc = format!(
            "{:.3} ({:.3}–{:.3})",
            site.auc.unwrap(),
            site.auc_ci_lower.unwrap(),
            site.auc_ci_upper.unwrap()
        );
        assert!(row.contains(&auc), "{row} lacks {auc}");
        assert!(row.contains(&format!("| {} |", site.n_patients)), "{row}");
    }
    for pool in [report::POOLED_TRAIN, report::POOLED_VALIDATION] {
        assert!(summary.contains(&format!("| **{pool}**")), "no row for {pool}");
    }
    let round_lines: Vec<&str> = summary
        .lines()
        .filter(|line| line.starts_with("- round "))
        .collect();
    assert_eq!(round_lines.len(), records.len());
    for (line, record) in round_lines.iter().zip(&records) {
        let train = record.pooled_train_sites.as_ref().unwrap().auc.unwrap();
        assert!(line.starts_with(&format!("- round {}:", record.round)), "{line}");
        assert!(line.contains(&format!("training sites {train:.3} (")), "{line}");
    }
    assert!(
        round_lines[0].contains("validation sites undefined"),
        "{}",
        round_lines[0]
    );
    // Which normalisation statistics the figures were scored with, grouped as the sites stated it.
    let roles = |role: SiteRole| -> Vec<&str> {
        last.sites
            .iter()
            .filter(|s| s.role == role)
            .map(|s| s.site.as_str())
            .collect()
    };
    let statement = summary
        .lines()
        .find(|line| line.starts_with("Batch-normalisation statistics at scoring (round 2): "))
        .expect("the statement of the normalisation statistics");
    assert!(
        statement.contains(&format!(
            "{} with the site's own trained normalisation layers (FedBN)",
            roles(SiteRole::Train).join(", ")
        )),
        "{statement}"
    );
    assert!(
        statement.contains(&format!(
            "; {} with statistics re-estimated on the site's own validation pictures",
            roles(SiteRole::Validate).join(", ")
        )),
        "{statement}"
    );
    let html = std::fs::read_to_string(out.path().join(report::REPORT_HTML)).unwrap();
    assert!(html.contains(statement), "the report's methods state it too");
}

#[test]
fn uncommitted_round_folders_are_ignored() {
    let records = study_rounds();
    let state = committed_study(&records);
    // A round being written: a valid record under a dot-name, and a half-written one.
    let mut next = records[2].clone();
    next.round = 3;
    write_round(state.path(), ".round-0003.partial", &next);
    let half_written = round_dir(state.path(), ".round-0004.partial");
    std::fs::create_dir_all(&half_written).unwrap();
    std::fs::write(half_written.join(report::ROUND_FILE), b"{\"study\": \"lnm-syn").unwrap();

    let out = tempfile::tempdir().unwrap();
    let summary = report::write_report(state.path(), out.path()).unwrap();
    assert_eq!((summary.rounds_found, summary.final_round), (3, 2));
    let rows = read_csv(&out.path().join(report::ROUNDS_CSV));
    assert!(rows.iter().all(|row| row["round"] != "3"));
    assert_eq!(row_keys(&rows), expected_keys(&records));
}

/// The report may run beside a serving aggregator: it creates, removes and rewrites nothing in the
/// state folder, not even the leftovers of a round being written.
#[test]
fn the_state_folder_is_left_as_it_was() {
    fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.push((path.clone(), Vec::new()));
                files.extend(listing(&path));
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
        files.sort();
        files
    }
    let records = study_rounds();
    let state = committed_study(&records);
    let mut next = records[2].clone();
    next.round = 3;
    write_round(state.path(), ".round-0003.partial", &next);
    let before = listing(state.path());

    let out = tempfile::tempdir().unwrap();
    report::write_report(state.path(), out.path()).unwrap();
    assert_eq!(listing(state.path()), before);
}

#[test]
fn a_corrupt_round_file_is_named_and_nothing_is_written() {
    let records = study_rounds();
    let state = committed_study(&records);
    let previous = tempfile::tempdir().unwrap();
    report::write_report(state.path(), previous.path()).unwrap();
    let before: Vec<Vec<u8>> = [report::ROUNDS_CSV, report::SUMMARY_MD]
        .iter()
        .map(|file| std::fs::read(previous.path().join(file)).unwrap())
        .collect();

    let corrupt = round_dir(state.path(), "round-0001").join(report::ROUND_FILE);
    let text = std::fs::read(&corrupt).unwrap();
    std::fs::write(&corrupt, &text[..text.len() / 2]).unwrap();

    // A new folder is not even created...
    let fresh = tempfile::tempdir().unwrap();
    let fresh_out = fresh.path().join("report");
    let error = report::write_report(state.path(), &fresh_out).unwrap_err();
    assert!(matches!(error, ReportError::ParseRound { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&corrupt.display().to_string()),
        "{error}"
    );
    assert!(error.is_bad_input());
    assert!(!fresh_out.exists());
    // ...and an earlier report is left as it was, not half replaced.
    report::write_report(state.path(), previous.path()).unwrap_err();
    for (file, bytes) in [report::ROUNDS_CSV, report::SUMMARY_MD].iter().zip(before) {
        assert_eq!(
            std::fs::read(previous.path().join(file)).unwrap(),
            bytes,
            "{file}"
        );
    }
}

#[test]
fn bad_state_folders_are_refused_with_the_file_named() {
    let records = study_rounds();
    /// Makes a bad state folder and returns the path the error must name.
    type Setup = fn(&Path, &[RoundRecord]) -> PathBuf;
    type Expected = fn(&ReportError) -> bool;
    let cases: [(&str, Setup, Expected); 5] = [
        (
            "no rounds folder",
            |state, _| state.join(report::ROUNDS_DIR),
            |error| matches!(error, ReportError::ListRounds { .. }),
        ),
        (
            "only uncommitted rounds",
            |state, records| {
                write_round(state, ".round-0000.partial", &records[0]);
                state.join(report::ROUNDS_DIR)
            },
            |error| matches!(error, ReportError::NoRounds { .. }),
        ),
        (
            "a record in the wrong folder",
            |state, records| {
                write_round(state, "round-0000", &records[0]);
                write_round(state, "round-0001", &records[2]);
                round_dir(state, "round-0001").join(report::ROUND_FILE)
            },
            |error| {
                matches!(
                    error,
                    ReportError::RoundMismatch {
                        recorded: 2,
                        expected: 1,
                        ..
                    }
                )
            },
        ),
        (
            "a committed folder without its record",
            |state, records| {
                write_round(state, "round-0000", &records[0]);
                std::fs::create_dir_all(round_dir(state, "round-0001")).unwrap();
                round_dir(state, "round-0001").join(report::ROUND_FILE)
            },
            |error| matches!(error, ReportError::ReadRound { .. }),
        ),
        (
            "the same round in two folders",
            |state, records| {
                write_round(state, "round-0001", &records[1]);
                write_round(state, "round-00001", &records[1]);
                round_dir(state, "round-00001")
            },
            |error| matches!(error, ReportError::DuplicateRound { round: 1, .. }),
        ),
    ];
    for (case, setup, expected) in cases {
        let state = tempfile::tempdir().unwrap();
        let named = setup(state.path(), &records);
        let out = state.path().join("report");
        let error = report::write_report(state.path(), &out).unwrap_err();
        assert!(expected(&error), "{case}: {error:?}");
        assert!(
            error.to_string().contains(&named.display().to_string()),
            "{case}: {error}"
        );
        assert!(error.is_bad_input(), "{case}");
        assert!(!out.exists(), "{case}");
    }
}

#[test]
fn the_report_command_writes_the_report_and_exits_2_on_a_bad_round() {
    let records = study_rounds();
    let state = committed_study(&records);
    let out = tempfile::tempdir().unwrap();
    let run = |out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fedlnm-aggregator"))
            .arg("report")
            .arg("--state-dir")
            .arg(state.path())
            .arg("--out")
            .arg(out)
            .env("FEDLNM_LOG", "warn")
            .output()
            .unwrap()
    };
    let output = run(out.path());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("report of 3 rounds (final round 2)"), "{stdout}");
    for file in [
        report::ROUNDS_CSV,
        report::FINAL_SITES_CSV,
        report::ROUNDS_JSON,
        report::ROC_FIGURE,
        report::AUC_FIGURE,
        report::SUMMARY_MD,
    ] {
        assert!(out.path().join(file).is_file(), "{file}");
    }

    let corrupt = round_dir(state.path(), "round-0002").join(report::ROUND_FILE);
    std::fs::write(&corrupt, b"[]").unwrap();
    let output = run(&out.path().join("again"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(&corrupt.display().to_string()), "{stderr}");
}
