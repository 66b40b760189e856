//! Round 2 on the server: adding masked inputs to the running sum, either as decoded vectors or
//! read in place from the bytes they arrived in (the wire's little-endian u64s), with no decoding
//! into a fresh vector and no zeroing pass: the first upload is written into a fresh (lazily mapped)
//! accumulator, and every upload is added on the available threads. Uploads read in place may be
//! held (checked and counted in U3 at once) and summed together, several per pass over the running
//! sum, block by block: the sum's block stays in the cache while every held upload's elements of it
//! are added, so the sum is read and written once per group instead of once per upload.

use super::SecAggServer;
use crate::Ring;
use crate::messages::{MaskedInput, MaskedVector, SiteHeader};
use crate::{RoundStage, SecAggError};
use fedlnm_tensors::elements::{Elements, HeldBytes, SUM_BLOCK as BLOCK};
use fedlnm_tensors::parallel::for_each_part;
use std::ops::Range;

/// A masked vector as received, in its ring's width: decoded, or the little-endian bytes of its
/// elements. Z_2^32 elements are zero-extended and summed mod 2^64 (reduced at decoding).
#[derive(Clone, Copy)]
enum Masked<'a> {
    Z2_64(Elements<'a, u64>),
    Z2_32(Elements<'a, u32>),
}

impl<'a> Masked<'a> {
    fn decoded(vector: &'a MaskedVector) -> Self {
        match vector {
            MaskedVector::Z2_64(v) => Self::Z2_64(Elements::Decoded(v)),
            MaskedVector::Z2_32(v) => Self::Z2_32(Elements::Decoded(v)),
        }
    }

    fn bytes(ring: Ring, bytes: &'a [u8]) -> Self {
        match ring {
            Ring::Z2_64 => Self::Z2_64(Elements::LeBytes(bytes)),
            Ring::Z2_32 => Self::Z2_32(Elements::LeBytes(bytes)),
        }
    }

    fn ring(self) -> Ring {
        match self {
            Self::Z2_64(_) => Ring::Z2_64,
            Self::Z2_32(_) => Ring::Z2_32,
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Z2_64(e) => e.len(),
            Self::Z2_32(e) => e.len(),
        }
    }

    /// Whether the bytes read in place are a whole number of elements.
    fn whole(self) -> bool {
        match self {
            Self::Z2_64(Elements::LeBytes(b)) | Self::Z2_32(Elements::LeBytes(b)) => {
                b.len().is_multiple_of(self.ring().bytes())
            }
            Self::Z2_64(Elements::Decoded(_)) | Self::Z2_32(Elements::Decoded(_)) => true,
        }
    }
}

/// Elements `start..start + sum.len()` of `masked` added to `sum` (mod 2^64), or written over it
/// (`first`).
fn add_into(masked: Masked<'_>, sum: &mut [u64], start: usize, first: bool) {
    match (masked, first) {
        (Masked::Z2_64(e), true) => e.zip_into(sum, start, |s, y| *s = y),
        (Masked::Z2_64(e), false) => e.zip_into(sum, start, |s, y| *s = s.wrapping_add(y)),
        (Masked::Z2_32(e), true) => e.zip_into(sum, start, |s, y| *s = u64::from(y)),
        (Masked::Z2_32(e), false) => e.zip_into(sum, start, |s, y| *s = s.wrapping_add(u64::from(y))),
    }
}

/// A masked input checked and counted in U3, waiting to be summed: the bytes it arrived in (kept
/// alive, with whatever they keep alive) and where its elements lie in them.
pub(super) struct HeldMasked {
    bytes: HeldBytes,
    elements: Range<usize>,
}

impl HeldMasked {
    fn elements(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.elements.clone()]
    }
}

