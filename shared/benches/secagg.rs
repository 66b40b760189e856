//! Secure-aggregation benchmark: mask generation and unmasking throughput per core for an 11M-parameter
//! vector, and the round overhead against plain FedAvg on the same vectors, as a markdown table.
//!
//! Run with `cargo bench -p fedlnm-shared --bench secagg` (set `SECAGG_BENCH_SITES=3,10` to trim).
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark harness: a panic is a failed run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fedlnm_shared::secagg::prg::{MaskSeed, Sign, apply_masks};
use fedlnm_shared::secagg::quantize::{RoundingSource, quantize_weighted};
use fedlnm_shared::secagg::{
    QuantizationConfig, SecAggClient, SecAggConfig, SecAggServer, SiteId, TensorSpec,
};
use fedlnm_shared::weights::NamedTensors;

const PARAMS: usize = 11_000_000;

fn best_of<T>(repeats: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn gb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Plain FedAvg of the same f32 vectors: Σ n_k Δ_k / Σ n_k with an f64 accumulator, one core.
fn plain_fedavg(deltas: &[&[f32]], weights: &[u64]) -> Vec<f32> {
    let mut acc = vec![0f64; deltas[0].len()];
    for (d, &w) in deltas.iter().zip(weights) {
        let w = w as f64;
        for (a, &x) in acc.iter_mut().zip(d.iter()) {
            *a += w * f64::from(x);
        }
    }
    let total: u64 = weights.iter().sum();
    acc.iter().map(|&a| (a / total as f64) as f32).collect()
}

struct RoundTiming {
    one_client: Duration,
    all_clients: Duration,
    server: Duration,
}

fn secagg_round(n: u32, delta: &NamedTensors) -> RoundTiming {
    let config = SecAggConfig {
        study_id: "bench".into(),
        round: 1,
        model_version: "v1".into(),
        participants: (1..=n).map(SiteId).collect(),
        threshold: n as usize / 2 + 1,
        tensors: vec![TensorSpec {
            name: "w".into(),
            shape: vec![PARAMS],
        }],
        fedbn_exclude: vec![],
        quantization: QuantizationConfig::default(),
        max_delta_norm: 1e9,
    }
    .validate()
    .unwrap();
    let mut server = SecAggServer::new(config.clone());
    let mut clients = Vec::new();
    let mut server_time = Duration::ZERO;
    for &site in config.participants() {
        let (client, msg) = SecAggClient::new(config.clone(), site).unwrap();
        server.receive_keys(msg).unwrap();
        clients.push(client);
    }
    let directory = server.close_keys().unwrap();
    for c in &mut clients {
        server.receive_shares(c.share_keys(&directory).unwrap()).unwrap();
    }
    let deliveries = server.close_shares().unwrap();
    let (mut one_client, mut all_clients) = (Duration::ZERO, Duration::ZERO);
    for (c, d) in clients.iter_mut().zip(&deliveries) {
        let start = Instant::now();
        let upload = c.masked_input(d, delta, 1000).unwrap();
        let t = start.elapsed();
        one_client = one_client.max(t);
        all_clients += t;
        let start = Instant::now();
        server.receive_masked_input(upload).unwrap();
        server_time += start.elapsed();
    }
    let request = server.close_masked_inputs().unwrap();
    for c in &mut clients {
        server
            .receive_unmask_response(c.unmask(&request).unwrap())
            .unwrap();
    }
    let start = Instant::now();
    let aggregate = server.finish().unwrap();
    server_time += start.elapsed();
    assert_eq!(aggregate.total_samples, 1000 * u64::from(n));
    RoundTiming {
        one_client,
        all_clients,
        server: server_time,
    }
}

fn main() {
    let sites: Vec<u32> = std::env::var("SECAGG_BENCH_SITES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 10, 30]);
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let values: Vec<f32> = (0..PARAMS).map(|i| ((i % 2001) as f32 - 1000.0) * 1e-6).collect();
    let bytes = PARAMS * 8;

    println!("## Secure aggregation, {PARAMS} parameters ({threads} hardware threads available)\n");
    println!("### Per core (1 thread)\n");
    println!("| operation | time (ms) | throughput |");
    println!("|---|---:|---:|");
    let seed = MaskSeed::from_bytes([7; 32]);
    let mut target = vec![0u64; PARAMS];
    let t = best_of(5, || apply_masks(&mut target, 0, &[(&seed, Sign::Add)], 1));
    println!(
        "| mask generation: ChaCha20 PRG + add, Z_2^64 | {:.1} | {:.2} GB/s of mask |",
        t.as_secs_f64() * 1e3,
        gb_per_s(bytes, t)
    );
    let t = best_of(5, || apply_masks(&mut target, 0, &[(&seed, Sign::Subtract)], 1));
    println!(
        "| unmasking: one PRG stream subtracted | {:.1} | {:.2} GB/s of mask |",
        t.as_secs_f64() * 1e3,
        gb_per_s(bytes, t)
    );
    let mut rounding = RoundingSource::from_seed(&[1; 32]);
    let t = best_of(5, || {
        quantize_weighted(&values, 1000, 1_048_576.0, 32, &mut rounding, &mut target)
    });
    println!(
        "| quantization n·Δ → Z_2^64, stochastic rounding | {:.1} | {:.0} M elements/s |",
        t.as_secs_f64() * 1e3,
        PARAMS as f64 / t.as_secs_f64() / 1e6
    );
    if threads > 1 {
        let t = best_of(5, || apply_masks(&mut target, 0, &[(&seed, Sign::Add)], threads));
        println!(
            "| mask generation, {threads} threads | {:.1} | {:.2} GB/s |",
            t.as_secs_f64() * 1e3,
            gb_per_s(bytes, t)
        );
    }

    println!("\n### Round overhead vs plain FedAvg (same f32 vectors, same run)\n");
    println!(
        "Plain FedAvg: Σ n_k Δ_k / Σ n_k over the sites' f32 vectors, one core. SecAgg client: quantize +"
    );
    println!(
        "1 self mask + (n−1) pairwise masks, {threads} threads; clients run in parallel at their sites, so a"
    );
    println!(
        "round's critical path is one client plus the server (sum of uploads + unmasking + decoding).\n"
    );
    println!(
        "| sites | plain FedAvg (ms) | one client (ms) | server (ms) | critical path / plain | all clients + server / plain |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let delta = NamedTensors::from_vectors([("w", values.clone())]);
    for &n in &sites {
        let deltas: Vec<&[f32]> = (0..n).map(|_| values.as_slice()).collect();
        let weights = vec![1000u64; n as usize];
        let plain = best_of(3, || plain_fedavg(&deltas, &weights));
        let r = secagg_round(n, &delta);
        let critical = r.one_client + r.server;
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.1}x | {:.1}x |",
            plain.as_secs_f64() * 1e3,
            r.one_client.as_secs_f64() * 1e3,
            r.server.as_secs_f64() * 1e3,
            critical.as_secs_f64() / plain.as_secs_f64(),
            (r.all_clients + r.server).as_secs_f64() / plain.as_secs_f64(),
        );
    }
}
