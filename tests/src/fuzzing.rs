//! The fuzz harnesses: one function per `cargo fuzz` target, each feeding outside bytes to a decoder the
//! way the node or the aggregator does, and checking what must hold of what it decodes.
//!
//! One body, two callers. The fuzz targets (`fuzz/fuzz_targets/<target>.rs`, nightly, libFuzzer) call
//! these functions through the `fedlnm-fuzz` crate, whose library includes this file; the normal suite
//! (`tests/tests/fuzz_regressions.rs`, stable) includes it too and replays every kept input of
//! `fuzz/regressions/<target>/` through the same function. It is not a module of the `fedlnm-e2e`
//! library: that would make the protocol, prost and tempfile normal dependencies of the test harness.
//!
//! A harness returns `Ok` when the input decoded, `Err` (the decoder's message) when it was refused;
//! both are fine. A panic, an abort, a hang or an oversized allocation is a finding. A harness panics
//! itself when an invariant of a decoded value fails (a payload that does not re-encode to its bytes,
//! a transfer that assembles other bytes than were sent).
//!
//! Decoders that read files get their input written to a fresh scratch folder (under `/dev/shm` when
//! it exists), removed when the call returns.

use fedlnm_protocol::generated as pb;
use fedlnm_protocol::messages::{
    AnalysisReport, CheckInReply, MetricsReport, SecAggMessage, Task, UpdateHeader,
};
use fedlnm_protocol::payload;
use fedlnm_protocol::transfer::{Assembler, Digest, upload_checksum};
use fedlnm_shared::analysis::{AnalysisAnswer, AnalysisRequest};
use fedlnm_shared::checkpoint::Checkpoint;
use fedlnm_shared::config::{AggregatorConfig, NodeConfig};
use fedlnm_shared::data::{CropFractions, LoadOptions, Preprocess, image, load_site};
use fedlnm_shared::federation::SiteRoundMetrics;
use fedlnm_shared::federation::fedavg::FedAvg;
use fedlnm_shared::model_config::{ConfigFile, TrainPlan};
use fedlnm_shared::secagg::{
    AdvertiseKeys, ConsistencyCheck, ConsistencyResponse, KeyDirectory, MaskedInput, SecAggConfig,
    ShareDelivery, ShareKeys, UnmaskRequest, UnmaskResponse,
};
use fedlnm_shared::table::{CsvReader, Table};
use fedlnm_shared::weights::scan::FiniteScan;
use fedlnm_shared::weights::{NamedTensor, NamedTensors, is_local_norm, sha256_hex};
use prost::Message as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What a harness made of its input: `Ok` decoded, `Err` refused (with the decoder's message).
pub type Outcome = Result<(), String>;

/// A harness: bytes in, an outcome out; never a panic.
pub type Harness = fn(&[u8]) -> Outcome;

/// Every fuzz target, by the name of its `fuzz/fuzz_targets/<name>.rs` and `fuzz/regressions/<name>/`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("payload", payload),
    ("protobuf", protobuf),
    ("transfer", transfer),
    ("safetensors", safetensors),
    ("image", image_file),
    ("csv", csv),
    ("manifest", manifest),
    ("toml", toml),
];

/// The image side the loaders resize to here (the smallest the model takes: cheap per input).
const MODEL_INPUT: u32 = 32;

/// The largest upload or download the transfer harness allows (a real limit is the round's masked
/// vector or the announced model size; this keeps one input's buffer small).
const TRANSFER_LIMIT: u32 = 16 << 20;

/// The payload types, by the input's first byte (modulo their number); the rest is the payload.
const PAYLOADS: u8 = 14;

