//! The patient fields an analysis may use as a term: what a site's manifest holds before surgery (the
//! pre-operative clinical fields and the structured ultrasound report), never the pathology labels and
//! never the free text. Each field is numeric (entered as is; the indicators are 0/1) or categorical
//! (entered as treatment dummies against a reference level, with the category's declared levels, so
//! that every site builds identical columns).

use crate::data::PatientRecord;
use crate::data::manifest::{MAX_AGE_YEARS, MAX_DIAMETER_MM};
use crate::data::report::{
    CapsuleContact, Composition, EchogenicFoci, Echogenicity, Lobe, Margin, Pole, Sex, Shape, Vascularity,
};
use crate::stats::design::TermSpec;

/// How a field enters the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A number (or a 0/1 indicator).
    Numeric,
    /// One of the declared levels, in ordinal order (the first is the default reference).
    Categorical(&'static [&'static str]),
}

/// One row's value of a field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue {
    Number(f64),
    Level(&'static str),
}

/// A field an analysis may name.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    /// What it is, for `--help`, the configuration error and the report's methods section.
    pub description: &'static str,
    pub kind: FieldKind,
    /// The largest |value| a design column of the field can hold (a numeric field's range as the
    /// manifest reader enforces it; 1 for indicators and dummies): the analyses' secure sums choose
    /// their fixed-point scales from it.
    pub max_abs: f64,
    value: fn(&PatientRecord) -> FieldValue,
}

impl Field {
    /// The field's value for one patient.
    #[must_use]
    pub fn value(&self, record: &PatientRecord) -> FieldValue {
        (self.value)(record)
    }

    /// The design term of this field; `reference` is a categorical field's reference level (default:
    /// its first level).
    #[must_use]
    pub fn term(&self, reference: Option<&str>) -> TermSpec {
        match self.kind {
            FieldKind::Numeric => TermSpec::numeric(self.name),
            FieldKind::Categorical(levels) => TermSpec::categorical(
                self.name,
                levels.iter().map(|&l| l.to_owned()).collect(),
                reference.unwrap_or(levels[0]),
            ),
        }
    }
}

fn flag(value: bool) -> FieldValue {
    FieldValue::Number(if value { 1.0 } else { 0.0 })
}

macro_rules! categorical {
    ($name:literal, $description:literal, $category:ty, |$r:ident| $get:expr) => {
        Field {
            name: $name,
            description: $description,
            kind: FieldKind::Categorical(<$category>::LABELS),
            max_abs: 1.0,
            value: |$r| FieldValue::Level($get.label()),
        }
    };
}

macro_rules! indicator {
    ($name:literal, $description:literal, |$r:ident| $get:expr) => {
        Field {
            name: $name,
            description: $description,
            kind: FieldKind::Numeric,
            max_abs: 1.0,
            value: |$r| flag($get),
        }
    };
}

/// Every field, in the order `--help` and the documentation list them.
pub const FIELDS: &[Field] = &[
    Field {
        name: "age_years",
        description: "age at diagnosis, per year",
        kind: FieldKind::Numeric,
        max_abs: MAX_AGE_YEARS,
        value: |r| FieldValue::Number(r.clinical.age_years),
    },
    Field {
        name: "max_diameter_mm",
        description: "maximum nodule diameter on ultrasound, per millimetre",
        kind: FieldKind::Numeric,
        max_abs: MAX_DIAMETER_MM,
        value: |r| FieldValue::Number(r.report.max_diameter_mm),
    },
    indicator!("male", "male sex (1) vs female (0)", |r| r.clinical.sex
        == Sex::Male),
    indicator!("age_under_45", "age under 45 years", |r| r.clinical.age_years
        < 45.0),
    indicator!("size_at_least_10mm", "maximum diameter of 10 mm or more", |r| r
        .report
        .max_diameter_mm
        >= 10.0),
    indicator!("multifocal", "more than one suspicious nodule", |r| r
        .clinical
        .multifocal),
    indicator!(
        "upper_pole",
        "nodule in the upper pole (vs middle or lower)",
        |r| r.report.pole == Pole::Upper
    ),
    indicator!(
        "capsule_contact_over_25",
        "contact with the capsule over more than 25% of the circumference",
        |r| r.report.capsule_contact == CapsuleContact::Over25
    ),
    indicator!("microcalcification", "punctate echogenic foci", |r| r
        .report
        .echogenic_foci
        == EchogenicFoci::Punctate),
    indicator!(
        "extrathyroidal_extension",
        "margin read as extrathyroidal extension",
        |r| r.report.margin == Margin::ExtrathyroidalExtension
    ),
    indicator!("taller_than_wide", "taller-than-wide shape", |r| r.report.shape
        == Shape::TallerThanWide),
    categorical!("sex", "sex (F, M)", Sex, |r| r.clinical.sex),
    categorical!(
        "pole",
        "position along the lobe (upper, middle, lower)",
        Pole,
        |r| r.report.pole
    ),
    categorical!("lobe", "lobe (left, right, isthmus)", Lobe, |r| r.report.lobe),
    categorical!(
        "capsule_contact",
        "capsule contact (none, under_25, over_25)",
        CapsuleContact,
        |r| r.report.capsule_contact
    ),
    categorical!("echogenic_foci", "TI-RADS echogenic foci", EchogenicFoci, |r| r
        .report
        .echogenic_foci),
    categorical!("margin", "TI-RADS margin", Margin, |r| r.report.margin),
    categorical!("composition", "TI-RADS composition", Composition, |r| r
        .report
        .composition),
    categorical!("echogenicity", "TI-RADS echogenicity", Echogenicity, |r| r
        .report
        .echogenicity),
    categorical!("shape", "TI-RADS shape", Shape, |r| r.report.shape),
    categorical!("vascularity", "colour Doppler vascularity", Vascularity, |r| r
        .report
        .vascularity),
];

/// The field of `name`.
#[must_use]
pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The names of every field, comma-separated (for error messages).
#[must_use]
pub fn field_names() -> String {
    FIELDS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}
