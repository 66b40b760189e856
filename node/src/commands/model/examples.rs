//! A site folder's patients, encoded as model inputs for one model config.

use anyhow::{Context as _, bail};
use fedlnm_shared::data::{self, LoadOptions, Preprocess};
use fedlnm_shared::features::{Example, encode_patient};
use fedlnm_shared::federation::SiteCohort;
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::staging::Stage;
use std::path::Path;

/// A site's encoded patients.
pub struct LoadedExamples {
    pub examples: Vec<Example>,
    /// Each example's pathological stage (when labelled).
    pub stages: Vec<Option<Stage>>,
    /// The site's patient flow and characteristics (its training and validation sizes still 0:
    /// the caller splits).
    pub cohort: SiteCohort,
}

/// Loads a site and encodes its patients for `config`; with `prefix`, ids become `site/id` (pooling).
pub fn load_examples(
    dir: &Path,
    config: &ModelConfig,
    require_labels: bool,
    prefix: bool,
) -> anyhow::Result<LoadedExamples> {
    let site = dir
        .file_name()
        .map_or_else(|| "site".to_owned(), |name| name.to_string_lossy().into_owned());
    let options = LoadOptions {
        preprocess: Preprocess {
            size: config.image.input_size,
            ..Preprocess::default()
        },
        require_labels,
    };
    let site_data = data::load_site(&site, dir, &options)
        .with_context(|| format!("cannot load site folder {}", dir.display()))?;
    let mut examples = Vec::with_capacity(site_data.patients.len());
    let mut stages = Vec::with_capacity(site_data.patients.len());
    for patient in &site_data.patients {
        let mut example = encode_patient(
            patient,
            config.image.input_size,
            config.report.text_buckets,
            config.report.max_ngram,
        )?;
        if prefix {
            example.patient_id = format!("{site}/{}", example.patient_id);
        }
        stages.push(patient.record.labels.map(|labels| labels.stage));
        examples.push(example);
    }
    if examples.is_empty() {
        bail!(
            "no usable patient in {} ({} excluded)",
            dir.display(),
            site_data.exclusions.len()
        );
    }
    Ok(LoadedExamples {
        examples,
        stages,
        cohort: SiteCohort::of_site(&site_data, 0, 0),
    })
}