/// `fedlnm_protocol::payload::decode` of every payload type the protocol carries: the secure
/// aggregation messages both ways, the round's secure-aggregation configuration (validated, as the
/// node does), the training plan (validated) and a site's validation metrics (checked as the
/// aggregator checks them). A decoded payload must re-encode to the same bytes.
///
/// # Errors
/// The payload is malformed or its value invalid.
pub fn payload(data: &[u8]) -> Outcome {
    let Some((&kind, bytes)) = data.split_first() else {
        return Err("empty input".to_owned());
    };
    match kind % PAYLOADS {
        0 => round_trip!(AdvertiseKeys, bytes, "key advertisement").map(drop),
        1 => round_trip!(KeyDirectory, bytes, "key directory").map(drop),
        2 => round_trip!(ShareKeys, bytes, "encrypted shares").map(drop),
        3 => round_trip!(ShareDelivery, bytes, "share delivery").map(drop),
        4 => {
            // The aggregator reads masked inputs in place: the view must accept exactly what decoding
            // accepts, and read the same header and elements.
            let view = payload::masked_input_view(bytes);
            let decoded = round_trip!(MaskedInput, bytes, "masked input");
            match (&decoded, &view) {
                (Ok(message), Ok((header, ring, elements))) => {
                    assert_eq!(header, &message.header, "the view reads another header");
                    assert_eq!(*ring, message.masked.ring(), "the view reads another ring");
                    assert!(
                        *elements == message.masked.to_le_bytes(),
                        "the view reads other elements"
                    );
                }
                (Err(_), Err(_)) => {}
                _ => panic!("the in-place view and decoding disagree: {decoded:?} / {view:?}"),
            }
            decoded.map(drop)
        }
        5 => round_trip!(UnmaskRequest, bytes, "unmask request").map(drop),
        6 => round_trip!(UnmaskResponse, bytes, "unmasking shares").map(drop),
        7 => {
            let config = round_trip!(SecAggConfig, bytes, "secure-aggregation configuration")?;
            let round = config.validate().map_err(|e| e.to_string())?;
            let _ = (round.vector_len(), round.config_hash());
            Ok(())
        }
        8 => {
            let plan = round_trip!(TrainPlan, bytes, "training plan")?;
            plan.validate().map_err(|e| e.to_string())
        }
        9 => {
            let metrics = round_trip!(SiteRoundMetrics, bytes, "validation metrics")?;
            // What the aggregator's `accept_metrics` checks.
            metrics.check()
        }
        10 => round_trip!(ConsistencyCheck, bytes, "consistency check").map(drop),
        11 => round_trip!(ConsistencyResponse, bytes, "survivor-set signature").map(drop),
        12 => {
            let request = round_trip!(AnalysisRequest, bytes, "analysis request")?;
            // What the node checks before it computes anything.
            request
                .analysis
                .check()
                .map_err(|(key, problem)| format!("{key}: {problem}"))
        }
        _ => round_trip!(AnalysisAnswer, bytes, "analysis answer").map(drop),
    }
}

