//! What the gateway reads in a request body before it forwards it, and what it
//! changes so that the caller cannot turn metering off:
//!
//! - `stream` must be a boolean (or absent/null: false). Inference servers read other
//!   values differently — vLLM's pydantic models coerce `1` and `"true"` to true, other
//!   parsers read them as false — so the gateway refuses them (`400`) rather than guess.
//! - `stream_options` must be an object (or absent/null). When streaming, the gateway
//!   sets `include_usage: true` (and `continuous_usage_stats: false`, so only the final
//!   usage chunk carries usage); when not streaming it removes `stream_options` (vLLM
//!   refuses it there).
//! - `max_tokens` / `max_completion_tokens` and `n` / `best_of` must be non-negative
//!   integers. A chat or completion request without a token limit gets one (the
//!   gateway's `default_max_tokens` for chat, OpenAI's 16 for completions), so that
//!   its cost has a bound that can be reserved before it is forwarded.
use serde_json::{json, Map, Value};

/// Which metered endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The endpoint a path names, if it is metered.
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::Chat),
            "/v1/completions" => Some(Self::Completions),
            "/v1/embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }
}

/// OpenAI's default `max_tokens` for `/v1/completions`.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u64 = 16;

/// A request as the gateway forwards it.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    pub endpoint: Endpoint,
    /// The body to forward.
    pub body: Value,
    pub streaming: bool,
    pub model: String,
    /// Most completion tokens the answer may hold (all choices together).
    pub max_completion_tokens: u64,
    /// More than the prompt can hold in tokens: its size in bytes (a token is at least
    /// one byte of text in the tokenizers servers use; the JSON around the text covers
    /// chat templates' own tokens).
    pub prompt_bound: u64,
    /// The prompt's text, for counting with the server's tokenizer when it reports no
    /// usage; prompts given as token ids are counted by their length instead.
    pub prompt_text: String,
    pub prompt_token_ids: u64,
}

fn field_u64(object: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            format!("`{name}` must be a non-negative integer (got {value}): the gateway reserves the request's cost from it")
        }),
    }
}

fn push_text(out: &mut String, value: &Value, token_ids: &mut u64) {
    match value {
        Value::String(text) => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(text);
        }
        // Content parts ({"type":"text","text":…}) or a list of prompts.
        Value::Array(items) => {
            if items.iter().all(Value::is_u64) && !items.is_empty() {
                *token_ids = token_ids.saturating_add(items.len() as u64);
                return;
            }
            for item in items {
                match item.get("text") {
                    Some(text) => push_text(out, text, token_ids),
                    None => push_text(out, item, token_ids),
                }
            }
        }
        _ => {}
    }
}

/// Reads and normalizes a metered request's body (`raw`); `Err` is the `400`'s message.
pub fn normalize(
    endpoint: Endpoint,
    raw: &[u8],
    default_max_tokens: u64,
) -> Result<Normalized, String> {
    let mut body: Value =
        serde_json::from_slice(raw).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let Some(object) = body.as_object_mut() else {
        return Err("the request body must be a JSON object".into());
    };
    let model = model_of(object)?;
    let streaming = streaming_of(object)?;
    let max_completion_tokens = completion_bound(endpoint, object, default_max_tokens)?;
    let prompt = Prompt::of(endpoint, object);
    if endpoint != Endpoint::Embeddings {
        keep_usage_reported(object, streaming);
    }
    Ok(Normalized {
        endpoint,
        body,
        streaming: streaming && endpoint != Endpoint::Embeddings,
        model,
        max_completion_tokens,
        prompt_bound: raw.len() as u64,
        prompt_text: prompt.text,
        prompt_token_ids: prompt.token_ids,
    })
}

/// `model`: a string, or absent/null (empty).
fn model_of(object: &Map<String, Value>) -> Result<String, String> {
    match object.get("model") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(model)) => Ok(model.clone()),
        Some(other) => Err(format!("`model` must be a string (got {other})")),
    }
}

