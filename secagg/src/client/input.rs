//! Round 2 of the site's side: what goes into the masked vector (a weighted delta in fixed point, or
//! integer counts), and the masking itself, after the delivered shares are checked and opened.

use std::collections::BTreeMap;

use super::super::config::Transcript;
use super::super::crypto::{ShareContext, open_shares, self_mask_seed};
use super::super::messages::{MaskedInput, MaskedVector, ShareDelivery};
use super::super::noise::DiscreteGaussian;
use super::super::prg::{Sign, apply_masks};
use super::super::quantize::{RoundingSource, quantize_weighted};
use super::super::shamir::Share;
use super::super::{InputKind, Ring, RoundStage, SecAggError, SiteId};
use super::{SecAggClient, site_header};
use fedlnm_tensors::NamedTensors;

impl SecAggClient {
    /// Round 2: checks U2 and decrypts the shares addressed to this site, checks the site's own delta
    /// (finite, L2 norm, shapes, sample count), quantizes n_u·Δ_u and n_u, and masks them:
    /// y_u = q + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv) over v in U2 (mod 2^64, or 2^32
    /// in a Z_2^32 instance).
    /// FedBN-excluded tensors of `delta` are ignored: they are never quantized, masked or sent.
    ///
    /// # Errors
    /// A bad delta or sample count; a delivery for another round/study/site; U2 with a foreign site or
    /// fewer than t sites; a missing, extra or tampered share; an instance configured for counts.
    pub fn masked_input(
        &mut self,
        delivery: &ShareDelivery,
        delta: &NamedTensors,
        n_samples: u64,
    ) -> Result<MaskedInput, SecAggError> {
        self.expect_input(InputKind::WeightedDelta)?;
        self.expect_stage(RoundStage::ShareKeys)?;
        let norm = self.config.check_delta(self.site, delta, n_samples)?;
        let received = self.open_delivery(delivery)?;
        let vector = self.quantize(delta, norm, n_samples)?;
        Ok(self.mask(vector, received, &delivery.senders))
    }

    /// How many elements of n_u·Δ_u over the aggregated tensors lie beyond ±`clip_bound` and would
    /// be clipped by [`Self::masked_input`] (a Z_2^32 instance clips at ±4,096: a node warns its
    /// operator). Under differential privacy the delta is clipped by its L2 norm instead: 0.
    #[must_use]
    pub fn clipped_elements(&self, delta: &NamedTensors, n_samples: u64) -> usize {
        if self.config.noise().is_some() {
            return 0;
        }
        let clip = self.config.config().quantization.clip_bound;
        let n = n_samples as f64;
        self.config
            .aggregated_tensors()
            .iter()
            .filter_map(|spec| delta.get(&spec.name))
            .flat_map(|tensor| &tensor.values)
            .filter(|&&d| (n * f64::from(d)).abs() > clip)
            .count()
    }

    /// Round 2 of a statistics instance ([`InputKind::Counts`]): as [`Self::masked_input`], for
    /// non-negative integer counts, one slice per configured tensor in order (e.g. a score histogram's
    /// positive and negative bins). The counts are summed exactly; no quantization, no weighting.
    ///
    /// # Errors
    /// Counts of the wrong layout, or totalling more than `quantization.max_sample_count`; a delivery
    /// as for [`Self::masked_input`]; an instance configured for weighted deltas.
    pub fn masked_counts(
        &mut self,
        delivery: &ShareDelivery,
        counts: &[&[u64]],
    ) -> Result<MaskedInput, SecAggError> {
        self.expect_input(InputKind::Counts)?;
        let vector = self.laid_out(counts)?;
        let total = vector
            .iter()
            .fold(0u64, |total, &count| total.saturating_add(count));
        let max = self.config.config().quantization.max_sample_count;
        if total > max {
            let (site, round) = (self.site, self.config.round());
            let reason = format!("the counts total {total}, more than {max}");
            return Err(SecAggError::Counts { site, round, reason });
        }
        self.mask_vector(delivery, vector)
    }

    /// Round 2 of a ring instance ([`InputKind::Ring`]): as [`Self::masked_counts`], for elements of
    /// Z_2^64 that the caller encoded (e.g. signed fixed point); summed modulo 2^64, nothing bounded.
    ///
    /// # Errors
    /// Vectors of the wrong layout; a delivery as for [`Self::masked_input`]; an instance configured
    /// for another input.
    pub fn masked_ring(
        &mut self,
        delivery: &ShareDelivery,
        values: &[&[u64]],
    ) -> Result<MaskedInput, SecAggError> {
        self.expect_input(InputKind::Ring)?;
        let vector = self.laid_out(values)?;
        self.mask_vector(delivery, vector)
    }

