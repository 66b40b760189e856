//! The rows of a binary outcome and a score sorted once: first as packed keys ([`SortedKeys`]), then
//! as tie groups ([`TieGroups`]: each distinct score with the number of positives and negatives
//! scoring strictly below it). Every binary metric (`binary`) and the calibration fits
//! (`calibration`) are walks over these or binary searches in them.
//!
//! One sort of packed keys: a score in [0, 1] is a non-negative f64 whose bit pattern is below 2^62
//! and ordered like the value, so `bits << 1 | class` sorts by score and fits a u64 (8 bytes a row,
//! sorted by [`radix::sorted`]); -0.0 is folded into 0.0 first. The sorted keys are cut into blocks
//! of about [`BLOCK`] rows that end where a tie group ends, so that each block holds whole groups and
//! the walks run on the machine's cores; the counts stay exact integers.

use super::StatsError;
use super::parallel::{BLOCK, map_blocks, map_blocks_mut, threads_for};
use super::radix;
use std::ops::Range;

/// The packed keys `score bits << 1 | class` of the rows in ascending order, in blocks of whole tie
/// groups.
#[derive(Debug)]
pub(crate) struct SortedKeys {
    pub(crate) keys: Vec<u64>,
    /// One block per [`BLOCK`] rows (some empty where a group spans blocks), in order.
    pub(crate) blocks: Vec<KeyBlock>,
    pub(crate) n_pos: u64,
    pub(crate) n_neg: u64,
    /// The memory of the keys before sorting, free now: the groups' scores go there.
    spare: Vec<u64>,
}

/// A block of sorted keys: whole tie groups, with what comes before it.
#[derive(Debug, Clone)]
pub(crate) struct KeyBlock {
    pub(crate) rows: Range<usize>,
    /// Positives in the rows before the block.
    pub(crate) positives_below: u64,
    pub(crate) positives: u64,
    /// Groups before the block.
    pub(crate) groups_below: usize,
    pub(crate) groups: usize,
}

/// The class counts of one tie group and below it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupCounts {
    pub(crate) positives_below: u64,
    pub(crate) negatives_below: u64,
    pub(crate) positives: u64,
    pub(crate) negatives: u64,
}

/// Tie groups in ascending score order, cut into blocks (each a block's worth of work on one core).
pub(crate) trait GroupBlocks: Sync {
    fn n_pos(&self) -> u64;
    fn n_neg(&self) -> u64;
    fn block_count(&self) -> usize;
    /// The groups of block b, in order.
    fn groups_of_block(&self, b: usize) -> impl Iterator<Item = GroupCounts> + '_;
}

impl GroupBlocks for SortedKeys {
    fn n_pos(&self) -> u64 {
        self.n_pos
    }

    fn n_neg(&self) -> u64 {
        self.n_neg
    }

    fn block_count(&self) -> usize {
        self.blocks.len()
    }

    fn groups_of_block(&self, b: usize) -> impl Iterator<Item = GroupCounts> + '_ {
        self.groups_in(&self.blocks[b])
    }
}

impl GroupBlocks for TieGroups {
    fn n_pos(&self) -> u64 {
        self.n_pos
    }

    fn n_neg(&self) -> u64 {
        self.n_neg
    }

    fn block_count(&self) -> usize {
        self.len().div_ceil(BLOCK)
    }

    fn groups_of_block(&self, b: usize) -> impl Iterator<Item = GroupCounts> + '_ {
        (b * BLOCK..((b + 1) * BLOCK).min(self.len())).map(|g| GroupCounts {
            positives_below: self.positives_below(g),
            negatives_below: self.negatives_below(g),
            positives: self.positives(g),
            negatives: self.negatives(g),
        })
    }
}

