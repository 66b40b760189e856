//! Work over many rows on the machine's cores, with results that do not depend on the number of
//! threads: the rows are cut into fixed blocks of [`BLOCK`] rows, each block gives one result, and
//! the results come back in block order (each thread takes a contiguous run of blocks).

use super::sum::{CompensatedSum, sum};
use std::ops::Range;

/// Rows per block.
pub(crate) const BLOCK: usize = 4096;

/// Threads for work over `blocks` blocks of [`BLOCK`] rows: the machine's cores, at least 16 blocks
/// each, at least 1.
pub(crate) fn threads_for(blocks: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(blocks / 16)
        .max(1)
}

/// `f` of each block of `0..len` (the last one may be shorter), in block order.
pub(crate) fn map_blocks<R: Send>(len: usize, f: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
    map_indices(len.div_ceil(BLOCK), |b| f(b * BLOCK..((b + 1) * BLOCK).min(len)))
}

/// `f` of each of `0..count` (each a block's worth of work), in order: each thread a contiguous run.
pub(crate) fn map_indices<R: Send>(count: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = threads_for(count);
    let per_thread = count.div_ceil(threads).max(1);
    let f = &f;
    let run = move |first: usize| {
        (first..(first + per_thread).min(count))
            .map(f)
            .collect::<Vec<R>>()
    };
    if threads == 1 {
        return run(0);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(per_thread)
            .map(|first| scope.spawn(move || run(first)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// `f` of each block of `out` (the block's range of indices and its part of `out`, to fill in), in
/// block order.
pub(crate) fn map_blocks_mut<T: Send, R: Send>(
    out: &mut [T],
    f: impl Fn(Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let len = out.len();
    let blocks = len.div_ceil(BLOCK);
    let threads = threads_for(blocks);
    let per_thread = blocks.div_ceil(threads).max(1) * BLOCK;
    let f = &f;
    let run = move |start: usize, run: &mut [T]| {
        run.chunks_mut(BLOCK)
            .enumerate()
            .map(|(i, block)| {
                let first = start + i * BLOCK;
                f(first..first + block.len(), block)
            })
            .collect::<Vec<R>>()
    };
    if threads == 1 {
        return run(0, out);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = out
            .chunks_mut(per_thread)
            .enumerate()
            .map(|(t, part)| scope.spawn(move || run(t * per_thread, part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// Σ over `0..len` of `term(i)`: plain sums within each block, then the block totals compensated in
/// block order, so that the result does not depend on the number of threads.
pub(crate) fn block_sums<const K: usize>(len: usize, term: impl Fn(usize) -> [f64; K] + Sync) -> [f64; K] {
    let partials = map_blocks(len, |rows| {
        let mut sums = [0.0_f64; K];
        for i in rows {
            for (sum, value) in sums.iter_mut().zip(term(i)) {
                *sum += value;
            }
        }
        sums
    });
    let mut totals = [CompensatedSum::default(); K];
    for sums in &partials {
        for (total, &value) in totals.iter_mut().zip(sums) {
            total.add(value);
        }
    }
    totals.map(|t| t.total())
}

/// Σ over `0..len` of `term(i)`, compensated within each block and across the block totals (for
/// sums whose terms are many and of very different sizes); independent of the threads.
pub(crate) fn compensated_sum(len: usize, term: impl Fn(usize) -> f64 + Sync) -> f64 {
    sum(map_blocks(len, |rows| sum(rows.map(&term))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block sums are those of one thread going through the blocks in order, bit for bit,
    /// whatever the threads (here as many as the machine has, on 200 blocks).
    #[test]
    fn block_sums_do_not_depend_on_the_threads() {
        let n = 200 * BLOCK + 17;
        let y: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 97.0 - 5.0).collect();
        let term = |i: usize| [f64::from(u8::from(y[i])) - 0.3, x[i].exp().ln_1p()];
        let mut sequential = [CompensatedSum::default(); 2];
        for block in (0..n).collect::<Vec<_>>().chunks(BLOCK) {
            let mut sums = [0.0_f64; 2];
            for &i in block {
                for (sum, value) in sums.iter_mut().zip(term(i)) {
                    *sum += value;
                }
            }
            for (total, value) in sequential.iter_mut().zip(sums) {
                total.add(value);
            }
        }
        let expected = sequential.map(|t| t.total());
        assert_eq!(block_sums(n, term).map(f64::to_bits), expected.map(f64::to_bits));
    }

    #[test]
    fn compensated_sums_keep_what_plain_sums_lose() {
        let values = [1.0, 1e100, 1.0, -1e100];
        let n = 50 * BLOCK;
        assert_eq!(compensated_sum(n, |i| values[i % 4]), n as f64 / 2.0);
    }

    #[test]
    fn blocks_come_back_in_order_and_cover_every_row_once() {
        for n in [0, 1, BLOCK, 17 * BLOCK - 1, 100 * BLOCK + 5] {
            let ranges = map_blocks(n, |rows| rows);
            assert_eq!(ranges.len(), n.div_ceil(BLOCK));
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(ranges.last().map_or(0, |r| r.end), n);
            let mut out = vec![usize::MAX; n];
            let filled = map_blocks_mut(&mut out, |rows, part| {
                for (o, i) in part.iter_mut().zip(rows.clone()) {
                    *o = i;
                }
                rows
            });
            assert_eq!(filled, ranges);
            assert!(out.iter().enumerate().all(|(i, &o)| i == o));
        }
    }
}
