//! Unit tests of the Newton engine: closed forms (2×2 and 2×k tables), federated = pooled, separation,
//! rank deficiency, disclosure threshold, numerical derivatives of the site sums.

use super::*;
use crate::design::{DesignSpec, TermColumn, TermSpec};
use proptest::prelude::*;

fn location_spec() -> DesignSpec {
    DesignSpec::new(vec![TermSpec::categorical(
        "location",
        vec!["lower".into(), "middle".into(), "upper".into()],
        "lower",
    )])
    .unwrap()
}

/// Rows of a table `level -> (positives, negatives)`.
fn table_rows(cells: &[(&'static str, usize, usize)]) -> (Vec<&'static str>, Vec<bool>) {
    let mut levels = Vec::new();
    let mut outcome = Vec::new();
    for &(level, positives, negatives) in cells {
        for i in 0..positives + negatives {
            levels.push(level);
            outcome.push(i < positives);
        }
    }
    (levels, outcome)
}

fn estimate<'a>(fit: &'a LogisticFit, name: &str) -> &'a TermEstimate {
    fit.terms.iter().find(|t| t.name == name).unwrap()
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * b.abs().max(1.0)
}

#[test]
fn saturated_categorical_model_matches_closed_form_log_odds() {
    // Data-driven: for each table, const = log odds of the reference level, each dummy = log odds ratio
    // vs the reference, SE = √(1/a + 1/b + 1/c + 1/d) (Woolf), loglik = Σ cell log-proportions.
    let cases: &[&[(&str, usize, usize)]] = &[
        &[("lower", 10, 30), ("middle", 12, 18), ("upper", 25, 5)],
        &[("lower", 3, 97), ("middle", 50, 50), ("upper", 1, 9)],
        &[("lower", 40, 40), ("middle", 41, 39), ("upper", 200, 7)],
    ];
    for cells in cases {
        let (levels, outcome) = table_rows(cells);
        let design = location_spec()
            .build(levels.len(), &[TermColumn::Categorical(&levels)])
            .unwrap();
        let fit = fit(&design, &outcome, FitOptions::default()).unwrap();
        assert_eq!(fit.status, FitStatus::Ok, "{cells:?}");
        let (a0, b0) = (cells[0].1 as f64, cells[0].2 as f64);
        let constant = estimate(&fit, "const");
        assert!(close(constant.coef.unwrap(), (a0 / b0).ln(), 1e-12), "{cells:?}");
        assert!(close(constant.se.unwrap(), (1.0 / a0 + 1.0 / b0).sqrt(), 1e-10));
        assert_eq!(constant.or, None);
        let mut expected_loglik = 0.0;
        for &(level, a, b) in *cells {
            let (a, b) = (a as f64, b as f64);
            expected_loglik += a * (a / (a + b)).ln() + b * (b / (a + b)).ln();
            if level == "lower" {
                continue;
            }
            let term = estimate(&fit, &format!("location_{level}"));
            let log_or = (a * b0 / (b * a0)).ln();
            let se = (1.0 / a + 1.0 / b + 1.0 / a0 + 1.0 / b0).sqrt();
            assert!(close(term.coef.unwrap(), log_or, 1e-12), "{level}: {term:?}");
            assert!(close(term.se.unwrap(), se, 1e-10), "{level}: {term:?}");
            assert!(close(term.z.unwrap(), log_or / se, 1e-10));
            assert!(close(term.p.unwrap(), normal_two_sided_p(log_or / se), 1e-9));
            assert!(close(term.or.unwrap(), log_or.exp(), 1e-12));
            assert!(close(
                term.or_ci_lower.unwrap(),
                (log_or - Z_95 * se).exp(),
                1e-10
            ));
            assert!(close(
                term.or_ci_upper.unwrap(),
                (log_or + Z_95 * se).exp(),
                1e-10
            ));
        }
        assert!(close(fit.loglik.unwrap(), expected_loglik, 1e-12));
        assert!(fit.iterations < 20);
    }
}

