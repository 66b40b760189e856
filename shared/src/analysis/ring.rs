//! The analyses' sums as the secure sum carries them: every fit's contribution at one Newton step
//! (score, information, log-likelihood, counts) as signed fixed point in Z_2^64, one vector per fit,
//! summed modulo 2^64 by a ring instance of secure aggregation ([`InputKind::Ring`]), so that the
//! aggregator learns the sum over the participants and never one site's.
//!
//! A value v of one element is sent as round(v·2^e) in two's complement. The exponent e is the same
//! at every site and computed from public numbers only: the fit's β, the participants' total rows N
//! (known from step 0) and each design column's largest |x| ([`super::fields::Field::max_abs`]). Every
//! row adds at most b to an element (b = B_j for the score of column j, B_j·B_k/4 for the
//! information, ln 2 + Σ|β_j|·B_j for the log-likelihood), so |Σ v| ≤ N·b, and e is the largest with
//! N·b·2^e ≤ 2^61: the true sum, rounding included, is then below 2^63 and its residue modulo 2^64
//! is its value. A site checks each of its values against n·b before it sends anything (a value
//! beyond it would wrap the sum: refused, named). The resolution is N·b·2^-61 per site: relative to
//! what a fit uses, far below f64 summation error (the federated fit equals the pooled fit of all
//! rows to the statistics spec's precision).
//!
//! Layout of a fit with p design columns: the score (p), the information's lower triangle by rows
//! (p(p+1)/2), the log-likelihood, then n, n_positive, n_boundary, n_misclassified as integers.

use super::{AnalysisConfig, FitRequest};
use crate::secagg::{InputKind, TensorSpec};
use crate::stats::design::TermSpec;
use crate::stats::logistic::SiteContribution;

/// Counts per fit after the sums: n, n_positive, n_boundary, n_misclassified.
const COUNTS: usize = 4;
/// The sum's bound: N·b·2^e ≤ 2^BOUND_BITS leaves room for every site's rounding below 2^63.
const BOUND_BITS: f64 = 61.0;

/// The elements of a fit with `p` design columns.
#[must_use]
pub fn fit_len(p: usize) -> usize {
    p + p * (p + 1) / 2 + 1 + COUNTS
}

/// The secure sum's layout for the fits of one step: one tensor `fit-K` per fit.
///
/// # Errors
/// A fit whose terms the analysis cannot build, named.
pub fn tensor_specs(analysis: &AnalysisConfig, fits: &[FitRequest]) -> Result<Vec<TensorSpec>, String> {
    fits.iter()
        .enumerate()
        .map(|(k, fit)| {
            let p = columns(analysis, &fit.terms)?.1.len();
            Ok(TensorSpec {
                name: format!("fit-{k}"),
                shape: vec![fit_len(p)],
            })
        })
        .collect()
}

/// The input kind of an analysis's secure sum.
pub const INPUT: InputKind = InputKind::Ring;

/// The design columns of the model of `terms` (`const` first, in the design's order): their names
/// and the largest |x| each can hold.
fn columns(analysis: &AnalysisConfig, terms: &[String]) -> Result<(Vec<String>, Vec<f64>), String> {
    let spec = analysis.design_spec(terms).map_err(|e| e.to_string())?;
    let mut bounds = vec![1.0];
    for term in spec.terms() {
        match term {
            TermSpec::Numeric { column } => {
                let field =
                    super::fields::field(column).ok_or_else(|| format!("unknown field '{column}'"))?;
                bounds.push(field.max_abs);
            }
            TermSpec::Categorical { levels, .. } => {
                bounds.extend(std::iter::repeat_n(1.0, levels.len().saturating_sub(1)));
            }
        }
    }
    if bounds.len() != spec.column_names().len() {
        return Err(format!(
            "{} column bounds for the {} columns of [{}]",
            bounds.len(),
            spec.column_names().len(),
            terms.join(", ")
        ));
    }
    Ok((spec.column_names().to_vec(), bounds))
}

/// What one row may add to each element of a fit (before the counts), and the elements' names.
fn row_bounds(analysis: &AnalysisConfig, fit: &FitRequest) -> Result<Vec<(f64, String)>, String> {
    let (names, bounds) = columns(analysis, &fit.terms)?;
    if fit.beta.len() != bounds.len() || fit.beta.iter().any(|b| !b.is_finite()) {
        return Err(format!(
            "β of [{}] has {} entries or is not finite; the model has {} columns",
            fit.terms.join(", "),
            fit.beta.len(),
            bounds.len()
        ));
    }
    let mut rows: Vec<(f64, String)> = bounds
        .iter()
        .zip(&names)
        .map(|(&b, name)| (b, format!("the score of {name}")))
        .collect();
    for j in 0..bounds.len() {
        for k in 0..=j {
            let what = format!("the information of {} × {}", names[j], names[k]);
            rows.push((bounds[j] * bounds[k] / 4.0, what));
        }
    }
    let eta: f64 = fit.beta.iter().zip(&bounds).map(|(b, x)| b.abs() * x).sum();
    rows.push((std::f64::consts::LN_2 + eta, "the log-likelihood".to_owned()));
    Ok(rows)
}

