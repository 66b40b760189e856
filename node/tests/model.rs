//! The model and its training on a tiny synthetic site (CPU, seconds): it learns, its weights round-trip
//! exactly through named tensors and safetensors, modality switches decide which inputs matter, the
//! FedBN names are found, and the CLI trains, evaluates and explains end to end.

// Test helpers outside `#[test]` functions may unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod fixture;

use fedlnm_model::train::{self, TrainingEvent};
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::features::{Example, encode_patient};
use fedlnm_shared::model_config::{AugmentConfig, Modality, ModelConfig, ResNetVariant, TrainPlan};
use fedlnm_shared::weights::{NamedTensors, is_local_norm};
use std::collections::BTreeMap;

fn examples(config: &ModelConfig, n: usize, seed: u64) -> Vec<Example> {
    fixture::patients(n, config.image.input_size, seed)
        .iter()
        .map(|p| {
            encode_patient(
                p,
                config.image.input_size,
                config.report.text_buckets,
                config.report.max_ngram,
            )
            .unwrap()
        })
        .collect()
}

fn scores(config: &ModelConfig, weights: &NamedTensors, examples: &[Example]) -> Vec<f64> {
    train::predict(ComputeDevice::Cpu, config, weights, examples, 16)
        .unwrap()
        .iter()
        .map(|p| p.lnm_probability)
        .collect()
}

/// Trains on the CPU without a validation set or progress reports.
fn train_quietly(
    config: &ModelConfig,
    initial: &NamedTensors,
    train_set: &[Example],
    plan: &TrainPlan,
) -> train::TrainOutcome {
    train::train_local(
        ComputeDevice::Cpu,
        config,
        initial,
        train_set,
        &[],
        plan,
        &mut |_| {},
    )
    .unwrap()
}

fn quick_plan(epochs: usize) -> TrainPlan {
    TrainPlan {
        epochs,
        batch_size: 8,
        learning_rate: 3e-3,
        patience: 0,
        augment: AugmentConfig {
            speckle_sigma: 0.05,
            ..AugmentConfig::default()
        },
        ..TrainPlan::default()
    }
}

#[test]
fn image_branch_learns_the_foci_loss_falls_and_validation_auc_rises() {
    let config = ModelConfig::tiny(Modality::ImageOnly);
    let train_set = examples(&config, 64, 1);
    let validation = examples(&config, 40, 2);
    let initial = train::initial_weights(&config, 5);
    let chance = fedlnm_shared::stats::binary::auc_delong(
        &validation
            .iter()
            .map(|e| e.targets.unwrap().lnm)
            .collect::<Vec<_>>(),
        &scores(&config, &initial, &validation),
    )
    .unwrap()
    .unwrap()
    .auc;
    let mut epochs_seen = 0;
    let outcome = train::train_local(
        ComputeDevice::Cpu,
        &config,
        &initial,
        &train_set,
        &validation,
        &quick_plan(12),
        &mut |p| {
            if let TrainingEvent::Epoch(_) = p {
                epochs_seen += 1;
            }
        },
    )
    .unwrap();
    assert_eq!(epochs_seen, 12);
    assert_eq!(outcome.n_samples, 64);
    let first = &outcome.history[0];
    let last = outcome.history.last().unwrap();
    let best_auc = outcome.history[outcome.best_epoch - 1].val_auc.unwrap();
    for e in &outcome.history {
        eprintln!(
            "epoch {:2}: train loss {:.3} (LNM {:.3}), val AUC {:.3}",
            e.epoch,
            e.train_loss,
            e.train_lnm_loss,
            e.val_auc.unwrap()
        );
    }
    eprintln!(
        "initial AUC {chance:.3}; loss {:.3} -> {:.3}; best val AUC {best_auc:.3} at epoch {}",
        first.train_loss, last.train_loss, outcome.best_epoch
    );
    assert!(
        last.train_loss < 0.8 * first.train_loss,
        "loss did not fall: {:?}",
        outcome.history
    );
    assert!(best_auc >= 0.85, "validation AUC {best_auc} (initial {chance})");
    // The kept weights are the best epoch's: predicting with them reproduces its validation AUC.
    let y: Vec<bool> = validation.iter().map(|e| e.targets.unwrap().lnm).collect();
    let kept = fedlnm_shared::stats::binary::auc_delong(&y, &scores(&config, &outcome.weights, &validation))
        .unwrap()
        .unwrap()
        .auc;
    assert!((kept - best_auc).abs() < 1e-9, "{kept} vs {best_auc}");
}

