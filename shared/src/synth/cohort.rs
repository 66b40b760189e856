//! Synthetic patients: the truth drawn from plausible distributions, LNM from a published-odds-ratio
//! logistic model ([`TrueLnmModel`], public so that tests can check that logistic regression recovers
//! it), pathology staged by AJCC 8th, and the report a (fallible) radiologist writes.

use super::profile::SiteProfile;
use crate::data::report::{
    CapsuleContact, Clinical, Composition, EchogenicFoci, Echogenicity, Language, Lobe, Margin,
    PathologyLabels, Pole, Sex, Shape, UltrasoundReport, Vascularity,
};
use crate::staging::{self, Extension, MCategory};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution as _, LogNormal, Normal};
use serde::Serialize;

/// A covariate of the generator's true LNM model. Binary ones are 0/1; the last two are continuous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Covariate {
    Male,
    AgeUnder45,
    SizeAtLeast10mm,
    Multifocal,
    ExtrathyroidalExtension,
    /// Capsule contact over 25% of the circumference (the "capsular invasion" odds ratio).
    CapsuleContactOver25,
    UpperPole,
    Microcalcification,
    /// Margin irregularity on 0..1 (lobulation/spiculation amplitude); image-borne.
    MarginIrregularity,
    /// Latent aggressiveness, standard normal; rendered as a darker, more heterogeneous nodule only.
    Aggressiveness,
}

/// Where a covariate can be seen: in the report/clinical fields, in the image, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Visibility {
    pub report_or_clinical: bool,
    pub image: bool,
}

impl Covariate {
    /// Every covariate, in the order of [`TrueLnmModel::coefficients`] and [`covariate_values`].
    pub const ALL: [Self; 10] = [
        Self::Male,
        Self::AgeUnder45,
        Self::SizeAtLeast10mm,
        Self::Multifocal,
        Self::ExtrathyroidalExtension,
        Self::CapsuleContactOver25,
        Self::UpperPole,
        Self::Microcalcification,
        Self::MarginIrregularity,
        Self::Aggressiveness,
    ];

    /// A snake_case name for tables and JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Male => "male",
            Self::AgeUnder45 => "age_under_45",
            Self::SizeAtLeast10mm => "size_at_least_10mm",
            Self::Multifocal => "multifocal",
            Self::ExtrathyroidalExtension => "extrathyroidal_extension",
            Self::CapsuleContactOver25 => "capsule_contact_over_25",
            Self::UpperPole => "upper_pole",
            Self::Microcalcification => "microcalcification",
            Self::MarginIrregularity => "margin_irregularity",
            Self::Aggressiveness => "aggressiveness",
        }
    }

    /// Which modality carries the covariate's true value. (The report also carries noisy readings of
    /// the image-borne ones; the oracle's report part uses those readings, see `oracle`.)
    #[must_use]
    pub fn visibility(self) -> Visibility {
        let (report_or_clinical, image) = match self {
            Self::Male | Self::AgeUnder45 | Self::Multifocal | Self::UpperPole => (true, false),
            Self::SizeAtLeast10mm => (true, true),
            Self::ExtrathyroidalExtension
            | Self::CapsuleContactOver25
            | Self::Microcalcification
            | Self::MarginIrregularity
            | Self::Aggressiveness => (false, true),
        };
        Visibility {
            report_or_clinical,
            image,
        }
    }
}

/// The generator's true LNM model: `logit P(LNM) = intercept + Σ coefficient × covariate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrueLnmModel {
    pub intercept: f64,
    /// `(covariate, log odds ratio)` in [`Covariate::ALL`] order.
    pub coefficients: Vec<(Covariate, f64)>,
}

/// Base intercept: an LNM rate of about 37% with the default case mix (clinical.md).
const BASE_INTERCEPT: f64 = -4.3;

impl TrueLnmModel {
    /// The model of a site: published odds ratios (clinical.md) for the clinical factors, strong
    /// image-borne effects for margin irregularity and aggressiveness, and a site-specific intercept.
    #[must_use]
    pub fn for_profile(profile: &SiteProfile) -> Self {
        let log_odds_ratio = |covariate| match covariate {
            Covariate::Male => 1.7_f64.ln(),
            Covariate::AgeUnder45 | Covariate::UpperPole => 1.5_f64.ln(),
            Covariate::SizeAtLeast10mm | Covariate::CapsuleContactOver25 => 3.5_f64.ln(),
            Covariate::Multifocal | Covariate::ExtrathyroidalExtension => 2.0_f64.ln(),
            Covariate::Microcalcification => 2.7_f64.ln(),
            Covariate::MarginIrregularity => 3.0,
            Covariate::Aggressiveness => 1.5,
        };
        Self {
            intercept: BASE_INTERCEPT + profile.lnm_logit_shift,
            coefficients: Covariate::ALL.iter().map(|&c| (c, log_odds_ratio(c))).collect(),
        }
    }

    /// The coefficient of one covariate.
    #[must_use]
    pub fn coefficient(&self, covariate: Covariate) -> f64 {
        self.coefficients
            .iter()
            .find(|(c, _)| *c == covariate)
            .map_or(0.0, |(_, beta)| *beta)
    }