/// The generated messages a node or the aggregator decodes (by the input's first byte; the rest is the
/// protobuf), converted to the typed messages where the protocol does so. A converted message must
/// survive typed → generated → typed unchanged.
///
/// # Errors
/// Not the protobuf of that message, or a message the protocol refuses.
pub fn protobuf(data: &[u8]) -> Outcome {
    let Some((&kind, bytes)) = data.split_first() else {
        return Err("empty input".to_owned());
    };
    match kind % 10 {
        0 => {
            let wire = pb::Task::decode(bytes).map_err(|e| e.to_string())?;
            let task = Task::try_from(wire).map_err(|e| e.to_string())?;
            let first = pb::Task::from(task);
            let again = Task::try_from(first.clone()).map(pb::Task::from);
            assert_eq!(
                again.as_ref(),
                Ok(&first),
                "a task changed on its way through the wire"
            );
            Ok(())
        }
        1 => {
            let chunk = pb::UpdateChunk::decode(bytes).map_err(|e| e.to_string())?;
            let header = chunk.header.ok_or("the first chunk has no header")?;
            let header = UpdateHeader::try_from(header).map_err(|e| e.to_string())?;
            let first = pb::UpdateHeader::from(header);
            let again = UpdateHeader::try_from(first.clone()).map(pb::UpdateHeader::from);
            assert_eq!(again.as_ref(), Ok(&first), "an upload header changed on the wire");
            Ok(())
        }
        2 => {
            let request = pb::SecAggRequest::decode(bytes).map_err(|e| e.to_string())?;
            let message = SecAggMessage::try_from(request).map_err(|e| e.to_string())?;
            let first = pb::SecAggRequest::from(message);
            let again = SecAggMessage::try_from(first.clone()).map(pb::SecAggRequest::from);
            assert_eq!(
                again.as_ref(),
                Ok(&first),
                "a secure-aggregation request changed on the wire"
            );
            Ok(())
        }
        3 => {
            let report = MetricsReport::from(pb::MetricsReport::decode(bytes).map_err(|e| e.to_string())?);
            report.metrics.decode().map(drop).map_err(|e| e.to_string())
        }
        4 => {
            let wire = pb::CheckInResponse::decode(bytes).map_err(|e| e.to_string())?;
            let reply = CheckInReply::try_from(wire).map_err(|e| e.to_string())?;
            let first = pb::CheckInResponse::from(reply);
            let again = CheckInReply::try_from(first.clone()).map(pb::CheckInResponse::from);
            assert_eq!(again.as_ref(), Ok(&first), "a check-in reply changed on the wire");
            Ok(())
        }
        5 => pb::ModelChunk::decode(bytes).map(drop).map_err(|e| e.to_string()),
        6 => pb::SecAggReply::decode(bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        // The requests the aggregator reads its claims from.
        7 => {
            pb::CheckInRequest::decode(bytes).map_err(|e| e.to_string())?;
            pb::TaskRequest::decode(bytes)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        8 => pb::ModelRequest::decode(bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        _ => {
            let report = AnalysisReport::from(pb::AnalysisReport::decode(bytes).map_err(|e| e.to_string())?);
            report.answer.decode().map(drop).map_err(|e| e.to_string())
        }
    }
}

/// `fedlnm_protocol::transfer::Assembler` driven by a transfer read off the input: the announced size
/// and the receiver's limit, then chunks (a control byte: whether the chunk states an offset, and
/// whether that offset is wrong; a 16-bit length; the data), and whether the digest at the end is the
/// right one. What it assembles must be exactly the bytes pushed, of the announced size.
///
/// # Errors
/// The assembler refused the transfer.
pub fn transfer(data: &[u8]) -> Outcome {
    let mut input = Bytes(data);
    let limit = u64::from(input.u32() % (TRANSFER_LIMIT + 1));
    let announced = u64::from(input.u32());
    // Bit 0: an honest digest or not; bit 1: a model's SHA-256 or an upload's XXH3-128 checksum.
    let control = input.u8();
    let honest_digest = control & 1 == 0;
    let kind = if control & 2 == 0 {
        Digest::Sha256
    } else {
        Digest::Xxh3
    };
    let mut assembler =
        Assembler::new("fuzzed transfer", announced, limit, kind).map_err(|e| e.to_string())?;
    let mut sent = Vec::new();
    while !input.0.is_empty() {
        let control = input.u8();
        let length = usize::from(input.u16());
        let chunk = input.take(length);
        let offset = match control & 3 {
            0 | 1 => None,
            2 => Some(assembler.received()),
            _ => Some(assembler.received().wrapping_add(u64::from(input.u8()) + 1)),
        };
        assembler.push(offset, chunk).map_err(|e| e.to_string())?;
        sent.extend_from_slice(chunk);
        assert_eq!(assembler.received(), sent.len() as u64);
    }
    let digest_of = |bytes: &[u8]| match kind {
        Digest::Sha256 => sha256_hex(bytes),
        Digest::Xxh3 => upload_checksum(bytes),
    };
    let digest = if honest_digest {
        digest_of(&sent)
    } else {
        digest_of(b"not the transfer")
    };
    let received = assembler.finish(&digest).map_err(|e| e.to_string())?;
    assert_eq!(
        received, sent,
        "the transfer assembled other bytes than were sent"
    );
    assert_eq!(received.len() as u64, announced);
    assert!(announced <= limit);
    Ok(())
}

/// Safetensors bytes (after the input's first byte, which picks the reader) as the aggregator reads a
/// plain upload (`FedAvg::hold_f32_bytes`, which reads it with `borrow_safetensors_bytes`, with and without a scan made on arrival, against a small global
/// model), as weights (`NamedTensors::from_safetensors_bytes`) and as a checkpoint
/// (`Checkpoint::from_bytes`). A parsed checkpoint must serialize and parse back to itself.
///
/// # Errors
/// Not a usable delta / set of tensors / checkpoint.
pub fn safetensors(data: &[u8]) -> Outcome {
    let Some((&kind, bytes)) = data.split_first() else {
        return Err("empty input".to_owned());
    };
    let origin = Path::new("fuzzed upload");
    match kind % 3 {
        0 => {
            // The same upload with a scan of its values made as it arrived (in chunks of a size the
            // input picks) must be judged exactly as when the values are read again.
            let chunk = usize::from(kind / 3) + 1;
            let mut scan = FiniteScan::new();
            bytes.chunks(chunk).for_each(|c| scan.update(c));
            let mut scanned = FedAvg::new(global_model(), |name| !is_local_norm(name));
            let with_scan = scanned
                .hold_f32_bytes(
                    "S1",
                    std::sync::Arc::new(bytes.to_vec()),
                    7,
                    origin,
                    Some(&scan.finish()),
                )
                .map_err(|e| e.to_string());
            let mut sum = FedAvg::new(global_model(), |name| !is_local_norm(name));
            let read = sum
                .hold_f32_bytes("S1", std::sync::Arc::new(bytes.to_vec()), 7, origin, None)
                .map_err(|e| e.to_string());
            assert_eq!(with_scan, read, "a scan on arrival judged the upload otherwise");
            assert_eq!(scanned.average().ok(), sum.average().ok());
            read?;
            sum.average().map(drop).map_err(|e| e.to_string())
        }
        1 => NamedTensors::from_safetensors_bytes(bytes, origin)
            .map(drop)
            .map_err(|e| e.to_string()),
        _ => {
            let checkpoint = Checkpoint::from_bytes(bytes, origin).map_err(|e| e.to_string())?;
            let again = checkpoint
                .to_bytes()
                .map_err(|e| e.to_string())
                .and_then(|bytes| Checkpoint::from_bytes(&bytes, origin).map_err(|e| e.to_string()));
            assert_eq!(
                again.as_ref(),
                Ok(&checkpoint),
                "a checkpoint changed when written again"
            );
            Ok(())
        }
    }
}

/// `fedlnm_shared::data::image::load_tensor` (`read_rgb`, then crop and resize) of a file holding the
/// input after its first byte, which picks the DICOM frame.
///
/// # Errors
/// The image is refused.
pub fn image_file(data: &[u8]) -> Outcome {
    let Some((&frame, bytes)) = data.split_first() else {
        return Err("empty input".to_owned());
    };
    let scratch = Scratch::new()?;
    let file = scratch.write("picture", bytes)?;
    let tensor = image::load_tensor(&file, u32::from(frame), &preprocess()).map_err(|e| e.to_string())?;
    assert_eq!(tensor.data.len(), 3 * (MODEL_INPUT * MODEL_INPUT) as usize);
    Ok(())
}

/// The CSV reader both ways on a file of the input after its first byte (bit 0: trim cells): the
/// streaming `CsvReader` over every record, and `Table` with every typed column accessor.
///
/// # Errors
/// The table is refused (the streaming pass only counts as decoded when `Table` accepts it too).
pub fn csv(data: &[u8]) -> Outcome {
    let Some((&options, bytes)) = data.split_first() else {
        return Err("empty input".to_owned());
    };
    let scratch = Scratch::new()?;
    let file = scratch.write("table.csv", bytes)?;
    let mut headers = Vec::new();
    if let Ok(mut reader) = CsvReader::open(&file, "the fuzzed table", options & 1 == 1) {
        headers = reader.headers().to_vec();
        for header in headers.iter().filter(|h| !h.is_empty()) {
            reader.column_index(header).map_err(|e| e.to_string())?;
        }
        // Records start on the lines they are read from: never an earlier one (a lone CR ends a record
        // without starting a line, so two records may share one).
        let mut last_line = 1;
        for (line, _) in reader.records().flatten() {
            assert!(
                line >= last_line,
                "record lines go backwards: {line} after {last_line}"
            );
            last_line = line;
        }
    }
    let table = Table::read(&file).map_err(|e| e.to_string())?;
    for column in &headers {
        let rows = table.text_column(column).map_err(|e| e.to_string())?.len();
        assert_eq!(rows, table.n_rows());
        let _ = table.numeric_column(column);
        let _ = table.binary_column(column);
        let _ = table.probability_column(column);
        let _ = table.code_column(column, 4);
    }
    Ok(())
}

/// `fedlnm_shared::data::load_site` of a site folder whose `patients.csv` is the input and whose
/// `images/` holds a PNG, a JPEG, a DICOM and a symbolic link out of the folder. Every row
/// read is either included or excluded, with its reason.
///
/// # Errors
/// The manifest itself is refused.
pub fn manifest(data: &[u8]) -> Outcome {
    let scratch = Scratch::new()?;
    scratch.write("patients.csv", data)?;
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).map_err(|e| e.to_string())?;
    for (name, bytes) in site_images() {
        std::fs::write(images.join(name), bytes).map_err(|e| e.to_string())?;
    }
    #[cfg(unix)]
    {
        let outside = scratch.write("outside.png", &site_images()[0].1)?;
        std::os::unix::fs::symlink(outside, images.join("link.png")).map_err(|e| e.to_string())?;
    }
    let options = LoadOptions {
        preprocess: preprocess(),
        require_labels: false,
    };
    let site = load_site("S1", scratch.path(), &options).map_err(|e| e.to_string())?;
    let flow = &site.flow;
    assert_eq!(flow.included, site.patients.len());
    assert_eq!(
        flow.included + flow.n_excluded(),
        flow.read,
        "rows read are not all included or excluded"
    );
    Ok(())
}

/// The TOML configuration loaders on a file of the input after its first byte, which picks one:
/// `AggregatorConfig::load`, `NodeConfig::load` or `ConfigFile::read` (the model and training plan).
///
/// # Errors
/// The configuration is refused.
pub fn toml(data: &[u8]) -> Outcome {
    let Some((&kind, bytes)) = data.split_first() else {
        return Err("empty input".to_owned());
    };
    let scratch = Scratch::new()?;
    let file = scratch.write("config.toml", bytes)?;
    match kind % 3 {
        0 => AggregatorConfig::load(&file).map(drop).map_err(|e| e.to_string()),
        1 => NodeConfig::load(&file).map(drop).map_err(|e| e.to_string()),
        _ => {
            let config = ConfigFile::read(&file).map_err(|e| e.to_string())?;
            let _ = config.model.digest();
            Ok(())
        }
    }
}

// ---- Helpers. ----

/// Decodes a payload of type `$type` and checks that it encodes back to the same bytes (the encoding is
/// canonical: a value has one encoding, so a configuration hash or a signature over it means one
/// thing). A macro rather than a generic function, so that this file names no serde trait (the crates
/// that include it do not depend on serde).
macro_rules! round_trip {
    ($type:ty, $bytes:expr, $what:literal) => {{
        let bytes: &[u8] = $bytes;
        payload::decode::<$type>(bytes, $what)
            .map_err(|e| e.to_string())
            .inspect(|value| {
                assert_eq!(
                    payload::encode(value),
                    bytes,
                    "a {} does not re-encode to its bytes",
                    $what
                );
            })
    }};
}
use round_trip;

fn preprocess() -> Preprocess {
    Preprocess {
        size: MODEL_INPUT,
        crop: CropFractions::SYNTHETIC,
    }
}

/// The round's global model of the safetensors harness: a weight, a bias and a FedBN tensor.
fn global_model() -> &'static NamedTensors {
    static GLOBAL: OnceLock<NamedTensors> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let tensor = |name: &str, shape: Vec<usize>| {
            let n = shape.iter().product();
            NamedTensor::new(name, shape, vec![0.5; n]).ok()
        };
        NamedTensors {
            tensors: [
                tensor("head.weight", vec![2, 3]),
                tensor("head.bias", vec![2]),
                tensor("image.bn1.gamma", vec![2]),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    })
}

/// The image files of the manifest harness's site (`a.png`, `b.jpg`, `c.dcm`), made once per process
/// by the synthetic generator.
pub fn site_images() -> &'static [(&'static str, Vec<u8>)] {
    static IMAGES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        use fedlnm_shared::synth;
        let Some(profile) = synth::profile::SiteProfile::named("community") else {
            return Vec::new();
        };
        let picture = synth::contact_sheet(&[profile], 1, 40, 7);
        let Ok(scratch) = Scratch::new() else {
            return Vec::new();
        };
        let dir = scratch.path();
        let written = [
            picture.save(dir.join("a.png")).is_ok(),
            picture.save(dir.join("b.jpg")).is_ok(),
            synth::dicom::write_dicom(&dir.join("c.dcm"), &picture, "P-FUZZ", 7).is_ok(),
        ];
        if written.contains(&false) {
            return Vec::new();
        }
        ["a.png", "b.jpg", "c.dcm"]
            .into_iter()
            .filter_map(|name| std::fs::read(dir.join(name)).ok().map(|bytes| (name, bytes)))
            .collect()
    })
}

/// A folder for one input's files, removed on drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Result<Self, String> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("fedlnm-fuzz-")
            .tempdir_in(base)
            .map(Self)
            .map_err(|e| format!("no scratch folder: {e}"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        let file = self.path().join(name);
        std::fs::write(&file, bytes).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        Ok(file)
    }
}

/// A cursor over the input that reads fixed-width values, as zeros past the end.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
}
