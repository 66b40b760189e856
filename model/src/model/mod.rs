//! The LNM model (burn; feature `model`): image branch (ResNet), report branch (TI-RADS field embeddings
//! and a hashed character n-gram text encoder), clinical branch, concatenation + MLP fusion, and three
//! heads (LNM logit, T over 7 categories, N over 3). Generic over the burn backend, and only here and
//! in [`crate::train`]: everything outside sees [`NamedTensors`] and plain [`PatientInputs`].

pub mod named;
pub mod resnet;

use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use fedlnm_shared::features::{
    N_CLINICAL, N_N, N_REPORT_NUMBERS, N_T, PatientInputs, STRUCTURED_FIELDS, n_finding_outputs,
    structured_vocabulary,
};
use fedlnm_shared::model_config::ModelConfig;
pub use named::{Anchor, from_named, pull_towards, to_named};
use resnet::{ResNet, global_average_pool};

/// The report branch: one embedding table for all TI-RADS fields (each field its own rows), a linear
/// map of the scaled diameter, and the text encoder (mean of hashed n-gram embeddings: an EmbeddingBag).
#[derive(Module, Debug)]
pub struct ReportBranch<B: Backend> {
    field_embedding: Embedding<B>,
    numbers: Linear<B>,
    text_embedding: Embedding<B>,
}

/// The whole model. Absent branches (by [`fedlnm_shared::model_config::Modality`]) have no parameters at all.
#[derive(Module, Debug)]
pub struct LnmModel<B: Backend> {
    image: Option<ResNet<B>>,
    report: Option<ReportBranch<B>>,
    clinical: Option<Linear<B>>,
    fusion: Linear<B>,
    dropout: Dropout,
    lnm_head: Linear<B>,
    t_head: Linear<B>,
    n_head: Linear<B>,
    /// Report supervision (training only): the report's image findings from the image features.
    findings_head: Option<Linear<B>>,
}

/// A batch of inputs on the device; tensors of absent branches are not built.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// `[batch, 3, size, size]`, normalised to roughly zero mean and unit spread.
    pub images: Option<Tensor<B, 4>>,
    /// `[batch, fields]` rows of the field embedding table.
    pub structured: Option<Tensor<B, 2, Int>>,
    /// `[batch, N_REPORT_NUMBERS]`.
    pub report_numbers: Option<Tensor<B, 2>>,
    /// `[batch, buckets]` EmbeddingBag weights (each row sums to 1).
    pub text: Option<Tensor<B, 2>>,
    /// `[batch, N_CLINICAL]`.
    pub clinical: Option<Tensor<B, 2>>,
}

/// The model's outputs for a batch.
#[derive(Debug, Clone)]
pub struct Outputs<B: Backend> {
    /// `[batch]` LNM logits.
    pub lnm: Tensor<B, 1>,
    /// `[batch, 7]` T logits.
    pub t: Tensor<B, 2>,
    /// `[batch, 3]` N logits.
    pub n: Tensor<B, 2>,
    /// `[batch, n_finding_outputs()]` report findings from the image alone (models with a findings
    /// head): each finding's category logits, then the scaled diameter.
    pub findings: Option<Tensor<B, 2>>,
}