/// 2^e for |e| ≤ 1000, exactly.
fn pow2(e: i32) -> f64 {
    let e = e.clamp(-1000, 1000);
    f64::from_bits(u64::try_from(1023 + e).unwrap_or(1023) << 52)
}

/// The exponent of an element whose sum over `rows` rows is at most `rows·per_row` in size.
fn exponent(rows: u64, per_row: f64) -> i32 {
    let bound = (rows.max(1) as f64) * per_row;
    (BOUND_BITS - bound.log2()).floor().clamp(-1000.0, 1000.0) as i32
}

/// One site's ring vectors for the step's fits: its `contributions` (one per fit, in order) over its
/// `n` rows, at the scales of `rows` rows in all.
///
/// # Errors
/// A contribution of the wrong shape, `rows` below `n`, or a value beyond what `n` rows within the
/// columns' bounds can give (named): sent, it could wrap the sum.
pub fn encode(
    analysis: &AnalysisConfig,
    fits: &[FitRequest],
    rows: u64,
    contributions: &[SiteContribution],
) -> Result<Vec<Vec<u64>>, String> {
    if contributions.len() != fits.len() {
        return Err(format!(
            "{} contributions for {} fits",
            contributions.len(),
            fits.len()
        ));
    }
    fits.iter()
        .zip(contributions)
        .map(|(fit, c)| {
            if c.n > rows {
                return Err(format!(
                    "the step's scales are for {rows} rows in all, fewer than this site's {}",
                    c.n
                ));
            }
            let bounds = row_bounds(analysis, fit)?;
            let p = fit.beta.len();
            if c.gradient.len() != p || c.information.len() != p * p {
                return Err(format!("a contribution of the wrong shape for [{}]", fit.terms.join(", ")));
            }
            let mut values = c.gradient.clone();
            for j in 0..p {
                values.extend_from_slice(&c.information[j * p..=j * p + j]);
            }
            values.push(c.loglik);
            let mut vector = Vec::with_capacity(fit_len(p));
            for (&v, (per_row, what)) in values.iter().zip(&bounds) {
                let limit = c.n as f64 * per_row * (1.0 + 1e-9);
                if !v.is_finite() || v.abs() > limit {
                    return Err(format!(
                        "{what} of [{}] is {v}, beyond the {limit} that {} rows within the columns' bounds can give",
                        fit.terms.join(", "),
                        c.n
                    ));
                }
                let scaled = (v * pow2(exponent(rows, *per_row))).round();
                vector.push(scaled as i64 as u64);
            }
            vector.extend([c.n, c.n_positive, c.n_boundary, c.n_misclassified]);
            Ok(vector)
        })
        .collect()
}

