//! Secure aggregation end to end, in process: every message is relayed as JSON bytes, as the
//! transport will relay them. Correctness against plain FedAvg, exact mask cancellation, dropouts on
//! both sides of the upload, aborts, rejected messages, FedBN, and the statistics of a masked upload.
//! Instances protect against a malicious server (signed keys, consistency check: the study's
//! default) unless a test is about the honest-but-curious model's own checks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

use fedlnm_shared::federation::fedavg::HeldBytes;
use fedlnm_shared::secagg::quantize::{RoundingSource, quantize_weighted};
use fedlnm_shared::secagg::{
    MaskedInput, MaskedVector, QuantizationConfig, Ring, RoundConfig, RoundStage, SecAggClient, SecAggConfig,
    SecAggError, SecAggServer, Security, SiteId, TensorSpec, UnmaskRequest,
};
use fedlnm_shared::stats::normal::normal_cdf;
use fedlnm_shared::weights::{NamedTensor, NamedTensors};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod support;
use support::round::{Dropouts, Inputs, Round, aggregated_values, client, exact_fixed_point_sum, run};

// ---------------------------------------------------------------- harness

/// An instance against a malicious server (needs 2n/3 < t).
fn config(n: u32, threshold: usize, round: u64, lens: &[usize]) -> RoundConfig {
    let sites: Vec<SiteId> = (1..=n).map(|i| SiteId(10 * i)).collect();
    config_with(n, threshold, round, lens, support::malicious(&sites))
}

/// An instance against an honest-but-curious server (n/2 < t).
fn curious_config(n: u32, threshold: usize, round: u64, lens: &[usize]) -> RoundConfig {
    config_with(n, threshold, round, lens, Security::CuriousServer)
}

fn config_with(n: u32, threshold: usize, round: u64, lens: &[usize], security: Security) -> RoundConfig {
    let mut tensors: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| TensorSpec {
            name: format!("layer{i}.weight"),
            shape: vec![len],
        })
        .collect();
    tensors.push(TensorSpec {
        name: "layer0.bn.running_mean".into(),
        shape: vec![4],
    });
    SecAggConfig {
        study_id: "lnm-study".into(),
        round,
        model_version: fedlnm_shared::secagg::ModelVersion::new("model-v7", 1),
        participants: (1..=n).map(|i| SiteId(10 * i)).collect(),
        threshold,
        tensors,
        fedbn_exclude: vec!["*.bn.*".into()],
        quantization: QuantizationConfig::default(),
        max_delta_norm: 1e6,
        input: fedlnm_shared::secagg::InputKind::WeightedDelta,
        privacy: None,
        security,
        graph: fedlnm_shared::secagg::Graph::Complete,
    }
    .validate()
    .unwrap()
}

/// [`support::round::dyadic_inputs`] (counts up to 100,000), each with the FedBN tensor too: local
/// only, absurd values that would fail every check if it were used.
fn dyadic_inputs(config: &RoundConfig, seed: u64) -> Inputs {
    let mut inputs = support::round::dyadic_inputs(config, seed, 100_000);
    for (delta, _) in inputs.values_mut() {
        let bn = vec![f32::NAN, 1e30, -1e30, 0.0];
        delta
            .tensors
            .push(NamedTensor::new("layer0.bn.running_mean", vec![4], bn).unwrap());
    }
    inputs
}

/// Plain FedAvg in f64 over `sites`: Σ n_k Δ_k / Σ n_k, flattened.
fn plain_fedavg(config: &RoundConfig, inputs: &Inputs, sites: &[SiteId]) -> (Vec<f64>, u64) {
    let total: u64 = sites.iter().map(|s| inputs[s].1).sum();
    let mut avg = vec![0f64; config.vector_len() - 1];
    for site in sites {
        let (delta, n) = &inputs[site];
        for (a, &d) in avg.iter_mut().zip(aggregated_values(config, delta)) {
            *a += *n as f64 * f64::from(d);
        }
    }
    avg.iter_mut().for_each(|a| *a /= total as f64);
    (avg, total)
}

fn flat(t: &NamedTensors) -> Vec<f32> {
    t.tensors.iter().flat_map(|t| t.values.iter().copied()).collect()
}

