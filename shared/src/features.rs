//! From a loaded patient to the model's plain inputs: the image tensor, TI-RADS field indices, scaled
//! numbers, the hashed character n-grams of the free text, and the training targets; plus the
//! ultrasound augmentations. Burn-free: every value here is a plain `f32`/`u32`.
//!
//! Only pre-operative values become inputs; the pathology labels become [`Targets`] and nothing else.

use crate::data::LoadedPatient;
use crate::data::report::{
    CapsuleContact, Composition, EchogenicFoci, Echogenicity, Language, Lobe, Margin, Pole, Sex, Shape,
    UltrasoundReport, Vascularity,
};
use crate::model_config::AugmentConfig;
use rand::Rng;
use rand_distr::StandardNormal;

/// The structured report fields embedded by the report branch, with their number of categories.
pub const STRUCTURED_FIELDS: &[(&str, usize)] = &[
    ("composition", Composition::ALL.len()),
    ("echogenicity", Echogenicity::ALL.len()),
    ("shape", Shape::ALL.len()),
    ("margin", Margin::ALL.len()),
    ("echogenic_foci", EchogenicFoci::ALL.len()),
    ("lobe", Lobe::ALL.len()),
    ("pole", Pole::ALL.len()),
    ("capsule_contact", CapsuleContact::ALL.len()),
    ("vascularity", Vascularity::ALL.len()),
    ("report_language", Language::ALL.len()),
];

/// Number of rows of the shared structured-field embedding table (each field has its own range).
#[must_use]
pub fn structured_vocabulary() -> usize {
    STRUCTURED_FIELDS.iter().map(|(_, n)| n).sum()
}

/// The report's image findings that report supervision teaches the image branch to see (names in
/// [`STRUCTURED_FIELDS`]); the findings head also regresses the scaled maximum diameter.
pub const IMAGE_FINDINGS: [&str; 6] = [
    "echogenicity",
    "shape",
    "margin",
    "echogenic_foci",
    "capsule_contact",
    "vascularity",
];

/// Each image finding as `(index in STRUCTURED_FIELDS, first row in the embedding table, categories)`.
#[must_use]
pub fn image_finding_fields() -> Vec<(usize, usize, usize)> {
    let mut offset = 0;
    let mut fields = Vec::new();
    for (index, &(name, n)) in STRUCTURED_FIELDS.iter().enumerate() {
        if IMAGE_FINDINGS.contains(&name) {
            fields.push((index, offset, n));
        }
        offset += n;
    }
    fields
}

/// Outputs of the findings head: every category of every image finding, then the scaled diameter.
#[must_use]
pub fn n_finding_outputs() -> usize {
    image_finding_fields().iter().map(|&(_, _, n)| n).sum::<usize>() + 1
}

/// Number of scaled numeric inputs of the report branch (log maximum diameter).
pub const N_REPORT_NUMBERS: usize = 1;
/// Number of clinical inputs: scaled age, male sex, multifocality.
pub const N_CLINICAL: usize = 3;
/// Categories of the T head (T1a..T4b) and of the N head (N0, N1a, N1b).
pub const N_T: usize = 7;
pub const N_N: usize = 3;

/// One patient's model inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientInputs {
    /// CHW RGB in [0, 1] of side `image_size` (the index image: the manifest's first file).
    pub image: Vec<f32>,
    pub image_size: u32,
    /// Row of each structured field in the shared embedding table (offset per field).
    pub structured: Vec<u32>,
    pub report_numbers: [f32; N_REPORT_NUMBERS],
    pub clinical: [f32; N_CLINICAL],
    /// Hashed text: (bucket, weight) with weights summing to 1 (an EmbeddingBag mean); sorted by bucket.
    pub text: Vec<(u32, f32)>,
    /// Age in years (the stage rule needs it).
    pub age_years: f64,
}

/// One patient's training targets (from pathology).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub lnm: bool,
    /// Ordinal T code 0..7.
    pub t: usize,
    /// Ordinal N code 0..3.
    pub n: usize,
}

/// A patient ready for the model: inputs, targets when labelled, and the pseudonymous id.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub patient_id: String,
    pub inputs: PatientInputs,
    pub targets: Option<Targets>,
}

/// Encoding that cannot be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    #[error("patient '{patient_id}' has no image")]
    NoImage { patient_id: String },
    #[error(
        "patient '{patient_id}': image is {found} px but the model expects {expected} px (load with --size {expected})"
    )]
    WrongImageSize {
        patient_id: String,
        found: u32,
        expected: u32,
    },
}

