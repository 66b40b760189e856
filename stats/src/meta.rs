//! Random-effects meta-analysis of per-site estimates (statistics.md, "Heterogeneity across sites"):
//! the conventions of R `metamisc::valmeta` over `metafor::rma`. τ² by REML (Fisher scoring, as
//! metafor iterates it, to 1e-10; never below 0) and by DerSimonian–Laird; the Knapp–Hartung
//! interval; the prediction interval for a new site with t(k − 2); Cochran's Q with fixed-effect
//! weights and I² = max(0, (Q − (k − 1))/Q). Per-site AUCs are pooled on the logit scale with the
//! delta-method variance ([`pooled_auc`]); any estimate with a variance pools on its own scale
//! ([`random_effects`]).

use serde::Serialize;

/// The REML iteration stops when a step changes τ² by less than this (statistics.md).
pub const REML_TOLERANCE: f64 = 1e-10;
/// At most this many REML steps (metafor's default `maxiter`).
pub const REML_MAX_ITERATIONS: usize = 100;

/// One site's estimate and its variance, on the scale of the analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteEstimate {
    pub site: String,
    pub estimate: f64,
    pub variance: f64,
}

/// The random-effects summary of k ≥ 2 sites, on the scale of the analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RandomEffects {
    /// The sites in the analysis, in the order given.
    pub sites: Vec<String>,
    /// μ̂ = Σ w_i θ_i / Σ w_i with w_i = 1/(v_i + τ²).
    pub estimate: f64,
    /// (Σ w_i)^(−1/2).
    pub se: f64,
    /// The Knapp–Hartung standard error SE·√s² (not truncated).
    pub se_knapp_hartung: f64,
    /// μ̂ ± t(k − 1, 0.975)·SE_KH.
    pub ci_lower: f64,
    pub ci_upper: f64,
    /// μ̂ ± t(k − 2, 0.975)·√(τ² + SE_KH²); `None` for k < 3.
    pub prediction_lower: Option<f64>,
    pub prediction_upper: Option<f64>,
    /// τ² by REML (the estimate used), and by DerSimonian–Laird (reported beside it).
    pub tau2: f64,
    pub tau2_dersimonian_laird: f64,
    /// Cochran's Q with fixed-effect weights, on k − 1 degrees of freedom.
    pub q: f64,
    /// max(0, (Q − (k − 1))/Q).
    pub i2: f64,
}

/// Why a meta-analysis cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetaError {
    #[error(
        "a meta-analysis needs at least 2 sites with a defined estimate and a positive variance, got {0}"
    )]
    TooFewSites(usize),
    #[error(
        "site {site}: the estimate {estimate} or variance {variance} is not a finite number (variance > 0)"
    )]
    Invalid {
        site: String,
        estimate: f64,
        variance: f64,
    },
    #[error("the REML estimate of tau^2 did not converge in {REML_MAX_ITERATIONS} steps")]
    NotConverged,
}

/// Per-site AUCs pooled on the logit scale: θ_i = logit(c_i), Var θ_i = v(c_i)/(c_i(1 − c_i))².
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PooledAuc {
    /// The analysis, on the logit scale (what the JSON keeps).
    pub logit: RandomEffects,
    /// The inverse logit of the summary, its CI and prediction interval (for display).
    pub auc: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
    pub prediction_lower: Option<f64>,
    pub prediction_upper: Option<f64>,
    /// Sites left out: AUC or variance undefined, 0 or 1 (AUC), or 0 (variance).
    pub left_out: Vec<String>,
}

