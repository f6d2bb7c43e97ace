//! OpenAI request bodies, parsed and validated at the boundary into a [`GenRequest`] (nothing
//! JSON-shaped goes further in). An unknown field is a 400 naming it, as OpenAI's API answers
//! ("Unrecognized request argument supplied"); fields clients send at their defaults and that
//! change nothing here (`user`, `store: false`, `best_of: 1` ...) are accepted — see
//! [`inert_field`].

use serde::Deserialize;
use tandem_core::SamplerParams;
use tandem_executor::text::ChatMessage;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Fields shared by both endpoints.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Extension (vLLM): top-k filtering.
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Extension (vLLM): keep generating past EOS.
    pub ignore_eos: Option<bool>,
    /// Extension (tandem): larger is more urgent (the Priority queue policy uses it).
    pub priority: Option<i32>,
    /// Extension (tandem): the longest acceptable time to first token, in ms; a request whose
    /// predicted time to first token is longer is refused at once with 429 and the predicted
    /// wait (admission by predicted wait). Default: the server's `--ttft-deadline-ms`.
    pub ttft_deadline_ms: Option<f64>,
    /// Chat: `true` to report log-probabilities (with `top_logprobs` alternatives, 0–20);
    /// completions: the number of alternatives (0–20).
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<i64>,
    /// OpenAI's penalties over generated tokens, -2 to 2.
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Extension (vLLM): repetition penalty over prompt and generated tokens, > 0 (1 = off).
    pub repetition_penalty: Option<f64>,
    /// Extension (vLLM): no EOS or stop token before this many tokens (0..=max_tokens).
    pub min_tokens: Option<i64>,
    /// Extension (vLLM): token ids that end the generation (finish reason `stop`).
    pub stop_token_ids: Option<Vec<i64>>,
    /// Extension (vLLM): drop tokens less likely than `min_p` × the most likely one (0..=1).
    pub min_p: Option<f64>,
    /// Extension (vLLM): share prefix-cache blocks only with requests of the same salt.
    pub cache_salt: Option<String>,
    /// Structured output (`structured.rs`): OpenAI's `response_format`, vLLM's
    /// `structured_outputs` and its older `guided_*` fields.
    pub response_format: Option<serde_json::Value>,
    pub structured_outputs: Option<serde_json::Value>,
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<serde_json::Value>,
    pub guided_choice: Option<serde_json::Value>,
    pub guided_grammar: Option<serde_json::Value>,
    /// OpenAI's `{"token id": bias}`, each bias −100..=100, added to the logits.
    pub logit_bias: Option<serde_json::Value>,
    // OpenAI features tandem does not implement: accepted when inactive (null, false, 0, empty,
    // as clients often send defaults), refused with a 400 naming them otherwise — never
    // silently ignored.
    /// Chat only (`tools.rs`); refused on completions.
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    /// `false`: at most one tool call per answer (the first).
    pub parallel_tool_calls: Option<bool>,
    /// Completions only: the prompt's text before the completion's.
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    /// Every other field of the body: refused unless [`inert_field`] knows it as inactive.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
    /// The API key the request authenticated with (not a body field).
    #[serde(skip)]
    pub tenant: Option<crate::state::Tenant>,
}

/// The prefix-cache salt of a request: the one it sent, else its tenant's (API key's) own, else
/// none. The two are namespaced apart, so no sent salt can equal a tenant's.
pub fn salt(sent: Option<&str>, tenant: Option<crate::state::Tenant>) -> Option<String> {
    match (sent, tenant) {
        (Some(s), _) => Some(format!("sent:{s}")),
        (None, Some(t)) => Some(t.default_salt()),
        (None, None) => None,
    }
}