// ---------------------------------------------------------------- correctness

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The decoded FedAvg delta equals plain FedAvg within the stated bound
    /// |U3|·2^-32 / Σ n_k (quantization) + 2^-24 relative (the final f32 rounding).
    #[test]
    fn decoded_average_equals_plain_fedavg(n in 2u32..=8, seed in any::<u64>(), len in 1usize..40, scale in 0.0f32..2.0) {
        let config = config(n, 2 * n as usize / 3 + 1, 1, &[len, 3]);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let inputs: Inputs = config.participants().iter().map(|&site| {
            let tensors = config.aggregated_tensors().iter()
                .map(|s| (s.name.clone(), (0..s.len()).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()))
                .collect::<Vec<_>>();
            (site, (NamedTensors::from_vectors(tensors), rng.random_range(1..=100_000u64)))
        }).collect();
        let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
        let (expected, total) = plain_fedavg(&config, &inputs, config.participants());
        prop_assert_eq!(aggregate.total_samples, total);
        let quantization_bound = f64::from(n) * 2f64.powi(-32) / total as f64;
        for (got, want) in flat(&aggregate.fedavg_delta).iter().zip(&expected) {
            let err = (f64::from(*got) - want).abs();
            prop_assert!(err <= quantization_bound + want.abs() * 2f64.powi(-24), "{got} vs {want}");
        }
    }

    /// With no dropouts the masks cancel exactly: Σ y_u − Σ PRG(b_u) = Σ q_u (mod 2^64), checked bit for
    /// bit on inputs whose quantization is exact.
    #[test]
    fn masks_cancel_exactly(n in 2u32..=8, seed in any::<u64>(), len in 1usize..64) {
        let config = config(n, 2 * n as usize / 3 + 1, 2, &[len, 5]);
        let inputs = dyadic_inputs(&config, seed);
        let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
        prop_assert_eq!(aggregate.fixed_point_sum, exact_fixed_point_sum(&config, &inputs, config.participants()));
    }
}

#[test]
fn fedavg_of_identical_deltas_is_that_delta() {
    let config = config(4, 3, 1, &[5]);
    let delta = NamedTensors::from_vectors([("layer0.weight", vec![0.25f32, -0.5, 0.125, 1.0, -2.0])]);
    let inputs: Inputs = config
        .participants()
        .iter()
        .zip([3u64, 70, 1, 999])
        .map(|(&s, n)| (s, (delta.clone(), n)))
        .collect();
    let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
    assert_eq!(aggregate.fedavg_delta, delta);
    assert_eq!(aggregate.total_samples, 3 + 70 + 1 + 999);
}

/// Masking, unmasking and decoding split long vectors over threads; how many must not change a bit
/// of the sum or of the decoded average (two tensors, so that the threads' slices cross a tensor).
#[test]
fn thread_counts_do_not_change_the_sum() {
    let config = config(3, 3, 1, &[(1 << 18) + 3, (1 << 17) + 5]);
    let inputs = dyadic_inputs(&config, 5);
    let exact = exact_fixed_point_sum(&config, &inputs, config.participants());
    let total = *exact.last().unwrap() as u64;
    let mut averages = Vec::new();
    for (client_threads, server_threads) in [(1, 3), (4, 1), (2, 2)] {
        let (mut round, directory) = Round::start(&config);
        round.server.set_threads(server_threads);
        for client in round.clients.values_mut() {
            client.set_threads(client_threads);
        }
        let deliveries = round.share(&directory, &[]).unwrap();
        let check = round.upload(&deliveries, &inputs, &[]).unwrap();
        let aggregate = round.check_and_unmask(&check, &[]).unwrap();
        assert_eq!(
            aggregate.fixed_point_sum, exact,
            "{client_threads} / {server_threads} threads"
        );
        assert_eq!(aggregate.total_samples, total);
        averages.push(flat(&aggregate.fedavg_delta));
    }
    // Each element is the exact fixed-point sum, dequantized, divided by Σ n_k, rounded to f32.
    let unit = 2f64.powi(config.config().quantization.fractional_bits as i32);
    let expected: Vec<f32> = exact[..exact.len() - 1]
        .iter()
        .map(|&s| (s as f64 / unit / total as f64) as f32)
        .collect();
    for average in &averages {
        assert_eq!(*average, expected);
    }
}

