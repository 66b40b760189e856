//! The Rényi-DP accountant against an independent implementation: Google's `dp-accounting`
//! (`RdpAccountant`, PyPI; installed by `.ci/run`), on a grid of sampling rates, noise multipliers, step
//! counts and δ. ε agrees to 1e-6 (relative to max(1, ε)) with the same optimal order, and the RDP at
//! every order to 1e-9 relative.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_shared::stats::privacy::RdpAccountant;

mod common;

#[test]
fn epsilon_matches_dp_accounting_on_a_grid() {
    let mut cases = Vec::new();
    for q in [0.001, 0.01, 0.1, 0.5, 1.0] {
        for sigma in [0.5, 0.8, 1.1, 2.0, 5.0] {
            for steps in [1_u64, 10, 100, 1000] {
                for delta in [1e-5, 1e-3] {
                    cases.push((q, sigma, steps, delta));
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|&(q, sigma, steps, delta)| serde_json::json!({"q": q, "sigma": sigma, "steps": steps, "delta": delta}))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    let reference = common::python_reference("rdp_reference.py", &[&file]);
    let reference = reference.as_array().unwrap();
    assert_eq!(reference.len(), cases.len());
    let mut worst: f64 = 0.0;
    for (&(q, sigma, steps, delta), expected) in cases.iter().zip(reference) {
        let mut accountant = RdpAccountant::default();
        accountant.compose_poisson_gaussian(q, sigma, steps).unwrap();
        let orders: Vec<f64> = expected["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_f64().unwrap())
            .collect();
        assert_eq!(accountant.orders(), orders.as_slice(), "the same orders");
        for ((&ours, theirs), order) in accountant
            .rdp()
            .iter()
            .zip(expected["rdp"].as_array().unwrap())
            .zip(&orders)
        {
            match theirs.as_f64() {
                Some(theirs) => assert!(
                    (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1e-12),
                    "q={q} σ={sigma} steps={steps} order {order}: RDP {ours} vs {theirs}"
                ),
                None => assert!(ours.is_infinite(), "q={q} σ={sigma} order {order}: {ours} vs inf"),
            }
        }
        let (epsilon, order) = accountant.epsilon(delta).unwrap();
        let (their_epsilon, their_order) = (
            expected["epsilon"].as_f64().unwrap(),
            expected["order"].as_f64().unwrap(),
        );
        let error = (epsilon - their_epsilon).abs() / their_epsilon.max(1.0);
        worst = worst.max(error);
        assert!(
            error <= 1e-6,
            "q={q} σ={sigma} steps={steps} δ={delta}: ε {epsilon} (order {order}) vs {their_epsilon} (order {their_order})"
        );
        assert_eq!(
            order, their_order,
            "q={q} σ={sigma} steps={steps} δ={delta}: optimal order"
        );
    }
    println!("{} cases, largest relative ε difference {worst:e}", cases.len());
}

/// `fedlnm-node stats privacy` prints the accountant's ε (the library above) as JSON, and a parameter
/// out of range is an input error (exit code 2) naming it.
#[test]
fn the_command_prints_epsilon_and_names_bad_parameters() {
    let out = common::fedlnm_node_json(&[
        "stats",
        "privacy",
        "--noise-multiplier",
        "1.1",
        "--sampling-rate",
        "0.01",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
    ]);
    let mut accountant = RdpAccountant::default();
    accountant.compose_poisson_gaussian(0.01, 1.1, 1000).unwrap();
    let (epsilon, order) = accountant.epsilon(1e-5).unwrap();
    assert_eq!(out["epsilon"].as_f64().unwrap(), epsilon);
    assert_eq!(out["optimal_order"].as_f64().unwrap(), order);
    common::assert_input_error(
        &[
            "stats",
            "privacy",
            "--noise-multiplier",
            "1.1",
            "--sampling-rate",
            "2",
            "--steps",
            "3",
        ],
        &["sampling rate", "[0, 1]", "2"],
    );
}
