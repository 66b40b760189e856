//! Model weights as plain data: named f32 tensors (the federation's wire representation) and their
//! `safetensors` checkpoint files (readable from PyTorch with `safetensors.torch.load_file`).
//!
//! No burn type appears here: the aggregator and the federation protocol use this module without the
//! `model` feature. Names are the module paths of the parameters (`image.blocks.3.bn1.gamma`).

pub mod elements;
pub mod parallel;
pub mod scan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One named tensor: row-major f32 values of the given shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// One F32 tensor borrowed from safetensors bytes: its name, shape and little-endian values, not
/// decoded (an upload is read once, where it is used, instead of being copied into a [`NamedTensor`]).
#[derive(Debug, Clone, PartialEq)]
pub struct F32TensorBytes<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    /// 4 bytes per value, exactly the number of values the shape needs.
    pub data: &'a [u8],
}

impl F32TensorBytes<'_> {
    /// The values, decoded as they are read.
    pub fn values(&self) -> impl ExactSizeIterator<Item = f32> + '_ {
        self.data
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
    }
}

/// All the weights of a model (parameters and normalisation running statistics), in module order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NamedTensors {
    pub tensors: Vec<NamedTensor>,
}

/// Weights that cannot be read, written or matched to a model.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read checkpoint {}: {source}", file.display())]
    Unreadable { file: PathBuf, source: std::io::Error },
    #[error("cannot write checkpoint {}: {message}", file.display())]
    Write { file: PathBuf, message: String },
    #[error("cannot serialize the weights: {message}")]
    Serialize { message: String },
    #[error("checkpoint {} is not a valid safetensors file: {message}", file.display())]
    Malformed { file: PathBuf, message: String },
    #[error("tensor '{name}' has dtype {dtype}; only F32 is supported")]
    NotF32 { name: String, dtype: String },
    #[error("tensor '{name}': shape {shape:?} needs {expected} values but {found} were given")]
    ShapeMismatch {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("the weights lack tensor '{name}' that the model needs")]
    Missing { name: String },
    #[error("tensor '{name}' is not part of this model (unexpected name)")]
    Unexpected { name: String },
    #[error("tensor '{name}' has shape {found:?} but the model expects {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor '{name}' appears twice")]
    Duplicate { name: String },
}

impl NamedTensor {
    /// A tensor, checking that the values fill the shape exactly.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Result<Self, WeightsError> {
        let name = name.into();
        let expected = shape.iter().product::<usize>();
        if expected != values.len() {
            return Err(WeightsError::ShapeMismatch {
                name,
                shape,
                expected,
                found: values.len(),
            });
        }
        Ok(Self { name, shape, values })
    }
}

impl NamedTensors {
    /// One-dimensional tensors (shape `[values.len()]`) from (name, values) pairs, in the given order.
    /// Meant for tests and benchmarks, where the shape does not matter; real weights keep their shapes.
    #[must_use]
    pub fn from_vectors<S: Into<String>>(pairs: impl IntoIterator<Item = (S, Vec<f32>)>) -> Self {
        Self {
            tensors: pairs
                .into_iter()
                .map(|(name, values)| NamedTensor {
                    name: name.into(),
                    shape: vec![values.len()],
                    values,
                })
                .collect(),
        }
    }

