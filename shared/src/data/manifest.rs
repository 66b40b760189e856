//! The site manifest `patients.csv`: one row per patient, parsed and checked field by field.
//!
//! Reading never fails on a bad row: the patient is excluded with a [`PatientError`] that names the file,
//! line and field. Only an unusable file (unreadable, malformed header, missing column) is fatal; the
//! label columns may be absent where labels are not needed ([`LabelColumns::Optional`]).

use super::error::{FieldProblem, ManifestError, PatientError};
use super::report::{
    CapsuleContact, Clinical, Composition, EchogenicFoci, Echogenicity, Language, Lobe, Margin,
    PathologyLabels, Pole, Sex, Shape, UltrasoundReport, Vascularity,
};
use crate::category::UnknownCategory;
use crate::staging::{self, MCategory, NCategory, Stage, TCategory};
use crate::table::CsvReader;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// File name of the manifest inside a site folder.
pub const MANIFEST_FILE: &str = "patients.csv";
/// Folder of the image files inside a site folder.
pub const IMAGES_DIR: &str = "images";
/// The oldest age the manifest accepts (years).
pub const MAX_AGE_YEARS: f64 = 100.0;
/// The largest nodule diameter the manifest accepts (mm).
pub const MAX_DIAMETER_MM: f64 = 150.0;

/// The manifest's columns, in the order the generator writes them. Readers look columns up by name.
pub const COLUMNS: &[&str] = &[
    "patient_id",
    "image_files",
    "image_frame",
    "age_years",
    "sex",
    "multifocal",
    "composition",
    "echogenicity",
    "shape",
    "margin",
    "echogenic_foci",
    "max_diameter_mm",
    "lobe",
    "pole",
    "capsule_contact",
    "vascularity",
    "report_language",
    "report_text",
    "lnm",
    "lnm_central",
    "lnm_lateral",
    "t_category",
    "n_category",
    "m_category",
    "ajcc_stage",
];

/// The label columns: all empty means "no labels" (inference only); all filled means labelled.
pub const LABEL_COLUMNS: &[&str] = &[
    "lnm",
    "lnm_central",
    "lnm_lateral",
    "t_category",
    "n_category",
    "m_category",
    "ajcc_stage",
];

/// One patient as the manifest describes them. Holds a pseudonym only, never an identifier.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientRecord {
    /// Pseudonymous patient id, unique within the site.
    pub patient_id: String,
    /// Image file names relative to the site's `images/` folder (the first is the index image).
    pub image_files: Vec<String>,
    /// Which frame of a multi-frame DICOM to use (0-based; ignored for PNG/JPEG).
    pub image_frame: u32,
    pub clinical: Clinical,
    pub report: UltrasoundReport,
    pub labels: Option<PathologyLabels>,
}

/// The outcome of reading a manifest: usable records and the excluded rows with their reasons.
#[derive(Debug)]
pub struct ManifestRead {
    pub file: PathBuf,
    /// Data rows read (included + excluded).
    pub n_read: usize,
    /// Usable records with the manifest line each came from.
    pub records: Vec<(u64, PatientRecord)>,
    pub exclusions: Vec<Exclusion>,
}

/// One excluded patient (or row) and why.
#[derive(Debug)]
pub struct Exclusion {
    pub line: u64,
    /// The patient id when the row had a readable one.
    pub patient_id: Option<String>,
    pub error: PatientError,
}

/// Whether the header of `patients.csv` must hold the [`LABEL_COLUMNS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelColumns {
    /// Every label column must be in the header (a run that trains or validates).
    Required,
    /// Label columns may be left out of the header (a site that only runs predictions); an absent
    /// column reads as empty cells, so a patient is unlabelled unless some labels are given.
    Optional,
}

/// Reads and checks `dir/patients.csv`, whose header must hold every column (labels included).
pub fn read_manifest(dir: &Path) -> Result<ManifestRead, ManifestError> {
    read_manifest_with(dir, LabelColumns::Required)
}