/// Whether `value` of the field `name` — one OpenAI or vLLM define but tandem does not act on —
/// changes nothing: `None` for a field neither defines (a 400 "unrecognized"), `Some(false)` for
/// one asked to do what tandem does not (a 400 naming it).
pub fn inert_field(name: &str, value: &serde_json::Value) -> Option<bool> {
    use serde_json::Value;
    let null = value.is_null();
    let is = |v: &Value| value == v;
    Some(match name {
        // Identifiers and bookkeeping: nothing to act on.
        "user" | "metadata" | "request_id" => true,
        "store"
        | "use_beam_search"
        | "continue_final_message"
        | "include_stop_str_in_output"
        | "no_stop_trim"
        | "return_hidden_states" => null || is(&Value::Bool(false)),
        // SGLang's reasoning-parser switches (its router sends them on every chat request):
        // with no reasoning parser there is nothing to separate, whichever way they are set.
        "separate_reasoning" | "stream_reasoning" => null || value.is_boolean(),
        "skip_special_tokens" | "spaces_between_special_tokens" | "add_generation_prompt" => {
            null || is(&Value::Bool(true))
        }
        "service_tier" => null || value.as_str().is_some_and(|t| t == "auto" || t == "default"),
        "modalities" => null || value.as_array().is_some_and(|m| m.iter().all(|x| x == "text")),
        "best_of" => null || value.as_i64() == Some(1),
        "length_penalty" => null || value.as_f64() == Some(1.0),
        "prompt_logprobs"
        | "truncate_prompt_tokens"
        | "functions"
        | "function_call"
        | "audio"
        | "prediction"
        | "reasoning_effort"
        | "web_search_options"
        | "chat_template"
        | "chat_template_kwargs"
        | "documents" => null,
        _ => return None,
    })
}

#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    pub prompt: PromptInput,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    /// A string, or OpenAI's list of content parts (only `text` parts: the models are
    /// text-only); null for an assistant turn without text.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// An assistant turn's calls (rendered back as `<tool_call>` blocks).
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl ChatMessageIn {
    /// The message's text: text parts joined by newlines (as vLLM does).
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(MessageContent::Text(t)) => Ok(t.clone()),
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => texts.push(t.as_str()),
                        ("text", None) => {
                            return Err(ApiError::invalid("messages", "a text content part needs `text`"))
                        }
                        (other, _) => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!("content parts of type `{other}` are not supported: the model reads text only"),
                            ))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatBody {
    pub messages: Vec<ChatMessageIn>,
    #[serde(flatten)]
    pub common: Common,
}

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub min_tokens: usize,
    pub cache_salt: Option<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub priority: i32,
    /// Log-probabilities of each token with this many alternatives (`None`: not asked).
    pub logprobs: Option<u8>,
    /// Structured output: the grammar every choice's text must match.
    pub grammar: Option<tandem_engine::GrammarSpec>,
    /// OpenAI's `logit_bias`, parsed.
    pub logit_bias: Vec<(u32, f32)>,
    /// Chat with tools offered: answers are parsed for `<tool_call>` blocks.
    pub tools: bool,
    /// Refuse at admission when the predicted time to first token exceeds this.
    pub ttft_deadline: Option<std::time::Duration>,
    /// OpenAI's `parallel_tool_calls` (default true): `false` keeps the first call only.
    pub parallel_tool_calls: bool,
    /// Completions' `echo`: this prompt text goes before each choice's (set by the route).
    pub echo: Option<String>,
}

/// Most alternatives `top_logprobs` / `logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// Most choices per prompt.
pub const MAX_N: usize = 16;

/// Most prompts in one completions request, and most choices (prompts × n) in all.
pub const MAX_PROMPTS: usize = 64;
pub const MAX_CHOICES: usize = 256;

/// Chat messages as the tokenizer's template takes them (content parts joined; a non-text part
/// is a 400). Tool turns in the Hermes format: an assistant's `tool_calls` as `<tool_call>`
/// blocks, a `tool` result as a user turn holding a `<tool_response>` (as Qwen2.5's template).
pub fn chat_messages(msgs: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    msgs.iter()
        .map(|m| {
            let text = m.text()?;
            Ok(match m.role.as_str() {
                "assistant" if m.tool_calls.is_some() => {
                    ChatMessage::new("assistant", &crate::tools::assistant_text(&text, m.tool_calls.as_ref()))
                }
                "tool" => ChatMessage::new("user", &crate::tools::tool_response_text(&text)),
                role => ChatMessage::new(role, &text),
            })
        })
        .collect()
}

