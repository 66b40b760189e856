//! The model's architecture ([`ModelConfig`]) and training plan ([`TrainPlan`]) as typed TOML, validated
//! once at load, and the architecture's stable SHA-256 digest that sites compare before a federation.
//!
//! Burn-free: the aggregator reads and digests configs without building the model.

pub use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Which branches the model has (the study compares the three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Modality {
    /// Image, report (structured fields and free text) and clinical branches.
    #[default]
    Multimodal,
    /// The ultrasound image only.
    ImageOnly,
    /// Everything known before surgery except the image: the report and the clinical fields.
    ReportOnly,
}

impl Modality {
    /// Whether the image branch exists.
    #[must_use]
    pub fn uses_image(self) -> bool {
        matches!(self, Self::Multimodal | Self::ImageOnly)
    }

    /// Whether the report and clinical branches exist.
    #[must_use]
    pub fn uses_report(self) -> bool {
        matches!(self, Self::Multimodal | Self::ReportOnly)
    }

    /// The name in configs and on the command line (its serde name).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Multimodal => "multimodal",
            Self::ImageOnly => "image-only",
            Self::ReportOnly => "report-only",
        }
    }
}

/// The ResNet layout of the image branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResNetVariant {
    /// One basic block per stage: trains on 2 CPU cores in tests.
    Tiny,
    Resnet18,
    Resnet34,
    /// Bottleneck blocks (expansion 4).
    Resnet50,
    Resnet101,
}

impl ResNetVariant {
    /// Blocks per stage (4 stages).
    #[must_use]
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Self::Tiny => [1, 1, 1, 1],
            Self::Resnet18 => [2, 2, 2, 2],
            Self::Resnet34 | Self::Resnet50 => [3, 4, 6, 3],
            Self::Resnet101 => [3, 4, 23, 3],
        }
    }

    /// Whether the stages use bottleneck blocks.
    #[must_use]
    pub fn bottleneck(self) -> bool {
        matches!(self, Self::Resnet50 | Self::Resnet101)
    }
}

/// The image branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub variant: ResNetVariant,
    /// Channels of the first stage (64 in the standard ResNets); doubled at each later stage.
    pub base_width: usize,
    /// Side of the square input in pixels (64 in tests, 224 for real runs).
    pub input_size: u32,
    /// The stem's 3×3 max-pool (stride 2), as in the standard ResNets. Without it the four stages
    /// see twice the resolution (four times the positions): at a 64-px input the first stage reads
    /// the nodule at 32 × 32 instead of 16 × 16, for about a third more time per epoch. On by default;
    /// left out of the canonical JSON when on, so older configs keep their digest.
    #[serde(
        default = "stem_max_pool_default",
        skip_serializing_if = "is_stem_max_pool_default"
    )]
    pub stem_max_pool: bool,
}

fn stem_max_pool_default() -> bool {
    true
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_stem_max_pool_default(on: &bool) -> bool {
    *on
}

/// The report branch: TI-RADS field embeddings and the hashed character n-gram text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Embedding width of each structured field.
    pub field_dim: usize,
    /// Hash buckets of the text encoder (sites share no vocabulary: a bucket is a hash, not a word).
    pub text_buckets: usize,
    /// Embedding width of the text encoder.
    pub text_dim: usize,
    /// Longest character n-gram (1..=max) hashed from the free text.
    pub max_ngram: usize,
}

/// The whole architecture. Everything here changes the weights' layout or meaning, so it is digested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub modality: Modality,
    pub image: ImageConfig,
    pub report: ReportConfig,
    /// Width of the clinical branch's embedding.
    pub clinical_dim: usize,
    /// Width of the fusion MLP's hidden layer.
    pub fusion_hidden: usize,
    /// Dropout before the heads (training only).
    pub dropout: f64,
    /// Report supervision of the image branch: a small extra head on the image features learns to
    /// predict the report's image findings (echogenicity, shape, margin, echogenic foci, capsule
    /// contact, vascularity, diameter) during training, weighted by `train.report_supervision_weight`.
    /// The radiologist's reading is dense, low-noise supervision of what the image shows, where the
    /// LNM label is one noisy bit per patient. Predictions never use the head. Off by default; left
    /// out of the canonical JSON when off, so older configs keep their digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_supervision: bool,
}

