//! OpenAI's chat and text completion APIs: parsing and checking a request into the
//! prompt's tokens, limits and sampling; the shapes of answers and stream chunks.
use hyper::StatusCode;
use serde_json::{json, Map, Value};

use super::model::{ChatModel, Finish, Limits, Sampling};

/// llama-cpp-python's server default for `repeat_penalty` (OpenAI has no such
/// parameter; send 1 to turn it off).
pub const DEFAULT_REPEAT_PENALTY: f32 = 1.1;

/// OpenAI's limit on stop strings.
pub const MAX_STOP: usize = 4;

/// Which API a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`: messages through the chat template.
    Chat,
    /// `POST /v1/completions`: a raw prompt.
    Completion,
}

/// A checked request.
#[derive(Debug)]
pub struct GenerationRequest {
    pub endpoint: Endpoint,
    pub prompt: Vec<u32>,
    pub limits: Limits,
    pub sampling: Sampling,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

type Refusal = (StatusCode, String);

fn bad(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, message.into())
}

fn number(
    object: &Map<String, Value>,
    key: &str,
    low: f64,
    high: f64,
) -> Result<Option<f64>, Refusal> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (low..=high).contains(&x) => Ok(Some(x)),
            Some(x) => Err(bad(format!(
                "`{key}` is {x}: it must be between {low} and {high}"
            ))),
            None => Err(bad(format!("`{key}` must be a number"))),
        },
    }
}

/// A message's content as text: a string, or the text parts of an array joined with
/// newlines (as vLLM flattens them for text-only templates).
fn content_text(index: usize, content: Option<&Value>) -> Result<String, Refusal> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => texts.push(text.clone()),
                    (Some(kind), _) if kind != "text" => {
                        return Err(bad(format!(
                            "messages[{index}].content has a `{kind}` part: this model reads text only"
                        )))
                    }
                    _ => {
                        return Err(bad(format!(
                            "messages[{index}].content parts must be {{\"type\": \"text\", \"text\": \"…\"}}"
                        )))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(bad(format!(
            "messages[{index}].content must be a string or an array of text parts"
        ))),
    }
}

/// The messages as the template reads them: each an object with a string `role` and
/// text `content` (other keys kept).
pub fn messages_for_template(value: Option<&Value>) -> Result<Vec<Value>, Refusal> {
    let messages = match value {
        None | Some(Value::Null) => {
            return Err(bad(
                "`messages` is required: an array of {\"role\", \"content\"} objects",
            ))
        }
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(bad("`messages` is empty: send at least one message"))
        }
        Some(Value::Array(m)) => m,
        Some(_) => {
            return Err(bad(
                "`messages` must be an array of {\"role\", \"content\"} objects",
            ))
        }
    };
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let Some(object) = message.as_object() else {
                return Err(bad(format!("messages[{i}] is not an object")));
            };
            match object.get("role") {
                Some(Value::String(r)) if !r.is_empty() => {}
                _ => {
                    return Err(bad(format!(
                        "messages[{i}] has no `role` (system, user, assistant or tool)"
                    )))
                }
            }
            let mut message = object.clone();
            message.insert(
                "content".into(),
                Value::String(content_text(i, object.get("content"))?),
            );
            Ok(Value::Object(message))
        })
        .collect()
}

/// Parses an OpenAI chat or text completion request for `model`, served as `served`.
///
/// The checks run in this order, and the first that fails is the answer.
pub fn parse(
    body: &[u8],
    endpoint: Endpoint,
    model: &ChatModel,
    served: &str,
) -> Result<GenerationRequest, Refusal> {
    let object = request_object(body)?;
    check_model_name(&object, served)?;
    let mut stop = stop_strings(&object)?;
    let prompt = match endpoint {
        Endpoint::Chat => chat_prompt(&object, model)?,
        Endpoint::Completion => completion_prompt(&object, model)?,
    };
    stop.extend(prompt.stop);
    let max_tokens = max_tokens(&object, prompt.tokens.len(), model.context())?;
    check_unsupported(&object)?;
    let sampling = sampling(&object)?;
    let streaming = streaming(&object)?;
    Ok(GenerationRequest {
        endpoint,
        prompt: prompt.tokens,
        limits: Limits { max_tokens, stop },
        sampling,
        stream: streaming.stream,
        include_usage: streaming.include_usage,
    })
}

/// The body as a JSON object.
fn request_object(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad("the request body must be a JSON object")),
        Err(e) => Err(bad(format!("the request body is not JSON: {e}"))),
    }
}