/// `sum` (of `len` elements; allocated by the first call, when empty) plus every vector of
/// little-endian `ring` elements in `vectors` (mod 2^64), block by block, four vectors per pass, on
/// up to `threads` threads. Additions mod 2^64 commute: the result is the same however the vectors
/// are grouped, and whatever the thread count.
fn sum_into(sum: &mut Vec<u64>, len: usize, vectors: &[&[u8]], ring: Ring, threads: usize) {
    if vectors.is_empty() {
        return;
    }
    let first = sum.is_empty();
    if first {
        *sum = vec![0; len];
    }
    for_each_part(sum, threads, |part, start| {
        for (i, block) in part.chunks_mut(BLOCK).enumerate() {
            match ring {
                Ring::Z2_64 => add_block::<8>(block, start + i * BLOCK, vectors, first),
                Ring::Z2_32 => add_block::<4>(block, start + i * BLOCK, vectors, first),
            }
        }
    });
}

/// `block` (elements `at..at + block.len()` of the sum) plus those elements of every vector (of
/// `W`-byte little-endian elements, zero-extended), or overwritten by their sum (`first`).
fn add_block<const W: usize>(block: &mut [u64], at: usize, vectors: &[&[u8]], first: bool) {
    let n = block.len();
    let mut first = first;
    for group in vectors.chunks(4) {
        if let [a, b, c, d] = group {
            let (a, b, c, d) = (
                words::<W>(a, at, n),
                words::<W>(b, at, n),
                words::<W>(c, at, n),
                words::<W>(d, at, n),
            );
            accumulate(block, first, |i| {
                le(&a[i])
                    .wrapping_add(le(&b[i]))
                    .wrapping_add(le(&c[i]))
                    .wrapping_add(le(&d[i]))
            });
            first = false;
        } else {
            for vector in group {
                let v = words::<W>(vector, at, n);
                accumulate(block, first, |i| le(&v[i]));
                first = false;
            }
        }
    }
}

/// `block[i] = element(i)` (`first`) or `block[i] += element(i)` mod 2^64, for every i.
#[inline(always)]
fn accumulate(block: &mut [u64], first: bool, element: impl Fn(usize) -> u64) {
    if first {
        for (i, s) in block.iter_mut().enumerate() {
            *s = element(i);
        }
    } else {
        for (i, s) in block.iter_mut().enumerate() {
            *s = s.wrapping_add(element(i));
        }
    }
}

