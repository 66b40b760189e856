//! Element-wise work over large vectors split across scoped threads: each thread owns one contiguous
//! slice, so results do not depend on the number of threads.

/// Elements below which one thread does the whole vector (a thread costs more than it saves).
pub const MIN_PER_THREAD: usize = 1 << 18;

/// The machine's available parallelism (at least 1).
#[must_use]
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Calls `work(part, start)` for consecutive slices `part = data[start..start + part.len()]` covering
/// `data`, on up to `threads` scoped threads (one, on the caller's, for short vectors).
pub fn for_each_part<T: Send>(data: &mut [T], threads: usize, work: impl Fn(&mut [T], usize) + Sync) {
    let threads = threads.clamp(1, data.len().div_ceil(MIN_PER_THREAD).max(1));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