    /// The odds ratio of one covariate (per unit for the continuous ones).
    #[must_use]
    pub fn odds_ratio(&self, covariate: Covariate) -> f64 {
        self.coefficient(covariate).exp()
    }

    /// The linear predictor restricted to the covariates `keep` accepts (intercept included).
    #[must_use]
    pub fn partial_logit(&self, values: &[f64; 10], keep: impl Fn(Covariate) -> bool) -> f64 {
        self.intercept
            + self
                .coefficients
                .iter()
                .zip(values)
                .filter(|((c, _), _)| keep(*c))
                .map(|((_, beta), x)| beta * x)
                .sum::<f64>()
    }

    /// The true probability of LNM.
    #[must_use]
    pub fn probability(&self, values: &[f64; 10]) -> f64 {
        sigmoid(self.partial_logit(values, |_| true))
    }
}

/// The logistic function.
#[must_use]
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Everything the generator knows about one patient (the truth the image and report are drawn from).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatientTruth {
    pub patient_id: String,
    pub age_years: f64,
    pub male: bool,
    pub size_mm: f64,
    pub lobe: Lobe,
    pub pole: Pole,
    pub multifocal: bool,
    pub capsule_contact: CapsuleContact,
    pub extrathyroidal_extension: bool,
    /// Number of punctate foci (0 = no microcalcification).
    pub microcalcifications: u32,
    pub margin_irregularity: f64,
    pub aggressiveness: f64,
    pub taller_than_wide: bool,
    pub vascularity: Vascularity,
    /// Seed of this patient's picture (nodule outline, speckle), derived from the cohort stream.
    pub render_seed: u64,
    pub lnm_probability: f64,
    pub lnm: bool,
    pub lnm_central: bool,
    pub lnm_lateral: bool,
    pub distant_metastasis: bool,
}

/// The covariate values the true model uses, in [`Covariate::ALL`] order.
#[must_use]
pub fn covariate_values(truth: &PatientTruth) -> [f64; 10] {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [
        flag(truth.male),
        flag(truth.age_years < 45.0),
        flag(truth.size_mm >= 10.0),
        flag(truth.multifocal),
        flag(truth.extrathyroidal_extension),
        flag(truth.capsule_contact == CapsuleContact::Over25),
        flag(truth.pole == Pole::Upper),
        flag(truth.microcalcifications > 0),
        truth.margin_irregularity,
        truth.aggressiveness,
    ]
}

/// Draws one patient's truth.
pub fn draw_truth(
    patient_id: String,
    profile: &SiteProfile,
    model: &TrueLnmModel,
    rng: &mut ChaCha8Rng,
) -> PatientTruth {
    let normal = |mean: f64, sd: f64, rng: &mut ChaCha8Rng| {
        // sd > 0 and finite by construction: Normal::new cannot fail here.
        Normal::new(mean, sd).map_or(mean, |d| d.sample(rng))
    };
    let male = rng.random_bool(profile.male_fraction);
    let age_years = normal(profile.mean_age_years, 13.0, rng)
        .clamp(18.0, 80.0)
        .round();
    let size_mm = LogNormal::new(profile.median_size_mm.ln(), 0.55)
        .map_or(profile.median_size_mm, |d| d.sample(rng))
        .clamp(3.0, 60.0);
    let size_mm = (size_mm * 10.0).round() / 10.0;
    let lobe = match rng.random_range(0..100) {
        0..48 => Lobe::Right,
        48..95 => Lobe::Left,
        _ => Lobe::Isthmus,
    };
    let pole = match rng.random_range(0..100) {
        0..30 => Pole::Upper,
        30..70 => Pole::Middle,
        _ => Pole::Lower,
    };
    let multifocal = rng.random_bool(profile.multifocal_fraction);
    let p_contact = sigmoid(-1.0 + 0.09 * (size_mm - 10.0));
    let capsule_contact = if rng.random_bool(p_contact) {
        if rng.random_bool(0.55) {
            CapsuleContact::Over25
        } else {
            CapsuleContact::Under25
        }
    } else {
        CapsuleContact::None
    };
    let extrathyroidal_extension = capsule_contact == CapsuleContact::Over25 && rng.random_bool(0.3);
    let microcalcifications = if rng.random_bool(0.45) {
        rng.random_range(3..=12)
    } else {
        0
    };
    let margin_irregularity = Beta::new(1.5, 2.5).map_or(0.4, |d| d.sample(rng));
    let aggressiveness = normal(0.0, 1.0, rng);
    let taller_than_wide = rng.random_bool(if size_mm < 15.0 { 0.35 } else { 0.15 });
    let vascularity = match rng.random_range(0..100) {
        0..25 => Vascularity::Avascular,
        25..65 => Vascularity::Peripheral,
        65..80 => Vascularity::Intranodular,
        _ => Vascularity::Mixed,
    };
    let render_seed = rng.random::<u64>();
    let mut truth = PatientTruth {
        patient_id,
        age_years,
        male,
        size_mm,
        lobe,
        pole,
        multifocal,
        capsule_contact,
        extrathyroidal_extension,
        microcalcifications,
        margin_irregularity,
        aggressiveness,
        taller_than_wide,
        vascularity,
        render_seed,
        lnm_probability: 0.0,
        lnm: false,
        lnm_central: false,
        lnm_lateral: false,
        distant_metastasis: false,
    };
    truth.lnm_probability = model.probability(&covariate_values(&truth));
    truth.lnm = rng.random_bool(truth.lnm_probability);
    if truth.lnm {
        let p_lateral = sigmoid(
            -1.3 + 0.8 * f64::from(u8::from(pole == Pole::Upper))
                + 0.9 * f64::from(u8::from(capsule_contact == CapsuleContact::Over25)),
        );
        truth.lnm_lateral = rng.random_bool(p_lateral);
        // Skip metastasis (lateral without central) is uncommon.
        truth.lnm_central = !truth.lnm_lateral || rng.random_bool(0.8);
    }
    truth.distant_metastasis = rng.random_bool(if truth.lnm_lateral { 0.03 } else { 0.003 });
    truth
}

