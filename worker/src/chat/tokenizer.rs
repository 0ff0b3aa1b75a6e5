//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), rebuilt as llama.cpp
//! builds it: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the
//! pre-tokenizer named by `tokenizer.ggml.pre`, the file's vocabulary and merges,
//! and every control, user-defined and unknown token matched as a whole in the text
//! (llama.cpp's `parse_special`, which its OpenAI servers use for prompts).
//!
//! Encoding runs through Hugging Face `tokenizers` (the same BPE and pre-tokenizers
//! the model was trained with); decoding is llama.cpp's `token_to_piece` without
//! special tokens: a normal token's bytes through GPT-2's byte↔unicode table, a
//! user-defined token's text as it is, a control token nothing.
use std::collections::HashMap;
use std::str::FromStr;

use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{json, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Token texts llama.cpp also ends generation on when the file marks them as
/// control tokens (its end-of-generation set, beside the eos/eot ids).
const EOG_TEXTS: [&str; 8] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// The regex llama.cpp splits with before BPE, per `tokenizer.ggml.pre`.
enum PreTokenizer {
    /// Digits one by one, then GPT-2's byte-level regex (SmolLM, StarCoder, …).
    DigitsThenGpt2,
    /// GPT-2's byte-level regex alone.
    Gpt2,
    /// Llama 3's regex (`llama-bpe`), then byte-level without regex.
    Llama3,
}

const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizer {
    fn from_name(pre: &str) -> Option<Self> {
        match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => Some(Self::DigitsThenGpt2),
            "gpt-2" | "gpt2" | "default" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo"
            | "jais" | "trillion" => Some(Self::Gpt2),
            "llama-bpe" | "llama3" | "falcon3" | "smaug-bpe" => Some(Self::Llama3),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        let byte_level = |use_regex: bool| json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex });
        match self {
            Self::DigitsThenGpt2 => json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Digits", "individual_digits": true },
                byte_level(true),
            ]}),
            Self::Gpt2 => byte_level(true),
            Self::Llama3 => json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": LLAMA3_REGEX }, "behavior": "Isolated", "invert": false },
                byte_level(false),
            ]}),
        }
    }
}

/// GPT-2's table from bytes to the printable characters its vocabulary spells them with.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

/// A GGUF file's tokenizer.
pub struct GgufTokenizer {
    inner: tokenizers::Tokenizer,
    /// Each token's bytes when decoded (empty for control tokens).
    pieces: Vec<Vec<u8>>,
    texts: Vec<String>,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

fn strings(metadata: &HashMap<String, GgufValue>, key: &str) -> Result<Vec<String>, String> {
    let value = metadata
        .get(key)
        .ok_or_else(|| format!("no `{key}` in the GGUF metadata"))?;
    let items = value
        .to_vec()
        .map_err(|_| format!("`{key}` is not an array"))?;
    items
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| format!("`{key}` holds a non-string"))
        })
        .collect()
}

fn int(value: &GgufValue) -> Option<i64> {
    match value {
        GgufValue::U8(v) => Some(i64::from(*v)),
        GgufValue::I8(v) => Some(i64::from(*v)),
        GgufValue::U16(v) => Some(i64::from(*v)),
        GgufValue::I16(v) => Some(i64::from(*v)),
        GgufValue::U32(v) => Some(i64::from(*v)),
        GgufValue::I32(v) => Some(i64::from(*v)),
        GgufValue::U64(v) => i64::try_from(*v).ok(),
        GgufValue::I64(v) => Some(*v),
        _ => None,
    }
}

fn token_id(metadata: &HashMap<String, GgufValue>, key: &str) -> Option<u32> {
    metadata
        .get(key)
        .and_then(int)
        .and_then(|v| u32::try_from(v).ok())
}

/// Checks that the file's tokenizer is byte-level BPE and returns the pre-tokenizer
/// `tokenizer.ggml.pre` names.
fn pre_tokenizer(metadata: &HashMap<String, GgufValue>) -> Result<PreTokenizer, String> {
    let model = metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .ok_or("no `tokenizer.ggml.model` in the GGUF metadata")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model {model:?}: this worker reads byte-level BPE tokenizers (\"gpt2\": SmolLM, Llama 3, Qwen-style vocabularies); SentencePiece (\"llama\") is not supported"
        ));
    }
    let pre_name = metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map_or("default", String::as_str);
    PreTokenizer::from_name(pre_name).ok_or_else(|| {
        format!("tokenizer.ggml.pre {pre_name:?} is not supported (smollm, starcoder, gpt-2, default and llama-bpe are)")
    })
}

/// Each token's type (`tokenizer.ggml.token_type`; all normal when absent), one per
/// token of the vocabulary.
fn token_types(metadata: &HashMap<String, GgufValue>, tokens: usize) -> Result<Vec<i32>, String> {
    let types: Vec<i32> = match metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| "`tokenizer.ggml.token_type` is not an array".to_string())?
            .iter()
            .map(|t| {
                int(t)
                    .and_then(|t| i32::try_from(t).ok())
                    .unwrap_or(TYPE_NORMAL)
            })
            .collect(),
        None => vec![TYPE_NORMAL; tokens],
    };
    if types.len() != tokens {
        return Err(format!(
            "the GGUF has {tokens} tokens but {} token types",
            types.len()
        ));
    }
    Ok(types)
}

