//! Counting tokens with the inference server's own tokenizer, for answers that come
//! without `usage`: llama-cpp-python (0.3.x) streams no usage chunk even when asked,
//! nor do older TGI and Ollama versions. The server exposes its tokenizer over HTTP:
//!
//! - `POST /tokenize` on vLLM (`{"model", "prompt"}` → `{"count", "tokens"}`) and on
//!   llama.cpp's C++ server (`{"content"}` → `{"tokens"}`): one body carries both fields;
//! - `POST /extras/tokenize` on llama-cpp-python (`{"model", "input"}` → `{"tokens"}`).
//!
//! `auto` tries them in that order and keeps the first that answers.
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where the gateway counts tokens: the `[gateway]` section's `tokenize`, written
/// `auto`, `off` (or empty), or a path on the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TokenizeMode {
    /// `/tokenize`, then `/extras/tokenize`: the first that answers.
    #[default]
    Auto,
    /// This path on the upstream.
    Path(String),
    /// Never: answers without usage cannot be billed.
    Off,
}

impl TokenizeMode {
    /// Reads the config's `tokenize` setting: `auto`, `off`, or a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "off" | "" => Ok(Self::Off),
            path if path.starts_with('/') => Ok(Self::Path(path.to_string())),
            other => Err(format!(
                "gateway.tokenize = `{other}`: write auto, off, or the upstream's tokenizer path (/tokenize, /extras/tokenize)"
            )),
        }
    }
}

impl TryFrom<String> for TokenizeMode {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<TokenizeMode> for String {
    fn from(mode: TokenizeMode) -> Self {
        match mode {
            TokenizeMode::Auto => "auto".into(),
            TokenizeMode::Off => "off".into(),
            TokenizeMode::Path(path) => path,
        }
    }
}

/// Candidate endpoints for `auto`.
pub const AUTO_PATHS: [&str; 2] = ["/tokenize", "/extras/tokenize"];

/// The upstream's tokenizer.
pub struct Tokenizer {
    http: reqwest::Client,
    upstream: String,
    mode: TokenizeMode,
    /// The path that answered (auto).
    found: Mutex<Option<String>>,
}

fn body_for(path: &str, model: &str, text: &str) -> Value {
    if path.ends_with("/extras/tokenize") {
        json!({ "model": model, "input": text })
    } else {
        json!({ "model": model, "prompt": text, "content": text })
    }
}

impl Tokenizer {
    pub fn new(upstream: &str, mode: TokenizeMode, timeout: Duration) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            upstream: upstream.trim_end_matches('/').to_string(),
            mode,
            found: Mutex::new(None),
        }
    }

    /// Whether counting is configured at all.
    pub fn enabled(&self) -> bool {
        self.mode != TokenizeMode::Off
    }

    async fn ask(&self, path: &str, model: &str, text: &str) -> Result<u64, String> {
        let response = self
            .http
            .post(format!("{}{path}", self.upstream))
            .json(&body_for(path, model, text))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path} answered {}", response.status()));
        }
        let value: Value = response.json().await.map_err(|e| {
            format!(
                "{path} answered something else than JSON: {}",
                e.without_url()
            )
        })?;
        value
            .get("count")
            .and_then(Value::as_u64)
            .or_else(|| {
                value
                    .get("tokens")
                    .and_then(Value::as_array)
                    .map(|t| t.len() as u64)
            })
            .ok_or_else(|| format!("{path} answered without `tokens` or `count`"))
    }

    /// The number of tokens `text` is to the upstream's tokenizer for `model`.
    pub async fn count(&self, model: &str, text: &str) -> Result<u64, String> {
        if text.is_empty() {
            return Ok(0);
        }
        match &self.mode {
            TokenizeMode::Off => {
                Err("counting with the upstream's tokenizer is off (gateway.tokenize)".into())
            }
            TokenizeMode::Path(path) => self.ask(path, model, text).await,
            TokenizeMode::Auto => {
                let found = self.found.lock().ok().and_then(|f| f.clone());
                if let Some(path) = found {
                    return self.ask(&path, model, text).await;
                }
                let mut errors = Vec::new();
                for path in AUTO_PATHS {
                    match self.ask(path, model, text).await {
                        Ok(count) => {
                            if let Ok(mut found) = self.found.lock() {
                                *found = Some(path.to_string());
                            }
                            return Ok(count);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                Err(format!(
                    "no tokenizer endpoint answered: {}",
                    errors.join("; ")
                ))
            }
        }
    }

    /// Prompt and completion tokens of an answer the upstream reported no usage for:
    /// the prompt's text (plus prompt token ids, counted as given) and each choice's
    /// generated text.
    pub async fn count_answer<'a>(
        &self,
        model: &str,
        prompt_text: &str,
        prompt_token_ids: u64,
        generated: impl IntoIterator<Item = &'a String>,
    ) -> Result<(u64, u64), String> {
        let prompt = self
            .count(model, prompt_text)
            .await?
            .saturating_add(prompt_token_ids);
        let mut completion = 0u64;
        for text in generated {
            completion = completion.saturating_add(self.count(model, text).await?);
        }
        Ok((prompt, completion))
    }
}
