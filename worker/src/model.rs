//! The model: a BERT-family sentence-embedding model loaded from a local directory
//! and run with candle, exactly as sentence-transformers runs it — tokenize, encode,
//! pool the token vectors (mean over the attention mask, or `[CLS]`), L2-normalize.
//!
//! A model directory holds `config.json` (a Hugging Face BERT config),
//! `model.safetensors` and `tokenizer.json`; the sentence-transformers files beside
//! them are read when present: `sentence_bert_config.json` (`max_seq_length`),
//! `1_Pooling/config.json` (pooling mode) and `modules.json` (whether a `Normalize`
//! module follows). Nothing is fetched from anywhere.
//!
//! Token counts are what the model processed: the tokenizer's ids of each input
//! including the special tokens it adds (`[CLS]` … `[SEP]` for BERT), never padding.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde_json::Value;
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {reason}")]
    Load { path: String, reason: String },
    /// The directory is not a model directory (what is missing, and how to get it).
    #[error("{0}")]
    Missing(String),
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("model: {0}")]
    Run(#[from] candle_core::Error),
    #[error("{0}")]
    Failed(String),
    /// The input is not something the model can embed (the client's fault).
    #[error("{0}")]
    Input(String),
}

/// How token vectors become one sentence vector (sentence-transformers' pooling modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the token vectors under the attention mask.
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// A CUDA GPU when this build has the `cuda` feature and one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    pub device: DeviceChoice,
    /// Inputs longer than the model's maximum are cut to it (as sentence-transformers
    /// does) instead of refused. Either way the count billed is what the model read.
    pub truncate: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            truncate: false,
        }
    }
}

/// A loaded sentence-embedding model and its tokenizer.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    pooling: Pooling,
    normalize: bool,
    max_tokens: usize,
    dimensions: usize,
    pad_id: u32,
    truncate: bool,
    dir: PathBuf,
}

/// An input after tokenization: what the model will read.
#[derive(Clone, Debug)]
pub struct Tokenized {
    pub ids: Vec<u32>,
}

impl Tokenized {
    /// Tokens the model processes for this input (special tokens included).
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
}

fn load_error(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| load_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| load_error(path, format!("not valid JSON: {e}")))
}

/// The files a model directory must hold.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Why `dir` is not a model directory, if it is not one.
pub fn missing_files(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} has no {} (a model directory holds {}; scripts/fetch-model puts all-MiniLM-L6-v2 in target/models/all-MiniLM-L6-v2)",
            dir.display(),
            missing.join(", "),
            REQUIRED_FILES.join(", ")
        )
    })
}

/// The device `choice` asks for (CUDA only in a `cuda` build with a driver).
pub(crate) fn pick_device(choice: DeviceChoice) -> Result<Device, ModelError> {
    let cuda = |e: candle_core::Error| ModelError::Load {
        path: "cuda:0".into(),
        reason: format!(
            "{e} (GPU support needs a build with `--features cuda` and an NVIDIA driver)"
        ),
    };
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => Device::new_cuda(0).map_err(cuda),
        DeviceChoice::Auto => Device::cuda_if_available(0).map_err(cuda),
    }
}

/// `config.json`: a Hugging Face BERT config.
fn read_config(dir: &Path) -> Result<Config, ModelError> {
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?;
    if let Some(kind) = config_json.get("model_type").and_then(Value::as_str) {
        if kind != "bert" {
            return Err(load_error(
                &config_path,
                format!("model_type {kind:?}: this worker runs BERT-family encoders (model_type \"bert\")"),
            ));
        }
    }
    serde_json::from_value(config_json)
        .map_err(|e| load_error(&config_path, format!("not a BERT config: {e}")))
}

/// `model.safetensors`, as a BERT model on `device`.
fn load_weights(dir: &Path, config: &Config, device: &Device) -> Result<BertModel, ModelError> {
    let weights_path = dir.join("model.safetensors");
    let weights = std::fs::read(&weights_path).map_err(|e| load_error(&weights_path, e))?;
    let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device)
        .map_err(|e| load_error(&weights_path, e))?;
    BertModel::load(vb, config).map_err(|e| load_error(&weights_path, e))
}

/// sentence-transformers' own settings, where the directory has them.
struct SentenceSettings {
    max_tokens: usize,
    pooling: Pooling,
    normalize: bool,
}

impl SentenceSettings {
    /// Reads them from `dir`; inputs are at most `max_positions` tokens whatever
    /// `max_seq_length` says.
    fn read(dir: &Path, max_positions: usize) -> Result<Self, ModelError> {
        Ok(Self {
            max_tokens: max_seq_length(dir)?.unwrap_or(512).min(max_positions),
            pooling: pooling(dir)?,
            normalize: normalizes(dir)?,
        })
    }
}

/// `sentence_bert_config.json`'s `max_seq_length`.
fn max_seq_length(dir: &Path) -> Result<Option<usize>, ModelError> {
    Ok(match dir.join("sentence_bert_config.json") {
        p if p.is_file() => read_json(&p)?
            .get("max_seq_length")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok()),
        _ => None,
    })
}

