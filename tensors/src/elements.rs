//! Numeric vectors as they arrive: decoded, or the little-endian bytes of their elements read in
//! place ([`Elements`]), so that uploads are checked and summed where they were received, without a
//! decoded copy.

use std::sync::Arc;

/// The bytes of one complete upload, shared with whoever received them, and with whatever they keep
/// alive (such as the permit that counts the upload against the aggregator's memory bound): held
/// until the upload is summed, then dropped.
pub type HeldBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Elements of an 8-byte running sum (f64 or u64) summed together in one block: 64 KiB, which stays
/// in the core's cache while every held upload's elements of the block are added to it (8,192
/// measured faster than 2,048 here: longer runs of each upload for the prefetcher).
pub const SUM_BLOCK: usize = 8192;

/// A fixed-width little-endian element type.
pub trait LeElement: Copy {
    /// Bytes per element.
    const SIZE: usize;
    /// The elements of `bytes`, read in order (a trailing partial element is ignored). Fixed-size
    /// chunks (`as_chunks`), so that the compiler sees no length check and vectorizes the loops.
    fn read_le(bytes: &[u8]) -> impl Iterator<Item = Self> + '_;
}

macro_rules! le_element {
    ($($t:ty),*) => {$(
        impl LeElement for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read_le(bytes: &[u8]) -> impl Iterator<Item = Self> + '_ {
                bytes
                    .as_chunks::<{ std::mem::size_of::<$t>() }>()
                    .0
                    .iter()
                    .map(|chunk| <$t>::from_le_bytes(*chunk))
            }
        }
    )*};
}
le_element!(u64, u32, f32);

/// A vector of `T`: decoded, or the little-endian bytes of its elements (a whole number of them).
#[derive(Debug, Clone, Copy)]
pub enum Elements<'a, T> {
    Decoded(&'a [T]),
    LeBytes(&'a [u8]),
}

impl<T: LeElement> Elements<'_, T> {
    /// Number of elements.
    #[must_use]
    pub fn len(self) -> usize {
        match self {
            Self::Decoded(values) => values.len(),
            Self::LeBytes(bytes) => bytes.len() / T::SIZE,
        }
    }

    /// Whether there is no element.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The elements `range` (which must lie within them).
    #[must_use]
    pub fn slice(self, range: std::ops::Range<usize>) -> Self {
        match self {
            Self::Decoded(values) => Self::Decoded(&values[range]),
            Self::LeBytes(bytes) => Self::LeBytes(&bytes[T::SIZE * range.start..T::SIZE * range.end]),
        }
    }

    /// `f(target[i], element[start + i])` for every element of `target` (which must not run past the
    /// elements). One loop per representation, so that `f` is inlined and the loop vectorizes.
    pub fn zip_into<D>(self, target: &mut [D], start: usize, f: impl Fn(&mut D, T)) {
        match self {
            Self::Decoded(values) => {
                for (d, &x) in target.iter_mut().zip(&values[start..]) {
                    f(d, x);
                }
            }
            Self::LeBytes(bytes) => {
                for (d, x) in target.iter_mut().zip(T::read_le(&bytes[T::SIZE * start..])) {
                    f(d, x);
                }
            }
        }
    }

    /// Whether `predicate` holds for every element; reads them all (no early exit, so it vectorizes).
    pub fn all(self, predicate: impl Fn(T) -> bool) -> bool {
        match self {
            Self::Decoded(values) => values.iter().fold(true, |ok, &x| ok & predicate(x)),
            Self::LeBytes(bytes) => T::read_le(bytes).fold(true, |ok, x| ok & predicate(x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_place_are_the_decoded_elements() {
        let words = [u64::MAX, 0, 0x0102_0304_0506_0708, 42];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        for elements in [Elements::Decoded(&words[..]), Elements::LeBytes(&bytes)] {
            assert_eq!(elements.len(), 4);
            let mut tail = [0u64; 3];
            elements.zip_into(&mut tail, 1, |d, x| *d = x);
            assert_eq!(tail, words[1..]);
            assert!(elements.all(|x| x != 7));
            assert!(!elements.all(|x| x != 42));
            assert!(elements.slice(0..3).all(|x| x != 42));
            assert_eq!(elements.slice(1..3).len(), 2);
        }
        let floats = [1.5f32, f32::NAN];
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        assert!(!Elements::<f32>::LeBytes(&bytes).all(f32::is_finite));
        assert!(Elements::<f32>::LeBytes(&bytes[..4]).all(f32::is_finite));
    }
}