#[test]
fn named_tensors_and_safetensors_round_trip_exactly_to_identical_predictions() {
    let config = ModelConfig::tiny(Modality::Multimodal);
    // Named tensors -> model -> named tensors is the identity (bit for bit, same order).
    let initial = train::initial_weights(&config, 1);
    let round = train::round_trip(&config, &initial).unwrap();
    assert_eq!(
        round.names().collect::<Vec<_>>(),
        initial.names().collect::<Vec<_>>()
    );
    let bits = |w: &NamedTensors| {
        w.tensors
            .iter()
            .flat_map(|t| t.values.iter().map(|v| v.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&round), bits(&initial));
    let train_set = examples(&config, 16, 3);
    // Two short epochs so that running statistics and every parameter differ from initialisation.
    let outcome = train_quietly(
        &config,
        &train::initial_weights(&config, 1),
        &train_set,
        &quick_plan(2),
    );
    let weights = outcome.weights;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    fedlnm_node::commands::model::write_checkpoint(&file, &config, &weights).unwrap();
    let fedlnm_shared::checkpoint::Checkpoint {
        config: config_back,
        weights: weights_back,
    } = fedlnm_shared::checkpoint::Checkpoint::read(&file).unwrap();
    assert_eq!(config_back, config);
    weights_back.check_same_layout(&weights).unwrap();
    for b in &weights.tensors {
        let a = weights_back.get(&b.name).unwrap();
        assert!(
            a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}",
            a.name
        );
    }
    let before = scores(&config, &weights, &train_set);
    let after = scores(&config, &weights_back, &train_set);
    assert_eq!(
        before.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
        after.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
    );
    // A running statistic moved away from its initial value (so the round trip carried real state).
    let initial = train::initial_weights(&config, 1);
    let var = |w: &NamedTensors| w.get("image.stem_bn.running_var").unwrap().values.clone();
    assert_ne!(var(&initial), var(&weights));
}

#[test]
fn modality_switches_decide_which_inputs_matter() {
    let cases = [
        (Modality::ImageOnly, true, false),
        (Modality::ReportOnly, false, true),
        (Modality::Multimodal, true, true),
    ];
    for (modality, image_matters, report_matters) in cases {
        let config = ModelConfig::tiny(modality);
        let weights = train::initial_weights(&config, 11);
        let base = examples(&config, 6, 4);
        let mut other_image = base.clone();
        let mut other_report = base.clone();
        let donors = examples(&config, 6, 99);
        for ((image_changed, report_changed), donor) in
            other_image.iter_mut().zip(&mut other_report).zip(&donors)
        {
            image_changed.inputs.image = donor.inputs.image.clone();
            report_changed.inputs.structured = donor.inputs.structured.clone();
            report_changed.inputs.text = donor.inputs.text.clone();
            report_changed.inputs.report_numbers = donor.inputs.report_numbers;
            report_changed.inputs.clinical = donor.inputs.clinical;
        }
        let s = scores(&config, &weights, &base);
        let differs = |other: &[Example]| {
            scores(&config, &weights, other)
                .iter()
                .zip(&s)
                .any(|(a, b)| (a - b).abs() > 1e-7)
        };
        assert_eq!(differs(&other_image), image_matters, "{modality:?}: image");
        assert_eq!(differs(&other_report), report_matters, "{modality:?}: report");
    }
}

#[test]
fn fedbn_names_cover_exactly_the_normalisation_layers() {
    let config = ModelConfig::tiny(Modality::Multimodal);
    let weights = train::initial_weights(&config, 0);
    let local: Vec<&str> = weights.local_norm_names().collect();
    // Tiny ResNet: stem + 4 blocks × 2 + 3 projection shortcuts = 12 batch norms × 4 tensors.
    assert_eq!(local.len(), 12 * 4, "{local:?}");
    for suffix in ["gamma", "beta", "running_mean", "running_var"] {
        assert_eq!(local.iter().filter(|n| n.ends_with(suffix)).count(), 12);
    }
    assert!(
        weights
            .names()
            .filter(|n| n.contains("running"))
            .all(is_local_norm)
    );
    assert!(
        weights.get("report.text_embedding.weight").is_some() && weights.get("lnm_head.weight").is_some()
    );
    // ResNet-50 has bottleneck blocks: a third batch norm per block.
    let mut deep = ModelConfig::tiny(Modality::ImageOnly);
    deep.image.variant = ResNetVariant::Resnet50;
    let names: Vec<String> = train::initial_weights(&deep, 0)
        .names()
        .map(str::to_owned)
        .collect();
    assert!(
        names.iter().any(|n| n == "image.blocks.15.bn3.gamma"),
        "{:?}",
        &names[names.len() - 12..]
    );
    assert!(!names.iter().any(|n| n.starts_with("report.")));
}

