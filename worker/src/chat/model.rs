//! A GGUF llama-family chat model: weights (see [`super::llama`]), the tokenizer
//! and chat template from the file's metadata, and generation — one sequence at a
//! time per [`Sequence`], each with its own KV cache over shared weights.
//!
//! Generation follows llama.cpp as its OpenAI servers drive it (llama-cpp-python's
//! `create_completion`): the prompt is the rendered template's tokens (special tokens
//! matched, no BOS added: the template writes its own); an end-of-generation token
//! ends with `stop` and is not counted; every other token is counted; a stop string
//! ends with `stop` once the text holds it (the text is cut before it, the token that
//! completed it counted); `max_tokens` tokens end with `length`. Greedy (argmax,
//! first on ties) at temperature 0.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use rand::{Rng, SeedableRng};

use super::llama::{KvCache, Llama, MAX_SEQ_LEN};
use super::template::ChatTemplate;
use super::tokenizer::GgufTokenizer;
use crate::model::ModelError;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus: the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Seeds the sampler (random when absent).
    pub seed: Option<u64>,
    /// OpenAI's penalties, over the tokens generated so far.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// llama.cpp's / vLLM's multiplicative penalty over the last 64 generated tokens
    /// (1 = none).
    pub repeat_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_penalty: 1.0,
        }
    }
}

/// llama.cpp's penalty window (`last_n_tokens_size`).
const PENALTY_WINDOW: usize = 64;

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// A loaded chat model.
pub struct ChatModel {
    weights: Llama,
    tokenizer: GgufTokenizer,
    template: Option<ChatTemplate>,
    context: usize,
    path: PathBuf,
    architecture: String,
}