    /// Tensors of the given (name, shape) layout holding `values`, in order (each vector as long as
    /// its shape's product: the caller computed it for that layout).
    #[must_use]
    pub fn from_layout<'a>(
        layout: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        values: Vec<Vec<f32>>,
    ) -> Self {
        Self {
            tensors: layout
                .into_iter()
                .zip(values)
                .map(|((name, shape), values)| NamedTensor {
                    name: name.to_owned(),
                    shape: shape.to_vec(),
                    values,
                })
                .collect(),
        }
    }

    /// The tensor called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|tensor| tensor.name == name)
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|tensor| tensor.name.as_str())
    }

    /// The total number of scalar values.
    #[must_use]
    pub fn n_values(&self) -> usize {
        self.tensors.iter().map(|tensor| tensor.values.len()).sum()
    }

    /// The names of the normalisation tensors a FedBN federation keeps local to each site.
    pub fn local_norm_names(&self) -> impl Iterator<Item = &str> {
        self.names().filter(|name| is_local_norm(name))
    }

    /// Checks that `self` has exactly the names and shapes of `reference` (in any order).
    pub fn check_same_layout(&self, reference: &Self) -> Result<(), WeightsError> {
        let mut ours: BTreeMap<&str, &NamedTensor> = BTreeMap::new();
        for tensor in &self.tensors {
            if ours.insert(tensor.name.as_str(), tensor).is_some() {
                return Err(WeightsError::Duplicate {
                    name: tensor.name.clone(),
                });
            }
        }
        for expected in &reference.tensors {
            let found = ours
                .remove(expected.name.as_str())
                .ok_or_else(|| WeightsError::Missing {
                    name: expected.name.clone(),
                })?;
            if found.shape != expected.shape {
                return Err(WeightsError::WrongShape {
                    name: expected.name.clone(),
                    expected: expected.shape.clone(),
                    found: found.shape.clone(),
                });
            }
        }
        match ours.into_keys().next() {
            Some(name) => Err(WeightsError::Unexpected {
                name: name.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Writes a safetensors file with string metadata (config, digest). Values are little-endian F32.
    pub fn save_safetensors(
        &self,
        file: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), WeightsError> {
        let serialized = self.to_safetensors_bytes(metadata)?;
        std::fs::write(file, serialized).map_err(|e| WeightsError::Write {
            file: file.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The safetensors serialization (the file's bytes; also the wire format of models and updates).
    /// Deterministic: the same tensors and metadata always give the same bytes (and SHA-256).
    ///
    /// # Errors
    /// A tensor whose values do not fill its shape (safetensors' message).
    pub fn to_safetensors_bytes(&self, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>, WeightsError> {
        let serialize = |e: safetensors::SafeTensorError| WeightsError::Serialize {
            message: e.to_string(),
        };
        // The values as they are laid out in the file, borrowed where the machine is little-endian:
        // the model is copied once, into the file's buffer.
        let bytes: Vec<(String, std::borrow::Cow<'_, [u8]>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|tensor| {
                (
                    tensor.name.clone(),
                    le_bytes(&tensor.values),
                    tensor.shape.clone(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, data, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|view| (name.clone(), view))
                    .map_err(serialize)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata: std::collections::HashMap<String, String> =
            metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut bytes = safetensors::serialize(views, Some(metadata)).map_err(serialize)?;
        canonicalise_header(&mut bytes);
        Ok(bytes)
    }
}

/// `values` as little-endian bytes: a view of them on a little-endian machine, a copy otherwise.
fn le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|value| value.to_le_bytes()).collect())
    }
}

/// Rewrites a safetensors header with its JSON keys sorted. safetensors writes the metadata from a
/// `HashMap`, whose order changes from one process (or map) to the next, so the same model would get
/// different bytes and digests. The sorted header has the same keys, values and compact separators,
/// hence the same length, and the data offsets are absolute: only the order of the header's keys
/// changes. A header that would not keep its length is left as it is.
fn canonicalise_header(bytes: &mut [u8]) {
    let Some(length) = bytes
        .get(..8)
        .and_then(|prefix| <[u8; 8]>::try_from(prefix).ok())
        .and_then(|prefix| usize::try_from(u64::from_le_bytes(prefix)).ok())
    else {
        return;
    };
    let Some(header) = bytes.get(8..8 + length) else {
        return;
    };
    let text = String::from_utf8_lossy(header);
    let json = text.trim_end_matches(' ');
    let Ok(sorted) = serde_json::from_str::<serde_json::Value>(json).map(|v| sort_keys(v).to_string()) else {
        return;
    };
    if sorted.len() == json.len() {
        bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    }
}

/// The JSON value with every object's keys in sorted order (whether or not serde_json preserves order).
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort_keys(v))).collect())
        }
        other => other,
    }
}