#[test]
fn different_architectures_have_different_digests_and_layouts() {
    let a = ModelConfig::tiny(Modality::Multimodal);
    let mut b = a.clone();
    b.image.base_width = 16;
    assert_ne!(a.digest(), b.digest());
    let error = train::initial_weights(&b, 0)
        .check_same_layout(&train::initial_weights(&a, 0))
        .unwrap_err();
    assert!(error.to_string().contains("shape"), "{error}");
    let wrong = train::predict(
        ComputeDevice::Cpu,
        &a,
        &train::initial_weights(&b, 0),
        &examples(&a, 2, 0),
        2,
    );
    assert!(wrong.is_err());
}

#[test]
fn without_the_stem_max_pool_the_same_weights_read_the_picture_at_twice_the_resolution() {
    let pooled = ModelConfig::tiny(Modality::ImageOnly);
    let mut fine = pooled.clone();
    fine.image.stem_max_pool = false;
    assert_ne!(fine.digest(), pooled.digest());
    // No parameters change: the same weights load into either model.
    let weights = train::initial_weights(&pooled, 3);
    weights
        .check_same_layout(&train::initial_weights(&fine, 3))
        .unwrap();
    let set = examples(&pooled, 6, 8);
    assert_ne!(scores(&fine, &weights, &set), scores(&pooled, &weights, &set));
    // At a 32-px input the pooled trunk ends in a 1 × 1 map, so its Grad-CAM is one value everywhere;
    // without the pool the last map is 2 × 2 and the heat map has structure.
    let distinct = |config: &ModelConfig| -> Vec<usize> {
        train::grad_cam(ComputeDevice::Cpu, config, &weights, &set)
            .unwrap()
            .unwrap()
            .iter()
            .map(|map| {
                let mut values: Vec<u32> = map.iter().map(|v| v.to_bits()).collect();
                values.sort_unstable();
                values.dedup();
                values.len()
            })
            .collect()
    };
    let pooled_maps = distinct(&pooled);
    assert!(pooled_maps.iter().all(|&n| n == 1), "{pooled_maps:?}");
    let fine_maps = distinct(&fine);
    assert!(fine_maps.iter().any(|&n| n > 4), "{fine_maps:?}");
}

