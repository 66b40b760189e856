//! Secure-aggregation benchmark: mask generation and unmasking throughput per core for an 11M-parameter
//! vector (the protocol's generator, and every generator side by side, interleaved so that they meet the
//! same machine load), and the round overhead against plain FedAvg on the same vectors, as markdown
//! tables.
//!
//! With `FLWR_PYTHON` naming a Python that has `flwr` installed, the same run also times Flower's
//! SecAgg+ (`flower_secaggplus.py`, next to this file) on the same vector length and site counts and
//! prints the ratios, one core on each side; without it that part is skipped with a note.
//!
//! Then SecAgg+ (a random Harary graph, Bell et al. 2020) against the complete graph: per-site client
//! time, server time and bytes on the wire per site and per round at `SECAGGPLUS_BENCH_SITES` sites
//! (default 10,30,100; empty to skip), on a `SECAGGPLUS_BENCH_PARAMS`-element vector (default 1M so that
//! 100 sites finish in minutes on 2 cores), degree k = 2⌈log2 n⌉, one thread per party.
//!
//! Run with `cargo bench -p fedlnm-shared --bench secagg` (set `SECAGG_BENCH_SITES=3,10` to trim, or
//! `SECAGG_BENCH_SITES=` for the per-core tables alone), or
//! `FLWR_PYTHON=/tmp/flwr-venv/bin/python cargo bench -p fedlnm-shared --bench secagg`
//! (`SECAGG_FLOWER_REPEATS`, default 2: rounds per site count on each side of the comparison).
//! `SECAGG_BENCH_RING=z2_32` runs the rounds and the Flower comparison in Z_2^32 (Flower's ring)
//! instead of Z_2^64.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark harness: a panic is a failed run.

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fedlnm_shared::host::cpu_model;
use fedlnm_shared::secagg::prg::{Generator, MaskSeed, Sign, apply_masks, apply_masks_with};
use fedlnm_shared::secagg::quantize::{RoundingSource, quantize_weighted};
use fedlnm_shared::secagg::{
    QuantizationConfig, Ring, SecAggClient, SecAggConfig, SecAggServer, SiteId, tensor_specs,
};
use fedlnm_shared::weights::NamedTensors;

#[path = "secagg/plus.rs"]
mod plus;

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

/// The ring of the rounds: `SECAGG_BENCH_RING` (`z2_64`, the default, or `z2_32`).
fn bench_ring() -> Ring {
    match std::env::var("SECAGG_BENCH_RING").as_deref() {
        Ok("z2_32") => Ring::Z2_32,
        Ok("z2_64") | Err(_) => Ring::Z2_64,
        Ok(other) => panic!("SECAGG_BENCH_RING={other}: expected z2_64 or z2_32"),
    }
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
    /// `masked_input` of every site (opening the shares, checking the delta, quantizing, masking).
    clients: Vec<Duration>,
    /// The server adding the uploads.
    server_sum: Duration,
    /// The server's `finish`: rebuilding the self-mask seeds, removing the masks, decoding.
    server_unmask: Duration,
}

impl RoundTiming {
    fn slowest_client(&self) -> Duration {
        self.clients.iter().copied().max().unwrap_or_default()
    }
    fn fastest_client(&self) -> Duration {
        self.clients.iter().copied().min().unwrap_or_default()
    }
    fn server(&self) -> Duration {
        self.server_sum + self.server_unmask
    }
}

