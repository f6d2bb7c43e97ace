//! Loading a Llama-family model from a GGUF file or an HF directory (`config.json` +
//! `*.safetensors`), into f32 weights for the CPU forward. A missing, truncated or unsupported
//! file is an [`ExecError::ModelFile`] naming the file and the problem, never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::format::{StoredWeights, WeightFormat};
use super::weights::{Layer, LlamaModel};
use crate::cpu::Linear;
use crate::text::TextTokenizer;
use crate::ExecError;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelFiles {
    /// A `.gguf` file or a directory holding `config.json`.
    pub fn locate(path: &Path) -> Result<Self, ExecError> {
        let shown = path.display().to_string();
        if path.is_dir() {
            if !path.join("config.json").is_file() {
                return Err(ExecError::ModelFile { path: shown, problem: "directory has no config.json".into() });
            }
            Ok(ModelFiles::HfDir(path.to_path_buf()))
        } else if path.is_file() {
            Ok(ModelFiles::Gguf(path.to_path_buf()))
        } else {
            Err(ExecError::ModelFile { path: shown, problem: "no such file or directory".into() })
        }
    }
}

fn bad(path: &Path, problem: impl Into<crate::ErrorSource>) -> ExecError {
    ExecError::ModelFile { path: path.display().to_string(), problem: problem.into() }
}

/// Weights by our internal names (`embed`, `norm`, `lm_head`, `L.q`, `L.q_bias`, ...), each as
/// stored (`out × in`) in f32.
type Named = HashMap<String, Tensor>;

fn linear_t(w: &Named, name: &str, path: &Path) -> Result<Tensor, ExecError> {
    let t = w.get(name).ok_or_else(|| bad(path, format!("tensor `{name}` is missing")))?;
    Ok(t.t()?.contiguous()?)
}

fn vector(w: &Named, name: &str, path: &Path) -> Result<Vec<f32>, ExecError> {
    Ok(need(w, name, path)?.flatten_all()?.to_vec1::<f32>()?)
}

fn need<'a>(w: &'a Named, name: &str, path: &Path) -> Result<&'a Tensor, ExecError> {
    w.get(name).ok_or_else(|| bad(path, format!("tensor `{name}` is missing")))
}

/// Assembles the model from named f32 weights.
fn assemble(config: LlamaConfig, w: Named, path: &Path) -> Result<LlamaModel, ExecError> {
    let mut layers = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        let n = |s: &str| format!("{i}.{s}");
        let wqkv = Tensor::cat(
            &[linear_t(&w, &n("q"), path)?, linear_t(&w, &n("k"), path)?, linear_t(&w, &n("v"), path)?],
            1,
        )?;
        let bqkv = match (w.get(&n("q_bias")), w.get(&n("k_bias")), w.get(&n("v_bias"))) {
            (Some(q), Some(k), Some(v)) => Some(Tensor::cat(&[q, k, v], 0)?),
            _ => None,
        };
        let expect = config.hidden * (config.heads + 2 * config.kv_heads) * config.head_dim;
        if wqkv.elem_count() != expect {
            return Err(bad(
                path,
                format!("layer {i}: q/k/v weights have {} values, expected {expect}", wqkv.elem_count()),
            ));
        }
        let norm_ok = |v: Vec<f32>, what: &str| {
            if v.len() == config.hidden {
                Ok(v)
            } else {
                Err(bad(path, format!("layer {i}: {what} has {} values, expected {}", v.len(), config.hidden)))
            }
        };
        layers.push(Layer {
            attn_norm: norm_ok(vector(&w, &n("attn_norm"), path)?, "attention norm")?,
            wqkv: Linear::f32(wqkv)?,
            bqkv: bqkv.map(|b| b.to_vec1::<f32>()).transpose()?,
            wo: Linear::f32(linear_t(&w, &n("o"), path)?)?,
            ffn_norm: norm_ok(vector(&w, &n("ffn_norm"), path)?, "FFN norm")?,
            w_gate_up: Linear::f32(Tensor::cat(&[linear_t(&w, &n("gate"), path)?, linear_t(&w, &n("up"), path)?], 1)?)?,
            w_down: Linear::f32(linear_t(&w, &n("down"), path)?)?,
        });
    }
    let embed = need(&w, "embed", path)?.clone();
    if embed.dims() != [config.vocab, config.hidden] {
        return Err(bad(
            path,
            format!("embedding is {:?}, expected [{}, {}]", embed.dims(), config.vocab, config.hidden),
        ));
    }
    let lm_head = Linear::f32(match w.get("lm_head") {
        Some(h) => h.t()?.contiguous()?,
        None => embed.t()?.contiguous()?,
    })?;
    let norm = vector(&w, "norm", path)?;
    LlamaModel::new(config, embed, layers, norm, lm_head)
}

