//! Weighted FedAvg over named tensors: w_{r+1} = w_r + Σ n_k Δ_k / Σ n_k.
//!
//! [`FedAvg`] accumulates Σ n_k Δ_k in f64 for the plain (unmasked) aggregation; the secure
//! aggregation decodes the same quantity from masked uploads. Both end in [`apply_delta`], which checks
//! the aggregate (finite, right names and shapes) before it may become the next global model.
//! Tensors kept local (FedBN) are neither accumulated nor changed.

use crate::weights::{F32TensorBytes, NamedTensor, NamedTensors, WeightsError};
use fedlnm_tensors::elements::Elements;
use fedlnm_tensors::parallel::{available_threads, for_each_part_of_all};

/// An update or aggregate that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FedAvgError {
    #[error("update from site '{site}' does not fit the global model: {source}")]
    Layout {
        site: String,
        #[source]
        source: WeightsError,
    },
    #[error("update from site '{site}': tensor '{tensor}' holds a non-finite value")]
    NotFinite { site: String, tensor: String },
    #[error("update from site '{site}' declares {n_samples} patients; it must be at least 1")]
    NoSamples { site: String, n_samples: u64 },
    #[error("site '{site}' already contributed to this round")]
    Duplicate { site: String },
    #[error("no update to average")]
    Empty,
    #[error("the aggregate is not a valid model: {0}")]
    Aggregate(String),
}

/// Running Σ n_k Δ_k (f64) and Σ n_k of the plain aggregation.
#[derive(Debug, Clone)]
pub struct FedAvg {
    /// The aggregated tensors of the global model (names, shapes).
    layout: NamedTensors,
    /// One f64 vector per aggregated tensor, allocated at the first update (which is written into
    /// it, never added to zeros).
    sums: Vec<Vec<f64>>,
    total_samples: u64,
    contributors: Vec<String>,
    /// Threads that accumulation and averaging may use.
    threads: usize,
}

/// One tensor of an update: decoded values, or the little-endian bytes they arrived in.
type Values<'a> = Elements<'a, f32>;

/// weight · values[start..start + sum.len()] added to `sum`, or written over it (`first`).
fn add_into(values: Values<'_>, sum: &mut [f64], start: usize, weight: f64, first: bool) {
    if first {
        values.zip_into(sum, start, |s, v| *s = weight * f64::from(v));
    } else {
        values.zip_into(sum, start, |s, v| *s += weight * f64::from(v));
    }
}

