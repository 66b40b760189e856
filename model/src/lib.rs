//! fedlnm-model: the multimodal LNM model in burn ([`model`]: ResNet image branch, report branch,
//! clinical branch, fusion, LNM/T/N heads) and its plain-data facade ([`train`]: local training,
//! prediction, Grad-CAM, benchmark), generic over the backend inside and dispatched to Flex (CPU) or
//! CUDA at one place (`train/backend.rs`). The only crate that names burn.

pub mod model;
pub mod train;
