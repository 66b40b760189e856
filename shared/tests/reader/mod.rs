//! A reader who knows where the nodule is and measures its grey levels at the model's 64-px input: how
//! much of the generator's image signal survives down-sampling, and the ceiling that reading puts on
//! a model's AUC. Used by `synth_legibility.rs` and by `examples/legibility_ceiling.rs`.
#![allow(dead_code, clippy::unwrap_used)] // Each user takes part of it; a panic is a failed test.

use fedlnm_shared::data::Preprocess;
use fedlnm_shared::data::image::to_tensor;
use fedlnm_shared::synth::cohort::sigmoid;
use fedlnm_shared::synth::{self, Cohort, Covariate, SynthConfig, SynthPatient, covariate_values};

pub const INPUT: usize = 64;

/// Grey levels (mean of R, G, B) of a patient's picture as the model sees it.
pub fn grey(patient: &SynthPatient, config: &SynthConfig) -> Vec<f64> {
    let preprocess = Preprocess {
        size: INPUT as u32,
        ..Preprocess::default()
    };
    let data = to_tensor(&synth::render_patient(patient, config), &preprocess)
        .unwrap()
        .data;
    let plane = INPUT * INPUT;
    (0..plane)
        .map(|i| f64::from(data[i] + data[plane + i] + data[2 * plane + i]) / 3.0)
        .collect()
}

/// What a reader who knows the nodule's outline measures: `[1, mean grey inside, mean grey of a 3-pixel
/// ring around it, spread inside, inside/ring, area]` (`None` for a nodule of under 4 pixels at this
/// size). The nodule is found as the pixels that change when only the patient's aggressiveness changes
/// (same render seed: same anatomy and noise).
pub fn nodule_measurements(patient: &SynthPatient, config: &SynthConfig) -> Option<[f64; 6]> {
    let picture = grey(patient, config);
    let mut darker = patient.clone();
    darker.truth.aggressiveness += 3.0;
    let reference = grey(&darker, config);
    let inside: Vec<bool> = picture
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs() > 0.02)
        .collect();
    let mut values_in = Vec::new();
    let (mut sum_ring, mut n_ring) = (0.0, 0);
    for y in 0..INPUT {
        for x in 0..INPUT {
            let value = picture[y * INPUT + x];
            if inside[y * INPUT + x] {
                values_in.push(value);
            } else if (y.saturating_sub(3)..(y + 4).min(INPUT))
                .any(|yy| (x.saturating_sub(3)..(x + 4).min(INPUT)).any(|xx| inside[yy * INPUT + xx]))
            {
                sum_ring += value;
                n_ring += 1;
            }
        }
    }
    if values_in.len() < 4 || n_ring == 0 {
        return None;
    }
    let area = values_in.len() as f64;
    let mean_in = values_in.iter().sum::<f64>() / area;
    let spread = (values_in.iter().map(|v| (v - mean_in).powi(2)).sum::<f64>() / area).sqrt();
    let ring = sum_ring / f64::from(n_ring);
    Some([1.0, mean_in, ring, spread, mean_in / ring.max(1e-3), area])
}

/// Least-squares fit of `y` on the rows of `x` (normal equations, Gauss-Jordan); returns the fitted values.
pub fn least_squares_fit<const K: usize>(x: &[[f64; K]], y: &[f64]) -> Vec<f64> {
    let mut system = vec![[0.0; K]; K];
    let mut rhs = [0.0; K];
    for (row, &target) in x.iter().zip(y) {
        for i in 0..K {
            for j in 0..K {
                system[i][j] += row[i] * row[j];
            }
            rhs[i] += row[i] * target;
        }
    }
    for column in 0..K {
        let pivot = (column..K)
            .max_by(|&a, &b| system[a][column].abs().total_cmp(&system[b][column].abs()))
            .unwrap();
        system.swap(column, pivot);
        rhs.swap(column, pivot);
        for row in 0..K {
            if row != column {
                let factor = system[row][column] / system[column][column];
                let pivot_row = system[column];
                for (value, pivot_value) in system[row].iter_mut().zip(pivot_row).skip(column) {
                    *value -= factor * pivot_value;
                }
                rhs[row] -= factor * rhs[column];
            }
        }
    }
    let beta: Vec<f64> = (0..K).map(|i| rhs[i] / system[i][i]).collect();
    x.iter()
        .map(|row| row.iter().zip(&beta).map(|(a, b)| a * b).sum())
        .collect()
}

/// Pearson correlation.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// The reader's ceiling on a cohort: each patient's true LNM probability with the latent
/// aggressiveness replaced by its linear read-out from the 64-px measurements (fitted in sample, so
/// optimistic; the cohort's mean for a nodule under 4 pixels) and every other covariate at its true
/// value. Returns those probabilities and the read-out's correlation with the truth.
pub fn reader_capped_probabilities(cohort: &Cohort, config: &SynthConfig) -> (Vec<f64>, f64) {
    let measured: Vec<Option<[f64; 6]>> = cohort
        .patients
        .iter()
        .map(|p| nodule_measurements(p, config))
        .collect();
    let (aggressiveness, rows): (Vec<f64>, Vec<[f64; 6]>) = cohort
        .patients
        .iter()
        .zip(&measured)
        .filter_map(|(p, m)| Some((p.truth.aggressiveness, (*m)?)))
        .unzip();
    let read = least_squares_fit(&rows, &aggressiveness);
    let r = correlation(&aggressiveness, &read);
    let mean = aggressiveness.iter().sum::<f64>() / aggressiveness.len() as f64;
    let mut reads = read.into_iter();
    let column = Covariate::ALL
        .iter()
        .position(|&c| c == Covariate::Aggressiveness)
        .unwrap();
    let probabilities = cohort
        .patients
        .iter()
        .zip(&measured)
        .map(|(p, m)| {
            let mut values = covariate_values(&p.truth);
            values[column] = if m.is_some() { reads.next().unwrap() } else { mean };
            sigmoid(cohort.model.partial_logit(&values, |_| true))
        })
        .collect();
    (probabilities, r)
}
