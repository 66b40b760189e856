//! SecAgg+ parameter selection (Bell et al., CCS 2020, §3 and its Harary-graph analysis; the same
//! bounds as the reference implementation's parameter finder, `fcp/secagg/server/graph_parameter_finder.cc`
//! in google-parfait/federated-compute): is a degree k and a threshold t safe for n sites when up to
//! ⌊δn⌋ may drop out and ⌊γn⌋ may collude with the aggregator?
//!
//! Three events must be unlikely, each over the random permutation of the graph:
//! 1. **Disconnection** (privacy: the aggregator would learn the sums of the pieces). Removing sites
//!    disconnects the ring lattice H(n, k) only if two disjoint runs of k/2 consecutive sites are all
//!    removed, so with B = ⌊δn⌋ + ⌊γn⌋ removed sites, by a union bound over the n(n − k − 1)/2 pairs
//!    of runs, P ≤ n(n − k − 1)/2 · C(B, k)/C(n, k) ≈ n²·((γ + δ))^k, which must be below 2^-(σ+1).
//!    Hence k ≳ (2·log2 n + σ + 1) / log2(1/(γ + δ)): **logarithmic in n**.
//! 2. **Too many corrupt neighbours** (privacy): c_max is the smallest c with P[X > c] ≤ 2^-(σ+1)/n,
//!    X ~ Hypergeometric(n − 1 sites, ⌊γn⌋ corrupt, k neighbours) (a union bound over the n sites).
//!    Against a curious aggregator t > c_max (corrupt neighbours alone never hold t shares); against
//!    a malicious one 2t − (k + 2) > c_max: two conflicting survivor sets cannot both gather t
//!    signatures in one closed neighbourhood (needs 2t − (k + 1) > c_max), and an aggregator that
//!    shows a site v a U2 of only W ∪ C ∪ {v} (so that v masks with them alone) and then declares W
//!    dropped cannot strip v's masks: v accepts its delivery only with t members in that view
//!    (|W| ≥ t − 1 − c), and the survivor set must still gather t signatures in N[v] without W
//!    (|W| ≤ k + 1 − t), which together need c ≥ 2t − k − 2 (the crate documentation gives both
//!    arguments).
//! 3. **Too few surviving neighbours** (correctness): d_max is the smallest d with P[Y > d] ≤
//!    2^-η/n, Y ~ Hypergeometric(n − 1, ⌊δn⌋ dropouts, k); a dropped site's secret is rebuilt from
//!    its k neighbours alone, so t ≤ k − d_max.
//!
//! σ = [`SECURITY_BITS`] = 40 and η = [`CORRECTNESS_BITS`] = 20, as in the reference implementation.
//! With k ≥ n − 1 (the complete graph) the hypergeometric draws are the whole population and the rules
//! become t > ⌊γn⌋ (2t − n − 1 > ⌊γn⌋ against a malicious aggregator) and t ≤ n − ⌊δn⌋.
//!
//! The aggregator derives the graph, and a malicious one could regenerate an instance (a new attempt)
//! until the permutation places its colluders well: each regeneration multiplies the failure
//! probabilities of events 1 and 2 by at most one more, so 2^g attempts cost g of the σ bits.

/// σ: the statistical security parameter (privacy events fail with probability below 2^-σ).
pub const SECURITY_BITS: f64 = 40.0;
/// η: the correctness parameter (an instance aborts for too few surviving neighbours with probability
/// below 2^-η, under the declared dropout fraction).
pub const CORRECTNESS_BITS: f64 = 20.0;

/// A degree and a per-neighbourhood threshold ([`recommend_harary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HararyParameters {
    /// k, even; k ≥ n − 1 means the complete graph.
    pub degree: usize,
    /// t, out of the k + 1 members of a closed neighbourhood.
    pub threshold: usize,
}

/// The least degree k (even) and least threshold t that pass [`check_harary_parameters`] for `n`
/// sites, of which up to ⌊δn⌋ drop out and ⌊γn⌋ collude with the aggregator; the complete graph
/// (k = n − 1) when no smaller degree does. `None` if not even the complete graph does, or a fraction
/// is outside [0, 1).
///
/// Source: Bell et al. 2020's parameter selection as the reference implementation computes it (module
/// documentation), with our closed-neighbourhood sharing (t of k + 1 shares).
#[must_use]
pub fn recommend_harary(
    n: usize,
    dropout_fraction: f64,
    corrupt_fraction: f64,
    malicious: bool,
) -> Option<HararyParameters> {
    if n < 2 {
        return None;
    }
    let degrees = (2..n.saturating_sub(1)).step_by(2).chain([n - 1]);
    for degree in degrees {
        let lowest = structural_minimum(n, degree, malicious);
        for threshold in lowest..=degree.min(n - 1) + 1 {
            if check_harary_parameters(
                n,
                degree,
                threshold,
                dropout_fraction,
                corrupt_fraction,
                malicious,
            )
            .is_ok()
            {
                return Some(HararyParameters { degree, threshold });
            }
        }
    }
    None
}

