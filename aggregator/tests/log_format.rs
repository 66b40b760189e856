//! `--log-format json` / `FEDLNM_LOG_FORMAT=json` as a log collector sees it: `fedlnm-aggregator` run as
//! a separate process, its standard error a pipe. Every line is a JSON object with `level` and
//! `message`, the error that ends a run included (once, its causes not repeated); the command line
//! wins over the environment, and text stays the default.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use std::path::Path;
use std::process::{Command, Output};

/// How one run is asked for its log format.
struct Case {
    name: &'static str,
    option: Option<&'static str>,
    env: Option<&'static str>,
    json: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "option",
        option: Some("json"),
        env: None,
        json: true,
    },
    Case {
        name: "environment",
        option: None,
        env: Some("json"),
        json: true,
    },
    Case {
        name: "option over environment",
        option: Some("text"),
        env: Some("json"),
        json: false,
    },
    Case {
        name: "default",
        option: None,
        env: None,
        json: false,
    },
];

/// Runs the aggregator with `args` after the case's option, `FEDLNM_LOG` at info.
fn aggregator(case: &Case, args: &[&std::ffi::OsStr]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedlnm-aggregator"));
    if let Some(format) = case.option {
        command.args(["--log-format", format]);
    }
    command.args(args).env("FEDLNM_LOG", "info");
    match case.env {
        Some(format) => command.env("FEDLNM_LOG_FORMAT", format),
        None => command.env_remove("FEDLNM_LOG_FORMAT"),
    };
    command.output().unwrap()
}

/// Every line of `stderr` as a JSON object with a string `level` and `message`.
fn json_lines(case: &str, stderr: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    assert!(!stderr.trim().is_empty(), "{case}: no log at all");
    stderr
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{case}: not a JSON line ({error}): {line}"));
            let object = value
                .as_object()
                .cloned()
                .unwrap_or_else(|| panic!("{case}: {line}"));
            for field in ["level", "message"] {
                assert!(
                    object.get(field).is_some_and(serde_json::Value::is_string),
                    "{case}: no {field}: {line}"
                );
            }
            object
        })
        .collect()
}

fn str_of<'a>(object: &'a serde_json::Map<String, serde_json::Value>, field: &str) -> &'a str {
    object
        .get(field)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

#[test]
fn a_run_that_logs_writes_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in CASES.iter().enumerate() {
        let out = dir.path().join(format!("study-{i}"));
        let output = aggregator(
            case,
            &[
                "provision".as_ref(),
                "--study".as_ref(),
                "thyroid".as_ref(),
                "--sites".as_ref(),
                "S1,S2".as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            output.status.success(),
            "{}: {:?}\n{stderr}",
            case.name,
            output.status
        );
        if case.json {
            let events = json_lines(case.name, &stderr);
            let kits: Vec<_> = events
                .iter()
                .filter(|event| str_of(event, "message") == "startup kit written")
                .collect();
            assert_eq!(kits.len(), 2, "{}: {stderr}", case.name);
            assert!(
                kits.iter().all(|event| str_of(event, "level") == "INFO"),
                "{stderr}"
            );
            // The event's fields sit beside the message, not inside an inner object.
            let sites: Vec<_> = kits.iter().map(|event| str_of(event, "site")).collect();
            assert_eq!(sites, ["S1", "S2"], "{}: {stderr}", case.name);
        } else {
            assert!(stderr.contains("startup kit written"), "{}: {stderr}", case.name);
            assert!(
                stderr
                    .lines()
                    .all(|line| serde_json::from_str::<serde_json::Value>(line).is_err()),
                "{}: a JSON line in a text log:\n{stderr}",
                case.name
            );
        }
        // Standard output is the command's own report, in every format.
        assert!(
            String::from_utf8(output.stdout)
                .unwrap()
                .contains("study 'thyroid' provisioned"),
            "{}",
            case.name
        );
    }
}

#[test]
fn the_error_that_ends_a_run_is_one_json_line_saying_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").join("aggregator.toml");
    for case in &CASES {
        let output = aggregator(
            case,
            &["serve".as_ref(), "--config".as_ref(), missing.as_os_str()],
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{}: {stderr}", case.name);
        let message = if case.json {
            let events = json_lines(case.name, &stderr);
            let errors: Vec<_> = events
                .iter()
                .filter(|event| str_of(event, "level") == "ERROR")
                .collect();
            assert_eq!(errors.len(), 1, "{}: {stderr}", case.name);
            str_of(errors[0], "message").to_owned()
        } else {
            let line = stderr
                .lines()
                .find_map(|line| line.strip_prefix("fedlnm-aggregator: error: "))
                .unwrap_or_else(|| panic!("{}: no error line:\n{stderr}", case.name));
            line.to_owned()
        };
        assert!(message.contains(&display(&missing)), "{}: {message}", case.name);
        // The configuration error says its io::Error source itself; the chain's copy is left out.
        assert_eq!(message.matches("os error").count(), 1, "{}: {message}", case.name);
    }
}

#[test]
fn an_unknown_log_format_in_the_environment_is_a_usage_error() {
    let case = Case {
        name: "unknown",
        option: None,
        env: Some("xml"),
        json: false,
    };
    let output = aggregator(
        &case,
        &["serve".as_ref(), "--config".as_ref(), "none.toml".as_ref()],
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("FEDLNM_LOG_FORMAT") && stderr.contains("'xml'"),
        "{stderr}"
    );
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
