//! Secure aggregation in Z_2^32 (`rounds.secure_aggregation_ring = "z2_32"`), end to end in process:
//! the decoded average against plain FedAvg within the stated bound, exact mask cancellation (negative
//! sums included, read back through the 32-bit two's complement), dropouts on both sides of the
//! upload, clipping at ±4096, the configuration's headroom at every site count, and uploads of half
//! the bytes that a server of the other ring refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

use fedlnm_shared::secagg::{
    InputKind, MAX_PARTICIPANTS, MaskedVector, QuantizationConfig, Ring, RoundConfig, SecAggError, SiteId,
    Z2_32_CLIP_BOUND,
};
use fedlnm_shared::weights::NamedTensors;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod support;
use support::round::{Dropouts, Inputs, Round, exact_fixed_point_sum, run};

fn sites(ids: &[u32]) -> Vec<SiteId> {
    ids.iter().map(|&i| SiteId(i)).collect()
}

/// A Z_2^32 training instance of sites 1..=n over one tensor of `len` values.
fn config(n: u32, threshold: usize, len: usize) -> RoundConfig {
    fedlnm_shared::secagg::SecAggConfig {
        quantization: QuantizationConfig::z2_32(n as usize),
        ..support::weighted_delta_config(sites(&(1..=n).collect::<Vec<_>>()), threshold, 3, len)
    }
    .validate()
    .unwrap()
}

fn flat(t: &NamedTensors) -> Vec<f32> {
    t.tensors.iter().flat_map(|t| t.values.iter().copied()).collect()
}