/// The Hugging Face tokenizer for the vocabulary: byte-level BPE over `texts` and
/// `merges`, split by `pre`, with control, user-defined and unknown tokens added
/// whole.
fn bpe_tokenizer(
    pre: &PreTokenizer,
    texts: &[String],
    types: &[i32],
    merges: &[String],
) -> Result<tokenizers::Tokenizer, String> {
    let vocab: serde_json::Map<String, Value> = texts
        .iter()
        .enumerate()
        .map(|(id, text)| (text.clone(), json!(id)))
        .collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
            json!([a, b])
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(texts, types),
        "normalizer": null,
        "pre_tokenizer": pre.to_json(),
        "post_processor": null,
        "decoder": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    tokenizers::Tokenizer::from_str(&spec.to_string())
        .map_err(|e| format!("cannot build the tokenizer from the GGUF metadata: {e}"))
}

/// The tokens matched whole in the text (llama.cpp's `parse_special`): control,
/// user-defined and unknown ones.
fn added_tokens(texts: &[String], types: &[i32]) -> Vec<Value> {
    types
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN))
        .map(|(id, t)| {
            json!({
                "id": id, "content": texts[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *t != TYPE_USER_DEFINED,
            })
        })
        .collect()
}

/// Each token's bytes when decoded (llama.cpp's `token_to_piece`).
fn decoded_pieces(texts: &[String], types: &[i32]) -> Vec<Vec<u8>> {
    let table = byte_to_char();
    let char_to_byte: HashMap<char, u8> = (0..=255u8).map(|b| (table[usize::from(b)], b)).collect();
    texts
        .iter()
        .zip(types)
        .map(|(text, t)| match *t {
            TYPE_CONTROL | TYPE_UNKNOWN => Vec::new(),
            TYPE_USER_DEFINED => text.as_bytes().to_vec(),
            _ => text
                .chars()
                .map(|c| char_to_byte.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| text.as_bytes().to_vec()),
        })
        .collect()
}

/// The special tokens: BOS, EOS, those generation ends at, and whether prompts
/// start with BOS.
struct SpecialTokens {
    bos: Option<u32>,
    eos: Option<u32>,
    /// Sorted, without repeats.
    eog: Vec<u32>,
    add_bos: bool,
}

impl SpecialTokens {
    fn read(
        metadata: &HashMap<String, GgufValue>,
        texts: &[String],
        types: &[i32],
    ) -> Result<Self, String> {
        let bos = token_id(metadata, "tokenizer.ggml.bos_token_id");
        let eos = token_id(metadata, "tokenizer.ggml.eos_token_id");
        let mut eog: Vec<u32> = [eos, token_id(metadata, "tokenizer.ggml.eot_token_id")]
            .into_iter()
            .flatten()
            .collect();
        for (id, (text, t)) in texts.iter().zip(types).enumerate() {
            if *t == TYPE_CONTROL && EOG_TEXTS.contains(&text.as_str()) {
                eog.push(u32::try_from(id).map_err(|e| e.to_string())?);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        let add_bos = metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(Self {
            bos,
            eos,
            eog,
            add_bos,
        })
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    pub fn from_metadata(metadata: &HashMap<String, GgufValue>) -> Result<Self, String> {
        let pre = pre_tokenizer(metadata)?;
        let texts = strings(metadata, "tokenizer.ggml.tokens")?;
        let merges = strings(metadata, "tokenizer.ggml.merges")?;
        let types = token_types(metadata, texts.len())?;
        let inner = bpe_tokenizer(&pre, &texts, &types, &merges)?;
        let pieces = decoded_pieces(&texts, &types);
        let special = SpecialTokens::read(metadata, &texts, &types)?;
        Ok(Self {
            inner,
            pieces,
            texts,
            eog: special.eog,
            bos: special.bos,
            eos: special.eos,
            add_bos: special.add_bos,
        })
    }

    /// The tokens of `text`, special tokens written in it matched as such; with
    /// `add_bos`, the BOS token first where the model asks for one
    /// (`tokenizer.ggml.add_bos_token`).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, String> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| format!("tokenizer: {e}"))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The bytes `token` decodes to (nothing for control tokens).
    pub fn piece(&self, token: u32) -> &[u8] {
        usize::try_from(token)
            .ok()
            .and_then(|i| self.pieces.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// The bytes of `tokens`, decoded.
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        tokens
            .iter()
            .flat_map(|&t| self.piece(t))
            .copied()
            .collect()
    }

    /// Whether generation ends at `token`.
    pub fn is_eog(&self, token: u32) -> bool {
        self.eog.binary_search(&token).is_ok()
    }

    /// The vocabulary's text of `token` (as the chat template's `bos_token` /
    /// `eos_token` see it).
    pub fn text(&self, token: u32) -> Option<&str> {
        usize::try_from(token)
            .ok()
            .and_then(|i| self.texts.get(i))
            .map(String::as_str)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_is_gpt2s() {
        let table = byte_to_char();
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'a')], 'a');
        let mut chars: Vec<char> = table.to_vec();
        chars.sort_unstable();
        chars.dedup();
        assert_eq!(chars.len(), 256, "one character per byte");
    }
}
