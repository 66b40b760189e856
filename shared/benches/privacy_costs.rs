//! What the privacy features cost per round, as ratios to the secure training round without them
//! (honest-but-curious server: no signatures, no round 3), all measured in this run on one core: the
//! protection against a malicious server (ECDSA P-256 signatures of every site's keys and survivor
//! set, each checked by every peer against its certificate and the study CA, and the consistency
//! round), the statistics secure sum of a pool (20,083 counts: both score histograms and the three
//! stage confusion matrices), and distributed differential-privacy noise (clipping plus one discrete
//! Gaussian draw per weight), at 3, 10 and 30 sites for the study's tiny ResNet (87,527 weights), and at 3 and 10 for an 11M-weight
//! model. Each instance runs whole, in process: keys, shares, every site's masked input, unmasking
//! and decoding.
//!
//! Run with `cargo bench -p fedlnm-shared --bench privacy_costs` (`PRIVACY_BENCH_SITES=3,10` to trim).
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark harness: a panic is a failed run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fedlnm_shared::federation::STATISTICS_TENSORS;
use fedlnm_shared::host::cpu_model;
use fedlnm_shared::secagg::{
    DistributedNoise, InputKind, ModelVersion, QuantizationConfig, RoundConfig, SecAggClient, SecAggConfig,
    SecAggServer, Security, SiteId, TensorSpec,
};
use fedlnm_shared::weights::NamedTensors;

/// An instance between `n` sites; `malicious`: against a malicious server (the study's threshold
/// for it, 2n/3 < t), otherwise an honest-but-curious one (n/2 < t).
fn config(
    n: u32,
    tensors: Vec<TensorSpec>,
    input: InputKind,
    privacy: Option<DistributedNoise>,
    malicious: bool,
) -> RoundConfig {
    let participants: Vec<SiteId> = (1..=n).map(SiteId).collect();
    let (threshold, security) = if malicious {
        (2 * n as usize / 3 + 1, support::malicious(&participants))
    } else {
        (n as usize / 2 + 1, Security::CuriousServer)
    };
    SecAggConfig {
        study_id: "bench".into(),
        round: 1,
        model_version: ModelVersion::new("v1", 1),
        participants,
        threshold,
        tensors,
        fedbn_exclude: Vec::new(),
        quantization: QuantizationConfig::default(),
        max_delta_norm: 1e9,
        input,
        privacy,
        security,
        graph: fedlnm_shared::secagg::Graph::Complete,
    }
    .validate()
    .unwrap()
}

/// One whole instance, every site on one core; `upload` makes a site's masked input.
fn instance(
    config: &RoundConfig,
    mut upload: impl FnMut(
        &mut SecAggClient,
        &fedlnm_shared::secagg::ShareDelivery,
    ) -> fedlnm_shared::secagg::MaskedInput,
    finish: impl FnOnce(&mut SecAggServer),
) -> Duration {
    // Certificates are issued once per study, not per round: outside the timing.
    let auths = config
        .is_authenticated()
        .then(|| support::study_authentications(config.participants()));
    let start = Instant::now();
    let mut server = SecAggServer::new(config.clone());
    if let Some(auths) = &auths {
        server = server.with_verifier(auths.values().next().unwrap().peers.clone());
    }
    server.set_threads(1);
    let mut clients = Vec::new();
    for &site in config.participants() {
        let (mut client, advertise) = match &auths {
            Some(auths) => {
                SecAggClient::new_authenticated(config.clone(), site, auths[&site].clone()).unwrap()
            }
            None => SecAggClient::new(config.clone(), site).unwrap(),
        };
        client.set_threads(1);
        server.receive_keys(advertise).unwrap();
        clients.push(client);
    }
    let directory = server.close_keys().unwrap();
    for client in &mut clients {
        server
            .receive_shares(client.share_keys(&directory).unwrap())
            .unwrap();
    }
    for (client, delivery) in clients.iter_mut().zip(server.close_shares().unwrap()) {
        server.receive_masked_input(upload(client, &delivery)).unwrap();
    }
    let check = server.close_masked_inputs().unwrap();
    if auths.is_some() {
        for client in &mut clients {
            server
                .receive_consistency(client.consistency_check(&check).unwrap())
                .unwrap();
        }
    }
    let request = server.close_consistency().unwrap();
    for client in &mut clients {
        server
            .receive_unmask_response(client.unmask(&request).unwrap())
            .unwrap();
    }
    finish(&mut server);
    start.elapsed()
}