impl SortedKeys {
    /// Sorts the rows of outcomes `y` and scores `s` (equally long, not empty, each score in [0, 1]).
    pub(crate) fn new(y: &[bool], s: &[f64]) -> Result<Self, StatsError> {
        check_lengths("y_true", y.len(), "y_score", s.len())?;
        if y.is_empty() {
            return Err(StatsError::Empty);
        }
        let mut unsorted = vec![0_u64; y.len()];
        // Per block: its positives and its first score outside [0, 1].
        let rows = map_blocks_mut(&mut unsorted, |rows, block_keys| {
            let (ys, ss) = (&y[rows.clone()], &s[rows.start..rows.end]);
            let mut positives = 0_u64;
            for ((key, &yi), &si) in block_keys.iter_mut().zip(ys).zip(ss) {
                positives += u64::from(yi);
                *key = (score_bits(si) << 1) | u64::from(yi);
            }
            let out_of_range = ss.iter().position(|v| !(0.0..=1.0).contains(v));
            (positives, out_of_range.map(|i| rows.start + i))
        });
        if let Some(row) = rows.iter().find_map(|&(_, out_of_range)| out_of_range) {
            return Err(StatsError::ScoreOutOfRange { row, value: s[row] });
        }
        let n_pos: u64 = rows.iter().map(|&(positives, _)| positives).sum();
        let keys = radix::sorted(&unsorted);
        // Block b starts where the group holding row b·BLOCK ends (at b·BLOCK if a group starts there).
        let group_end = |row: usize| {
            if row == 0 || row >= keys.len() {
                return row.min(keys.len());
            }
            let score = keys[row - 1] >> 1;
            row + keys[row..].partition_point(|&key| key >> 1 == score)
        };
        let mut blocks = map_blocks(keys.len(), |fixed| {
            let rows = group_end(fixed.start)..group_end(fixed.end);
            let starts = rows
                .clone()
                .filter(|&i| i == 0 || keys[i] >> 1 != keys[i - 1] >> 1)
                .count();
            KeyBlock {
                positives: keys[rows.clone()].iter().map(|&key| key & 1).sum(),
                rows,
                positives_below: 0,
                groups_below: 0,
                groups: starts,
            }
        });
        let (mut positives_below, mut groups_below) = (0, 0);
        for block in &mut blocks {
            (block.positives_below, block.groups_below) = (positives_below, groups_below);
            positives_below += block.positives;
            groups_below += block.groups;
        }
        Ok(Self {
            keys,
            blocks,
            n_pos,
            n_neg: y.len() as u64 - n_pos,
            spare: unsorted,
        })
    }

    /// The tie groups of `block`, in order.
    pub(crate) fn groups_in<'a>(&'a self, block: &KeyBlock) -> impl Iterator<Item = GroupCounts> + 'a {
        let mut positives_below = block.positives_below;
        let mut negatives_below = block.rows.start as u64 - positives_below;
        self.keys[block.rows.clone()]
            .chunk_by(|a, b| a >> 1 == b >> 1)
            .map(move |group| {
                let positives = group.iter().map(|&key| key & 1).sum::<u64>();
                let counts = GroupCounts {
                    positives_below,
                    negatives_below,
                    positives,
                    negatives: group.len() as u64 - positives,
                };
                positives_below += counts.positives;
                negatives_below += counts.negatives;
                counts
            })
    }

    /// Number of distinct scores.
    pub(crate) fn groups(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.groups_below + b.groups)
    }

    /// The tie groups of the keys (the keys' memory is given back).
    pub(crate) fn into_groups(self) -> TieGroups {
        let n_groups = self.groups();
        let mut score_bits = self.spare;
        score_bits.truncate(n_groups);
        score_bits.shrink_to_fit();
        let rows = self.keys.len();
        let (mut positives_below, mut negatives_below) = (
            Counts::zeros(n_groups + 1, rows),
            Counts::zeros(n_groups + 1, rows),
        );
        fill_groups(
            &self.keys,
            &self.blocks,
            Groups {
                score_bits: &mut score_bits,
                positives_below: positives_below.as_mut(),
                negatives_below: negatives_below.as_mut(),
            },
        );
        positives_below.as_mut().set(n_groups, self.n_pos);
        negatives_below.as_mut().set(n_groups, self.n_neg);
        TieGroups {
            score_bits,
            positives_below,
            negatives_below,
            n_pos: self.n_pos,
            n_neg: self.n_neg,
        }
    }
}

/// Distinct scores in ascending order, with cumulative class counts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TieGroups {
    /// The distinct scores, ascending, as bit patterns ([`score_bits`]; `f64::from_bits` gives the
    /// score).
    pub(crate) score_bits: Vec<u64>,
    /// Entry g: the positives scoring below the score of group g; one more entry at the end, the
    /// number of positives, so that group g holds entry g + 1 − entry g.
    positives_below: Counts,
    /// The same for the negatives.
    negatives_below: Counts,
    pub(crate) n_pos: u64,
    pub(crate) n_neg: u64,
}

impl TieGroups {
    /// Groups the rows of outcomes `y` and scores `s` (equally long, not empty, each score in [0, 1]).
    pub(crate) fn new(y: &[bool], s: &[f64]) -> Result<Self, StatsError> {
        Ok(SortedKeys::new(y, s)?.into_groups())
    }

