//! Round 2 on the server: adding masked inputs to the running sum, either as decoded vectors or
//! read in place from the bytes they arrived in (the wire's little-endian u64s), with no decoding
//! into a fresh vector and no zeroing pass: the first upload is written into a fresh (lazily mapped)
//! accumulator, and every upload is added on the available threads.

use super::SecAggServer;
use crate::messages::{MaskedInput, SiteHeader};
use crate::{RoundStage, SecAggError};
use fedlnm_tensors::elements::Elements;
use fedlnm_tensors::parallel::for_each_part;

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

impl SecAggServer {
    /// Round 2: adds a site's masked input to the running sum.
    ///
    /// # Errors
    /// Wrong stage, round, study or configuration; a site outside U2; a second upload from the same
    /// site; a vector of the wrong length. The state is unchanged on error.
    pub fn receive_masked_input(&mut self, msg: MaskedInput) -> Result<(), SecAggError> {
        self.receive(&msg.header, Masked::Decoded(&msg.masked))
    }

    /// [`Self::receive_masked_input`] of a masked vector read where it arrived: `masked` holds its
    /// elements as little-endian u64s, which is how the protocol's encoding lays out
    /// [`MaskedInput::masked`] after its length prefix. The same checks and the same sum, without
    /// decoding the vector first.
    ///
    /// # Errors
    /// As [`Self::receive_masked_input`]; a byte count that is not a whole number of elements is a
    /// wrong length.
    pub fn receive_masked_bytes(&mut self, header: &SiteHeader, masked: &[u8]) -> Result<(), SecAggError> {
        if !masked.len().is_multiple_of(8) {
            self.check_upload(header)?;
            return Err(SecAggError::WrongLength {
                site: header.site,
                round: self.config.round(),
                expected: self.config.vector_len(),
                got: masked.len() / 8,
            });
        }
        self.receive(header, Masked::LeBytes(masked))
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
        self.check_upload(header)?;
        let expected = self.config.vector_len();
        if masked.len() != expected {
            return Err(SecAggError::WrongLength {
                site: header.site,
                round: self.config.round(),
                expected,
                got: masked.len(),
            });
        }
        // The first upload is written over a fresh allocation, whose zero pages the kernel maps
        // lazily: nothing is zeroed or read twice.
        let first = self.masked_sum.is_empty();
        if first {
            self.masked_sum = vec![0; expected];
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
}
