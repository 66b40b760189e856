//! Aggregator round cost: time per round and bytes on the wire for 1M / 11M / 25M parameters and
//! 3 / 10 / 30 sites, against a plain memory-copy bound of the same upload bytes measured in the same run.
//!
//! Nodes are simulated by fixed, deterministic pseudo-random deltas, serialized as exactly what a node
//! uploads (safetensors of Δ_k for plain FedAvg; the wire-encoded `MaskedInput` for secure
//! aggregation). The aggregator's own work is timed as a round does it: `PlainAggregation::accept_upload`
//! for every site (parse, layout and finiteness checks; uploads held and summed in groups), `advance`
//! (the average), `apply_delta`, `ModelBlob::new` (serialization and SHA-256), the checks made on arrival
//! and, in its own column, the atomic `RoundStore::commit` into a temporary folder (fsync included). Secure aggregation times the server
//! side only (`SecureAggregation` fed pre-computed site messages, recorded from one untimed round with
//! real `SecAggClient`s and replayed into fresh instances).
//!
//! Run with `cargo bench -p fedlnm-aggregator --bench rounds`. Trim with `ROUNDS_BENCH_PARAMS=1,11`
//! (millions), `ROUNDS_BENCH_SITES=3,10` and `ROUNDS_BENCH_SECURE=11` (millions; `none` to skip);
//! `ROUNDS_BENCH_DIR` chooses the folder the commits go to (default: the system's temporary folder);
//! `ROUNDS_BENCH_THREADS=1` limits the plain accumulation to one thread (default: all available);
//! `ROUNDS_BENCH_HELD=4,all` the uploads a plain round holds before summing them (default: 4, the
//! study's default `rounds.max_concurrent_uploads`, and all); `ROUNDS_BENCH_REPEATS` the plain runs;
//! `ROUNDS_BENCH_RING=z2_64,z2_32` the rings of the secure rounds (`rounds.secure_aggregation_ring`;
//! default both).
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark harness: a panic is a failed run.

#[path = "../tests/support/in_memory.rs"]
mod in_memory;
use in_memory::{pending, ready, reply};

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedlnm_aggregator::aggregation::{Aggregation, PlainAggregation, RoundAggregate, Upload};
use fedlnm_aggregator::store::{ModelBlob, RoundStore};
use fedlnm_protocol::payload::{decode, encode};
use fedlnm_protocol::transfer::{UploadChecksum, chunks, upload_checksum};
use fedlnm_protocol::{RoundAggregation, SecAggStage, UpdateFormat};
use fedlnm_shared::config::{AggregatorConfig, RoundSettings};
use fedlnm_shared::federation::fedavg::{HeldBytes, apply_delta};
use fedlnm_shared::federation::{AggregationKind, RoundRecord};
use fedlnm_shared::host::{cpu_model, load_average};
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::secagg::{KeyDirectory, Ring, SecAggClient, ShareDelivery, UnmaskRequest};
use fedlnm_shared::weights::scan::{FiniteScan, ScanReport};
use fedlnm_shared::weights::{NamedTensor, NamedTensors, sha256_hex};

const MILLION: usize = 1_000_000;
const STUDY: &str = "bench";
/// Patients per site (n_k); only the weights of the average depend on it.
const N_SAMPLES: u64 = 1000;