#[test]
fn cli_trains_evaluates_and_explains_a_site_folder() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site_a");
    fixture::write_site(&site, &fixture::patients(48, 40, 8));
    let config_file = dir.path().join("model.toml");
    let config = fedlnm_shared::model_config::ConfigFile {
        model: ModelConfig::tiny(Modality::Multimodal),
        train: quick_plan(6),
    };
    std::fs::write(&config_file, config.to_toml()).unwrap();
    let out = dir.path().join("run");
    let node = env!("CARGO_BIN_EXE_fedlnm-node");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(node).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    let site_arg = site.to_str().unwrap();
    let out_arg = out.to_str().unwrap();
    run(&[
        "train",
        "--data",
        site_arg,
        "--out",
        out_arg,
        "--config",
        config_file.to_str().unwrap(),
        "--val-fraction",
        "0.25",
    ]);
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    assert_eq!(log["n_train"], 36);
    assert_eq!(
        log["config_digest"],
        ModelConfig::tiny(Modality::Multimodal).digest()
    );
    let checkpoint = out.join("model.safetensors");
    let evaluate = |folder: &std::path::Path, more: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--data",
            site_arg,
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--out",
            folder.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        run(&args);
    };
    let eval_out = dir.path().join("eval");
    evaluate(&eval_out, &[]);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["normalisation"], "model");
    let m = &metrics["metrics"];
    assert_eq!(m["n_patients"], 48);
    assert!(m["lnm"]["auc"].as_f64().unwrap() > 0.5);
    assert_eq!(m["t_kappa"]["k"], 7);
    assert_eq!(m["n_kappa"]["k"], 3);
    assert_eq!(m["stage_kappa"]["k"], 5);
    let predictions = std::fs::read_to_string(eval_out.join("predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 49);
    assert!(predictions.starts_with("patient_id,lnm_score,t_pred,n_pred,stage_pred"));
    // With --adapt-normalisation the site's own normalisation statistics score (AdaBN on all of its
    // pictures, evaluate's fixed seed 0): the scores are the adapted model's, not the checkpoint's.
    let adapted_out = dir.path().join("eval-adapted");
    evaluate(&adapted_out, &["--adapt-normalisation"]);
    let lnm_scores = |folder: &std::path::Path| -> Vec<f64> {
        let text = std::fs::read_to_string(folder.join("predictions.csv")).unwrap();
        text.lines()
            .skip(1)
            .map(|line| line.split(',').nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let fedlnm_shared::checkpoint::Checkpoint { config, weights } =
        fedlnm_shared::checkpoint::Checkpoint::read(&checkpoint).unwrap();
    let patients = fedlnm_node::commands::model::load_examples(&site, &config, false, false)
        .unwrap()
        .examples;
    let adapted = train::adapt_normalisation(ComputeDevice::Cpu, &config, &weights, &patients, 0).unwrap();
    let expected: Vec<f64> = train::predict(ComputeDevice::Cpu, &config, &adapted, &patients, 32)
        .unwrap()
        .iter()
        .map(|p| p.lnm_probability)
        .collect();
    let (plain, own) = (lnm_scores(&eval_out), lnm_scores(&adapted_out));
    assert_eq!(own.len(), expected.len());
    assert!(
        own.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5),
        "{own:?} against {expected:?}"
    );
    assert!(
        own.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-4),
        "the checkpoint's statistics scored"
    );
    let stated: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapted_out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(stated["normalisation"], "site_reestimated");
    // --compare-with: the adapted model against the checkpoint's own statistics on the same patients,
    // the statistics engine's paired DeLong test on the two files' scores (Δ = adapted − plain).
    let reference = eval_out.join("predictions.csv");
    let versus_out = dir.path().join("eval-versus");
    evaluate(
        &versus_out,
        &[
            "--adapt-normalisation",
            "--compare-with",
            reference.to_str().unwrap(),
        ],
    );
    let labelled = |folder: &std::path::Path| -> Vec<(bool, f64)> {
        let text = std::fs::read_to_string(folder.join("predictions.csv")).unwrap();
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                let truth = match fields[5] {
                    "" => return None,
                    t => t == "1",
                };
                Some((truth, fields[1].parse().unwrap()))
            })
            .collect()
    };
    let (mine, theirs) = (labelled(&versus_out), labelled(&eval_out));
    let y: Vec<bool> = mine.iter().map(|p| p.0).collect();
    assert_eq!(y, theirs.iter().map(|p| p.0).collect::<Vec<_>>());
    let direct = fedlnm_shared::stats::binary::paired_delong(
        &y,
        &mine.iter().map(|p| p.1).collect::<Vec<_>>(),
        &theirs.iter().map(|p| p.1).collect::<Vec<_>>(),
    )
    .unwrap()
    .unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(versus_out.join("metrics.json")).unwrap()).unwrap();
    let versus = &written["versus"][0];
    assert_eq!(versus["reference"], reference.to_str().unwrap());
    let stat = |key: &str| versus["paired_delong"][key].as_f64().unwrap();
    assert!(
        (stat("delta") - direct.delta).abs() < 1e-4,
        "{versus} against {direct:?}"
    );
    assert!(
        (stat("p") - direct.p.unwrap()).abs() < 1e-3,
        "{versus} against {direct:?}"
    );
    assert!(
        (stat("auc_b") - metrics["metrics"]["lnm"]["auc"].as_f64().unwrap()).abs() < 1e-4,
        "the reference's AUC is the plain evaluation's"
    );
    // A reference of other patients is refused by name; a missing one before anything is scored.
    let fewer = dir.path().join("fewer.csv");
    let text = std::fs::read_to_string(&reference).unwrap();
    std::fs::write(&fewer, text.lines().take(20).collect::<Vec<_>>().join("\n")).unwrap();
    let refused = |file: &std::path::Path, folder: &std::path::Path| {
        let output = std::process::Command::new(node)
            .args(["evaluate", "--data", site_arg, "--checkpoint"])
            .arg(&checkpoint)
            .arg("--out")
            .arg(folder)
            .arg("--compare-with")
            .arg(file)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = refused(&fewer, &dir.path().join("eval-fewer"));
    assert!(
        error.contains("different patients") && error.contains("fewer.csv"),
        "{error}"
    );
    let absent_out = dir.path().join("eval-absent");
    let error = refused(&dir.path().join("absent.csv"), &absent_out);
    assert!(error.contains("absent.csv"), "{error}");
    assert!(!absent_out.exists(), "nothing is scored or written");
    // A site without labels has no patients to compare on: refused before anything is written.
    let unlabelled_site = dir.path().join("site_unlabelled");
    let mut patients = fixture::patients(12, 40, 9);
    for patient in &mut patients {
        patient.record.labels = None;
    }
    fixture::write_site(&unlabelled_site, &patients);
    let unlabelled_out = dir.path().join("eval-unlabelled");
    let output = std::process::Command::new(node)
        .args(["evaluate", "--data"])
        .arg(&unlabelled_site)
        .arg("--checkpoint")
        .arg(&checkpoint)
        .arg("--out")
        .arg(&unlabelled_out)
        .arg("--compare-with")
        .arg(&reference)
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        error.contains("labelled patients") && error.contains("site_unlabelled"),
        "{error}"
    );
    assert!(!unlabelled_out.exists(), "nothing is scored or written");
    let explain_out = dir.path().join("cam");
    run(&[
        "explain",
        "--data",
        site_arg,
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--patients",
        "P0000,P0001",
        "--out",
        explain_out.to_str().unwrap(),
    ]);
    for id in ["P0000", "P0001"] {
        let picture = image::open(explain_out.join(format!("{id}_gradcam.png"))).unwrap();
        assert_eq!(picture.width(), 32);
    }
    // The config digest stored in the checkpoint is checked on load.
    let (weights, mut metadata) = NamedTensors::load_safetensors(&checkpoint).unwrap();
    metadata.insert("fedlnm.config_digest".to_owned(), "0".repeat(64));
    let tampered = dir.path().join("tampered.safetensors");
    weights
        .save_safetensors(&tampered, &metadata.into_iter().collect::<BTreeMap<_, _>>())
        .unwrap();
    let output = std::process::Command::new(node)
        .args([
            "evaluate",
            "--data",
            site_arg,
            "--checkpoint",
            tampered.to_str().unwrap(),
            "--out",
            eval_out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("digest"));
}