/// `model`, when given, names the model served (or is empty).
fn check_model_name(object: &Map<String, Value>, served: &str) -> Result<(), Refusal> {
    let Some(m) = object.get("model").filter(|m| !m.is_null()) else {
        return Ok(());
    };
    match m.as_str() {
        Some(m) if m == served || m.is_empty() => Ok(()),
        Some(m) => Err((
            StatusCode::NOT_FOUND,
            format!(
                "The model `{m}` does not exist: this worker serves `{served}` for completions"
            ),
        )),
        None => Err(bad("`model` must be a string")),
    }
}

/// `stop`: a string or up to [`MAX_STOP`] strings; empty ones are dropped.
fn stop_strings(object: &Map<String, Value>) -> Result<Vec<String>, Refusal> {
    let mut stop: Vec<String> = match object.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() > MAX_STOP => {
            return Err(bad(format!(
                "`stop` has {} strings; at most {MAX_STOP}",
                items.len()
            )))
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("`stop` must be a string or an array of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("`stop` must be a string or an array of strings")),
    };
    stop.retain(|s| !s.is_empty());
    Ok(stop)
}

/// The prompt's tokens, and a stop string the endpoint adds to the request's.
struct Prompt {
    tokens: Vec<u32>,
    stop: Option<String>,
}

/// Chat: `messages` (and `tools`) through the model's chat template.
fn chat_prompt(object: &Map<String, Value>, model: &ChatModel) -> Result<Prompt, Refusal> {
    let messages = messages_for_template(object.get("messages"))?;
    let Some(template) = model.template() else {
        return Err(bad("this model's GGUF has no chat template (tokenizer.chat_template): use /v1/completions with a prompt"));
    };
    let tools = object.get("tools").filter(|t| !t.is_null());
    let text = template.render(&messages, tools, true).map_err(bad)?;
    Ok(Prompt {
        tokens: model.tokenizer().encode(&text, false).map_err(bad)?,
        // llama.cpp's chat handler stops on the EOS token's text too.
        stop: model.eos_text().map(str::to_string),
    })
}

/// Text completion: `prompt` as a string, one string in an array, or token ids.
fn completion_prompt(object: &Map<String, Value>, model: &ChatModel) -> Result<Prompt, Refusal> {
    let tokenizer = model.tokenizer();
    let tokens = match object.get("prompt") {
        Some(Value::String(s)) if s.is_empty() => return Err(bad("`prompt` is empty")),
        Some(Value::String(s)) => tokenizer.encode(s, true).map_err(bad)?,
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] if !s.is_empty() => tokenizer.encode(s, true).map_err(bad)?,
            [] => return Err(bad("`prompt` is empty")),
            items if items.iter().all(Value::is_u64) => {
                token_ids(items, tokenizer.vocab_size() as u64)?
            }
            _ => {
                return Err(bad(
                    "`prompt` must be a string, one string in an array, or an array of token ids: one prompt per request",
                ))
            }
        },
        None | Some(Value::Null) => return Err(bad("`prompt` is required")),
        Some(_) => return Err(bad("`prompt` must be a string or an array of token ids")),
    };
    Ok(Prompt { tokens, stop: None })
}

/// A prompt given as token ids, each below `vocab`.
fn token_ids(items: &[Value], vocab: u64) -> Result<Vec<u32>, Refusal> {
    items
        .iter()
        .map(|t| match t.as_u64() {
            Some(t) if t < vocab => Ok(u32::try_from(t).unwrap_or(0)),
            _ => Err(bad(format!(
                "`prompt` token {t} is not in the vocabulary (0..{vocab})"
            ))),
        })
        .collect()
}

/// The completion's token limit: `max_completion_tokens` (or `max_tokens`), at most
/// the room the prompt leaves in the context; all of that room when neither is given.
fn max_tokens(
    object: &Map<String, Value>,
    prompt_tokens: usize,
    context: usize,
) -> Result<usize, Refusal> {
    if prompt_tokens >= context {
        return Err(bad(format!(
            "This model's maximum context length is {context} tokens. However, your prompt is {prompt_tokens} tokens: shorten it"
        )));
    }
    let room = context - prompt_tokens;
    let requested = match (
        object.get("max_completion_tokens"),
        object.get("max_tokens"),
    ) {
        (Some(v), _) if !v.is_null() => Some(("max_completion_tokens", v)),
        (_, Some(v)) if !v.is_null() => Some(("max_tokens", v)),
        _ => None,
    };
    match requested {
        None => Ok(room),
        Some((key, v)) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(room)),
            _ => Err(bad(format!("`{key}` must be a positive integer"))),
        },
    }
}