    /// Groups given as they are: scores (bit patterns) and (positives, negatives) per group.
    pub(crate) fn from_counts(
        score_bits: Vec<u64>,
        counts: impl ExactSizeIterator<Item = (u64, u64)>,
    ) -> Self {
        let mut columns = Vec::with_capacity(2 * (counts.len() + 1));
        let (mut n_pos, mut n_neg) = (0, 0);
        for (positives, negatives) in counts {
            columns.push((n_pos, n_neg));
            n_pos += positives;
            n_neg += negatives;
        }
        columns.push((n_pos, n_neg));
        let rows = usize::try_from(n_pos + n_neg).unwrap_or(usize::MAX);
        let (mut positives_below, mut negatives_below) = (
            Counts::zeros(columns.len(), rows),
            Counts::zeros(columns.len(), rows),
        );
        let (mut positives_column, mut negatives_column) =
            (positives_below.as_mut(), negatives_below.as_mut());
        for (g, &(positives, negatives)) in columns.iter().enumerate() {
            positives_column.set(g, positives);
            negatives_column.set(g, negatives);
        }
        Self {
            score_bits,
            positives_below,
            negatives_below,
            n_pos,
            n_neg,
        }
    }

    /// Number of distinct scores.
    pub(crate) fn len(&self) -> usize {
        self.score_bits.len()
    }

    /// The score of group g.
    pub(crate) fn score(&self, g: usize) -> f64 {
        f64::from_bits(self.score_bits[g])
    }

    /// Positives scoring below group g (g up to `len()`).
    pub(crate) fn positives_below(&self, g: usize) -> u64 {
        self.positives_below.get(g)
    }

    /// Negatives scoring below group g (g up to `len()`).
    pub(crate) fn negatives_below(&self, g: usize) -> u64 {
        self.negatives_below.get(g)
    }

    /// Positives in group g.
    pub(crate) fn positives(&self, g: usize) -> u64 {
        self.positives_below(g + 1) - self.positives_below(g)
    }

    /// Negatives in group g.
    pub(crate) fn negatives(&self, g: usize) -> u64 {
        self.negatives_below(g + 1) - self.negatives_below(g)
    }

    /// The first group scoring at least `threshold` (`len()` when none does).
    pub(crate) fn first_at_or_above(&self, threshold: f64) -> usize {
        self.score_bits
            .partition_point(|&bits| bits < score_bits(threshold))
    }
}

/// A column of counts of rows: 4 bytes an entry where every count fits (fewer than 2^32 rows), else 8
/// (less memory to touch and to read on every walk).
#[derive(Debug, Clone, PartialEq)]
enum Counts {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl Counts {
    /// `len` zeros, wide enough for counts up to `rows`.
    fn zeros(len: usize, rows: usize) -> Self {
        if u32::try_from(rows).is_ok() {
            Self::Narrow(vec![0; len])
        } else {
            Self::Wide(vec![0; len])
        }
    }

    fn get(&self, i: usize) -> u64 {
        match self {
            Self::Narrow(counts) => u64::from(counts[i]),
            Self::Wide(counts) => counts[i],
        }
    }

    fn as_mut(&mut self) -> CountsMut<'_> {
        match self {
            Self::Narrow(counts) => CountsMut::Narrow(counts),
            Self::Wide(counts) => CountsMut::Wide(counts),
        }
    }
}

/// A part of a [`Counts`] column to fill in.
enum CountsMut<'a> {
    Narrow(&'a mut [u32]),
    Wide(&'a mut [u64]),
}

impl<'a> CountsMut<'a> {
    /// Sets entry i to `count` (at most the rows the column was made for).
    fn set(&mut self, i: usize, count: u64) {
        match self {
            // The column is narrow only where every count fits.
            Self::Narrow(counts) => counts[i] = u32::try_from(count).unwrap_or(u32::MAX),
            Self::Wide(counts) => counts[i] = count,
        }
    }

    /// The first `mid` entries and the rest.
    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            Self::Narrow(counts) => {
                let (head, tail) = counts.split_at_mut(mid);
                (Self::Narrow(head), Self::Narrow(tail))
            }
            Self::Wide(counts) => {
                let (head, tail) = counts.split_at_mut(mid);
                (Self::Wide(head), Self::Wide(tail))
            }
        }
    }
}

/// The groups' columns, or a contiguous part of them.
struct Groups<'a> {
    score_bits: &'a mut [u64],
    positives_below: CountsMut<'a>,
    negatives_below: CountsMut<'a>,
}