fn best_of(repeats: usize, mut run: impl FnMut() -> Duration) -> Duration {
    (0..repeats).map(|_| run()).min().unwrap_or_default()
}

fn main() {
    let sites: Vec<u32> = std::env::var("PRIVACY_BENCH_SITES")
        .ok()
        .map(|list| list.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![3, 10, 30]);
    let counts_layout: Vec<TensorSpec> = STATISTICS_TENSORS
        .iter()
        .map(|&(name, len)| TensorSpec {
            name: name.to_owned(),
            shape: vec![len],
        })
        .collect();
    // Every tensor of a pool's statistics (histograms and stage confusion matrices), one count a cell.
    let statistics: Vec<Vec<u64>> = STATISTICS_TENSORS
        .iter()
        .map(|&(_, len)| vec![1u64; len])
        .collect();
    let statistics: Vec<&[u64]> = statistics.iter().map(Vec::as_slice).collect();
    println!("{}; one core per party; best of 3 (2 at 11M)\n", cpu_model());
    println!(
        "| weights | sites | secure round (curious server) | against a malicious server | ratio | \
         statistics sum | ratio | with DP noise | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for weights in [87_527usize, 11_000_000] {
        let repeats = if weights > 1_000_000 { 2 } else { 3 };
        let delta = NamedTensors::from_vectors(vec![(
            "weights".to_owned(),
            (0..weights).map(|i| ((i % 17) as f32 - 8.0) * 1e-4).collect(),
        )]);
        let layout = vec![TensorSpec {
            name: "weights".into(),
            shape: vec![weights],
        }];
        // 30 sites at 11M weights would take minutes per instance (every site masks with every other).
        for &n in sites.iter().filter(|&&n| weights < 1_000_000 || n <= 10) {
            let plain = config(n, layout.clone(), InputKind::WeightedDelta, None, false);
            let signed = config(n, layout.clone(), InputKind::WeightedDelta, None, true);
            let noisy = config(
                n,
                layout.clone(),
                InputKind::WeightedDelta,
                Some(DistributedNoise {
                    clip_norm: 1.0,
                    noise_multiplier: 1.0,
                }),
                false,
            );
            let counts = config(n, counts_layout.clone(), InputKind::Counts, None, false);
            let train = |config: &RoundConfig| {
                best_of(repeats, || {
                    instance(
                        config,
                        |client, delivery| client.masked_input(delivery, &delta, 100).unwrap(),
                        |server| {
                            server.finish().unwrap();
                        },
                    )
                })
            };
            let round = train(&plain);
            let with_signatures = train(&signed);
            let with_noise = train(&noisy);
            let statistics = best_of(repeats, || {
                instance(
                    &counts,
                    |client, delivery| client.masked_counts(delivery, &statistics).unwrap(),
                    |server| {
                        server.finish_counts().unwrap();
                    },
                )
            });
            println!(
                "| {weights} | {n} | {:.3} s | {:.3} s | {:.2} | {:.3} s | {:.3} | {:.3} s | {:.2} |",
                round.as_secs_f64(),
                with_signatures.as_secs_f64(),
                with_signatures.as_secs_f64() / round.as_secs_f64(),
                statistics.as_secs_f64(),
                statistics.as_secs_f64() / round.as_secs_f64(),
                with_noise.as_secs_f64(),
                with_noise.as_secs_f64() / round.as_secs_f64(),
            );
        }
    }
}