impl ModelConfig {
    /// A model small enough to train in seconds on 2 CPU cores (tests): tiny ResNet, 32 px.
    #[must_use]
    pub fn tiny(modality: Modality) -> Self {
        Self {
            modality,
            image: ImageConfig {
                variant: ResNetVariant::Tiny,
                base_width: 8,
                input_size: 32,
                stem_max_pool: true,
            },
            report: ReportConfig {
                field_dim: 4,
                text_buckets: 512,
                text_dim: 8,
                max_ngram: 3,
            },
            clinical_dim: 4,
            fusion_hidden: 32,
            dropout: 0.0,
            report_supervision: false,
        }
    }

    /// The study's default: ResNet-18 at 224 px.
    #[must_use]
    pub fn resnet18() -> Self {
        Self {
            modality: Modality::Multimodal,
            image: ImageConfig {
                variant: ResNetVariant::Resnet18,
                base_width: 64,
                input_size: 224,
                stem_max_pool: true,
            },
            report: ReportConfig {
                field_dim: 8,
                text_buckets: 16_384,
                text_dim: 32,
                max_ngram: 3,
            },
            clinical_dim: 8,
            fusion_hidden: 128,
            dropout: 0.2,
            report_supervision: false,
        }
    }

    /// Checks every value once; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &'static str, value: usize| {
            if value == 0 {
                Err(ConfigError::invalid(key, "must be at least 1".to_owned()))
            } else {
                Ok(())
            }
        };
        // Upper bounds too: a configuration (one read from a checkpoint included, whose digest vouches
        // only for itself) must not be able to ask for more memory than any real model needs.
        for (key, value, max) in [
            ("image.base_width", self.image.base_width, MAX_BASE_WIDTH),
            ("report.field_dim", self.report.field_dim, MAX_EMBEDDING_DIM),
            ("report.text_buckets", self.report.text_buckets, MAX_TEXT_BUCKETS),
            ("report.text_dim", self.report.text_dim, MAX_EMBEDDING_DIM),
            ("report.max_ngram", self.report.max_ngram, MAX_NGRAM),
            ("clinical_dim", self.clinical_dim, MAX_EMBEDDING_DIM),
            ("fusion_hidden", self.fusion_hidden, MAX_FUSION_HIDDEN),
        ] {
            positive(key, value)?;
            if value > max {
                return Err(ConfigError::invalid(
                    key,
                    format!("{value} is more than the largest allowed, {max}"),
                ));
            }
        }
        if self.image.input_size > MAX_INPUT_SIZE {
            return Err(ConfigError::invalid(
                "image.input_size",
                format!(
                    "{} pixels is more than the largest allowed, {MAX_INPUT_SIZE}",
                    self.image.input_size
                ),
            ));
        }
        if self.image.input_size < 32 {
            return Err(ConfigError::invalid(
                "image.input_size",
                "must be at least 32 pixels",
            ));
        }
        if self.report_supervision && !self.modality.uses_image() {
            return Err(ConfigError::invalid(
                "report_supervision",
                "needs the image branch (modality \"multimodal\" or \"image-only\")",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::invalid("dropout", "must be in [0, 1)"));
        }
        Ok(())
    }

    /// The SHA-256 (hex) of the canonical serialization: a version tag and the config as compact JSON
    /// with fields in declaration order ([`Self::canonical_json`]). Equal digests mean the same
    /// architecture.
    #[must_use]
    pub fn digest(&self) -> String {
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"fedlnm-model-config-v1\n");
        hasher.update(self.canonical_json().as_bytes());
        crate::weights::hex(&hasher.finalize())
    }

    /// The canonical JSON that [`Self::digest`] hashes (stored in checkpoints).
    #[must_use]
    #[allow(
        clippy::expect_used,
        reason = "a ModelConfig is numbers, strings and unit enums without maps: serde_json cannot fail on \
                  it, and were it ever to, a panic is right where a default would give a wrong digest"
    )]
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a ModelConfig always serializes to JSON")
    }
}