/// A `W`-byte little-endian word (W ≤ 8), zero-extended.
#[inline(always)]
fn le<const W: usize>(bytes: &[u8; W]) -> u64 {
    let mut word = [0u8; 8];
    word[..W].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// Elements `at..at + n` of a vector of `W`-byte little-endian elements, as fixed-size chunks (so
/// that the loops over them see no length check and vectorize).
fn words<const W: usize>(bytes: &[u8], at: usize, n: usize) -> &[[u8; W]] {
    &bytes.as_chunks::<W>().0[at..at + n]
}

impl SecAggServer {
    /// Holds at most `max_held` masked inputs read in place ([`Self::hold_masked_bytes`]) before
    /// summing them (default 1: each is summed as it arrives); they are summed at the latest when
    /// the masked inputs close. The sum does not depend on it.
    pub fn set_max_held(&mut self, max_held: usize) {
        self.max_held = max_held.max(1);
    }

    /// [`Self::receive_masked_input`] of a masked vector read where it arrived: `bytes[elements]`
    /// holds its elements as little-endian u64s, which is how the protocol's encoding lays out
    /// [`MaskedInput::masked`] after its length prefix. The same checks and the same sum, without
    /// decoding the vector, and held rather than summed at once: checked and counted in U3 now,
    /// summed with other held inputs when [`Self::set_max_held`] of them are held or when the masked
    /// inputs close. Holding keeps `bytes` alive (and what it keeps alive: the aggregator's receiving
    /// permit), so the caller's bound on uploads in memory also bounds what is held.
    ///
    /// # Errors
    /// As [`Self::receive_masked_input`]; a byte count that is not a whole number of elements is a
    /// wrong length; a range outside `bytes` is a malformed upload.
    pub fn hold_masked_bytes(
        &mut self,
        header: &SiteHeader,
        ring: Ring,
        bytes: HeldBytes,
        elements: Range<usize>,
    ) -> Result<(), SecAggError> {
        let Some(masked) = (*bytes).as_ref().get(elements.clone()) else {
            self.check_upload(header)?;
            return Err(self.malformed(header.site, "the masked vector lies outside the upload"));
        };
        self.check_masked(header, Masked::bytes(ring, masked))?;
        self.held.push(HeldMasked { bytes, elements });
        self.u3.insert(header.site);
        if self.held.len() >= self.max_held {
            self.sum_held();
        }
        Ok(())
    }

    /// Sums the held masked inputs into the running sum.
    pub(super) fn sum_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        let vectors: Vec<&[u8]> = held.iter().map(HeldMasked::elements).collect();
        let (len, ring) = (self.config.vector_len(), self.ring());
        sum_into(&mut self.masked_sum, len, &vectors, ring, self.threads);
    }

    /// Round 2: adds a site's masked input to the running sum.
    ///
    /// # Errors
    /// Wrong stage, round, study or configuration; a site outside U2; a second upload from the same
    /// site; a vector of the wrong length. The state is unchanged on error.
    pub fn receive_masked_input(&mut self, msg: MaskedInput) -> Result<(), SecAggError> {
        self.receive(&msg.header, Masked::decoded(&msg.masked))
    }

    /// The instance's ring.
    fn ring(&self) -> Ring {
        self.config.config().quantization.ring
    }

    /// The checks of an upload, its ring, and its length: the configured number of elements (and,
    /// read in place, a byte count that is a whole number of them).
    fn check_masked(&self, header: &SiteHeader, masked: Masked<'_>) -> Result<(), SecAggError> {
        self.check_upload(header)?;
        if masked.ring() != self.ring() {
            let reason = format!(
                "a masked vector in {}, the instance uses {}",
                masked.ring(),
                self.ring()
            );
            return Err(self.malformed(header.site, &reason));
        }
        let expected = self.config.vector_len();
        if !masked.whole() || masked.len() != expected {
            return Err(SecAggError::WrongLength {
                site: header.site,
                round: self.config.round(),
                expected,
                got: masked.len(),
            });
        }
        Ok(())
    }

    fn check_upload(&self, header: &SiteHeader) -> Result<(), SecAggError> {
        self.check_message(
            header,
            RoundStage::MaskedInputCollection,
            &self.u2,
            self.u3.contains(&header.site),
        )
    }

    fn receive(&mut self, header: &SiteHeader, masked: Masked<'_>) -> Result<(), SecAggError> {
        self.check_masked(header, masked)?;
        // The first upload is written over a fresh allocation, whose zero pages the kernel maps
        // lazily: nothing is zeroed or read twice.
        let first = self.masked_sum.is_empty();
        if first {
            self.masked_sum = vec![0; self.config.vector_len()];
        }
        for_each_part(&mut self.masked_sum, self.threads, |part, start| {
            add_into(masked, part, start, first);
        });
        self.u3.insert(header.site);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, seed: u64) -> Vec<u64> {
        (0..n as u64)
            .map(|i| (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17))
            .collect()
    }

    #[test]
    fn bytes_and_words_add_the_same_on_any_number_of_threads() {
        let n = 3 * fedlnm_tensors::parallel::MIN_PER_THREAD + 5;
        let (a, b) = (words(n, 1), words(n, 2));
        let b_bytes: Vec<u8> = b.iter().flat_map(|w| w.to_le_bytes()).collect();
        let expected: Vec<u64> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
        for threads in [1, 2, 3, 7] {
            for masked in [
                Masked::Z2_64(Elements::Decoded(&b)),
                Masked::Z2_64(Elements::LeBytes(&b_bytes)),
            ] {
                let mut sum = a.clone();
                for_each_part(&mut sum, threads, |part, start| {
                    add_into(masked, part, start, false)
                });
                assert_eq!(sum, expected, "{threads} threads");
                let mut first = vec![0; n];
                for_each_part(&mut first, threads, |part, start| {
                    add_into(masked, part, start, true)
                });
                assert_eq!(first, b, "{threads} threads");
            }
        }
    }

    /// The little-endian vectors `vectors` summed by [`sum_into`], `groups[j]` of them per call (the
    /// groups must cover them all).
    fn sum_in_groups(vectors: &[Vec<u8>], groups: &[usize], ring: Ring, threads: usize) -> Vec<u64> {
        let len = vectors[0].len() / ring.bytes();
        let mut sum = Vec::new();
        let mut rest: Vec<&[u8]> = vectors.iter().map(Vec::as_slice).collect();
        for &size in groups {
            let group: Vec<&[u8]> = rest.drain(..size).collect();
            sum_into(&mut sum, len, &group, ring, threads);
        }
        assert!(rest.is_empty(), "the groups leave vectors out");
        sum
    }

    #[test]
    fn held_vectors_sum_the_same_however_grouped_and_threaded() {
        // Long enough for several blocks and threads, with a partial last block; nine vectors, so
        // that groups of four leave a remainder.
        let n = 2 * fedlnm_tensors::parallel::MIN_PER_THREAD + BLOCK / 2 + 3;
        let elements: Vec<Vec<u64>> = (0..9).map(|k| words(n, k)).collect();
        let vectors: Vec<Vec<u8>> = elements
            .iter()
            .map(|v| v.iter().flat_map(|w| w.to_le_bytes()).collect())
            .collect();
        let expected: Vec<u64> = (0..n)
            .map(|i| elements.iter().fold(0u64, |s, v| s.wrapping_add(v[i])))
            .collect();
        for (groups, threads) in [
            (&[9][..], 1),
            (&[9], 3),
            (&[1; 9], 2),
            (&[4, 4, 1], 2),
            (&[3, 5, 1], 4),
        ] {
            let sum = sum_in_groups(&vectors, groups, Ring::Z2_64, threads);
            assert_eq!(sum, expected, "groups {groups:?}, {threads} threads");
        }
    }

    #[test]
    fn z2_32_vectors_sum_to_the_sum_mod_2_32_however_read() {
        // Nine vectors of u32 words (groups of four and a remainder; several blocks and threads),
        // read in place or decoded: the u64 sum reduced mod 2^32 is the sum in Z_2^32.
        let n = 2 * fedlnm_tensors::parallel::MIN_PER_THREAD + BLOCK / 2 + 3;
        let elements: Vec<Vec<u32>> = (0..9)
            .map(|k| words(n, k + 20).into_iter().map(|w| (w >> 17) as u32).collect())
            .collect();
        let vectors: Vec<Vec<u8>> = elements
            .iter()
            .map(|v| v.iter().flat_map(|w| w.to_le_bytes()).collect())
            .collect();
        let expected: Vec<u32> = (0..n)
            .map(|i| elements.iter().fold(0u32, |s, v| s.wrapping_add(v[i])))
            .collect();
        let reduced = |sum: &[u64]| sum.iter().map(|&s| s as u32).collect::<Vec<_>>();
        for (groups, threads) in [(&[9][..], 1), (&[4, 4, 1], 2), (&[3, 5, 1], 3)] {
            let sum = sum_in_groups(&vectors, groups, Ring::Z2_32, threads);
            assert_eq!(reduced(&sum), expected, "groups {groups:?}, {threads} threads");
        }
        for threads in [1, 3] {
            let mut sum = vec![0u64; n];
            for (k, v) in elements.iter().enumerate() {
                let masked = Masked::Z2_32(Elements::Decoded(v));
                for_each_part(&mut sum, threads, |part, start| {
                    add_into(masked, part, start, k == 0)
                });
            }
            assert_eq!(reduced(&sum), expected, "decoded, {threads} threads");
        }
    }
}