impl NamedTensors {
    /// Reads a safetensors file of F32 tensors; returns the tensors sorted by name (safetensors itself
    /// keeps no order; models look tensors up by name) and the metadata.
    pub fn load_safetensors(file: &Path) -> Result<(Self, BTreeMap<String, String>), WeightsError> {
        let bytes = std::fs::read(file).map_err(|source| WeightsError::Unreadable {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_safetensors_bytes(&bytes, file)
    }

    /// Parses safetensors bytes (F32 tensors only) as [`Self::load_safetensors`] does; `origin` names
    /// where they came from in errors (a file, or e.g. `upload from site S1`).
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        origin: &Path,
    ) -> Result<(Self, BTreeMap<String, String>), WeightsError> {
        let (borrowed, metadata) = Self::borrow_safetensors_bytes(bytes, origin)?;
        let tensors = borrowed
            .into_iter()
            .map(|tensor| {
                let values = tensor.values().collect();
                NamedTensor::new(tensor.name, tensor.shape, values)
            })
            .collect::<Result<_, _>>()?;
        Ok((Self { tensors }, metadata))
    }

    /// The tensors of safetensors bytes (F32 only) without decoding their values: sorted by name,
    /// with the metadata, checked as [`Self::from_safetensors_bytes`] checks them.
    pub fn borrow_safetensors_bytes<'a>(
        bytes: &'a [u8],
        origin: &Path,
    ) -> Result<(Vec<F32TensorBytes<'a>>, BTreeMap<String, String>), WeightsError> {
        let malformed = |message: String| WeightsError::Malformed {
            file: origin.to_path_buf(),
            message,
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| malformed(e.to_string()))?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let parsed = safetensors::SafeTensors::deserialize(bytes).map_err(|e| malformed(e.to_string()))?;
        let mut entries: Vec<(String, safetensors::tensor::TensorView<'a>)> = parsed.tensors();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = Vec::with_capacity(entries.len());
        for (name, view) in entries {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(WeightsError::NotF32 {
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let shape = view.shape().to_vec();
            let expected = shape.iter().product::<usize>();
            if view.data().len() != 4 * expected {
                return Err(WeightsError::ShapeMismatch {
                    name,
                    shape,
                    expected,
                    found: view.data().len() / 4,
                });
            }
            tensors.push(F32TensorBytes {
                name,
                shape,
                data: view.data(),
            });
        }
        Ok((tensors, metadata))
    }
}

/// SHA-256 of bytes as lower-case hex: the digest of a model file on the wire and on disk.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

/// Bytes (a digest) as lowercase hex, the form every digest of the project is written in.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `name` is a normalisation layer's running statistic (`…running_mean`, `…running_var`): a
/// buffer estimated from the data, not a trained parameter (a server learning rate leaves it alone).
#[must_use]
pub fn is_running_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Whether a tensor belongs to a normalisation layer (FedBN keeps these local): any path component
/// named `bn…`, `…_bn` or containing `norm`.
#[must_use]
pub fn is_local_norm(name: &str) -> bool {
    name.split('.')
        .any(|part| part.starts_with("bn") || part.ends_with("_bn") || part.contains("norm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialization_is_byte_deterministic_and_reads_back() {
        let weights = sample();
        let metadata = BTreeMap::from([
            (
                "fedlnm.model_config".to_owned(),
                r#"{"a":"ü \"q\"","b":[1,2]}"#.to_owned(),
            ),
            ("fedlnm.config_digest".to_owned(), "ab".repeat(32)),
            ("z".to_owned(), String::new()),
        ]);
        // Each call builds a new HashMap for safetensors, with its own iteration order.
        let first = weights.to_safetensors_bytes(&metadata).unwrap();
        for _ in 0..16 {
            assert_eq!(weights.to_safetensors_bytes(&metadata).unwrap(), first);
        }
        let (back, read_metadata) =
            NamedTensors::from_safetensors_bytes(&first, Path::new("memory")).unwrap();
        assert_eq!(read_metadata, metadata);
        let mut sorted = weights.clone();
        sorted.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, sorted);
    }

    fn sample() -> NamedTensors {
        NamedTensors {
            tensors: vec![
                NamedTensor::new(
                    "image.stem_conv.weight",
                    vec![2, 1, 1, 2],
                    vec![1.0, -0.5, f32::MIN_POSITIVE, 3.25e-8],
                )
                .unwrap(),
                NamedTensor::new("image.stem_bn.running_var", vec![2], vec![0.1, 7.0]).unwrap(),
                NamedTensor::new("heads.lnm.bias", vec![1], vec![-0.0]).unwrap(),
            ],
        }
    }

    #[test]
    fn safetensors_round_trip_is_bit_exact_and_keeps_names_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        let metadata = BTreeMap::from([("fedlnm.digest".to_owned(), "abc".to_owned())]);
        sample().save_safetensors(&file, &metadata).unwrap();
        let (back, meta) = NamedTensors::load_safetensors(&file).unwrap();
        assert_eq!(meta, metadata);
        assert_eq!(
            back.names().collect::<Vec<_>>(),
            [
                "heads.lnm.bias",
                "image.stem_bn.running_var",
                "image.stem_conv.weight"
            ]
        );
        back.check_same_layout(&sample()).unwrap();
        for b in &sample().tensors {
            let a = back.get(&b.name).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.values), bits(&b.values));
        }
    }

    #[test]
    fn layout_check_names_the_problem() {
        let reference = sample();
        assert!(reference.check_same_layout(&reference).is_ok());
        let mut missing = sample();
        missing.tensors.pop();
        assert!(matches!(
            missing.check_same_layout(&reference),
            Err(WeightsError::Missing { .. })
        ));
        let mut wrong = sample();
        wrong.tensors[1] = NamedTensor::new("image.stem_bn.running_var", vec![1, 2], vec![0.1, 7.0]).unwrap();
        assert!(matches!(
            wrong.check_same_layout(&reference),
            Err(WeightsError::WrongShape { .. })
        ));
        assert!(NamedTensor::new("x", vec![3], vec![1.0]).is_err());
    }

    #[test]
    fn normalisation_names_are_recognised() {
        for name in [
            "image.stem_bn.gamma",
            "image.blocks.0.bn2.running_mean",
            "image.blocks.1.downsample_bn.beta",
            "report.layer_norm.gamma",
        ] {
            assert!(is_local_norm(name), "{name}");
        }
        for name in [
            "image.blocks.0.conv1.weight",
            "fusion.hidden.weight",
            "report.text_embedding.weight",
        ] {
            assert!(!is_local_norm(name), "{name}");
        }
    }
}