/// Parses a JSON body, turning serde's message into a 400.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Invalid { message: format!("invalid request body: {e}"), param: None })
}

impl Common {
    /// `logit_bias` as (token, bias) pairs: keys token ids, values −100..=100 (OpenAI's range).
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let bad = |why: String| ApiError::invalid("logit_bias", why);
        let map = match &self.logit_bias {
            None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
            Some(serde_json::Value::Object(m)) => m,
            Some(_) => return Err(bad("expected an object of token id → bias".into())),
        };
        if map.len() > 300 {
            return Err(bad(format!("at most 300 entries, got {}", map.len())));
        }
        map.iter()
            .map(|(k, v)| {
                let id: u32 = k.trim().parse().map_err(|_| bad(format!("`{k}` is not a token id")))?;
                match v.as_f64() {
                    Some(b) if (-100.0..=100.0).contains(&b) => Ok((id, b as f32)),
                    _ => Err(bad(format!("the bias of {id} must be a number from -100 to 100"))),
                }
            })
            .collect()
    }

    /// A 400 for a field asked for but not implemented, or one neither OpenAI nor vLLM define.
    pub fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "`suffix` (fill in the middle) is not supported by this server"));
        }
        if self.echo == Some(true) && self.logprobs.as_ref().is_some_and(|l| !(l.is_null() || l == false)) {
            return Err(ApiError::invalid(
                "echo",
                "`echo` with `logprobs` (the prompt's log-probabilities) is not supported by this server",
            ));
        }
        for (name, value) in &self.other {
            match inert_field(name, value) {
                Some(true) => {}
                Some(false) => {
                    return Err(ApiError::invalid(
                        name.clone(),
                        format!("`{name}` = {value} is not supported by this server (only its default is)"),
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        name.clone(),
                        format!("Unrecognized request argument supplied: {name}"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Checks ranges and builds the request for `prompt` (already tokenized).
    pub fn validate(&self, prompt: Vec<u32>, max_model_len: usize) -> Result<GenRequest, ApiError> {
        self.refuse_unsupported()?;
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        if prompt.len() >= max_model_len {
            return Err(ApiError::invalid(
                "prompt",
                format!("the prompt has {} tokens; this model's context is {max_model_len}", prompt.len()),
            ));
        }
        let room = max_model_len - prompt.len();
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => room.min(256),
            Some(m) if m < 1 => {
                return Err(ApiError::invalid("max_tokens", format!("max_tokens must be at least 1, got {m}")))
            }
            Some(m) if m as u64 > room as u64 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!(
                        "max_tokens {m} + {} prompt tokens exceeds the {max_model_len}-token context",
                        prompt.len()
                    ),
                ))
            }
            Some(m) => m as usize,
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::invalid("temperature", "temperature must be between 0 and 2"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 && k <= u32::MAX as i64 => k as u32,
            Some(k) => return Err(ApiError::invalid("top_k", format!("top_k must be -1, 0 or positive, got {k}"))),
        };
        let n = match self.n {
            None => 1,
            Some(n) if n >= 1 && n as usize <= MAX_N => n as usize,
            Some(n) => return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_N}, got {n}"))),
        };
        let logprobs = self.logprobs()?;
        let penalty = |param: &'static str, v: Option<f64>| match v {
            None => Ok(0.0),
            Some(x) if x.is_finite() && (-2.0..=2.0).contains(&x) => Ok(x as f32),
            Some(_) => Err(ApiError::invalid(param, format!("{param} must be between -2 and 2"))),
        };
        let (presence_penalty, frequency_penalty) = (
            penalty("presence_penalty", self.presence_penalty)?,
            penalty("frequency_penalty", self.frequency_penalty)?,
        );
        let repetition_penalty = match self.repetition_penalty {
            None => 1.0,
            Some(x) if x.is_finite() && x > 0.0 => x as f32,
            Some(_) => return Err(ApiError::invalid("repetition_penalty", "repetition_penalty must be above 0")),
        };
        let min_tokens = match self.min_tokens {
            None => 0,
            Some(m) if m >= 0 && m as u64 <= max_tokens as u64 => m as usize,
            Some(m) => {
                return Err(ApiError::invalid(
                    "min_tokens",
                    format!("min_tokens must be between 0 and max_tokens ({max_tokens}), got {m}"),
                ))
            }
        };
        let stop_token_ids = self
            .stop_token_ids
            .iter()
            .flatten()
            .map(|&t| {
                u32::try_from(t).map_err(|_| ApiError::invalid("stop_token_ids", format!("{t} is not a token id")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let min_p = match self.min_p {
            None => 0.0,
            Some(x) if x.is_finite() && (0.0..=1.0).contains(&x) => x as f32,
            Some(_) => return Err(ApiError::invalid("min_p", "min_p must be between 0 and 1")),
        };
        let ttft_deadline = match self.ttft_deadline_ms {
            None => None,
            Some(ms) if ms.is_finite() && ms > 0.0 && ms <= 3.6e6 => {
                Some(std::time::Duration::from_secs_f64(ms / 1000.0))
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "ttft_deadline_ms",
                    "ttft_deadline_ms must be above 0 and at most an hour",
                ))
            }
        };
        if self.cache_salt.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(ApiError::invalid("cache_salt", "cache_salt must not be empty"));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) if v.len() <= 4 => v.clone(),
            Some(StopInput::Many(_)) => return Err(ApiError::invalid("stop", "at most 4 stop sequences")),
        };
        Ok(GenRequest {
            prompt,
            max_tokens,
            sampler: SamplerParams {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                seed: self.seed,
                stream_offset: 0,
                logprobs,
                repetition_penalty,
                presence_penalty,
                frequency_penalty,
                min_p,
            },
            stop,
            stop_token_ids,
            min_tokens,
            cache_salt: salt(self.cache_salt.as_deref(), self.tenant),
            grammar: crate::structured::grammar(self)?,
            logit_bias: self.logit_bias()?,
            tools: false,
            ttft_deadline,
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            echo: None,
            n,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            priority: self.priority.unwrap_or(0),
            logprobs,
        })
    }

    /// `logprobs` / `top_logprobs` as the number of alternatives to report, if asked.
    fn logprobs(&self) -> Result<Option<u8>, ApiError> {
        use serde_json::Value;
        let range = |param: &'static str, k: i64| {
            if (0..=MAX_TOP_LOGPROBS).contains(&k) {
                Ok(k as u8)
            } else {
                Err(ApiError::invalid(param, format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {k}")))
            }
        };
        let top = self.top_logprobs.map(|k| range("top_logprobs", k)).transpose()?;
        match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => match top {
                Some(k) if k > 0 => Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
                _ => Ok(None),
            },
            Some(Value::Bool(true)) => Ok(Some(top.unwrap_or(0))),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(k) => range("logprobs", k).map(Some),
                None => Err(ApiError::invalid("logprobs", "logprobs must be a boolean or an integer")),
            },
            Some(_) => Err(ApiError::invalid("logprobs", "logprobs must be a boolean or an integer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(json: &str) -> Common {
        parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn validation_rejects_each_bad_parameter() {
        let p = vec![1, 2, 3];
        for (json, param) in [
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"max_tokens": -5}"#, "max_tokens"),
            (r#"{"max_tokens": 1000000000000}"#, "max_tokens"),
            (r#"{"temperature": 3}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"top_k": -7}"#, "top_k"),
            (r#"{"n": 0}"#, "n"),
            (r#"{"n": 17}"#, "n"),
            (r#"{"stop": ["a","b","c","d","e"]}"#, "stop"),
            (r#"{"logprobs": 21}"#, "logprobs"),
            (r#"{"logprobs": "yes"}"#, "logprobs"),
            (r#"{"top_logprobs": 2}"#, "top_logprobs"),
            (r#"{"logprobs": true, "top_logprobs": 99}"#, "top_logprobs"),
            (r#"{"presence_penalty": 2.5}"#, "presence_penalty"),
            (r#"{"frequency_penalty": -3}"#, "frequency_penalty"),
            (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"logit_bias": {"x": 5}}"#, "logit_bias"),
            (r#"{"logit_bias": {"7": 101}}"#, "logit_bias"),
            (r#"{"response_format": {"type": "yaml"}}"#, "response_format"),
            (r#"{"structured_outputs": {"json": 3}}"#, "structured_outputs"),
            (r#"{"echo": true, "logprobs": 1}"#, "echo"),
            (r#"{"frobnicate": 1}"#, "frobnicate"),
            (r#"{"best_of": 3}"#, "best_of"),
            (r#"{"store": true}"#, "store"),
            (r#"{"functions": [{"name": "f"}]}"#, "functions"),
            (r#"{"suffix": "x"}"#, "suffix"),
        ] {
            match common(json).validate(p.clone(), 100) {
                Err(ApiError::Invalid { param: Some(got), .. }) => assert_eq!(got, param, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        // 100-token context: 97 + 3 = 100 fits, 98 does not.
        assert!(common(r#"{"max_tokens": 97}"#).validate(p.clone(), 100).is_ok());
        assert!(common(r#"{"max_tokens": 98}"#).validate(p.clone(), 100).is_err());
        assert!(common("{}").validate(vec![], 100).is_err());
        // Clients' defaults for the unsupported features are accepted.
        let defaults = r#"{"logprobs": false, "top_logprobs": 0, "presence_penalty": 0, "frequency_penalty": 0.0,
            "logit_bias": {}, "tools": [], "response_format": {"type": "text"}, "echo": false, "suffix": "",
            "user": "u-1", "store": false, "best_of": 1, "service_tier": "auto", "modalities": ["text"],
            "skip_special_tokens": true, "functions": null}"#;
        assert_eq!(common(defaults).validate(p.clone(), 100).unwrap().logprobs, None);
        assert_eq!(
            common(r#"{"logprobs": true, "top_logprobs": 3}"#).validate(p.clone(), 100).unwrap().logprobs,
            Some(3)
        );
        assert_eq!(common(r#"{"logprobs": true}"#).validate(p.clone(), 100).unwrap().sampler.logprobs, Some(0));
        assert_eq!(common(r#"{"logprobs": 2}"#).validate(p.clone(), 100).unwrap().logprobs, Some(2));
        assert!(common("{}").validate(vec![0; 100], 100).is_err(), "no room left to generate");
    }

    #[test]
    fn defaults_and_extensions() {
        let r = common(r#"{"stop": "x", "top_k": 5, "seed": 9, "ignore_eos": true, "priority": 3, "stream": true, "stream_options": {"include_usage": true}}"#)
            .validate(vec![1], 100)
            .unwrap();
        assert_eq!(
            (r.stop, r.sampler.top_k, r.sampler.seed, r.ignore_eos, r.priority),
            (vec!["x".to_string()], 5, Some(9), true, 3)
        );
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, 99, "default: min(room, 256)");
        assert!(parse::<Common>(b"{not json").is_err());
        assert!(parse::<Common>(br#"{"max_tokens": "ten"}"#).is_err(), "wrong types are 400s");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Any outcome of parsing + validation must be success or a 400.
    fn check(bytes: &[u8]) {
        let prompt = vec![1, 2, 3];
        for r in [
            parse::<CompletionBody>(bytes).and_then(|b| b.common.validate(prompt.clone(), 64)),
            parse::<ChatBody>(bytes).and_then(|b| b.common.validate(prompt.clone(), 64)),
        ] {
            match r {
                Ok(g) => assert!(g.max_tokens >= 1 && g.max_tokens <= 61 && (1..=MAX_N).contains(&g.n)),
                Err(ApiError::Invalid { .. }) => {}
                Err(other) => panic!("not a 400: {other:?}"),
            }
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            "[a-z ]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const KEYS: [&str; 14] = [
        "prompt",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "ignore_eos",
        "priority",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            check(&bytes);
        }

        #[test]
        fn arbitrary_fields_with_arbitrary_values_are_ok_or_400(
            fields in prop::collection::vec((0..KEYS.len(), json_value()), 0..8)
        ) {
            let mut obj = serde_json::Map::new();
            for (k, v) in fields {
                obj.insert(KEYS[k].to_string(), v);
            }
            check(serde_json::Value::Object(obj).to_string().as_bytes());
        }
    }
}
