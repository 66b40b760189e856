//! Site data: the folder format (`docs/dataset-format.md`), its manifest and images, and the loader that
//! turns them into model inputs while excluding bad patients with their reasons.
//!
//! A site folder holds `patients.csv` and `images/`. [`load_site`] reads both and ends with a
//! [`PatientFlow`]; it fails only when the manifest itself is unusable.

pub mod error;
pub mod flow;
pub mod image;
pub mod manifest;
pub mod report;
pub mod split;

pub use error::{FieldProblem, ImageError, ManifestError, PatientError};
pub use flow::PatientFlow;
pub use image::{CropFractions, ImageTensor, Preprocess};
pub use manifest::{Exclusion, IMAGES_DIR, MANIFEST_FILE, PatientRecord, read_manifest, write_manifest};
pub use split::{Split, SplitError, stratified_k_fold, stratified_split};

use std::path::Path;

/// How to load a site.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadOptions {
    pub preprocess: Preprocess,
    /// Exclude patients without pathology labels (training and validation need them; inference does not).
    pub require_labels: bool,
}

/// One included patient: the record and one tensor per image file.
#[derive(Debug, Clone)]
pub struct LoadedPatient {
    pub record: PatientRecord,
    pub images: Vec<ImageTensor>,
}

/// A loaded site: included patients in manifest order, exclusions with reasons, and the flow count.
#[derive(Debug)]
pub struct SiteData {
    pub patients: Vec<LoadedPatient>,
    pub exclusions: Vec<Exclusion>,
    pub flow: PatientFlow,
}

impl SiteData {
    /// The LNM label of each included patient (`None` where unlabelled).
    #[must_use]
    pub fn lnm_labels(&self) -> Vec<Option<bool>> {
        self.patients
            .iter()
            .map(|p| p.record.labels.map(|labels| labels.lnm))
            .collect()
    }
}

/// Reads the manifest and every image of `site_dir`; bad patients are excluded with their reason.
pub fn load_site(site: &str, site_dir: &Path, options: &LoadOptions) -> Result<SiteData, ManifestError> {
    let started = std::time::Instant::now();
    let manifest = read_manifest(site_dir)?;
    let images_dir = site_dir.join(IMAGES_DIR);
    let mut flow = PatientFlow {
        site: site.to_owned(),
        read: manifest.n_read,
        ..PatientFlow::default()
    };
    let mut exclusions = manifest.exclusions;
    let mut patients = Vec::with_capacity(manifest.records.len());
    for (line, record) in manifest.records {
        let loaded = if options.require_labels && record.labels.is_none() {
            Err(PatientError::LabelsMissing {
                file: manifest.file.clone(),
                line,
                patient_id: record.patient_id.clone(),
            })
        } else {
            record
                .image_files
                .iter()
                .map(|name| {
                    image::load_tensor(&images_dir.join(name), record.image_frame, &options.preprocess)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| PatientError::Image {
                    line,
                    patient_id: record.patient_id.clone(),
                    source,
                })
        };
        match loaded {
            Ok(images) => patients.push(LoadedPatient { record, images }),
            Err(error) => exclusions.push(Exclusion {
                line,
                patient_id: Some(record.patient_id),
                error,
            }),
        }
    }
    exclusions.sort_by_key(|exclusion| exclusion.line);
    for exclusion in &exclusions {
        flow.exclude(exclusion.error.reason());
        tracing::warn!(
            site,
            line = exclusion.line,
            "patient excluded: {}",
            exclusion.error
        );
    }
    flow.included = patients.len();
    tracing::info!(
        site,
        read = flow.read,
        included = flow.included,
        excluded = flow.n_excluded(),
        seconds = started.elapsed().as_secs_f64(),
        "site data loaded"
    );
    Ok(SiteData {
        patients,
        exclusions,
        flow,
    })
}
