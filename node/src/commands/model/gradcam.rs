//! Grad-CAM overlays of the image branch: one PNG per chosen patient, the heat map blended into the
//! picture the model saw.

use super::examples::load_examples;
use anyhow::{Context as _, bail};
use fedlnm_model::train;
use fedlnm_shared::checkpoint::Checkpoint;
use fedlnm_shared::config::ComputeDevice;
use std::path::PathBuf;

/// One set of Grad-CAM overlays, as plain data (what `explain` builds from its command line).
#[derive(Debug, Clone)]
pub struct ExplainJob {
    /// A checkpoint written by training, of a model with an image branch.
    pub checkpoint: PathBuf,
    /// The site folder of the patients.
    pub data: PathBuf,
    /// Pseudonymous ids of included patients of `data`.
    pub patients: Vec<String>,
    /// Output folder (created): one `<id>_gradcam.png` per patient.
    pub out: PathBuf,
    /// Where to run the model; for CUDA, prepared with [`super::prepare_device`].
    pub device: ComputeDevice,
}

/// Writes the Grad-CAM overlay of each chosen patient; returns the files written, in `patients` order.
///
/// # Errors
/// An unusable checkpoint or site folder, a model without an image branch, a patient not among the
/// included ones, a device this build cannot use, or a file that cannot be written (named).
pub fn explain_patients(job: &ExplainJob) -> anyhow::Result<Vec<PathBuf>> {
    let Checkpoint { config, weights } = Checkpoint::read(&job.checkpoint)?;
    if !config.modality.uses_image() {
        bail!(
            "the checkpoint's model ({:?}) has no image branch to explain",
            config.modality
        );
    }
    let examples = load_examples(&job.data, &config, false, false)?.examples;
    let mut chosen = Vec::new();
    for id in &job.patients {
        let example = examples.iter().find(|e| &e.patient_id == id).with_context(|| {
            format!(
                "patient '{id}' is not among the included patients of {}",
                job.data.display()
            )
        })?;
        chosen.push(example.clone());
    }
    let maps = train::grad_cam(job.device, &config, &weights, &chosen)?.unwrap_or_default();
    std::fs::create_dir_all(&job.out).with_context(|| format!("cannot create {}", job.out.display()))?;
    let size = config.image.input_size;
    let mut files = Vec::with_capacity(chosen.len());
    for (example, map) in chosen.iter().zip(&maps) {
        let overlay = overlay(&example.inputs.image, map, size);
        let file = job
            .out
            .join(format!("{}_gradcam.png", sanitize(&example.patient_id)));
        overlay
            .save(&file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        tracing::info!(patient = %example.patient_id, file = %file.display(), "Grad-CAM written");
        files.push(file);
    }
    Ok(files)
}

/// The image with the heat map blended in (red = high), as an RGB picture.
fn overlay(image: &[f32], map: &[f32], size: u32) -> image::RgbImage {
    let side = size as usize;
    let plane = side * side;
    image::RgbImage::from_fn(size, size, |x, y| {
        let i = y as usize * side + x as usize;
        let heat = map.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0);
        let colour = [heat, 1.0 - (2.0 * heat - 1.0).abs(), 1.0 - heat];
        let alpha = 0.45 * heat.sqrt();
        let channel = |c: usize| {
            let base = image.get(c * plane + i).copied().unwrap_or(0.0);
            // Within [0, 255] after the clamp: the cast is exact enough for a picture.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = (((1.0 - alpha) * base + alpha * colour[c]).clamp(0.0, 1.0) * 255.0).round() as u8;
            value
        };
        image::Rgb([channel(0), channel(1), channel(2)])
    })
}

/// A patient id made safe as a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