/// The L2 distances from `before` to `weights`: of the trainable tensors, and of the running statistics.
fn distances(weights: &NamedTensors, before: &NamedTensors) -> (f64, f64) {
    let mut trainable = 0.0_f64;
    let mut running = 0.0_f64;
    for tensor in &weights.tensors {
        let old = before.get(&tensor.name).unwrap();
        let d: f64 = tensor
            .values
            .iter()
            .zip(&old.values)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        if tensor.name.contains("running_") {
            running += d;
        } else {
            trainable += d;
        }
    }
    (trainable.sqrt(), running.sqrt())
}

/// FedProx: the proximal pull keeps local training close to the round's global model; at lr·μ = 1 the
/// trainable weights cannot leave it at all (running statistics still follow the data).
#[test]
fn fedprox_keeps_local_weights_near_the_global_model() {
    let config = ModelConfig::tiny(Modality::Multimodal);
    let train_set = examples(&config, 32, 11);
    let global = train::initial_weights(&config, 3);
    let distance = |mu: f64| {
        let plan = TrainPlan {
            proximal_mu: mu,
            warmup_fraction: 0.0,
            min_lr_fraction: 1.0,
            ..quick_plan(1)
        };
        distances(
            &train_quietly(&config, &global, &train_set, &plan).weights,
            &global,
        )
    };
    let (plain, plain_running) = distance(0.0);
    let (prox, _) = distance(30.0);
    let (frozen, frozen_running) = distance(1.0 / 3e-3);
    assert!(plain > 0.0 && plain_running > 0.0);
    assert!(prox < 0.8 * plain, "FedProx distance {prox} vs plain {plain}");
    assert!(frozen < 1e-6, "lr·μ = 1 left the global model by {frozen}");
    assert!(frozen_running > 0.0);
}

