//! Typed errors of the site data loader. A [`ManifestError`] stops the run (no usable manifest); a
//! [`PatientError`] excludes one patient with its reason and the run goes on.

use crate::category::UnknownCategory;
use std::path::PathBuf;

/// The manifest as a whole cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Unreadable, not CSV, or without a column the format requires (the one CSV reader's error).
    #[error(transparent)]
    Csv(#[from] crate::table::InputError),
    /// Label columns absent from the header while the run needs pathology labels.
    #[error("{}: no label column(s) {columns} in the header; this run needs pathology labels (only a site that just runs predictions may leave the label columns out)", file.display())]
    LabelColumnsMissing { file: PathBuf, columns: String },
    #[error("cannot write {}: {message}", file.display())]
    Write { file: PathBuf, message: String },
}

/// What is wrong with one field's value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FieldProblem {
    #[error("missing value")]
    Missing,
    #[error(transparent)]
    UnknownCategory(#[from] UnknownCategory),
    #[error("not a number")]
    NotANumber,
    #[error("out of range: expected {expected}")]
    OutOfRange { expected: &'static str },
}

/// One patient cannot be used; they are excluded with this reason. Every variant names the file, the
/// manifest line (the header is line 1) and, where it applies, the patient and the field.
#[derive(Debug, thiserror::Error)]
pub enum PatientError {
    #[error("{}, line {line}, field '{column}': not UTF-8 text", file.display())]
    NotUtf8 {
        file: PathBuf,
        line: u64,
        column: String,
    },
    #[error("{}, line {line}: the row has {found} fields but the header has {expected}", file.display())]
    RaggedRow {
        file: PathBuf,
        line: u64,
        found: usize,
        expected: usize,
    },
    #[error("{}, line {line}, patient '{patient_id}', field '{field}': {problem} (value: '{value}')", file.display())]
    BadField {
        file: PathBuf,
        line: u64,
        patient_id: String,
        field: &'static str,
        value: String,
        problem: FieldProblem,
    },
    #[error("{}, line {line}: duplicated patient id '{patient_id}' (first seen on line {first_line})", file.display())]
    DuplicatePatient {
        file: PathBuf,
        line: u64,
        patient_id: String,
        first_line: u64,
    },
    #[error("{}, line {line}, patient '{patient_id}': inconsistent labels: {problem}", file.display())]
    InconsistentLabels {
        file: PathBuf,
        line: u64,
        patient_id: String,
        problem: String,
    },
    #[error("{}, line {line}, patient '{patient_id}': no pathology labels (this run needs them)", file.display())]
    LabelsMissing {
        file: PathBuf,
        line: u64,
        patient_id: String,
    },
    #[error("line {line}, patient '{patient_id}', field 'image_files': {source}")]
    Image {
        line: u64,
        patient_id: String,
        source: ImageError,
    },
}

/// An image file that cannot be turned into a tensor. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image file {} does not exist", file.display())]
    Missing { file: PathBuf },
    #[error("cannot read image file {}: {source}", file.display())]
    Unreadable { file: PathBuf, source: std::io::Error },
    #[error("image file {} is neither PNG, JPEG nor DICOM", file.display())]
    UnknownFormat { file: PathBuf },
    #[error("corrupt or truncated {format} file {}: {message}", file.display())]
    Corrupt {
        file: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("DICOM file {} has no pixel data", file.display())]
    DicomNoPixelData { file: PathBuf },
    #[error("DICOM file {}: unsupported {attribute} '{value}'", file.display())]
    DicomUnsupported {
        file: PathBuf,
        attribute: &'static str,
        value: String,
    },
    /// A transfer syntax the loader cannot decode (named, with its UID).
    #[error("DICOM file {}: unsupported DICOM encoding {transfer_syntax} (supported: {})", file.display(), super::image::SUPPORTED_DICOM_ENCODINGS)]
    DicomUnsupportedEncoding { file: PathBuf, transfer_syntax: String },
    /// Pixel-module attributes that contradict each other or the pixel data (named, with their values).
    #[error("DICOM file {}: inconsistent pixel description: {problem}", file.display())]
    DicomInconsistent { file: PathBuf, problem: String },
    /// A frame over the size limit, refused from the header before its pixels are read.
    #[error("DICOM file {}: {what} is {bytes} bytes ({detail}), over the limit of {limit} bytes", file.display())]
    DicomTooLarge {
        file: PathBuf,
        what: &'static str,
        detail: String,
        bytes: u64,
        limit: u64,
    },
    #[error("DICOM file {}: frame {frame} requested but it has {n_frames} frame(s)", file.display())]
    FrameOutOfRange {
        file: PathBuf,
        frame: u32,
        n_frames: u32,
    },
    #[error("image file {}: {width}x{height} pixels is too small after cropping the annotation bands", file.display())]
    TooSmall { file: PathBuf, width: u32, height: u32 },
    #[error("image file {} resolves outside the images folder (a link out of it is not followed)", file.display())]
    OutsideSite { file: PathBuf },
}

impl PatientError {
    /// The short exclusion reason that the patient-flow table counts.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RaggedRow { .. } => "malformed manifest row",
            Self::NotUtf8 { .. } => "text not UTF-8",
            Self::BadField { problem, .. } => match problem {
                FieldProblem::Missing => "missing value",
                FieldProblem::UnknownCategory(_) => "unknown category",
                FieldProblem::NotANumber => "not a number",
                FieldProblem::OutOfRange { .. } => "value out of range",
            },
            Self::DuplicatePatient { .. } => "duplicated patient id",
            Self::InconsistentLabels { .. } => "inconsistent pathology labels",
            Self::LabelsMissing { .. } => "pathology labels missing",
            Self::Image { source, .. } => source.reason(),
        }
    }
}

impl ImageError {
    /// The short exclusion reason that the patient-flow table counts.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "image file missing",
            Self::Unreadable { .. } | Self::UnknownFormat { .. } | Self::Corrupt { .. } => {
                "image unreadable or corrupt"
            }
            Self::DicomNoPixelData { .. } => "DICOM without pixel data",
            Self::DicomUnsupported { .. } | Self::DicomUnsupportedEncoding { .. } => {
                "unsupported DICOM encoding"
            }
            Self::DicomInconsistent { .. } => "inconsistent DICOM pixel description",
            Self::DicomTooLarge { .. } => "DICOM frame too large",
            Self::FrameOutOfRange { .. } => "requested frame out of range",
            Self::TooSmall { .. } => "image too small",
            Self::OutsideSite { .. } => "image outside the site folder",
        }
    }
}
