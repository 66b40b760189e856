//! FedBN as data: the exact names of the tensors that stay at each site (never uploaded, masked or
//! averaged; each site keeps its own trained values). Decided once per study by the aggregator from
//! the study's `fedbn` setting and the model's layout, and sent with every task, so that the node, the
//! aggregation and the secure-aggregation configuration all use the same list. With it, the rule for
//! which normalisation statistics each site scores a model with ([`ScoringStatistics`]), which the node
//! follows, states in its metrics, and the aggregator checks.

use crate::config::SiteRole;
use crate::weights::{NamedTensors, is_local_norm};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// The tensors that stay local to each site.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalTensors {
    names: BTreeSet<String>,
}

impl LocalTensors {
    /// The study's rule: with FedBN, the normalisation tensors of `model`
    /// ([`is_local_norm`]); without, none.
    #[must_use]
    pub fn for_study(model: &NamedTensors, fedbn: bool) -> Self {
        if !fedbn {
            return Self::default();
        }
        Self::from_names(
            model
                .names()
                .filter(|name| is_local_norm(name))
                .map(str::to_owned),
        )
    }

    /// The list as received.
    #[must_use]
    pub fn from_names(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            names: names.into_iter().collect(),
        }
    }

    /// Whether `name` stays at the site.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether `name` is averaged by the federation.
    #[must_use]
    pub fn is_aggregated(&self, name: &str) -> bool {
        !self.contains(name)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The names, sorted, for the wire.
    #[must_use]
    pub fn into_names(self) -> Vec<String> {
        self.names.into_iter().collect()
    }
}

/// Which batch-normalisation statistics a site scored a model with. A site's metrics state it
/// ([`SiteRoundMetrics::normalisation`](super::SiteRoundMetrics::normalisation)), so that a report says
/// what each published figure measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringStatistics {
    /// The model's own running statistics (FedAvg: averaged over the training sites).
    Model,
    /// Re-estimated on the site's own validation patients' pictures before scoring (AdaBN; no label
    /// is read).
    SiteReestimated,
    /// FedBN: the site's own trained normalisation layers.
    SiteLayers,
}

impl ScoringStatistics {
    /// The study's rule for a site of `role`, given the tensors that stay at the sites (`local`,
    /// FedBN) and whether the study asks every site to score with its own statistics (`adapt`,
    /// `rounds.normalisation_statistics = "site"`). FedBN's training sites score with their own
    /// trained layers, and its validate-only sites, which never trained any, re-estimate them.
    /// Without FedBN, every site re-estimates when the study asks and uses the model's otherwise.
    #[must_use]
    pub fn for_site(local: &LocalTensors, adapt: bool, role: SiteRole) -> Self {
        match (local.is_empty(), adapt, role) {
            (false, _, SiteRole::Train) => Self::SiteLayers,
            (false, _, SiteRole::Validate) | (true, true, _) => Self::SiteReestimated,
            (true, false, _) => Self::Model,
        }
    }

    /// Whether the site re-estimates the statistics before it scores (AdaBN).
    #[must_use]
    pub fn re_estimates(self) -> bool {
        self == Self::SiteReestimated
    }
}

impl fmt::Display for ScoringStatistics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Model => "model",
            Self::SiteReestimated => "site_reestimated",
            Self::SiteLayers => "site_layers",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::weights::NamedTensor;

    #[test]
    fn the_study_flag_decides_and_names_are_exact() {
        let model = NamedTensors {
            tensors: vec![
                NamedTensor::new("head.weight", vec![1], vec![0.0]).unwrap(),
                NamedTensor::new("image.bn1.gamma", vec![1], vec![1.0]).unwrap(),
            ],
        };
        let fedbn = LocalTensors::for_study(&model, true);
        assert_eq!(fedbn.clone().into_names(), ["image.bn1.gamma"]);
        assert!(fedbn.contains("image.bn1.gamma") && fedbn.is_aggregated("head.weight"));
        assert!(!fedbn.contains("image.bn1.*"), "names are not patterns");
        assert!(LocalTensors::for_study(&model, false).is_empty());
    }

    #[test]
    fn fedbn_sites_score_with_their_own_layers_and_others_re_estimate_only_when_asked() {
        let fedavg = LocalTensors::default();
        let fedbn = LocalTensors::from_names(["image.bn1.running_mean".to_owned()]);
        for role in [SiteRole::Train, SiteRole::Validate] {
            assert_eq!(
                ScoringStatistics::for_site(&fedavg, false, role),
                ScoringStatistics::Model
            );
            assert_eq!(
                ScoringStatistics::for_site(&fedavg, true, role),
                ScoringStatistics::SiteReestimated
            );
        }
        // FedBN's validate-only site has no trained layers of its own: it always re-estimates.
        for asked in [false, true] {
            assert_eq!(
                ScoringStatistics::for_site(&fedbn, asked, SiteRole::Train),
                ScoringStatistics::SiteLayers
            );
            assert!(ScoringStatistics::for_site(&fedbn, asked, SiteRole::Validate).re_estimates());
        }
        assert_eq!(
            serde_json::to_string(&ScoringStatistics::SiteReestimated).unwrap(),
            format!("\"{}\"", ScoringStatistics::SiteReestimated)
        );
    }
}
