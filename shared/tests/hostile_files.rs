//! Hostile files a site or a study could hand over, each refused with an error that names it instead
//! of hanging or exhausting memory: a FIFO where a manifest, a table, a configuration, a checkpoint
//! or an image should be; a header that names a column twice; a checkpoint whose embedded model
//! configuration asks for an absurd architecture (its digest vouches only for itself); an ordinal
//! scale too large for its agreement tables; a manifest without its label columns (refused only where
//! labels are required).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_shared::checkpoint::Checkpoint;
use fedlnm_shared::config::AggregatorConfig;
use fedlnm_shared::model_config::{Modality, ModelConfig};
use fedlnm_shared::stats::{StatsError, kappa};
use fedlnm_shared::table::{InputError, Table};
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `read` on another thread and returns its error message; fails if it does not return (a bound,
/// not a timing claim: reading a FIFO with no writer never returns).
fn refused(read: impl FnOnce() -> Option<String> + Send + 'static) -> String {
    let (sender, answer) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(read());
    });
    answer
        .recv_timeout(Duration::from_secs(60))
        .expect("the reader blocked on the file")
        .expect("the file was accepted")
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let status = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(status.success(), "mkfifo failed");
    path
}

#[test]
fn a_fifo_is_refused_wherever_a_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let table = fifo(dir.path(), "scores.csv");
    let message = refused(move || Table::read(&table).err().map(|e| e.to_string()));
    assert!(
        message.contains("scores.csv") && message.contains("not a regular file"),
        "{message}"
    );
    let config = fifo(dir.path(), "aggregator.toml");
    let message = refused(move || AggregatorConfig::load(&config).err().map(|e| e.to_string()));
    assert!(message.contains("aggregator.toml"), "{message}");
    let checkpoint = fifo(dir.path(), "model.safetensors");
    let message = refused(move || Checkpoint::read(&checkpoint).err().map(|e| e.to_string()));
    assert!(message.contains("model.safetensors"), "{message}");
    let image = fifo(dir.path(), "image.png");
    let message = refused(move || {
        fedlnm_shared::data::image::sniff_format(&image)
            .err()
            .map(|e| e.to_string())
    });
    assert!(message.contains("image.png"), "{message}");
}

#[test]
fn a_header_that_names_a_column_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scores.csv");
    std::fs::write(&file, "y_true,y_score,y_score\n1,0.5,0.25\n").unwrap();
    let error = Table::read(&file).unwrap_err();
    assert!(
        matches!(&error, InputError::DuplicateColumn { column, .. } if column == "y_score"),
        "{error}"
    );
    assert!(error.to_string().contains("scores.csv"), "{error}");
}

#[test]
fn a_checkpoint_asking_for_an_absurd_architecture_is_refused_by_key() {
    let weights = NamedTensors {
        tensors: vec![NamedTensor::new("head.bias", vec![1], vec![0.0]).unwrap()],
    };
    type Forgery = fn(&mut ModelConfig);
    let cases: [(&str, Forgery); 3] = [
        ("report.text_buckets", |c| c.report.text_buckets = 4_000_000_000),
        ("image.input_size", |c| c.image.input_size = 60_000),
        ("image.base_width", |c| c.image.base_width = 100_000),
    ];
    for (key, forge) in cases {
        let mut config = ModelConfig::tiny(Modality::Multimodal);
        forge(&mut config);
        // The digest is recomputed over the forged configuration, as an attacker would.
        let bytes = weights
            .to_safetensors_bytes(&config.checkpoint_metadata())
            .unwrap();
        let error = Checkpoint::from_bytes(&bytes, Path::new("forged.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(key) && error.contains("forged.safetensors"),
            "{key}: {error}"
        );
    }
}

#[test]
fn an_ordinal_scale_too_large_for_its_tables_is_refused() {
    assert!(matches!(
        kappa::cohen_kappa(&[0, 1], &[1, 0], 100_000),
        Err(StatsError::ScaleTooLarge { k: 100_000, .. })
    ));
    assert!(kappa::cohen_kappa(&[0, 1], &[1, 0], kappa::MAX_CATEGORIES).is_ok());
}

#[test]
fn a_checkpoint_with_non_finite_weights_is_refused_by_tensor_name() {
    let config = ModelConfig::tiny(Modality::Multimodal);
    let weights = NamedTensors {
        tensors: vec![
            NamedTensor::new("head.bias", vec![2], vec![0.0, 1.0]).unwrap(),
            NamedTensor::new("head.weight", vec![2], vec![f32::NAN, 1.0]).unwrap(),
        ],
    };
    let bytes = weights
        .to_safetensors_bytes(&config.checkpoint_metadata())
        .unwrap();
    let error = Checkpoint::from_bytes(&bytes, Path::new("nan.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nan.safetensors") && error.contains("head.weight") && error.contains("non-finite"),
        "{error}"
    );
}

#[test]
fn a_truncated_jpeg_is_corrupt_not_a_picture() {
    let dir = tempfile::tempdir().unwrap();
    let picture = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
    let mut jpeg = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let whole = dir.path().join("whole.jpg");
    std::fs::write(&whole, &jpeg).unwrap();
    fedlnm_shared::data::image::read_rgb(&whole, 0).unwrap();
    for (name, keep) in [("third.jpg", jpeg.len() / 3), ("most.jpg", jpeg.len() * 9 / 10)] {
        let file = dir.path().join(name);
        std::fs::write(&file, &jpeg[..keep]).unwrap();
        let error = fedlnm_shared::data::image::read_rgb(&file, 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains(name) && error.contains("truncated"), "{error}");
    }
}

#[test]
fn a_huge_bad_value_is_not_echoed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scores.csv");
    let huge = "x".repeat(1 << 20);
    std::fs::write(&file, format!("y_true,y_score\n1,{huge}\n")).unwrap();
    let table = Table::read(&file).unwrap();
    let error = table.numeric_column("y_score").unwrap_err().to_string();
    assert!(
        error.len() < 400 && error.contains("1048576 bytes"),
        "{error:.400}"
    );
}