impl<B: Backend> LnmModel<B> {
    /// A freshly initialised model (seed the backend first for reproducible weights).
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let mut fused = 0;
        let image_features = ResNet::<B>::out_channels(&config.image);
        let image = config.modality.uses_image().then(|| {
            fused += image_features;
            ResNet::new(&config.image, device)
        });
        let findings_head = (config.modality.uses_image() && config.report_supervision)
            .then(|| LinearConfig::new(image_features, n_finding_outputs()).init(device));
        let report = config.modality.uses_report().then(|| {
            let r = &config.report;
            fused += STRUCTURED_FIELDS.len() * r.field_dim + r.field_dim + r.text_dim;
            ReportBranch {
                field_embedding: EmbeddingConfig::new(structured_vocabulary(), r.field_dim).init(device),
                numbers: LinearConfig::new(N_REPORT_NUMBERS, r.field_dim).init(device),
                text_embedding: EmbeddingConfig::new(r.text_buckets, r.text_dim).init(device),
            }
        });
        let clinical = config.modality.uses_report().then(|| {
            fused += config.clinical_dim;
            LinearConfig::new(N_CLINICAL, config.clinical_dim).init(device)
        });
        let hidden = config.fusion_hidden;
        Self {
            image,
            report,
            clinical,
            fusion: LinearConfig::new(fused, hidden).init(device),
            dropout: DropoutConfig::new(config.dropout).init(),
            lnm_head: LinearConfig::new(hidden, 1).init(device),
            t_head: LinearConfig::new(hidden, N_T).init(device),
            n_head: LinearConfig::new(hidden, N_N).init(device),
            findings_head,
        }
    }

    /// The LNM head's weight (reading it back waits for pending device work: used to time steps).
    pub fn lnm_head_weight(&self) -> Tensor<B, 2> {
        self.lnm_head.weight.val()
    }

    /// The forward pass.
    pub fn forward(&self, batch: &Batch<B>) -> Outputs<B> {
        self.forward_with_feature_map(batch, false).0
    }

    /// The forward pass; with `cam`, the image branch's last feature map is made a gradient leaf and
    /// returned so that Grad-CAM can read its gradient (on an autodiff backend).
    pub fn forward_with_feature_map(
        &self,
        batch: &Batch<B>,
        cam: bool,
    ) -> (Outputs<B>, Option<Tensor<B, 4>>) {
        let mut parts = Vec::new();
        let mut feature_map = None;
        let mut findings = None;
        if let (Some(image), Some(images)) = (&self.image, &batch.images) {
            let mut map = image.feature_map(images.clone());
            if cam {
                map = map.detach().require_grad();
                feature_map = Some(map.clone());
            }
            let pooled = global_average_pool(map);
            findings = self
                .findings_head
                .as_ref()
                .map(|head| head.forward(pooled.clone()));
            parts.push(pooled);
        }
        if let (Some(report), Some(structured), Some(numbers), Some(text)) = (
            &self.report,
            &batch.structured,
            &batch.report_numbers,
            &batch.text,
        ) {
            let [n_batch, n_fields] = structured.dims();
            let fields = report.field_embedding.forward(structured.clone());
            let width = fields.dims()[2];
            parts.push(fields.reshape([n_batch, n_fields * width]));
            parts.push(report.numbers.forward(numbers.clone()));
            parts.push(text.clone().matmul(report.text_embedding.weight.val()));
        }
        if let (Some(clinical), Some(values)) = (&self.clinical, &batch.clinical) {
            parts.push(relu(clinical.forward(values.clone())));
        }
        let hidden = self
            .dropout
            .forward(relu(self.fusion.forward(Tensor::cat(parts, 1))));
        let lnm = self.lnm_head.forward(hidden.clone());
        let n_batch = lnm.dims()[0];
        let outputs = Outputs {
            lnm: lnm.reshape([n_batch]),
            t: self.t_head.forward(hidden.clone()),
            n: self.n_head.forward(hidden),
            findings,
        };
        (outputs, feature_map)
    }
}

impl<B: Backend> Batch<B> {
    /// Puts the inputs of these patients on the device, building only what `config`'s branches use.
    /// `images`, when given, replaces each patient's image (augmented copies, same order and size).
    pub fn new(
        config: &ModelConfig,
        patients: &[&PatientInputs],
        images: Option<&[Vec<f32>]>,
        device: &B::Device,
    ) -> Self {
        let n = patients.len();
        let images = config.modality.uses_image().then(|| {
            let size = config.image.input_size as usize;
            let mut values = Vec::with_capacity(n * 3 * size * size);
            for (index, patient) in patients.iter().enumerate() {
                let image = images.map_or(&patient.image, |replaced| &replaced[index]);
                values.extend(image.iter().map(|v| (v - 0.5) / 0.25));
            }
            Tensor::from_data(TensorData::new(values, [n, 3, size, size]), device)
        });
        let uses_report = config.modality.uses_report();
        let structured = uses_report.then(|| {
            let values: Vec<i32> = patients
                .iter()
                // Rows of a table of a few dozen entries: fit in i32.
                .flat_map(|p| p.structured.iter().map(|&row| i32::try_from(row).unwrap_or(0)))
                .collect();
            Tensor::from_data(TensorData::new(values, [n, STRUCTURED_FIELDS.len()]), device)
        });
        let report_numbers = uses_report.then(|| {
            let values: Vec<f32> = patients.iter().flat_map(|p| p.report_numbers).collect();
            Tensor::from_data(TensorData::new(values, [n, N_REPORT_NUMBERS]), device)
        });
        let text = uses_report.then(|| {
            let buckets = config.report.text_buckets;
            let mut values = vec![0.0_f32; n * buckets];
            for (index, patient) in patients.iter().enumerate() {
                // Buckets come from `hash_text` with this config's table size; others are ignored.
                for &(bucket, weight) in patient
                    .text
                    .iter()
                    .filter(|(bucket, _)| (*bucket as usize) < buckets)
                {
                    values[index * buckets + bucket as usize] += weight;
                }
            }
            Tensor::from_data(TensorData::new(values, [n, buckets]), device)
        });
        let clinical = uses_report.then(|| {
            let values: Vec<f32> = patients.iter().flat_map(|p| p.clinical).collect();
            Tensor::from_data(TensorData::new(values, [n, N_CLINICAL]), device)
        });
        Self {
            images,
            structured,
            report_numbers,
            text,
            clinical,
        }
    }
}
