//! The model's chat template (`tokenizer.chat_template` in the GGUF), rendered with a
//! Jinja engine (minijinja) configured as Hugging Face transformers and
//! llama-cpp-python configure Jinja2 for chat templates: `trim_blocks`,
//! `lstrip_blocks`, Python's string methods, `raise_exception`, `strftime_now`, and a
//! `tojson` that writes what Python's `json.dumps` writes.
use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

const NAME: &str = "chat_template";

/// A compiled chat template and the special tokens it is given.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    source: String,
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Python's `datetime.now().strftime(format)` for the directives chat templates use
/// (UTC: the worker has no time zone of its own).
fn strftime_now(format: String) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let month_name = MONTHS[(month as usize).saturating_sub(1) % 12];
    let day_name = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => {
                let _ = write!(out, "{day:02}");
            }
            Some('m') => {
                let _ = write!(out, "{month:02}");
            }
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => {
                let _ = write!(out, "{:02}", year.rem_euclid(100));
            }
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('H') => {
                let _ = write!(out, "{:02}", of_day / 3600);
            }
            Some('M') => {
                let _ = write!(out, "{:02}", of_day % 3600 / 60);
            }
            Some('S') => {
                let _ = write!(out, "{:02}", of_day % 60);
            }
            Some('%') | None => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

/// Writes `value` as Python's `json.dumps(value, ensure_ascii=False, indent=…)` does
/// (`", "` and `": "` between items, or `","` and newlines when indented), keys
/// in the order the messages hold them (serde_json's: sorted, where Python keeps
/// insertion order; the chat templates tried write no objects with `tojson`).
fn write_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&value.to_string()),
        ValueKind::String => out.push_str(
            &serde_json::to_string(value.as_str().unwrap_or_default())
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                let name = key.as_str().map_or_else(|| key.to_string(), str::to_string);
                out.push_str(
                    &serde_json::to_string(&name)
                        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
                );
                out.push_str(": ");
                write_json(&value.get_item(key)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(
            &serde_json::to_string(&value.to_string())
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
        ),
    }
    Ok(())
}

fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted as Python's are; the output is json.dumps' default either way.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts of the model's
    /// BOS and EOS tokens, which templates write themselves.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| format!("the chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            source: source.to_string(),
        })
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages` (OpenAI's message objects, content already text),
    /// with the assistant's turn opened when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&Json>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| format!("the chat template: {e}"))?;
        template
            .render(minijinja::context! {
                messages => Value::from_serialize(messages),
                tools => tools.map_or(Value::from(()), Value::from_serialize),
                functions => Value::from(()),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| {
                let mut message = format!("the model's chat template refused these messages: {e}");
                // minijinja's `raise_exception` text is the template's own words.
                if let Some(detail) = e.detail() {
                    if !message.contains(detail) {
                        let _ = write!(message, " ({detail})");
                    }
                }
                message
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2s_template_renders_as_transformers_does() {
        let template = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let prompt = template
            .render(
                &[json!({"role": "user", "content": "hello tally"})],
                None,
                true,
            )
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhello tally<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = template
            .render(
                &[
                    json!({"role": "system", "content": "Be terse."}),
                    json!({"role": "user", "content": "Hi"}),
                ],
                None,
                false,
            )
            .unwrap();
        assert_eq!(
            with_system,
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn jinja_features_templates_rely_on() {
        let source = "{% if messages[0]['role'] == 'bot' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}\n  {% for m in messages %}\n{{ m.content.strip() | upper }}|{{ m | tojson }}\n{% endfor %}{{ bos_token }}{{ strftime_now('%Y') | length }}";
        let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let prompt = template
            .render(
                &[json!({"role": "user", "content": "  hé \"x\" "})],
                None,
                true,
            )
            .unwrap();
        assert_eq!(
            prompt,
            "HÉ \"X\"|{\"content\": \"  hé \\\"x\\\" \", \"role\": \"user\"}\n<s>4"
        );
        let refused = template
            .render(&[json!({"role": "bot", "content": "x"})], None, true)
            .unwrap_err();
        assert!(
            refused.contains("Conversation roles must alternate"),
            "{refused}"
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
