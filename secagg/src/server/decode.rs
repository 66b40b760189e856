//! Decoding the unmasked sum: the FedAvg aggregate of a training instance, the exact counts of a
//! statistics instance, the ring sums of a ring instance, each checked against what the survivors
//! may have sent.

use super::{Aggregate, CountSum, SecAggServer};
use crate::Ring;
use crate::SecAggError;
use crate::config::scale;
use crate::quantize::dequantize;
use fedlnm_tensors::parallel::{for_each_part, for_each_part_of_all};
use fedlnm_tensors::{NamedTensor, NamedTensors};

impl SecAggServer {
    /// The unmasked sum, of the configured length. Summed mod 2^64; counts and ring sums are
    /// instances of Z_2^64, the only ring they may use.
    fn take_sum(&mut self) -> Result<Vec<u64>, SecAggError> {
        let sum = std::mem::take(&mut self.masked_sum);
        if sum.len() == self.config.vector_len() {
            Ok(sum)
        } else {
            Err(SecAggError::InvalidAggregate {
                round: self.config.round(),
                reason: format!("{} elements, expected {}", sum.len(), self.config.vector_len()),
            })
        }
    }

    pub(super) fn decode_counts(&mut self) -> Result<CountSum, SecAggError> {
        let round = self.config.round();
        let (sum, sites) = self.take_sum_of_sites()?;
        let max_total = self
            .config
            .config()
            .quantization
            .max_sample_count
            .saturating_mul(sites);
        let within = sum[..sum.len() - 1]
            .iter()
            .try_fold(0u64, |total, &count| total.checked_add(count))
            .is_some_and(|total| total <= max_total);
        if !within {
            return Err(SecAggError::InvalidAggregate {
                round,
                reason: format!("the counts exceed what {sites} sites may report"),
            });
        }
        Ok(self.split(&sum))
    }

    pub(super) fn decode_ring(&mut self) -> Result<CountSum, SecAggError> {
        let (sum, _) = self.take_sum_of_sites()?;
        Ok(self.split(&sum))
    }

    /// The unmasked sum and the number of survivors, which its last element must count.
    fn take_sum_of_sites(&mut self) -> Result<(Vec<u64>, u64), SecAggError> {
        let sum = self.take_sum()?;
        let sites = self.survivors.len() as u64;
        if sum[sum.len() - 1] != sites {
            return Err(SecAggError::InvalidAggregate {
                round: self.config.round(),
                reason: format!(
                    "the sum counts {} sites, but {sites} uploaded",
                    sum[sum.len() - 1] as i64
                ),
            });
        }
        Ok((sum, sites))
    }

    /// The sum cut into the configured tensors.
    fn split(&self, sum: &[u64]) -> CountSum {
        let mut counts = Vec::with_capacity(self.config.aggregated_tensors().len());
        let mut offset = 0;
        for spec in self.config.aggregated_tensors() {
            counts.push(sum[offset..offset + spec.len()].to_vec());
            offset += spec.len();
        }
        CountSum {
            round: self.config.round(),
            counts,
            survivors: self.survivors.clone(),
            dropped: self.dropped.clone(),
        }
    }

    /// The FedAvg delta from the unmasked sum, on the available threads: element i of the average is
    /// `(dequantize(sum[i]) / Σ n_k) as f32`, as one thread would compute it.
    pub(super) fn decode(&mut self) -> Result<Aggregate, SecAggError> {
        let round = self.config.round();
        let invalid = |reason: String| SecAggError::InvalidAggregate { round, reason };
        let mut sum = self.take_sum()?;
        let q = &self.config.config().quantization;
        let (fractional_bits, ring) = (q.fractional_bits, q.ring);
        // Summed mod 2^64: reduced into the instance's ring in place (nothing to do in Z_2^64), then
        // read as two's complement from here on, the same buffer without a copy.
        if ring != Ring::Z2_64 {
            for_each_part(&mut sum, self.threads, |part, _| {
                for s in part {
                    *s = ring.signed(*s) as u64;
                }
            });
        }
        let sum: Vec<i64> = bytemuck::allocation::cast_vec(sum);
        let total = sum[sum.len() - 1];
        let max_total = q.max_sample_count.saturating_mul(self.survivors.len() as u64);
        let total_samples = u64::try_from(total)
            .ok()
            .filter(|&n| n >= self.survivors.len() as u64 && n <= max_total)
            .ok_or_else(|| invalid(format!("total sample count {total} is impossible")))?;
        let specs = self.config.aggregated_tensors();
        let offsets: Vec<usize> = specs
            .iter()
            .scan(0, |offset, spec| {
                let start = *offset;
                *offset += spec.len();
                Some(start)
            })
            .collect();
        // Zero pages mapped lazily: the decoding threads write each element once. Every element is
        // finite: |s| ≤ 2^63, so |s / 2^f| < f32::MAX for any f ≥ 0, and Σ n_k ≥ 1. Multiplying by
        // 2^-f is dividing by 2^f, exactly (a power of two), at a fraction of the cost.
        let unit = scale(fractional_bits).recip();
        let mut averages: Vec<Vec<f32>> = specs.iter().map(|spec| vec![0.0; spec.len()]).collect();
        let parts = averages.iter_mut().map(Vec::as_mut_slice).collect();
        for_each_part_of_all(parts, self.threads, |k, part, start| {
            let sums = &sum[offsets[k] + start..offsets[k] + start + part.len()];
            for (average, &s) in part.iter_mut().zip(sums) {
                *average = ((s as f64 * unit) / total_samples as f64) as f32;
            }
        });
        let layout = specs
            .iter()
            .map(|spec| (spec.name.as_str(), spec.shape.as_slice()));
        let fedavg_delta = NamedTensors::from_layout(layout, averages);
        Ok(Aggregate {
            round,
            total_samples,
            fedavg_delta,
            fixed_point_sum: sum,
            fractional_bits,
            survivors: self.survivors.clone(),
            dropped: self.dropped.clone(),
        })
    }
}

impl Aggregate {
    /// Σ_k n_k·Δ_k over the survivors U3, decoded from [`Self::fixed_point_sum`] (same tensors and
    /// shapes as [`Self::fedavg_delta`]).
    #[must_use]
    pub fn weighted_sum(&self) -> NamedTensors {
        let mut offset = 0;
        let tensors = self
            .fedavg_delta
            .tensors
            .iter()
            .map(|t| {
                let sums = &self.fixed_point_sum[offset..offset + t.values.len()];
                offset += t.values.len();
                NamedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    values: sums
                        .iter()
                        .map(|&s| dequantize(s, self.fractional_bits) as f32)
                        .collect(),
                }
            })
            .collect();
        NamedTensors { tensors }
    }
}