impl FedAvg {
    /// An empty sum over the tensors of `global` for which `aggregated(name)` holds.
    #[must_use]
    pub fn new(global: &NamedTensors, aggregated: impl Fn(&str) -> bool) -> Self {
        let layout = NamedTensors {
            tensors: global
                .tensors
                .iter()
                .filter(|t| aggregated(&t.name))
                .map(|t| NamedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    values: Vec::new(),
                })
                .collect(),
        };
        Self {
            sums: vec![Vec::new(); layout.tensors.len()],
            layout,
            total_samples: 0,
            contributors: Vec::new(),
            threads: available_threads(),
        }
    }

    /// Limits the threads that accumulation and averaging use (default: the machine's available
    /// parallelism; at least 1). The sums do not depend on it: each element is added in site order.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The names and shapes an update must have (values empty).
    #[must_use]
    pub fn layout(&self) -> &NamedTensors {
        &self.layout
    }

    /// Adds n_k·Δ_k of one site. The delta must have exactly the aggregated tensors; it is checked
    /// whole before anything is added, so a bad update leaves the sum unchanged.
    ///
    /// # Errors
    /// Wrong names or shapes, a non-finite value, n_k = 0, or a second update from the same site.
    pub fn add(&mut self, site: &str, delta: &NamedTensors, n_samples: u64) -> Result<(), FedAvgError> {
        self.add_checked(site, n_samples, delta, |k| {
            Values::Decoded(&delta.tensors[k].values)
        })
    }

    /// [`Self::add`] of a delta read straight from its upload (safetensors bytes, see
    /// [`NamedTensors::borrow_safetensors_bytes`]): the same checks and the same sum, without decoding
    /// the delta into memory first.
    ///
    /// # Errors
    /// As [`Self::add`].
    pub fn add_f32_bytes(
        &mut self,
        site: &str,
        delta: &[F32TensorBytes<'_>],
        n_samples: u64,
    ) -> Result<(), FedAvgError> {
        let layout = NamedTensors {
            tensors: delta
                .iter()
                .map(|t| NamedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    values: Vec::new(),
                })
                .collect(),
        };
        self.add_checked(site, n_samples, &layout, |k| Values::LeBytes(delta[k].data))
    }

    /// The one implementation of [`Self::add`]: `update` gives the names and shapes of the update's
    /// tensors, `values(k)` the values of its tensor k.
    fn add_checked<'a>(
        &mut self,
        site: &str,
        n_samples: u64,
        update: &NamedTensors,
        values: impl Fn(usize) -> Values<'a>,
    ) -> Result<(), FedAvgError> {
        if self.contributors.iter().any(|c| c == site) {
            return Err(FedAvgError::Duplicate {
                site: site.to_owned(),
            });
        }
        if n_samples == 0 {
            return Err(FedAvgError::NoSamples {
                site: site.to_owned(),
                n_samples,
            });
        }
        update
            .check_same_layout(&self.layout)
            .map_err(|source| FedAvgError::Layout {
                site: site.to_owned(),
                source,
            })?;
        if let Some(bad) = (0..update.tensors.len()).find(|&k| !values(k).all(f32::is_finite)) {
            return Err(FedAvgError::NotFinite {
                site: site.to_owned(),
                tensor: update.tensors[bad].name.clone(),
            });
        }
        let weight = n_samples as f64;
        let first = self.contributors.is_empty();
        // The layout check above guarantees that every aggregated tensor is in the update, once.
        let sources: Vec<Values<'a>> = self
            .layout
            .tensors
            .iter()
            .map(|spec| {
                update
                    .tensors
                    .iter()
                    .position(|t| t.name == spec.name)
                    .map_or(Values::Decoded(&[]), &values)
            })
            .collect();
        if first {
            // Zero pages mapped lazily by the allocator: the first update writes them once.
            for (spec, sum) in self.layout.tensors.iter().zip(&mut self.sums) {
                *sum = vec![0.0; spec.shape.iter().product()];
            }
        }
        // One parallel region per update, each thread over its share of every tensor.
        let sums = self.sums.iter_mut().map(Vec::as_mut_slice).collect();
        for_each_part_of_all(sums, self.threads, |k, part, start| {
            add_into(sources[k], part, start, weight, first);
        });
        self.total_samples += n_samples;
        self.contributors.push(site.to_owned());
        Ok(())
    }

    /// Sites added so far, in order.
    #[must_use]
    pub fn contributors(&self) -> &[String] {
        &self.contributors
    }

    #[must_use]
    pub fn total_samples(&self) -> u64 {
        self.total_samples
    }

    /// The FedAvg delta Σ n_k Δ_k / Σ n_k.
    ///
    /// # Errors
    /// [`FedAvgError::Empty`] when no site contributed.
    pub fn average(&self) -> Result<NamedTensors, FedAvgError> {
        if self.total_samples == 0 {
            return Err(FedAvgError::Empty);
        }
        let total = self.total_samples as f64;
        // Rounded once, from the f64 average, to the model's f32; one parallel region for all tensors.
        let mut averages: Vec<Vec<f32>> = self.sums.iter().map(|sum| vec![0.0; sum.len()]).collect();
        let parts = averages.iter_mut().map(Vec::as_mut_slice).collect();
        for_each_part_of_all(parts, self.threads, |k, part, start| {
            for (v, &s) in part.iter_mut().zip(&self.sums[k][start..]) {
                #[allow(clippy::cast_possible_truncation)]
                {
                    *v = (s / total) as f32;
                }
            }
        });
        Ok(NamedTensors {
            tensors: self
                .layout
                .tensors
                .iter()
                .zip(averages)
                .map(|(spec, values)| NamedTensor {
                    name: spec.name.clone(),
                    shape: spec.shape.clone(),
                    values,
                })
                .collect(),
        })
    }
}

