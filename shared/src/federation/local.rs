//! FedBN as data: the exact names of the tensors that stay at each site (never uploaded, masked or
//! averaged; each site keeps its own trained values). Decided once per study by the aggregator from
//! the study's `fedbn` setting and the model's layout, and sent with every task, so that the node, the
//! aggregation and the secure-aggregation configuration all use the same list.

use crate::weights::{NamedTensors, is_local_norm};
use std::collections::BTreeSet;

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
}