/// One full round of n sites on `delta`; `threads` limits every client and the server (None: all
/// available).
fn secagg_round(n: u32, delta: &NamedTensors, threads: Option<usize>) -> RoundTiming {
    let config = SecAggConfig {
        study_id: "bench".into(),
        round: 1,
        model_version: fedlnm_shared::secagg::ModelVersion::new("v1", 1),
        participants: (1..=n).map(SiteId).collect(),
        threshold: n as usize / 2 + 1,
        tensors: tensor_specs(delta),
        fedbn_exclude: vec![],
        quantization: QuantizationConfig::for_ring(bench_ring(), n as usize),
        max_delta_norm: 1e9,
        input: fedlnm_shared::secagg::InputKind::WeightedDelta,
        privacy: None,
        // Flower's SecAgg+ is semi-honest: compared like for like (privacy_costs measures the signatures).
        security: fedlnm_shared::secagg::Security::CuriousServer,
        graph: fedlnm_shared::secagg::Graph::Complete,
    }
    .validate()
    .unwrap();
    let mut server = SecAggServer::new(config.clone());
    let mut clients = Vec::new();
    for &site in config.participants() {
        let (mut client, msg) = SecAggClient::new(config.clone(), site).unwrap();
        if let Some(threads) = threads {
            client.set_threads(threads);
        }
        server.receive_keys(msg).unwrap();
        clients.push(client);
    }
    if let Some(threads) = threads {
        server.set_threads(threads);
    }
    let directory = server.close_keys().unwrap();
    for c in &mut clients {
        server.receive_shares(c.share_keys(&directory).unwrap()).unwrap();
    }
    let deliveries = server.close_shares().unwrap();
    let mut client_times = Vec::new();
    let mut server_sum = Duration::ZERO;
    for (c, d) in clients.iter_mut().zip(&deliveries) {
        let start = Instant::now();
        let upload = c.masked_input(d, delta, 1000).unwrap();
        client_times.push(start.elapsed());
        let start = Instant::now();
        server.receive_masked_input(upload).unwrap();
        server_sum += start.elapsed();
    }
    server.close_masked_inputs().unwrap();
    let request = server.close_consistency().unwrap();
    for c in &mut clients {
        server
            .receive_unmask_response(c.unmask(&request).unwrap())
            .unwrap();
    }
    let start = Instant::now();
    let aggregate = server.finish().unwrap();
    let server_unmask = start.elapsed();
    assert_eq!(aggregate.total_samples, 1000 * u64::from(n));
    RoundTiming {
        clients: client_times,
        server_sum,
        server_unmask,
    }
}

/// Our one-core figures for the primitives, reused by the Flower comparison.
struct Primitives {
    mask: Duration,
    quantize: Duration,
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
    let ring = bench_ring();
    let mut mask = Duration::ZERO;
    for each in [Ring::Z2_64, Ring::Z2_32] {
        let t = best_of(5, || apply_masks(&mut target, 0, &[(&seed, Sign::Add)], each, 1));
        println!(
            "| mask generation: {:?} PRG ({}) + add, {each} | {:.1} | {:.2} GB/s of mask |",
            Generator::PROTOCOL,
            Generator::PROTOCOL.backend(),
            t.as_secs_f64() * 1e3,
            gb_per_s(PARAMS * each.bytes(), t)
        );
        if each == ring {
            mask = t;
        }
    }
    let t = best_of(5, || {
        apply_masks(&mut target, 0, &[(&seed, Sign::Subtract)], Ring::Z2_64, 1)
    });
    println!(
        "| unmasking: one PRG stream subtracted | {:.1} | {:.2} GB/s of mask |",
        t.as_secs_f64() * 1e3,
        gb_per_s(bytes, t)
    );
    let mut rounding = RoundingSource::from_seed(&[1; 32]);
    let quantize = best_of(5, || {
        quantize_weighted(&values, 1000, 1_048_576.0, 32, &mut rounding, &mut target)
    });
    println!(
        "| quantization n·Δ → Z_2^64, stochastic rounding | {:.1} | {:.0} M elements/s |",
        quantize.as_secs_f64() * 1e3,
        PARAMS as f64 / quantize.as_secs_f64() / 1e6
    );
    if threads > 1 {
        let t = best_of(5, || {
            apply_masks(&mut target, 0, &[(&seed, Sign::Add)], Ring::Z2_64, threads)
        });
        println!(
            "| mask generation, {threads} threads | {:.1} | {:.2} GB/s |",
            t.as_secs_f64() * 1e3,
            gb_per_s(bytes, t)
        );
    }
    // What the server's unmasking does at 30 sites: 30 self masks subtracted in one pass.
    let seeds: Vec<MaskSeed> = (0..30u8).map(|i| MaskSeed::from_bytes([i; 32])).collect();
    let masks: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|s| (s, Sign::Subtract)).collect();
    for each in [Ring::Z2_64, Ring::Z2_32] {
        let t = best_of(3, || apply_masks(&mut target, 0, &masks, each, threads));
        println!(
            "| unmasking: 30 self masks, {threads} threads, {each} | {:.1} | {:.2} GB/s of mask |",
            t.as_secs_f64() * 1e3,
            gb_per_s(30 * PARAMS * each.bytes(), t)
        );
    }

    generator_comparison(&mut target);

    println!("\n### Round overhead vs plain FedAvg (same f32 vectors, same run, {ring})\n");
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
        let r = secagg_round(n, &delta, None);
        let critical = r.slowest_client() + r.server();
        let all_clients: Duration = r.clients.iter().sum();
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.1}x | {:.1}x |",
            plain.as_secs_f64() * 1e3,
            r.slowest_client().as_secs_f64() * 1e3,
            r.server().as_secs_f64() * 1e3,
            critical.as_secs_f64() / plain.as_secs_f64(),
            (all_clients + r.server()).as_secs_f64() / plain.as_secs_f64(),
        );
    }

    flower_comparison(&sites, &delta, &Primitives { mask, quantize });
    plus::secaggplus_tables();
}