#[test]
fn an_image_link_out_of_the_site_is_not_followed_and_only_the_index_image_is_decoded() {
    use fedlnm_shared::data;
    let dir = tempfile::tempdir().unwrap();
    let site = synthetic_site(dir.path(), 6, 3, "tertiary");
    let manifest = site.join(data::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let read = data::read_manifest(&site).unwrap();
    let (_, first) = &read.records[0];
    let (_, second) = &read.records[1];
    // Patient 1's picture becomes a link to a file outside the site folder.
    let outside = dir.path().join("outside.png");
    let linked = site.join(data::IMAGES_DIR).join(&first.image_files[0]);
    std::fs::rename(&linked, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &linked).unwrap();
    // Patient 2 lists its picture 2,000 times: it is checked, but decoded once.
    let many = vec![second.image_files[0].clone(); 2000].join(";");
    std::fs::write(&manifest, text.replacen(&second.image_files[0], &many, 1)).unwrap();

    let options = load_options();
    let loaded = data::load_site("S1", &site, &options).unwrap();
    let excluded: Vec<_> = loaded.exclusions.iter().map(|e| e.error.reason()).collect();
    assert_eq!(
        excluded,
        ["image outside the site folder"],
        "{:?}",
        loaded.exclusions
    );
    let listed_many = loaded
        .patients
        .iter()
        .find(|p| p.record.patient_id == second.patient_id)
        .unwrap();
    assert_eq!(listed_many.record.image_files.len(), 2000);
    assert_eq!(listed_many.images.len(), 1);
}

#[test]
fn a_cell_that_is_not_utf8_is_named_by_column_and_lines_are_file_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scores.csv");
    let mut bytes = b"y_true,y_score\n1,0.5\n0,".to_vec();
    bytes.extend_from_slice(&[0xFF, 0xFE]);
    bytes.extend_from_slice(b"\n");
    std::fs::write(&file, &bytes).unwrap();
    let error = Table::read(&file).unwrap_err();
    assert!(
        matches!(&error, InputError::NotUtf8 { line: 3, column, .. } if column == "y_score"),
        "{error}"
    );
    // A quoted cell spanning two lines: the next row's error names its own file line (4), not its
    // record number (3).
    std::fs::write(&file, "y_true,y_score\n1,\"0.5\n\"\n0,abc\n").unwrap();
    let error = Table::read(&file)
        .unwrap()
        .numeric_column("y_score")
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 4"), "{error}");
}