/// Maps a GGUF tensor name to ours.
fn gguf_name(name: &str) -> Option<String> {
    let simple = |s: &str| Some(s.to_string());
    match name {
        "token_embd.weight" => return simple("embed"),
        "output_norm.weight" => return simple("norm"),
        "output.weight" => return simple("lm_head"),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, field) = rest.split_once('.')?;
    let ours = match field {
        "attn_norm.weight" => "attn_norm",
        "ffn_norm.weight" => "ffn_norm",
        "attn_q.weight" => "q",
        "attn_k.weight" => "k",
        "attn_v.weight" => "v",
        "attn_q.bias" => "q_bias",
        "attn_k.bias" => "k_bias",
        "attn_v.bias" => "v_bias",
        "attn_output.weight" => "o",
        "ffn_gate.weight" => "gate",
        "ffn_up.weight" => "up",
        "ffn_down.weight" => "down",
        _ => return None,
    };
    Some(format!("{layer}.{ours}"))
}

/// Maps an HF safetensors name to ours.
fn hf_name(name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("embed".into()),
        "model.norm.weight" => return Some("norm".into()),
        "lm_head.weight" => return Some("lm_head".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, field) = rest.split_once('.')?;
    let ours = match field {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "self_attn.q_proj.weight" => "q",
        "self_attn.k_proj.weight" => "k",
        "self_attn.v_proj.weight" => "v",
        "self_attn.q_proj.bias" => "q_bias",
        "self_attn.k_proj.bias" => "k_bias",
        "self_attn.v_proj.bias" => "v_bias",
        "self_attn.o_proj.weight" => "o",
        "mlp.gate_proj.weight" => "gate",
        "mlp.up_proj.weight" => "up",
        "mlp.down_proj.weight" => "down",
        _ => return None,
    };
    Some(format!("{layer}.{ours}"))
}

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
}

/// How a GGUF file stores its matrices: all float, every layer matrix (`blk.*`) Q4_1, or
/// otherwise quantized.
fn stored_weights(content: &gguf_file::Content) -> StoredWeights {
    use candle_core::quantized::GgmlDType::{BF16, F16, F32, Q4_1};
    let matrices = || content.tensor_infos.iter().filter(|(_, t)| t.shape.rank() == 2);
    let mut layers = matrices().filter(|(name, _)| name.starts_with("blk.")).peekable();
    if layers.peek().is_some() && layers.all(|(_, t)| t.ggml_dtype == Q4_1) {
        StoredWeights::Q4_1
    } else if matrices().any(|(_, t)| !matches!(t.ggml_dtype, F32 | F16 | BF16)) {
        StoredWeights::Quantized
    } else {
        StoredWeights::Float
    }
}

/// A GGUF file's metadata and tensor index (the reader stays positioned for its tensors), and
/// the config read from it.
fn read_gguf(path: &Path) -> Result<(BufReader<File>, gguf_file::Content, LlamaConfig), ExecError> {
    let mut reader = BufReader::new(File::open(path).map_err(|e| bad(path, e))?);
    let content =
        gguf_file::Content::read(&mut reader).map_err(|e| bad(path, format!("not a readable GGUF file: {e}")))?;
    let config = LlamaConfig::from_gguf(&content, &path.display().to_string())?;
    Ok((reader, content, config))
}

/// The tokenizer in a GGUF file's metadata.
fn gguf_tokenizer(path: &Path, content: &gguf_file::Content, config: &LlamaConfig) -> Result<TextTokenizer, ExecError> {
    TextTokenizer::from_gguf(content, config)
        .map_err(|e| bad(path, format!("cannot build the tokenizer from its metadata: {e}")))
}

/// An HF directory's `config.json`.
fn read_hf_config(dir: &Path) -> Result<LlamaConfig, ExecError> {
    let cfg_path = dir.join("config.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| bad(&cfg_path, e))?)
            .map_err(|e| bad(&cfg_path, format!("not valid JSON: {e}")))?;
    LlamaConfig::from_hf_json(&json, &cfg_path.display().to_string())
}

/// Loads a GGUF file; also says how its linear weights are stored.
fn load_gguf(path: &Path) -> Result<(LoadedModel, StoredWeights), ExecError> {
    let (mut reader, content, config) = read_gguf(path)?;
    let tokenizer = gguf_tokenizer(path, &content, &config)?;
    let mut w = Named::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let stored = stored_weights(&content);
    for name in names {
        let Some(ours) = gguf_name(name) else { continue };
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| bad(path, format!("tensor `{name}` cannot be read (truncated file?): {e}")))?;
        w.insert(ours, q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?);
    }
    Ok((LoadedModel { model: assemble(config, w, path)?, tokenizer }, stored))
}