/// Refuses what this worker does not do: `n` above 1, `logprobs`, `echo`, `suffix`,
/// a `response_format` other than text.
fn check_unsupported(object: &Map<String, Value>) -> Result<(), Refusal> {
    match object.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(n) => {
            return Err(bad(format!(
                "`n` is {n}: this worker generates one choice per request (n = 1)"
            )))
        }
    }
    if object
        .get("logprobs")
        .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
    {
        return Err(bad("`logprobs` is not supported by this worker"));
    }
    if object.get("echo").is_some_and(|v| v == &Value::Bool(true)) {
        return Err(bad("`echo` is not supported by this worker"));
    }
    if object.get("suffix").is_some_and(|v| !v.is_null()) {
        return Err(bad("`suffix` is not supported by this worker"));
    }
    if let Some(format) = object.get("response_format").filter(|v| !v.is_null()) {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(bad(
                "`response_format` other than {\"type\": \"text\"} is not supported by this worker",
            ));
        }
    }
    Ok(())
}

/// The sampling parameters, OpenAI's and llama.cpp's (`repeat_penalty`).
#[allow(clippy::cast_possible_truncation)]
fn sampling(object: &Map<String, Value>) -> Result<Sampling, Refusal> {
    let seed = seed(object)?;
    Ok(Sampling {
        temperature: number(object, "temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_p: top_p(object)?,
        seed,
        frequency_penalty: number(object, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        presence_penalty: number(object, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        repeat_penalty: repeat_penalty(object)?,
    })
}

/// `seed`: any integer (a negative one as its two's complement).
fn seed(object: &Map<String, Value>) -> Result<Option<u64>, Refusal> {
    match object.get("seed") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(i64::cast_unsigned))
                .ok_or_else(|| bad("`seed` must be an integer"))?,
        )),
    }
}

/// `top_p`: above 0, at most 1 (1 unless given).
fn top_p(object: &Map<String, Value>) -> Result<f64, Refusal> {
    match number(object, "top_p", 0.0, 1.0)? {
        Some(p) if p <= 0.0 => Err(bad("`top_p` must be above 0 (at most 1)")),
        Some(p) => Ok(p),
        None => Ok(1.0),
    }
}

/// `repeat_penalty` (or vLLM's `repetition_penalty`): above 0, at most 10.
#[allow(clippy::cast_possible_truncation)]
fn repeat_penalty(object: &Map<String, Value>) -> Result<f32, Refusal> {
    match (
        number(object, "repeat_penalty", 0.0, 10.0)?,
        number(object, "repetition_penalty", 0.0, 10.0)?,
    ) {
        (Some(p), _) | (None, Some(p)) if p > 0.0 => Ok(p as f32),
        // llama.cpp's OpenAI server (llama-cpp-python) applies 1.1 unless told
        // otherwise; its answers are the reference this worker agrees with.
        (None, None) => Ok(DEFAULT_REPEAT_PENALTY),
        _ => Err(bad("`repeat_penalty` must be above 0")),
    }
}

/// `stream` and `stream_options.include_usage`.
struct Streaming {
    stream: bool,
    include_usage: bool,
}

fn streaming(object: &Map<String, Value>) -> Result<Streaming, Refusal> {
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`stream` must be true or false")),
    };
    let include_usage = match object.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("`stream_options.include_usage` must be true or false")),
        },
        Some(_) => return Err(bad("`stream_options` must be an object")),
    };
    Ok(Streaming {
        stream,
        include_usage,
    })
}

/// `usage` as OpenAI writes it.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Fields every answer and chunk of one response shares.
pub struct ResponseHead {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

impl ResponseHead {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Self {
            // Unique per response: the oracle keeps it beside its own request id.
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_string(),
            endpoint,
        }
    }

    /// The whole (non-streamed) answer.
    pub fn answer(
        &self,
        text: &str,
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion", Endpoint::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }

    /// A stream chunk carrying `text` (chat: the first one also the role) or the finish.
    pub fn chunk(
        &self,
        text: Option<&str>,
        first: bool,
        finish: Option<Finish>,
        include_usage: bool,
    ) -> Value {
        let finish_reason = finish.map_or(Value::Null, |f| Value::String(f.as_str().into()));
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = text {
                    delta.insert("content".into(), json!(text));
                }
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason })
            }
            Endpoint::Completion => {
                json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish_reason })
            }
        };
        let mut chunk = json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion.chunk", Endpoint::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if include_usage {
            // OpenAI: with include_usage every chunk has `usage: null` but the last.
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The usage chunk (`stream_options.include_usage`): no choices, the counts.
    pub fn usage_chunk(&self, prompt_tokens: usize, completion_tokens: usize) -> Value {
        json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion.chunk", Endpoint::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }
}
