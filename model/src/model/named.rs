//! Burn modules to and from [`NamedTensors`]: every float parameter and running statistic, named by its
//! module path (`image.blocks.0.bn1.running_var`), in visiting order. The round trip is bit-exact.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedlnm_shared::weights::{NamedTensor, NamedTensors, WeightsError};

/// All float tensors of `module`, named by path.
pub fn to_named<B: Backend, M: Module<B>>(module: &M) -> NamedTensors {
    let mut collector = Collector {
        path: Vec::new(),
        tensors: Vec::new(),
    };
    module.visit(&mut collector);
    NamedTensors {
        tensors: collector.tensors,
    }
}

/// `module` with every float tensor replaced by the one of the same name in `weights`, which must have
/// exactly the module's names and shapes (checked first; the module is untouched on error).
pub fn from_named<B: Backend, M: Module<B>>(module: M, weights: &NamedTensors) -> Result<M, WeightsError> {
    weights.check_same_layout(&to_named(&module))?;
    let mut loader = Loader {
        path: Vec::new(),
        weights,
    };
    Ok(module.map(&mut loader))
}

struct Collector {
    path: Vec<String>,
    tensors: Vec<NamedTensor>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        // A float tensor of the model converts to f32 (the element type of every backend we build).
        let values = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        self.tensors.push(NamedTensor {
            name: self.path.join("."),
            shape,
            values,
        });
    }
}

struct Loader<'a> {
    path: Vec<String>,
    weights: &'a NamedTensors,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let name = self.path.join(".");
        // The layout was checked against this very module in `from_named`: the name exists.
        let Some(named) = self.weights.get(&name) else {
            return Param::from_mapped_value(id, old, mapper);
        };
        let device = old.device();
        let mut tensor = Tensor::<B, D>::from_data(
            TensorData::new(named.values.clone(), named.shape.clone()),
            &device,
        );
        if old.is_require_grad() {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Fixed weights (the round's global model) kept on the device, by name, for the FedProx pull.
pub struct Anchor<B: AutodiffBackend> {
    tensors: std::collections::HashMap<String, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Anchor<B> {
    /// Copies `weights` to `device` once.
    #[must_use]
    pub fn new(weights: &NamedTensors, device: &B::Device) -> Self {
        let tensors = weights
            .tensors
            .iter()
            .map(|t| {
                let data = TensorData::new(t.values.clone(), [t.values.len()]);
                (
                    t.name.clone(),
                    Tensor::<B::InnerBackend, 1>::from_data(data, device),
                )
            })
            .collect();
        Self { tensors }
    }
}

/// `module` with every trainable float parameter pulled towards the anchor:
/// w ← (1 − factor)·w + factor·w_anchor (the decoupled FedProx step with factor = lr·μ), computed
/// outside the autodiff graph. Tensors the anchor lacks and running statistics are left as they are.
pub fn pull_towards<B: AutodiffBackend, M: Module<B>>(module: M, anchor: &Anchor<B>, factor: f64) -> M {
    let mut puller = Puller {
        path: Vec::new(),
        anchor,
        factor,
    };
    module.map(&mut puller)
}

struct Puller<'a, B: AutodiffBackend> {
    path: Vec<String>,
    anchor: &'a Anchor<B>,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Puller<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let name = self.path.join(".");
        // Trainable parameters only: running statistics follow the data, not the optimiser.
        let anchor = match self.anchor.tensors.get(&name) {
            Some(anchor) if old.is_require_grad() => anchor,
            _ => return Param::from_mapped_value(id, old, mapper),
        };
        let inner = old.inner();
        let target = anchor.clone().reshape(inner.shape());
        let pulled = inner
            .mul_scalar(1.0 - self.factor)
            .add(target.mul_scalar(self.factor));
        Param::from_mapped_value(id, Tensor::<B, D>::from_inner(pulled).require_grad(), mapper)
    }
}