#[test]
fn site_sums_are_the_derivatives_of_the_loglik() {
    let spec = DesignSpec::new(vec![TermSpec::numeric("x"), TermSpec::numeric("z")]).unwrap();
    let x = [0.3, -1.2, 2.5, 0.0, 1.1, -0.4];
    let z = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let outcome = [true, false, true, false, false, true];
    let design = spec
        .build(6, &[TermColumn::Numeric(&x), TermColumn::Numeric(&z)])
        .unwrap();
    let beta = [0.2, -0.7, 1.3];
    let at = |beta: &[f64]| site_contribution(&design, &outcome, beta, 0).unwrap();
    let centre = at(&beta);
    let h = 1e-6;
    for j in 0..3 {
        let (mut up, mut down) = (beta, beta);
        up[j] += h;
        down[j] -= h;
        let (c_up, c_down) = (at(&up), at(&down));
        let gradient = (c_up.loglik - c_down.loglik) / (2.0 * h);
        assert!((gradient - centre.gradient[j]).abs() < 1e-7, "gradient {j}");
        for k in 0..3 {
            // The information is minus the derivative of the gradient.
            let second = -(c_up.gradient[k] - c_down.gradient[k]) / (2.0 * h);
            assert!(
                (second - centre.information[j * 3 + k]).abs() < 1e-7,
                "information {j},{k}"
            );
        }
    }
}

#[test]
fn row_quantities_stay_finite_for_extreme_linear_predictors() {
    for eta in [-1e4, -800.0, -40.0, -1e-300, 0.0, 1e-300, 40.0, 800.0, 1e4] {
        for y in [false, true] {
            let row = RowFit::new(eta, y);
            assert!(
                row.residual.is_finite() && row.weight.is_finite() && row.loglik.is_finite(),
                "{eta} {y}"
            );
            assert!(row.loglik <= 0.0 && (0.0..=0.25).contains(&row.weight));
        }
    }
    // Far on the right side, the loss is ~exp(-|η|); on the wrong side it is |η|.
    assert!((RowFit::new(40.0, true).loglik + (-40.0_f64).exp()).abs() < 1e-30);
    assert_eq!(RowFit::new(800.0, false).loglik, -800.0);
}

#[test]
fn complete_separation_is_reported_with_its_direction_and_no_estimates() {
    let spec = DesignSpec::new(vec![TermSpec::numeric("diameter")]).unwrap();
    let diameter: Vec<f64> = (1..=20).map(f64::from).collect();
    let outcome: Vec<bool> = diameter.iter().map(|&d| d > 10.0).collect();
    let design = spec.build(20, &[TermColumn::Numeric(&diameter)]).unwrap();
    let fit = fit(&design, &outcome, FitOptions::default()).unwrap();
    assert_eq!(fit.status, FitStatus::Separation);
    let separation = fit.separation.as_ref().unwrap();
    assert_eq!(separation.kind, SeparationKind::Complete);
    assert_eq!(separation.terms, ["const", "diameter"]);
    assert!(separation.n_boundary > 0);
    assert_eq!(fit.loglik, None);
    for term in &fit.terms {
        assert_eq!(
            (term.coef, term.se, term.z, term.p, term.or),
            (None, None, None, None, None),
            "{term:?}"
        );
        assert_eq!((term.or_ci_lower, term.or_ci_upper), (None, None));
    }
}

#[test]
fn quasi_complete_separation_names_the_separating_dummy() {
    // Every upper-pole tumour has LNM; the other levels are mixed.
    let (levels, outcome) = table_rows(&[("lower", 10, 30), ("middle", 12, 18), ("upper", 25, 0)]);
    let design = location_spec()
        .build(levels.len(), &[TermColumn::Categorical(&levels)])
        .unwrap();
    let fit = fit(&design, &outcome, FitOptions::default()).unwrap();
    assert_eq!(fit.status, FitStatus::Separation);
    let separation = fit.separation.unwrap();
    assert_eq!(separation.kind, SeparationKind::QuasiComplete);
    assert_eq!(separation.terms, ["location_upper"]);
    assert_eq!(separation.n_boundary, 25);
    assert!(fit.terms.iter().all(|t| t.coef.is_none() && t.or.is_none()));
}

