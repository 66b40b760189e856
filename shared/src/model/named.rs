//! Burn modules to and from [`NamedTensors`]: every float parameter and running statistic, named by its
//! module path (`image.blocks.0.bn1.running_var`), in visiting order. The round trip is bit-exact.

use crate::weights::{NamedTensor, NamedTensors, WeightsError};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

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
