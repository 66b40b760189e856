//! Model weights as federation code sees them: named f32 tensors, never a burn type.

use serde::{Deserialize, Serialize};

/// One named tensor, flattened in row-major order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    pub name: String,
    pub values: Vec<f32>,
}

/// An ordered list of named tensors (a model's weights or a weight delta).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NamedTensors {
    pub tensors: Vec<NamedTensor>,
}

impl NamedTensors {
    /// Builds the list from (name, values) pairs, keeping their order.
    #[must_use]
    pub fn from_pairs<S: Into<String>>(pairs: impl IntoIterator<Item = (S, Vec<f32>)>) -> Self {
        Self {
            tensors: pairs
                .into_iter()
                .map(|(name, values)| NamedTensor {
                    name: name.into(),
                    values,
                })
                .collect(),
        }
    }

    /// The values of the tensor called `name`, if any.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.values.as_slice())
    }

    /// Total number of elements over all tensors.
    #[must_use]
    pub fn len_elements(&self) -> usize {
        self.tensors.iter().map(|t| t.values.len()).sum()
    }
}