/// Inputs whose quantization is exact in Z_2^32 at f ≥ 8: Δ = k/256 with |k| ≤ 512 and n_k ≤ 2,000,
/// so |n_k·Δ| ≤ 4,000 < the clip bound. Seeds choose mostly negative or mostly positive deltas, so
/// that sums of both signs are read back.
fn dyadic_inputs(config: &RoundConfig, seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bias = if seed.is_multiple_of(2) { -400 } else { 0 };
    config
        .participants()
        .iter()
        .map(|&site| {
            let values = (0..config.vector_len() - 1)
                .map(|_| (rng.random_range(-112i32..=512) + bias).clamp(-512, 512) as f32 / 256.0)
                .collect();
            let n = rng.random_range(1..=2_000u64);
            (site, (NamedTensors::from_vectors([("head.weight", values)]), n))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The decoded FedAvg delta equals plain FedAvg within |U3|·2^-f / Σ n_k (quantization) +
    /// 2^-24 relative (the final f32 rounding), for inputs inside the clip bound.
    #[test]
    fn decoded_average_equals_plain_fedavg(n in 2u32..=8, seed in any::<u64>(), len in 1usize..40, scale in 0.0f32..2.0) {
        let config = config(n, n as usize / 2 + 1, len);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let inputs: Inputs = config.participants().iter().map(|&site| {
            let values = (0..len).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
            (site, (NamedTensors::from_vectors([("head.weight", values)]), rng.random_range(1..=2_000u64)))
        }).collect();
        let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
        let total: u64 = inputs.values().map(|(_, n)| n).sum();
        prop_assert_eq!(aggregate.total_samples, total);
        let f = config.config().quantization.fractional_bits;
        let bound = f64::from(n) * 2f64.powi(-(f as i32)) / total as f64;
        for (i, got) in flat(&aggregate.fedavg_delta).iter().enumerate() {
            let want = inputs.values()
                .map(|(d, n)| *n as f64 * f64::from(d.tensors[0].values[i]))
                .sum::<f64>() / total as f64;
            let err = (f64::from(*got) - want).abs();
            prop_assert!(err <= bound + want.abs() * 2f64.powi(-24), "{got} vs {want}, bound {bound}");
        }
    }

    /// With no dropouts the masks cancel exactly in Z_2^32: the decoded fixed-point sum is the exact
    /// one, negative elements included.
    #[test]
    fn masks_cancel_exactly(n in 2u32..=8, seed in any::<u64>(), len in 1usize..64) {
        let config = config(n, n as usize / 2 + 1, len);
        let inputs = dyadic_inputs(&config, seed);
        let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
        prop_assert_eq!(aggregate.fixed_point_sum, exact_fixed_point_sum(&config, &inputs, config.participants()));
    }
}

#[test]
fn negative_sums_are_read_back_through_the_32_bit_twos_complement() {
    // Every delta negative: each element of the sum is a negative i32, which must not be read as a
    // large positive one (it would decode to about +2^32 / 2^f).
    let config = config(4, 3, 50);
    let mut inputs = dyadic_inputs(&config, 2);
    for (delta, _) in inputs.values_mut() {
        delta.tensors[0]
            .values
            .iter_mut()
            .for_each(|v| *v = -v.abs() - 1.0 / 256.0);
    }
    let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
    let exact = exact_fixed_point_sum(&config, &inputs, config.participants());
    assert_eq!(aggregate.fixed_point_sum, exact);
    assert!(exact[..50].iter().all(|&s| s < 0));
    assert!(flat(&aggregate.fedavg_delta).iter().all(|&v| v < 0.0));
}

#[test]
fn dropouts_on_both_sides_of_the_upload_leave_the_exact_fixed_point_sum() {
    // Site 4 drops after sharing (its pairwise masks are rebuilt from its reconstructed key, in
    // 32-bit words), site 7 after uploading (its self mask is rebuilt from b_u), site 1 before sharing.
    let config = config(10, 6, 300);
    let inputs = dyadic_inputs(&config, 3);
    let drops = Dropouts {
        before_shares: sites(&[1]),
        before_upload: sites(&[4]),
        before_unmask: sites(&[7]),
    };
    let aggregate = run(&config, &inputs, &drops).unwrap();
    let in_sum = sites(&[2, 3, 5, 6, 7, 8, 9, 10]);
    assert_eq!(aggregate.survivors, in_sum);
    assert_eq!(aggregate.dropped, sites(&[4]));
    assert_eq!(
        aggregate.fixed_point_sum,
        exact_fixed_point_sum(&config, &inputs, &in_sum)
    );
}

#[test]
fn fewer_survivors_than_the_threshold_abort() {
    let config = config(5, 4, 10);
    let inputs = dyadic_inputs(&config, 4);
    let drops = Dropouts {
        before_upload: sites(&[1, 2]),
        ..Dropouts::default()
    };
    let error = run(&config, &inputs, &drops).unwrap_err();
    assert!(matches!(error, SecAggError::TooFewSurvivors { .. }), "{error:?}");
}

#[test]
fn elements_beyond_the_clip_bound_are_clipped() {
    // n_k·Δ = 3,000 × 2 = 6,000 > 4,096 and −6,000: clipped to ±4,096; inside it, exact.
    let config = config(2, 2, 3);
    let inputs: Inputs = config
        .participants()
        .iter()
        .map(|&site| {
            let delta = NamedTensors::from_vectors([("head.weight", vec![2.0, -2.0, 0.5])]);
            (site, (delta, 3_000))
        })
        .collect();
    // The site can tell beforehand (its node warns): two elements at 3,000 samples, none at 2,000.
    let (client, _) = support::round::client(&config, SiteId(1)).unwrap();
    let (delta, _) = &inputs[&SiteId(1)];
    assert_eq!(client.clipped_elements(delta, 3_000), 2);
    assert_eq!(client.clipped_elements(delta, 2_000), 0);
    let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
    let average = flat(&aggregate.fedavg_delta);
    let clipped = Z2_32_CLIP_BOUND / 3_000.0;
    assert!((f64::from(average[0]) - clipped).abs() < 1e-6, "{average:?}");
    assert!((f64::from(average[1]) + clipped).abs() < 1e-6, "{average:?}");
    assert_eq!(average[2], 0.5);
}

#[test]
fn uploads_are_half_the_bytes_and_a_server_of_the_other_ring_refuses_them() {
    let narrow = config(3, 2, 1_000);
    let wide = fedlnm_shared::secagg::SecAggConfig {
        quantization: QuantizationConfig::default(),
        ..narrow.config().clone()
    }
    .validate()
    .unwrap();
    let inputs = dyadic_inputs(&narrow, 5);
    let mut bytes = Vec::new();
    let mut narrow_upload = None;
    for config in [&narrow, &wide] {
        let (mut round, directory) = Round::start(config);
        let deliveries = round.share(&directory, &[]).unwrap();
        let (delta, n) = &inputs[&deliveries[0].to];
        let upload = round
            .clients
            .get_mut(&deliveries[0].to)
            .unwrap()
            .masked_input(&deliveries[0], delta, *n)
            .unwrap();
        assert_eq!(upload.masked.ring(), config.config().quantization.ring);
        assert_eq!(upload.masked.len(), config.vector_len());
        bytes.push(upload.masked.to_le_bytes().len());
        if config.config().quantization.ring == Ring::Z2_32 {
            assert!(matches!(upload.masked, MaskedVector::Z2_32(_)));
            narrow_upload = Some(upload);
        } else {
            // The Z_2^64 server of the same sites is given the Z_2^32 upload: refused, named.
            let mut foreign = narrow_upload.clone().unwrap();
            foreign.header = upload.header.clone();
            let error = round.server.receive_masked_input(foreign).unwrap_err();
            assert!(
                matches!(&error, SecAggError::Malformed { reason, .. } if reason.contains("Z_2^32")),
                "{error:?}"
            );
        }
    }
    assert_eq!(bytes, [4 * 1_001, 8 * 1_001]);
}

#[test]
fn the_z2_32_quantization_has_headroom_at_every_site_count() {
    for n in 1..=MAX_PARTICIPANTS {
        let q = QuantizationConfig::z2_32(n);
        let per_site = Z2_32_CLIP_BOUND * 2f64.powi(q.fractional_bits as i32) + 1.0;
        assert!(
            per_site * n as f64 <= f64::from(i32::MAX),
            "{n} sites: f = {}",
            q.fractional_bits
        );
        // And one more fractional bit would not fit: the resolution is the finest that cannot wrap,
        // up to the power of two above n.
        let finer =
            (Z2_32_CLIP_BOUND * 2f64.powi(q.fractional_bits as i32 + 1) + 1.0) * n.next_power_of_two() as f64;
        assert!(
            finer > f64::from(i32::MAX),
            "{n} sites: f = {}",
            q.fractional_bits
        );
    }
    assert_eq!(QuantizationConfig::z2_32(30).fractional_bits, 13);
    assert_eq!(QuantizationConfig::z2_32(100).fractional_bits, 11);
}

#[test]
fn the_configuration_refuses_what_z2_32_cannot_hold() {
    let base = config(3, 2, 4).config().clone();
    // A resolution that could wrap: named, with the ring.
    let mut finer = base.clone();
    finer.quantization.fractional_bits += 2;
    let error = finer.validate().unwrap_err();
    assert!(
        matches!(error, SecAggError::QuantizationHeadroom { ring_bits: 32, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("Z_2^32"), "{error}");
    // More fractional bits than the ring has room for.
    let mut too_fine = base.clone();
    too_fine.quantization.fractional_bits = 31;
    too_fine.quantization.clip_bound = 1e-12;
    let error = too_fine.validate().unwrap_err();
    assert!(error.to_string().contains("fractional_bits"), "{error}");
    // Counts are exact integers of up to max_sample_count per site: Z_2^64 only.
    let mut counts = base.clone();
    counts.input = InputKind::Counts;
    let error = counts.validate().unwrap_err();
    assert!(error.to_string().contains("quantization.ring"), "{error}");
    // The ring is part of the configuration hash: sites of the two rings never mix.
    let wide = fedlnm_shared::secagg::SecAggConfig {
        quantization: QuantizationConfig {
            ring: Ring::Z2_64,
            ..base.quantization.clone()
        },
        ..base.clone()
    };
    assert_ne!(
        wide.validate().unwrap().config_hash(),
        base.validate().unwrap().config_hash()
    );
}
