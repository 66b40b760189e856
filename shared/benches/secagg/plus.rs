//! SecAgg+ (random Harary graph) against the complete graph: per-site client time, server time and
//! bytes on the wire, and the same graph in Flower's SecAgg+ when `FLWR_PYTHON` is set.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fedlnm_shared::secagg::{
    Graph, InputKind, ModelVersion, QuantizationConfig, RoundConfig, SecAggClient, SecAggConfig,
    SecAggServer, Security, SiteId, check_harary_parameters, tensor_specs,
};
use fedlnm_shared::weights::NamedTensors;

/// The declared fractions of the bench's Harary instances.
const DROPOUT_FRACTION: f64 = 0.05;
const CORRUPT_FRACTION: f64 = 0.05;

/// Bytes of a message in the protocol's payload encoding (bincode, standard, fixed-width integers).
fn wire<T: serde::Serialize>(message: &T) -> usize {
    bincode::serde::encode_to_vec(message, bincode::config::standard().with_fixed_int_encoding())
        .map(|b| b.len())
        .unwrap_or(0)
}

/// k = 2⌈log2 n⌉ and the least per-neighbourhood t that the declared fractions allow (curious server).
pub fn harary_for(n: usize) -> (usize, usize) {
    let degree = 2 * (usize::BITS - (n - 1).leading_zeros()) as usize;
    let members = degree.min(n - 1) + 1;
    let threshold = (members / 2 + 1..=members)
        .find(|&t| check_harary_parameters(n, degree, t, DROPOUT_FRACTION, CORRUPT_FRACTION, false).is_ok())
        .expect("a threshold for the bench's fractions");
    (degree, threshold)
}

fn config(n: u32, graph: Graph, threshold: usize, delta: &NamedTensors) -> RoundConfig {
    SecAggConfig {
        study_id: "bench".into(),
        round: 1,
        model_version: ModelVersion::new("v1", 1),
        participants: (1..=n).map(SiteId).collect(),
        threshold,
        tensors: tensor_specs(delta),
        fedbn_exclude: vec![],
        quantization: QuantizationConfig::for_ring(super::bench_ring(), n as usize),
        max_delta_norm: 1e9,
        input: InputKind::WeightedDelta,
        privacy: None,
        security: Security::CuriousServer,
        graph,
    }
    .validate()
    .unwrap()
}

#[derive(Default)]
struct Measured {
    /// Per-site means: keys (round 0), shares (round 1), masking (round 2), unmask response (round 4).
    keys: Duration,
    shares: Duration,
    masking: Duration,
    unmask: Duration,
    server_sum: Duration,
    server_unmask: Duration,
    /// Every other server step (closing stages, routing shares, checking responses).
    server_other: Duration,
    /// Per-site means, bytes: sent and received, without and with the masked vector.
    sent: usize,
    received: usize,
    masked_vector: usize,
    sites: usize,
}

fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *total += start.elapsed();
    out
}

fn round(config: &RoundConfig, delta: &NamedTensors) -> Measured {
    let mut m = Measured {
        sites: config.participants().len(),
        ..Measured::default()
    };
    let mut server = SecAggServer::new(config.clone());
    server.set_threads(1);
    let mut clients = Vec::new();
    for &site in config.participants() {
        let (mut client, msg) = timed(&mut m.keys, || SecAggClient::new(config.clone(), site).unwrap());
        client.set_threads(1);
        m.sent += wire(&msg);
        timed(&mut m.server_other, || server.receive_keys(msg).unwrap());
        clients.push(client);
    }
    let directory = timed(&mut m.server_other, || server.close_keys().unwrap());
    for c in &mut clients {
        let mine = timed(&mut m.server_other, || directory.for_site(config, c.site()));
        m.received += wire(&mine);
        let shares = timed(&mut m.shares, || c.share_keys(&mine).unwrap());
        m.sent += wire(&shares);
        timed(&mut m.server_other, || server.receive_shares(shares).unwrap());
    }
    let deliveries = timed(&mut m.server_other, || server.close_shares().unwrap());
    for (c, d) in clients.iter_mut().zip(&deliveries) {
        m.received += wire(d);
        let upload = timed(&mut m.masking, || c.masked_input(d, delta, 1000).unwrap());
        m.masked_vector += wire(&upload);
        timed(&mut m.server_sum, || server.receive_masked_input(upload).unwrap());
    }
    let check = timed(&mut m.server_other, || server.close_masked_inputs().unwrap());
    let _ = check;
    let request = timed(&mut m.server_other, || server.close_consistency().unwrap());
    for c in &mut clients {
        m.received += wire(&request);
        let response = timed(&mut m.unmask, || c.unmask(&request).unwrap());
        m.sent += wire(&response);
        timed(&mut m.server_other, || {
            server.receive_unmask_response(response).unwrap()
        });
    }
    let aggregate = timed(&mut m.server_unmask, || server.finish().unwrap());
    assert_eq!(aggregate.total_samples, 1000 * m.sites as u64);
    let n = m.sites as u32;
    for d in [&mut m.keys, &mut m.shares, &mut m.masking, &mut m.unmask] {
        *d /= n;
    }
    m.sent /= m.sites;
    m.received /= m.sites;
    m.masked_vector /= m.sites;
    m
}

