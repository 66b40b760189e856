//! Sorting u64 keys by their leading bits first (most-significant-digit radix sort). The keys' range
//! (smallest to largest key) is cut into buckets by leading bits; one pass counts the keys per bucket,
//! one pass moves each key into its bucket, then each bucket is sorted on its own the same way, down
//! to buckets of about 16 keys that a comparison sort finishes. Beyond the cache a pass uses 8 bits
//! (256 buckets), so that moving the keys writes to few memory pages at once; within the cache, up to
//! 11. The first level runs on up to the machine's cores: each thread counts and moves its own part of
//! the keys (into its own place in each bucket), then sorts a contiguous run of buckets. A sort's
//! result is unique, so it does not depend on the number of threads.

use super::parallel::threads_for;

/// Keys (8 bytes each) that fit in a core's cache.
const CACHED: usize = 1 << 16;
/// Up to this many keys, one comparison sort beats counting and moving.
const SMALL: usize = 1 << 10;

/// `keys` in ascending order.
pub(crate) fn sorted(keys: &[u64]) -> Vec<u64> {
    let mut out = vec![0; keys.len()];
    let threads = threads_for(keys.len() / super::parallel::BLOCK);
    sort_into(keys, &mut out, threads);
    out
}

/// Writes `keys` in ascending order into `out` (as long as `keys`) on up to `threads` threads.
fn sort_into(keys: &[u64], out: &mut [u64], threads: usize) {
    if keys.len() <= SMALL {
        out.copy_from_slice(keys);
        out.sort_unstable();
        return;
    }
    let part = keys.len().div_ceil(threads);
    let (lowest, highest) = per_part(keys, part, |keys| {
        keys.iter()
            .fold((u64::MAX, 0), |(lo, hi), &key| (lo.min(key), hi.max(key)))
    })
    .into_iter()
    .fold((u64::MAX, 0), |(lo, hi), (l, h)| (lo.min(l), hi.max(h)));
    // Keys below `lowest + 2^shift · b` fall in buckets before b; with shift 0 a bucket is one value.
    let shift = (u64::BITS - (highest - lowest).leading_zeros()).saturating_sub(digit_bits(keys.len()));
    let bucket = |key: u64| ((key - lowest) >> shift) as usize;
    let buckets = bucket(highest) + 1;
    let counts = per_part(keys, part, |keys| {
        let mut counts = vec![0_usize; buckets];
        for &key in keys {
            counts[bucket(key)] += 1;
        }
        counts
    });
    // starts[b]..starts[b + 1] is bucket b in `out`; within it, each part's keys in part order.
    let mut starts = Vec::with_capacity(buckets + 1);
    let mut places: Vec<Vec<&mut [u64]>> = (0..counts.len()).map(|_| Vec::with_capacity(buckets)).collect();
    let mut rest = &mut *out;
    for b in 0..buckets {
        starts.push(keys.len() - rest.len());
        for (part_counts, part_places) in counts.iter().zip(&mut places) {
            let (place, tail) = std::mem::take(&mut rest).split_at_mut(part_counts[b]);
            part_places.push(place);
            rest = tail;
        }
    }
    starts.push(keys.len());
    std::thread::scope(|scope| {
        for (keys, mut places) in keys.chunks(part).zip(places) {
            let mut scatter = move || {
                for &key in keys {
                    let place = &mut places[bucket(key)];
                    // Each place has room for exactly the keys counted for it.
                    if let Some((first, tail)) = std::mem::take(place).split_first_mut() {
                        *first = key;
                        *place = tail;
                    }
                }
            };
            if threads == 1 {
                scatter();
            } else {
                scope.spawn(scatter);
            }
        }
    });
    if shift > 0 {
        sort_buckets(out, &starts, threads);
    }
}

/// Leading bits that pick a key's bucket among `len` keys: 8 (256 buckets) for keys beyond the
/// cache, so that the pass moving them writes to few memory pages at once; within the cache, enough
/// for about 16 keys a bucket (at most 11 bits).
fn digit_bits(len: usize) -> u32 {
    if len > CACHED {
        8
    } else {
        (len / 16).max(2).ilog2().min(11)
    }
}

