//! Structured output: grammars compiled by `llguidance` (the library vLLM, SGLang, llama.cpp and
//! mistral.rs use) over the model's own tokenizer, and the per-request [`Constraint`] the step
//! loop advances with every sampled token and asks for the next token mask.
//!
//! As vLLM's structured-output manager: the mask is computed on the engine's loop thread after
//! a step is scheduled and before it is handed to the device, so for the other requests it
//! overlaps the device running the previous step; the executor only applies the bit mask in
//! its sampler (`ScheduledSeq::allowed`). A constrained request is never scheduled with a
//! placeholder token (its mask needs the previous token), so it does not pipeline across steps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::{GrammarWithLexer, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use tandem_core::TokenId;
use tandem_executor::text::TextTokenizer;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

/// What the output must match (OpenAI's `response_format`, vLLM's `structured_outputs`).
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this schema (`json_schema`, `structured_outputs.json`).
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect; `structured_outputs.grammar`).
    Lark(String),
}

/// Why a grammar could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    #[error("the tokenizer cannot be used for structured output: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Invalid(String),
}

/// The model's tokenizer as llguidance sees it: every token's bytes in a trie, and the real
/// tokenizer for text the grammar forces.
struct Env {
    trie: TokTrie,
    tokenizer: TextTokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s).ok().and_then(|t| self.tokenizer.encode_plain(t).ok()) {
            Some(ids) => ids,
            None => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles grammars for one tokenizer (building its token trie once).
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab", &self.factory.tok_env().tok_trie().vocab_size()).finish()
    }
}

impl Grammars {
    /// The compiler for `tokenizer`'s vocabulary.
    pub fn new(tokenizer: &TextTokenizer) -> Result<Self, GrammarError> {
        let json: serde_json::Value = serde_json::from_str(&tokenizer.to_json().map_err(GrammarError::Tokenizer)?)
            .map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        let vocab = words.len().max(tokenizer.vocab_size());
        words.resize(vocab, Vec::new());
        let eos = tokenizer.eos_token_ids.first().copied().unwrap_or(0);
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, eos), &words);
        let env: TokEnv = Arc::new(Env { trie, tokenizer: tokenizer.clone() });
        let factory = ParserFactory::new_simple(&env).map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        Ok(Self { factory })
    }

    /// A fresh constraint for one request (each choice of `n` gets its own).
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, GrammarError> {
        let grammar = match spec {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(serde_json::json!({"type": "object"})),
            GrammarSpec::JsonSchema(s) => TopLevelGrammar::from_json_schema(s.clone()),
            GrammarSpec::Regex(r) => TopLevelGrammar::from_regex(r),
            GrammarSpec::Choice(c) if c.is_empty() => {
                return Err(GrammarError::Invalid("a choice needs at least one option".into()))
            }
            GrammarSpec::Choice(c) => {
                let alts: Vec<String> = c.iter().map(|s| serde_json::Value::String(s.clone()).to_string()).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            GrammarSpec::Lark(g) => TopLevelGrammar::from_grammar(GrammarWithLexer::from_lark(g.clone())),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| GrammarError::Invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid(e));
        }
        Ok(Constraint { matcher, mask_time: Duration::ZERO, masks: 0 })
    }
}

/// One request's grammar state.
pub struct Constraint {
    matcher: Matcher,
    /// Time spent computing masks, and how many.
    pub mask_time: Duration,
    pub masks: u64,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("masks", &self.masks).finish()
    }
}

impl Constraint {
    /// Advances past a sampled token (a token the mask did not allow puts the matcher in an
    /// error state, after which every token is allowed).
    pub fn consume(&mut self, token: TokenId) {
        if !self.matcher.is_stopped() {
            let _ = self.matcher.consume_token(token);
        }
    }

    /// The allowed next tokens as 32-bit words (bit `t % 32` of word `t / 32`); once the
    /// grammar is complete, only EOS. `None` when the matcher failed (no constraint then).
    pub fn mask(&mut self) -> Option<Vec<u32>> {
        let started = Instant::now();
        let mask = self.matcher.compute_mask_or_eos().ok().map(|m| m.as_slice().to_vec());
        self.mask_time += started.elapsed();
        self.masks += 1;
        mask
    }

    /// The grammar is complete: nothing but EOS may follow.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(mask: &[u32], t: u32) -> bool {
        mask.get(t as usize / 32).is_some_and(|w| w >> (t % 32) & 1 == 1)
    }

    #[test]
    fn a_choice_allows_only_its_options_then_eos() {
        let path = tandem_executor::store::default_model().expect("the default model");
        let tok = tandem_executor::model::load_model(&path).expect("load").tokenizer;
        let g = Grammars::new(&tok).unwrap();
        let mut c = g.compile(&GrammarSpec::Choice(vec!["yes".into(), "no".into()])).unwrap();
        let yes = tok.encode_plain("yes").unwrap();
        let mask = c.mask().unwrap();
        assert!(allowed(&mask, yes[0]), "the first token of `yes`");
        let other = tok.encode_plain(" maybe").unwrap();
        assert!(!allowed(&mask, other[0]), "` maybe` is not an option");
        for &t in &yes {
            c.consume(t);
        }
        let eos = tok.eos_token_ids[0];
        let done = c.mask().unwrap();
        assert!(allowed(&done, eos) && !allowed(&done, yes[0]), "only EOS after `yes`");
        assert!(g.compile(&GrammarSpec::JsonSchema(serde_json::json!({"type": "nonsense"}))).is_err());
    }
}