fn load_error(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Why `path` is not a GGUF chat model on disk, if it is not.
pub fn missing_gguf(path: &Path) -> Option<String> {
    (!path.is_file()).then(|| {
        format!(
            "{} is not a file (a chat model is one GGUF file; scripts/fetch-model puts SmolLM2-135M-Instruct in {})",
            path.display(),
            crate::DEFAULT_CHAT_MODEL
        )
    })
}

impl ChatModel {
    /// Loads a GGUF llama-family model; `context` caps prompt + completion tokens
    /// (at most the model's trained context and candle's 4,096 positions).
    pub fn load(path: &Path, device: &Device, context: Option<usize>) -> Result<Self, ModelError> {
        if let Some(reason) = missing_gguf(path) {
            return Err(ModelError::Missing(reason));
        }
        let mut file = File::open(path).map_err(|e| load_error(path, e))?;
        let gguf = gguf_file::Content::read(&mut file)
            .map_err(|e| load_error(path, format!("not a GGUF file: {e}")))?;
        let metadata = &gguf.metadata;
        let architecture = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if architecture != "llama" {
            return Err(load_error(
                path,
                format!("general.architecture {architecture:?}: this worker runs llama-family GGUF models (\"llama\": Llama, SmolLM, Mistral-style)"),
            ));
        }
        let trained = metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| n as usize);
        let limit = trained.min(MAX_SEQ_LEN);
        let context = context.unwrap_or(limit).min(limit);
        let tokenizer = GgufTokenizer::from_metadata(metadata).map_err(|e| load_error(path, e))?;
        let token_text = |id: Option<u32>| {
            id.and_then(|t| tokenizer.text(t))
                .unwrap_or_default()
                .to_string()
        };
        let template = match metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
        {
            Some(source) => Some(
                ChatTemplate::new(
                    source,
                    &token_text(tokenizer.bos()),
                    &token_text(tokenizer.eos()),
                )
                .map_err(|e| load_error(path, e))?,
            ),
            None => None,
        };
        let weights = Llama::from_gguf(&gguf, &mut file, device)
            .map_err(|e| load_error(path, format!("cannot load the weights: {e}")))?;
        Ok(Self {
            weights,
            tokenizer,
            template,
            context,
            path: path.to_path_buf(),
            architecture,
        })
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The chat template, when the file has one (`/v1/chat/completions` needs it).
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The most tokens a sequence holds (prompt + completion).
    pub fn context(&self) -> usize {
        self.context
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The text of the EOS token, which llama.cpp's chat handler adds to the stop strings.
    pub fn eos_text(&self) -> Option<&str> {
        self.tokenizer.eos().and_then(|t| self.tokenizer.text(t))
    }

    /// A new sequence for `prompt` (its own KV cache; the weights are shared).
    pub fn start(&self, prompt: Vec<u32>, limits: Limits, sampling: &Sampling) -> Sequence {
        let seed = sampling.seed.unwrap_or_else(rand::random);
        Sequence {
            cache: KvCache::default(),
            prompt,
            completion: Vec::new(),
            text: Vec::new(),
            emitted: 0,
            position: 0,
            next_input: None,
            finished: None,
            stop_at: None,
            limits,
            sampling: sampling.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// Runs the model over `sequence`'s next input (the whole prompt first, then its
    /// last token) and takes one token. Returns the text that may be sent now.
    pub fn step(&self, sequence: &mut Sequence) -> Result<Vec<u8>, ModelError> {
        if sequence.finished.is_some() {
            return Ok(Vec::new());
        }
        let input: Vec<u32> = match sequence.next_input {
            None => sequence.prompt.clone(),
            Some(token) => vec![token],
        };
        let logits = self
            .weights
            .forward(&mut sequence.cache, &input, sequence.position)?;
        sequence.position += input.len();
        let mut logits: Vec<f32> = logits.to_vec1()?;
        let token = sequence.choose(&mut logits);
        Ok(sequence.take(token, &self.tokenizer, self.context))
    }
}

/// Where a sequence must end besides end-of-generation tokens.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

/// One request's generation state.
pub struct Sequence {
    cache: KvCache,
    prompt: Vec<u32>,
    completion: Vec<u32>,
    /// The completion's bytes so far.
    text: Vec<u8>,
    /// Bytes already handed out.
    emitted: usize,
    position: usize,
    next_input: Option<u32>,
    finished: Option<Finish>,
    /// Where a stop string starts in `text`.
    stop_at: Option<usize>,
    limits: Limits,
    sampling: Sampling,
    rng: rand::rngs::StdRng,
}

/// Bytes at the end of `text` that start a UTF-8 character not yet complete.
fn incomplete_utf8_tail(text: &[u8]) -> usize {
    for back in 1..=text.len().min(3) {
        let byte = text[text.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let needed = match byte {
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            b if b >= 0xC0 => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Sequence {
    /// Prompt tokens (what `usage.prompt_tokens` reports).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }

    /// Tokens generated and counted (what `usage.completion_tokens` reports).
    pub fn completion_tokens(&self) -> usize {
        self.completion.len()
    }

    pub fn finished(&self) -> Option<Finish> {
        self.finished
    }

    /// Whether the prompt has been read (the first token exists).
    pub fn started(&self) -> bool {
        self.position > 0
    }

    /// The completion's text: up to a stop string, without a trailing incomplete
    /// character.
    pub fn text(&self) -> String {
        let end = self.stop_at.unwrap_or(self.text.len());
        String::from_utf8_lossy(&self.text[..end]).into_owned()
    }

    /// Applies the penalties and picks a token from `logits`.
    fn choose(&mut self, logits: &mut [f32]) -> u32 {
        let s = &self.sampling;
        #[allow(clippy::float_cmp)] // exact: the defaults mean no penalty
        let penalized =
            s.repeat_penalty != 1.0 || s.frequency_penalty != 0.0 || s.presence_penalty != 0.0;
        if penalized {
            // llama.cpp's penalties sampler over the last 64 generated tokens.
            let window = &self.completion[self.completion.len().saturating_sub(PENALTY_WINDOW)..];
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in window {
                *counts.entry(t).or_default() += 1;
            }
            for (&token, &count) in &counts {
                if let Some(logit) = logits.get_mut(token as usize) {
                    if *logit <= 0.0 {
                        *logit *= s.repeat_penalty;
                    } else {
                        *logit /= s.repeat_penalty;
                    }
                    #[allow(clippy::cast_precision_loss)]
                    let count = count as f32;
                    *logit -= count * s.frequency_penalty + s.presence_penalty;
                }
            }
        }
        let argmax = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best
        };
        let index = if s.temperature <= 0.0 {
            argmax()
        } else {
            // Softmax at the temperature, then the nucleus, then a draw.
            #[allow(clippy::cast_possible_truncation)]
            let temperature = s.temperature as f32;
            let max = logits[argmax()];
            let mut probs: Vec<(usize, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i, ((l - max) / temperature).exp()))
                .collect();
            let total: f32 = probs.iter().map(|p| p.1).sum();
            probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let mut kept = 0.0f32;
            let mut keep = probs.len();
            #[allow(clippy::cast_possible_truncation)]
            let top_p = s.top_p as f32;
            for (n, p) in probs.iter().enumerate() {
                kept += p.1 / total;
                if kept >= top_p {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
            let mass: f32 = probs.iter().map(|p| p.1).sum();
            let mut draw = self.rng.random::<f32>() * mass;
            let mut chosen = probs[0].0;
            for (i, p) in &probs {
                chosen = *i;
                if draw < *p {
                    break;
                }
                draw -= p;
            }
            chosen
        };
        u32::try_from(index).unwrap_or(0)
    }

    /// Takes `token` as generated; returns the bytes that may be sent now (never part
    /// of a stop string, never half a character).
    fn take(&mut self, token: u32, tokenizer: &GgufTokenizer, context: usize) -> Vec<u8> {
        if tokenizer.is_eog(token) {
            self.finished = Some(Finish::Stop);
            return self.release(true);
        }
        self.completion.push(token);
        self.next_input = Some(token);
        self.text.extend_from_slice(tokenizer.piece(token));
        let incomplete = incomplete_utf8_tail(&self.text);
        if incomplete == 0 {
            let found = self
                .limits
                .stop
                .iter()
                .find_map(|s| find(&self.text, s.as_bytes()));
            if let Some(at) = found {
                self.stop_at = Some(at);
                self.finished = Some(Finish::Stop);
                return self.release(true);
            }
        }
        if self.completion.len() >= self.limits.max_tokens
            || self.prompt.len() + self.completion.len() >= context
        {
            self.finished = Some(Finish::Length);
            return self.release(true);
        }
        self.release(false)
    }

    /// The bytes not yet handed out that are safe to send: all of them once finished
    /// (up to a stop string); otherwise holding back an incomplete character and any
    /// tail that could begin a stop string.
    fn release(&mut self, finished: bool) -> Vec<u8> {
        let end = if finished {
            let mut end = self.stop_at.unwrap_or(self.text.len());
            end -= incomplete_utf8_tail(&self.text[..end]);
            end
        } else {
            let mut end = self.text.len() - incomplete_utf8_tail(&self.text);
            let pending = &self.text[self.emitted..end];
            let mut hold = 0;
            for stop in &self.limits.stop {
                let stop = stop.as_bytes();
                for n in (1..stop.len().min(pending.len() + 1)).rev() {
                    if pending.ends_with(&stop[..n]) {
                        hold = hold.max(n);
                        break;
                    }
                }
            }
            end -= hold;
            end
        };
        if end <= self.emitted {
            return Vec::new();
        }
        let out = self.text[self.emitted..end].to_vec();
        self.emitted = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_characters_are_found() {
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"é".as_bytes()[..1]), 1);
        let rocket = "🚀".as_bytes();
        assert_eq!(incomplete_utf8_tail(&rocket[..3]), 3);
        assert_eq!(incomplete_utf8_tail(&rocket[..2]), 2);
        assert_eq!(incomplete_utf8_tail(rocket), 0);
    }
}