/// The random-effects meta-analysis of `sites` (each with a finite estimate and a positive variance).
///
/// # Errors
/// Fewer than 2 sites, an invalid estimate or variance, or a REML iteration that does not converge.
pub fn random_effects(sites: &[SiteEstimate]) -> Result<RandomEffects, MetaError> {
    if let Some(bad) = sites
        .iter()
        .find(|s| !(s.estimate.is_finite() && s.variance.is_finite() && s.variance > 0.0))
    {
        return Err(MetaError::Invalid {
            site: bad.site.clone(),
            estimate: bad.estimate,
            variance: bad.variance,
        });
    }
    let k = sites.len();
    if k < 2 {
        return Err(MetaError::TooFewSites(k));
    }
    let theta: Vec<f64> = sites.iter().map(|s| s.estimate).collect();
    let v: Vec<f64> = sites.iter().map(|s| s.variance).collect();
    let df = (k - 1) as f64;

    // Fixed effect: Q and DerSimonian–Laird.
    let fixed = Weighted::at(&theta, &v, 0.0);
    let q = fixed.residual_sum();
    let c = fixed.sum_w - fixed.sum_w2 / fixed.sum_w;
    let tau2_dl = ((q - df) / c).max(0.0);
    let i2 = if q > 0.0 { ((q - df) / q).max(0.0) } else { 0.0 };

    let tau2 = reml_tau2(&theta, &v, tau2_dl)?;
    let re = Weighted::at(&theta, &v, tau2);
    let se = re.sum_w.powf(-0.5);
    let s2 = re.residual_sum() / df;
    let se_kh = se * s2.sqrt();
    let t1 = t_quantile_975(df);
    let prediction = (k >= 3).then(|| {
        let half = t_quantile_975((k - 2) as f64) * (tau2 + se_kh * se_kh).sqrt();
        (re.mean - half, re.mean + half)
    });
    Ok(RandomEffects {
        sites: sites.iter().map(|s| s.site.clone()).collect(),
        estimate: re.mean,
        se,
        se_knapp_hartung: se_kh,
        ci_lower: re.mean - t1 * se_kh,
        ci_upper: re.mean + t1 * se_kh,
        prediction_lower: prediction.map(|p| p.0),
        prediction_upper: prediction.map(|p| p.1),
        tau2,
        tau2_dersimonian_laird: tau2_dl,
        q,
        i2,
    })
}

/// Per-site AUCs with their DeLong variances, pooled on the logit scale; sites whose AUC or variance
/// is undefined (or an AUC of 0 or 1, a variance of 0) are left out and listed.
///
/// # Errors
/// As [`random_effects`], on the sites left in.
pub fn pooled_auc(sites: &[(String, Option<f64>, Option<f64>)]) -> Result<PooledAuc, MetaError> {
    let mut included = Vec::new();
    let mut left_out = Vec::new();
    for (site, auc, variance) in sites {
        match (auc, variance) {
            (Some(c), Some(var)) if *c > 0.0 && *c < 1.0 && *var > 0.0 && var.is_finite() => {
                included.push(SiteEstimate {
                    site: site.clone(),
                    estimate: (c / (1.0 - c)).ln(),
                    variance: var / (c * (1.0 - c)).powi(2),
                });
            }
            _ => left_out.push(site.clone()),
        }
    }
    let logit = random_effects(&included)?;
    let expit = |x: f64| 1.0 / (1.0 + (-x).exp());
    Ok(PooledAuc {
        auc: expit(logit.estimate),
        ci_lower: expit(logit.ci_lower),
        ci_upper: expit(logit.ci_upper),
        prediction_lower: logit.prediction_lower.map(expit),
        prediction_upper: logit.prediction_upper.map(expit),
        logit,
        left_out,
    })
}

/// The weighted sums of one τ²: w_i = 1/(v_i + τ²).
struct Weighted {
    w: Vec<f64>,
    residuals: Vec<f64>,
    mean: f64,
    sum_w: f64,
    sum_w2: f64,
}

impl Weighted {
    fn at(theta: &[f64], v: &[f64], tau2: f64) -> Self {
        let w: Vec<f64> = v.iter().map(|vi| 1.0 / (vi + tau2)).collect();
        let sum_w: f64 = w.iter().sum();
        let mean = w.iter().zip(theta).map(|(wi, ti)| wi * ti).sum::<f64>() / sum_w;
        let residuals = theta.iter().map(|ti| ti - mean).collect();
        let sum_w2 = w.iter().map(|wi| wi * wi).sum();
        Self {
            w,
            residuals,
            mean,
            sum_w,
            sum_w2,
        }
    }