/// w + Δ̄ for every tensor of Δ̄ (the others, e.g. FedBN layers, unchanged). Checks that Δ̄ names only
/// tensors of `global` with their shapes and that the result is finite.
///
/// # Errors
/// [`FedAvgError::Aggregate`] naming the tensor at fault.
pub fn apply_delta(global: &NamedTensors, average_delta: &NamedTensors) -> Result<NamedTensors, FedAvgError> {
    let mut next = global.clone();
    for delta in &average_delta.tensors {
        let target = next
            .tensors
            .iter_mut()
            .find(|t| t.name == delta.name)
            .ok_or_else(|| FedAvgError::Aggregate(format!("unknown tensor '{}'", delta.name)))?;
        if target.values.len() != delta.values.len() {
            return Err(FedAvgError::Aggregate(format!(
                "tensor '{}' has {} values, the model {}",
                delta.name,
                delta.values.len(),
                target.values.len()
            )));
        }
        for (w, &d) in target.values.iter_mut().zip(&delta.values) {
            *w += d;
        }
        if target.values.iter().any(|v| !v.is_finite()) {
            return Err(FedAvgError::Aggregate(format!(
                "tensor '{}' is not finite after the update",
                delta.name
            )));
        }
    }
    Ok(next)
}

/// Δ = local − global over the tensors for which `aggregated(name)` holds (what a node uploads).
///
/// # Errors
/// The two models do not have the same layout.
pub fn delta(
    local: &NamedTensors,
    global: &NamedTensors,
    aggregated: impl Fn(&str) -> bool,
) -> Result<NamedTensors, WeightsError> {
    local.check_same_layout(global)?;
    let mut tensors = Vec::new();
    for g in global.tensors.iter().filter(|t| aggregated(&t.name)) {
        let l = local
            .get(&g.name)
            .ok_or_else(|| WeightsError::Missing { name: g.name.clone() })?;
        tensors.push(NamedTensor {
            name: g.name.clone(),
            shape: g.shape.clone(),
            values: l.values.iter().zip(&g.values).map(|(a, b)| a - b).collect(),
        });
    }
    Ok(NamedTensors { tensors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(values: &[f32]) -> NamedTensors {
        NamedTensors {
            tensors: vec![
                NamedTensor::new("head.weight", vec![values.len()], values.to_vec()).unwrap(),
                NamedTensor::new("bn.running_mean", vec![1], vec![0.5]).unwrap(),
            ],
        }
    }

    #[test]
    fn known_deltas_average_by_patient_count() {
        let global = model(&[1.0, 2.0]);
        let not_bn = |name: &str| !name.starts_with("bn.");
        let mut fedavg = FedAvg::new(&global, not_bn);
        let d1 = delta(&model(&[2.0, 2.0]), &global, not_bn).unwrap(); // (+1, 0), n = 100
        let d2 = delta(&model(&[1.0, 6.0]), &global, not_bn).unwrap(); // (0, +4), n = 300
        fedavg.add("S1", &d1, 100).unwrap();
        fedavg.add("S2", &d2, 300).unwrap();
        let average = fedavg.average().unwrap();
        let next = apply_delta(&global, &average).unwrap();
        assert_eq!(next.get("head.weight").unwrap().values, vec![1.25, 5.0]);
        assert_eq!(next.get("bn.running_mean").unwrap().values, vec![0.5]);
        assert_eq!(fedavg.total_samples(), 400);
    }

    #[test]
    fn bad_updates_leave_the_sum_unchanged() {
        let global = model(&[1.0, 2.0]);
        let mut fedavg = FedAvg::new(&global, |_| true);
        let good = delta(&model(&[2.0, 2.0]), &global, |_| true).unwrap();
        fedavg.add("S1", &good, 10).unwrap();
        let before = fedavg.average().unwrap();
        let mut nan = good.clone();
        nan.tensors[0].values[1] = f32::NAN;
        assert!(matches!(
            fedavg.add("S2", &nan, 10),
            Err(FedAvgError::NotFinite { .. })
        ));
        let short = model(&[1.0]);
        assert!(matches!(
            fedavg.add("S2", &short, 10),
            Err(FedAvgError::Layout { .. })
        ));
        assert!(matches!(
            fedavg.add("S1", &good, 10),
            Err(FedAvgError::Duplicate { .. })
        ));
        assert!(matches!(
            fedavg.add("S3", &good, 0),
            Err(FedAvgError::NoSamples { .. })
        ));
        assert_eq!(fedavg.average().unwrap(), before);
        assert_eq!(fedavg.contributors(), ["S1"]);
    }

    #[test]
    fn an_update_read_from_its_bytes_adds_exactly_what_the_parsed_update_adds() {
        let global = model(&[1.0, 2.0, -3.0]);
        let local = model(&[1.5, -2.0, 0.25]);
        let update = delta(&local, &global, |_| true).unwrap();
        let bytes = update
            .to_safetensors_bytes(&std::collections::BTreeMap::new())
            .unwrap();
        let (borrowed, _) =
            NamedTensors::borrow_safetensors_bytes(&bytes, std::path::Path::new("S1")).unwrap();
        let mut parsed = FedAvg::new(&global, |_| true);
        let mut read = FedAvg::new(&global, |_| true);
        parsed.add("S1", &update, 7).unwrap();
        read.add_f32_bytes("S1", &borrowed, 7).unwrap();
        assert_eq!(read.average().unwrap(), parsed.average().unwrap());
        assert_eq!(read.contributors(), parsed.contributors());

        // A non-finite value anywhere refuses the whole update, naming the tensor.
        let mut nan = update.clone();
        nan.tensors[0].values[2] = f32::INFINITY;
        let bytes = nan
            .to_safetensors_bytes(&std::collections::BTreeMap::new())
            .unwrap();
        let (borrowed, _) =
            NamedTensors::borrow_safetensors_bytes(&bytes, std::path::Path::new("S2")).unwrap();
        let before = read.average().unwrap();
        assert!(matches!(
            read.add_f32_bytes("S2", &borrowed, 7),
            Err(FedAvgError::NotFinite { ref tensor, .. }) if tensor == "head.weight"
        ));
        assert_eq!(read.average().unwrap(), before);
        assert_eq!(read.contributors(), ["S1"]);
    }

    #[test]
    fn the_average_does_not_depend_on_the_number_of_threads() {
        // Long enough to be split across threads; values whose f64 sums round differently by order.
        let n = 3 * fedlnm_tensors::parallel::MIN_PER_THREAD + 11;
        let tensor = |seed: u32| {
            let values = (0..n as u32)
                .map(|i| f32::from_bits(0x3c00_0000 | ((i.wrapping_mul(2_654_435_761) ^ seed) >> 9)) - 0.01)
                .collect();
            NamedTensors {
                tensors: vec![NamedTensor::new("w", vec![n], values).unwrap()],
            }
        };
        let global = tensor(0);
        let averages: Vec<NamedTensors> = [1, 2, 5]
            .into_iter()
            .map(|threads| {
                let mut fedavg = FedAvg::new(&global, |_| true);
                fedavg.set_threads(threads);
                for site in 1..=3 {
                    fedavg
                        .add(&format!("S{site}"), &tensor(site), u64::from(site) * 37)
                        .unwrap();
                }
                fedavg.average().unwrap()
            })
            .collect();
        assert_eq!(averages[0], averages[1]);
        assert_eq!(averages[0], averages[2]);
        // And it is the weighted mean (the first update was written, not added to zeros).
        let expected = (f64::from(tensor(1).tensors[0].values[5]) * 37.0
            + f64::from(tensor(2).tensors[0].values[5]) * 74.0
            + f64::from(tensor(3).tensors[0].values[5]) * 111.0)
            / 222.0;
        assert!((f64::from(averages[0].tensors[0].values[5]) - expected).abs() < 1e-7);
    }

    proptest! {
        #[test]
        fn fedavg_equals_the_weighted_mean_of_local_models(
            sites in prop::collection::vec((prop::collection::vec(-10.0f32..10.0, 3), 1u64..1000), 1..8)
        ) {
            let global = NamedTensors { tensors: vec![NamedTensor::new("w", vec![3], vec![0.5, -1.0, 2.0]).unwrap()] };
            let mut fedavg = FedAvg::new(&global, |_| true);
            for (k, (values, n)) in sites.iter().enumerate() {
                let local = NamedTensors { tensors: vec![NamedTensor::new("w", vec![3], values.clone()).unwrap()] };
                fedavg.add(&format!("S{k}"), &delta(&local, &global, |_| true).unwrap(), *n).unwrap();
            }
            let next = apply_delta(&global, &fedavg.average().unwrap()).unwrap();
            let total: u64 = sites.iter().map(|s| s.1).sum();
            for i in 0..3 {
                let mean: f64 = sites.iter().map(|(v, n)| *n as f64 * f64::from(v[i])).sum::<f64>() / total as f64;
                prop_assert!((f64::from(next.tensors[0].values[i]) - mean).abs() < 1e-4);
            }
        }
    }
}