impl PatientTruth {
    /// The pathology labels: T from size and gross ETE, N from the compartments, stage by age 55.
    #[must_use]
    pub fn labels(&self) -> PathologyLabels {
        let extension = if self.extrathyroidal_extension {
            Extension::StrapMuscles
        } else {
            Extension::None
        };
        let t = staging::t_category(self.size_mm, extension);
        let n = staging::n_category(self.lnm_central, self.lnm_lateral);
        let m = if self.distant_metastasis {
            MCategory::M1
        } else {
            MCategory::M0
        };
        PathologyLabels {
            lnm: self.lnm,
            lnm_central: self.lnm_central,
            lnm_lateral: self.lnm_lateral,
            t,
            n,
            m,
            stage: staging::overall_stage(self.age_years, t, n, m),
        }
    }

    /// The pre-operative clinical fields.
    #[must_use]
    pub fn clinical(&self) -> Clinical {
        Clinical {
            age_years: self.age_years,
            sex: if self.male { Sex::Male } else { Sex::Female },
            multifocal: self.multifocal,
        }
    }
}

/// The report a radiologist writes: consistent with the picture, with realistic reader noise (missed
/// foci, misjudged margins, measurement error, an adjacent capsule-contact category).
pub fn write_report(truth: &PatientTruth, profile: &SiteProfile, rng: &mut ChaCha8Rng) -> UltrasoundReport {
    let max_diameter_mm = ((truth.size_mm + rng.random_range(-1.5..1.5)).max(2.0) * 10.0).round() / 10.0;
    let echogenic_foci = if truth.microcalcifications > 0 && rng.random_bool(profile.reader_foci_sensitivity)
    {
        EchogenicFoci::Punctate
    } else {
        match rng.random_range(0..100) {
            0..6 => EchogenicFoci::Punctate,
            6..14 => EchogenicFoci::Macrocalcification,
            14..20 => EchogenicFoci::CometTail,
            _ => EchogenicFoci::None,
        }
    };
    let perceived_irregularity = truth.margin_irregularity + rng.random_range(-0.3..0.3);
    let margin = if truth.extrathyroidal_extension && rng.random_bool(0.5) {
        Margin::ExtrathyroidalExtension
    } else if perceived_irregularity > 0.55 {
        Margin::LobulatedIrregular
    } else if perceived_irregularity > 0.4 {
        Margin::IllDefined
    } else {
        Margin::Smooth
    };
    let capsule_contact = if rng.random_bool(0.7) {
        truth.capsule_contact
    } else {
        match truth.capsule_contact {
            CapsuleContact::None | CapsuleContact::Over25 => CapsuleContact::Under25,
            CapsuleContact::Under25 => {
                if rng.random_bool(0.5) {
                    CapsuleContact::None
                } else {
                    CapsuleContact::Over25
                }
            }
        }
    };
    let echogenicity = if truth.aggressiveness + rng.random_range(-0.8..0.8) > 1.3 {
        Echogenicity::VeryHypoechoic
    } else if rng.random_bool(0.06) {
        Echogenicity::Isoechoic
    } else {
        Echogenicity::Hypoechoic
    };
    let reported_taller = if rng.random_bool(0.88) {
        truth.taller_than_wide
    } else {
        !truth.taller_than_wide
    };
    let shape = if reported_taller {
        Shape::TallerThanWide
    } else {
        Shape::WiderThanTall
    };
    let composition = if rng.random_bool(0.94) {
        Composition::Solid
    } else {
        Composition::Mixed
    };
    let vascularity = if rng.random_bool(0.8) {
        truth.vascularity
    } else {
        Vascularity::Peripheral
    };
    let language = if rng.random_bool(profile.chinese_fraction) {
        Language::Chinese
    } else {
        Language::English
    };
    let mut report = UltrasoundReport {
        composition,
        echogenicity,
        shape,
        margin,
        echogenic_foci,
        max_diameter_mm,
        lobe: truth.lobe,
        pole: truth.pole,
        capsule_contact,
        vascularity,
        language,
        text: String::new(),
    };
    report.text = super::text::report_text(&report);
    report
}