/// The federation's path: a round configured from the global model (`tensor_specs`), deltas of real
/// multi-dimensional tensors (`federation::fedavg::delta`), and an aggregate with the model's shapes
/// that `apply_delta` accepts; the result matches plain FedAvg over the same deltas.
#[test]
fn a_round_configured_from_a_global_model_returns_its_shapes() {
    use fedlnm_shared::federation::fedavg::{FedAvg, apply_delta, delta};
    use fedlnm_shared::secagg::tensor_specs;
    let tensor = |name: &str, shape: Vec<usize>, offset: f32| {
        let len = shape.iter().product::<usize>();
        NamedTensor::new(name, shape, (0..len).map(|i| offset + i as f32 * 0.125).collect()).unwrap()
    };
    let model = |offset: f32| NamedTensors {
        tensors: vec![
            tensor("image.stem_conv.weight", vec![2, 1, 3, 3], offset),
            tensor("image.stem_bn.running_mean", vec![2], offset),
            tensor("heads.lnm.weight", vec![1, 4], offset),
        ],
    };
    let global = model(0.0);
    let specs = tensor_specs(&global);
    assert_eq!(
        specs[0],
        TensorSpec {
            name: "image.stem_conv.weight".into(),
            shape: vec![2, 1, 3, 3]
        }
    );
    let config = SecAggConfig {
        study_id: "lnm-study".into(),
        round: 1,
        model_version: fedlnm_shared::secagg::ModelVersion::new("model-v7", 1),
        participants: (1..=3).map(SiteId).collect(),
        threshold: 3,
        tensors: specs,
        fedbn_exclude: vec!["*_bn.*".into()],
        quantization: QuantizationConfig::default(),
        max_delta_norm: 1e3,
        input: fedlnm_shared::secagg::InputKind::WeightedDelta,
        privacy: None,
        security: support::malicious(&[SiteId(1), SiteId(2), SiteId(3)]),
        graph: fedlnm_shared::secagg::Graph::Complete,
    }
    .validate()
    .unwrap();
    let aggregated = |name: &str| !config.is_excluded(name);
    let mut plain = FedAvg::new(&global, aggregated);
    let mut inputs = Inputs::new();
    for (&site, (offset, n)) in config
        .participants()
        .iter()
        .zip([(0.5f32, 10u64), (-0.25, 30), (1.0, 60)])
    {
        let site_delta = delta(&model(offset), &global, aggregated).unwrap();
        plain.add(&site.to_string(), &site_delta, n).unwrap();
        inputs.insert(site, (site_delta, n));
    }
    let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
    let expected = plain.average().unwrap();
    aggregate.fedavg_delta.check_same_layout(&expected).unwrap();
    aggregate.weighted_sum().check_same_layout(&expected).unwrap();
    for (got, want) in aggregate.fedavg_delta.tensors.iter().zip(&expected.tensors) {
        assert_eq!(got.name, want.name, "model order is kept");
        for (g, w) in got.values.iter().zip(&want.values) {
            assert!((g - w).abs() <= 1e-6, "{}: {g} vs {w}", got.name);
        }
    }
    let next = apply_delta(&global, aggregate.fedavg_delta.clone(), 1.0).unwrap();
    next.check_same_layout(&global).unwrap();
}

// ---------------------------------------------------------------- dropouts

fn sites(ids: &[u32]) -> Vec<SiteId> {
    ids.iter().map(|&i| SiteId(i)).collect()
}

#[test]
fn dropout_before_upload_leaves_the_exact_sum_of_the_others() {
    let config = config(7, 5, 4, &[300, 7]);
    let inputs = dyadic_inputs(&config, 1);
    let drops = Dropouts {
        before_upload: sites(&[20, 40]),
        ..Dropouts::default()
    };
    let aggregate = run(&config, &inputs, &drops).unwrap();
    let survivors = sites(&[10, 30, 50, 60, 70]);
    assert_eq!(aggregate.survivors, survivors);
    assert_eq!(aggregate.dropped, sites(&[20, 40]));
    assert_eq!(
        aggregate.fixed_point_sum,
        exact_fixed_point_sum(&config, &inputs, &survivors)
    );
}

#[test]
fn dropout_after_upload_keeps_that_upload_in_the_exact_sum() {
    // Bonawitz: a site that uploaded is in U3; its b_u is rebuilt from the survivors' shares.
    let config = config(7, 5, 4, &[300, 7]);
    let inputs = dyadic_inputs(&config, 2);
    let drops = Dropouts {
        before_unmask: sites(&[20, 50]),
        ..Dropouts::default()
    };
    let aggregate = run(&config, &inputs, &drops).unwrap();
    assert_eq!(aggregate.survivors, config.participants());
    assert!(aggregate.dropped.is_empty());
    assert_eq!(
        aggregate.fixed_point_sum,
        exact_fixed_point_sum(&config, &inputs, config.participants())
    );
}

#[test]
fn dropouts_at_every_stage_at_once() {
    let config = config(10, 7, 4, &[100]);
    let inputs = dyadic_inputs(&config, 3);
    let drops = Dropouts {
        before_shares: sites(&[10]),
        before_upload: sites(&[40]),
        before_unmask: sites(&[70]),
    };
    let aggregate = run(&config, &inputs, &drops).unwrap();
    let in_sum = sites(&[20, 30, 50, 60, 70, 80, 90, 100]);
    assert_eq!(aggregate.survivors, in_sum);
    assert_eq!(aggregate.dropped, sites(&[40]));
    assert_eq!(
        aggregate.fixed_point_sum,
        exact_fixed_point_sum(&config, &inputs, &in_sum)
    );
    let (expected, _) = plain_fedavg(&config, &inputs, &in_sum);
    for (got, want) in flat(&aggregate.fedavg_delta).iter().zip(&expected) {
        assert!((f64::from(*got) - want).abs() <= want.abs() * 2f64.powi(-24) + 1e-12);
    }
}

