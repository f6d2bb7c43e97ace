//! The shape of a Llama-family model, read from GGUF metadata or an HF `config.json`.

use candle_core::quantized::gguf_file;

use crate::ExecError;

/// How RoPE pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's "normal" mode, used for `llama` GGUF files
    /// (their Q/K weights are permuted at conversion to match).
    Interleaved,
    /// Halves `(i, i + d/2)`: HF transformers, and llama.cpp's NeoX mode (`qwen2` GGUF files).
    Half,
}

/// Everything the forward needs to know about the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    pub max_position: usize,
    pub tie_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn bad(path: &str, problem: impl Into<crate::ErrorSource>) -> ExecError {
    ExecError::ModelFile { path: path.to_string(), problem: problem.into() }
}

impl LlamaConfig {
    /// From a GGUF file's metadata (architectures `llama` and `qwen2`).
    pub fn from_gguf(c: &gguf_file::Content, path: &str) -> Result<Self, ExecError> {
        let arch = c.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let rope_style = match arch.as_str() {
            "llama" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Half,
            other => return Err(bad(path, format!("unsupported architecture `{other}` (supported: llama, qwen2)"))),
        };
        let get = |key: &str| -> Result<&gguf_file::Value, ExecError> {
            c.metadata
                .get(&format!("{arch}.{key}"))
                .ok_or_else(|| bad(path, format!("metadata `{arch}.{key}` is missing")))
        };
        let int = |key: &str| -> Result<usize, ExecError> {
            get(key)?.to_u32().map(|v| v as usize).map_err(|e| bad(path, format!("`{arch}.{key}`: {e}")))
        };
        let float = |key: &str, default: f64| -> f64 {
            c.metadata.get(&format!("{arch}.{key}")).and_then(|v| v.to_f32().ok()).map_or(default, |v| v as f64)
        };
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let vocab = match c.metadata.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()) {
            Some(tokens) => tokens.len(),
            None => int("vocab_size")?,
        };
        let token_id = |key: &str| c.metadata.get(key).and_then(|v| v.to_u32().ok());
        let head_dim = match get("rope.dimension_count") {
            Ok(v) => v.to_u32().map(|v| v as usize).unwrap_or(hidden / heads.max(1)),
            Err(_) => hidden / heads.max(1),
        };
        let cfg = Self {
            layers: int("block_count")?,
            hidden,
            intermediate: int("feed_forward_length")?,
            heads,
            kv_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            vocab,
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: float("rope.freq_base", 10_000.0),
            rope_style,
            max_position: int("context_length").unwrap_or(4096),
            tie_embeddings: !c.tensor_infos.contains_key("output.weight"),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            architecture: arch,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// From an HF `config.json` (`LlamaForCausalLM`, `Qwen2ForCausalLM`).
    pub fn from_hf_json(json: &serde_json::Value, path: &str) -> Result<Self, ExecError> {
        let int = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let need = |k: &str| int(k).ok_or_else(|| bad(path, format!("`{k}` is missing or not a number")));
        let model_type = json.get("model_type").and_then(|v| v.as_str()).unwrap_or("llama").to_string();
        if !["llama", "qwen2", "mistral"].contains(&model_type.as_str()) {
            return Err(bad(path, format!("unsupported model_type `{model_type}` (supported: llama, qwen2, mistral)")));
        }
        let heads = need("num_attention_heads")?;
        let hidden = need("hidden_size")?;
        let eos = match json.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        let cfg = Self {
            architecture: model_type,
            layers: need("num_hidden_layers")?,
            hidden,
            intermediate: need("intermediate_size")?,
            heads,
            kv_heads: int("num_key_value_heads").unwrap_or(heads),
            head_dim: int("head_dim").unwrap_or(hidden / heads.max(1)),
            vocab: need("vocab_size")?,
            rms_eps: json.get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6),
            rope_theta: json.get("rope_theta").and_then(|v| v.as_f64()).unwrap_or(10_000.0),
            rope_style: RopeStyle::Half,
            max_position: int("max_position_embeddings").unwrap_or(4096),
            tie_embeddings: json.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false),
            bos_token_id: int("bos_token_id").map(|v| v as u32),
            eos_token_ids: eos,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// This shape as a Hugging Face `config.json` (what [`Self::from_hf_json`] reads back;
    /// the weights' RoPE layout is not part of it: HF checkpoints are always half-split).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let class = match self.architecture.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "mistral" => "MistralForCausalLM",
            _ => "LlamaForCausalLM",
        };
        serde_json::json!({
            "model_type": self.architecture, "architectures": [class],
            "hidden_size": self.hidden, "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "vocab_size": self.vocab,
            "rms_norm_eps": self.rms_eps, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position, "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_ids,
        })
    }

    fn validate(&self, path: &str) -> Result<(), ExecError> {
        if self.layers == 0 || self.hidden == 0 || self.heads == 0 || self.kv_heads == 0 || self.vocab == 0 {
            return Err(bad(path, format!("degenerate shape {self:?}")));
        }
        if !self.heads.is_multiple_of(self.kv_heads) || !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                path,
                format!(
                    "{} heads over {} KV heads of dim {} is not supported",
                    self.heads, self.kv_heads, self.head_dim
                ),
            ));
        }
        Ok(())
    }

    /// Checks a step's token ids and positions fit the model (vocabulary, positions).
    pub fn check_step(&self, ids: &[u32], positions: &[usize]) -> Result<(), ExecError> {
        if let Some(&p) = positions.iter().find(|&&p| p >= self.max_position) {
            return Err(ExecError::InvalidStep(format!(
                "position {p} beyond the model's {} positions",
                self.max_position
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(ExecError::InvalidStep(format!("token {bad} beyond the vocabulary of {}", self.vocab)));
        }
        Ok(())
    }

    /// K and V floats per token per layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes one KV block of `block_size` tokens takes across all layers (K and V), with
    /// elements of `dtype_bytes`.
    pub fn kv_bytes_per_block(&self, block_size: usize, dtype_bytes: usize) -> u64 {
        (2 * self.layers * block_size * self.kv_dim() * dtype_bytes) as u64
    }
}
