//! Weighted FedAvg over named tensors: w_{r+1} = w_r + Σ n_k Δ_k / Σ n_k.
//!
//! [`FedAvg`] accumulates Σ n_k Δ_k in f64 for the plain (unmasked) aggregation; the secure
//! aggregation decodes the same quantity from masked uploads. Both end in [`apply_delta`], which checks
//! the aggregate (finite, right names and shapes) before it may become the next global model.
//! Tensors kept local (FedBN) are neither accumulated nor changed.

use crate::weights::{F32TensorBytes, NamedTensor, NamedTensors, WeightsError};
use fedlnm_tensors::elements::{Elements, SUM_BLOCK as BLOCK};
use fedlnm_tensors::parallel::{available_threads, first_failing, for_each_part_of_all};
use fedlnm_tensors::scan::ScanReport;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

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

pub use fedlnm_tensors::elements::HeldBytes;

/// Uploads held before they are summed, by default: one sum pass for a whole round of them.
pub const DEFAULT_MAX_HELD: usize = usize::MAX;

/// Running Σ n_k Δ_k (f64) and Σ n_k of the plain aggregation.
///
/// A checked upload read in place ([`Self::hold_f32_bytes`]) is held, not summed at once: held uploads
/// are summed together block by block (each block of the sum is read and written once for all of
/// them, instead of once per upload), when [`Self::set_max_held`] of them are held and, for the last
/// ones, inside [`Self::average`]. Every element is still summed in the order the sites were added,
/// so the result does not depend on when uploads are summed, nor on the number of threads.
#[derive(Clone)]
pub struct FedAvg {
    /// The aggregated tensors of the global model (names, shapes).
    layout: NamedTensors,
    /// One f64 vector per aggregated tensor; empty until uploads are first summed into it (the first
    /// one is written into it, never added to zeros).
    sums: Vec<Vec<f64>>,
    /// Checked uploads not summed yet, in the order they were added.
    held: Vec<Held>,
    max_held: usize,
    total_samples: u64,
    contributors: Vec<String>,
    /// Threads that checks, sums and averaging may use.
    threads: usize,
}

impl std::fmt::Debug for FedAvg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FedAvg")
            .field("tensors", &self.layout.tensors.len())
            .field("summed", &!self.sums.is_empty())
            .field("held", &self.held.len())
            .field("total_samples", &self.total_samples)
            .field("contributors", &self.contributors)
            .finish_non_exhaustive()
    }
}

/// A checked upload waiting to be summed.
#[derive(Clone)]
struct Held {
    bytes: HeldBytes,
    /// Byte range of each aggregated tensor (in layout order) within `bytes`.
    ranges: Vec<Range<usize>>,
    weight: f64,
}

/// One tensor of an update: decoded values, or the little-endian bytes they arrived in.
type Values<'a> = Elements<'a, f32>;