fn main() {
    let params = env_list("ROUNDS_BENCH_PARAMS", &[1, 11, 25]);
    let sites = env_list("ROUNDS_BENCH_SITES", &[3, 10, 30]);
    let secure_params = match std::env::var("ROUNDS_BENCH_SECURE").as_deref() {
        Ok("none") => Vec::new(),
        _ => env_list("ROUNDS_BENCH_SECURE", &[1, 11]),
    };
    let max_sites = sites.iter().copied().max().unwrap_or(0);
    // Uploads held before they are summed: the study holds `rounds.max_concurrent_uploads` (default
    // 4); "all" (usize::MAX) holds a whole round, summed in one pass.
    let held_settings: Vec<usize> = std::env::var("ROUNDS_BENCH_HELD")
        .unwrap_or_else(|_| "4,all".to_owned())
        .split(',')
        .map(|x| match x.trim() {
            "all" => usize::MAX,
            x => x.parse().expect("ROUNDS_BENCH_HELD: numbers or 'all'"),
        })
        .collect();
    let rings: Vec<Ring> = std::env::var("ROUNDS_BENCH_RING")
        .unwrap_or_else(|_| "z2_64,z2_32".to_owned())
        .split(',')
        .map(|x| match x.trim() {
            "z2_64" => Ring::Z2_64,
            "z2_32" => Ring::Z2_32,
            other => panic!("ROUNDS_BENCH_RING: z2_64 or z2_32, not {other}"),
        })
        .collect();
    let commit_root = std::env::var_os("ROUNDS_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);

    println!("## Aggregator round cost\n");
    println!(
        "{}; {} hardware threads; load average at start {}; commits to {}.\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        load_average(),
        commit_root.display()
    );

    let mut plain_rows = Vec::new();
    let mut secure_rows = Vec::new();
    for &millions in &params {
        let layout = model_layout(millions * MILLION);
        let global = ModelBlob::new(0, layout_values(&layout, 0), ModelConfig::resnet18()).unwrap();
        // Every site's upload, made once per size; the first n serve the n-site rounds.
        let payloads: Vec<Arc<Vec<u8>>> = (1..=max_sites)
            .map(|k| {
                Arc::new(
                    layout_values(&layout, k as u64)
                        .to_safetensors_bytes(&BTreeMap::new())
                        .unwrap(),
                )
            })
            .collect();
        for &n in &sites {
            let repeats = plain_repeats(millions, n);
            for &held in &held_settings {
                plain_rows.push(plain_round(&global, &payloads[..n], held, repeats, &commit_root));
            }
        }
        drop(payloads);
        if secure_params.contains(&millions) {
            for &n in &sites {
                let plain = |held: usize| {
                    plain_rows
                        .iter()
                        .find(|r: &&PlainRow| {
                            r.params == global.weights.n_values() && r.sites == n && r.held == held
                        })
                        .map(|r| r.aggregate)
                };
                for &ring in &rings {
                    secure_rows.extend(secure_round(&global, n, ring, 3, &held_settings, plain));
                }
            }
        }
    }

    print_plain(&plain_rows);
    print_secure(&secure_rows);
    println!("\nLoad average at the end: {}.", load_average());
}

// ---------------------------------------------------------------------------------------------------
// Plain FedAvg
// ---------------------------------------------------------------------------------------------------

struct PlainRow {
    params: usize,
    /// Uploads held before they are summed (`usize::MAX`: all of them).
    held: usize,
    tensors: usize,
    sites: usize,
    repeats: usize,
    upload_bytes: usize,
    model_bytes: usize,
    /// accept_upload × n + advance + apply_delta + ModelBlob::new (median).
    aggregate: Duration,
    commit: Duration,
    memcpy: Duration,
    /// Where the aggregate time goes (medians of each part).
    accept: Duration,
    /// The first `accept_upload` alone: it also touches the fresh f64 accumulator first.
    first_upload: Duration,
    average: Duration,
    apply: Duration,
    serialize: Duration,
    model_sha: Duration,
    /// The checks made as uploads arrive (XXH3-128 checksum, value scan), and the uploads' SHA-256 (the digest
    /// uploads carried before, for comparison).
    upload_checksums: Duration,
    upload_sha: Duration,
}

/// One plain FedAvg round on the aggregator, `repeats` times, interleaved with the memory-copy
/// bound of the same upload bytes so that both meet the same machine load.
fn plain_round(
    global: &ModelBlob,
    payloads: &[Arc<Vec<u8>>],
    held: usize,
    repeats: usize,
    commit_root: &std::path::Path,
) -> PlainRow {
    let n = payloads.len();
    let names = site_names(n);
    let upload_bytes: usize = payloads.iter().map(|p| p.len()).sum();
    let largest = payloads.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut copy_target = vec![1u8; largest];
    copy_all(payloads, &mut copy_target); // warm: the target's pages are mapped and touched

    let dir = tempfile::tempdir_in(commit_root).unwrap();
    let store = RoundStore::open(dir.path()).unwrap();
    let mut runs = Vec::new();
    for rep in 0..repeats {
        let start = Instant::now();
        copy_all(payloads, &mut copy_target);
        let memcpy = start.elapsed();

        // What the gRPC service does as each upload arrives, chunk by chunk while the chunk is in the
        // cache: its XXH3-128 checksum and the scan of its values (one upload per task, on the
        // runtime's worker threads).
        let start = Instant::now();
        let scans = upload_digests(payloads, receive_checks);
        let receipt = start.elapsed();

        let start = Instant::now();
        let mut aggregation = PlainAggregation::new(
            &global.weights,
            |_| true,
            names.iter().cloned(),
            n / 2 + 1,
            Instant::now() + Duration::from_secs(3600),
        );
        if let Some(threads) = env_list("ROUNDS_BENCH_THREADS", &[]).first() {
            aggregation.set_threads(*threads);
        }
        aggregation.set_max_held(held);
        let mut first_upload = Duration::ZERO;
        for ((site, payload), (_, scan)) in names.iter().zip(payloads).zip(&scans) {
            let upload = Upload {
                site,
                format: UpdateFormat::SafetensorsDelta,
                n_samples: N_SAMPLES,
                payload: Arc::clone(payload) as HeldBytes,
                scan: Some(*scan),
            };
            aggregation.accept_upload(&upload).unwrap();
            if first_upload.is_zero() {
                first_upload = start.elapsed();
            }
        }
        let accepted = Instant::now();
        let mut aggregate = ready(aggregation.advance(Instant::now()));
        let averaged = Instant::now();
        let weights =
            apply_delta(&global.weights, std::mem::take(&mut aggregate.average_delta), 1.0).unwrap();
        let applied = Instant::now();
        let model = ModelBlob::new(rep as u64 + 1, weights, global.config.clone()).unwrap();
        let serialized = Instant::now();
        let round_record = record(&model, AggregationKind::Plain, &aggregate);
        let before_commit = Instant::now();
        store.commit(&round_record, &model).unwrap();
        let commit = before_commit.elapsed();

        // Digests on their own: the new model's SHA-256, and the uploads' SHA-256 (the digest uploads
        // carried before XXH3-128) for comparison.
        let model_sha = time(|| sha256_hex(&model.bytes));
        let upload_sha = time(|| upload_digests(payloads, sha256_hex));
        let upload_checksums = receipt;
        runs.push([
            memcpy,
            serialized - start,
            commit,
            accepted - start,
            first_upload,
            averaged - accepted,
            applied - averaged,
            serialized - applied,
            model_sha,
            upload_checksums,
            upload_sha,
        ]);
        // Keep the folder small: only the last round stays on disk.
        if rep > 0 {
            std::fs::remove_dir_all(store.round_dir(rep as u64)).unwrap();
        }
    }
    let median_of = |i: usize| median(runs.iter().map(|r| r[i]).collect());
    let row = PlainRow {
        params: global.weights.n_values(),
        held,
        tensors: global.weights.tensors.len(),
        sites: n,
        repeats,
        upload_bytes,
        model_bytes: global.bytes.len(),
        memcpy: median_of(0),
        aggregate: median_of(1),
        commit: median_of(2),
        accept: median_of(3),
        first_upload: median_of(4),
        average: median_of(5),
        apply: median_of(6),
        serialize: median_of(7),
        model_sha: median_of(8),
        upload_checksums: median_of(9),
        upload_sha: median_of(10),
    };
    eprintln!(
        "plain {} params x {n} sites: {:.0} ms aggregate, {:.0} ms commit, {:.1} ms memcpy ({repeats} runs)",
        row.params,
        ms(row.aggregate),
        ms(row.commit),
        ms(row.memcpy)
    );
    row
}

/// What the service computes as an upload arrives, in 1 MiB chunks: its checksum, as it travels in
/// the header, and the scan of its values.
fn receive_checks(payload: &[u8]) -> (String, ScanReport) {
    let mut checksum = UploadChecksum::new();
    let mut scan = FiniteScan::new();
    for (_, chunk) in chunks(payload) {
        checksum.update(chunk);
        scan.update(chunk);
    }
    let checksum = checksum.finish();
    debug_assert_eq!(checksum, upload_checksum(payload));
    (checksum, scan.finish())
}

/// `digest` of every upload, the uploads spread over the available threads as the gRPC service's
/// worker threads receive them.
fn upload_digests<T: Send>(payloads: &[Arc<Vec<u8>>], digest: fn(&[u8]) -> T) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let per_thread = payloads.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = payloads
            .chunks(per_thread)
            .map(|part| scope.spawn(move || part.iter().map(|p| digest(p)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// The memory-copy bound: every upload's bytes copied once into a warm buffer, one thread.
fn copy_all(payloads: &[Arc<Vec<u8>>], target: &mut [u8]) {
    for payload in payloads {
        target[..payload.len()].copy_from_slice(payload);
        black_box(&*target);
    }
}

fn print_plain(rows: &[PlainRow]) {
    println!("### Plain FedAvg round (aggregator side, on the available threads)\n");
    println!(
        "Aggregate = `accept_upload` for every site (read in place, checks, held and summed `held` at a time on the available \
         threads) + `advance` (average) + `apply_delta` + `ModelBlob::new` (serialize + SHA-256). Upload \
         checks = what the gRPC service computes chunk by chunk as each upload arrives (its XXH3-128 checksum \
         and the scan of its values, which `accept_upload` then need not read again), uploads spread over the \
         available threads. Commit = `RoundStore::commit` (write, fsync, \
         rename, fsync). Memcpy bound = `copy_from_slice` of the same total upload bytes, one thread, warm \
         buffers. Download = model size × (n training downloads + (n + 1) validation downloads, one \
         validation-only site). Medians of the runs shown; MB = 10^6 bytes.\n"
    );
    println!(
        "| params | sites | held | runs | upload MB | download MB | aggregate + apply + serialize (ms) | upload checks (ms) | commit (ms) | memcpy bound (ms) | ratio | ratio with upload checks | ratio with upload checks and commit |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1}× | {:.1}× | {:.1}× |",
            params_label(r.params),
            r.sites,
            held_label(r.held),
            r.repeats,
            mb(r.upload_bytes),
            mb(r.model_bytes * (2 * r.sites + 1)),
            ms(r.aggregate),
            ms(r.upload_checksums),
            ms(r.commit),
            ms(r.memcpy),
            r.aggregate.as_secs_f64() / r.memcpy.as_secs_f64(),
            (r.aggregate + r.upload_checksums).as_secs_f64() / r.memcpy.as_secs_f64(),
            (r.aggregate + r.upload_checksums + r.commit).as_secs_f64() / r.memcpy.as_secs_f64(),
        );
    }
    if let Some(r) = rows.first() {
        println!(
            "\nModels: {} tensors of varied shapes (a ResNet-like image tower, a report embedding, a fusion \
             layer and a head); exact parameter counts {}.",
            r.tensors,
            rows.iter()
                .map(|r| r.params)
                .collect::<std::collections::BTreeSet<_>>()
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("\n#### Where the plain round's time goes (ms, medians)\n");
    println!(
        "`accept_upload` reads each upload's header in place (layout check; the values' finiteness comes from the \
         scan made on arrival) and holds it; every `held` uploads are summed together, block by block, into \
         an f64 running sum on the available threads (the first written, not added, into fresh pages); the \
         average sums the uploads still held straight into the f32 average. Upload checks is the column above \
         (XXH3-128 and value scan, chunk by chunk); upload SHA-256, the digest uploads carried before, is \
         shown for comparison.\n"
    );
    println!(
        "| params | sites | held | accept_upload × n | of which the first | average | apply_delta | serialize + SHA-256 | of which SHA-256 | upload checks | upload SHA-256 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            params_label(r.params),
            r.sites,
            held_label(r.held),
            ms(r.accept),
            ms(r.first_upload),
            ms(r.average),
            ms(r.apply),
            ms(r.serialize),
            ms(r.model_sha),
            ms(r.upload_checksums),
            ms(r.upload_sha),
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Secure aggregation (server side)
// ---------------------------------------------------------------------------------------------------

/// What every site sends in one secure round, in stage order, encoded as on the wire.
struct SiteMessages {
    advertise: Vec<u8>,
    share_keys: Vec<u8>,
    masked_input: Arc<Vec<u8>>,
    unmask_response: Vec<u8>,
}

struct SecureRow {
    params: usize,
    sites: usize,
    ring: Ring,
    /// Masked inputs held before they are summed (`rounds.max_concurrent_uploads`; `usize::MAX`: all).
    held: usize,
    repeats: usize,
    /// Σ masked inputs, and Σ of the other protocol messages the sites send.
    masked_bytes: usize,
    protocol_up_bytes: usize,
    /// The server's replies (key directory, share deliveries, unmask requests), all sites.
    protocol_down_bytes: usize,
    model_bytes: usize,
    /// Every `SecureAggregation` call of the round (keys to decoded average), median.
    server: Duration,
    sum: Duration,
    unmask: Duration,
    /// apply_delta + ModelBlob::new after it, median.
    apply_serialize: Duration,
    memcpy: Duration,
    /// The plain round's aggregate with the same uploads held.
    plain: Option<Duration>,
    /// The untimed recording round (clients and server), for the record.
    recording: Duration,
    max_error: f32,
}

/// One secure round of `n` sites: recorded once with real clients (untimed), then the server side
/// replayed `repeats` times into fresh `SecureAggregation`s.
/// The secure round of `n` sites, recorded once and replayed `repeats` times for each number of
/// masked inputs held before they are summed.
fn secure_round(
    global: &ModelBlob,
    n: usize,
    ring: Ring,
    repeats: usize,
    held_settings: &[usize],
    plain: impl Fn(usize) -> Option<Duration>,
) -> Vec<SecureRow> {
    let names = site_names(n);
    let mut config = aggregator_config(&names);
    config.rounds.secure_aggregation_ring = ring;
    let layout: Vec<(String, Vec<usize>)> = global
        .weights
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();

    let started = Instant::now();
    let (messages, reference) = record_secure_round(&config, global, &names, &layout);
    let recording = started.elapsed();
    let largest = messages.iter().map(|m| m.masked_input.len()).max().unwrap_or(0);
    let mut copy_target = vec![1u8; largest];
    copy_masked(&messages, &mut copy_target); // warm, as for plain

    let mut rows = Vec::new();
    for &held in held_settings {
        let mut config = config.clone();
        config.rounds.max_concurrent_uploads = held.min(1024);
        let mut runs = Vec::new();
        let mut protocol_down_bytes = 0;
        let mut max_error = 0f32;
        for _ in 0..repeats {
            let start = Instant::now();
            let mut aggregation = in_memory::open_secure(&config, global, &names);
            let mut down = 0;
            for (site, m) in names.iter().zip(&messages) {
                aggregation
                    .accept_message(site, SecAggStage::AdvertiseKeys, &m.advertise)
                    .unwrap();
            }
            pending(aggregation.advance(Instant::now()));
            for (site, m) in names.iter().zip(&messages) {
                down += reply(&aggregation, site, SecAggStage::AdvertiseKeys).len();
                aggregation
                    .accept_message(site, SecAggStage::ShareKeys, &m.share_keys)
                    .unwrap();
            }
            pending(aggregation.advance(Instant::now()));
            let before_sum = Instant::now();
            for (site, m) in names.iter().zip(&messages) {
                down += reply(&aggregation, site, SecAggStage::ShareKeys).len();
                let upload = Upload {
                    site,
                    format: UpdateFormat::MaskedInput,
                    n_samples: N_SAMPLES,
                    payload: Arc::clone(&m.masked_input) as HeldBytes,
                    scan: None,
                };
                aggregation.accept_upload(&upload).unwrap();
            }
            // Closing the stage sums the inputs still held.
            pending(aggregation.advance(Instant::now()));
            let sum = before_sum.elapsed();
            let before_unmask = Instant::now();
            for (site, m) in names.iter().zip(&messages) {
                down += reply(&aggregation, site, SecAggStage::UnmaskRequest).len();
                aggregation
                    .accept_message(site, SecAggStage::UnmaskResponse, &m.unmask_response)
                    .unwrap();
            }
            let mut aggregate = ready(aggregation.advance(Instant::now()));
            let unmask = before_unmask.elapsed();
            let server = start.elapsed();
            let weights =
                apply_delta(&global.weights, std::mem::take(&mut aggregate.average_delta), 1.0).unwrap();
            let model = ModelBlob::new(1, weights, global.config.clone()).unwrap();
            let apply_serialize = start.elapsed() - server;
            black_box(&model);
            max_error = max_abs_difference(&aggregate.average_delta, &reference);
            protocol_down_bytes = down;

            let memcpy = time(|| copy_masked(&messages, &mut copy_target));
            runs.push([server, sum, unmask, apply_serialize, memcpy]);
        }
        let median_of = |i: usize| median(runs.iter().map(|r| r[i]).collect());
        let row = SecureRow {
            params: global.weights.n_values(),
            sites: n,
            ring,
            held,
            repeats,
            masked_bytes: messages.iter().map(|m| m.masked_input.len()).sum(),
            protocol_up_bytes: messages
                .iter()
                .map(|m| m.advertise.len() + m.share_keys.len() + m.unmask_response.len())
                .sum(),
            protocol_down_bytes,
            model_bytes: global.bytes.len(),
            server: median_of(0),
            sum: median_of(1),
            unmask: median_of(2),
            apply_serialize: median_of(3),
            memcpy: median_of(4),
            plain: plain(held),
            recording,
            max_error,
        };
        eprintln!(
            "secure {} params x {n} sites, {ring}, {} held: {:.0} ms server ({repeats} replays; recording round {:.1} s)",
            row.params,
            held_label(held),
            ms(row.server),
            recording.as_secs_f64()
        );
        rows.push(row);
    }
    rows
}

/// Runs one secure round with real clients against a `SecureAggregation`, as nodes would, and keeps
/// every site's encoded messages; also returns the plain FedAvg average of the same deltas.
fn record_secure_round(
    config: &AggregatorConfig,
    global: &ModelBlob,
    names: &[String],
    layout: &[(String, Vec<usize>)],
) -> (Vec<SiteMessages>, NamedTensors) {
    let mut aggregation = in_memory::open_secure(config, global, names);
    let mut clients = Vec::new();
    let mut advertised = Vec::new();
    for site in names {
        let Some(RoundAggregation::Secure {
            config: secagg,
            site_id,
        }) = aggregation.task_fields(site)
        else {
            panic!("{site} is not invited to the secure round");
        };
        let (client, advertise) = SecAggClient::new(secagg.validate().unwrap(), site_id).unwrap();
        let bytes = encode(&advertise);
        aggregation
            .accept_message(site, SecAggStage::AdvertiseKeys, &bytes)
            .unwrap();
        advertised.push(bytes);
        clients.push(client);
    }
    pending(aggregation.advance(Instant::now()));
    let mut shared = Vec::new();
    for (site, client) in names.iter().zip(&mut clients) {
        let directory: KeyDirectory = decode(
            &reply(&aggregation, site, SecAggStage::AdvertiseKeys),
            "key directory",
        )
        .unwrap();
        let bytes = encode(&client.share_keys(&directory).unwrap());
        aggregation
            .accept_message(site, SecAggStage::ShareKeys, &bytes)
            .unwrap();
        shared.push(bytes);
    }
    pending(aggregation.advance(Instant::now()));
    let mut masked = Vec::new();
    let mut plain = fedlnm_shared::federation::fedavg::FedAvg::new(&global.weights, |_| true);
    for (k, (site, client)) in names.iter().zip(&mut clients).enumerate() {
        let delivery: ShareDelivery = decode(
            &reply(&aggregation, site, SecAggStage::ShareKeys),
            "share delivery",
        )
        .unwrap();
        let delta = layout_values(layout, k as u64 + 1);
        let bytes = Arc::new(encode(
            &client.masked_input(&delivery, &delta, N_SAMPLES).unwrap(),
        ));
        plain.add(site, &delta, N_SAMPLES).unwrap();
        let upload = Upload {
            site,
            format: UpdateFormat::MaskedInput,
            n_samples: N_SAMPLES,
            payload: Arc::clone(&bytes) as HeldBytes,
            scan: None,
        };
        aggregation.accept_upload(&upload).unwrap();
        masked.push(bytes);
    }
    pending(aggregation.advance(Instant::now()));
    let mut responses = Vec::new();
    for (site, client) in names.iter().zip(&mut clients) {
        let request: UnmaskRequest = decode(
            &reply(&aggregation, site, SecAggStage::UnmaskRequest),
            "unmask request",
        )
        .unwrap();
        let bytes = encode(&client.unmask(&request).unwrap());
        aggregation
            .accept_message(site, SecAggStage::UnmaskResponse, &bytes)
            .unwrap();
        responses.push(bytes);
    }
    ready(aggregation.advance(Instant::now()));
    let messages = advertised
        .into_iter()
        .zip(shared)
        .zip(masked)
        .zip(responses)
        .map(
            |(((advertise, share_keys), masked_input), unmask_response)| SiteMessages {
                advertise,
                share_keys,
                masked_input,
                unmask_response,
            },
        )
        .collect();
    (messages, plain.average().unwrap())
}

/// The memory-copy bound of the masked inputs.
fn copy_masked(messages: &[SiteMessages], target: &mut [u8]) {
    for m in messages {
        target[..m.masked_input.len()].copy_from_slice(&m.masked_input);
        black_box(&*target);
    }
}

fn print_secure(rows: &[SecureRow]) {
    if rows.is_empty() {
        return;
    }
    println!("\n### Secure aggregation round (server side only)\n");
    println!(
        "Server = every `SecureAggregation` call of the round (key and share stages, reading and adding every \
         masked input, unmask responses, unmasking and decoding in `advance`), fed messages pre-computed by real \
         `SecAggClient`s in one untimed recording round; unmasking uses the machine's available threads, as in \
         the aggregator. Apply + serialize = `apply_delta` + `ModelBlob::new` as in the plain round; commit is the \
         same as plain. Upload = masked inputs + keys, shares and unmask responses; download = protocol replies + \
         model downloads as for plain. Ratio to plain = (server + apply + serialize) / the plain aggregate \
         column of the same size, sites and uploads held; memcpy bound of the masked inputs, same run. Sum of \
         uploads = every `accept_upload` (`payload::masked_input_range`: header decoded, the vector held in the \
         bytes it arrived in) and the checks, with the sums of every `held` inputs (in Z_2^64; Z_2^32 inputs \
         zero-extended into it, reduced at decoding), four per pass, block \
         by block, on the available threads (the first group written into the fresh accumulator); inputs still \
         held when the stage closes are summed then (`advance`), counted here. Unmasking = unmask \
         responses, Shamir reconstruction, the AES-128-CTR self masks subtracted (one pass, every stream per \
         chunk), decoding.\n"
    );
    println!(
        "| params | sites | ring | held | replays | upload MB | download MB | server (ms) | of which sum of uploads | of which unmasking | apply + serialize (ms) | memcpy bound (ms) | ratio to memcpy | ratio to plain |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let total = r.server + r.apply_serialize;
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1}× | {} |",
            params_label(r.params),
            r.sites,
            r.ring,
            held_label(r.held),
            r.repeats,
            mb(r.masked_bytes + r.protocol_up_bytes),
            mb(r.protocol_down_bytes + r.model_bytes * (2 * r.sites + 1)),
            ms(r.server),
            ms(r.sum),
            ms(r.unmask),
            ms(r.apply_serialize),
            ms(r.memcpy),
            total.as_secs_f64() / r.memcpy.as_secs_f64(),
            r.plain.map_or_else(
                || "–".to_owned(),
                |p| format!("{:.1}×", total.as_secs_f64() / p.as_secs_f64())
            ),
        );
    }
    println!();
    for r in rows {
        println!(
            "- {} × {} sites, {}, {} held: protocol messages {:.0} kB up, {:.0} kB down; the recording round (all \
             clients and the server, untimed) took {:.1} s; the decoded average is within {:.1e} of plain FedAvg's.",
            params_label(r.params),
            r.sites,
            r.ring,
            held_label(r.held),
            r.protocol_up_bytes as f64 / 1e3,
            r.protocol_down_bytes as f64 / 1e3,
            r.recording.as_secs_f64(),
            r.max_error,
        );
    }
}

fn aggregator_config(names: &[String]) -> AggregatorConfig {
    let rounds = RoundSettings {
        min_sites: names.len() / 2 + 1,
        // The server's own costs, as measured before signatures existed (their cost, at the sites
        // and the server: `cargo bench -p fedlnm-shared --bench privacy_costs`).
        threat_model: fedlnm_shared::config::ThreatModel::HonestButCuriousAggregator,
        ..RoundSettings::default()
    };
    in_memory::training_sites_config(STUDY, names, rounds)
}

fn max_abs_difference(a: &NamedTensors, b: &NamedTensors) -> f32 {
    a.tensors
        .iter()
        .map(|t| {
            let other = b.get(&t.name).unwrap();
            t.values
                .iter()
                .zip(&other.values)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

// ---------------------------------------------------------------------------------------------------
// The simulated model and sites
// ---------------------------------------------------------------------------------------------------

/// About `target` parameters in a realistic set of tensors: a ResNet-18-like image tower of width
/// `w` (stem, 8 basic blocks with 3 downsampling shortcuts, batch-norm γ/β), a report text embedding
/// that takes the rest of the budget, a fusion layer and a head (65 tensors).
fn model_layout(target: usize) -> Vec<(String, Vec<usize>)> {
    let tower = |w: usize| {
        let mut tensors = vec![("image.stem_conv.weight".to_owned(), vec![w, 3, 7, 7])];
        for part in ["gamma", "beta"] {
            tensors.push((format!("image.stem_bn.{part}"), vec![w]));
        }
        for block in 0..8 {
            let stage = block / 2;
            let c = w << stage;
            let first_of_stage = block % 2 == 0 && stage > 0;
            let c_in = if first_of_stage { c / 2 } else { c };
            let prefix = format!("image.blocks.{block}");
            tensors.push((format!("{prefix}.conv1.weight"), vec![c, c_in, 3, 3]));
            for part in ["gamma", "beta"] {
                tensors.push((format!("{prefix}.bn1.{part}"), vec![c]));
            }
            tensors.push((format!("{prefix}.conv2.weight"), vec![c, c, 3, 3]));
            for part in ["gamma", "beta"] {
                tensors.push((format!("{prefix}.bn2.{part}"), vec![c]));
            }
            if first_of_stage {
                tensors.push((format!("{prefix}.downsample_conv.weight"), vec![c, c_in, 1, 1]));
                for part in ["gamma", "beta"] {
                    tensors.push((format!("{prefix}.downsample_bn.{part}"), vec![c]));
                }
            }
        }
        let features = 8 * w + 64;
        tensors.extend([
            ("fusion.hidden.weight".to_owned(), vec![256, features]),
            ("fusion.hidden.bias".to_owned(), vec![256]),
            ("heads.lnm.weight".to_owned(), vec![1, 256]),
            ("heads.lnm.bias".to_owned(), vec![1]),
        ]);
        tensors
    };
    let count = |tensors: &[(String, Vec<usize>)]| -> usize {
        tensors
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    };
    // The widest tower (a multiple of 8 channels) that leaves at least a tenth for the embedding.
    let width = (1..=64)
        .map(|k| 8 * k)
        .take_while(|&w| count(&tower(w)) * 10 <= target * 9)
        .last()
        .unwrap_or(8);
    let mut tensors = tower(width);
    let rows = (target - count(&tensors)) / 64;
    tensors.insert(3, ("report.text_embedding.weight".to_owned(), vec![rows, 64]));
    tensors
}

/// Deterministic pseudo-random values of `layout`, uniform in ±1e-3 (a delta) for `seed` ≥ 1 and
/// ±0.05 (a model) for seed 0.
fn layout_values(layout: &[(String, Vec<usize>)], seed: u64) -> NamedTensors {
    let scale = if seed == 0 { 0.1 } else { 2e-3 };
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    NamedTensors {
        tensors: layout
            .iter()
            .map(|(name, shape)| {
                let len = shape.iter().product();
                let values = (0..len)
                    .map(|_| {
                        let bits = splitmix64(&mut state) >> 40; // 24 random bits
                        (bits as f32 / (1u64 << 24) as f32 - 0.5) * scale
                    })
                    .collect();
                NamedTensor::new(name.clone(), shape.clone(), values).unwrap()
            })
            .collect(),
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn site_names(n: usize) -> Vec<String> {
    (1..=n).map(|k| format!("site-{k:02}")).collect()
}

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// Runs per plain round: at least 3, fewer where a round is long.
fn plain_repeats(millions: usize, sites: usize) -> usize {
    if let Some(&repeats) = env_list("ROUNDS_BENCH_REPEATS", &[]).first() {
        return repeats.max(1);
    }
    match millions * sites {
        0..=30 => 5,
        31..=330 => 3,
        _ => 2,
    }
}

fn record(model: &ModelBlob, aggregation: AggregationKind, aggregate: &RoundAggregate) -> RoundRecord {
    RoundRecord {
        study: STUDY.to_owned(),
        round: model.version,
        model_digest: model.digest.clone(),
        model_config_digest: model.config_digest.clone(),
        aggregation,
        contributors: aggregate.contributors.clone(),
        total_samples: aggregate.total_samples,
        dropped: aggregate.dropped.clone(),
        aggregation_seconds: 0.0,
        round_seconds: 0.0,
        committed_at: String::new(),
        sites: Vec::new(),
        pooled_train_sites: None,
        pooled_validation_sites: None,
        privacy: None,
    }
}

fn time<T>(f: impl FnOnce() -> T) -> Duration {
    let start = Instant::now();
    black_box(f());
    start.elapsed()
}

fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort_unstable();
    match durations.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => durations[n / 2],
        n => (durations[n / 2 - 1] + durations[n / 2]) / 2,
    }
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// "all" for a whole round held, else the number of uploads held before they are summed.
fn held_label(held: usize) -> String {
    if held == usize::MAX {
        "all".to_owned()
    } else {
        held.to_string()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn params_label(params: usize) -> String {
    format!("{:.0}M", params as f64 / MILLION as f64)
}