/// `1_Pooling/config.json`'s mode: mean (also without the file) or CLS.
fn pooling(dir: &Path) -> Result<Pooling, ModelError> {
    match dir.join("1_Pooling/config.json") {
        p if p.is_file() => {
            let pooling = read_json(&p)?;
            let on = |key: &str| pooling.get(key).and_then(Value::as_bool) == Some(true);
            if on("pooling_mode_mean_tokens") {
                Ok(Pooling::Mean)
            } else if on("pooling_mode_cls_token") {
                Ok(Pooling::Cls)
            } else {
                Err(load_error(
                    &p,
                    "only mean and CLS pooling are supported (pooling_mode_mean_tokens or pooling_mode_cls_token)",
                ))
            }
        }
        _ => Ok(Pooling::Mean),
    }
}

/// Whether `modules.json` ends the pipeline with a `Normalize` module.
fn normalizes(dir: &Path) -> Result<bool, ModelError> {
    Ok(match dir.join("modules.json") {
        p if p.is_file() => read_json(&p)?.as_array().is_some_and(|modules| {
            modules.iter().any(|m| {
                m.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("Normalize"))
            })
        }),
        // Without sentence-transformers' modules: normalized, as most are used.
        _ => true,
    })
}

/// `tokenizer.json`, set up to pad nothing and (with `truncate`) to cut inputs at
/// `max_tokens`.
fn load_tokenizer(dir: &Path, max_tokens: usize, truncate: bool) -> Result<Tokenizer, ModelError> {
    let tokenizer_path = dir.join("tokenizer.json");
    let mut tokenizer =
        Tokenizer::from_file(&tokenizer_path).map_err(|e| load_error(&tokenizer_path, e))?;
    // tokenizer.json files often carry padding and a truncation length of their
    // own (all-MiniLM-L6-v2's pads every input to 128): padding is done here per
    // batch and never counted; truncation, if any, is to the model's maximum.
    tokenizer.with_padding(None);
    let truncation = truncate.then_some(TruncationParams {
        direction: TruncationDirection::Right,
        max_length: max_tokens,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    });
    tokenizer
        .with_truncation(truncation)
        .map_err(|e| load_error(&tokenizer_path, e))?;
    Ok(tokenizer)
}

impl Embedder {
    /// Loads the model in `dir` (see the module docs for the files it reads).
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self, ModelError> {
        if let Some(reason) = missing_files(dir) {
            return Err(ModelError::Missing(reason));
        }
        let config = read_config(dir)?;
        let device = pick_device(options.device)?;
        let model = load_weights(dir, &config, &device)?;
        let settings = SentenceSettings::read(dir, config.max_position_embeddings)?;
        let tokenizer = load_tokenizer(dir, settings.max_tokens, options.truncate)?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .unwrap_or(u32::try_from(config.pad_token_id).unwrap_or(0));
        Ok(Self {
            model,
            tokenizer,
            device,
            pooling: settings.pooling,
            normalize: settings.normalize,
            max_tokens: settings.max_tokens,
            dimensions: config.hidden_size,
            pad_id,
            truncate: options.truncate,
            dir: dir.to_path_buf(),
        })
    }

    /// The model's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The longest input (in tokens, special tokens included) the model reads.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The length of every embedding.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// `cpu` or `cuda:N`.
    pub fn device_name(&self) -> String {
        match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".into(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    /// Tokenizes `texts`; an input that is empty, or longer than the model reads
    /// (unless truncating), is refused with its index.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Tokenized>, ModelError> {
        if let Some(i) = texts.iter().position(String::is_empty) {
            return Err(ModelError::Input(format!(
                "input[{i}] is empty: every input must be a non-empty string"
            )));
        }
        let encodings: Vec<Encoding> = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect(), true)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        encodings
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let ids = e.get_ids().to_vec();
                if ids.len() > self.max_tokens && !self.truncate {
                    return Err(ModelError::Input(format!(
                        "input[{i}] is {} tokens long; this model reads at most {} tokens per input (start the worker with --truncate to cut longer inputs)",
                        ids.len(),
                        self.max_tokens
                    )));
                }
                Ok(Tokenized { ids })
            })
            .collect()
    }

    /// Embeds tokenized inputs, `batch` at a time (inputs of similar length together,
    /// padded to the longest of their batch); returns one vector per input, in order.
    pub fn embed(&self, inputs: &[Tokenized], batch: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].ids.len());
        let mut out = vec![Vec::new(); inputs.len()];
        for chunk in order.chunks(batch.max(1)) {
            let group: Vec<&Tokenized> = chunk.iter().map(|&i| &inputs[i]).collect();
            for (&i, vector) in chunk.iter().zip(self.forward(&group)?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// One forward pass over inputs padded to the same length.
    fn forward(&self, inputs: &[&Tokenized]) -> Result<Vec<Vec<f32>>, ModelError> {
        let rows = inputs.len();
        let width = inputs.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        if rows == 0 || width == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for input in inputs {
            let n = input.ids.len();
            ids.extend_from_slice(&input.ids);
            ids.extend(std::iter::repeat_n(self.pad_id, width - n));
            mask.extend(std::iter::repeat_n(1u32, n));
            mask.extend(std::iter::repeat_n(0u32, width - n));
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
        let token_types = ids.zeros_like()?;
        // (rows, width, hidden)
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9, f64::from(f32::MAX))?;
                summed.broadcast_div(&counts)?
            }
        };
        let pooled = if self.normalize {
            // torch.nn.functional.normalize: v / max(‖v‖, 1e-12).
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::from(f32::MAX))?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}
