//! Decoding the unmasked sum: the FedAvg aggregate of a training instance, the exact counts of a
//! statistics instance, the ring sums of a ring instance, each checked against what the survivors
//! may have sent.

use super::{Aggregate, CountSum, SecAggServer};
use crate::SecAggError;
use crate::quantize::dequantize;
use fedlnm_tensors::{NamedTensor, NamedTensors};

impl SecAggServer {
    /// The unmasked sum, of the configured length.
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

    pub(super) fn decode(&mut self) -> Result<Aggregate, SecAggError> {
        let round = self.config.round();
        let invalid = |reason: String| SecAggError::InvalidAggregate { round, reason };
        let sum = self.take_sum()?;
        let q = &self.config.config().quantization;
        let total = sum[sum.len() - 1] as i64;
        let max_total = q.max_sample_count.saturating_mul(self.survivors.len() as u64);
        let total_samples = u64::try_from(total)
            .ok()
            .filter(|&n| n >= self.survivors.len() as u64 && n <= max_total)
            .ok_or_else(|| invalid(format!("total sample count {total} is impossible")))?;
        let mut weighted_sum = NamedTensors::default();
        let mut fedavg_delta = NamedTensors::default();
        let mut offset = 0;
        for spec in self.config.aggregated_tensors() {
            let len = spec.len();
            let mut weighted = Vec::with_capacity(len);
            let mut average = Vec::with_capacity(len);
            for (i, &s) in sum[offset..offset + len].iter().enumerate() {
                let w = dequantize(s, q.fractional_bits);
                let (w32, a32) = (w as f32, (w / total_samples as f64) as f32);
                if !(w32.is_finite() && a32.is_finite()) {
                    return Err(invalid(format!("`{}`[{i}] = {w} is not a finite f32", spec.name)));
                }
                weighted.push(w32);
                average.push(a32);
            }
            weighted_sum.tensors.push(NamedTensor {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                values: weighted,
            });
            fedavg_delta.tensors.push(NamedTensor {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                values: average,
            });
            offset += len;
        }
        Ok(Aggregate {
            round,
            weighted_sum,
            total_samples,
            fedavg_delta,
            fixed_point_sum: sum.into_iter().map(|s| s as i64).collect(),
            survivors: self.survivors.clone(),
            dropped: self.dropped.clone(),
        })
    }
}