/// The largest architecture values a configuration may ask for (a ResNet at 16 times the standard
/// width is about 1.6 GB of weights; 1024-pixel inputs; a 256k-bucket text encoder).
pub const MAX_BASE_WIDTH: usize = 256;
pub const MAX_INPUT_SIZE: u32 = 1024;
pub const MAX_TEXT_BUCKETS: usize = 1 << 18;
pub const MAX_EMBEDDING_DIM: usize = 512;
pub const MAX_NGRAM: usize = 8;
pub const MAX_FUSION_HIDDEN: usize = 4096;

/// Checkpoint metadata keys: the model config (canonical JSON) and its digest travel with the weights.
pub const META_CONFIG: &str = "fedlnm.model_config";
pub const META_DIGEST: &str = "fedlnm.config_digest";

impl ModelConfig {
    /// The safetensors metadata of a checkpoint of this model.
    #[must_use]
    pub fn checkpoint_metadata(&self) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::from([
            (META_CONFIG.to_owned(), self.canonical_json()),
            (META_DIGEST.to_owned(), self.digest()),
        ])
    }

    /// The config stored in a checkpoint's metadata, checked: valid, and its digest the stored one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the metadata key at fault.
    pub fn from_checkpoint_metadata(
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let json = metadata
            .get(META_CONFIG)
            .ok_or_else(|| ConfigError::invalid(META_CONFIG, "absent: not a fedlnm checkpoint".to_owned()))?;
        let config: Self = serde_json::from_str(json)
            .map_err(|e| ConfigError::invalid(META_CONFIG, format!("unreadable model config: {e}")))?;
        config.validate()?;
        if metadata.get(META_DIGEST) != Some(&config.digest()) {
            return Err(ConfigError::invalid(
                META_DIGEST,
                "does not match the stored model config".to_owned(),
            ));
        }
        Ok(config)
    }
}

/// Data augmentation suited to ultrasound (applied to training images only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip (left and right lobes are mirror images).
    pub flip_probability: f64,
    /// Largest shift, as a fraction of the side.
    pub max_shift: f64,
    /// Largest relative zoom in or out.
    pub max_scale: f64,
    /// Largest relative change of overall gain (brightness).
    pub max_gain: f64,
    /// Standard deviation of the multiplicative speckle noise.
    pub speckle_sigma: f64,
}

impl AugmentConfig {
    /// No augmentation.
    pub const NONE: Self = Self {
        flip_probability: 0.0,
        max_shift: 0.0,
        max_scale: 0.0,
        max_gain: 0.0,
        speckle_sigma: 0.0,
    };
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            flip_probability: 0.5,
            max_shift: 0.06,
            max_scale: 0.08,
            max_gain: 0.15,
            speckle_sigma: 0.08,
        }
    }
}

/// How to train: optimiser, schedule, loss weights, early stopping, seed. Not part of the digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainPlan {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Linear warm-up over this fraction of all steps, then cosine decay to `min_lr_fraction × peak`.
    pub warmup_fraction: f64,
    pub min_lr_fraction: f64,
    /// Weights of the multi-task loss: LNM binary cross-entropy, T and N cross-entropies.
    pub lnm_weight: f64,
    pub t_weight: f64,
    pub n_weight: f64,
    /// Weight of the report-supervision loss (mean over the findings; used when the model has
    /// `report_supervision`).
    pub report_supervision_weight: f64,
    /// Weight LNM-positive patients by negatives/positives of the training set.
    pub balance_lnm: bool,
    /// Stop after this many epochs without a better validation AUC (0: never stop early).
    pub patience: usize,
    pub seed: u64,
    pub augment: AugmentConfig,
    /// FedProx proximal coefficient μ (0: plain FedAvg local training). After each optimiser step the
    /// weights are pulled towards the round's global model: w ← w − lr·μ·(w − w_global), the
    /// decoupled form of the proximal term μ/2·‖w − w_global‖² (as AdamW decouples weight decay).
    pub proximal_mu: f64,
    /// Weight averaging (Polyak): the weights evaluated, selected and returned are an exponential
    /// moving average of the weights after each optimiser step, with this decay (0: off, the last
    /// step's weights). The decay ramps up as (1 + t)/(10 + t) over the first steps, so that the
    /// average does not stay near the initial weights.
    pub ema_decay: f64,
}