/// Adds weight · values[at..at + block.len()] of every contribution, in order, to `block`; with
/// `first_writes`, the first contribution is written over it instead (no zeros are added to).
/// Contributions read in place are added four at a time, in one pass over the block that keeps each
/// partial sum in a register: ((s + w₁x₁) + w₂x₂) + … in the same order, hence the same bits, as one
/// pass per contribution, with a quarter of the block's loads and stores.
fn sum_block(block: &mut [f64], at: usize, contributions: &[(Values<'_>, f64)], first_writes: bool) {
    let mut rest = contributions;
    let mut first = first_writes;
    while !rest.is_empty() {
        if let [
            (Values::LeBytes(a), wa),
            (Values::LeBytes(b), wb),
            (Values::LeBytes(c), wc),
            (Values::LeBytes(d), wd),
            ..,
        ] = rest
        {
            let n = block.len();
            let words = |bytes| &<[u8]>::as_chunks::<4>(bytes).0[at..at + n];
            let (a, b, c, d) = (words(a), words(b), words(c), words(d));
            let a = |i: usize| f64::from(f32::from_le_bytes(a[i]));
            let b = |i: usize| f64::from(f32::from_le_bytes(b[i]));
            let c = |i: usize| f64::from(f32::from_le_bytes(c[i]));
            let d = |i: usize| f64::from(f32::from_le_bytes(d[i]));
            let (wa, wb, wc, wd) = (*wa, *wb, *wc, *wd);
            if first {
                for (i, s) in block.iter_mut().enumerate() {
                    *s = wa * a(i) + wb * b(i) + wc * c(i) + wd * d(i);
                }
            } else {
                for (i, s) in block.iter_mut().enumerate() {
                    *s = *s + wa * a(i) + wb * b(i) + wc * c(i) + wd * d(i);
                }
            }
            rest = &rest[4..];
        } else if let Some(((values, weight), tail)) = rest.split_first() {
            if first {
                values.zip_into(block, at, |s, v| *s = weight * f64::from(v));
            } else {
                values.zip_into(block, at, |s, v| *s += weight * f64::from(v));
            }
            rest = tail;
        }
        first = false;
    }
}

/// Per tensor (of `tensors`), the held uploads' values and weights, in the order they were added.
fn contributions(held: &[Held], tensors: usize) -> Vec<Vec<(Values<'_>, f64)>> {
    (0..tensors)
        .map(|k| {
            held.iter()
                .map(|h| {
                    (
                        Values::LeBytes(&(*h.bytes).as_ref()[h.ranges[k].clone()]),
                        h.weight,
                    )
                })
                .collect()
        })
        .collect()
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
            sums: Vec::new(),
            layout,
            held: Vec::new(),
            max_held: DEFAULT_MAX_HELD,
            total_samples: 0,
            contributors: Vec::new(),
            threads: available_threads(),
        }
    }

    /// Limits the threads that checks, sums and averaging use (default: the machine's available
    /// parallelism; at least 1). The sums do not depend on it: each element is added in site order.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Holds at most `max_held` uploads (at least 1) before summing them: memory for speed (default
    /// [`DEFAULT_MAX_HELD`]: a round's uploads are summed in one pass). The sums do not depend on it.
    pub fn set_max_held(&mut self, max_held: usize) {
        self.max_held = max_held.max(1);
        if self.held.len() >= self.max_held {
            self.sum_held();
        }
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
        self.check(
            site,
            n_samples,
            delta,
            |k| Values::Decoded(&delta.tensors[k].values),
            false,
        )?;
        // Summed at once (a decoded update is not held), after the held ones: site order.
        self.sum_held();
        let weight = n_samples as f64;
        let sources = self.in_layout_order(
            delta,
            |k| Values::Decoded(&delta.tensors[k].values),
            Values::Decoded(&[]),
        );
        let contributions: Vec<Vec<(Values<'_>, f64)>> =
            sources.into_iter().map(|v| vec![(v, weight)]).collect();
        Self::sum_into(&mut self.sums, &self.layout, &contributions, self.threads);
        self.record(site, n_samples);
        Ok(())
    }

    /// [`Self::add`] of a delta read in place from its upload (safetensors bytes, parsed with
    /// [`NamedTensors::borrow_safetensors_bytes`]; `origin` names it in errors): the same checks and
    /// the same sum, without decoding the delta. The upload is held (see the type's documentation)
    /// and dropped once summed.
    ///
    /// `scan`, when given, is a [`FiniteScan`](fedlnm_tensors::scan::FiniteScan) of exactly these
    /// bytes made as they arrived: its finding replaces reading the values again (the scan and the
    /// layout check together cover every value: safetensors tensors tile the data region).
    ///
    /// # Errors
    /// Unreadable safetensors ([`FedAvgError::Layout`]), or as [`Self::add`].
    pub fn hold_f32_bytes(
        &mut self,
        site: &str,
        bytes: HeldBytes,
        n_samples: u64,
        origin: &Path,
        scan: Option<&ScanReport>,
    ) -> Result<(), FedAvgError> {
        let data = (*bytes).as_ref();
        let (delta, _) =
            NamedTensors::borrow_safetensors_bytes(data, origin).map_err(|source| FedAvgError::Layout {
                site: site.to_owned(),
                source,
            })?;
        let update = NamedTensors {
            tensors: delta
                .iter()
                .map(|t| NamedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    values: Vec::new(),
                })
                .collect(),
        };
        let base = data.as_ptr().addr();
        let offset = |t: &F32TensorBytes<'_>| t.data.as_ptr().addr() - base;
        // The scan describes these bytes: the finding of the tensor holding its first non-finite word.
        let header_end = data
            .first_chunk::<8>()
            .map(|length| 8u64.saturating_add(u64::from_le_bytes(*length)));
        let scanned = scan
            .filter(|r| r.bytes == data.len() as u64 && r.data_start == header_end && r.whole_words)
            .and_then(|r| match r.first_non_finite {
                None => Some(None),
                Some(at) => delta
                    .iter()
                    .position(|t| (offset(t)..offset(t) + t.data.len()).contains(&(at as usize)))
                    .map(Some),
            });
        self.check(
            site,
            n_samples,
            &update,
            |k| Values::LeBytes(delta[k].data),
            scanned.is_some(),
        )?;
        if let Some(Some(bad)) = scanned {
            return Err(FedAvgError::NotFinite {
                site: site.to_owned(),
                tensor: delta[bad].name.clone(),
            });
        }
        let ranges = self.in_layout_order(
            &update,
            |k| offset(&delta[k])..offset(&delta[k]) + delta[k].data.len(),
            0..0,
        );
        self.held.push(Held {
            bytes: Arc::clone(&bytes),
            ranges,
            weight: n_samples as f64,
        });
        self.record(site, n_samples);
        if self.held.len() >= self.max_held {
            self.sum_held();
        }
        Ok(())
    }

    /// Everything about an update but its sum: a new site, n_k ≥ 1, the aggregated tensors exactly
    /// (`update` gives the names and shapes, `values(k)` the values of its tensor k), all finite
    /// (checked on the available threads, unless `finite_known`: the caller scanned them).
    fn check<'a>(
        &self,
        site: &str,
        n_samples: u64,
        update: &NamedTensors,
        values: impl Fn(usize) -> Values<'a> + Sync,
        finite_known: bool,
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
        if finite_known {
            return Ok(());
        }
        let lens: Vec<usize> = (0..update.tensors.len()).map(|k| values(k).len()).collect();
        if let Some(bad) = first_failing(&lens, self.threads, |k, range| {
            values(k).slice(range).all(f32::is_finite)
        }) {
            return Err(FedAvgError::NotFinite {
                site: site.to_owned(),
                tensor: update.tensors[bad].name.clone(),
            });
        }
        Ok(())
    }

    /// `of(k)` of the update's tensor k for each tensor of the layout, in the layout's order (the
    /// layout check guarantees each is there; `missing` otherwise).
    fn in_layout_order<T: Clone>(
        &self,
        update: &NamedTensors,
        of: impl Fn(usize) -> T,
        missing: T,
    ) -> Vec<T> {
        self.layout
            .tensors
            .iter()
            .map(|spec| {
                update
                    .tensors
                    .iter()
                    .position(|t| t.name == spec.name)
                    .map_or_else(|| missing.clone(), &of)
            })
            .collect()
    }

    fn record(&mut self, site: &str, n_samples: u64) {
        self.total_samples += n_samples;
        self.contributors.push(site.to_owned());
    }

    /// Sums the held uploads into the running sums and drops them.
    fn sum_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let contributions = contributions(&held, self.layout.tensors.len());
        Self::sum_into(&mut self.sums, &self.layout, &contributions, self.threads);
    }

    /// `sums` (allocated at the first call) += the contributions, block by block on `threads`.
    fn sum_into(
        sums: &mut Vec<Vec<f64>>,
        layout: &NamedTensors,
        contributions: &[Vec<(Values<'_>, f64)>],
        threads: usize,
    ) {
        let first = sums.is_empty();
        if first {
            // Zero pages mapped lazily by the allocator: the first contribution writes them once.
            *sums = layout
                .tensors
                .iter()
                .map(|spec| vec![0.0; spec.shape.iter().product()])
                .collect();
        }
        let parts = sums.iter_mut().map(Vec::as_mut_slice).collect();
        for_each_part_of_all(parts, threads, |k, part, start| {
            for (i, block) in part.chunks_mut(BLOCK).enumerate() {
                sum_block(block, start + i * BLOCK, &contributions[k], first);
            }
        });
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

    /// The FedAvg delta Σ n_k Δ_k / Σ n_k. Uploads still held are summed here, block by block, into
    /// the average itself: the running sum is neither written nor read again for them.
    ///
    /// # Errors
    /// [`FedAvgError::Empty`] when no site contributed.
    pub fn average(&self) -> Result<NamedTensors, FedAvgError> {
        if self.total_samples == 0 {
            return Err(FedAvgError::Empty);
        }
        let total = self.total_samples as f64;
        let contributions = contributions(&self.held, self.layout.tensors.len());
        let summed = !self.sums.is_empty();
        // Rounded once, from the f64 average, to the model's f32; one parallel region for all tensors.
        let mut averages: Vec<Vec<f32>> = self
            .layout
            .tensors
            .iter()
            .map(|spec| vec![0.0; spec.shape.iter().product()])
            .collect();
        let parts = averages.iter_mut().map(Vec::as_mut_slice).collect();
        for_each_part_of_all(parts, self.threads, |k, part, start| {
            let mut block = [0.0_f64; BLOCK];
            for (i, out) in part.chunks_mut(BLOCK).enumerate() {
                let at = start + i * BLOCK;
                let block = &mut block[..out.len()];
                if summed {
                    block.copy_from_slice(&self.sums[k][at..at + out.len()]);
                }
                sum_block(block, at, &contributions[k], !summed);
                for (v, &s) in out.iter_mut().zip(block.iter()) {
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        *v = (s / total) as f32;
                    }
                }
            }
        });
        let layout = self
            .layout
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()));
        Ok(NamedTensors::from_layout(layout, averages))
    }
}

