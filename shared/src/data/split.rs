//! Seeded splits stratified by the outcome (LNM): one train/validation split, or k folds.
//!
//! Each class is shuffled with ChaCha8 from the seed and dealt out separately, so every part keeps the
//! class proportions (within one patient per class) and the parts are disjoint and complete.

use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use rand_chacha::ChaCha8Rng;

/// Indices (into the label slice) of the training and validation patients, each sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

/// A split that cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("validation fraction {0} is not strictly between 0 and 1")]
    BadFraction(f64),
    #[error(
        "k = {k} folds need 2 <= k <= the number of patients of each class ({positives} LNM+, {negatives} LNM-)"
    )]
    BadFoldCount {
        k: usize,
        positives: usize,
        negatives: usize,
    },
}

/// A train/validation split keeping the LNM proportion: `round(fraction * n_class)` of each class go to
/// validation.
pub fn stratified_split(labels: &[bool], validation_fraction: f64, seed: u64) -> Result<Split, SplitError> {
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        return Err(SplitError::BadFraction(validation_fraction));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut split = Split {
        train: Vec::new(),
        validation: Vec::new(),
    };
    for class in shuffled_classes(labels, &mut rng) {
        // Rounded and clamped to the class size: the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n_validation = ((validation_fraction * class.len() as f64).round() as usize).min(class.len());
        split.validation.extend_from_slice(&class[..n_validation]);
        split.train.extend_from_slice(&class[n_validation..]);
    }
    split.train.sort_unstable();
    split.validation.sort_unstable();
    Ok(split)
}

/// `k` folds: fold `i` validates on its share of each class and trains on all the others. Every patient
/// is validated exactly once.
pub fn stratified_k_fold(labels: &[bool], k: usize, seed: u64) -> Result<Vec<Split>, SplitError> {
    let positives = labels.iter().filter(|&&label| label).count();
    let negatives = labels.len() - positives;
    if k < 2 || k > positives || k > negatives {
        return Err(SplitError::BadFoldCount {
            k,
            positives,
            negatives,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of = vec![0_usize; labels.len()];
    let mut offset = 0;
    for class in shuffled_classes(labels, &mut rng) {
        // Deal the class round-robin, continuing where the previous class stopped so fold sizes even out.
        for (position, &patient) in class.iter().enumerate() {
            fold_of[patient] = (offset + position) % k;
        }
        offset = (offset + class.len()) % k;
    }
    Ok((0..k)
        .map(|fold| {
            let (validation, train): (Vec<usize>, Vec<usize>) =
                (0..labels.len()).partition(|&patient| fold_of[patient] == fold);
            Split { train, validation }
        })
        .collect())
}

/// The indices of the negative then the positive patients, each class shuffled.
fn shuffled_classes(labels: &[bool], rng: &mut ChaCha8Rng) -> [Vec<usize>; 2] {
    let mut classes = [Vec::new(), Vec::new()];
    for (index, &label) in labels.iter().enumerate() {
        classes[usize::from(label)].push(index);
    }
    for class in &mut classes {
        class.shuffle(rng);
    }
    classes
}