    /// One vector per configured tensor, of its length, concatenated (round 2 must be next).
    fn laid_out(&self, values: &[&[u64]]) -> Result<Vec<u64>, SecAggError> {
        self.expect_stage(RoundStage::ShareKeys)?;
        let (site, round) = (self.site, self.config.round());
        let problem = |reason: String| SecAggError::Counts { site, round, reason };
        let specs = self.config.aggregated_tensors();
        if values.len() != specs.len() {
            return Err(problem(format!(
                "{} vectors, expected {}",
                values.len(),
                specs.len()
            )));
        }
        let mut vector = Vec::with_capacity(self.config.vector_len());
        for (spec, values) in specs.iter().zip(values) {
            if values.len() != spec.len() {
                return Err(problem(format!(
                    "`{}` has {} elements, expected {}",
                    spec.name,
                    values.len(),
                    spec.len()
                )));
            }
            vector.extend_from_slice(values);
        }
        Ok(vector)
    }

    /// Appends the site element (1), opens the delivery and masks.
    fn mask_vector(
        &mut self,
        delivery: &ShareDelivery,
        mut vector: Vec<u64>,
    ) -> Result<MaskedInput, SecAggError> {
        vector.push(1);
        let received = self.open_delivery(delivery)?;
        Ok(self.mask(vector, received, &delivery.senders))
    }

    /// Checks U2 and decrypts the shares addressed to this site; changes nothing.
    fn open_delivery(
        &self,
        delivery: &ShareDelivery,
    ) -> Result<BTreeMap<SiteId, (Share, Share)>, SecAggError> {
        self.check_round_header(&delivery.header)?;
        let (site, round) = (self.site, self.config.round());
        if delivery.to != site {
            return Err(self.malformed(format!("share delivery addressed to {}", delivery.to)));
        }
        let senders = &delivery.senders;
        if senders.windows(2).any(|w| w[0] >= w[1]) {
            return Err(self.malformed("U2 is not sorted or repeats a site".into()));
        }
        if let Some(&v) = senders
            .iter()
            .find(|&&v| v != site && !self.pairwise_seeds.contains_key(&v))
        {
            return Err(SecAggError::NotInRound {
                site: v,
                round,
                stage: RoundStage::ShareKeys,
            });
        }
        if !senders.contains(&site) {
            return Err(self.malformed("U2 leaves this site out".into()));
        }
        self.check_neighbourhood(senders, RoundStage::MaskedInputCollection)?;
        if delivery.shares.len() != senders.len() - 1 {
            return Err(self.malformed(format!(
                "{} shares delivered for {} other senders",
                delivery.shares.len(),
                senders.len() - 1
            )));
        }
        let hash = self.config.config_hash();
        let my_point = self.config.share_point(site);
        let mut received = BTreeMap::new();
        for share in &delivery.shares {
            let v = share.from;
            if share.to != site || v == site || !senders.contains(&v) || received.contains_key(&v) {
                return Err(self.malformed(format!("unexpected share from {v} to {}", share.to)));
            }
            let ctx = ShareContext {
                study_id: self.config.study_id(),
                round,
                config_hash: &hash,
                from: v,
                to: site,
            };
            let opened = self
                .channel_keys
                .get(&v)
                .and_then(|key| open_shares(key, &ctx, &share.ciphertext));
            let Some((key_share, seed_share)) = opened else {
                return Err(SecAggError::ShareDecryption { site, from: v, round });
            };
            if Some(key_share.x) != my_point || Some(seed_share.x) != my_point {
                return Err(SecAggError::ShareDecryption { site, from: v, round });
            }
            received.insert(v, (key_share, seed_share));
        }
        Ok(received)
    }