    /// Σ w_i (θ_i − μ̂)².
    fn residual_sum(&self) -> f64 {
        self.w.iter().zip(&self.residuals).map(|(w, r)| w * r * r).sum()
    }
}

/// τ² by REML, metafor's Fisher scoring: τ² ← τ² + (θ'PPθ − tr P)/tr(PP), with P = W − w wᵀ/Σw, the
/// step halved while it would go below 0; from `start`.
fn reml_tau2(theta: &[f64], v: &[f64], start: f64) -> Result<f64, MetaError> {
    let mut tau2 = start.max(0.0);
    for _ in 0..REML_MAX_ITERATIONS {
        let at = Weighted::at(theta, v, tau2);
        let sum_w3: f64 = at.w.iter().map(|w| w * w * w).sum();
        // (Pθ)_i = w_i (θ_i − μ̂).
        let pp_theta: f64 = at.w.iter().zip(&at.residuals).map(|(w, r)| (w * r).powi(2)).sum();
        let trace_p = at.sum_w - at.sum_w2 / at.sum_w;
        let trace_pp = at.sum_w2 - 2.0 * sum_w3 / at.sum_w + (at.sum_w2 / at.sum_w).powi(2);
        let mut step = (pp_theta - trace_p) / trace_pp;
        if !step.is_finite() {
            return Err(MetaError::NotConverged);
        }
        while tau2 + step < 0.0 {
            step /= 2.0;
        }
        tau2 += step;
        if step.abs() < REML_TOLERANCE {
            return Ok(tau2.max(0.0));
        }
    }
    Err(MetaError::NotConverged)
}

/// The 0.975 quantile of Student's t on `df` > 0 degrees of freedom: P(|T| > t) = 0.05 is
/// I_x(df/2, 1/2) = 0.05 with x = df/(df + t²) (the regularized incomplete beta of `puruspe`,
/// its inverse refined by Newton steps on it).
#[must_use]
pub fn t_quantile_975(df: f64) -> f64 {
    let (a, b) = (df / 2.0, 0.5);
    let mut x = puruspe::invbetai(0.05, a, b);
    // Newton on I_x(a, b) − 0.05, with the beta density as derivative.
    let log_beta = puruspe::ln_gamma(a) + puruspe::ln_gamma(b) - puruspe::ln_gamma(a + b);
    for _ in 0..8 {
        let density = ((a - 1.0) * x.ln() + (b - 1.0) * (1.0 - x).ln() - log_beta).exp();
        let step = (puruspe::betai(a, b, x) - 0.05) / density;
        if !step.is_finite() || step == 0.0 {
            break;
        }
        x = (x - step).clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    }
    (df * (1.0 - x) / x).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_without_a_defined_auc_are_left_out_and_named() {
        let sites = vec![
            ("S1".to_owned(), Some(0.8), Some(0.001)),
            ("S2".to_owned(), Some(1.0), Some(0.0)),
            ("S3".to_owned(), None, None),
            ("S4".to_owned(), Some(0.75), Some(0.002)),
            ("S5".to_owned(), Some(0.7), Some(0.0)),
        ];
        let pooled = pooled_auc(&sites).unwrap();
        assert_eq!(pooled.logit.sites, ["S1", "S4"]);
        assert_eq!(pooled.left_out, ["S2", "S3", "S5"]);
        assert!(
            pooled.prediction_lower.is_none(),
            "no prediction interval with 2 sites"
        );
        assert!(pooled.ci_lower < pooled.auc && pooled.auc < pooled.ci_upper);
        assert_eq!(pooled_auc(&sites[..3]).unwrap_err(), MetaError::TooFewSites(1));
        let bad = [SiteEstimate {
            site: "S9".into(),
            estimate: f64::NAN,
            variance: 1.0,
        }];
        assert!(matches!(random_effects(&bad), Err(MetaError::Invalid { site, .. }) if site == "S9"));
    }
}