/// The pooled contribution of every fit from the ring sums of `rows` rows in all.
///
/// # Errors
/// Sums of the wrong layout, or counts that do not fit `rows` (some input was not made by
/// [`encode`]).
pub fn decode(
    analysis: &AnalysisConfig,
    fits: &[FitRequest],
    rows: u64,
    sums: &[Vec<u64>],
) -> Result<Vec<SiteContribution>, String> {
    if sums.len() != fits.len() {
        return Err(format!("{} sums for {} fits", sums.len(), fits.len()));
    }
    fits.iter()
        .zip(sums)
        .map(|(fit, sum)| {
            let bounds = row_bounds(analysis, fit)?;
            let p = fit.beta.len();
            if sum.len() != fit_len(p) {
                return Err(format!(
                    "{} elements for a fit of {} ({p} columns)",
                    sum.len(),
                    fit_len(p)
                ));
            }
            let values: Vec<f64> = sum
                .iter()
                .zip(&bounds)
                .map(|(&s, (per_row, _))| s as i64 as f64 / pow2(exponent(rows, *per_row)))
                .collect();
            let mut information = vec![0.0; p * p];
            let mut next = p;
            for j in 0..p {
                for k in 0..=j {
                    information[j * p + k] = values[next];
                    information[k * p + j] = values[next];
                    next += 1;
                }
            }
            let counts = &sum[next + 1..];
            let [n, n_positive, n_boundary, n_misclassified] = [counts[0], counts[1], counts[2], counts[3]];
            if n != rows || [n_positive, n_boundary, n_misclassified].iter().any(|&c| c > n) {
                return Err(format!(
                    "the sum holds {n} rows ({n_positive} events, {n_boundary} on the boundary, \
                     {n_misclassified} misclassified), where the sites gave {rows}"
                ));
            }
            Ok(SiteContribution {
                gradient: values[..p].to_vec(),
                information,
                loglik: values[next],
                n,
                n_positive,
                n_boundary,
                n_misclassified,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::analysis::pooled_rows;
    use crate::stats::logistic::site_contribution;
    use crate::synth::profile::SiteProfile;
    use crate::synth::{OutputFormat, SynthConfig, generate_cohort};

    fn analysis() -> AnalysisConfig {
        toml::from_str(
            r#"
            name = "ring"
            terms = ["age_years", "max_diameter_mm", "male", "pole"]
            "#,
        )
        .unwrap()
    }

    /// Three sites' contributions at a β away from 0, their ring sums, and the plain sum.
    #[test]
    fn the_decoded_ring_sum_is_the_plain_sum_to_f64_precision() {
        let analysis = analysis();
        let terms = analysis.terms.clone();
        let beta = vec![-1.2, 0.013, 0.04, 0.3, -0.2, 0.5];
        let fits = [FitRequest {
            terms: terms.clone(),
            beta: beta.clone(),
        }];
        let sites: Vec<SiteContribution> = (0..3)
            .map(|k| {
                let cohort = generate_cohort(&SynthConfig {
                    site: format!("S{k}"),
                    n_patients: 150 + 70 * k,
                    seed: k as u64,
                    profile: SiteProfile::named("tertiary").unwrap(),
                    format: OutputFormat::Png,
                    image_size: 32,
                });
                let records: Vec<_> = cohort.patients.into_iter().map(|p| p.record).collect();
                let (design, y) = pooled_rows(&analysis, &terms, &records).unwrap();
                site_contribution(&design, &y, &beta, 10).unwrap()
            })
            .collect();
        let rows: u64 = sites.iter().map(|c| c.n).sum();
        let mut ring = vec![0u64; fit_len(beta.len())];
        for site in &sites {
            let vector = encode(&analysis, &fits, rows, std::slice::from_ref(site)).unwrap();
            for (r, v) in ring.iter_mut().zip(&vector[0]) {
                *r = r.wrapping_add(*v);
            }
        }
        let pooled = decode(&analysis, &fits, rows, &[ring]).unwrap().remove(0);
        let plain = |pick: fn(&SiteContribution) -> &[f64]| -> Vec<f64> {
            (0..pick(&sites[0]).len())
                .map(|i| sites.iter().map(|c| pick(c)[i]).sum())
                .collect()
        };
        let close = |a: f64, b: f64, scale: f64| (a - b).abs() <= 1e-13 * scale.max(b.abs());
        for (a, b) in pooled.gradient.iter().zip(plain(|c| &c.gradient)) {
            // The score sums signed residuals: compare on the scale of its bound.
            assert!(close(*a, b, rows as f64), "score {a} vs {b}");
        }
        for (a, b) in pooled.information.iter().zip(plain(|c| &c.information)) {
            assert!(close(*a, b, 1.0), "information {a} vs {b}");
        }
        let loglik: f64 = sites.iter().map(|c| c.loglik).sum();
        assert!(close(pooled.loglik, loglik, 1.0), "{} vs {loglik}", pooled.loglik);
        assert_eq!(pooled.n, rows);
        assert_eq!(pooled.n_positive, sites.iter().map(|c| c.n_positive).sum::<u64>());
        assert_eq!(
            pooled.n_misclassified,
            sites.iter().map(|c| c.n_misclassified).sum::<u64>()
        );
    }

    #[test]
    fn a_value_beyond_the_bounds_or_a_short_total_is_refused_by_name() {
        let analysis = analysis();
        let fits = [FitRequest {
            terms: analysis.terms.clone(),
            beta: vec![0.0; 6],
        }];
        let p = 6;
        let mut contribution = SiteContribution {
            gradient: vec![0.0; p],
            information: vec![0.0; p * p],
            loglik: -20.0 * std::f64::consts::LN_2,
            n: 20,
            n_positive: 5,
            n_boundary: 0,
            n_misclassified: 5,
        };
        // 20 rows of age ≤ 100 cannot have a score of 2001 in age.
        contribution.gradient[1] = 2001.0;
        let error = encode(&analysis, &fits, 100, std::slice::from_ref(&contribution)).unwrap_err();
        assert!(error.contains("the score of age_years"), "{error}");
        contribution.gradient[1] = 0.0;
        let error = encode(&analysis, &fits, 10, std::slice::from_ref(&contribution)).unwrap_err();
        assert!(
            error.contains("for 10 rows in all, fewer than this site's 20"),
            "{error}"
        );
        let ring = encode(&analysis, &fits, 100, std::slice::from_ref(&contribution)).unwrap();
        let error = decode(&analysis, &fits, 100, &ring).unwrap_err();
        assert!(error.contains("the sum holds 20 rows"), "{error}");
    }
}
