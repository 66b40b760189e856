//! Element-wise work over large vectors split across scoped threads: each thread owns one contiguous
//! slice, so results do not depend on the number of threads.

/// Elements below which one thread does the whole vector (a thread costs more than it saves).
pub const MIN_PER_THREAD: usize = 1 << 18;

/// The machine's available parallelism (at least 1).
#[must_use]
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The threads for `total` elements: at most `threads`, at least 1, and none with fewer than
/// `min_per_thread` elements to itself.
fn threads_for(total: usize, threads: usize, min_per_thread: usize) -> usize {
    threads.clamp(1, total.div_ceil(min_per_thread.max(1)).max(1))
}

/// Calls `work(part, start)` for consecutive slices `part = data[start..start + part.len()]` covering
/// `data`, on up to `threads` scoped threads (one, on the caller's, for short vectors).
pub fn for_each_part<T: Send>(data: &mut [T], threads: usize, work: impl Fn(&mut [T], usize) + Sync) {
    for_each_part_of_at_least(data, threads, MIN_PER_THREAD, work);
}

/// [`for_each_part`] with at least `min_per_thread` elements per thread (lower for work that costs
/// more per element than memory traffic, such as generating a keystream).
pub fn for_each_part_of_at_least<T: Send>(
    data: &mut [T],
    threads: usize,
    min_per_thread: usize,
    work: impl Fn(&mut [T], usize) + Sync,
) {
    let threads = threads_for(data.len(), threads, min_per_thread);
    if threads == 1 {
        work(data, 0);
        return;
    }
    let per_thread = data.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        for (i, part) in data.chunks_mut(per_thread).enumerate() {
            scope.spawn(move || work(part, i * per_thread));
        }
    });
}

/// [`for_each_part`] over several vectors in one parallel region: every vector is split into
/// `threads` consecutive slices and thread i gets slice i of each, calling `work(k, part, start)` with
/// the vector's index k; short work runs on the caller's thread. One region for many vectors (the
/// tensors of one model) costs one spawn and one join per thread, however many vectors there are.
pub fn for_each_part_of_all<T: Send>(
    data: Vec<&mut [T]>,
    threads: usize,
    work: impl Fn(usize, &mut [T], usize) + Sync,
) {
    let threads = threads_for(data.iter().map(|d| d.len()).sum(), threads, MIN_PER_THREAD);
    if threads == 1 {
        for (k, part) in data.into_iter().enumerate() {
            work(k, part, 0);
        }
        return;
    }
    let mut shares: Vec<Vec<(usize, &mut [T], usize)>> = (0..threads).map(|_| Vec::new()).collect();
    for (k, vector) in data.into_iter().enumerate() {
        let per_thread = vector.len().div_ceil(threads).max(1);
        for (i, part) in vector.chunks_mut(per_thread).enumerate() {
            shares[i].push((k, part, i * per_thread));
        }
    }
    let work = &work;
    std::thread::scope(|scope| {
        for share in shares {
            scope.spawn(move || {
                for (k, part, start) in share {
                    work(k, part, start);
                }
            });
        }
    });
}

/// The first k for which `check(k, range)` fails, over vectors of lengths `lens` split as
/// [`for_each_part_of_all`] splits them (thread i gets range i of each vector), on up to `threads`
/// scoped threads; `None` when every range passes. For read-only passes (checks) over many vectors.
pub fn first_failing(
    lens: &[usize],
    threads: usize,
    check: impl Fn(usize, std::ops::Range<usize>) -> bool + Sync,
) -> Option<usize> {
    let threads = threads_for(lens.iter().sum(), threads, MIN_PER_THREAD);
    let share = |i: usize| {
        lens.iter().enumerate().find_map(|(k, &len)| {
            let per_thread = len.div_ceil(threads).max(1);
            let start = (i * per_thread).min(len);
            let end = (start + per_thread).min(len);
            (start < end && !check(k, start..end)).then_some(k)
        })
    };
    if threads == 1 {
        return share(0);
    }
    let share = &share;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|i| scope.spawn(move || share(i))).collect();
        handles
            .into_iter()
            .filter_map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .min()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_element_is_visited_once_at_its_own_index() {
        for len in [0, 1, MIN_PER_THREAD - 1, 3 * MIN_PER_THREAD + 7] {
            for threads in [1, 2, 3, 8] {
                let mut data = vec![0usize; len];
                for_each_part(&mut data, threads, |part, start| {
                    for (i, x) in part.iter_mut().enumerate() {
                        *x += start + i + 1;
                    }
                });
                assert!(
                    data.iter().enumerate().all(|(i, &x)| x == i + 1),
                    "{len} elements, {threads} threads"
                );
            }
        }
    }

    #[test]
    fn the_first_failing_vector_is_found_whatever_the_thread_count() {
        let lens = [5, 3 * MIN_PER_THREAD + 7, 0, 2 * MIN_PER_THREAD, 1];
        for threads in [1, 2, 3, 8] {
            for bad in [
                None,
                Some((1, 3 * MIN_PER_THREAD + 6)),
                Some((3, 0)),
                Some((4, 0)),
            ] {
                let seen: Vec<AtomicUsize> = lens.iter().map(|_| AtomicUsize::new(0)).collect();
                let found = first_failing(&lens, threads, |k, range| {
                    seen[k].fetch_add(range.len(), Ordering::Relaxed);
                    !bad.is_some_and(|(bad_k, at)| bad_k == k && range.contains(&at))
                });
                assert_eq!(found, bad.map(|(k, _)| k), "{threads} threads, {bad:?}");
                if bad.is_none() {
                    let seen: Vec<usize> = seen.iter().map(|s| s.load(Ordering::Relaxed)).collect();
                    assert_eq!(seen, lens, "every element checked once, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn every_element_of_every_vector_is_visited_once_at_its_own_index() {
        let lens = [0, 3, MIN_PER_THREAD + 1, 2 * MIN_PER_THREAD + 5, 1];
        for threads in [1, 2, 3, 8] {
            let mut vectors: Vec<Vec<usize>> = lens.iter().map(|&n| vec![0; n]).collect();
            for_each_part_of_all(
                vectors.iter_mut().map(Vec::as_mut_slice).collect(),
                threads,
                |k, part, start| {
                    for (i, x) in part.iter_mut().enumerate() {
                        *x += 1000 * k + start + i + 1;
                    }
                },
            );
            for (k, vector) in vectors.iter().enumerate() {
                assert!(
                    vector.iter().enumerate().all(|(i, &x)| x == 1000 * k + i + 1),
                    "vector {k}, {threads} threads"
                );
            }
        }
    }
}