fn load_hf_dir(dir: &Path) -> Result<LoadedModel, ExecError> {
    let config = read_hf_config(dir)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(dir, "no *.safetensors file"));
    }
    let mut w = Named::new();
    for f in files {
        let tensors = candle_core::safetensors::load(&f, &Device::Cpu)
            .map_err(|e| bad(&f, format!("cannot read safetensors: {e}")))?;
        for (name, t) in tensors {
            if let Some(ours) = hf_name(&name) {
                w.insert(ours, t.to_dtype(DType::F32)?);
            }
        }
    }
    let tokenizer = TextTokenizer::from_hf_dir(dir, &config)?;
    Ok(LoadedModel { model: assemble(config, w, dir)?, tokenizer })
}

/// Bytes the model at `path` will take in memory once loaded in `format` (weights, embedding,
/// norms, RoPE tables; not the KV cache), read from its config without loading the weights —
/// what a memory budget must hold before any KV block.
pub fn model_bytes(path: &Path, format: WeightFormat) -> Result<(LlamaConfig, u64), ExecError> {
    let (config, stored) = match ModelFiles::locate(path)? {
        ModelFiles::Gguf(p) => {
            let (_, content, config) = read_gguf(&p)?;
            (config, stored_weights(&content))
        }
        ModelFiles::HfDir(d) => (read_hf_config(&d)?, StoredWeights::Float),
    };
    let f = format.resolve(stored);
    let c = &config;
    let (h, q, kv, i) = (c.hidden, c.heads * c.head_dim, c.kv_dim(), c.intermediate);
    let per_layer = Linear::bytes_for(f, h, q + 2 * kv)
        + Linear::bytes_for(f, q, h)
        + Linear::bytes_for(f, h, 2 * i)
        + Linear::bytes_for(f, i, h)
        + 4 * 2 * h
        + if c.architecture == "qwen2" { 4 * (q + 2 * kv) } else { 0 }; // Qwen2's QKV biases
    let rope = 2 * 4 * c.max_position.max(1) * (c.head_dim / 2);
    let total = 4 * c.vocab * h + c.layers * per_layer + Linear::bytes_for(f.lm_head(), h, c.vocab) + 4 * h + rope;
    Ok((config, total as u64))
}

/// The model's config and tokenizer only, without reading a weight: what a simulated device
/// (which has no weights) needs to speak text.
pub fn load_tokenizer(path: &Path) -> Result<(LlamaConfig, TextTokenizer), ExecError> {
    match ModelFiles::locate(path)? {
        ModelFiles::Gguf(p) => {
            let (_, content, config) = read_gguf(&p)?;
            let tokenizer = gguf_tokenizer(&p, &content, &config)?;
            Ok((config, tokenizer))
        }
        ModelFiles::HfDir(d) => {
            let config = read_hf_config(&d)?;
            let tokenizer = TextTokenizer::from_hf_dir(&d, &config)?;
            Ok((config, tokenizer))
        }
    }
}

/// Loads the model and tokenizer at `path` (a `.gguf` file or an HF directory) with f32 weights:
/// the file's values exactly.
pub fn load_model(path: &Path) -> Result<LoadedModel, ExecError> {
    load_model_as(path, WeightFormat::F32)
}

/// Loads the model at `path` with its linear layers in `format`; `Auto` means 4-bit for a
/// GGUF file whose layers are Q4_1, int8 for another quantized GGUF file and f32 otherwise.
pub fn load_model_as(path: &Path, format: WeightFormat) -> Result<LoadedModel, ExecError> {
    let (loaded, stored) = match ModelFiles::locate(path)? {
        ModelFiles::Gguf(p) => load_gguf(&p)?,
        ModelFiles::HfDir(d) => (load_hf_dir(&d)?, StoredWeights::Float),
    };
    let LoadedModel { mut model, tokenizer } = loaded;
    let format = format.resolve(stored);
    if format == WeightFormat::Q8 {
        // Int8 activations lose least when the inputs' outlier channels are folded into the
        // weights first (SmoothQuant): on the shipped evaluation text this keeps int8's perplexity
        // within 0.05% of f32's instead of 1.4% (docs/model.md).
        let ids = tokenizer.encode_plain(super::smooth::CALIBRATION_TEXT)?;
        super::smooth::smooth_for_int8(&mut model, &ids, super::smooth::ALPHA)?;
    }
    let model = match format {
        WeightFormat::Q4 => super::outliers::into_q4(model, &tokenizer)?,
        _ => model.into_format(format)?,
    };
    Ok(LoadedModel { model, tokenizer })
}
