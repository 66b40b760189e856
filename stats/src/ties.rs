//! The rows of a binary outcome and a score sorted once into tie groups: each distinct score with the
//! number of positives and negatives scoring strictly below it. Every binary metric
//! (`binary`) and the calibration fits (`calibration`) are walks over these groups or binary
//! searches in them.
//!
//! One sort of packed keys: a score in [0, 1] is a non-negative f64 whose bit pattern is below 2^62
//! and ordered like the value, so `bits << 1 | class` sorts by score and fits a u64 (8 bytes a row,
//! sorted by [`radix::sorted`]); -0.0 is folded into 0.0 first. The groups are then one walk of the
//! sorted keys; the counts stay exact integers.

use super::StatsError;
use super::parallel::{BLOCK, map_blocks, map_blocks_mut, threads_for};
use super::radix;

/// Distinct scores in ascending order, with cumulative class counts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TieGroups {
    /// The distinct scores, ascending, as bit patterns ([`score_bits`]; `f64::from_bits` gives the
    /// score).
    pub(crate) score_bits: Vec<u64>,
    /// `positives_below[g]`: positives scoring below the score of group g; one more entry at the end,
    /// the number of positives, so that group g holds `positives_below[g + 1] − positives_below[g]`.
    pub(crate) positives_below: Vec<u64>,
    /// The same for the negatives.
    pub(crate) negatives_below: Vec<u64>,
    pub(crate) n_pos: u64,
    pub(crate) n_neg: u64,
}

impl TieGroups {
    /// Groups the rows of outcomes `y` and scores `s` (equally long, not empty, each score in [0, 1]).
    pub(crate) fn new(y: &[bool], s: &[f64]) -> Result<Self, StatsError> {
        check_lengths("y_true", y.len(), "y_score", s.len())?;
        if y.is_empty() {
            return Err(StatsError::Empty);
        }
        let mut keys = vec![0_u64; y.len()];
        // Per block: its positives and its first score outside [0, 1].
        let blocks = map_blocks_mut(&mut keys, |rows, block_keys| {
            let (ys, ss) = (&y[rows.clone()], &s[rows.start..rows.end]);
            let mut positives = 0_u64;
            for ((key, &yi), &si) in block_keys.iter_mut().zip(ys).zip(ss) {
                positives += u64::from(yi);
                *key = (score_bits(si) << 1) | u64::from(yi);
            }
            let out_of_range = ss.iter().position(|v| !(0.0..=1.0).contains(v));
            (positives, out_of_range.map(|i| rows.start + i))
        });
        if let Some(row) = blocks.iter().find_map(|&(_, out_of_range)| out_of_range) {
            return Err(StatsError::ScoreOutOfRange { row, value: s[row] });
        }
        let n_pos: u64 = blocks.iter().map(|&(positives, _)| positives).sum();
        let sorted = radix::sorted(&keys);
        // Per block of the sorted keys: the groups starting in it and its positives.
        let starts = |i: usize| i == 0 || sorted[i] >> 1 != sorted[i - 1] >> 1;
        let blocks = map_blocks(sorted.len(), |rows| {
            let groups = rows.clone().filter(|&i| starts(i)).count();
            (groups, sorted[rows].iter().map(|&key| key & 1).sum::<u64>())
        });
        let n_groups = blocks.iter().map(|&(groups, _)| groups).sum();
        // The keys are sorted elsewhere: their memory takes the groups' scores.
        let mut score_bits = keys;
        score_bits.truncate(n_groups);
        score_bits.shrink_to_fit();
        let mut positives_below = vec![0; n_groups + 1];
        let mut negatives_below = vec![0; n_groups + 1];
        fill_groups(
            &sorted,
            &blocks,
            Groups {
                score_bits: &mut score_bits,
                positives_below: &mut positives_below[..n_groups],
                negatives_below: &mut negatives_below[..n_groups],
            },
        );
        let n_neg = y.len() as u64 - n_pos;
        positives_below[n_groups] = n_pos;
        negatives_below[n_groups] = n_neg;
        Ok(Self {
            score_bits,
            positives_below,
            negatives_below,
            n_pos,
            n_neg,
        })
    }

    /// Number of distinct scores.
    pub(crate) fn len(&self) -> usize {
        self.score_bits.len()
    }

    /// The score of group g.
    pub(crate) fn score(&self, g: usize) -> f64 {
        f64::from_bits(self.score_bits[g])
    }

    /// Positives in group g.
    pub(crate) fn positives(&self, g: usize) -> u64 {
        self.positives_below[g + 1] - self.positives_below[g]
    }

    /// Negatives in group g.
    pub(crate) fn negatives(&self, g: usize) -> u64 {
        self.negatives_below[g + 1] - self.negatives_below[g]
    }

    /// The first group scoring at least `threshold` (`len()` when none does).
    pub(crate) fn first_at_or_above(&self, threshold: f64) -> usize {
        self.score_bits
            .partition_point(|&bits| bits < score_bits(threshold))
    }
}