/// Encodes a loaded patient for a model whose input side is `image_size` and whose text encoder has
/// `text_buckets` buckets over 1..=`max_ngram` character n-grams.
pub fn encode_patient(
    patient: &LoadedPatient,
    image_size: u32,
    text_buckets: usize,
    max_ngram: usize,
) -> Result<Example, FeatureError> {
    let record = &patient.record;
    let patient_id = record.patient_id.clone();
    let image = patient.images.first().ok_or_else(|| FeatureError::NoImage {
        patient_id: patient_id.clone(),
    })?;
    if image.size != image_size {
        return Err(FeatureError::WrongImageSize {
            patient_id,
            found: image.size,
            expected: image_size,
        });
    }
    let clinical = &record.clinical;
    let inputs = PatientInputs {
        image: image.data.clone(),
        image_size,
        structured: structured_indices(&record.report),
        report_numbers: [scaled_diameter(record.report.max_diameter_mm)],
        clinical: [
            ((clinical.age_years - 45.0) / 15.0) as f32,
            f32::from(u8::from(clinical.sex == Sex::Male)),
            f32::from(u8::from(clinical.multifocal)),
        ],
        text: hash_text(&record.report.text, text_buckets, max_ngram),
        age_years: clinical.age_years,
    };
    let targets = record.labels.map(|labels| Targets {
        lnm: labels.lnm,
        t: labels.t.code(),
        n: labels.n.code(),
    });
    Ok(Example {
        patient_id,
        inputs,
        targets,
    })
}

/// The row of each structured field in the shared embedding table.
#[must_use]
pub fn structured_indices(report: &UltrasoundReport) -> Vec<u32> {
    let codes = [
        report.composition.code(),
        report.echogenicity.code(),
        report.shape.code(),
        report.margin.code(),
        report.echogenic_foci.code(),
        report.lobe.code(),
        report.pole.code(),
        report.capsule_contact.code(),
        report.vascularity.code(),
        report.language.code(),
    ];
    let mut offset = 0;
    codes
        .iter()
        .zip(STRUCTURED_FIELDS)
        .map(|(&code, &(_, n))| {
            let row = offset + code;
            offset += n;
            // At most a few dozen rows: fits in u32.
            #[allow(clippy::cast_possible_truncation)]
            let row = row as u32;
            row
        })
        .collect()
}

/// The maximum diameter on a log scale centred at 15 mm.
#[must_use]
pub fn scaled_diameter(max_diameter_mm: f64) -> f32 {
    ((max_diameter_mm.max(0.5) / 15.0).ln() / 0.8) as f32
}

/// The hashing tokenizer: lower-cased text with runs of white space folded to one space and a space
/// added at both ends; every character n-gram (n = 1..=`max_ngram`) hashed with FNV-1a 64 of its UTF-8
/// bytes (seeded by n) into `buckets`. Returns (bucket, count / total) sorted by bucket. Works on any
/// script (Chinese has no spaces: its character bigrams carry the words) and needs no vocabulary.
#[must_use]
pub fn hash_text(text: &str, buckets: usize, max_ngram: usize) -> Vec<(u32, f32)> {
    let mut chars: Vec<char> = vec![' '];
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = if c.is_whitespace() { ' ' } else { c };
        if !(c == ' ' && chars.last() == Some(&' ')) {
            chars.push(c);
        }
    }
    if chars.last() != Some(&' ') {
        chars.push(' ');
    }
    let mut counts: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    let mut total = 0_u32;
    let mut buffer = [0_u8; 4];
    for n in 1..=max_ngram {
        for window in chars.windows(n) {
            if n == 1 && window[0] == ' ' {
                continue;
            }
            let mut hash = FNV_OFFSET ^ (n as u64);
            for c in window {
                for &byte in c.encode_utf8(&mut buffer).as_bytes() {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
                }
            }
            // The remainder is below `buckets`, a usize table size: fits in u32 for any sane table.
            #[allow(clippy::cast_possible_truncation)]
            let bucket = (hash % buckets.max(1) as u64) as u32;
            *counts.entry(bucket).or_default() += 1;
            total += 1;
        }
    }
    counts
        .into_iter()
        .map(|(bucket, count)| (bucket, count as f32 / total.max(1) as f32))
        .collect()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// Applies the training augmentations to a CHW image of side `size`, in place: horizontal flip, shift