pub fn secaggplus_tables() {
    let sites: Vec<u32> = std::env::var("SECAGGPLUS_BENCH_SITES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 30, 100]);
    if sites.is_empty() {
        return;
    }
    let params: usize = std::env::var("SECAGGPLUS_BENCH_PARAMS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1_000_000);
    let values: Vec<f32> = (0..params).map(|i| ((i % 2001) as f32 - 1000.0) * 1e-6).collect();
    let delta = NamedTensors::from_vectors([("w", values)]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let kb = |b: usize| b as f64 / 1024.0;

    println!("\n### SecAgg+ (random Harary graph) against the complete graph, {params} parameters\n");
    println!(
        "Curious server, no dropout, one thread per party, all parties in this process. SecAgg+: k = 2⌈log2 n⌉, t the \
         least per-neighbourhood threshold that passes Bell et al.'s checks for δ = γ = {DROPOUT_FRACTION}. Client \
         columns are per-site means; the server's are per round. Bytes: bincode (standard, fixed-width integers, the \
         protocol's payload encoding) of every message a site sends and receives (the key directory is its two-hop \
         neighbourhood's, `KeyDirectory::for_site`); the masked vector ({:.1} KiB) separately.\n",
        kb(params * 8 + 8 + 60)
    );
    println!(
        "| sites | graph | k | t | keys (ms) | shares (ms) | masking (ms) | unmask response (ms) | client total (ms) | server sum (ms) | server unmask (ms) | server other (ms) | site sends, protocol (KiB) | site receives (KiB) | round, protocol (KiB) | round with vectors (MiB) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sites {
        let (k, t) = harary_for(n as usize);
        let mut rows = vec![(
            "SecAgg+",
            Graph::Harary {
                degree: k,
                dropout_fraction: DROPOUT_FRACTION,
                corrupt_fraction: CORRUPT_FRACTION,
            },
            k.min(n as usize - 1),
            t,
        )];
        if n <= 30 {
            rows.insert(
                0,
                ("complete", Graph::Complete, n as usize - 1, n as usize / 2 + 1),
            );
        }
        for (name, graph, k, t) in rows {
            let m = round(&config(n, graph, t, &delta), &delta);
            let client = m.keys + m.shares + m.masking + m.unmask;
            let protocol_round = (m.sent + m.received) * m.sites;
            let with_vectors = protocol_round + m.masked_vector * m.sites;
            println!(
                "| {n} | {name} | {k} | {t} | {:.2} | {:.2} | {:.1} | {:.3} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} |",
                ms(m.keys),
                ms(m.shares),
                ms(m.masking),
                ms(m.unmask),
                ms(client),
                ms(m.server_sum),
                ms(m.server_unmask),
                ms(m.server_other),
                kb(m.sent),
                kb(m.received),
                kb(protocol_round),
                with_vectors as f64 / 1024.0 / 1024.0,
            );
        }
    }
    flower_same_graph(&sites, params);
}

/// Flower's SecAgg+ with the same graph: `num_shares` = k + 1, `reconstruction_threshold` = t.
fn flower_same_graph(sites: &[u32], params: usize) {
    println!(
        "\n#### Flower's SecAgg+ on the same graph (num_shares = k + 1, reconstruction_threshold = t)\n"
    );
    let Some(python) = std::env::var_os("FLWR_PYTHON") else {
        println!("Skipped: set FLWR_PYTHON to a Python with `flwr` installed.");
        return;
    };
    println!(
        "| sites | k | t | Flower masking, one site (ms) | Flower unmasking, server (ms) | Flower sum of uploads (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in sites {
        let (k, t) = harary_for(n as usize);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/flower_secaggplus.py");
        let output = Command::new(&python)
            .arg(script)
            .args(["--params", &params.to_string(), "--sites", &n.to_string()])
            .args(["--round-repeats", "1"])
            .args(["--num-shares", &(k.min(n as usize - 1) + 1).to_string()])
            .args(["--reconstruction-threshold", &t.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("FLWR_PYTHON cannot be started");
        assert!(output.status.success(), "{script} failed: {}", output.status);
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("flower_secaggplus.py prints one JSON object");
        let f = &report["rounds"][0];
        let ms = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN) * 1e3;
        println!(
            "| {n} | {k} | {t} | {:.0} | {:.0} | {:.0} |",
            ms(&f["client_mask_min_s"]),
            ms(&f["server_unmask_s"]),
            ms(&f["server_sum_s"]),
        );
    }
}