impl Default for TrainPlan {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 16,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            warmup_fraction: 0.05,
            min_lr_fraction: 0.01,
            lnm_weight: 1.0,
            t_weight: 0.5,
            n_weight: 0.5,
            report_supervision_weight: 0.5,
            balance_lnm: true,
            patience: 8,
            seed: 42,
            augment: AugmentConfig::default(),
            proximal_mu: 0.0,
            ema_decay: 0.0,
        }
    }
}

impl TrainPlan {
    /// Checks every value once; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: &str| Err(ConfigError::invalid(key, problem.to_owned()));
        if self.epochs == 0 {
            return invalid("train.epochs", "must be at least 1");
        }
        if self.batch_size < 2 {
            return invalid("train.batch_size", "must be at least 2 (batch normalisation)");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return invalid("train.learning_rate", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return invalid("train.warmup_fraction", "must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.min_lr_fraction) {
            return invalid("train.min_lr_fraction", "must be in [0, 1]");
        }
        if !(self.report_supervision_weight >= 0.0 && self.report_supervision_weight.is_finite()) {
            return invalid("train.report_supervision_weight", "must be a number >= 0");
        }
        if !(self.proximal_mu >= 0.0 && self.proximal_mu.is_finite()) {
            return invalid("train.proximal_mu", "must be a number >= 0");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return invalid("train.ema_decay", "must be in [0, 1) (0: no weight averaging)");
        }
        Ok(())
    }

    /// The weight of the running average after optimiser step `step` (0-based) of weight averaging
    /// (see [`Self::ema_decay`]): the average becomes `d · average + (1 − d) · weights`.
    #[must_use]
    pub fn ema_decay_at(&self, step: usize) -> f64 {
        let t = step as f64;
        self.ema_decay.min((1.0 + t) / (10.0 + t))
    }

    /// Round `round`'s plan (1-based, of `rounds`) when one cosine decay runs across the study's
    /// rounds ([`crate::config::LearningRateSchedule::AcrossRounds`]) instead of afresh in every
    /// round: with c(x) = m + (1 − m)·½(1 + cos πx) and m = `min_lr_fraction`, round r's local
    /// training decays from `learning_rate`·c((r − 1)/R) to `learning_rate`·c(r/R), so that each
    /// round starts where the last one ended and the last ends at the floor, as a centralised
    /// training's single cosine does over its epochs. The warm-up stays in round 1 only.
    #[must_use]
    pub fn for_round(&self, round: u64, rounds: u64) -> Self {
        let rounds = rounds.max(1) as f64;
        let start = (round.max(1) - 1) as f64 / rounds;
        let end = (start + 1.0 / rounds).min(1.0);
        let m = self.min_lr_fraction;
        let c = |x: f64| m + (1.0 - m) * 0.5 * (1.0 + (std::f64::consts::PI * x.min(1.0)).cos());
        let (from, to) = (c(start), c(end));
        Self {
            learning_rate: self.learning_rate * from,
            // c is positive and falls from 1 to m, so the ratio is in [m, 1] (1 when m = 1).
            min_lr_fraction: if from > 0.0 { (to / from).min(1.0) } else { 1.0 },
            warmup_fraction: if round <= 1 { self.warmup_fraction } else { 0.0 },
            ..self.clone()
        }
    }

    /// The learning rate at `step` of `total_steps`: linear warm-up, then cosine decay.
    #[must_use]
    pub fn learning_rate_at(&self, step: usize, total_steps: usize) -> f64 {
        let total = total_steps.max(1) as f64;
        let warmup = (self.warmup_fraction * total).ceil().max(1.0);
        let step = step as f64;
        if step < warmup {
            return self.learning_rate * (step + 1.0) / warmup;
        }
        let progress = ((step - warmup) / (total - warmup).max(1.0)).clamp(0.0, 1.0);
        let floor = self.learning_rate * self.min_lr_fraction;
        floor + (self.learning_rate - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The file `model.toml`: `[model]` (digested) and `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainPlan,
}

impl ConfigFile {
    /// Reads and validates a TOML config file.
    pub fn read(file: &std::path::Path) -> Result<Self, ConfigError> {
        let config: Self = crate::config::read_toml(file)?;
        config.model.validate().map_err(|e| e.in_file(file))?;
        config.train.validate().map_err(|e| e.in_file(file))?;
        Ok(config)
    }

    /// The TOML text of this config.
    #[must_use]
    pub fn to_toml(&self) -> String {
        // A struct of numbers, strings and enums always serializes to TOML.
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_across_rounds_is_one_continuous_cosine() {
        let plan = TrainPlan {
            epochs: 2,
            warmup_fraction: 0.1,
            ..TrainPlan::default()
        };
        let rounds = 10;
        let steps = 100;
        // Each round's first step's rate and its rate at the end of its steps (the round's end).
        let ends: Vec<(f64, f64)> = (1..=rounds)
            .map(|round| {
                let p = plan.for_round(round, rounds);
                p.validate().unwrap();
                (p.learning_rate_at(0, steps), p.learning_rate_at(steps, steps))
            })
            .collect();
        // Round 1 warms up to the peak as the plan does; the last round ends at the plan's floor.
        assert_eq!(ends[0].0, plan.learning_rate_at(0, steps));
        assert_eq!(plan.for_round(1, rounds).learning_rate, plan.learning_rate);
        let floor = plan.learning_rate * plan.min_lr_fraction;
        assert!((ends[9].1 - floor).abs() < 1e-12, "{ends:?}");
        for pair in ends.windows(2) {
            // Round r + 1 starts where round r ended, and the rate only falls.
            assert!((pair[1].0 - pair[0].1).abs() < 1e-12, "{ends:?}");
            assert!(pair[1].1 < pair[0].1, "{ends:?}");
        }
        // Halfway through the study, the rate is halfway between the peak and the floor.
        let halfway = plan.for_round(6, rounds).learning_rate;
        assert!((halfway - (plan.learning_rate + floor) / 2.0).abs() < 1e-12);
        // Only round 1 warms up; everything else is the plan's.
        let later = plan.for_round(2, rounds);
        assert_eq!(later.warmup_fraction, 0.0);
        assert_eq!(
            (later.epochs, later.batch_size, later.seed),
            (plan.epochs, plan.batch_size, plan.seed)
        );
        // A floor of the peak itself (min_lr_fraction 1) keeps the rate constant.
        let flat = TrainPlan {
            min_lr_fraction: 1.0,
            ..plan.clone()
        };
        assert_eq!(flat.for_round(7, rounds).learning_rate, flat.learning_rate);
        assert_eq!(flat.for_round(7, rounds).min_lr_fraction, 1.0);
    }

    #[test]
    fn digest_is_stable_and_changes_with_the_architecture() {
        let base = ModelConfig::tiny(Modality::Multimodal);
        assert_eq!(base.digest(), ModelConfig::tiny(Modality::Multimodal).digest());
        assert_eq!(base.digest().len(), 64);
        let mut changes: Vec<ModelConfig> = Vec::new();
        let mut c = base.clone();
        c.image.variant = ResNetVariant::Resnet18;
        changes.push(c);
        let mut c = base.clone();
        c.image.base_width = 16;
        changes.push(c);
        let mut c = base.clone();
        c.report.text_buckets = 1024;
        changes.push(c);
        changes.push(ModelConfig::tiny(Modality::ImageOnly));
        let mut c = base.clone();
        c.image.input_size = 64;
        changes.push(c);
        let mut c = base.clone();
        c.report_supervision = true;
        changes.push(c);
        let mut c = base.clone();
        c.image.stem_max_pool = false;
        changes.push(c);
        for changed in &changes {
            assert_ne!(changed.digest(), base.digest(), "{changed:?}");
        }
        // Off, report supervision is left out of the canonical JSON: older checkpoints keep their digest.
        assert!(!base.canonical_json().contains("report_supervision"));
        // So is the stem's max-pool when on (the standard ResNet), and a file without the key has it.
        assert!(!base.canonical_json().contains("stem_max_pool"));
        let without_key = "variant = \"tiny\"\nbase_width = 8\ninput_size = 32\n";
        let image: ImageConfig = toml::from_str(without_key).unwrap();
        assert_eq!(image, base.image);
        // A TOML round trip gives the same digest (the digest does not depend on the file's layout).
        let file = ConfigFile {
            model: base.clone(),
            train: TrainPlan::default(),
        };
        let back: ConfigFile = toml::from_str(&file.to_toml()).unwrap();
        assert_eq!(back.model.digest(), base.digest());
    }

    #[test]
    fn modality_names_are_the_serde_names() {
        for modality in [Modality::Multimodal, Modality::ImageOnly, Modality::ReportOnly] {
            assert_eq!(serde_json::to_value(modality).unwrap(), modality.name());
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut c = ModelConfig::tiny(Modality::Multimodal);
        c.report.text_buckets = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("report.text_buckets")
        );
        let plan = TrainPlan {
            batch_size: 1,
            ..TrainPlan::default()
        };
        assert!(
            plan.validate()
                .unwrap_err()
                .to_string()
                .contains("train.batch_size")
        );
        let parsed: Result<ConfigFile, _> = toml::from_str("[model]\nmodality = \"video\"\n");
        assert!(parsed.is_err());
    }

    #[test]
    fn example_config_files_parse_and_match_the_presets() {
        let tiny: ConfigFile = toml::from_str(include_str!("../../configs/model-tiny.toml")).unwrap();
        let resnet18: ConfigFile = toml::from_str(include_str!("../../configs/model-resnet18.toml")).unwrap();
        for config in [&tiny, &resnet18] {
            config.model.validate().unwrap();
            config.train.validate().unwrap();
        }
        assert_eq!(tiny.model, ModelConfig::tiny(Modality::Multimodal));
        assert_eq!(resnet18.model, ModelConfig::resnet18());
        assert_eq!(resnet18.train, TrainPlan::default());
    }

    #[test]
    fn weight_averaging_ramps_up_to_its_decay_and_is_validated() {
        let plan = TrainPlan {
            ema_decay: 0.99,
            ..TrainPlan::default()
        };
        assert!((plan.ema_decay_at(0) - 0.1).abs() < 1e-12);
        assert!((plan.ema_decay_at(90) - 0.91).abs() < 1e-12);
        assert!((plan.ema_decay_at(100_000) - 0.99).abs() < 1e-12);
        let decays: Vec<f64> = (0..2000).map(|s| plan.ema_decay_at(s)).collect();
        assert!(decays.windows(2).all(|w| w[1] >= w[0]));
        plan.validate().unwrap();
        for bad in [1.0, -0.1, f64::NAN] {
            let error = TrainPlan {
                ema_decay: bad,
                ..TrainPlan::default()
            }
            .validate()
            .unwrap_err();
            assert!(error.to_string().contains("train.ema_decay"), "{error}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let plan = TrainPlan {
            learning_rate: 1.0,
            warmup_fraction: 0.1,
            min_lr_fraction: 0.0,
            ..TrainPlan::default()
        };
        let lrs: Vec<f64> = (0..100).map(|s| plan.learning_rate_at(s, 100)).collect();
        assert!((lrs[9] - 1.0).abs() < 1e-12);
        assert!(lrs[0] < lrs[5] && lrs[5] < lrs[9]);
        assert!(lrs[10..].windows(2).all(|w| w[1] <= w[0]));
        assert!(lrs[99] < 1e-3);
    }
}