/// `stream`: a boolean, or absent/null (false); and `stream_options` an object if
/// present.
fn streaming_of(object: &Map<String, Value>) -> Result<bool, String> {
    let streaming = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => {
            return Err(format!(
                "`stream` must be true or false (got {other}): servers read other values differently, so the gateway does not guess"
            ))
        }
    };
    match object.get("stream_options") {
        None | Some(Value::Null | Value::Object(_)) => Ok(streaming),
        Some(other) => Err(format!("`stream_options` must be an object (got {other})")),
    }
}

/// Most completion tokens the answer may hold, all choices together (none for
/// embeddings). A chat or completion without a limit is given the default one.
fn completion_bound(
    endpoint: Endpoint,
    object: &mut Map<String, Value>,
    default_max_tokens: u64,
) -> Result<u64, String> {
    if endpoint == Endpoint::Embeddings {
        return Ok(0);
    }
    let n = field_u64(object, "n")?.unwrap_or(1);
    let best_of = field_u64(object, "best_of")?.unwrap_or(1);
    let max_tokens = field_u64(object, "max_tokens")?;
    let max_completion = field_u64(object, "max_completion_tokens")?;
    let limit = match (max_tokens, max_completion) {
        (None, None) => {
            let default = if endpoint == Endpoint::Chat {
                default_max_tokens
            } else {
                COMPLETIONS_DEFAULT_MAX_TOKENS
            };
            object.insert("max_tokens".into(), json!(default));
            default
        }
        (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
    };
    Ok(limit.saturating_mul(n.max(best_of).max(1)))
}

/// The prompt as text, and how many token ids were given instead of text.
struct Prompt {
    text: String,
    token_ids: u64,
}

impl Prompt {
    /// The endpoint's prompt field: chat messages' content, `prompt`, or `input`.
    fn of(endpoint: Endpoint, object: &Map<String, Value>) -> Self {
        let mut prompt = Self {
            text: String::new(),
            token_ids: 0,
        };
        match endpoint {
            Endpoint::Chat => {
                if let Some(Value::Array(messages)) = object.get("messages") {
                    for content in messages.iter().filter_map(|m| m.get("content")) {
                        push_text(&mut prompt.text, content, &mut prompt.token_ids);
                    }
                }
            }
            Endpoint::Completions | Endpoint::Embeddings => {
                let field = if endpoint == Endpoint::Embeddings {
                    "input"
                } else {
                    "prompt"
                };
                if let Some(value) = object.get(field) {
                    push_text(&mut prompt.text, value, &mut prompt.token_ids);
                }
            }
        }
        prompt
    }
}

/// A streamed request reports its usage in one final chunk (`include_usage: true`,
/// and `continuous_usage_stats: false` if the caller set it); a request not streamed
/// carries no `stream_options` (vLLM refuses them there).
fn keep_usage_reported(object: &mut Map<String, Value>, streaming: bool) {
    if !streaming {
        object.remove("stream_options");
        return;
    }
    let options = object.entry("stream_options").or_insert_with(|| json!({}));
    if !options.is_object() {
        *options = json!({});
    }
    if let Some(options) = options.as_object_mut() {
        options.insert("include_usage".into(), Value::Bool(true));
        if options.contains_key("continuous_usage_stats") {
            options.insert("continuous_usage_stats".into(), Value::Bool(false));
        }
    }
}

/// `usage.prompt_tokens` / `usage.completion_tokens` of an OpenAI response object
/// (`None` when `usage` is absent or null, or holds no counts).
pub fn usage_of(value: &Value) -> Option<(u64, u64)> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    let prompt = usage.get("prompt_tokens").and_then(Value::as_u64);
    let completion = usage.get("completion_tokens").and_then(Value::as_u64);
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    Some((prompt.unwrap_or(0), completion.unwrap_or(0)))
}