/// Weight averaging: the weights returned are the running average, which lags behind the last step
/// (closer to where training started) yet has moved.
#[test]
fn weight_averaging_returns_the_running_average_of_the_weights() {
    let config = ModelConfig::tiny(Modality::Multimodal);
    let train_set = examples(&config, 32, 11);
    let initial = train::initial_weights(&config, 3);
    let distance = |ema_decay: f64| {
        let plan = TrainPlan {
            ema_decay,
            warmup_fraction: 0.0,
            min_lr_fraction: 1.0,
            ..quick_plan(1)
        };
        distances(
            &train_quietly(&config, &initial, &train_set, &plan).weights,
            &initial,
        )
        .0
    };
    let last = distance(0.0);
    let averaged = distance(0.9);
    assert!(averaged > 0.0, "the average moved");
    assert!(
        averaged < last,
        "the average {averaged} lags the last step {last}"
    );
    assert_eq!(distance(0.9), averaged, "reproducible");
}

#[test]
fn report_supervision_trains_a_findings_head_that_predictions_ignore() {
    let plain = ModelConfig::tiny(Modality::ImageOnly);
    let config = ModelConfig {
        report_supervision: true,
        ..plain.clone()
    };
    assert_ne!(config.digest(), plain.digest());
    let train_set = examples(&config, 48, 21);
    let initial = train::initial_weights(&config, 4);
    let mut head: Vec<&str> = initial
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|name| name.starts_with("findings_head."))
        .collect();
    head.sort_unstable();
    assert_eq!(head, ["findings_head.bias", "findings_head.weight"]);
    let bias = initial.get("findings_head.bias").unwrap();
    assert_eq!(bias.values.len(), fedlnm_shared::features::n_finding_outputs());
    assert!(
        train::initial_weights(&plain, 4)
            .tensors
            .iter()
            .all(|t| !t.name.starts_with("findings_head"))
    );

    let outcome = train_quietly(&config, &initial, &train_set, &quick_plan(6));
    let findings: Vec<f64> = outcome
        .history
        .iter()
        .map(|e| e.train_findings_loss.unwrap())
        .collect();
    eprintln!("findings loss by epoch: {findings:?}");
    assert!(
        findings[findings.len() - 1] < 0.8 * findings[0],
        "findings loss did not fall: {findings:?}"
    );
    let without = train_quietly(
        &plain,
        &train::initial_weights(&plain, 4),
        &train_set,
        &quick_plan(1),
    );
    assert_eq!(without.history[0].train_findings_loss, None);

    // Predictions never read the head: scrambling it changes no score.
    let before = scores(&config, &outcome.weights, &train_set);
    let mut scrambled = outcome.weights.clone();
    for tensor in &mut scrambled.tensors {
        if tensor.name.starts_with("findings_head.") {
            for (i, value) in tensor.values.iter_mut().enumerate() {
                *value = (i as f32 * 0.37).sin() * 5.0;
            }
        }
    }
    assert_eq!(scores(&config, &scrambled, &train_set), before);

    // The option needs the image branch; the error names it.
    let report_only = ModelConfig {
        report_supervision: true,
        ..ModelConfig::tiny(Modality::ReportOnly)
    };
    assert!(
        report_only
            .validate()
            .unwrap_err()
            .to_string()
            .contains("report_supervision")
    );
}