#[test]
fn fewer_survivors_than_the_threshold_abort_at_every_stage() {
    // Against a malicious server (t = 4 of 5) the last stage to miss sites is the consistency check;
    // against a curious one (t = 3 of 5), unmasking.
    for (config, threshold, last_stage) in [
        (config(5, 4, 4, &[10]), 4, RoundStage::ConsistencyCheck),
        (curious_config(5, 3, 4, &[10]), 3, RoundStage::Unmasking),
    ] {
        let inputs = dyadic_inputs(&config, 4);
        let left = threshold - 1;
        let too_few = |stage| {
            move |e: SecAggError| {
                matches!(e, SecAggError::TooFewSurvivors { stage: s, survivors, threshold: t, round: 4 }
                    if s == stage && survivors == left && t == threshold)
            }
        };
        // Keys: only t - 1 sites advertise.
        let mut server = SecAggServer::new(config.clone());
        for &site in &config.participants()[..left] {
            server.receive_keys(client(&config, site).unwrap().1).unwrap();
        }
        assert!(too_few(RoundStage::AdvertiseKeys)(
            server.close_keys().unwrap_err()
        ));
        assert_eq!(server.stage(), RoundStage::Aborted);
        assert!(matches!(
            server.close_keys(),
            Err(SecAggError::Aborted { round: 4 })
        ));
        // Shares, uploads, and the last stage.
        let gone = config.participants()[left..].to_vec();
        let cases = [
            (
                Dropouts {
                    before_shares: gone.clone(),
                    ..Dropouts::default()
                },
                RoundStage::ShareKeys,
            ),
            (
                Dropouts {
                    before_upload: gone.clone(),
                    ..Dropouts::default()
                },
                RoundStage::MaskedInputCollection,
            ),
            (
                Dropouts {
                    before_unmask: gone.clone(),
                    ..Dropouts::default()
                },
                last_stage,
            ),
        ];
        for (drops, stage) in cases {
            let err = run(&config, &inputs, &drops).unwrap_err();
            assert!(too_few(stage)(err.clone()), "{stage}: {err:?}");
        }
    }
}

#[test]
fn a_client_refuses_a_survivor_set_smaller_than_the_threshold() {
    for config in [config(5, 4, 4, &[10]), curious_config(5, 3, 4, &[10])] {
        let inputs = dyadic_inputs(&config, 5);
        let (mut round, directory) = Round::start(&config);
        let deliveries = round.share(&directory, &[]).unwrap();
        let mut check = round.upload(&deliveries, &inputs, &[]).unwrap();
        check.survivors = sites(&[10, 20]);
        check.dropped = sites(&[30, 40, 50]);
        let client = round.clients.get_mut(&SiteId(10)).unwrap();
        let err = if config.is_authenticated() {
            // Round 3: the site refuses to sign it.
            client.consistency_check(&check).unwrap_err()
        } else {
            let request = UnmaskRequest {
                header: check.header.clone(),
                survivors: check.survivors.clone(),
                dropped: check.dropped.clone(),
                signatures: Vec::new(),
            };
            client.unmask(&request).unwrap_err()
        };
        // Named by the stage that asked: round 3 against a malicious server, unmasking otherwise.
        let stage = if config.is_authenticated() {
            RoundStage::ConsistencyCheck
        } else {
            RoundStage::Unmasking
        };
        assert!(
            matches!(err, SecAggError::TooFewSurvivors { survivors: 2, stage: s, .. } if s == stage),
            "{err:?}"
        );
    }
}

// ---------------------------------------------------------------- rejected messages

#[test]
fn a_tampered_share_is_rejected_by_its_recipient() {
    let config = config(3, 3, 4, &[10]);
    let inputs = dyadic_inputs(&config, 6);
    let (mut round, directory) = Round::start(&config);
    let mut deliveries = round.share(&directory, &[]).unwrap();
    let delivery = &mut deliveries[1];
    let (to, from) = (delivery.to, delivery.shares[0].from);
    let last = delivery.shares[0].ciphertext.len() - 1;
    delivery.shares[0].ciphertext[last] ^= 1;
    let (delta, n) = &inputs[&to];
    let err = round
        .clients
        .get_mut(&to)
        .unwrap()
        .masked_input(delivery, delta, *n)
        .unwrap_err();
    assert_eq!(
        err,
        SecAggError::ShareDecryption {
            site: to,
            from,
            round: 4
        }
    );
}