/// The groups' columns, or a contiguous part of them.
struct Groups<'a> {
    score_bits: &'a mut [u64],
    positives_below: &'a mut [u64],
    negatives_below: &'a mut [u64],
}

/// Writes the groups of the `sorted` keys, given (groups starting, positives) per block of the keys,
/// on up to the machine's cores (each thread a contiguous run of blocks and of groups).
fn fill_groups(sorted: &[u64], blocks: &[(usize, u64)], groups: Groups<'_>) {
    let threads = threads_for(blocks.len());
    let per_thread = blocks.len().div_ceil(threads).max(1);
    let fill = |first_block: usize, groups: Groups<'_>| {
        let mut positives: u64 = blocks[..first_block].iter().map(|&(_, p)| p).sum();
        let rows = first_block * BLOCK..((first_block + per_thread) * BLOCK).min(sorted.len());
        let mut g = 0;
        for i in rows {
            let key = sorted[i];
            if i == 0 || key >> 1 != sorted[i - 1] >> 1 {
                groups.score_bits[g] = key >> 1;
                groups.positives_below[g] = positives;
                groups.negatives_below[g] = i as u64 - positives;
                g += 1;
            }
            positives += key & 1;
        }
    };
    std::thread::scope(|scope| {
        let mut rest = groups;
        for first_block in (0..blocks.len()).step_by(per_thread) {
            let n_groups = blocks[first_block..(first_block + per_thread).min(blocks.len())]
                .iter()
                .map(|&(groups, _)| groups)
                .sum();
            let (score_bits, score_bits_rest) = std::mem::take(&mut rest.score_bits).split_at_mut(n_groups);
            let (positives_below, positives_rest) =
                std::mem::take(&mut rest.positives_below).split_at_mut(n_groups);
            let (negatives_below, negatives_rest) =
                std::mem::take(&mut rest.negatives_below).split_at_mut(n_groups);
            rest = Groups {
                score_bits: score_bits_rest,
                positives_below: positives_rest,
                negatives_below: negatives_rest,
            };
            let run = Groups {
                score_bits,
                positives_below,
                negatives_below,
            };
            if threads == 1 {
                fill(first_block, run);
            } else {
                scope.spawn(move || fill(first_block, run));
            }
        }
    });
}

/// The bit pattern of a score in [0, 1], ordered like the value (-0.0 folded into 0.0).
pub(crate) fn score_bits(score: f64) -> u64 {
    (score + 0.0).to_bits()
}

pub(crate) fn check_lengths(
    left_name: &'static str,
    left: usize,
    right_name: &'static str,
    right: usize,
) -> Result<(), StatsError> {
    if left == right {
        Ok(())
    } else {
        Err(StatsError::LengthMismatch {
            left_name,
            left,
            right_name,
            right,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Many rows (so that several threads build the groups), scores on a grid with many ties, with
    /// -0.0 beside 0.0 and both ends of [0, 1].
    #[test]
    fn groups_count_each_distinct_score_once_with_its_classes() {
        let n = 40 * BLOCK + 123;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut y, mut s) = (Vec::new(), Vec::new());
        for i in 0..n {
            y.push(random() % 3 == 0);
            s.push(match i % 1000 {
                0 => -0.0,
                1 => 0.0,
                2 => 1.0,
                _ => (random() % 100_000) as f64 / 100_000.0,
            });
        }
        let groups = TieGroups::new(&y, &s).unwrap();
        let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (&yi, &si) in y.iter().zip(&s) {
            let counts = expected.entry(score_bits(si)).or_default();
            if yi {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        assert_eq!(groups.len(), expected.len());
        assert_eq!(groups.score(0).to_bits(), 0.0_f64.to_bits(), "-0.0 is 0.0");
        let (mut positives_below, mut negatives_below) = (0, 0);
        for (g, (&bits, &(positives, negatives))) in expected.iter().enumerate() {
            assert_eq!(groups.score_bits[g], bits);
            assert_eq!((groups.positives(g), groups.negatives(g)), (positives, negatives));
            assert_eq!(
                (groups.positives_below[g], groups.negatives_below[g]),
                (positives_below, negatives_below)
            );
            positives_below += positives;
            negatives_below += negatives;
        }
        assert_eq!((groups.n_pos, groups.n_neg), (positives_below, negatives_below));
        assert_eq!(
            groups.first_at_or_above(0.5),
            expected.range(..score_bits(0.5)).count()
        );
        assert_eq!(groups.first_at_or_above(2.0), groups.len());
    }

    #[test]
    fn the_first_score_outside_the_unit_interval_is_named() {
        let mut s = vec![0.5; 3 * BLOCK];
        s[2 * BLOCK + 7] = f64::NAN;
        s[BLOCK + 1] = -0.25;
        let y = vec![true; s.len()];
        assert_eq!(
            TieGroups::new(&y, &s),
            Err(StatsError::ScoreOutOfRange {
                row: BLOCK + 1,
                value: -0.25
            })
        );
    }
}
