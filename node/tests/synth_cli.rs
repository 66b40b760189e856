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