#[test]
fn a_share_from_another_round_is_rejected() {
    let round4 = config(3, 3, 4, &[10]);
    let round5 = config(3, 3, 5, &[10]);
    let inputs = dyadic_inputs(&round4, 7);
    let (mut r4, d4) = Round::start(&round4);
    let (mut r5, d5) = Round::start(&round5);
    let deliveries4 = r4.share(&d4, &[]).unwrap();
    let deliveries5 = r5.share(&d5, &[]).unwrap();
    let site = deliveries4[0].to;
    let (delta, n) = &inputs[&site];
    // The whole round-5 delivery: its header names round 5.
    let err = r4
        .clients
        .get_mut(&site)
        .unwrap()
        .masked_input(&deliveries5[0], delta, *n)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::WrongRound {
                round: 4,
                got_round: 5,
                ..
            }
        ),
        "{err:?}"
    );
    // A round-5 ciphertext spliced into the round-4 delivery: fails authentication.
    let mut spliced = deliveries4[0].clone();
    spliced.shares[0].ciphertext = deliveries5[0].shares[0].ciphertext.clone();
    let from = spliced.shares[0].from;
    let err = r4
        .clients
        .get_mut(&site)
        .unwrap()
        .masked_input(&spliced, delta, *n)
        .unwrap_err();
    assert_eq!(err, SecAggError::ShareDecryption { site, from, round: 4 });
    // The client is unchanged by both rejections: the genuine delivery still works.
    r4.clients
        .get_mut(&site)
        .unwrap()
        .masked_input(&deliveries4[0], delta, *n)
        .unwrap();
}

#[test]
fn replayed_foreign_and_malformed_uploads_are_rejected_and_leave_the_server_unchanged() {
    let config = config(3, 3, 4, &[50]);
    let previous = self::config(3, 3, 3, &[50]);
    let inputs = dyadic_inputs(&config, 8);
    // An upload from the previous round, by the same site.
    let (mut old, old_directory) = Round::start(&previous);
    let old_deliveries = old.share(&old_directory, &[]).unwrap();
    let (delta, n) = &inputs[&SiteId(10)];
    let old_upload = old
        .clients
        .get_mut(&SiteId(10))
        .unwrap()
        .masked_input(&old_deliveries[0], delta, *n)
        .unwrap();

    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let mut uploads: Vec<MaskedInput> = Vec::new();
    for delivery in &deliveries {
        let (delta, n) = &inputs[&delivery.to];
        uploads.push(
            round
                .clients
                .get_mut(&delivery.to)
                .unwrap()
                .masked_input(delivery, delta, *n)
                .unwrap(),
        );
    }
    round.server.receive_masked_input(uploads[0].clone()).unwrap();
    let replay = round.server.receive_masked_input(uploads[0].clone()).unwrap_err();
    assert_eq!(
        replay,
        SecAggError::Duplicate {
            site: SiteId(10),
            round: 4,
            stage: RoundStage::MaskedInputCollection
        }
    );
    let stale = round.server.receive_masked_input(old_upload).unwrap_err();
    assert!(
        matches!(
            stale,
            SecAggError::WrongRound {
                site: SiteId(10),
                round: 4,
                got_round: 3,
                ..
            }
        ),
        "{stale:?}"
    );
    let mut stranger = uploads[1].clone();
    stranger.header.site = SiteId(99);
    let err = round.server.receive_masked_input(stranger).unwrap_err();
    assert_eq!(
        err,
        SecAggError::NotInRound {
            site: SiteId(99),
            round: 4,
            stage: RoundStage::MaskedInputCollection
        }
    );
    let mut short = uploads[1].clone();
    let MaskedVector::Z2_64(elements) = &mut short.masked else {
        panic!("a Z_2^64 instance sent {:?}", short.masked.ring());
    };
    elements.pop();
    let err = round.server.receive_masked_input(short).unwrap_err();
    assert_eq!(
        err,
        SecAggError::WrongLength {
            site: SiteId(20),
            round: 4,
            expected: 51,
            got: 50
        }
    );
    let mut other_config = uploads[1].clone();
    other_config.header.config_hash[0] ^= 1;
    let err = round.server.receive_masked_input(other_config).unwrap_err();
    assert_eq!(
        err,
        SecAggError::ConfigMismatch {
            site: SiteId(20),
            round: 4
        }
    );
    // The same checks for an input held in the bytes it arrived in (as the aggregator holds it):
    // its elements as little-endian u64s after a 5-byte stand-in for the header.
    round.server.set_max_held(8);
    let held = |upload: &MaskedInput| -> (HeldBytes, std::ops::Range<usize>) {
        let mut bytes = vec![0xA5; 5];
        bytes.extend(upload.masked.to_le_bytes());
        let len = bytes.len();
        (std::sync::Arc::new(bytes), 5..len)
    };
    let (bytes, elements) = held(&uploads[1]);
    let mut hold = |ring: Ring, range: std::ops::Range<usize>| {
        round
            .server
            .hold_masked_bytes(&uploads[1].header, ring, bytes.clone(), range)
    };
    let outside = hold(Ring::Z2_64, 5..elements.end + 8).unwrap_err();
    assert!(
        matches!(
            outside,
            SecAggError::Malformed {
                site: SiteId(20),
                round: 4,
                ..
            }
        ),
        "{outside:?}"
    );
    // Short by one element, or by a fraction of one.
    for short in [5..elements.end - 8, 5..elements.end - 3] {
        assert_eq!(
            hold(Ring::Z2_64, short).unwrap_err(),
            SecAggError::WrongLength {
                site: SiteId(20),
                round: 4,
                expected: 51,
                got: 50
            }
        );
    }
    // Bytes that hold the configured number of elements in another ring: refused, both rings named.
    let other_ring = hold(Ring::Z2_32, 5..5 + 51 * 4).unwrap_err();
    assert!(
        matches!(&other_ring, SecAggError::Malformed { site: SiteId(20), reason, .. }
            if reason.contains("Z_2^32") && reason.contains("Z_2^64")),
        "{other_ring:?}"
    );
    hold(Ring::Z2_64, elements.clone()).unwrap();
    let replay = hold(Ring::Z2_64, elements).unwrap_err();
    assert!(
        matches!(replay, SecAggError::Duplicate { site: SiteId(20), .. }),
        "{replay:?}"
    );
    // Held until the stage closes: only this test's copy and the server's are alive.
    assert_eq!(std::sync::Arc::strong_count(&bytes), 2);
    // None of the rejected messages touched the state: the round completes with the exact sum,
    // held and decoded inputs together.
    round.server.receive_masked_input(uploads[2].clone()).unwrap();
    let check = round.server.close_masked_inputs().unwrap();
    // Summed at the close, and let go.
    assert_eq!(std::sync::Arc::strong_count(&bytes), 1);
    // A late upload after the stage closed is rejected too.
    let late = round.server.receive_masked_input(uploads[2].clone()).unwrap_err();
    assert!(matches!(
        late,
        SecAggError::WrongStage {
            got: RoundStage::MaskedInputCollection,
            current: RoundStage::ConsistencyCheck,
            ..
        }
    ));
    let aggregate = round.check_and_unmask(&check, &[]).unwrap();
    assert_eq!(
        aggregate.fixed_point_sum,
        exact_fixed_point_sum(&config, &inputs, config.participants())
    );
}