/// and zoom (bilinear, black outside), gain, multiplicative speckle noise; values stay in [0, 1].
pub fn augment_image(image: &mut [f32], size: usize, config: &AugmentConfig, rng: &mut impl Rng) {
    let flip = rng.random::<f64>() < config.flip_probability;
    let uniform = |rng: &mut dyn rand::RngCore, max: f64| {
        if max > 0.0 {
            rng.random_range(-max..=max)
        } else {
            0.0
        }
    };
    let shift_x = uniform(rng, config.max_shift) * size as f64;
    let shift_y = uniform(rng, config.max_shift) * size as f64;
    let scale = 1.0 + uniform(rng, config.max_scale);
    let gain = 1.0 + uniform(rng, config.max_gain);
    let plane = size * size;
    let source = image.to_vec();
    let centre = (size as f64 - 1.0) / 2.0;
    for y in 0..size {
        for x in 0..size {
            let out_x = if flip { size - 1 - x } else { x };
            let src_x = (x as f64 - centre - shift_x) / scale + centre;
            let src_y = (y as f64 - centre - shift_y) / scale + centre;
            for channel in 0..3 {
                let value = bilinear(
                    &source[channel * plane..(channel + 1) * plane],
                    size,
                    src_x,
                    src_y,
                );
                image[channel * plane + y * size + out_x] = value;
            }
        }
    }
    for value in image.iter_mut() {
        let noise: f64 = if config.speckle_sigma > 0.0 {
            rng.sample::<f64, _>(StandardNormal)
        } else {
            0.0
        };
        let speckle = 1.0 + config.speckle_sigma * noise;
        *value = ((f64::from(*value) * gain * speckle) as f32).clamp(0.0, 1.0);
    }
}

fn bilinear(plane: &[f32], size: usize, x: f64, y: f64) -> f32 {
    let max = size as f64 - 1.0;
    if x < 0.0 || y < 0.0 || x > max || y > max {
        return 0.0;
    }
    // In range [0, size-1]: the casts are exact floors.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
    let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
    let top = plane[y0 * size + x0] * (1.0 - fx) + plane[y0 * size + x1] * fx;
    let bottom = plane[y1 * size + x0] * (1.0 - fx) + plane[y1 * size + x1] * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn hashed_text_is_a_normalised_bag_and_ignores_case_and_spacing() {
        let a = hash_text("Hypoechoic  nodule, punctate foci", 512, 3);
        let b = hash_text("hypoechoic nodule, PUNCTATE foci", 512, 3);
        assert_eq!(a, b);
        let total: f32 = a.iter().map(|(_, w)| w).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(a.iter().all(|&(bucket, _)| bucket < 512));
        let chinese = hash_text("甲状腺左叶低回声结节，可见微钙化", 512, 3);
        assert!(!chinese.is_empty());
        assert_ne!(chinese, a);
        assert!(hash_text("", 512, 3).is_empty());
    }

    #[test]
    fn structured_indices_stay_in_their_field_ranges() {
        let vocabulary = structured_vocabulary();
        assert_eq!(vocabulary, 4 + 5 + 2 + 4 + 5 + 3 + 3 + 3 + 4 + 2);
        let mut start = 0;
        let report = UltrasoundReport {
            composition: Composition::Solid,
            echogenicity: Echogenicity::VeryHypoechoic,
            shape: Shape::TallerThanWide,
            margin: Margin::ExtrathyroidalExtension,
            echogenic_foci: EchogenicFoci::Punctate,
            max_diameter_mm: 12.0,
            lobe: Lobe::Isthmus,
            pole: Pole::Lower,
            capsule_contact: CapsuleContact::Over25,
            vascularity: Vascularity::Mixed,
            language: Language::Chinese,
            text: String::new(),
        };
        // The last category of every field: the index is the end of the field's range.
        for (&index, &(_, n)) in structured_indices(&report).iter().zip(STRUCTURED_FIELDS) {
            assert_eq!(index as usize, start + n - 1);
            start += n;
        }
    }

    #[test]
    fn augmentation_keeps_range_and_flip_mirrors() {
        let size = 8;
        let mut image: Vec<f32> = (0..3 * size * size)
            .map(|i| (i % size) as f32 / size as f32)
            .collect();
        let original = image.clone();
        let flip_only = AugmentConfig {
            flip_probability: 1.0,
            ..AugmentConfig::NONE
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        augment_image(&mut image, size, &flip_only, &mut rng);
        for y in 0..size {
            for x in 0..size {
                assert!((image[y * size + x] - original[y * size + size - 1 - x]).abs() < 1e-6);
            }
        }
        let mut image = original.clone();
        augment_image(&mut image, size, &AugmentConfig::default(), &mut rng);
        assert!(image.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(image, original);
    }
}