#[test]
fn a_patient_row_that_is_not_utf8_excludes_that_patient_only() {
    use fedlnm_shared::data;
    let dir = tempfile::tempdir().unwrap();
    let site = synthetic_site(dir.path(), 5, 4, "community");
    let manifest = site.join(data::MANIFEST_FILE);
    let mut bytes = std::fs::read(&manifest).unwrap();
    // Corrupt one byte of the last row's last cell.
    let last = bytes.len() - 2;
    bytes[last] = 0xFF;
    std::fs::write(&manifest, &bytes).unwrap();
    let options = load_options();
    let loaded = data::load_site("S1", &site, &options).unwrap();
    assert_eq!((loaded.flow.read, loaded.patients.len()), (5, 4));
    assert_eq!(loaded.exclusions[0].error.reason(), "text not UTF-8");
    assert!(
        loaded.exclusions[0].error.to_string().contains("field '"),
        "{}",
        loaded.exclusions[0].error
    );
}

/// Rewrites `site`'s manifest without the columns named in `dropped`.
fn drop_manifest_columns(site: &Path, dropped: &[&str]) {
    let manifest = site.join(fedlnm_shared::data::MANIFEST_FILE);
    let mut reader = csv::Reader::from_path(&manifest).unwrap();
    let headers = reader.headers().unwrap().clone();
    let kept: Vec<usize> = (0..headers.len())
        .filter(|&i| !dropped.contains(&&headers[i]))
        .collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let mut writer = csv::Writer::from_path(&manifest).unwrap();
    writer.write_record(kept.iter().map(|&i| &headers[i])).unwrap();
    for row in rows {
        writer.write_record(kept.iter().map(|&i| &row[i])).unwrap();
    }
    writer.flush().unwrap();
}

#[test]
fn label_columns_may_be_absent_only_where_labels_are_not_required() {
    use fedlnm_shared::data::{self, LoadOptions, ManifestError, manifest::LABEL_COLUMNS};
    let dir = tempfile::tempdir().unwrap();
    let site = synthetic_site(dir.path(), 5, 11, "community");
    drop_manifest_columns(&site, LABEL_COLUMNS);
    let unlabelled = LoadOptions {
        require_labels: false,
        ..load_options()
    };
    // Labels not required (check-data --allow-unlabelled): everyone is read, unlabelled.
    let loaded = data::load_site("S1", &site, &unlabelled).unwrap();
    assert_eq!(loaded.patients.len(), 5, "{:?}", loaded.exclusions);
    assert!(loaded.patients.iter().all(|p| p.record.labels.is_none()));
    // Labels required: the manifest is refused, naming every absent label column.
    let error = data::load_site("S1", &site, &load_options()).unwrap_err();
    assert!(
        matches!(error, ManifestError::LabelColumnsMissing { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&LABEL_COLUMNS.join(", ")) && message.contains("patients.csv"),
        "{message}"
    );
    assert!(matches!(
        data::read_manifest(&site).unwrap_err(),
        ManifestError::LabelColumnsMissing { .. }
    ));

    // One label column absent while the others hold labels: those patients miss that field.
    let site = synthetic_site(&dir.path().join("partial"), 5, 11, "community");
    drop_manifest_columns(&site, &["ajcc_stage"]);
    let loaded = data::load_site("S1", &site, &unlabelled).unwrap();
    assert_eq!(loaded.exclusions.len(), 5);
    for exclusion in &loaded.exclusions {
        assert_eq!(exclusion.error.reason(), "missing value");
        assert!(
            exclusion.error.to_string().contains("field 'ajcc_stage'"),
            "{}",
            exclusion.error
        );
    }
    let message = data::load_site("S1", &site, &load_options())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("no label column(s) ajcc_stage in the header"),
        "{message}"
    );
}

/// A synthetic site S1 of `n_patients` PNG patients in `dir`.
fn synthetic_site(dir: &Path, n_patients: usize, seed: u64, profile: &str) -> PathBuf {
    use fedlnm_shared::synth::{self, OutputFormat, SiteProfile, SynthConfig};
    let site = dir.join("S1");
    let config = SynthConfig {
        site: "S1".into(),
        n_patients,
        seed,
        profile: SiteProfile::named(profile).unwrap(),
        format: OutputFormat::Png,
        image_size: 64,
    };
    synth::write_site(&config, &site).unwrap();
    site
}

/// Loading as the tests of the data loader do: 32-px inputs, labels required.
fn load_options() -> fedlnm_shared::data::LoadOptions {
    use fedlnm_shared::data::{CropFractions, LoadOptions, Preprocess};
    LoadOptions {
        preprocess: Preprocess {
            size: 32,
            crop: CropFractions::SYNTHETIC,
        },
        require_labels: true,
    }
}