#[test]
fn too_few_iterations_is_not_converged_not_ok() {
    let (levels, outcome) = table_rows(&[("lower", 10, 30), ("middle", 12, 18), ("upper", 25, 5)]);
    let design = location_spec()
        .build(levels.len(), &[TermColumn::Categorical(&levels)])
        .unwrap();
    let options = FitOptions {
        max_iterations: 2,
        ..FitOptions::default()
    };
    let fit = fit(&design, &outcome, options).unwrap();
    assert_eq!(fit.status, FitStatus::NotConverged);
    assert_eq!(fit.iterations, 2);
    assert!(fit.terms.iter().all(|t| t.coef.is_none()));
}

#[test]
fn rank_deficient_pooled_design_names_the_terms() {
    let spec = DesignSpec::new(vec![
        TermSpec::numeric("age"),
        TermSpec::numeric("flat"),
        TermSpec::numeric("age2"),
    ])
    .unwrap();
    let age = [40.0, 50.0, 60.0, 70.0];
    let flat = [3.0; 4];
    let age2: Vec<f64> = age.iter().map(|a| 2.0 * a + 1.0).collect();
    let design = spec
        .build(
            4,
            &[
                TermColumn::Numeric(&age),
                TermColumn::Numeric(&flat),
                TermColumn::Numeric(&age2),
            ],
        )
        .unwrap();
    let error = fit(&design, &[true, false, true, false], FitOptions::default()).unwrap_err();
    let LogisticError::RankDeficient { terms, details } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(terms, &["flat", "age2"]);
    assert!(details.contains("'flat' is constant"), "{details}");
    assert!(
        details.contains("'age2' is a linear combination of const, age"),
        "{details}"
    );

    // A declared level with no row anywhere is a zero column.
    let (levels, outcome) = table_rows(&[("lower", 3, 4), ("middle", 2, 5)]);
    let design = location_spec()
        .build(levels.len(), &[TermColumn::Categorical(&levels)])
        .unwrap();
    let error = fit(&design, &outcome, FitOptions::default()).unwrap_err();
    assert!(
        matches!(&error, LogisticError::RankDeficient { terms, .. } if terms == &["location_upper"]),
        "{error}"
    );
}

#[test]
fn a_site_without_upper_rows_contributes_and_the_pooled_fit_is_the_pooled_table() {
    let (levels, outcome) = table_rows(&[("lower", 10, 30), ("middle", 12, 18), ("upper", 25, 5)]);
    let spec = location_spec();
    let design = spec
        .build(levels.len(), &[TermColumn::Categorical(&levels)])
        .unwrap();
    let pooled = fit(&design, &outcome, FitOptions::default()).unwrap();
    // Site A: lower and middle only (its own design is rank-deficient); site B: the rest.
    let (a_rows, b_rows): (Vec<usize>, Vec<usize>) =
        (0..levels.len()).partition(|&i| i % 3 != 0 && levels[i] != "upper");
    let site = |name: &str, rows: &[usize]| SiteRows {
        site: name.into(),
        design: design.select_rows(rows),
        outcome: rows.iter().map(|&i| outcome[i]).collect(),
    };
    let sites = [site("A", &a_rows), site("B", &b_rows)];
    let federated = fit_federated(&sites, FitOptions::default(), 5).unwrap();
    assert_eq!(federated.pooled.status, FitStatus::Ok);
    for (ours, reference) in federated.pooled.terms.iter().zip(&pooled.terms) {
        assert!((ours.coef.unwrap() - reference.coef.unwrap()).abs() < 1e-10);
        assert!((ours.se.unwrap() - reference.se.unwrap()).abs() < 1e-10);
    }
    assert_eq!(federated.sites.len(), 2);
    assert_eq!(federated.sites[0].n, a_rows.len() as u64);
    assert_eq!(federated.sites.iter().map(|s| s.n_positive).sum::<u64>(), 47);

    // Disclosure: site A refuses below its threshold, and the error names it.
    let error = fit_federated(&sites, FitOptions::default(), a_rows.len() as u64 + 1).unwrap_err();
    assert!(
        matches!(&error, LogisticError::Site { site, source }
            if site == "A" && matches!(**source, LogisticError::BelowDisclosureThreshold { .. })),
        "{error}"
    );
}

