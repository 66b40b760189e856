//! The training speed benchmark: training and inference images/s per model configuration, as a
//! markdown table.

use anyhow::Context as _;
use fedlnm_model::train;
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::model_config::{ModelConfig, ResNetVariant};

/// Prints the table on stdout, one row per `VARIANT@SIZE` of `specs`, each timed over `steps` steps
/// of `batch` random inputs (after one warm-up step).
///
/// # Errors
/// A spec that is not `VARIANT@SIZE`, or a device this build cannot use.
pub fn print_bench_table(
    device: ComputeDevice,
    specs: &[String],
    batch: usize,
    steps: usize,
) -> anyhow::Result<()> {
    println!("| model | input | batch | parameters | train img/s | inference img/s | train / inference |");
    println!("|---|---|---|---|---|---|---|");
    for spec in specs {
        let (variant, size) = parse_model_spec(spec)?;
        let mut config = ModelConfig::resnet18();
        config.image.variant = variant;
        config.image.input_size = size;
        if variant == ResNetVariant::Tiny {
            config = ModelConfig {
                image: config.image,
                ..ModelConfig::tiny(config.modality)
            };
            config.image.base_width = 8;
        }
        let result = train::bench(device, &config, batch, steps)?;
        println!(
            "| {spec} | {size}×{size} | {batch} | {} | {:.2} | {:.2} | {:.2} |",
            result.n_parameters,
            result.train_images_per_second,
            result.inference_images_per_second,
            result.train_images_per_second / result.inference_images_per_second,
        );
    }
    Ok(())
}

fn parse_model_spec(spec: &str) -> anyhow::Result<(ResNetVariant, u32)> {
    let (variant, size) = spec
        .split_once('@')
        .with_context(|| format!("'{spec}': expected VARIANT@SIZE"))?;
    let variant: ResNetVariant = serde_json::from_value(serde_json::Value::String(variant.to_owned()))
        .with_context(|| {
            format!("'{variant}': unknown variant (tiny, resnet18, resnet34, resnet50, resnet101)")
        })?;
    let size = size
        .parse()
        .with_context(|| format!("'{size}': not a pixel size"))?;
    Ok((variant, size))
}
