//! [`TextTokenizer`]: the `tokenizers` crate (no hub access), built from an HF `tokenizer.json`
//! or from a GGUF file's `tokenizer.ggml.*` metadata (byte-level BPE, llama.cpp's `gpt2`
//! tokenizer model, or SentencePiece BPE, its `llama` model: see [`super::spm`]), plus the
//! model's chat template, special tokens and whether prompts start with BOS.

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{PreTokenizerWrapper, Tokenizer};

use super::chat::ChatTemplate;
use super::spm::{special_tokens, CONTROL, USER_DEFINED};
use crate::model::LlamaConfig;
use crate::ExecError;

/// A model's tokenizer and chat template.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    tok: Tokenizer,
    template: Option<ChatTemplate>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Token ids that end generation (EOS and the template's end-of-turn tokens).
    pub eos_token_ids: Vec<u32>,
    /// Cached: `tokenizers` builds the whole vocabulary map to count it.
    vocab_size: usize,
    /// Prepended to encoded text that does not start with it (GGUF `add_bos_token`,
    /// `tokenizer_config.json`'s `add_bos_token`), as llama.cpp and transformers do.
    bos_to_add: Option<u32>,
}

fn tk(e: impl Into<crate::ErrorSource>) -> ExecError {
    ExecError::Tokenizer(e.into())
}

fn strings(v: &gguf_file::Value) -> Result<Vec<String>, ExecError> {
    v.to_vec().map_err(tk)?.iter().map(|x| x.to_string().cloned().map_err(tk)).collect()
}

