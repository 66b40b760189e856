//! The image branch: a ResNet (basic or bottleneck blocks, configurable depth and width) whose
//! normalisation layers are all named `…bn…` so that FedBN can keep them local.
//!
//! Layout and parameter names follow torchvision (`stem_conv`, `blocks.N.conv1`, `blocks.N.bn1`,
//! `downsample_conv`), flattened into one list of blocks.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use fedlnm_shared::model_config::ImageConfig;

/// A residual block: basic (two 3×3 convolutions) or bottleneck (1×1, 3×3, 1×1 with expansion 4).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    conv1: Conv2d<B>,
    bn1: BatchNorm<B>,
    conv2: Conv2d<B>,
    bn2: BatchNorm<B>,
    /// Bottleneck blocks only.
    conv3: Option<Conv2d<B>>,
    bn3: Option<BatchNorm<B>>,
    /// When the block changes resolution or width: a strided 1×1 projection of the shortcut.
    downsample_conv: Option<Conv2d<B>>,
    downsample_bn: Option<BatchNorm<B>>,
}

/// The ResNet trunk: stem (7×7 stride-2 convolution, optionally a max-pool), four stages of blocks.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    stem_conv: Conv2d<B>,
    stem_bn: BatchNorm<B>,
    /// `image.stem_max_pool` (no parameters).
    #[module(skip)]
    stem_max_pool: bool,
    blocks: Vec<Block<B>>,
}

impl<B: Backend> ResNet<B> {
    /// Builds the trunk described by `config`.
    pub fn new(config: &ImageConfig, device: &B::Device) -> Self {
        let width = config.base_width;
        let bottleneck = config.variant.bottleneck();
        let expansion = if bottleneck { 4 } else { 1 };
        let stem_conv = conv(3, width, 7, 2, device);
        let stem_bn = BatchNormConfig::new(width).init(device);
        let mut blocks = Vec::new();
        let mut in_channels = width;
        for (stage, &n_blocks) in config.variant.blocks().iter().enumerate() {
            let planes = width << stage;
            for index in 0..n_blocks {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                blocks.push(Block::new(in_channels, planes, expansion, stride, device));
                in_channels = planes * expansion;
            }
        }
        Self {
            stem_conv,
            stem_bn,
            stem_max_pool: config.stem_max_pool,
            blocks,
        }
    }

    /// Channels of the feature map (and of the pooled features).
    #[must_use]
    pub fn out_channels(config: &ImageConfig) -> usize {
        let expansion = if config.variant.bottleneck() { 4 } else { 1 };
        (config.base_width << 3) * expansion
    }

    /// The last stage's feature map `[batch, channels, h, w]` (what Grad-CAM looks at).
    pub fn feature_map(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = relu(self.stem_bn.forward(self.stem_conv.forward(images)));
        let mut x = if self.stem_max_pool {
            max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false)
        } else {
            x
        };
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }
}

/// Global average pooling: `[batch, channels, h, w]` to `[batch, channels]`.
pub fn global_average_pool<B: Backend>(feature_map: Tensor<B, 4>) -> Tensor<B, 2> {
    let [batch, channels, _, _] = feature_map.dims();
    feature_map.mean_dims(&[2, 3]).reshape([batch, channels])
}

impl<B: Backend> Block<B> {
    fn new(in_channels: usize, planes: usize, expansion: usize, stride: usize, device: &B::Device) -> Self {
        let out_channels = planes * expansion;
        let bn = |channels: usize| BatchNormConfig::new(channels).init(device);
        let (conv1, conv2, conv3) = if expansion == 1 {
            (
                conv(in_channels, planes, 3, stride, device),
                conv(planes, planes, 3, 1, device),
                None,
            )
        } else {
            (
                conv(in_channels, planes, 1, 1, device),
                conv(planes, planes, 3, stride, device),
                Some(conv(planes, out_channels, 1, 1, device)),
            )
        };
        let needs_projection = stride != 1 || in_channels != out_channels;
        Self {
            conv1,
            bn1: bn(planes),
            conv2,
            bn2: bn(planes),
            bn3: conv3.as_ref().map(|_| bn(out_channels)),
            conv3,
            downsample_conv: needs_projection.then(|| conv(in_channels, out_channels, 1, stride, device)),
            downsample_bn: needs_projection.then(|| bn(out_channels)),
        }
    }

    fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = relu(self.bn1.forward(self.conv1.forward(input.clone())));
        x = self.bn2.forward(self.conv2.forward(x));
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            x = bn3.forward(conv3.forward(relu(x)));
        }
        let shortcut = match (&self.downsample_conv, &self.downsample_bn) {
            (Some(conv), Some(bn)) => bn.forward(conv.forward(input)),
            _ => input,
        };
        relu(x + shortcut)
    }
}

/// A bias-free square convolution with "same"-style padding (`kernel / 2`).
fn conv<B: Backend>(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let pad = kernel / 2;
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device)
}