impl Groups<'_> {
    /// The first `mid` groups and the rest.
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (score_bits, score_bits_rest) = self.score_bits.split_at_mut(mid);
        let (positives_below, positives_rest) = self.positives_below.split_at(mid);
        let (negatives_below, negatives_rest) = self.negatives_below.split_at(mid);
        (
            Groups {
                score_bits,
                positives_below,
                negatives_below,
            },
            Groups {
                score_bits: score_bits_rest,
                positives_below: positives_rest,
                negatives_below: negatives_rest,
            },
        )
    }
}

/// Writes the groups of the sorted `keys` on up to the machine's cores, each thread a contiguous run
/// of blocks (of whole groups) and of groups.
fn fill_groups(keys: &[u64], blocks: &[KeyBlock], groups: Groups<'_>) {
    let threads = threads_for(blocks.len());
    let per_thread = blocks.len().div_ceil(threads).max(1);
    let fill = |blocks: &[KeyBlock], groups: Groups<'_>| {
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return;
        };
        let Groups {
            score_bits,
            mut positives_below,
            mut negatives_below,
        } = groups;
        let mut positives = first.positives_below;
        // Every row writes its group's entry (the same values again within a group), without a
        // branch on where groups start; the run starts with a group.
        let (mut started, mut group_positives, mut group_rows) = (0, 0, 0);
        for i in first.rows.start..last.rows.end {
            let key = keys[i];
            let start = i == first.rows.start || key >> 1 != keys[i - 1] >> 1;
            started += usize::from(start);
            group_positives = if start { positives } else { group_positives };
            group_rows = if start { i as u64 } else { group_rows };
            let g = started - 1;
            score_bits[g] = key >> 1;
            positives_below.set(g, group_positives);
            negatives_below.set(g, group_rows - group_positives);
            positives += key & 1;
        }
    };
    std::thread::scope(|scope| {
        let mut rest = groups;
        for run in blocks.chunks(per_thread) {
            let (part, tail) = rest.split_at(run.iter().map(|b| b.groups).sum());
            rest = tail;
            if threads == 1 {
                fill(run, part);
            } else {
                scope.spawn(move || fill(run, part));
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
        let mut random = crate::test_random::xorshift(0x2545_f491_4f6c_dd1d_u64);
        let (mut y, mut s) = (Vec::new(), Vec::new());
        for i in 0..n {
            y.push(random().is_multiple_of(3));
            s.push(match i % 1000 {
                0 => -0.0,
                1 => 0.0,
                2 => 1.0,
                // One group spanning several blocks.
                _ if (10 * BLOCK..14 * BLOCK).contains(&i) => 0.375,
                _ => (random() % 100_000) as f64 / 100_000.0,
            });
        }
        let keys = SortedKeys::new(&y, &s).unwrap();
        // Blocks of whole groups, one after the other.
        assert_eq!(keys.blocks.len(), n.div_ceil(BLOCK));
        assert!(keys.blocks.windows(2).all(|w| w[0].rows.end == w[1].rows.start));
        assert_eq!(keys.blocks.last().unwrap().rows.end, n);
        assert!(
            keys.blocks.iter().any(|b| b.rows.is_empty()),
            "the long group swallows blocks"
        );
        for block in keys
            .blocks
            .iter()
            .filter(|b| b.rows.start > 0 && b.rows.start < n)
        {
            assert_ne!(
                keys.keys[block.rows.start] >> 1,
                keys.keys[block.rows.start - 1] >> 1
            );
        }
        let groups = keys.into_groups();
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
                (groups.positives_below(g), groups.negatives_below(g)),
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

    /// Counts are 4 bytes where every count fits, 8 beyond; either way the same counts come back.
    #[test]
    fn count_columns_widen_beyond_u32() {
        for (counts, wide) in [
            (vec![(3, 4), (0, 2), (5, 0)], false),
            (vec![(3_000_000_000, 2_000_000_000), (1, 0), (0, 7)], true),
        ] {
            let groups = TieGroups::from_counts(vec![1, 2, 3], counts.iter().copied());
            assert_eq!(matches!(groups.positives_below, Counts::Wide(_)), wide);
            for (g, &(positives, negatives)) in counts.iter().enumerate() {
                assert_eq!((groups.positives(g), groups.negatives(g)), (positives, negatives));
            }
            let total = |f: fn(&(u64, u64)) -> u64| counts.iter().map(f).sum::<u64>();
            assert_eq!((groups.n_pos, groups.n_neg), (total(|c| c.0), total(|c| c.1)));
            assert_eq!(groups.positives_below(3), groups.n_pos);
        }
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
