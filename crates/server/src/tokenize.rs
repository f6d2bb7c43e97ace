//! vLLM's `POST /tokenize` and `POST /detokenize`, at the server root as vLLM serves them (its
//! `vllm bench serve` and other clients count tokens with them): a prompt or chat messages to
//! token ids with the model's own tokenizer and template, and token ids back to text.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::openai::{chat_messages, parse, ChatMessageIn};
use crate::routes::{body, Shared};

fn yes() -> bool {
    true
}

/// `{"prompt": "..."}` or `{"messages": [...]}`, vLLM's fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeBody {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessageIn>>,
    /// Prompts: add the model's BOS where it wants one (vLLM's default `true`); messages:
    /// the template writes its own (default `false`).
    add_special_tokens: Option<bool>,
    /// Messages: open the assistant's turn (default `true`).
    #[serde(default = "yes")]
    add_generation_prompt: bool,
    /// Also return each token's text.
    #[serde(default)]
    return_token_strs: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<i64>,
}

/// `POST /tokenize`: `{"count", "max_model_len", "tokens", "token_strs"}`.
pub async fn tokenize(State(s): Shared, b: Result<Bytes, BytesRejection>) -> Result<Json<serde_json::Value>, ApiError> {
    let req: TokenizeBody = parse(&body(b)?)?;
    let m = s.models.acquire(req.model.as_deref()).await?;
    let tok = &m.tokenizer;
    // The text, and whether BOS is added by default (a prompt: yes; a rendered template
    // writes its own).
    let (text, special) = match (&req.prompt, &req.messages) {
        (Some(p), None) => (p.clone(), true),
        (None, Some(msgs)) => {
            let template =
                tok.chat_template().ok_or_else(|| ApiError::invalid("messages", "the model has no chat template"))?;
            let text = template
                .render(&chat_messages(msgs)?, req.add_generation_prompt, tok.bos_token(), tok.eos_token())
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            (text, false)
        }
        _ => return Err(ApiError::invalid("prompt", "give exactly one of `prompt` and `messages`")),
    };
    let ids = if req.add_special_tokens.unwrap_or(special) { tok.encode(&text) } else { tok.encode_plain(&text) }
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    let strs = req.return_token_strs.then(|| ids.iter().map(|&t| tok.token_text(t)).collect::<Vec<_>>());
    Ok(Json(json!({"count": ids.len(), "max_model_len": m.max_model_len, "tokens": ids, "token_strs": strs})))
}

/// `POST /detokenize`: `{"prompt": text}`.
pub async fn detokenize(
    State(s): Shared,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: DetokenizeBody = parse(&body(b)?)?;
    let m = s.models.acquire(req.model.as_deref()).await?;
    let vocab = m.tokenizer.vocab_size() as i64;
    if let Some(bad) = req.tokens.iter().find(|&&t| !(0..vocab).contains(&t)) {
        return Err(ApiError::invalid("tokens", format!("token id {bad} is outside the vocabulary of {vocab}")));
    }
    let ids: Vec<u32> = req.tokens.iter().map(|&t| t as u32).collect();
    let text = m.tokenizer.decode(&ids).map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({"prompt": text})))
}