#[test]
fn the_coordinator_rejects_malformed_or_inconsistent_contributions() {
    let names = vec!["const".to_owned(), "x".to_owned()];
    let good = SiteContribution {
        gradient: vec![1.0, 2.0],
        information: vec![4.0, 1.0, 1.0, 3.0],
        loglik: -5.0,
        n: 10,
        n_positive: 4,
        n_boundary: 0,
        n_misclassified: 10,
    };
    let mut coordinator = NewtonCoordinator::new(names.clone(), FitOptions::default());
    let short = SiteContribution {
        gradient: vec![1.0],
        ..good.clone()
    };
    assert!(matches!(
        coordinator.update(&[short]),
        Err(LogisticError::MalformedContribution { .. })
    ));
    let nan = SiteContribution {
        loglik: f64::NAN,
        ..good.clone()
    };
    assert!(matches!(
        coordinator.update(&[nan]),
        Err(LogisticError::MalformedContribution { .. })
    ));
    assert!(matches!(coordinator.update(&[]), Err(LogisticError::NoSites)));
    assert!(matches!(
        coordinator.update(std::slice::from_ref(&good)),
        Ok(NewtonStep::Continue(_))
    ));
    let grown = SiteContribution { n: 11, ..good };
    assert!(matches!(
        coordinator.update(&[grown]),
        Err(LogisticError::MalformedContribution { .. })
    ));
}

#[test]
fn contributions_round_trip_through_json() {
    let contribution = SiteContribution {
        gradient: vec![0.1, -2.5e-17],
        information: vec![1.0, 0.5, 0.5, 2.0],
        loglik: -12.345678901234567,
        n: 40,
        n_positive: 12,
        n_boundary: 1,
        n_misclassified: 9,
    };
    let text = serde_json::to_string(&contribution).unwrap();
    assert_eq!(
        serde_json::from_str::<SiteContribution>(&text).unwrap(),
        contribution
    );
}