/// The least t the threat model allows in a closed neighbourhood of k + 1 (k capped at n − 1):
/// (k+1)/2 < t against a curious aggregator, 2(k+1)/3 < t against a malicious one.
#[must_use]
pub fn structural_minimum(n: usize, degree: usize, malicious: bool) -> usize {
    let members = degree.min(n.saturating_sub(1)) + 1;
    if malicious {
        2 * members / 3 + 1
    } else {
        members / 2 + 1
    }
}

/// Checks that a declared degree k is even and at least 2.
///
/// # Errors
/// Why it is not, naming the degree.
pub fn check_degree(degree: usize) -> Result<(), String> {
    if degree < 2 || !degree.is_multiple_of(2) {
        return Err(format!("{degree}: expected an even number, at least 2"));
    }
    Ok(())
}

/// Checks k and t against the declared fractions (module documentation: connectivity, corrupt
/// neighbours, surviving neighbours).
///
/// # Errors
/// The configuration field at fault (`graph.dropout_fraction`, `graph.corrupt_fraction`,
/// `graph.degree` or `threshold`) and why.
pub fn check_harary_parameters(
    n: usize,
    degree: usize,
    threshold: usize,
    dropout_fraction: f64,
    corrupt_fraction: f64,
    malicious: bool,
) -> Result<(), (&'static str, String)> {
    for (field, value) in [
        ("graph.dropout_fraction", dropout_fraction),
        ("graph.corrupt_fraction", corrupt_fraction),
    ] {
        if !(0.0..1.0).contains(&value) {
            return Err((field, format!("{value} is not in [0, 1)")));
        }
    }
    let k = degree.min(n - 1);
    let dropouts = count(dropout_fraction, n);
    let corrupt = count(corrupt_fraction, n);
    let per_event = SECURITY_BITS + 1.0;
    if k + 1 < n {
        let log2_disconnected = log2_disconnection(n, k, dropouts + corrupt);
        if log2_disconnected >= -per_event {
            return Err((
                "graph.degree",
                format!(
                    "{degree} is too small for {n} sites with {dropouts} dropouts and {corrupt} corrupt \
                     sites: the honest survivors are disconnected with probability up to 2^{log2_disconnected:.1}, \
                     above 2^-{per_event} (Bell et al. 2020); raise the degree"
                ),
            ));
        }
    }
    let security_tail = (-per_event).exp2() / n as f64;
    let corrupt_neighbours = hypergeometric_quantile(n - 1, corrupt, k, security_tail);
    let (least, rule) = if malicious {
        ((k + 2 + corrupt_neighbours) / 2 + 1, "2t − (k + 2) >")
    } else {
        (corrupt_neighbours + 1, "t >")
    };
    if threshold < least {
        let reason = format!(
            "{threshold} is too small: up to {corrupt_neighbours} of a site's {k} neighbours may be corrupt \
             ({corrupt} of {n} sites, probability bound 2^-{per_event}/n), and the rule is {rule} that number; \
             use at least {least}"
        );
        return Err(("threshold", reason));
    }
    let correctness_tail = (-CORRECTNESS_BITS).exp2() / n as f64;
    let dropped_neighbours = hypergeometric_quantile(n - 1, dropouts, k, correctness_tail);
    if threshold + dropped_neighbours > k {
        return Err((
            "threshold",
            format!(
                "{threshold} is too large: up to {dropped_neighbours} of a site's {k} neighbours may drop out \
                 ({dropouts} of {n} sites, probability bound 2^-{CORRECTNESS_BITS}/n), which leaves {} to \
                 rebuild its secrets; lower the threshold or raise the degree",
                k - dropped_neighbours
            ),
        ));
    }
    Ok(())
}

/// ⌊fraction · n⌋, robust to the fraction's binary rounding (0.1 · 30 is 3).
pub(crate) fn count(fraction: f64, n: usize) -> usize {
    // fraction in [0, 1) and n ≤ 255 after validation: the result is a small non-negative integer.
    (fraction * n as f64 + 1e-9).floor() as usize
}

/// log2 of the union bound on the disconnection of H(n, k) with `removed` sites removed.
fn log2_disconnection(n: usize, k: usize, removed: usize) -> f64 {
    if removed < k {
        return f64::NEG_INFINITY;
    }
    let pairs = (n as f64) * ((n - k - 1) as f64) / 2.0;
    (pairs.ln() + ln_choose(removed, k) - ln_choose(n, k)) / std::f64::consts::LN_2
}