#[test]
fn cli_quality_check_compares_each_modality_with_the_oracle_and_with_multimodal() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("quality.toml");
    let config = fedlnm_shared::model_config::ConfigFile {
        model: ModelConfig {
            report_supervision: true,
            ..ModelConfig::tiny(Modality::Multimodal)
        },
        train: quick_plan(2),
    };
    std::fs::write(&config_file, config.to_toml()).unwrap();
    let out = dir.path().join("quality");
    let args = [
        "quality",
        "--out",
        out.to_str().unwrap(),
        "--patients",
        "40",
        "--external-patients",
        "60",
        "--image-size",
        "64",
        "--config",
        config_file.to_str().unwrap(),
    ];
    let node = env!("CARGO_BIN_EXE_fedlnm-node");
    let output = std::process::Command::new(node).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    for row in [
        "| multimodal |",
        "| image-only |",
        "| report-only |",
        "Target (external AUC",
    ] {
        assert!(printed.contains(row), "{row} missing from:\n{printed}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("quality.json")).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0]["vs_reference"].is_null());
    let oracle = &report["external_site"]["oracle_auc"];
    for (result, oracle_key) in results.iter().zip(["multimodal", "image", "report_clinical"]) {
        let auc = result["auc"].as_f64().unwrap();
        let oracle_auc = oracle[oracle_key].as_f64().unwrap();
        assert_eq!(result["oracle_auc"].as_f64().unwrap(), oracle_auc);
        assert!((result["gap_to_oracle"].as_f64().unwrap() - (oracle_auc - auc)).abs() < 1e-12);
    }
    // The reported AUC is the one of the written predictions; the paired Δ is the difference of AUCs.
    let predictions = |modality: &str| {
        let mut reader = csv::Reader::from_path(out.join(modality).join("external/predictions.csv")).unwrap();
        reader
            .deserialize::<BTreeMap<String, String>>()
            .map(|row| {
                let row = row.unwrap();
                (row["lnm_true"] == "1", row["lnm_score"].parse::<f64>().unwrap())
            })
            .unzip::<_, _, Vec<bool>, Vec<f64>>()
    };
    let (y, multimodal) = predictions("multimodal");
    assert_eq!(y.len(), 60);
    let recomputed = fedlnm_shared::stats::binary::auc_delong(&y, &multimodal)
        .unwrap()
        .unwrap()
        .auc;
    assert!((recomputed - results[0]["auc"].as_f64().unwrap()).abs() < 1e-6);
    let delta = results[1]["vs_reference"]["delta"].as_f64().unwrap();
    let (_, image_only) = predictions("image-only");
    let image_auc = fedlnm_shared::stats::binary::auc_delong(&y, &image_only)
        .unwrap()
        .unwrap()
        .auc;
    assert!(
        (delta - (recomputed - image_auc)).abs() < 1e-6,
        "{delta} vs {recomputed} - {image_auc}"
    );
    // Report supervision needs the image branch: the report-only run trains without it.
    let report_only = std::fs::read_to_string(out.join("report-only/config.toml")).unwrap();
    assert!(
        !report_only.contains("report_supervision = true"),
        "{report_only}"
    );
    assert!(
        std::fs::read_to_string(out.join("image-only/config.toml"))
            .unwrap()
            .contains("report_supervision = true")
    );
    // A second run never overwrites the first one's results.
    let again = std::process::Command::new(node).args(args).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

/// AdaBN for a site that never trained (a validate-only site of a FedBN study): only the running
/// statistics of the normalisation layers change, towards the site's own images' statistics (no label
/// is read), reproducibly from the seed; every other weight is untouched.
#[test]
fn adabn_re_estimates_only_the_running_statistics_from_the_sites_images() {
    let config = ModelConfig::tiny(Modality::Multimodal);
    let initial = train::initial_weights(&config, 3);
    let mut site = examples(&config, 48, 11);
    // Another scanner: brighter pictures; and no labels at all.
    for example in &mut site {
        for value in &mut example.inputs.image {
            *value = (*value * 0.5 + 0.4).min(1.0);
        }
        example.targets = None;
    }
    let adapted = train::adapt_normalisation(ComputeDevice::Cpu, &config, &initial, &site, 7).unwrap();
    let again = train::adapt_normalisation(ComputeDevice::Cpu, &config, &initial, &site, 7).unwrap();
    assert_eq!(adapted, again, "reproducible from the seed");
    for (before, after) in initial.tensors.iter().zip(&adapted.tensors) {
        assert_eq!(before.name, after.name);
        let running = before.name.contains("running");
        assert_eq!(
            before.values != after.values,
            running,
            "{}: changed {}",
            before.name,
            before.values != after.values
        );
    }
    // The stem's running mean now follows the site's pictures: the mean of its first-layer outputs,
    // not the initial 0.
    let mean = adapted.get("image.stem_bn.running_mean").unwrap();
    assert!(
        mean.values.iter().any(|m| m.abs() > 1e-3),
        "{:?}",
        &mean.values[..4]
    );
    let error = train::adapt_normalisation(ComputeDevice::Cpu, &config, &initial, &site[..1], 7).unwrap_err();
    assert!(error.to_string().contains('1'), "{error}");
}