/// Rows from a seeded linear-congruential stream: (age, male, location, outcome).
fn synthetic_rows(seed: u64, n: usize) -> (Vec<f64>, Vec<f64>, Vec<&'static str>, Vec<bool>) {
    let mut state = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1_u64 << 53) as f64
    };
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let age = 20.0 + 60.0 * uniform();
        let male = f64::from(u8::from(uniform() < 0.3));
        let location = ["lower", "middle", "upper"][(uniform() * 3.0) as usize % 3];
        let eta = -2.0 + 0.02 * (age - 50.0) + 0.6 * male + if location == "upper" { 0.8 } else { 0.0 };
        let outcome = uniform() < 1.0 / (1.0 + (-eta).exp());
        columns.0.push(age);
        columns.1.push(male);
        columns.2.push(location);
        columns.3.push(outcome);
    }
    columns
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The federated fit over any split of the rows into sites equals the fit on all rows.
    #[test]
    fn federated_fit_over_a_random_split_equals_the_pooled_fit(
        seed in 0_u64..1_000_000,
        n_sites in 1_usize..5,
        assignment in proptest::collection::vec(0_usize..4, 300),
    ) {
        let (age, male, location, outcome) = synthetic_rows(seed, 300);
        let spec = DesignSpec::new(vec![
            TermSpec::numeric("age"),
            TermSpec::numeric("male"),
            TermSpec::categorical("location", vec!["lower".into(), "middle".into(), "upper".into()], "lower"),
        ]).unwrap();
        let design = spec.build(300, &[
            TermColumn::Numeric(&age), TermColumn::Numeric(&male), TermColumn::Categorical(&location),
        ]).unwrap();
        let pooled = fit(&design, &outcome, FitOptions::default()).unwrap();
        prop_assume!(pooled.status == FitStatus::Ok);
        let sites: Vec<SiteRows> = (0..n_sites)
            .map(|s| {
                let rows: Vec<usize> = (0..300).filter(|&i| assignment[i] % n_sites == s).collect();
                SiteRows {
                    site: format!("site{s}"),
                    design: design.select_rows(&rows),
                    outcome: rows.iter().map(|&i| outcome[i]).collect(),
                }
            })
            .filter(|site| !site.outcome.is_empty())
            .collect();
        let federated = fit_federated(&sites, FitOptions::default(), 1).unwrap();
        prop_assert_eq!(federated.pooled.status, FitStatus::Ok);
        prop_assert!((federated.pooled.loglik.unwrap() - pooled.loglik.unwrap()).abs() < 1e-9);
        for (ours, reference) in federated.pooled.terms.iter().zip(&pooled.terms) {
            prop_assert!((ours.coef.unwrap() - reference.coef.unwrap()).abs() < 1e-10, "{:?} {:?}", ours, reference);
            prop_assert!((ours.se.unwrap() - reference.se.unwrap()).abs() < 1e-10);
        }
        prop_assert_eq!(federated.sites.iter().map(|s| s.n).sum::<u64>(), 300);
    }
}

#[test]
fn a_value_too_large_for_the_sums_is_named_by_column_and_row() {
    // Data-driven: one value whose square overflows, and values that overflow only when summed (the
    // largest is named). Rows are 0-based in the error, shown 1-based.
    let spec = DesignSpec::new(vec![TermSpec::numeric("age"), TermSpec::numeric("size")]).unwrap();
    let mut one_huge: Vec<f64> = (0..20).map(f64::from).collect();
    one_huge[6] = 1e300;
    let mut many_large = vec![8e153; 20];
    many_large[11] = 9e153;
    for (size, row, value) in [(one_huge, 6, 1e300), (many_large, 11, 9e153)] {
        let age: Vec<f64> = (0..20).map(|i| f64::from(30 + i)).collect();
        let outcome: Vec<bool> = (0..20).map(|i| i % 3 == 0).collect();
        let design = spec
            .build(20, &[TermColumn::Numeric(&age), TermColumn::Numeric(&size)])
            .unwrap();
        let error = fit(&design, &outcome, FitOptions::default()).unwrap_err();
        assert_eq!(
            error,
            LogisticError::TooLarge {
                column: "size".into(),
                row,
                value
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("'size'") && message.contains(&format!("in row {}", row + 1)),
            "{message}"
        );
    }
    // The federated path names the site around the same error.
    let mut size: Vec<f64> = (0..20).map(f64::from).collect();
    size[3] = -1e300;
    let age: Vec<f64> = (0..20).map(|i| f64::from(30 + i)).collect();
    let design = spec
        .build(20, &[TermColumn::Numeric(&age), TermColumn::Numeric(&size)])
        .unwrap();
    let site = SiteRows {
        site: "B".into(),
        design,
        outcome: (0..20).map(|i| i % 3 == 0).collect(),
    };
    let error = fit_federated(&[site], FitOptions::default(), 0).unwrap_err();
    match error {
        LogisticError::Site { site, source } => {
            assert_eq!(site, "B");
            assert!(
                matches!(*source, LogisticError::TooLarge { row: 3, .. }),
                "{source}"
            );
        }
        other => panic!("{other}"),
    }
}
