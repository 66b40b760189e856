//! The communication graph of an instance: the complete graph (Bonawitz et al. 2017) or SecAgg+'s
//! random Harary graph H(n, k) (Bell et al. 2020), derived by every party from public values only.

use serde::{Deserialize, Serialize};

use super::{RoundConfig, SecAggConfig, Security};
use crate::crypto::graph_seed;
use crate::prg::{Sign, apply_masks};
use crate::{SecAggError, SiteId};

mod parameters;
pub(crate) use parameters::count as parameters_count;
pub use parameters::{
    CORRECTNESS_BITS, HararyParameters, SECURITY_BITS, check_degree, check_harary_parameters,
    recommend_harary, structural_minimum,
};

/// Which pairs of sites agree keys, exchange shares and mask pairwise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Graph {
    /// Every pair of participants (Bonawitz et al. 2017): O(n) keys, shares and masks per site. The
    /// right choice for a small study (5–50 hospitals).
    #[default]
    Complete,
    /// SecAgg+ (Bell et al. 2020): the random Harary graph H(n, k), a ring lattice (each site linked
    /// to its k/2 predecessors and k/2 successors) over a permutation of the participants that every
    /// party derives from the configuration hash ([`crate::RoundConfig::neighbours`]). A site agrees
    /// keys, shares its secrets t-of-(k+1) over its closed neighbourhood and masks pairwise with its
    /// k neighbours only; `threshold` is then per neighbourhood. With n ≤ k + 1 it is the complete
    /// graph.
    ///
    /// The study declares the fractions it tolerates: at most ⌊`dropout_fraction`·n⌋ sites may drop
    /// out of an instance (more abort it: every stage needs n − ⌊δn⌋ sites, on top of t per
    /// neighbourhood) and at most ⌊`corrupt_fraction`·n⌋ sites collude with the aggregator;
    /// validation checks k and t against them ([`check_harary_parameters`]).
    Harary {
        /// k: even, at least 2.
        degree: usize,
        /// δ in [0, 1).
        dropout_fraction: f64,
        /// γ in [0, 1).
        corrupt_fraction: f64,
    },
}

/// Checks the degree and the threshold against the graph and the threat model, and returns the size
/// of the groups the threshold counts (n, or k + 1) and their name for messages.
pub(super) fn check_threshold(config: &SecAggConfig, n: usize) -> Result<(usize, String), SecAggError> {
    let invalid = |field: &'static str, reason: String| SecAggError::InvalidConfig { field, reason };
    // The sites a threshold counts: all n, or a closed neighbourhood of the Harary graph.
    let members = match config.graph {
        Graph::Complete => n,
        Graph::Harary { degree, .. } => {
            check_degree(degree).map_err(|reason| invalid("graph.degree", reason))?;
            degree.min(n - 1) + 1
        }
    };
    let group = if members == n {
        format!("{n} participants")
    } else {
        format!("closed neighbourhoods of {members} sites")
    };
    // t <= members first: a hostile t would overflow 2t.
    if config.threshold > members || 2 * config.threshold <= members {
        return Err(invalid(
            "threshold",
            format!("{} with {group}, expected m/2 < t <= m", config.threshold),
        ));
    }
    let malicious = matches!(config.security, Security::MaliciousServer { .. });
    if let Graph::Harary {
        degree,
        dropout_fraction,
        corrupt_fraction,
    } = config.graph
    {
        check_harary_parameters(
            n,
            degree,
            config.threshold,
            dropout_fraction,
            corrupt_fraction,
            malicious,
        )
        .map_err(|(field, reason)| invalid(field, reason))?;
    }
    Ok((members, group))
}

impl RoundConfig {
    /// The communication graph.
    #[must_use]
    pub fn graph(&self) -> &Graph {
        &self.inner.config.graph
    }
    /// Whether every pair of participants is linked (the complete graph, or a Harary graph with
    /// n ≤ k + 1).
    #[must_use]
    pub fn is_complete_graph(&self) -> bool {
        self.inner.neighbourhoods.is_complete()
    }
    /// The open neighbourhood N(site) (sorted): the sites `site` agrees keys, shares secrets and
    /// masks pairwise with; every other participant in the complete graph. Empty for a
    /// non-participant.
    #[must_use]
    pub fn neighbours(&self, site: SiteId) -> &[SiteId] {
        match self.inner.participants.binary_search(&site) {
            Ok(index) => self.inner.neighbourhoods.of_index(index),
            Err(_) => &[],
        }
    }
    /// Whether `member` is in the closed neighbourhood N[site] = N(site) ∪ {site}.
    #[must_use]
    pub fn in_closed_neighbourhood(&self, site: SiteId, member: SiteId) -> bool {
        (member == site && self.is_participant(site)) || self.neighbours(site).binary_search(&member).is_ok()
    }
    /// The members of `sites` in N[site] (all of them in the complete graph), in their order.
    #[must_use]
    pub fn closed_neighbourhood_members(&self, site: SiteId, sites: &[SiteId]) -> Vec<SiteId> {
        sites
            .iter()
            .copied()
            .filter(|&member| self.in_closed_neighbourhood(site, member))
            .collect()
    }
    /// How many of `sites` (sorted) are in N[site].
    #[must_use]
    pub fn count_in_closed_neighbourhood(&self, site: SiteId, sites: &[SiteId]) -> usize {
        sites
            .iter()
            .filter(|&&member| self.in_closed_neighbourhood(site, member))
            .count()
    }
    /// The fewest sites every stage needs in all: t (complete graph), or n − ⌊δn⌋ with a Harary graph
    /// (the declared dropout fraction δ, which Bell et al.'s connectivity argument assumes).
    #[must_use]
    pub fn min_survivors(&self) -> usize {
        self.inner.min_survivors
    }
}