/// Every mask generator, one core, PRG + add into a u64 vector: 7 passes, each timing every generator
/// once in turn, so that a burst of load on the machine hits all of them; the fastest pass of each.
fn generator_comparison(target: &mut [u64]) {
    const GENERATORS: [Generator; 2] = [Generator::ChaCha20, Generator::Aes128Ctr];
    let seed = MaskSeed::from_bytes([7; 32]);
    let mut best = [Duration::MAX; GENERATORS.len()];
    for _ in 0..7 {
        for (generator, best) in GENERATORS.iter().zip(&mut best) {
            let start = Instant::now();
            apply_masks_with(*generator, Ring::Z2_64, target, 0, &[(&seed, Sign::Add)], 1);
            black_box(&mut *target);
            *best = (*best).min(start.elapsed());
        }
    }
    let bytes = target.len() * 8;
    println!(
        "\n### Mask generators (1 thread, {} elements, PRG + add into u64, interleaved)\n",
        target.len()
    );
    println!("{}.\n", cpu_model());
    println!("| generator | backend | time (ms) | GB/s of mask | vs ChaCha20 |");
    println!("|---|---|---:|---:|---:|");
    for (generator, time) in GENERATORS.iter().zip(best) {
        let protocol = if *generator == Generator::PROTOCOL {
            " (protocol)"
        } else {
            ""
        };
        println!(
            "| {generator:?}{protocol} | {} | {:.1} | {:.2} | {:.2}x |",
            generator.backend(),
            time.as_secs_f64() * 1e3,
            gb_per_s(bytes, time),
            best[0].as_secs_f64() / time.as_secs_f64(),
        );
    }
}

