//! The configuration hash every message of an instance carries, and the one transcript hash that
//! every derived value (salt, signed transcripts) is built with.

use ring::digest::{Context, SHA256};

use super::{Graph, InputKind, SecAggConfig, Security};
use crate::SiteId;

pub(super) fn config_hash(c: &SecAggConfig, sorted_participants: &[SiteId]) -> [u8; 32] {
    let mut t = Transcript::new(b"fedlnm-secagg-config-v5");
    t.bytes(c.study_id.as_bytes());
    t.u64(c.round);
    t.bytes(c.model_version.model_digest.as_bytes());
    t.u64(c.model_version.attempt);
    t.u64(c.model_version.instance);
    t.u64(sorted_participants.len() as u64);
    for p in sorted_participants {
        t.u64(u64::from(p.0));
    }
    t.u64(c.threshold as u64);
    t.u64(c.tensors.len() as u64);
    for spec in &c.tensors {
        t.bytes(spec.name.as_bytes());
        t.u64(spec.shape.len() as u64);
        for &d in &spec.shape {
            t.u64(d as u64);
        }
    }
    t.u64(c.fedbn_exclude.len() as u64);
    for p in &c.fedbn_exclude {
        t.bytes(p.as_bytes());
    }
    t.u64(u64::from(c.quantization.fractional_bits));
    t.u64(c.quantization.clip_bound.to_bits());
    t.u64(c.quantization.max_sample_count);
    t.u64(u64::from(c.quantization.ring.bits()));
    t.u64(c.max_delta_norm.to_bits());
    t.u64(match c.input {
        InputKind::WeightedDelta => 0,
        InputKind::Counts => 1,
        InputKind::Ring => 2,
    });
    match &c.privacy {
        None => t.u64(0),
        Some(noise) => {
            t.u64(1);
            t.u64(noise.clip_norm.to_bits());
            t.u64(noise.noise_multiplier.to_bits());
        }
    }
    match &c.security {
        Security::CuriousServer => t.u64(0),
        Security::MaliciousServer { identities } => {
            t.u64(1);
            t.u64(identities.len() as u64);
            for (site, name) in identities {
                t.u64(u64::from(site.0));
                t.bytes(name.as_bytes());
            }
        }
    }
    match c.graph {
        Graph::Complete => t.u64(0),
        Graph::Harary {
            degree,
            dropout_fraction,
            corrupt_fraction,
        } => {
            t.u64(1);
            t.u64(degree as u64);
            t.u64(dropout_fraction.to_bits());
            t.u64(corrupt_fraction.to_bits());
        }
    }
    t.u64(64); // ring bits
    t.bytes(crate::prg::Generator::PROTOCOL.id().as_bytes()); // a node on another generator mismatches
    t.finish()
}

/// An unambiguous SHA-256 transcript: a domain tag, then length-prefixed byte strings and u64s.
pub(crate) struct Transcript(Context);

impl Transcript {
    pub(crate) fn new(domain: &[u8]) -> Self {
        let mut t = Self(Context::new(&SHA256));
        t.bytes(domain);
        t
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u64).to_be_bytes());
        self.0.update(b);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.update(&v.to_be_bytes());
    }
    pub(crate) fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}