#[test]
fn a_site_never_reveals_both_shares_of_one_peer() {
    // The client's own rule, which holds without signatures (a curious server); against a malicious
    // server a request that differs from the signed survivor set is refused before it
    // (shared/tests/malicious_server.rs).
    let config = curious_config(5, 3, 4, &[10]);
    let inputs = dyadic_inputs(&config, 9);
    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let check = round.upload(&deliveries, &inputs, &[SiteId(50)]).unwrap();
    let request = round.consistency(&check, &[]).unwrap();
    assert_eq!(request.dropped, sites(&[50]));
    let client = round.clients.get_mut(&SiteId(10)).unwrap();
    // A site listed as both survivor and dropped.
    let mut both = request.clone();
    both.dropped = sites(&[30, 50]);
    assert_eq!(
        client.unmask(&both).unwrap_err(),
        SecAggError::RefuseBothShares {
            site: SiteId(10),
            peer: SiteId(30),
            round: 4
        }
    );
    // An honest request, then one that declares a revealed survivor dropped (and vice versa).
    let response = client.unmask(&request).unwrap();
    assert_eq!(response.self_mask_shares.len(), 4);
    assert_eq!(response.mask_key_shares.len(), 1);
    let flipped = UnmaskRequest {
        survivors: sites(&[10, 20, 50]),
        dropped: sites(&[30, 40]),
        ..request.clone()
    };
    assert_eq!(
        client.unmask(&flipped).unwrap_err(),
        SecAggError::RefuseBothShares {
            site: SiteId(10),
            peer: SiteId(50),
            round: 4
        }
    );
    // Repeating the honest request is fine (a retry reveals nothing new).
    assert_eq!(client.unmask(&request).unwrap(), response);
}

