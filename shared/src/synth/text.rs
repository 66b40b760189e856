//! Free-text ultrasound reports from English and Chinese templates, consistent with the structured
//! fields, ending with the ACR TI-RADS level those fields give.

use crate::data::report::{
    CapsuleContact, Composition, EchogenicFoci, Echogenicity, Language, Lobe, Margin, Pole, Shape,
    UltrasoundReport, Vascularity,
};

/// The free text of a report in its language.
#[must_use]
pub fn report_text(report: &UltrasoundReport) -> String {
    let level = report.tirads_level();
    match report.language {
        Language::English => english(report, level),
        Language::Chinese => chinese(report, level),
    }
}

fn english(r: &UltrasoundReport, level: u32) -> String {
    let lobe = match r.lobe {
        Lobe::Left => "Left lobe",
        Lobe::Right => "Right lobe",
        Lobe::Isthmus => "Isthmus",
    };
    let pole = match r.pole {
        Pole::Upper => "upper",
        Pole::Middle => "mid",
        Pole::Lower => "lower",
    };
    let echo = match r.echogenicity {
        Echogenicity::Anechoic => "anechoic",
        Echogenicity::Hyperechoic => "hyperechoic",
        Echogenicity::Isoechoic => "isoechoic",
        Echogenicity::Hypoechoic => "hypoechoic",
        Echogenicity::VeryHypoechoic => "markedly hypoechoic",
    };
    let composition = if r.composition == Composition::Solid {
        "solid"
    } else {
        "mixed cystic-solid"
    };
    let shape = if r.shape == Shape::TallerThanWide {
        "taller than wide"
    } else {
        "wider than tall"
    };
    let margin = match r.margin {
        Margin::Smooth => "smooth margins",
        Margin::IllDefined => "ill-defined margins",
        Margin::LobulatedIrregular => "lobulated, irregular margins",
        Margin::ExtrathyroidalExtension => "margins suggesting extrathyroidal extension",
    };
    let foci = match r.echogenic_foci {
        EchogenicFoci::None => "No echogenic foci.",
        EchogenicFoci::CometTail => "Comet-tail artefacts.",
        EchogenicFoci::Macrocalcification => "Coarse macrocalcification.",
        EchogenicFoci::PeripheralRim => "Peripheral rim calcification.",
        EchogenicFoci::Punctate => "Multiple punctate echogenic foci (microcalcifications).",
    };
    let capsule = match r.capsule_contact {
        CapsuleContact::None => "The nodule does not abut the capsule.",
        CapsuleContact::Under25 => "Abuts the thyroid capsule (<25% of its circumference).",
        CapsuleContact::Over25 => "Broad contact with the thyroid capsule (>25%).",
    };
    let flow = match r.vascularity {
        Vascularity::Avascular => "no internal flow",
        Vascularity::Peripheral => "peripheral flow",
        Vascularity::Intranodular => "intranodular flow",
        Vascularity::Mixed => "peripheral and intranodular flow",
    };
    format!(
        "{lobe}, {pole} pole: {composition} {echo} nodule, {:.1} mm, {shape}, with {margin}. {foci} {capsule} \
         Colour Doppler: {flow}. ACR TI-RADS TR{level}.",
        r.max_diameter_mm
    )
}

fn chinese(r: &UltrasoundReport, level: u32) -> String {
    let lobe = match r.lobe {
        Lobe::Left => "甲状腺左叶",
        Lobe::Right => "甲状腺右叶",
        Lobe::Isthmus => "甲状腺峡部",
    };
    let pole = match r.pole {
        Pole::Upper => "上极",
        Pole::Middle => "中部",
        Pole::Lower => "下极",
    };
    let echo = match r.echogenicity {
        Echogenicity::Anechoic => "无回声",
        Echogenicity::Hyperechoic => "高回声",
        Echogenicity::Isoechoic => "等回声",
        Echogenicity::Hypoechoic => "低回声",
        Echogenicity::VeryHypoechoic => "极低回声",
    };
    let composition = if r.composition == Composition::Solid {
        "实性"
    } else {
        "囊实性"
    };
    let shape = if r.shape == Shape::TallerThanWide {
        "纵横比>1"
    } else {
        "纵横比<1"
    };
    let margin = match r.margin {
        Margin::Smooth => "边缘光整",
        Margin::IllDefined => "边界欠清",
        Margin::LobulatedIrregular => "边缘分叶状、不规则",
        Margin::ExtrathyroidalExtension => "边缘不规则，可疑腺外侵犯",
    };
    let foci = match r.echogenic_foci {
        EchogenicFoci::None => "内未见明显强回声",
        EchogenicFoci::CometTail => "内见彗星尾征",
        EchogenicFoci::Macrocalcification => "内见粗大钙化",
        EchogenicFoci::PeripheralRim => "见周边环状钙化",
        EchogenicFoci::Punctate => "内见多发点状强回声（微钙化）",
    };
    let capsule = match r.capsule_contact {
        CapsuleContact::None => "未触及包膜",
        CapsuleContact::Under25 => "紧贴包膜（<25%）",
        CapsuleContact::Over25 => "与包膜广泛接触（>25%）",
    };
    let flow = match r.vascularity {
        Vascularity::Avascular => "内未见明显血流信号",
        Vascularity::Peripheral => "周边见血流信号",
        Vascularity::Intranodular => "内见血流信号",
        Vascularity::Mixed => "周边及内部见血流信号",
    };
    format!(
        "{lobe}{pole}见一{composition}{echo}结节，大小约{:.1}mm，{shape}，{margin}，{foci}，{capsule}。CDFI：{flow}。ACR TI-RADS {level}类。",
        r.max_diameter_mm
    )
}