/// Flower's SecAgg+ against ours, one core each, interleaved site count by site count so that both
/// sides meet the same machine load. Skipped with a note unless `FLWR_PYTHON` is set.
fn flower_comparison(sites: &[u32], delta: &NamedTensors, ours: &Primitives) {
    println!("\n### Against Flower's SecAgg+ (same vector, same site counts, same run, one core each)\n");
    let Some(python) = std::env::var_os("FLWR_PYTHON") else {
        println!(
            "Skipped: set FLWR_PYTHON to a Python with `flwr` installed (e.g. `python3 -m venv /tmp/flwr-venv && \
             /tmp/flwr-venv/bin/pip install flwr numpy`) to time Flower's SecAgg+ in the same run."
        );
        return;
    };
    let flower_run = |sites: &str, round_repeats: usize| -> serde_json::Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/flower_secaggplus.py");
        let output = Command::new(&python)
            .arg(script)
            .args(["--params", &PARAMS.to_string(), "--sites", sites])
            .args(["--round-repeats", &round_repeats.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("FLWR_PYTHON cannot be started");
        assert!(output.status.success(), "{script} failed: {}", output.status);
        serde_json::from_slice(&output.stdout).expect("flower_secaggplus.py prints one JSON object")
    };
    let secs = |v: &serde_json::Value| Duration::from_secs_f64(v.as_f64().expect("a number of seconds"));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |flower: Duration, ours: Duration| flower.as_secs_f64() / ours.as_secs_f64();

    let primitives = flower_run("", 1);
    let p = &primitives["primitives"];
    println!(
        "Flower {} (numpy {}, Python {}), its SecAggPlusWorkflow defaults (clip 8, quantization range 2^22, \
         modulus 2^32, max weight 1000); n_k = 1000 and the same delta on both sides. {}.\n",
        primitives["flwr"].as_str().unwrap_or("?"),
        primitives["numpy"].as_str().unwrap_or("?"),
        primitives["python"].as_str().unwrap_or("?"),
        cpu_model(),
    );
    let bytes = PARAMS * 8;
    println!("| operation ({PARAMS} elements, one core) | ours (ms) | Flower (ms) | Flower / ours |");
    println!("|---|---:|---:|---:|");
    let flower_mask = secs(&p["mask_add_s"]);
    println!(
        "| one mask, PRG + add (ours {:.2} GB/s, Flower {:.2} GB/s of 8-byte words) | {:.1} | {:.1} | {:.1}x |",
        gb_per_s(bytes, ours.mask),
        gb_per_s(bytes, flower_mask),
        ms(ours.mask),
        ms(flower_mask),
        ratio(flower_mask, ours.mask),
    );
    let flower_quantize = secs(&p["quantize_s"]);
    println!(
        "| weighting + clipping + stochastic quantization | {:.1} | {:.1} | {:.1}x |",
        ms(ours.quantize),
        ms(flower_quantize),
        ratio(flower_quantize, ours.quantize),
    );

    let repeats: usize = std::env::var("SECAGG_FLOWER_REPEATS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
        .max(1);
    println!(
        "\nPer-site masking: one site's upload work (ours: `masked_input`; Flower: `_collect_masked_vectors` \
         without its wire (de)serialization), fastest over the sites of {repeats} rounds (every site does the \
         same work). Unmasking: the server after the shares arrive (rebuild every self-mask seed, remove the \
         masks, decode). Sum: adding the uploads. Server figures: fastest of the {repeats} rounds. No site \
         drops out.\n"
    );
    println!(
        "| sites | masking, ours (ms) | Flower (ms) | Flower / ours | unmasking, ours (ms) | Flower (ms) | Flower / ours | sum of uploads, ours (ms) | Flower (ms) | Flower / ours |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for &n in sites {
        let rounds: Vec<RoundTiming> = (0..repeats).map(|_| secagg_round(n, delta, Some(1))).collect();
        let fastest = |f: fn(&RoundTiming) -> Duration| rounds.iter().map(f).min().unwrap_or_default();
        let (mask, unmask, sum) = (
            fastest(RoundTiming::fastest_client),
            fastest(|r| r.server_unmask),
            fastest(|r| r.server_sum),
        );
        let report = flower_run(&n.to_string(), repeats);
        let f = &report["rounds"][0];
        let (f_mask, f_unmask, f_sum) = (
            secs(&f["client_mask_min_s"]),
            secs(&f["server_unmask_s"]),
            secs(&f["server_sum_s"]),
        );
        println!(
            "| {n} | {:.0} | {:.0} | {:.1}x | {:.0} | {:.0} | {:.1}x | {:.0} | {:.0} | {:.1}x |",
            ms(mask),
            ms(f_mask),
            ratio(f_mask, mask),
            ms(unmask),
            ms(f_unmask),
            ratio(f_unmask, unmask),
            ms(sum),
            ms(f_sum),
            ratio(f_sum, sum),
        );
        notes.push(format!(
            "{n} sites: Flower's own `_collect_masked_vectors` (with (de)serialization) took {:.0} ms on one site and \
             gave the same masked vector bit for bit: {}; Flower's decoded average is within {:.1e} of the delta.",
            ms(secs(&f["client_stage_fn_s"])),
            f["stage_fn_matches"],
            f["max_abs_error"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
}
