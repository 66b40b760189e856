//! Secure sums of statistics (`InputKind::Counts`): the same masking protocol sums integer vectors
//! exactly (score histograms, counts), with dropouts on both sides of the upload, and refuses inputs
//! of the other kind or beyond the configured total. Ring sums (`InputKind::Ring`, the analyses'
//! fixed point) are sums modulo 2^64 of any elements, signed values included.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

use std::collections::BTreeMap;

use fedlnm_shared::secagg::{
    CountSum, InputKind, ModelVersion, QuantizationConfig, RoundConfig, SecAggClient, SecAggConfig,
    SecAggError, SecAggServer, Security, SiteId, TensorSpec,
};
use fedlnm_shared::weights::NamedTensors;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BINS: usize = 300;

fn counts_config(n: u32, threshold: usize, max_total: u64) -> RoundConfig {
    config_of(InputKind::Counts, n, threshold, max_total)
}

fn config_of(input: InputKind, n: u32, threshold: usize, max_total: u64) -> RoundConfig {
    SecAggConfig {
        study_id: "lnm-study".into(),
        round: 4,
        model_version: ModelVersion::new("model-v4", 1),
        participants: (1..=n).map(SiteId).collect(),
        threshold,
        tensors: ["positive", "negative"]
            .into_iter()
            .map(|name| TensorSpec {
                name: name.into(),
                shape: vec![BINS],
            })
            .collect(),
        fedbn_exclude: Vec::new(),
        quantization: QuantizationConfig {
            max_sample_count: max_total,
            ..QuantizationConfig::default()
        },
        max_delta_norm: 1.0,
        input,
        privacy: None,
        // Against an honest-but-curious server: the sums, not the signatures, are under test here
        // (shared/tests/malicious_server.rs).
        security: Security::CuriousServer,
        graph: fedlnm_shared::secagg::Graph::Complete,
    }
    .validate()
    .unwrap()
}

/// A histogram pair per site: a few hundred patients spread over the bins.
fn histograms(config: &RoundConfig, seed: u64) -> BTreeMap<SiteId, [Vec<u64>; 2]> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    config
        .participants()
        .iter()
        .map(|&site| {
            let mut pair = [vec![0u64; BINS], vec![0u64; BINS]];
            for _ in 0..rng.random_range(50..400) {
                let class = usize::from(rng.random_bool(0.3));
                pair[class][rng.random_range(0..BINS)] += 1;
            }
            (site, pair)
        })
        .collect()
}

/// One instance with `drop_before_upload` vanishing after the shares and `drop_after_upload` after
/// its upload (it stays in the sum); every message relayed as JSON.
fn run(
    config: &RoundConfig,
    inputs: &BTreeMap<SiteId, [Vec<u64>; 2]>,
    drop_before_upload: &[SiteId],
    drop_after_upload: &[SiteId],
) -> Result<CountSum, SecAggError> {
    fn relay<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) -> T {
        serde_json::from_slice(&serde_json::to_vec(message).unwrap()).unwrap()
    }
    let mut server = SecAggServer::new(config.clone());
    let mut clients = BTreeMap::new();
    for &site in config.participants() {
        let (client, advertise) = SecAggClient::new(config.clone(), site)?;
        server.receive_keys(relay(&advertise))?;
        clients.insert(site, client);
    }
    let directory = relay(&server.close_keys()?);
    for client in clients.values_mut() {
        server.receive_shares(relay(&client.share_keys(&directory)?))?;
    }
    for delivery in server.close_shares()? {
        if drop_before_upload.contains(&delivery.to) {
            continue;
        }
        let [positive, negative] = &inputs[&delivery.to];
        let client = clients.get_mut(&delivery.to).unwrap();
        let masked = match config.input() {
            InputKind::Ring => client.masked_ring(&relay(&delivery), &[positive, negative])?,
            _ => client.masked_counts(&relay(&delivery), &[positive, negative])?,
        };
        server.receive_masked_input(relay(&masked))?;
    }
    server.close_masked_inputs()?;
    let request = relay(&server.close_consistency()?);
    for (site, client) in &mut clients {
        if !drop_before_upload.contains(site) && !drop_after_upload.contains(site) {
            server.receive_unmask_response(relay(&client.unmask(&request)?))?;
        }
    }
    match config.input() {
        InputKind::Ring => server.finish_ring(),
        _ => server.finish_counts(),
    }
}

fn plain_sum(inputs: &BTreeMap<SiteId, [Vec<u64>; 2]>, sites: &[SiteId]) -> Vec<Vec<u64>> {
    let mut sum = vec![vec![0u64; BINS], vec![0u64; BINS]];
    for site in sites {
        for (total, counts) in sum.iter_mut().zip(&inputs[site]) {
            for (t, c) in total.iter_mut().zip(counts) {
                *t = t.wrapping_add(*c);
            }
        }
    }
    sum
}