/// The text an answer (or one streamed chunk of it) generated, per choice index:
/// message or delta content, reasoning content, tool-call arguments, completion text.
pub fn generated_text(value: &Value, out: &mut std::collections::BTreeMap<u64, String>) {
    let Some(choices) = value.get("choices").and_then(Value::as_array) else {
        return;
    };
    for (position, choice) in choices.iter().enumerate() {
        let index = choice
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let text = out.entry(index).or_default();
        let parts = [choice.get("message"), choice.get("delta")];
        for part in parts.into_iter().flatten() {
            for field in ["content", "reasoning_content", "reasoning"] {
                if let Some(piece) = part.get(field).and_then(Value::as_str) {
                    text.push_str(piece);
                }
            }
            if let Some(calls) = part.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    if let Some(arguments) =
                        call.pointer("/function/arguments").and_then(Value::as_str)
                    {
                        text.push_str(arguments);
                    }
                }
            }
        }
        if let Some(piece) = choice.get("text").and_then(Value::as_str) {
            text.push_str(piece);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn chat(extra: &str) -> Result<Normalized, String> {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"one two"}}]{extra}}}"#);
        normalize(Endpoint::Chat, body.as_bytes(), 256)
    }

    #[test]
    fn a_caller_cannot_switch_the_usage_chunk_off() {
        for extra in [
            r#","stream":true"#,
            r#","stream":true,"stream_options":null"#,
            r#","stream":true,"stream_options":{}"#,
            r#","stream":true,"stream_options":{"include_usage":false}"#,
            r#","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}"#,
        ] {
            let n = chat(extra).unwrap();
            assert!(n.streaming, "{extra}");
            assert_eq!(n.body["stream_options"]["include_usage"], true, "{extra}");
            assert_ne!(
                n.body["stream_options"]["continuous_usage_stats"], true,
                "{extra}"
            );
        }
        // Not streaming: stream_options goes (servers refuse it there).
        let n = chat(r#","stream":false,"stream_options":{"include_usage":false}"#).unwrap();
        assert!(!n.streaming);
        assert!(n.body.get("stream_options").is_none());
    }

    #[test]
    fn values_servers_read_differently_are_refused() {
        for extra in [
            r#","stream":1"#,
            r#","stream":"true""#,
            r#","stream":"false""#,
            r#","stream":0"#,
            r#","stream":[]"#,
            r#","stream":true,"stream_options":"yes""#,
            r#","stream":true,"stream_options":[]"#,
            r#","max_tokens":-1"#,
            r#","max_tokens":"9""#,
            r#","n":1.5"#,
        ] {
            assert!(chat(extra).is_err(), "{extra} was accepted");
        }
    }

    #[test]
    fn every_request_has_a_bounded_cost() {
        let n = chat("").unwrap();
        assert_eq!(
            n.body["max_tokens"], 256,
            "a chat without a limit gets the default"
        );
        assert_eq!(n.max_completion_tokens, 256);
        let n = chat(r#","max_tokens":10,"n":3"#).unwrap();
        assert_eq!(n.max_completion_tokens, 30);
        let n = chat(r#","max_tokens":10,"max_completion_tokens":40"#).unwrap();
        assert_eq!(n.max_completion_tokens, 40);
        let n = normalize(Endpoint::Completions, br#"{"prompt":"a b c"}"#, 256).unwrap();
        assert_eq!(n.body["max_tokens"], 16);
        assert_eq!(n.prompt_text, "a b c");
        let n = normalize(
            Endpoint::Completions,
            br#"{"prompt":[1,2,3],"max_tokens":2}"#,
            256,
        )
        .unwrap();
        assert_eq!((n.prompt_token_ids, n.prompt_text.as_str()), (3, ""));
        let n = normalize(Endpoint::Embeddings, br#"{"input":["x y","z"]}"#, 256).unwrap();
        assert_eq!(
            (n.max_completion_tokens, n.prompt_text.as_str()),
            (0, "x y\nz")
        );
        assert!(n.prompt_bound >= 4);
    }
}