/// w + η·Δ̄ for every tensor of Δ̄ (the others, e.g. FedBN layers, unchanged), with η the server
/// learning rate (`rounds.server_learning_rate`; 1: FedAvg, w + Δ̄ to the bit) for trained parameters
/// and 1 for normalisation running statistics ([`crate::weights::is_running_statistic`]: an
/// extrapolated variance could turn negative). Checks that Δ̄ names only
/// tensors of `global`, each once, with their shapes, and that the result is finite. Δ̄'s vectors become
/// the new model's (w is added into them, on the available threads): the new model costs no fresh
/// memory beside the tensors Δ̄ leaves out.
///
/// # Errors
/// [`FedAvgError::Aggregate`] naming the tensor at fault.
pub fn apply_delta(
    global: &NamedTensors,
    average_delta: NamedTensors,
    server_learning_rate: f32,
) -> Result<NamedTensors, FedAvgError> {
    let mut updated: Vec<Option<NamedTensor>> = global.tensors.iter().map(|_| None).collect();
    for delta in average_delta.tensors {
        let position = global
            .tensors
            .iter()
            .position(|t| t.name == delta.name)
            .ok_or_else(|| FedAvgError::Aggregate(format!("unknown tensor '{}'", delta.name)))?;
        let target = &global.tensors[position];
        if target.values.len() != delta.values.len() {
            return Err(FedAvgError::Aggregate(format!(
                "tensor '{}' has {} values, the model {}",
                delta.name,
                delta.values.len(),
                target.values.len()
            )));
        }
        if updated[position].is_some() {
            return Err(FedAvgError::Aggregate(format!(
                "tensor '{}' twice in the update",
                delta.name
            )));
        }
        updated[position] = Some(NamedTensor {
            name: delta.name,
            shape: target.shape.clone(),
            values: delta.values,
        });
    }
    // η·Δ̄ + w (with η = 1 the same bits as w + Δ̄) in place, one parallel region for all tensors.
    let positions: Vec<usize> = (0..updated.len()).filter(|&p| updated[p].is_some()).collect();
    let rates: Vec<f32> = positions
        .iter()
        .map(|&p| {
            if crate::weights::is_running_statistic(&global.tensors[p].name) {
                1.0
            } else {
                server_learning_rate
            }
        })
        .collect();
    let not_finite = std::sync::Mutex::new(Vec::new());
    let parts = updated
        .iter_mut()
        .filter_map(|t| t.as_mut().map(|t| t.values.as_mut_slice()))
        .collect();
    for_each_part_of_all(parts, available_threads(), |k, part, start| {
        let weights = &global.tensors[positions[k]].values[start..start + part.len()];
        let mut finite = true;
        let rate = rates[k];
        for (d, &w) in part.iter_mut().zip(weights) {
            *d = rate * *d + w;
            finite &= d.is_finite();
        }
        if !finite && let Ok(mut bad) = not_finite.lock() {
            bad.push(positions[k]);
        }
    });
    let first_bad = not_finite.into_inner().ok().and_then(|bad| bad.into_iter().min());
    if let Some(position) = first_bad {
        return Err(FedAvgError::Aggregate(format!(
            "tensor '{}' is not finite after the update",
            global.tensors[position].name
        )));
    }
    Ok(NamedTensors {
        tensors: updated
            .into_iter()
            .zip(&global.tensors)
            .map(|(next, old)| next.unwrap_or_else(|| old.clone()))
            .collect(),
    })
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
        let next = apply_delta(&global, average, 1.0).unwrap();
        assert_eq!(next.get("head.weight").unwrap().values, vec![1.25, 5.0]);
        assert_eq!(next.get("bn.running_mean").unwrap().values, vec![0.5]);
        assert_eq!(fedavg.total_samples(), 400);
    }

    #[test]
    fn an_aggregate_that_is_not_a_model_is_refused_by_tensor() {
        let n = 3 * fedlnm_tensors::parallel::MIN_PER_THREAD;
        let global = NamedTensors {
            tensors: vec![
                NamedTensor::new("a", vec![n], vec![1.0; n]).unwrap(),
                NamedTensor::new("b", vec![2], vec![f32::MAX, 0.0]).unwrap(),
            ],
        };
        let step = |name: &str, values: Vec<f32>| NamedTensors {
            tensors: vec![NamedTensor::new(name, vec![values.len()], values).unwrap()],
        };
        let next = apply_delta(&global, step("a", vec![0.5; n]), 1.0).unwrap();
        assert!(next.tensors[0].values.iter().all(|&v| v == 1.5));
        assert_eq!(next.tensors[1].values, global.tensors[1].values);
        let refused = |aggregate: NamedTensors| match apply_delta(&global, aggregate, 1.0) {
            Err(FedAvgError::Aggregate(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(step("c", vec![0.0])).contains("unknown tensor 'c'"));
        assert!(refused(step("b", vec![0.0; 3])).contains("'b' has 3 values"));
        let mut inf = vec![0.0; n];
        inf[n - 1] = f32::INFINITY;
        assert!(refused(step("a", inf)).contains("'a' is not finite"));
        assert!(refused(step("b", vec![f32::MAX, 0.0])).contains("'b' is not finite"));
        let mut twice = step("b", vec![0.0, 1.0]);
        twice.tensors.push(twice.tensors[0].clone());
        assert!(refused(twice).contains("'b' twice"));
    }

    #[test]
    fn a_server_learning_rate_scales_parameters_not_running_statistics() {
        let n = 3 * fedlnm_tensors::parallel::MIN_PER_THREAD;
        let global = NamedTensors {
            tensors: vec![
                NamedTensor::new("image.conv.weight", vec![n], vec![1.0; n]).unwrap(),
                NamedTensor::new("image.bn1.running_mean", vec![2], vec![0.0, 0.0]).unwrap(),
                NamedTensor::new("image.bn1.running_var", vec![2], vec![1.0, 1.0]).unwrap(),
            ],
        };
        let average = NamedTensors {
            tensors: vec![
                NamedTensor::new("image.conv.weight", vec![n], vec![0.25; n]).unwrap(),
                NamedTensor::new("image.bn1.running_mean", vec![2], vec![0.5, -0.5]).unwrap(),
                NamedTensor::new("image.bn1.running_var", vec![2], vec![-0.75, 0.5]).unwrap(),
            ],
        };
        let next = apply_delta(&global, average.clone(), 2.0).unwrap();
        // Trained parameters move η = 2 times the average change; the statistics move it once (twice
        // would make the first variance −0.5).
        assert!(next.tensors[0].values.iter().all(|&v| v == 1.5));
        assert_eq!(next.tensors[1].values, vec![0.5, -0.5]);
        assert_eq!(next.tensors[2].values, vec![0.25, 1.5]);
        // η = 1 is FedAvg's w + Δ̄.
        let fedavg = apply_delta(&global, average, 1.0).unwrap();
        assert!(fedavg.tensors[0].values.iter().all(|&v| v == 1.25));
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

    fn held(update: &NamedTensors) -> HeldBytes {
        Arc::new(
            update
                .to_safetensors_bytes(&std::collections::BTreeMap::new())
                .unwrap(),
        )
    }

    #[test]
    fn an_update_read_from_its_bytes_adds_exactly_what_the_parsed_update_adds() {
        let global = model(&[1.0, 2.0, -3.0]);
        let local = model(&[1.5, -2.0, 0.25]);
        let update = delta(&local, &global, |_| true).unwrap();
        let mut parsed = FedAvg::new(&global, |_| true);
        let mut read = FedAvg::new(&global, |_| true);
        parsed.add("S1", &update, 7).unwrap();
        read.hold_f32_bytes("S1", held(&update), 7, Path::new("S1"), None)
            .unwrap();
        assert_eq!(read.average().unwrap(), parsed.average().unwrap());
        assert_eq!(read.contributors(), parsed.contributors());

        // A non-finite value anywhere refuses the whole update, naming the tensor.
        let mut nan = update.clone();
        nan.tensors[0].values[2] = f32::INFINITY;
        let before = read.average().unwrap();
        assert!(matches!(
            read.hold_f32_bytes("S2", held(&nan), 7, Path::new("S2"), None),
            Err(FedAvgError::NotFinite { ref tensor, .. }) if tensor == "head.weight"
        ));
        // So do bytes that are not safetensors, naming the site.
        let junk: HeldBytes = Arc::new(b"not a safetensors file".to_vec());
        assert!(matches!(
            read.hold_f32_bytes("S3", junk, 7, Path::new("S3"), None),
            Err(FedAvgError::Layout { ref site, .. }) if site == "S3"
        ));
        assert_eq!(read.average().unwrap(), before);
        assert_eq!(read.contributors(), ["S1"]);
    }

    #[test]
    fn a_scan_made_on_arrival_finds_what_reading_the_values_finds() {
        use fedlnm_tensors::scan::FiniteScan;
        let global = model(&[1.0, 2.0, -3.0]);
        let scan_of = |bytes: &[u8], chunk: usize| {
            let mut scan = FiniteScan::new();
            bytes.chunks(chunk).for_each(|c| scan.update(c));
            scan.finish()
        };
        let mut update = delta(&model(&[1.5, -2.0, 0.25]), &global, |_| true).unwrap();
        for bad in [None, Some((0, 2)), Some((1, 0))] {
            if let Some((tensor, value)) = bad {
                update.tensors[tensor].values[value] = f32::NEG_INFINITY;
            }
            let bytes = update
                .to_safetensors_bytes(&std::collections::BTreeMap::new())
                .unwrap();
            let outcome = |scan: Option<&ScanReport>| {
                let mut fedavg = FedAvg::new(&global, |_| true);
                let result = fedavg.hold_f32_bytes("S1", Arc::new(bytes.clone()), 7, Path::new("S1"), scan);
                (result.map_err(|e| e.to_string()), fedavg.average().ok())
            };
            let read = outcome(None);
            for chunk in [1, 3, 5, bytes.len()] {
                assert_eq!(
                    outcome(Some(&scan_of(&bytes, chunk))),
                    read,
                    "{bad:?}, chunks of {chunk}"
                );
            }
            // A scan of other bytes is not trusted: the values are read.
            assert_eq!(
                outcome(Some(&scan_of(&bytes[..bytes.len() - 4], 7))),
                read,
                "{bad:?}"
            );
            assert_eq!(read.0.is_err(), bad.is_some(), "{read:?}");
        }
    }

    #[test]
    fn held_uploads_sum_bit_for_bit_as_uploads_summed_one_by_one() {
        // Long enough for blocks and threads; values whose f64 sums round differently by order.
        let n = 2 * fedlnm_tensors::parallel::MIN_PER_THREAD + BLOCK + 13;
        let update = |seed: u32| NamedTensors {
            tensors: vec![
                NamedTensor::new(
                    "a",
                    vec![n],
                    (0..n as u32)
                        .map(|i| {
                            f32::from_bits(0x3c00_0000 | ((i.wrapping_mul(2_654_435_761) ^ seed) >> 9)) - 0.01
                        })
                        .collect(),
                )
                .unwrap(),
                NamedTensor::new("b", vec![3], vec![seed as f32, -0.5, 1e-3]).unwrap(),
            ],
        };
        let global = update(0);
        let sites = 7u32;
        let mut one_by_one = FedAvg::new(&global, |_| true);
        for site in 1..=sites {
            one_by_one
                .add(&format!("S{site}"), &update(site), u64::from(site) * 37)
                .unwrap();
        }
        let expected = one_by_one.average().unwrap();
        for max_held in [1, 2, 3, DEFAULT_MAX_HELD] {
            for threads in [1, 2, 5] {
                let mut fedavg = FedAvg::new(&global, |_| true);
                fedavg.set_threads(threads);
                fedavg.set_max_held(max_held);
                for site in 1..=sites {
                    let bytes = held(&update(site));
                    fedavg
                        .hold_f32_bytes(
                            &format!("S{site}"),
                            bytes,
                            u64::from(site) * 37,
                            Path::new("u"),
                            None,
                        )
                        .unwrap();
                    assert!(fedavg.held.len() < max_held, "at most {max_held} held");
                }
                assert_eq!(
                    fedavg.average().unwrap(),
                    expected,
                    "max_held {max_held}, {threads} threads"
                );
                // A decoded update after held ones is summed after them.
                let mut mixed = fedavg.clone();
                let mut reference = one_by_one.clone();
                mixed.add("S8", &update(8), 5).unwrap();
                reference.add("S8", &update(8), 5).unwrap();
                assert_eq!(mixed.average().unwrap(), reference.average().unwrap());
            }
        }
    }

    #[test]
    fn a_summed_upload_is_dropped_with_what_it_keeps_alive() {
        let global = model(&[1.0, 2.0]);
        let bytes = held(&delta(&model(&[2.0, 2.0]), &global, |_| true).unwrap());
        let mut fedavg = FedAvg::new(&global, |_| true);
        fedavg.set_max_held(2);
        fedavg
            .hold_f32_bytes("S1", Arc::clone(&bytes), 3, Path::new("S1"), None)
            .unwrap();
        assert_eq!(Arc::strong_count(&bytes), 2, "held until summed");
        let other = held(&delta(&model(&[0.0, 2.0]), &global, |_| true).unwrap());
        fedavg
            .hold_f32_bytes("S2", other, 1, Path::new("S2"), None)
            .unwrap();
        assert_eq!(Arc::strong_count(&bytes), 1, "dropped once summed");
        assert_eq!(fedavg.average().unwrap().tensors[0].values, vec![0.5, 0.0]);
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
            let next = apply_delta(&global, fedavg.average().unwrap(), 1.0).unwrap();
            let total: u64 = sites.iter().map(|s| s.1).sum();
            for i in 0..3 {
                let mean: f64 = sites.iter().map(|(v, n)| *n as f64 * f64::from(v[i])).sum::<f64>() / total as f64;
                prop_assert!((f64::from(next.tensors[0].values[i]) - mean).abs() < 1e-4);
            }
        }
    }
}
