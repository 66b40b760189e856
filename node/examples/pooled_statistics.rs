//! Experiment: which batch-normalisation statistics should a FedAvg model be published with?
//!
//! `cargo run --release -p fedlnm-node --example pooled_statistics -- MODEL.safetensors OUT SITE...`
//! re-estimates the model's normalisation statistics on each training site's pictures (AdaBN, no
//! label read) and writes three checkpoints beside each other in OUT:
//! - `averaged.safetensors`: the sites' means and variances averaged (n-weighted), FedAvg's rule;
//! - `pooled.safetensors`: the means averaged, the variances pooled by the law of total variance
//!   (Σ n_k (v_k + μ_k²) / Σ n_k − μ̄²: linear in what each site sends, so securely aggregable);
//! - `mixed.safetensors`: re-estimated on all sites' pictures shuffled together (what one
//!   centralised pass over the pooled patients would give).
//!
//! Each site's folder is read whole (its held-out patients too). Score the checkpoints with
//! `fedlnm-node evaluate` on the external site. Results: README, "What AdaBN corrects".

use anyhow::{Context as _, bail};
use fedlnm_model::train;
use fedlnm_node::commands::model::{LoadedExamples, load_examples};
use fedlnm_shared::checkpoint::Checkpoint;
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::features::Example;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out, sites @ ..] = args.as_slice() else {
        bail!("usage: pooled_statistics MODEL.safetensors OUT SITE...");
    };
    if sites.is_empty() {
        bail!("name at least one site folder");
    }
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let Checkpoint { config, weights } = Checkpoint::read(&PathBuf::from(model))?;
    let device = ComputeDevice::Cpu;
    let mut all: Vec<Example> = Vec::new();
    let mut per_site = Vec::new();
    for site in sites {
        let LoadedExamples { examples, .. } = load_examples(&PathBuf::from(site), &config, false, true)?;
        let adapted = train::adapt_normalisation(device, &config, &weights, &examples, 0)?;
        eprintln!("{site}: {} patients", examples.len());
        per_site.push((examples.len() as f64, adapted));
        all.extend(examples);
    }
    let total: f64 = per_site.iter().map(|(n, _)| n).sum();
    let mut averaged = weights.clone();
    let mut pooled = weights.clone();
    for (index, tensor) in weights.tensors.iter().enumerate() {
        let Some(layer) = tensor.name.strip_suffix(".running_var") else {
            continue;
        };
        let mean_name = format!("{layer}.running_mean");
        let mean_index = weights
            .tensors
            .iter()
            .position(|t| t.name == mean_name)
            .with_context(|| format!("{} has no {mean_name}", tensor.name))?;
        let channels = tensor.values.len();
        let (mut mean, mut var, mut second) = (
            vec![0.0f64; channels],
            vec![0.0f64; channels],
            vec![0.0f64; channels],
        );
        for (n, adapted) in &per_site {
            let w = n / total;
            let mu = &adapted
                .get(&mean_name)
                .context("adapted model lacks a mean")?
                .values;
            let v = &adapted
                .get(&tensor.name)
                .context("adapted model lacks a variance")?
                .values;
            for c in 0..channels {
                let (mu, v) = (f64::from(mu[c]), f64::from(v[c]));
                mean[c] += w * mu;
                var[c] += w * v;
                second[c] += w * (v + mu * mu);
            }
        }
        for c in 0..channels {
            averaged.tensors[mean_index].values[c] = mean[c] as f32;
            averaged.tensors[index].values[c] = var[c] as f32;
            pooled.tensors[mean_index].values[c] = mean[c] as f32;
            pooled.tensors[index].values[c] = (second[c] - mean[c] * mean[c]) as f32;
        }
        let ratio: f64 = (0..channels)
            .map(|c| (second[c] - mean[c] * mean[c]) / var[c])
            .sum::<f64>()
            / channels as f64;
        eprintln!("{layer}: pooled / averaged variance, mean over channels {ratio:.3}");
    }
    let mixed = train::adapt_normalisation(device, &config, &weights, &all, 0)?;
    for (name, weights) in [("averaged", averaged), ("pooled", pooled), ("mixed", mixed)] {
        let file = out.join(format!("{name}.safetensors"));
        Checkpoint {
            config: config.clone(),
            weights,
        }
        .write(&file)?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}
