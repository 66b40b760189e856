//! The `fedlnm-node synth` command end to end: files written, summary printed, bad usage exits 2.

mod common;

#[test]
fn synth_writes_a_site_and_prints_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("S9");
    let out_text = out.to_str().unwrap();
    let summary = common::fedlnm_node_json(&[
        "synth",
        "--site",
        "S9",
        "--patients",
        "40",
        "--seed",
        "3",
        "--out",
        out_text,
        "--profile",
        "rural",
        "--format",
        "dicom",
        "--image-size",
        "64",
    ]);
    assert_eq!(summary["n_patients"], 40);
    assert_eq!(summary["profile"]["name"], "rural");
    assert!(summary["oracle_auc"]["multimodal"].as_f64().unwrap() > 0.5);
    assert!(out.join("patients.csv").is_file() && out.join("synth_summary.json").is_file());
    assert_eq!(std::fs::read_dir(out.join("images")).unwrap().count(), 40);
    assert!(out.join("images").join("S9-00001.dcm").is_file());
}

#[test]
fn an_unknown_profile_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("X");
    common::assert_input_error(
        &[
            "synth",
            "--site",
            "X",
            "--patients",
            "5",
            "--out",
            out.to_str().unwrap(),
            "--profile",
            "urban",
        ],
        &["urban", "tertiary", "--profile"],
    );
}

#[test]
fn check_data_reports_the_patient_flow_and_names_each_exclusion() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("S7");
    let site_text = site.to_str().unwrap();
    common::fedlnm_node_json(&[
        "synth",
        "--site",
        "S7",
        "--patients",
        "20",
        "--seed",
        "5",
        "--out",
        site_text,
        "--image-size",
        "64",
    ]);
    // One truncated PNG, one missing image: both patients are excluded with their reason, the rest load.
    let truncated = site.join("images").join("S7-00003.png");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::remove_file(site.join("images").join("S7-00011.png")).unwrap();

    let output = common::fedlnm_node(&["check-data", "--data", site_text, "--image-size", "32"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "| read from the manifest | 20 |",
        "| excluded | 2 |",
        "| included | 18 |",
        "S7-00003",
        "S7-00011",
    ] {
        assert!(
            stdout.contains(expected),
            "check-data output lacks '{expected}':\n{stdout}"
        );
    }

    // A folder without a manifest is unusable as a whole: exit code 2, naming the file.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    common::assert_input_error(
        &["check-data", "--data", empty.to_str().unwrap()],
        &["patients.csv"],
    );
}
