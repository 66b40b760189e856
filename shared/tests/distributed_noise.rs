//! Differential privacy inside secure aggregation: each site clips its delta to L2 norm C, weighs 1,
//! and adds its share of discrete Gaussian noise before masking; the decoded sum is the sum of the
//! clipped deltas plus noise of variance |U3|·(zC)²/t, whatever a site sends on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

mod support;

use std::collections::BTreeMap;

use fedlnm_shared::secagg::{
    Aggregate, DistributedNoise, RoundConfig, SecAggClient, SecAggConfig, SecAggError, SecAggServer, SiteId,
};
use fedlnm_shared::weights::NamedTensors;

const LEN: usize = 20_000;

fn config(n: u32, threshold: usize, privacy: Option<DistributedNoise>) -> RoundConfig {
    // Against an honest-but-curious server: the noise, not the signatures, is under test here
    // (shared/tests/malicious_server.rs).
    SecAggConfig {
        privacy,
        ..support::weighted_delta_config((1..=n).map(SiteId).collect(), threshold, 2, LEN)
    }
    .validate()
    .unwrap()
}

/// One complete instance, every site uploading `deltas[site]` with `n` samples.
fn run(config: &RoundConfig, deltas: &BTreeMap<SiteId, Vec<f32>>, n: u64) -> Result<Aggregate, SecAggError> {
    let mut server = SecAggServer::new(config.clone());
    let mut clients = BTreeMap::new();
    for &site in config.participants() {
        let (client, advertise) = SecAggClient::new(config.clone(), site)?;
        server.receive_keys(advertise)?;
        clients.insert(site, client);
    }
    let directory = server.close_keys()?;
    for client in clients.values_mut() {
        server.receive_shares(client.share_keys(&directory)?)?;
    }
    for delivery in server.close_shares()? {
        let delta =
            NamedTensors::from_vectors(vec![("head.weight".to_owned(), deltas[&delivery.to].clone())]);
        let client = clients.get_mut(&delivery.to).unwrap();
        server.receive_masked_input(client.masked_input(&delivery, &delta, n)?)?;
    }
    server.close_masked_inputs()?;
    let request = server.close_consistency()?;
    for client in clients.values_mut() {
        server.receive_unmask_response(client.unmask(&request)?)?;
    }
    server.finish()
}

fn deltas(n: u32, value: impl Fn(u32, usize) -> f32) -> BTreeMap<SiteId, Vec<f32>> {
    (1..=n)
        .map(|site| (SiteId(site), (0..LEN).map(|i| value(site, i)).collect()))
        .collect()
}

fn norm(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn sites_clip_to_the_norm_and_weigh_equally() {
    // Noise of 10^-7 C: negligible next to the tolerance, so the sum is the sum of the clipped deltas.
    let privacy = DistributedNoise {
        clip_norm: 1.0,
        noise_multiplier: 1e-7,
    };
    // The sanity bound on the norm (10) is below site 1's norm: under DP the delta is clipped, not refused.
    let mut raw = config(3, 2, Some(privacy)).config().clone();
    raw.max_delta_norm = 10.0;
    let config = raw.validate().unwrap();
    // Site 1 is far outside the ball (norm √LEN ≈ 141), site 2 inside it, site 3 on its edge.
    let inputs = deltas(3, |site, i| match site {
        1 => {
            if i % 2 == 0 {
                1.0
            } else {
                -1.0
            }
        }
        2 => 1e-4,
        _ => {
            if i == 0 {
                1.0
            } else {
                0.0
            }
        }
    });
    assert!(norm(&inputs[&SiteId(1)]) > 100.0);
    let aggregate = run(&config, &inputs, 250).unwrap();
    assert_eq!(
        aggregate.total_samples, 3,
        "every site weighs 1, whatever its sample count"
    );
    let sum = &aggregate.weighted_sum().tensors[0].values;
    for (i, &value) in sum.iter().enumerate() {
        // Site 1's norm is √LEN: it is scaled by 1/√LEN into the ball.
        let step = 1.0 / (LEN as f64).sqrt();
        let clipped_1 = if i % 2 == 0 { step } else { -step };
        let expected = clipped_1 + 1e-4 + if i == 0 { 1.0 } else { 0.0 };
        assert!(
            (f64::from(value) - expected).abs() < 1e-5,
            "[{i}] {value} vs {expected}"
        );
    }
}

#[test]
fn the_sum_carries_the_noise_of_the_target_deviation() {
    let (z, c) = (1.0, 0.01);
    let privacy = DistributedNoise {
        clip_norm: c,
        noise_multiplier: z,
    };
    let (n, t) = (4, 3);
    let config = config(n, t, Some(privacy));
    let aggregate = run(&config, &deltas(n, |_, _| 0.0), 10).unwrap();
    let sum = &aggregate.weighted_sum().tensors[0].values;
    let mean = sum.iter().map(|&v| f64::from(v)).sum::<f64>() / LEN as f64;
    let variance = sum.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (LEN - 1) as f64;
    // Each of the n sites adds variance (zC)²/t: the sum of n ≥ t sites carries at least (zC)².
    let expected = f64::from(n) * (z * c).powi(2) / t as f64;
    let ratio = variance / expected;
    assert!(
        (ratio - 1.0).abs() < 0.05,
        "variance {variance}, expected {expected}"
    );
    assert!(mean.abs() < 5.0 * (expected / LEN as f64).sqrt(), "mean {mean}");
    // Without noise the same zero deltas sum to zero exactly: the difference is the noise alone.
    let plain = run(&config_without_noise(n, t), &deltas(n, |_, _| 0.0), 10).unwrap();
    assert!(plain.weighted_sum().tensors[0].values.iter().all(|&v| v == 0.0));
}

fn config_without_noise(n: u32, t: usize) -> RoundConfig {
    config(n, t, None)
}

#[test]
fn noise_that_could_wrap_the_ring_or_is_not_positive_is_refused() {
    let mut wide = config(3, 2, None).config().clone();
    wide.privacy = Some(DistributedNoise {
        clip_norm: 1.0,
        noise_multiplier: 1e9,
    });
    let error = wide.validate().unwrap_err();
    assert!(
        matches!(error, SecAggError::InvalidConfig { field: "privacy", .. }),
        "{error}"
    );
    let mut zero = config(3, 2, None).config().clone();
    zero.privacy = Some(DistributedNoise {
        clip_norm: 1.0,
        noise_multiplier: 0.0,
    });
    let error = zero.validate().unwrap_err();
    assert!(
        matches!(
            error,
            SecAggError::InvalidConfig {
                field: "privacy.noise_multiplier",
                ..
            }
        ),
        "{error}"
    );
}
