//! Round 2 on the server: adding masked inputs to the running sum, either as decoded vectors or
//! read in place from the bytes they arrived in (the wire's little-endian u64s), with no decoding
//! into a fresh vector and no zeroing pass: the first upload is written into a fresh (lazily mapped)
//! accumulator, and every upload is added on the available threads. Uploads read in place may be
//! held (checked and counted in U3 at once) and summed together, several per pass over the running
//! sum, block by block: the sum's block stays in the cache while every held upload's elements of it
//! are added, so the sum is read and written once per group instead of once per upload.

use super::SecAggServer;
use crate::messages::{MaskedInput, SiteHeader};
use crate::{RoundStage, SecAggError};
use fedlnm_tensors::elements::{Elements, HeldBytes, SUM_BLOCK as BLOCK};
use fedlnm_tensors::parallel::for_each_part;
use std::ops::Range;

/// A masked vector as received: decoded, or the little-endian bytes of its elements.
type Masked<'a> = Elements<'a, u64>;

/// Elements `start..start + sum.len()` of `masked` added to `sum` (mod 2^64), or written over it
/// (`first`).
fn add_into(masked: Masked<'_>, sum: &mut [u64], start: usize, first: bool) {
    if first {
        masked.zip_into(sum, start, |s, y| *s = y);
    } else {
        masked.zip_into(sum, start, |s, y| *s = s.wrapping_add(y));
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
/// little-endian u64s in `vectors` (mod 2^64), block by block, four vectors per pass, on up to
/// `threads` threads. Additions mod 2^64 commute: the result is the same however the vectors are
/// grouped, and whatever the thread count.
fn sum_into(sum: &mut Vec<u64>, len: usize, vectors: &[&[u8]], threads: usize) {
    if vectors.is_empty() {
        return;
    }
    let first = sum.is_empty();
    if first {
        *sum = vec![0; len];
    }
    for_each_part(sum, threads, |part, start| {
        for (i, block) in part.chunks_mut(BLOCK).enumerate() {
            add_block(block, start + i * BLOCK, vectors, first);
        }
    });
}

/// `block` (elements `at..at + block.len()` of the sum) plus those elements of every vector, or
/// overwritten by their sum (`first`).
fn add_block(block: &mut [u64], at: usize, vectors: &[&[u8]], first: bool) {
    let n = block.len();
    let mut first = first;
    for group in vectors.chunks(4) {
        if let [a, b, c, d] = group {
            let (a, b, c, d) = (words(a, at, n), words(b, at, n), words(c, at, n), words(d, at, n));
            let four = |i: usize| {
                u64::from_le_bytes(a[i])
                    .wrapping_add(u64::from_le_bytes(b[i]))
                    .wrapping_add(u64::from_le_bytes(c[i]))
                    .wrapping_add(u64::from_le_bytes(d[i]))
            };
            if first {
                for (i, s) in block.iter_mut().enumerate() {
                    *s = four(i);
                }
            } else {
                for (i, s) in block.iter_mut().enumerate() {
                    *s = s.wrapping_add(four(i));
                }
            }
            first = false;
        } else {
            for vector in group {
                add_into(Masked::LeBytes(vector), block, at, first);
                first = false;
            }
        }
    }
}

/// Elements `at..at + n` of a vector of little-endian u64s, as fixed-size chunks (so that the loops
/// over them see no length check and vectorize).
fn words(bytes: &[u8], at: usize, n: usize) -> &[[u8; 8]] {
    &bytes.as_chunks::<8>().0[at..at + n]
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
        bytes: HeldBytes,
        elements: Range<usize>,
    ) -> Result<(), SecAggError> {
        let Some(masked) = (*bytes).as_ref().get(elements.clone()) else {
            self.check_upload(header)?;
            return Err(self.malformed(header.site, "the masked vector lies outside the upload"));
        };
        self.check_masked(header, Masked::LeBytes(masked))?;
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
        sum_into(
            &mut self.masked_sum,
            self.config.vector_len(),
            &vectors,
            self.threads,
        );
    }

    /// Round 2: adds a site's masked input to the running sum.
    ///
    /// # Errors
    /// Wrong stage, round, study or configuration; a site outside U2; a second upload from the same
    /// site; a vector of the wrong length. The state is unchanged on error.
    pub fn receive_masked_input(&mut self, msg: MaskedInput) -> Result<(), SecAggError> {
        self.receive(&msg.header, Masked::Decoded(&msg.masked))
    }

    /// The checks of an upload, and its length: the configured number of elements (and, read in
    /// place, a byte count that is a whole number of them).
    fn check_masked(&self, header: &SiteHeader, masked: Masked<'_>) -> Result<(), SecAggError> {
        self.check_upload(header)?;
        let expected = self.config.vector_len();
        let whole = match masked {
            Masked::LeBytes(bytes) => bytes.len().is_multiple_of(8),
            Masked::Decoded(_) => true,
        };
        if !whole || masked.len() != expected {
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
            for masked in [Masked::Decoded(&b), Masked::LeBytes(&b_bytes)] {
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
            let mut sum = Vec::new();
            let mut rest: Vec<&[u8]> = vectors.iter().map(Vec::as_slice).collect();
            for &size in groups {
                let group: Vec<&[u8]> = rest.drain(..size).collect();
                sum_into(&mut sum, n, &group, threads);
            }
            assert!(rest.is_empty());
            assert_eq!(sum, expected, "groups {groups:?}, {threads} threads");
        }
    }
}
