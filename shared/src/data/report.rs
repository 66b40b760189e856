//! What a site knows before surgery: the structured ultrasound report (ACR TI-RADS terms), the free
//! text, the pre-operative clinical fields, and (for training and validation) the pathology labels.

use crate::category::ordinal_category;
use crate::staging::{MCategory, NCategory, Stage, TCategory};

ordinal_category! {
    /// TI-RADS composition.
    Composition { Cystic => "cystic", Spongiform => "spongiform", Mixed => "mixed", Solid => "solid" }
}
ordinal_category! {
    /// TI-RADS echogenicity.
    Echogenicity {
        Anechoic => "anechoic", Hyperechoic => "hyperechoic", Isoechoic => "isoechoic",
        Hypoechoic => "hypoechoic", VeryHypoechoic => "very_hypoechoic",
    }
}
ordinal_category! {
    /// TI-RADS shape on the transverse view.
    Shape { WiderThanTall => "wider_than_tall", TallerThanWide => "taller_than_wide" }
}
ordinal_category! {
    /// TI-RADS margin.
    Margin {
        Smooth => "smooth", IllDefined => "ill_defined", LobulatedIrregular => "lobulated_irregular",
        ExtrathyroidalExtension => "extrathyroidal_extension",
    }
}
ordinal_category! {
    /// TI-RADS echogenic foci (the most suspicious one); `punctate` = microcalcification.
    EchogenicFoci {
        None => "none", CometTail => "comet_tail", Macrocalcification => "macrocalcification",
        PeripheralRim => "peripheral_rim", Punctate => "punctate",
    }
}
ordinal_category! {
    /// Thyroid lobe of the nodule.
    Lobe { Left => "left", Right => "right", Isthmus => "isthmus" }
}
ordinal_category! {
    /// Position along the lobe.
    Pole { Upper => "upper", Middle => "middle", Lower => "lower" }
}
ordinal_category! {
    /// Share of the nodule's circumference in contact with the thyroid capsule.
    CapsuleContact { None => "none", Under25 => "under_25", Over25 => "over_25" }
}
ordinal_category! {
    /// Colour Doppler vascularity (Adler-like pattern).
    Vascularity { Avascular => "avascular", Peripheral => "peripheral", Intranodular => "intranodular", Mixed => "mixed" }
}
ordinal_category! {
    /// Sex recorded at diagnosis.
    Sex { Female => "F", Male => "M" }
}
ordinal_category! {
    /// Language of the free-text report.
    Language { English => "en", Chinese => "zh" }
}

/// The structured ultrasound report of the index nodule, plus its free text.
#[derive(Debug, Clone, PartialEq)]
pub struct UltrasoundReport {
    pub composition: Composition,
    pub echogenicity: Echogenicity,
    pub shape: Shape,
    pub margin: Margin,
    pub echogenic_foci: EchogenicFoci,
    /// Maximum diameter in millimetres, as measured by the reader.
    pub max_diameter_mm: f64,
    pub lobe: Lobe,
    pub pole: Pole,
    pub capsule_contact: CapsuleContact,
    pub vascularity: Vascularity,
    pub language: Language,
    /// The free-text report (English or Chinese).
    pub text: String,
}

impl UltrasoundReport {
    /// ACR TI-RADS points of the structured fields (composition, echogenicity, shape, margin,
    /// echogenic foci).
    #[must_use]
    pub fn tirads_points(&self) -> u32 {
        let composition = match self.composition {
            Composition::Cystic | Composition::Spongiform => 0,
            Composition::Mixed => 1,
            Composition::Solid => 2,
        };
        let echogenicity = match self.echogenicity {
            Echogenicity::Anechoic => 0,
            Echogenicity::Hyperechoic | Echogenicity::Isoechoic => 1,
            Echogenicity::Hypoechoic => 2,
            Echogenicity::VeryHypoechoic => 3,
        };
        let shape = if self.shape == Shape::TallerThanWide { 3 } else { 0 };
        let margin = match self.margin {
            Margin::Smooth | Margin::IllDefined => 0,
            Margin::LobulatedIrregular => 2,
            Margin::ExtrathyroidalExtension => 3,
        };
        let foci = match self.echogenic_foci {
            EchogenicFoci::None | EchogenicFoci::CometTail => 0,
            EchogenicFoci::Macrocalcification => 1,
            EchogenicFoci::PeripheralRim => 2,
            EchogenicFoci::Punctate => 3,
        };
        composition + echogenicity + shape + margin + foci
    }

    /// The ACR TI-RADS level (TR1 to TR5, as 1..=5) of [`Self::tirads_points`].
    #[must_use]
    pub fn tirads_level(&self) -> u32 {
        match self.tirads_points() {
            0 | 1 => 1,
            2 => 2,
            3 => 3,
            4..=6 => 4,
            _ => 5,
        }
    }
}

/// Pre-operative clinical fields (what the model and the odds-ratio analysis may use).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clinical {
    /// Age at diagnosis, years (18–100 accepted).
    pub age_years: f64,
    pub sex: Sex,
    /// More than one suspicious nodule on pre-operative ultrasound.
    pub multifocal: bool,
}

/// Post-operative pathology: the ground truth. Absent for inference-only use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathologyLabels {
    /// Any cervical lymph node metastasis.
    pub lnm: bool,
    /// Central compartment (level VI/VII) metastasis.
    pub lnm_central: bool,
    /// Lateral compartment metastasis.
    pub lnm_lateral: bool,
    pub t: TCategory,
    pub n: NCategory,
    pub m: MCategory,
    pub stage: Stage,
}