/// The smallest x with P[X > x] ≤ `tail`, X ~ Hypergeometric(`population`, `marked`, `draws`).
fn hypergeometric_quantile(population: usize, marked: usize, draws: usize, tail: f64) -> usize {
    let marked = marked.min(population);
    let most = marked.min(draws);
    let mut above = 0.0;
    // Walk down from the largest value, accumulating P[X > x].
    for x in (0..=most).rev() {
        let p_x = hypergeometric_pmf(population, marked, draws, x);
        if above + p_x > tail {
            return x;
        }
        above += p_x;
    }
    0
}

fn hypergeometric_pmf(population: usize, marked: usize, draws: usize, x: usize) -> f64 {
    if x > marked || draws < x || draws - x > population - marked {
        return 0.0;
    }
    (ln_choose(marked, x) + ln_choose(population - marked, draws - x) - ln_choose(population, draws)).exp()
}

fn ln_choose(a: usize, b: usize) -> f64 {
    if b > a {
        return f64::NEG_INFINITY;
    }
    let b = b.min(a - b);
    (0..b)
        .map(|i| ((a - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypergeometric_tails_match_hand_computed_values() {
        // 29 others, 3 corrupt, 8 neighbours: P[X = 3] = C(26,5)/C(29,8) = 65780/4292145.
        let p3 = hypergeometric_pmf(29, 3, 8, 3);
        assert!((p3 - 65780.0 / 4_292_145.0).abs() < 1e-12);
        let total: f64 = (0..=3).map(|x| hypergeometric_pmf(29, 3, 8, x)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(hypergeometric_quantile(29, 3, 8, 1e-15), 3);
        // P[X > 0] = 1 − C(26,8)/C(29,8) ≈ 0.64, P[X > 1] ≈ 0.18.
        assert_eq!(hypergeometric_quantile(29, 3, 8, 0.5), 1);
        assert_eq!(hypergeometric_quantile(29, 0, 8, 1e-15), 0);
        // Drawing the whole population is deterministic.
        assert_eq!(hypergeometric_quantile(29, 7, 29, 1e-15), 7);
    }

    #[test]
    fn the_degree_grows_like_log_n() {
        // 5 % dropouts and 5 % corrupt sites against a curious aggregator.
        let k = |n| recommend_harary(n, 0.05, 0.05, false).unwrap().degree;
        let (k100, k250) = (k(100), k(250));
        assert!(k100 < 99 && k250 < 249, "{k100} {k250}");
        assert!(k250 <= k100 + 8, "{k100} → {k250}");
    }

    #[test]
    fn recommendations_pass_their_own_check_and_are_minimal() {
        for (n, delta, gamma, malicious) in [
            (30, 0.1, 0.1, false),
            (100, 0.05, 0.05, false),
            (100, 0.05, 0.05, true),
            (200, 0.1, 0.05, true),
            (12, 0.0, 0.0, true),
        ] {
            let p = recommend_harary(n, delta, gamma, malicious).unwrap();
            check_harary_parameters(n, p.degree, p.threshold, delta, gamma, malicious).unwrap();
            assert!(p.threshold >= structural_minimum(n, p.degree, malicious));
            if p.degree > 2 && p.degree < n - 1 {
                let smaller = p.degree - 2;
                assert!(
                    (structural_minimum(n, smaller, malicious)..=smaller + 1)
                        .all(|t| check_harary_parameters(n, smaller, t, delta, gamma, malicious).is_err()),
                    "{n} {delta} {gamma}: {smaller} also works"
                );
            }
        }
        // Too many bad sites even for the complete graph.
        assert_eq!(recommend_harary(10, 0.5, 0.5, true), None);
        assert_eq!(recommend_harary(10, 1.0, 0.0, false), None);
    }

    #[test]
    fn errors_name_the_field() {
        let field = |r: Result<(), (&'static str, String)>| r.unwrap_err().0;
        assert_eq!(
            field(check_harary_parameters(100, 14, 8, 1.2, 0.0, false)),
            "graph.dropout_fraction"
        );
        assert_eq!(
            field(check_harary_parameters(100, 14, 8, 0.0, -0.1, false)),
            "graph.corrupt_fraction"
        );
        // 40 of 100 removed: a degree of 4 is far too small.
        assert_eq!(
            field(check_harary_parameters(100, 4, 3, 0.2, 0.2, false)),
            "graph.degree"
        );
        // Up to 5 corrupt neighbours: t must exceed 5 (curious).
        assert_eq!(
            field(check_harary_parameters(100, 14, 5, 0.05, 0.05, false)),
            "threshold"
        );
        check_harary_parameters(100, 14, 8, 0.05, 0.05, false).unwrap();
        // 14 neighbours, up to 5 dropped: t ≤ 9.
        assert_eq!(
            field(check_harary_parameters(100, 14, 10, 0.05, 0.05, false)),
            "threshold"
        );
    }
}