#[test]
fn a_ring_sum_is_the_sum_modulo_2_64_of_signed_values_with_dropouts() {
    let config = config_of(InputKind::Ring, 5, 3, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    // Two's complement i64 anywhere in range: the plain sum wraps, the ring sum must wrap alike.
    let inputs: BTreeMap<SiteId, [Vec<u64>; 2]> = config
        .participants()
        .iter()
        .map(|&site| {
            let mut vector = || (0..BINS).map(|_| rng.random::<i64>() as u64).collect::<Vec<_>>();
            (site, [vector(), vector()])
        })
        .collect();
    let sum = run(&config, &inputs, &[SiteId(4)], &[SiteId(1)]).unwrap();
    let survivors = vec![SiteId(1), SiteId(2), SiteId(3), SiteId(5)];
    assert_eq!(sum.survivors, survivors);
    assert_eq!(sum.counts, plain_sum(&inputs, &survivors));
    // A signed fixed-point value and its negation cancel: −1.5 and +0.25 at 2^-32 sum to −1.25.
    let encode = |x: f64| ((x * 2f64.powi(32)).round() as i64) as u64;
    let mut small = inputs.clone();
    for (k, pair) in small.values_mut().enumerate() {
        pair[0][0] = encode(if k == 0 { -1.5 } else { 0.25 });
    }
    let sum = run(&config, &small, &[], &[]).unwrap();
    assert_eq!(sum.counts[0][0] as i64 as f64 / 2f64.powi(32), -1.5 + 4.0 * 0.25);
    // A counts instance does not take ring vectors, nor a ring instance counts.
    let error = run(&counts_config(5, 3, u64::MAX >> 11), &small, &[], &[]).unwrap_err();
    assert!(matches!(error, SecAggError::Counts { .. }), "{error}");
}

#[test]
fn the_secure_sum_of_histograms_is_the_plain_sum_exactly() {
    for seed in 0..4 {
        let config = counts_config(5, 3, 1_000_000);
        let inputs = histograms(&config, seed);
        let sum = run(&config, &inputs, &[], &[]).unwrap();
        let everyone: Vec<SiteId> = config.participants().to_vec();
        assert_eq!(sum.survivors, everyone);
        assert_eq!(sum.counts, plain_sum(&inputs, &everyone), "seed {seed}");
    }
}

#[test]
fn dropouts_before_and_after_the_upload() {
    let config = counts_config(6, 4, 1_000_000);
    let inputs = histograms(&config, 11);
    // Site 2 never uploads (its pairwise masks are rebuilt from its shared key); site 5 uploads and
    // vanishes (its self mask is rebuilt from the others' shares: it stays in the sum).
    let sum = run(&config, &inputs, &[SiteId(2)], &[SiteId(5)]).unwrap();
    let survivors = vec![SiteId(1), SiteId(3), SiteId(4), SiteId(5), SiteId(6)];
    assert_eq!(sum.survivors, survivors);
    assert_eq!(sum.dropped, vec![SiteId(2)]);
    assert_eq!(sum.counts, plain_sum(&inputs, &survivors));
}

#[test]
fn too_few_uploads_give_no_sum() {
    let config = counts_config(4, 3, 1_000_000);
    let inputs = histograms(&config, 3);
    let error = run(&config, &inputs, &[SiteId(1), SiteId(2)], &[]).unwrap_err();
    assert!(matches!(error, SecAggError::TooFewSurvivors { .. }), "{error}");
}

#[test]
fn counts_beyond_the_total_or_off_the_layout_are_refused_by_the_site_itself() {
    let config = counts_config(3, 2, 1_000);
    let mut inputs = histograms(&config, 5);
    inputs.get_mut(&SiteId(2)).unwrap()[0][7] = 1_001;
    let error = run(&config, &inputs, &[], &[]).unwrap_err();
    assert!(
        matches!(&error, SecAggError::Counts { site: SiteId(2), reason, .. } if reason.contains("more than 1000")),
        "{error}"
    );

    let mut inputs = histograms(&config, 5);
    inputs.get_mut(&SiteId(3)).unwrap()[1].pop();
    let error = run(&config, &inputs, &[], &[]).unwrap_err();
    assert!(
        matches!(&error, SecAggError::Counts { site: SiteId(3), reason, .. } if reason.contains("expected 300")),
        "{error}"
    );
}

#[test]
fn an_instance_sums_only_its_own_kind_of_input() {
    let config = counts_config(3, 2, 1_000);
    let (mut client, _) = SecAggClient::new(config.clone(), SiteId(1)).unwrap();
    let delivery = fedlnm_shared::secagg::ShareDelivery {
        header: fedlnm_shared::secagg::RoundHeader {
            study_id: "lnm-study".into(),
            round: 4,
            config_hash: config.config_hash(),
        },
        to: SiteId(1),
        senders: Vec::new(),
        shares: Vec::new(),
    };
    let error = client
        .masked_input(&delivery, &NamedTensors::default(), 1)
        .unwrap_err();
    assert!(
        matches!(
            error,
            SecAggError::WrongInputKind {
                configured: InputKind::Counts,
                ..
            }
        ),
        "{error}"
    );
    let mut server = SecAggServer::new(config);
    let error = server.finish().unwrap_err();
    assert!(matches!(error, SecAggError::WrongInputKind { .. }), "{error}");
}

#[test]
fn counts_take_no_fedbn_pattern() {
    let mut config = counts_config(3, 2, 1_000).config().clone();
    config.fedbn_exclude = vec!["bn.*".into()];
    let error = config.validate().unwrap_err();
    assert!(
        matches!(
            error,
            SecAggError::InvalidConfig {
                field: "fedbn_exclude",
                ..
            }
        ),
        "{error}"
    );
}