impl TextTokenizer {
    /// From GGUF metadata (`tokenizer.ggml.model` `gpt2` or `llama`).
    pub fn from_gguf(c: &gguf_file::Content, config: &LlamaConfig) -> Result<Self, ExecError> {
        let meta = |k: &str| c.metadata.get(k);
        let flag = |k: &str| meta(k).and_then(|v| v.to_bool().ok());
        let model = meta("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let tokens = strings(meta("tokenizer.ggml.tokens").ok_or_else(|| tk("tokenizer.ggml.tokens missing"))?)?;
        let types: Vec<i32> = match meta("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
            Some(v) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let (tok, add_bos_default) = match model.as_str() {
            "gpt2" => (Self::gpt2(c, &tokens, &types)?, false),
            "llama" => {
                let scores: Vec<f32> = meta("tokenizer.ggml.scores")
                    .ok_or_else(|| tk("tokenizer.ggml.scores missing"))?
                    .to_vec()
                    .map_err(tk)?
                    .iter()
                    .map(|x| x.to_f32().map_err(tk))
                    .collect::<Result<_, _>>()?;
                let prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                (super::spm::spm_tokenizer(&tokens, &scores, &types, prefix)?, true)
            }
            other => {
                return Err(tk(format!(
                "tokenizer model `{other}` is not supported (byte-level BPE `gpt2` and SentencePiece BPE `llama` are)"
            )))
            }
        };
        let name = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        let template =
            meta("tokenizer.chat_template").and_then(|v| v.to_string().ok()).map(|s| ChatTemplate::new(s.clone()));
        let mut me = Self::finish(tok, template.transpose()?, name(config.bos_token_id), config)?;
        if flag("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default) {
            me.bos_to_add = config.bos_token_id;
        }
        Ok(me)
    }

    /// Byte-level BPE from `tokenizer.ggml.tokens` and `.merges`.
    fn gpt2(c: &gguf_file::Content, tokens: &[String], types: &[i32]) -> Result<Tokenizer, ExecError> {
        let meta = |k: &str| c.metadata.get(k);
        let merges = strings(meta("tokenizer.ggml.merges").ok_or_else(|| tk("tokenizer.ggml.merges missing"))?)?;
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> =
            merges.iter().filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string()))).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tk)?;
        let mut tok = Tokenizer::new(bpe);
        let pre = meta("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            // SmolLM: single digits, then GPT-2 byte-level splitting.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            _ => byte_level.into(),
        };
        tok.with_pre_tokenizer(Some(pre_tokenizer));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        // Control (3) and user-defined (4) tokens are matched whole in text, like <|im_start|>.
        tok.add_special_tokens(special_tokens(tokens, types, &[CONTROL, USER_DEFINED])).map_err(tk)?;
        Ok(tok)
    }

    /// From an HF directory: `tokenizer.json`, and `tokenizer_config.json` for the chat template.
    pub fn from_hf_dir(dir: &Path, config: &LlamaConfig) -> Result<Self, ExecError> {
        let path = dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&path).map_err(|e| ExecError::ModelFile {
            path: path.display().to_string(),
            problem: format!("cannot load the tokenizer: {e}").into(),
        })?;
        let tc: Option<serde_json::Value> =
            std::fs::read_to_string(dir.join("tokenizer_config.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
        let template = tc
            .as_ref()
            .and_then(|v| v.get("chat_template"))
            .and_then(|v| v.as_str())
            .map(|s| ChatTemplate::new(s.to_string()));
        let text = |key: &str| {
            tc.as_ref()
                .and_then(|v| v.get(key))
                .and_then(|v| v.as_str().map(String::from).or_else(|| v.get("content")?.as_str().map(String::from)))
        };
        let bos = text("bos_token").or_else(|| config.bos_token_id.and_then(|i| tok.id_to_token(i)));
        let mut me = Self::finish(tok, template.transpose()?, bos, config)?;
        if tc.as_ref().and_then(|v| v.get("add_bos_token")).and_then(|v| v.as_bool()) == Some(true) {
            me.bos_to_add = me.bos_token.as_deref().and_then(|b| me.tok.token_to_id(b));
        }
        if let Some(eos) = text("eos_token") {
            me.eos_token = Some(eos.clone());
            if let Some(id) = me.tok.token_to_id(&eos) {
                if !me.eos_token_ids.contains(&id) {
                    me.eos_token_ids.push(id);
                }
            }
        }
        Ok(me)
    }

    fn finish(
        tok: Tokenizer,
        template: Option<ChatTemplate>,
        bos: Option<String>,
        config: &LlamaConfig,
    ) -> Result<Self, ExecError> {
        let mut eos_ids = config.eos_token_ids.clone();
        // End-of-turn tokens of common templates also end a reply.
        for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
            if let Some(id) = tok.token_to_id(t) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        let eos = config.eos_token_ids.first().and_then(|&i| tok.id_to_token(i));
        let vocab_size = tok.get_vocab_size(true);
        Ok(Self { tok, template, bos_token: bos, eos_token: eos, eos_token_ids: eos_ids, vocab_size, bos_to_add: None })
    }

    /// Writes this tokenizer as a Hugging Face tokenizer directory (`tokenizer.json` and
    /// `tokenizer_config.json` with the special tokens, `add_bos_token` and the chat template),
    /// so that `transformers.AutoTokenizer.from_pretrained(dir)` — what `vllm bench serve`,
    /// guidellm and AIPerf load — encodes exactly as this server does, GGUF models included.
    pub fn write_hf_dir(&self, dir: &Path) -> Result<(), ExecError> {
        let io = |e: std::io::Error| tk(e);
        std::fs::create_dir_all(dir).map_err(io)?;
        self.save_json(&dir.join("tokenizer.json"))?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.bos_to_add.is_some(),
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_000_000_000u64,
            "chat_template": self.template.as_ref().map(ChatTemplate::source),
        });
        let text = serde_json::to_string_pretty(&config).map_err(tk)?;
        std::fs::write(dir.join("tokenizer_config.json"), text).map_err(io)
    }

    /// Token ids of `text`; special tokens written in the text are recognised, and BOS is
    /// prepended when the model wants it and the text (a rendered chat template, say) does not
    /// already start with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ExecError> {
        let ids = self.tok.encode(text, false).map_err(tk)?.get_ids().to_vec();
        Ok(match self.bos_to_add {
            Some(bos) if ids.first() != Some(&bos) => std::iter::once(bos).chain(ids).collect(),
            _ => ids,
        })
    }

    /// Token ids of `text` as written: special tokens in it recognised, no BOS added (vLLM's
    /// `add_special_tokens: false`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, ExecError> {
        Ok(self.tok.encode(text, false).map_err(tk)?.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens omitted.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ExecError> {
        self.tok.decode(ids, true).map_err(tk)
    }

    /// The text of one token on its own, special tokens included (for log-probability
    /// reports, as vLLM shows them); a token that is part of a UTF-8 character shows as U+FFFD.
    pub fn token_text(&self, id: u32) -> String {
        self.tok.decode(&[id], false).unwrap_or_default()
    }

    /// The tokenizer as HF `tokenizer.json` text (for libraries that read that format).
    pub fn to_json(&self) -> Result<String, String> {
        self.tok.to_string(false).map_err(|e| e.to_string())
    }

    /// Writes the tokenizer as an HF `tokenizer.json`.
    pub fn save_json(&self, path: &Path) -> Result<(), ExecError> {
        self.tok.save(path, false).map_err(tk)
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages` with the model's chat template (with the assistant's turn opened).
    pub fn apply_chat_template(&self, messages: &[super::ChatMessage]) -> Result<String, ExecError> {
        let t = self.template.as_ref().ok_or_else(|| ExecError::Template("the model has no chat template".into()))?;
        t.render(messages, true, self.bos_token(), self.eos_token())
    }
}
