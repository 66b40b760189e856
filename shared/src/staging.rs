//! AJCC 8th edition staging of differentiated thyroid cancer: T, N, M categories and the overall stage
//! derived from them with the age-55 rule (clinical.md, "Stage scale").
//!
//! Pure functions; the ordinal codes (`code()`) are the ones weighted kappa uses.

/// Age (years at diagnosis) from which the older-patient staging table applies.
pub const AGE_CUTOFF_YEARS: f64 = 55.0;

pub use crate::category::UnknownCategory;
use crate::category::ordinal_category;

ordinal_category! {
    /// Primary tumour category (7 ordinal levels).
    TCategory { T1a => "T1a", T1b => "T1b", T2 => "T2", T3a => "T3a", T3b => "T3b", T4a => "T4a", T4b => "T4b" }
}
ordinal_category! {
    /// Regional lymph node category: N0 < N1a (central, level VI/VII) < N1b (lateral).
    NCategory { N0 => "N0", N1a => "N1a", N1b => "N1b" }
}
ordinal_category! {
    /// Distant metastasis.
    MCategory { M0 => "M0", M1 => "M1" }
}
ordinal_category! {
    /// Overall AJCC stage (5 ordinal levels).
    Stage { I => "I", II => "II", III => "III", IVA => "IVA", IVB => "IVB" }
}

/// How far the tumour extends beyond the thyroid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// Confined to the thyroid (minimal microscopic extension does not change T in the 8th edition).
    None,
    /// Gross extension into the strap muscles only (T3b).
    StrapMuscles,
    /// Gross extension into subcutaneous tissue, larynx, trachea, oesophagus or recurrent nerve (T4a).
    MajorStructures,
    /// Invasion of prevertebral fascia or encasement of the carotid artery or mediastinal vessels (T4b).
    VesselsOrFascia,
}

/// T category from the maximum tumour diameter (mm) and its gross extension.
#[must_use]
pub fn t_category(max_diameter_mm: f64, extension: Extension) -> TCategory {
    match extension {
        Extension::VesselsOrFascia => TCategory::T4b,
        Extension::MajorStructures => TCategory::T4a,
        Extension::StrapMuscles => TCategory::T3b,
        Extension::None if max_diameter_mm <= 10.0 => TCategory::T1a,
        Extension::None if max_diameter_mm <= 20.0 => TCategory::T1b,
        Extension::None if max_diameter_mm <= 40.0 => TCategory::T2,
        Extension::None => TCategory::T3a,
    }
}

/// N category from the pathological node status: no metastasis, central only, or any lateral.
#[must_use]
pub fn n_category(central: bool, lateral: bool) -> NCategory {
    match (central, lateral) {
        (_, true) => NCategory::N1b,
        (true, false) => NCategory::N1a,
        (false, false) => NCategory::N0,
    }
}

/// Overall AJCC 8th stage for differentiated thyroid cancer by the age-55 rule.
///
/// - age < 55: I (M0), II (M1);
/// - age >= 55: I = T1–T2 N0; II = T1–T2 N1 or T3a/T3b any N; III = T4a; IVA = T4b; IVB = M1.
#[must_use]
pub fn overall_stage(age_years: f64, t: TCategory, n: NCategory, m: MCategory) -> Stage {
    if age_years < AGE_CUTOFF_YEARS {
        return match m {
            MCategory::M0 => Stage::I,
            MCategory::M1 => Stage::II,
        };
    }
    if m == MCategory::M1 {
        return Stage::IVB;
    }
    match t {
        TCategory::T1a | TCategory::T1b | TCategory::T2 if n == NCategory::N0 => Stage::I,
        TCategory::T1a | TCategory::T1b | TCategory::T2 | TCategory::T3a | TCategory::T3b => Stage::II,
        TCategory::T4a => Stage::III,
        TCategory::T4b => Stage::IVA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MCategory::{M0, M1};
    use NCategory::{N0, N1a, N1b};
    use Stage::{I, II, III, IVA, IVB};
    use TCategory::{T1a, T1b, T2, T3a, T3b, T4a, T4b};

    #[test]
    fn overall_stage_follows_the_age_55_rule() {
        let cases: &[(f64, TCategory, NCategory, MCategory, Stage)] = &[
            // Younger than 55: I unless M1.
            (30.0, T1a, N0, M0, I),
            (30.0, T4b, N1b, M0, I),
            (54.9, T3b, N1a, M0, I),
            (18.0, T1a, N0, M1, II),
            (54.0, T4b, N1b, M1, II),
            // 55 and older.
            (55.0, T1a, N0, M0, I),
            (60.0, T1b, N0, M0, I),
            (70.0, T2, N0, M0, I),
            (55.0, T1a, N1a, M0, II),
            (65.0, T2, N1b, M0, II),
            (65.0, T3a, N0, M0, II),
            (65.0, T3b, N1b, M0, II),
            (80.0, T4a, N0, M0, III),
            (80.0, T4a, N1b, M0, III),
            (56.0, T4b, N0, M0, IVA),
            (56.0, T1a, N0, M1, IVB),
            (56.0, T4b, N1b, M1, IVB),
        ];
        for &(age, t, n, m, expected) in cases {
            assert_eq!(overall_stage(age, t, n, m), expected, "age {age}, {t} {n} {m}");
        }
    }

    #[test]
    fn t_category_from_size_and_extension() {
        let cases: &[(f64, Extension, TCategory)] = &[
            (4.0, Extension::None, T1a),
            (10.0, Extension::None, T1a),
            (10.1, Extension::None, T1b),
            (20.0, Extension::None, T1b),
            (25.0, Extension::None, T2),
            (40.0, Extension::None, T2),
            (41.0, Extension::None, T3a),
            (5.0, Extension::StrapMuscles, T3b),
            (5.0, Extension::MajorStructures, T4a),
            (50.0, Extension::VesselsOrFascia, T4b),
        ];
        for &(size, extension, expected) in cases {
            assert_eq!(t_category(size, extension), expected, "{size} mm, {extension:?}");
        }
    }

    #[test]
    fn n_category_from_compartments() {
        assert_eq!(n_category(false, false), N0);
        assert_eq!(n_category(true, false), N1a);
        assert_eq!(n_category(false, true), N1b);
        assert_eq!(n_category(true, true), N1b);
    }

    #[test]
    fn labels_parse_case_insensitively_and_codes_are_ordinal() {
        assert_eq!("t3B".parse::<TCategory>(), Ok(T3b));
        assert_eq!(" ivb ".parse::<Stage>(), Ok(IVB));
        assert_eq!(T4b.code(), 6);
        assert_eq!(N1b.code(), 2);
        assert_eq!(IVB.code(), 4);
        let error = "T5".parse::<TCategory>().unwrap_err();
        assert!(error.to_string().contains("T5") && error.to_string().contains("T1a"));
        for t in TCategory::ALL {
            assert_eq!(t.label().parse::<TCategory>(), Ok(*t));
        }
    }
}