#[test]
fn messages_from_outside_the_round_or_stage_are_rejected() {
    let config = config(3, 3, 4, &[10]);
    let mut server = SecAggServer::new(config.clone());
    let (_, mut advertise) = client(&config, SiteId(10)).unwrap();
    let good = advertise.clone();
    advertise.header.site = SiteId(11);
    assert_eq!(
        server.receive_keys(advertise).unwrap_err(),
        SecAggError::NotInRound {
            site: SiteId(11),
            round: 4,
            stage: RoundStage::AdvertiseKeys
        }
    );
    let mut other_study = good.clone();
    other_study.header.study_id = "other".into();
    assert!(matches!(
        server.receive_keys(other_study).unwrap_err(),
        SecAggError::WrongRound { site: SiteId(10), .. }
    ));
    server.receive_keys(good.clone()).unwrap();
    assert_eq!(
        server.receive_keys(good).unwrap_err(),
        SecAggError::Duplicate {
            site: SiteId(10),
            round: 4,
            stage: RoundStage::AdvertiseKeys
        }
    );
    assert!(matches!(
        client(&config, SiteId(12)),
        Err(SecAggError::NotInRound { site: SiteId(12), .. })
    ));
    // A malicious-server instance cannot be joined without the site's signing key.
    assert_eq!(
        SecAggClient::new(config, SiteId(10)).err(),
        Some(SecAggError::Unauthenticated {
            site: SiteId(10),
            round: 4
        })
    );
}

// ---------------------------------------------------------------- node checks and FedBN

#[test]
fn fedbn_tensors_are_never_masked_or_sent() {
    let config = config(3, 3, 4, &[6, 2]);
    assert_eq!(config.vector_len(), 6 + 2 + 1);
    assert!(
        config
            .aggregated_tensors()
            .iter()
            .all(|t| !t.name.contains(".bn."))
    );
    // dyadic_inputs gives every site a NaN/±1e30 BN tensor: the round still succeeds, without it.
    let inputs = dyadic_inputs(&config, 10);
    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let (delta, n) = &inputs[&deliveries[0].to];
    let upload = round
        .clients
        .get_mut(&deliveries[0].to)
        .unwrap()
        .masked_input(&deliveries[0], delta, *n)
        .unwrap();
    assert_eq!(upload.masked.len(), config.vector_len());
    let aggregate = run(&config, &inputs, &Dropouts::default()).unwrap();
    let names: Vec<&str> = aggregate
        .fedavg_delta
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["layer0.weight", "layer1.weight"]);
    // A delta without its BN tensor is as good.
    let without_bn = NamedTensors {
        tensors: delta
            .tensors
            .iter()
            .filter(|t| !t.name.contains(".bn."))
            .cloned()
            .collect(),
    };
    config.check_delta(SiteId(10), &without_bn, *n).unwrap();
}

#[test]
fn a_node_rejects_its_own_bad_delta_before_masking() {
    let mut raw = config(3, 3, 4, &[3]).config().clone();
    raw.max_delta_norm = 1.0;
    let config = raw.validate().unwrap();
    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let site = deliveries[0].to;
    let client = round.clients.get_mut(&site).unwrap();
    let delta = |v: Vec<f32>| NamedTensors::from_vectors([("layer0.weight", v)]);
    let shaped = |shape: Vec<usize>, values: Vec<f32>| NamedTensors {
        tensors: vec![NamedTensor {
            name: "layer0.weight".into(),
            shape,
            values,
        }],
    };
    type Check = fn(&SecAggError) -> bool;
    let cases: Vec<(NamedTensors, u64, Check)> = vec![
        (delta(vec![0.1, f32::NAN, 0.0]), 5, |e| {
            matches!(e, SecAggError::DeltaNotFinite { index: 1, .. })
        }),
        (delta(vec![0.1, f32::INFINITY, 0.0]), 5, |e| {
            matches!(e, SecAggError::DeltaNotFinite { index: 1, .. })
        }),
        (delta(vec![0.8, 0.8, 0.0]), 5, |e| {
            matches!(e, SecAggError::DeltaNormTooLarge { .. })
        }),
        (delta(vec![0.1, 0.1]), 5, |e| {
            matches!(e, SecAggError::DeltaShape { .. })
        }),
        (NamedTensors::default(), 5, |e| {
            matches!(e, SecAggError::DeltaShape { .. })
        }),
        // The right number of values in the wrong shape.
        (
            shaped(vec![1, 3], vec![0.1, 0.1, 0.1]),
            5,
            |e| matches!(e, SecAggError::DeltaShape { reason, .. } if reason.contains("shape [1, 3]")),
        ),
        // The configured shape, but values that do not fill it (the fields are public).
        (
            shaped(vec![3], vec![0.1, 0.1]),
            5,
            |e| matches!(e, SecAggError::DeltaShape { reason, .. } if reason.contains("2 elements")),
        ),
        (delta(vec![0.1, 0.1, 0.1]), 0, |e| {
            matches!(e, SecAggError::SampleCount { n_samples: 0, .. })
        }),
        (delta(vec![0.1, 0.1, 0.1]), 2_000_000, |e| {
            matches!(e, SecAggError::SampleCount { .. })
        }),
    ];
    for (d, n, check) in cases {
        let err = client.masked_input(&deliveries[0], &d, n).unwrap_err();
        assert!(check(&err), "{err:?}");
    }
    client
        .masked_input(&deliveries[0], &delta(vec![0.5, -0.5, 0.5]), 5)
        .unwrap();
}