/// Reads and checks `dir/patients.csv`; `label_columns` says whether the label columns may be absent.
pub fn read_manifest_with(dir: &Path, label_columns: LabelColumns) -> Result<ManifestRead, ManifestError> {
    let file = dir.join(MANIFEST_FILE);
    let mut reader = CsvReader::open(&file, "the manifest", false)?;
    let mut index = HashMap::new();
    for &column in COLUMNS.iter().filter(|column| !LABEL_COLUMNS.contains(column)) {
        index.insert(column, reader.column_index(column)?);
    }
    let mut absent_labels = Vec::new();
    for &column in LABEL_COLUMNS {
        match reader.column_index(column) {
            Ok(position) => {
                index.insert(column, position);
            }
            Err(_) => absent_labels.push(column),
        }
    }
    if label_columns == LabelColumns::Required && !absent_labels.is_empty() {
        return Err(ManifestError::LabelColumnsMissing {
            file,
            columns: absent_labels.join(", "),
        });
    }
    let n_columns = reader.headers().len();

    let mut read = ManifestRead {
        file: file.clone(),
        n_read: 0,
        records: Vec::new(),
        exclusions: Vec::new(),
    };
    let mut first_line_of: HashMap<String, u64> = HashMap::new();
    for record in reader.records() {
        let (line, record) = match record {
            Ok(record) => record,
            // A row with a cell that is not UTF-8 text excludes that patient, not the site.
            Err(crate::table::InputError::NotUtf8 { file, line, column }) => {
                read.n_read += 1;
                read.exclusions.push(Exclusion {
                    line,
                    patient_id: None,
                    error: PatientError::NotUtf8 { file, line, column },
                });
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        read.n_read += 1;
        if record.len() != n_columns {
            read.exclusions.push(Exclusion {
                line,
                patient_id: None,
                error: PatientError::RaggedRow {
                    file: file.clone(),
                    line,
                    found: record.len(),
                    expected: n_columns,
                },
            });
            continue;
        }
        let row = Row {
            file: &file,
            line,
            cells: &record,
            index: &index,
        };
        let patient_id = row.cell("patient_id").to_owned();
        // A repeated id is a duplicate even when its first row was itself excluded.
        let parsed = match first_line_of.get(&patient_id) {
            Some(&first_line) if !patient_id.is_empty() => Err(PatientError::DuplicatePatient {
                file: file.clone(),
                line,
                patient_id: patient_id.clone(),
                first_line,
            }),
            _ => {
                first_line_of.insert(patient_id.clone(), line);
                row.parse_patient()
            }
        };
        match parsed {
            Ok(patient) => read.records.push((line, patient)),
            Err(error) => read.exclusions.push(Exclusion {
                line,
                patient_id: (!patient_id.is_empty()).then_some(patient_id),
                error,
            }),
        }
    }
    Ok(read)
}

/// Writes records as `dir/patients.csv` (the generator's writer; the same columns the reader expects).
pub fn write_manifest(dir: &Path, records: &[PatientRecord]) -> Result<(), ManifestError> {
    let file = dir.join(MANIFEST_FILE);
    let write_error = |message: String| ManifestError::Write {
        file: file.clone(),
        message,
    };
    let mut writer = csv::Writer::from_path(&file).map_err(|e| write_error(e.to_string()))?;
    writer
        .write_record(COLUMNS)
        .map_err(|e| write_error(e.to_string()))?;
    for record in records {
        writer
            .write_record(record.to_cells())
            .map_err(|e| write_error(e.to_string()))?;
    }
    writer.flush().map_err(|e| write_error(e.to_string()))
}

impl PatientRecord {
    /// The record as manifest cells, in [`COLUMNS`] order.
    #[must_use]
    pub fn to_cells(&self) -> Vec<String> {
        let flag = |value: bool| if value { "1" } else { "0" }.to_owned();
        let report = &self.report;
        let mut cells = vec![
            self.patient_id.clone(),
            self.image_files.join(";"),
            self.image_frame.to_string(),
            format!("{:.0}", self.clinical.age_years),
            self.clinical.sex.to_string(),
            flag(self.clinical.multifocal),
            report.composition.to_string(),
            report.echogenicity.to_string(),
            report.shape.to_string(),
            report.margin.to_string(),
            report.echogenic_foci.to_string(),
            format!("{:.1}", report.max_diameter_mm),
            report.lobe.to_string(),
            report.pole.to_string(),
            report.capsule_contact.to_string(),
            report.vascularity.to_string(),
            report.language.to_string(),
            report.text.clone(),
        ];
        match &self.labels {
            Some(labels) => cells.extend([
                flag(labels.lnm),
                flag(labels.lnm_central),
                flag(labels.lnm_lateral),
                labels.t.to_string(),
                labels.n.to_string(),
                labels.m.to_string(),
                labels.stage.to_string(),
            ]),
            None => cells.extend(LABEL_COLUMNS.iter().map(|_| String::new())),
        }
        cells
    }
}

/// One data row with its location, for field-level errors.
struct Row<'a> {
    file: &'a Path,
    line: u64,
    cells: &'a csv::StringRecord,
    index: &'a HashMap<&'static str, usize>,
}

// Errors are the cold path (one per excluded patient) and carry the file, line, field and value on
// purpose: their size does not matter.
#[allow(clippy::result_large_err)]
impl Row<'_> {
    fn cell(&self, column: &'static str) -> &str {
        // Every column in COLUMNS was found in the header (label columns may be absent: empty) and the
        // row length equals the header's.
        self.index
            .get(column)
            .and_then(|&i| self.cells.get(i))
            .map_or("", str::trim)
    }

    fn error(&self, field: &'static str, problem: FieldProblem) -> PatientError {
        PatientError::BadField {
            file: self.file.to_path_buf(),
            line: self.line,
            patient_id: self.cell("patient_id").to_owned(),
            field,
            value: crate::table::excerpt(self.cell(field)),
            problem,
        }
    }

    fn required(&self, field: &'static str) -> Result<&str, PatientError> {
        let value = self.cell(field);
        if value.is_empty() {
            Err(self.error(field, FieldProblem::Missing))
        } else {
            Ok(value)
        }
    }

    fn category<T: FromStr<Err = UnknownCategory>>(&self, field: &'static str) -> Result<T, PatientError> {
        self.required(field)?
            .parse::<T>()
            .map_err(|e| self.error(field, FieldProblem::UnknownCategory(e)))
    }

    fn number(
        &self,
        field: &'static str,
        range: (f64, f64),
        expected: &'static str,
    ) -> Result<f64, PatientError> {
        let value: f64 = self
            .required(field)?
            .parse()
            .map_err(|_| self.error(field, FieldProblem::NotANumber))?;
        if !value.is_finite() {
            return Err(self.error(field, FieldProblem::NotANumber));
        }
        if value < range.0 || value > range.1 {
            return Err(self.error(field, FieldProblem::OutOfRange { expected }));
        }
        Ok(value)
    }

    fn flag(&self, field: &'static str) -> Result<bool, PatientError> {
        match self.required(field)? {
            "0" => Ok(false),
            "1" => Ok(true),
            other if other.parse::<f64>().is_ok() => {
                Err(self.error(field, FieldProblem::OutOfRange { expected: "0 or 1" }))
            }
            _ => Err(self.error(field, FieldProblem::NotANumber)),
        }
    }

    fn parse_patient(&self) -> Result<PatientRecord, PatientError> {
        let patient_id = self.required("patient_id")?.to_owned();
        let image_files: Vec<String> = self
            .required("image_files")?
            .split(';')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        if image_files.is_empty() {
            return Err(self.error("image_files", FieldProblem::Missing));
        }
        if image_files
            .iter()
            .any(|name| name.contains("..") || Path::new(name).is_absolute())
        {
            return Err(self.error(
                "image_files",
                FieldProblem::OutOfRange {
                    expected: "file names inside the images/ folder",
                },
            ));
        }
        let image_frame = if self.cell("image_frame").is_empty() {
            0
        } else {
            let frame = self.number("image_frame", (0.0, 65_535.0), "a whole frame number 0..65535")?;
            if frame.fract() != 0.0 {
                return Err(self.error(
                    "image_frame",
                    FieldProblem::OutOfRange {
                        expected: "a whole frame number",
                    },
                ));
            }
            // The range and whole-number checks make the cast exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let frame = frame as u32;
            frame
        };
        let clinical = Clinical {
            age_years: self.number("age_years", (18.0, MAX_AGE_YEARS), "an age in years, 18..100")?,
            sex: self.category::<Sex>("sex")?,
            multifocal: self.flag("multifocal")?,
        };
        let report = UltrasoundReport {
            composition: self.category::<Composition>("composition")?,
            echogenicity: self.category::<Echogenicity>("echogenicity")?,
            shape: self.category::<Shape>("shape")?,
            margin: self.category::<Margin>("margin")?,
            echogenic_foci: self.category::<EchogenicFoci>("echogenic_foci")?,
            max_diameter_mm: self.number(
                "max_diameter_mm",
                (0.5, MAX_DIAMETER_MM),
                "a diameter in mm, 0.5..150",
            )?,
            lobe: self.category::<Lobe>("lobe")?,
            pole: self.category::<Pole>("pole")?,
            capsule_contact: self.category::<CapsuleContact>("capsule_contact")?,
            vascularity: self.category::<Vascularity>("vascularity")?,
            language: self.category::<Language>("report_language")?,
            text: self.cell("report_text").to_owned(),
        };
        let labels = self.parse_labels(&patient_id, clinical.age_years)?;
        Ok(PatientRecord {
            patient_id,
            image_files,
            image_frame,
            clinical,
            report,
            labels,
        })
    }

    fn parse_labels(
        &self,
        patient_id: &str,
        age_years: f64,
    ) -> Result<Option<PathologyLabels>, PatientError> {
        if LABEL_COLUMNS.iter().all(|column| self.cell(column).is_empty()) {
            return Ok(None);
        }
        let labels = PathologyLabels {
            lnm: self.flag("lnm")?,
            lnm_central: self.flag("lnm_central")?,
            lnm_lateral: self.flag("lnm_lateral")?,
            t: self.category::<TCategory>("t_category")?,
            n: self.category::<NCategory>("n_category")?,
            m: self.category::<MCategory>("m_category")?,
            stage: self.category::<Stage>("ajcc_stage")?,
        };
        let inconsistent = |problem: String| PatientError::InconsistentLabels {
            file: self.file.to_path_buf(),
            line: self.line,
            patient_id: patient_id.to_owned(),
            problem,
        };
        if labels.lnm != (labels.lnm_central || labels.lnm_lateral) {
            return Err(inconsistent(format!(
                "lnm = {} but central = {}, lateral = {}",
                u8::from(labels.lnm),
                u8::from(labels.lnm_central),
                u8::from(labels.lnm_lateral)
            )));
        }
        let n = staging::n_category(labels.lnm_central, labels.lnm_lateral);
        if n != labels.n {
            return Err(inconsistent(format!(
                "n_category is {} but the compartments give {n}",
                labels.n
            )));
        }
        let stage = staging::overall_stage(age_years, labels.t, labels.n, labels.m);
        if stage != labels.stage {
            return Err(inconsistent(format!(
                "ajcc_stage is {} but age {age_years}, {} {} {} give stage {stage}",
                labels.stage, labels.t, labels.n, labels.m
            )));
        }
        Ok(Some(labels))
    }
}
