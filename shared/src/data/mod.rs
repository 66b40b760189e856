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
pub use manifest::{
    Exclusion, IMAGES_DIR, LabelColumns, MANIFEST_FILE, PatientRecord, read_manifest, read_manifest_with,
    write_manifest,
};
pub use split::{Split, SplitError, stratified_k_fold, stratified_split};

use std::path::Path;

/// How to load a site.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadOptions {
    pub preprocess: Preprocess,
    /// Exclude patients without pathology labels (training and validation need them; inference does not).
    /// Without it the label columns may also be absent from the manifest's header.
    pub require_labels: bool,
}

/// One included patient: the record and one tensor per image file.
#[derive(Debug, Clone)]
pub struct LoadedPatient {
    pub record: PatientRecord,
    /// The index image (the first of `record.image_files`), decoded; the other files are checked to
    /// exist inside the site folder, not decoded (the model reads the index image only).
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

/// The patient's index image, decoded, once every one of its image files is a regular file inside the
/// images folder.
fn load_index_image(
    images_dir: &Path,
    site_root: &Path,
    record: &PatientRecord,
    preprocess: &Preprocess,
) -> Result<ImageTensor, ImageError> {
    for name in &record.image_files {
        let file = images_dir.join(name);
        match std::fs::canonicalize(&file) {
            Ok(resolved) if !resolved.starts_with(site_root) => return Err(ImageError::OutsideSite { file }),
            Ok(_) => crate::files::check_regular(&file).map_err(|source| ImageError::Unreadable {
                file: file.clone(),
                source,
            })?,
            Err(_) => return Err(ImageError::Missing { file }),
        }
    }
    let index = record.image_files.first().map(String::as_str).unwrap_or_default();
    image::load_tensor(&images_dir.join(index), record.image_frame, preprocess)
}

/// Reads the manifest and every image of `site_dir`; bad patients are excluded with their reason.
pub fn load_site(site: &str, site_dir: &Path, options: &LoadOptions) -> Result<SiteData, ManifestError> {
    let started = std::time::Instant::now();
    let label_columns = if options.require_labels {
        LabelColumns::Required
    } else {
        LabelColumns::Optional
    };
    let manifest = read_manifest_with(site_dir, label_columns)?;
    let images_dir = site_dir.join(IMAGES_DIR);
    // Image paths must resolve inside the images folder: a symbolic link in it that points out is not
    // followed (the folder itself may be a link, to another disk say).
    let site_root = std::fs::canonicalize(&images_dir).unwrap_or_else(|_| images_dir.clone());
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
            load_index_image(&images_dir, &site_root, &record, &options.preprocess)
                .map(|index| vec![index])
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