// ---------------------------------------------------------------- statistics of one masked upload

/// Upper-tail p-value of a chi-square statistic with k degrees of freedom (Wilson–Hilferty; accurate
/// to a few percent of p at k = 255, far inside the margin between 1e-6 and a real failure).
fn chi_square_p(statistic: f64, k: f64) -> f64 {
    let z = ((statistic / k).cbrt() - (1.0 - 2.0 / (9.0 * k))) / (2.0 / (9.0 * k)).sqrt();
    normal_cdf(-z)
}

/// Asymptotic p-value of the one-sample KS statistic D for n uniforms (Stephens' correction).
fn ks_uniform_p(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    let d = values
        .iter()
        .enumerate()
        .map(|(i, &x)| (x - i as f64 / n).max((i as f64 + 1.0) / n - x))
        .fold(0.0, f64::max);
    let lambda = (n.sqrt() + 0.12 + 0.11 / n.sqrt()) * d;
    let q: f64 = (1..=100)
        .map(|j| {
            let j = f64::from(j);
            (if j as u64 % 2 == 1 { 2.0 } else { -2.0 }) * (-2.0 * j * j * lambda * lambda).exp()
        })
        .sum();
    q.clamp(0.0, 1.0)
}

fn byte_chi_square_p(values: &[u64], byte: u32) -> f64 {
    let mut counts = [0u64; 256];
    for v in values {
        counts[((v >> (8 * byte)) & 0xff) as usize] += 1;
    }
    let expected = values.len() as f64 / 256.0;
    let statistic: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    chi_square_p(statistic, 255.0)
}

fn unit(v: u64) -> f64 {
    (v >> 11) as f64 * 2f64.powi(-53)
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// The significance level of every test below: each p-value must exceed it. Under uniformity the
/// 10 tests together fail with probability below 1e-5 per run (masks come from the OS generator), while
/// a structured vector gives p-values of 0 (checked as a control on the unmasked input).
const ALPHA: f64 = 1e-6;

#[test]
fn one_masked_upload_is_indistinguishable_from_uniform_and_uncorrelated_with_its_delta() {
    let m = 1 << 17;
    let config = config(3, 3, 4, &[m]);
    // A strongly structured delta: a ramp plus a sine, mostly small values.
    let values: Vec<f32> = (0..m)
        .map(|i| (i as f32 / m as f32 - 0.5) * 0.01 + (i as f32 * 0.001).sin() * 0.001)
        .collect();
    let delta = NamedTensors::from_vectors([("layer0.weight", values.clone())]);
    let inputs: Inputs = config
        .participants()
        .iter()
        .map(|&s| (s, (delta.clone(), 1000)))
        .collect();
    let (mut round, directory) = Round::start(&config);
    let deliveries = round.share(&directory, &[]).unwrap();
    let (delta, n) = &inputs[&deliveries[0].to];
    let upload = round
        .clients
        .get_mut(&deliveries[0].to)
        .unwrap()
        .masked_input(&deliveries[0], delta, *n)
        .unwrap();
    let MaskedVector::Z2_64(masked) = &upload.masked else {
        panic!("a Z_2^64 instance sent {:?}", upload.masked.ring());
    };
    let y = &masked[..m];

    // Control: the same tests reject the unmasked quantized input outright.
    let mut q = vec![0u64; m];
    quantize_weighted(
        &values,
        1000,
        1e6,
        32,
        &mut RoundingSource::from_seed(&[0; 32]),
        &mut q,
    );
    assert!(byte_chi_square_p(&q, 7) < ALPHA && byte_chi_square_p(&q, 4) < ALPHA);
    assert!(ks_uniform_p(&mut q.iter().map(|&v| unit(v)).collect::<Vec<_>>()) < ALPHA);

    for byte in 0..8 {
        let p = byte_chi_square_p(y, byte);
        assert!(p > ALPHA, "byte {byte}: chi-square p = {p}");
    }
    let uniform: Vec<f64> = y.iter().map(|&v| unit(v)).collect();
    let p = ks_uniform_p(&mut uniform.clone());
    assert!(p > ALPHA, "KS p = {p}");
    // Under independence r·√m is standard normal: |r| < 5.5/√m fails with probability 4e-8.
    let d: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    let r = pearson(&uniform, &d);
    assert!(r.abs() < 5.5 / (m as f64).sqrt(), "correlation {r}");
    // The control correlation of the unmasked input with the delta is ~1.
    let r_control = pearson(&q.iter().map(|&v| v as i64 as f64).collect::<Vec<_>>(), &d);
    assert!(r_control > 0.99, "{r_control}");
}