    /// `[q(n·Δ), n]`: the weighted delta in fixed point (stochastic rounding) and the sample count.
    /// With differential privacy: `[q(clip_C(Δ)) + noise, 1]` (equal weights, distributed discrete
    /// Gaussian noise, [`crate::noise`]); `norm` is Δ's L2 norm over the aggregated tensors.
    fn quantize(&self, delta: &NamedTensors, norm: f64, n_samples: u64) -> Result<Vec<u64>, SecAggError> {
        let q = &self.config.config().quantization;
        let mut rounding = self.rounding_source()?;
        let noise = self.config.noise();
        // Under DP: scale Δ into the L2 ball of radius C, and weigh every site 1.
        let (scale, weight) = match &noise {
            None => (1.0f32, n_samples),
            Some((privacy, _)) => {
                #[allow(clippy::cast_possible_truncation)] // A factor in (0, 1].
                let scale = if norm > privacy.clip_norm {
                    (privacy.clip_norm / norm) as f32
                } else {
                    1.0
                };
                (scale, 1)
            }
        };
        // Room for the site element `mask_vector` appends: a full vector would be copied to grow.
        let mut vector = Vec::with_capacity(self.config.vector_len() + 1);
        vector.resize(self.config.vector_len(), 0u64);
        let mut offset = 0;
        let mut scaled = Vec::new();
        for spec in self.config.aggregated_tensors() {
            let len = spec.len();
            // check_delta guaranteed that every aggregated tensor is present with this length.
            let mut values = delta.get(&spec.name).map_or(&[][..], |t| t.values.as_slice());
            if scale < 1.0 {
                scaled.clear();
                scaled.extend(values.iter().map(|v| v * scale));
                values = &scaled;
            }
            let out = &mut vector[offset..offset + len];
            quantize_weighted(
                values,
                weight,
                q.clip_bound,
                q.fractional_bits,
                &mut rounding,
                out,
            );
            offset += len;
        }
        if let Some((_, sigma)) = noise {
            let mut gaussian = DiscreteGaussian::new(sigma);
            for element in &mut vector[..offset] {
                *element = element.wrapping_add(gaussian.sample(&mut rounding) as u64);
            }
        }
        vector[offset] = weight;
        Ok(vector)
    }

    /// Adds the self mask and the pairwise masks of `senders` (U2) to `vector` and moves to the
    /// masked-input stage, keeping the shares `received` for unmasking.
    fn mask(
        &mut self,
        mut vector: Vec<u64>,
        received: BTreeMap<SiteId, (Share, Share)>,
        senders: &[SiteId],
    ) -> MaskedInput {
        let site = self.site;
        let self_seed = self_mask_seed(&self.self_secret, self.config.salt(), site);
        let mut masks = vec![(&self_seed, Sign::Add)];
        for &v in senders.iter().filter(|&&v| v != site) {
            if let Some(seed) = self.pairwise_seeds.get(&v) {
                masks.push((seed, if v > site { Sign::Add } else { Sign::Subtract }));
            }
        }
        let ring = self.config.config().quantization.ring;
        apply_masks(&mut vector, 0, &masks, ring, self.threads);
        self.held.extend(received);
        self.senders = senders.to_vec();
        self.stage = RoundStage::MaskedInputCollection;
        let masked = match ring {
            Ring::Z2_64 => MaskedVector::Z2_64(vector),
            // Reduced mod 2^32: the masks were added mod 2^64, and 2^32 divides 2^64.
            Ring::Z2_32 => MaskedVector::Z2_32(vector.into_iter().map(|w| w as u32).collect()),
        };
        MaskedInput {
            header: site_header(&self.config, site),
            masked,
        }
    }

    /// The rounding stream: keyed by the site's secret and the instance when one is set
    /// ([`Self::set_rounding_secret`]), else by the OS generator.
    fn rounding_source(&self) -> Result<RoundingSource, SecAggError> {
        let Some(secret) = &self.rounding_secret else {
            return RoundingSource::from_os(&self.rng).map_err(|_| SecAggError::Crypto {
                site: self.site,
                round: self.config.round(),
                what: "rounding seed",
            });
        };
        let c = self.config.config();
        let mut t = Transcript::new(b"fedlnm-secagg-rounding-v1");
        t.bytes(secret.as_ref());
        t.bytes(c.study_id.as_bytes());
        t.u64(c.round);
        t.bytes(c.model_version.model_digest.as_bytes());
        t.u64(c.model_version.attempt);
        t.u64(u64::from(self.site.0));
        t.u64(match c.input {
            InputKind::WeightedDelta => 0,
            InputKind::Counts => 1,
            InputKind::Ring => 2,
        });
        Ok(RoundingSource::from_seed(&t.finish()))
    }

    fn expect_input(&self, given: InputKind) -> Result<(), SecAggError> {
        let configured = self.config.input();
        if configured == given {
            Ok(())
        } else {
            Err(SecAggError::WrongInputKind {
                round: self.config.round(),
                configured,
                given,
            })
        }
    }
}