/// `f` of each contiguous part of `keys` (`part` keys each, the last shorter), on one thread each.
fn per_part<R: Send>(keys: &[u64], part: usize, f: impl Fn(&[u64]) -> R + Sync) -> Vec<R> {
    if keys.len() <= part {
        return vec![f(keys)];
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(part)
            .map(|keys| scope.spawn(move || f(keys)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// Sorts each bucket `out[starts[b]..starts[b + 1]]`, the buckets cut into `threads` contiguous runs
/// of about equally many keys.
fn sort_buckets(out: &mut [u64], starts: &[usize], threads: usize) {
    let sort_run = |run: &mut [u64], bucket_starts: &[usize]| {
        let offset = bucket_starts[0];
        // One copy buffer for the run's buckets, touched once.
        let mut copy = Vec::new();
        for bounds in bucket_starts.windows(2) {
            let bucket = &mut run[bounds[0] - offset..bounds[1] - offset];
            if bucket.len() > SMALL {
                copy.clear();
                copy.extend_from_slice(bucket);
                sort_into(&copy, bucket, 1);
            } else {
                bucket.sort_unstable();
            }
        }
    };
    let total = out.len();
    if threads <= 1 {
        sort_run(out, starts);
        return;
    }
    std::thread::scope(|scope| {
        let mut rest = out;
        let mut first_bucket = 0;
        for t in 1..=threads {
            // The run ends at the first bucket boundary at or after its share of the keys.
            let last_bucket = if t == threads {
                starts.len() - 1
            } else {
                starts
                    .partition_point(|&start| start < t * total / threads)
                    .clamp(first_bucket, starts.len() - 1)
            };
            let length = starts[last_bucket] - starts[first_bucket];
            let (run, tail) = std::mem::take(&mut rest).split_at_mut(length);
            rest = tail;
            let bucket_starts = &starts[first_bucket..=last_bucket];
            scope.spawn(move || sort_run(run, bucket_starts));
            first_bucket = last_bucket;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::xorshift;

    fn check(keys: &[u64]) {
        let mut expected = keys.to_vec();
        expected.sort_unstable();
        assert_eq!(sorted(keys), expected, "{} keys", keys.len());
        for threads in [1, 2, 3, 8] {
            let mut out = vec![0; keys.len()];
            sort_into(keys, &mut out, threads);
            assert!(out == expected, "{} keys on {threads} threads", keys.len());
        }
    }

    #[test]
    fn equals_the_standard_sort_on_random_keys() {
        let mut random = xorshift(0x9e37_79b9_7f4a_7c15);
        for n in [0, 1, 2, SMALL, SMALL + 1, 100_000, 300_001] {
            check(&(0..n).map(|_| random()).collect::<Vec<_>>());
            // Few distinct values: long runs of equal keys.
            check(&(0..n).map(|_| random() % 7).collect::<Vec<_>>());
            // Packed scores in [0, 1] with their class, as `binary` sorts them.
            let scores: Vec<u64> = (0..n)
                .map(|_| {
                    let score = (random() >> 11) as f64 / (1_u64 << 53) as f64;
                    ((score + 0.0).to_bits() << 1) | (random() & 1)
                })
                .collect();
            check(&scores);
        }
    }

    #[test]
    fn equals_the_standard_sort_on_adversarial_keys() {
        let n = 200_000;
        let mut random = xorshift(7);
        let cases: Vec<Vec<u64>> = vec![
            vec![42; n],
            (0..n as u64).collect(),
            (0..n as u64).rev().collect(),
            // The extremes of the key space, and everything else in one bucket.
            (0..n as u64)
                .map(|i| if i % 1000 == 0 { u64::MAX } else { i % 50 })
                .collect(),
            (0..n as u64)
                .map(|i| if i == 0 { 0 } else { u64::MAX - (i % 3) })
                .collect(),
            // One far outlier: all the rest lands in the first bucket, sorted by buckets again.
            (0..n)
                .map(|i| if i == 17 { 1 << 62 } else { random() >> 40 })
                .collect(),
            // Every key apart in its leading bits only.
            (0..n).map(|_| random() & (0xfff << 52)).collect(),
            // Two values one apart.
            (0..n).map(|_| (1 << 40) + (random() & 1)).collect(),
            // Bit patterns of special floats (NaN, ±∞, ±0.0, subnormals, negatives), packed as
            // `binary` packs scores; the sort orders the bits, whatever they mean.
            (0..n)
                .map(|i| {
                    let special = [
                        f64::NAN,
                        f64::INFINITY,
                        f64::NEG_INFINITY,
                        -0.0,
                        0.0,
                        f64::MIN_POSITIVE / 3.0,
                        -1.5,
                        1.0,
                    ];
                    (special[i % special.len()].to_bits() << 1) | (random() & 1)
                })
                .collect(),
        ];
        for keys in cases {
            check(&keys);
        }
    }
}