/// The open neighbourhood of every participant (sorted), by its index in the sorted participant list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Neighbourhoods {
    neighbours: Vec<Vec<SiteId>>,
    complete: bool,
}

impl Neighbourhoods {
    /// The neighbourhoods of `graph` over `participants` (sorted), the Harary permutation drawn from
    /// `salt` (the instance's HKDF salt, which covers the configuration hash and so the graph).
    pub(crate) fn derive(graph: &Graph, participants: &[SiteId], salt: &[u8; 32]) -> Self {
        let n = participants.len();
        let degree = match graph {
            Graph::Harary { degree, .. } if degree + 1 < n => *degree,
            _ => {
                let neighbours = participants
                    .iter()
                    .map(|&u| participants.iter().copied().filter(|&v| v != u).collect())
                    .collect();
                return Self {
                    neighbours,
                    complete: true,
                };
            }
        };
        let ring = permutation(n, salt);
        let mut position = vec![0; n];
        for (p, &index) in ring.iter().enumerate() {
            position[index] = p;
        }
        let half = degree / 2;
        let neighbours = (0..n)
            .map(|index| {
                let p = position[index];
                let mut list: Vec<SiteId> = (1..=half)
                    .flat_map(|d| [ring[(p + d) % n], ring[(p + n - d) % n]])
                    .map(|i| participants[i])
                    .collect();
                list.sort_unstable();
                list
            })
            .collect();
        Self {
            neighbours,
            complete: false,
        }
    }

    /// The open neighbourhood of the participant at `index`.
    pub(crate) fn of_index(&self, index: usize) -> &[SiteId] {
        self.neighbours.get(index).map_or(&[], Vec::as_slice)
    }

    /// Whether every pair is linked (the complete graph, or a Harary graph with n ≤ k + 1).
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }
}

/// Indices 0..n in an order drawn by Fisher–Yates from the AES-128-CTR stream ([`crate::prg`]) of
/// HKDF(salt, "fedlnm-secagg-graph-v1"); each draw in 0..=i by rejection sampling (no modulo bias).
fn permutation(n: usize, salt: &[u8; 32]) -> Vec<usize> {
    let seed = graph_seed(salt);
    let mut words: Vec<u64> = Vec::new();
    let mut next_word = 0usize;
    let mut draw = |bound: u64| -> u64 {
        // The largest multiple of `bound` that fits: words at or above it are rejected.
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            if next_word == words.len() {
                let mut block = vec![0u64; 64];
                apply_masks(
                    &mut block,
                    words.len() as u64,
                    &[(&seed, Sign::Add)],
                    crate::Ring::Z2_64,
                    1,
                );
                words.extend_from_slice(&block);
            }
            let word = words[next_word];
            next_word += 1;
            if word < zone {
                return word % bound;
            }
        }
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // i < n ≤ 255: the conversions are exact.
        let j = draw(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn harary(degree: usize) -> Graph {
        Graph::Harary {
            degree,
            dropout_fraction: 0.0,
            corrupt_fraction: 0.0,
        }
    }

    #[test]
    fn harary_graphs_are_regular_symmetric_deterministic_and_differ_between_salts() {
        let participants: Vec<SiteId> = (1..=40).map(|i| SiteId(3 * i)).collect();
        for degree in [2, 4, 8, 14] {
            let a = Neighbourhoods::derive(&harary(degree), &participants, &[1; 32]);
            assert!(!a.is_complete());
            for (index, &u) in participants.iter().enumerate() {
                let list = a.of_index(index);
                assert_eq!(list.len(), degree, "{u} is not {degree}-regular");
                assert!(!list.contains(&u));
                assert!(list.windows(2).all(|w| w[0] < w[1]));
                for v in list {
                    let vi = participants.binary_search(v).unwrap();
                    assert!(a.of_index(vi).contains(&u), "{u}–{v} is not symmetric");
                }
            }
            assert_eq!(
                a,
                Neighbourhoods::derive(&harary(degree), &participants, &[1; 32])
            );
            assert_ne!(
                a,
                Neighbourhoods::derive(&harary(degree), &participants, &[2; 32])
            );
        }
    }

    #[test]
    fn small_instances_degenerate_to_the_complete_graph() {
        let participants: Vec<SiteId> = (1..=9).map(SiteId).collect();
        let complete = Neighbourhoods::derive(&Graph::Complete, &participants, &[0; 32]);
        for degree in [8, 10, 20] {
            let h = Neighbourhoods::derive(&harary(degree), &participants, &[5; 32]);
            assert!(h.is_complete());
            assert_eq!(h, complete, "k = {degree} ≥ n − 1");
        }
        assert!(!Neighbourhoods::derive(&harary(6), &participants, &[5; 32]).is_complete());
    }

    #[test]
    fn the_permutation_is_uniform_enough() {
        // Position of element 0 over 3000 salts, 6 elements: each position about 500 times.
        let mut counts = [0usize; 6];
        for s in 0..3000u32 {
            let mut salt = [0u8; 32];
            salt[..4].copy_from_slice(&s.to_be_bytes());
            let order = permutation(6, &salt);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..6).collect::<Vec<_>>());
            counts[order.iter().position(|&i| i == 0).unwrap()] += 1;
        }
        // Chi-square with 5 degrees of freedom: 20.5 is its 0.999 quantile.
        let chi: f64 = counts.iter().map(|&c| (c as f64 - 500.0).powi(2) / 500.0).sum();
        assert!(chi < 20.5, "{counts:?}");
    }
}
