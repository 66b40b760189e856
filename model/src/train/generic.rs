//! The training loop, prediction and Grad-CAM, generic over the burn backend. Only [`super::backend`]
//! names concrete backends; callers outside use the plain-data facade in [`super`].

use super::{EpochLog, Prediction, TrainError, TrainOutcome, TrainingEvent};
use crate::model::{Anchor, Batch, LnmModel, Outputs, from_named, pull_towards, to_named};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::backend::AutodiffBackend;
use fedlnm_shared::features::{Example, N_N, N_T, PatientInputs, augment_image, image_finding_fields};
use fedlnm_shared::model_config::{ModelConfig, TrainPlan};
use fedlnm_shared::stats::binary::auc_delong;
use fedlnm_shared::weights::NamedTensors;
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Freshly initialised weights, reproducible from `seed` on a given backend.
pub fn initial_weights<B: Backend>(config: &ModelConfig, seed: u64, device: &B::Device) -> NamedTensors {
    B::seed(device, seed);
    to_named(&LnmModel::<B>::new(config, device))
}

/// Trains from `initial` on `train` (labelled), selecting the epoch with the best validation AUC
/// (the last epoch when `validation` is empty), and returns the new weights with the sample count.
pub fn train_local<B: AutodiffBackend>(
    config: &ModelConfig,
    initial: &NamedTensors,
    train: &[Example],
    validation: &[Example],
    plan: &TrainPlan,
    device: &B::Device,
    progress: &mut dyn FnMut(&TrainingEvent),
) -> Result<TrainOutcome, TrainError> {
    let labelled: Vec<(&PatientInputs, super::Targets)> = train
        .iter()
        .filter_map(|e| e.targets.map(|t| (&e.inputs, t)))
        .collect();
    if labelled.len() < 2 {
        return Err(TrainError::TooFewPatients {
            found: labelled.len(),
        });
    }
    B::seed(device, plan.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut model = from_named(LnmModel::<B>::new(config, device), initial)?;
    // FedProx: the round's global model, on the device once.
    let anchor = (plan.proximal_mu > 0.0).then(|| Anchor::<B>::new(initial, device));
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(plan.weight_decay as f32)
        .init();
    let n_pos = labelled.iter().filter(|(_, t)| t.lnm).count();
    let positive_weight = if plan.balance_lnm && n_pos > 0 {
        (labelled.len() - n_pos) as f64 / n_pos as f64
    } else {
        1.0
    };
    let batch_size = plan.batch_size.min(labelled.len());
    let steps_per_epoch = labelled.len() / batch_size;
    let total_steps = steps_per_epoch * plan.epochs;
    let size = config.image.input_size as usize;

    let mut outcome = TrainOutcome {
        weights: initial.clone(),
        n_samples: labelled.len(),
        history: Vec::new(),
        best_epoch: 0,
    };
    let mut best_auc = f64::NEG_INFINITY;
    let mut order: Vec<usize> = (0..labelled.len()).collect();
    let mut step = 0;
    // Weight averaging: the running average of the weights after each step (see TrainPlan::ema_decay).
    let mut average = (plan.ema_decay > 0.0).then(|| initial.clone());
    for epoch in 1..=plan.epochs {
        let started = Instant::now();
        order.shuffle(&mut rng);
        let mut sums = [0.0_f64; 5];
        // Whole batches only: batch normalisation needs at least two patients per batch.
        for chunk in order.chunks_exact(batch_size) {
            let inputs: Vec<&PatientInputs> = chunk.iter().map(|&i| labelled[i].0).collect();
            let targets: Vec<super::Targets> = chunk.iter().map(|&i| labelled[i].1).collect();
            let images = config.modality.uses_image().then(|| {
                inputs
                    .iter()
                    .map(|p| {
                        let mut image = p.image.clone();
                        augment_image(&mut image, size, &plan.augment, &mut rng);
                        image
                    })
                    .collect::<Vec<_>>()
            });
            let batch = Batch::<B>::new(config, &inputs, images.as_deref(), device);
            let outputs = model.forward(&batch);
            let losses = multitask_loss(&outputs, &inputs, &targets, positive_weight, device);
            let total = losses.total(plan);
            let values = [
                scalar(&total),
                scalar(&losses.lnm),
                scalar(&losses.t),
                scalar(&losses.n),
                losses.findings.as_ref().map_or(0.0, scalar),
            ];
            for (sum, value) in sums.iter_mut().zip(values) {
                *sum += value;
            }
            let learning_rate = plan.learning_rate_at(step, total_steps);
            let grads = GradientsParams::from_grads(total.backward(), &model);
            model = optimizer.step(learning_rate, model, grads);
            if let Some(anchor) = &anchor {
                model = pull_towards(model, anchor, (learning_rate * plan.proximal_mu).min(1.0));
            }
            if let Some(average) = &mut average {
                blend_into(average, &to_named(&model.valid()), plan.ema_decay_at(step));
            }
            step += 1;
            progress(&TrainingEvent::Step {
                epoch,
                step,
                total_steps,
                loss: values[0],
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        let (val_auc, val_loss) = if validation.is_empty() {
            (None, None)
        } else {
            // The weights this epoch offers: the running average, or the model itself.
            let offered = match &average {
                Some(average) => from_named(LnmModel::<B::InnerBackend>::new(config, device), average)?,
                None => model.valid(),
            };
            let predictions = predict_with(&offered, config, validation, plan.batch_size, device);
            validation_summary(validation, &predictions)
        };
        let n_steps = steps_per_epoch.max(1) as f64;
        let log = EpochLog {
            epoch,
            learning_rate: plan.learning_rate_at(step.saturating_sub(1), total_steps),
            train_loss: sums[0] / n_steps,
            train_lnm_loss: sums[1] / n_steps,
            train_t_loss: sums[2] / n_steps,
            train_n_loss: sums[3] / n_steps,
            train_findings_loss: config.report_supervision.then(|| sums[4] / n_steps),
            val_auc,
            val_lnm_loss: val_loss,
            seconds,
            images_per_second: (steps_per_epoch * batch_size) as f64 / seconds.max(1e-9),
        };
        progress(&TrainingEvent::Epoch(log.clone()));
        outcome.history.push(log);
        let score = val_auc.unwrap_or(f64::NEG_INFINITY);
        if validation.is_empty() || score > best_auc {
            best_auc = score;
            outcome.best_epoch = epoch;
            outcome.weights = match &average {
                Some(average) => average.clone(),
                None => to_named(&model.valid()),
            };
        } else if plan.patience > 0 && epoch - outcome.best_epoch >= plan.patience {
            tracing::info!(
                epoch,
                best_epoch = outcome.best_epoch,
                "early stopping: no better validation AUC"
            );
            break;
        }
    }
    Ok(outcome)
}

/// `average ← d · average + (1 − d) · weights`, tensor by tensor (same layout).
fn blend_into(average: &mut NamedTensors, weights: &NamedTensors, d: f64) {
    let d = d as f32;
    for (a, w) in average.tensors.iter_mut().zip(&weights.tensors) {
        for (a, &w) in a.values.iter_mut().zip(&w.values) {
            *a = d * *a + (1.0 - d) * w;
        }
    }
}

/// Batches of AdaBN's re-estimation, and its sweeps over the examples: with the layers' momentum of
/// 0.1, the running statistics end as averages over the last few dozen batches.
const ADAPT_BATCH: usize = 16;
const ADAPT_PASSES: usize = 3;

/// See [`super::adapt_normalisation`]: forward passes in training mode (batch statistics; the running
/// averages updated with the layers' momentum) over shuffled whole batches, no gradient step.
pub fn adapt_normalisation<B: AutodiffBackend>(
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
    seed: u64,
    device: &B::Device,
) -> Result<NamedTensors, TrainError> {
    if examples.len() < 2 {
        return Err(TrainError::TooFewPatients {
            found: examples.len(),
        });
    }
    // Training mode needs the autodiff backend, whose graphs burn 0.21 frees only in a backward pass:
    // a forward pass of tracked parameters without one would stay in memory, activations and all,
    // until the process ends (4.9 GB for 2,000 patients). So no parameter is tracked, and the few
    // steps burn records of untracked operations are swept after each batch.
    let model = from_named(LnmModel::<B>::new(config, device), weights)?.no_grad();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let batch_size = ADAPT_BATCH.min(examples.len());
    for _ in 0..ADAPT_PASSES {
        order.shuffle(&mut rng);
        for chunk in order.chunks_exact(batch_size) {
            let inputs: Vec<&PatientInputs> = chunk.iter().map(|&i| &examples[i].inputs).collect();
            // Training mode on an autodiff backend: the batch's statistics normalise and update the
            // running ones; the outputs are not needed.
            drop(model.forward(&Batch::<B>::new(config, &inputs, None, device)));
            sweep_autodiff_graphs::<B>(device);
        }
    }
    Ok(to_named(&model.valid()))
}

/// Frees the autodiff graphs no live tensor refers to. burn 0.21 has no call for it but sweeps them
/// after any backward pass: one over a one-element tensor does it.
fn sweep_autodiff_graphs<B: AutodiffBackend>(device: &B::Device) {
    drop(Tensor::<B, 1>::zeros([1], device).require_grad().sum().backward());
}

/// Predictions of the model `weights` for `examples` (inference: batch normalisation uses the running
/// statistics).
pub fn predict<B: Backend>(
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Prediction>, TrainError> {
    let model = from_named(LnmModel::<B>::new(config, device), weights)?;
    Ok(predict_with(&model, config, examples, batch_size, device))
}

/// Grad-CAM of the LNM logit on the image branch's last feature map: a `size × size` heat map in [0, 1]
/// (bilinearly upsampled) for each example, or `None` for a model without an image branch.
pub fn grad_cam<B: AutodiffBackend>(
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
    device: &B::Device,
) -> Result<Option<Vec<Vec<f32>>>, TrainError> {
    if !config.modality.uses_image() {
        return Ok(None);
    }
    // Inference mode (running statistics) on the inner backend's weights, then lifted to autodiff only
    // to read the gradient at the feature map.
    let model = from_named(LnmModel::<B::InnerBackend>::new(config, device), weights)?;
    let model: LnmModel<B> = LnmModel::from_inner(model);
    let size = config.image.input_size as usize;
    let mut maps = Vec::with_capacity(examples.len());
    for example in examples {
        let batch = Batch::<B>::new(config, &[&example.inputs], None, device);
        let (outputs, feature_map) = model.forward_with_feature_map(&batch, true);
        let Some(feature_map) = feature_map else {
            return Ok(None);
        };
        let grads = outputs.lnm.sum().backward();
        let Some(gradient) = feature_map.grad(&grads) else {
            return Ok(None);
        };
        let [_, channels, h, w] = gradient.dims();
        let weights_per_channel = gradient.mean_dims(&[2, 3]).reshape([1, channels, 1, 1]);
        let activation = feature_map.inner();
        let cam = relu((activation * weights_per_channel).sum_dim(1)).reshape([h * w]);
        let values: Vec<f32> = cam
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        maps.push(upsample(&values, h, w, size));
    }
    Ok(Some(maps))
}

/// Losses of one batch (each a scalar tensor).
struct Losses<B: Backend> {
    lnm: Tensor<B, 1>,
    t: Tensor<B, 1>,
    n: Tensor<B, 1>,
    /// Report supervision (models with a findings head).
    findings: Option<Tensor<B, 1>>,
}

impl<B: Backend> Losses<B> {
    fn total(&self, plan: &TrainPlan) -> Tensor<B, 1> {
        let heads = self.lnm.clone() * plan.lnm_weight
            + self.t.clone() * plan.t_weight
            + self.n.clone() * plan.n_weight;
        match &self.findings {
            Some(findings) => heads + findings.clone() * plan.report_supervision_weight,
            None => heads,
        }
    }
}

/// Class-weighted LNM binary cross-entropy (weighted mean) plus T and N cross-entropies, plus the
/// report-supervision loss when the model predicts findings.
fn multitask_loss<B: Backend>(
    outputs: &Outputs<B>,
    inputs: &[&PatientInputs],
    targets: &[super::Targets],
    positive_weight: f64,
    device: &B::Device,
) -> Losses<B> {
    let n = targets.len();
    let y: Vec<f32> = targets.iter().map(|t| f32::from(u8::from(t.lnm))).collect();
    let w: Vec<f32> = targets
        .iter()
        .map(|t| if t.lnm { positive_weight as f32 } else { 1.0 })
        .collect();
    let weight_sum: f32 = w.iter().sum();
    let y = Tensor::<B, 1>::from_data(TensorData::new(y, [n]), device);
    let w = Tensor::<B, 1>::from_data(TensorData::new(w, [n]), device);
    let x = outputs.lnm.clone();
    // Stable BCE with logits: max(x, 0) - x y + log(1 + exp(-|x|)).
    let bce = relu(x.clone()) - x.clone() * y + x.abs().neg().exp().log1p();
    let lnm = (bce * w).sum() / weight_sum;
    let t = cross_entropy(outputs.t.clone(), targets.iter().map(|t| t.t), N_T, device);
    let n_loss = cross_entropy(outputs.n.clone(), targets.iter().map(|t| t.n), N_N, device);
    let findings = outputs
        .findings
        .as_ref()
        .map(|logits| findings_loss(logits.clone(), inputs, device));
    Losses {
        lnm,
        t,
        n: n_loss,
        findings,
    }
}

/// Report supervision: the mean over the image findings of each one's cross-entropy against the
/// category the radiologist reported, and of the squared error of the scaled diameter (the last output).
fn findings_loss<B: Backend>(
    logits: Tensor<B, 2>,
    inputs: &[&PatientInputs],
    device: &B::Device,
) -> Tensor<B, 1> {
    let fields = image_finding_fields();
    let mut start = 0;
    let mut total: Option<Tensor<B, 1>> = None;
    for &(field, first_row, categories) in &fields {
        let classes = inputs
            .iter()
            .map(|p| (p.structured[field] as usize).saturating_sub(first_row));
        let loss = cross_entropy(
            logits.clone().narrow(1, start, categories),
            classes,
            categories,
            device,
        );
        total = Some(total.map_or(loss.clone(), |sum| sum + loss));
        start += categories;
    }
    let n = inputs.len();
    let diameters: Vec<f32> = inputs.iter().map(|p| p.report_numbers[0]).collect();
    let diameters = Tensor::<B, 1>::from_data(TensorData::new(diameters, [n]), device);
    let predicted = logits.narrow(1, start, 1).reshape([n]);
    let squared_error = (predicted - diameters).powi_scalar(2).mean();
    let sum = total.map_or(squared_error.clone(), |sum| sum + squared_error);
    sum / (fields.len() + 1) as f64
}

fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    classes: impl Iterator<Item = usize>,
    k: usize,
    device: &B::Device,
) -> Tensor<B, 1> {
    let mut one_hot = Vec::new();
    for class in classes {
        one_hot.extend((0..k).map(|c| f32::from(u8::from(c == class))));
    }
    let n = one_hot.len() / k;
    let one_hot = Tensor::<B, 2>::from_data(TensorData::new(one_hot, [n, k]), device);
    (log_softmax(logits, 1) * one_hot).sum().neg() / n as f64
}

fn predict_with<B: Backend>(
    model: &LnmModel<B>,
    config: &ModelConfig,
    examples: &[Example],
    batch_size: usize,
    device: &B::Device,
) -> Vec<Prediction> {
    let mut predictions = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let inputs: Vec<&PatientInputs> = chunk.iter().map(|e| &e.inputs).collect();
        let outputs = model.forward(&Batch::<B>::new(config, &inputs, None, device));
        let lnm = to_vec(burn::tensor::activation::sigmoid(outputs.lnm));
        let t = to_vec(softmax(outputs.t, 1));
        let n = to_vec(softmax(outputs.n, 1));
        for (index, example) in chunk.iter().enumerate() {
            predictions.push(Prediction::new(
                example,
                f64::from(lnm[index]),
                &t[index * N_T..(index + 1) * N_T],
                &n[index * N_N..(index + 1) * N_N],
            ));
        }
    }
    predictions
}

/// Validation AUC and LNM log-loss (`None` when undefined: one class only).
fn validation_summary(validation: &[Example], predictions: &[Prediction]) -> (Option<f64>, Option<f64>) {
    let pairs: Vec<(bool, f64)> = validation
        .iter()
        .zip(predictions)
        .filter_map(|(e, p)| e.targets.map(|t| (t.lnm, p.lnm_probability)))
        .collect();
    if pairs.is_empty() {
        return (None, None);
    }
    let y: Vec<bool> = pairs.iter().map(|p| p.0).collect();
    let s: Vec<f64> = pairs.iter().map(|p| p.1.clamp(0.0, 1.0)).collect();
    let auc = auc_delong(&y, &s).ok().flatten().map(|a| a.auc);
    let loss = pairs
        .iter()
        .map(|&(y, s)| {
            let s = s.clamp(1e-7, 1.0 - 1e-7);
            if y { -s.ln() } else { -(1.0 - s).ln() }
        })
        .sum::<f64>()
        / pairs.len() as f64;
    (auc, Some(loss))
}

fn scalar<B: Backend>(tensor: &Tensor<B, 1>) -> f64 {
    to_vec(tensor.clone())
        .first()
        .copied()
        .map_or(f64::NAN, f64::from)
}

fn to_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    // Model outputs are float tensors: the conversion to f32 cannot fail.
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// Bilinear upsampling of an `h × w` map to `size × size`, scaled to [0, 1] by its maximum.
fn upsample(values: &[f32], h: usize, w: usize, size: usize) -> Vec<f32> {
    let max = values.iter().copied().fold(0.0_f32, f32::max);
    let at = |y: usize, x: usize| values[y * w + x] / if max > 0.0 { max } else { 1.0 };
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let fy = ((y as f32 + 0.5) * h as f32 / size as f32 - 0.5).clamp(0.0, (h - 1) as f32);
            let fx = ((x as f32 + 0.5) * w as f32 / size as f32 - 0.5).clamp(0.0, (w - 1) as f32);
            // Clamped to the map: the casts are floors within range.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (y0, x0) = (fy as usize, fx as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (dy, dx) = (fy - y0 as f32, fx - x0 as f32);
            let top = at(y0, x0) * (1.0 - dx) + at(y0, x1) * dx;
            let bottom = at(y1, x0) * (1.0 - dx) + at(y1, x1) * dx;
            out.push(top * (1.0 - dy) + bottom * dy);
        }
    }
    out
}

/// Measured throughput of one configuration (images per second).
pub fn bench<B: AutodiffBackend>(
    config: &ModelConfig,
    batch_size: usize,
    steps: usize,
    device: &B::Device,
) -> super::BenchResult {
    use rand::Rng as _;
    B::seed(device, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let size = config.image.input_size as usize;
    let examples: Vec<PatientInputs> = (0..batch_size)
        .map(|_| PatientInputs {
            image: (0..3 * size * size).map(|_| rng.random::<f32>()).collect(),
            image_size: config.image.input_size,
            structured: vec![0; fedlnm_shared::features::STRUCTURED_FIELDS.len()],
            report_numbers: [0.0],
            clinical: [0.0, 1.0, 0.0],
            text: fedlnm_shared::features::hash_text(
                "hypoechoic solid nodule",
                config.report.text_buckets,
                3,
            ),
            age_years: 40.0,
        })
        .collect();
    let inputs: Vec<&PatientInputs> = examples.iter().collect();
    let targets: Vec<super::Targets> = (0..batch_size)
        .map(|i| super::Targets {
            lnm: i % 2 == 0,
            t: i % N_T,
            n: i % N_N,
        })
        .collect();
    let plan = TrainPlan::default();
    let mut model = LnmModel::<B>::new(config, device);
    let n_parameters = to_named(&model).n_values();
    let mut optimizer = AdamWConfig::new().init();
    let mut train_step = |model: LnmModel<B>| {
        let batch = Batch::<B>::new(config, &inputs, None, device);
        let losses = multitask_loss(&model.forward(&batch), &inputs, &targets, 1.0, device);
        let total = losses.total(&plan);
        let grads = GradientsParams::from_grads(total.backward(), &model);
        let model = optimizer.step(1e-4, model, grads);
        // Reading a parameter back waits for the device to finish the step.
        let _ = to_vec(model.lnm_head_weight());
        model
    };
    model = train_step(model); // Warm-up (allocations, autotune).
    let started = Instant::now();
    for _ in 0..steps {
        model = train_step(model);
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let inner = model.valid();
    let inner_device = device;
    let infer = || {
        let outputs = inner.forward(&Batch::<B::InnerBackend>::new(
            config,
            &inputs,
            None,
            inner_device,
        ));
        to_vec(outputs.lnm)
    };
    let _ = infer();
    let started = Instant::now();
    for _ in 0..steps {
        let _ = infer();
    }
    let infer_seconds = started.elapsed().as_secs_f64();
    let images = (steps * batch_size) as f64;
    super::BenchResult {
        n_parameters,
        train_images_per_second: images / train_seconds.max(1e-9),
        inference_images_per_second: images / infer_seconds.max(1e-9),
    }
}
