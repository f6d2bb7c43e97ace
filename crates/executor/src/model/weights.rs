//! The Llama-family model as loaded, independent of the device that runs it: config, weights
//! (embedding, per-layer norms and linear layers, LM head), RoPE tables, and [`SeqSlice`] — one
//! sequence's slice of a packed batch, the shape both forwards take. The CPU forward
//! (`crate::cpu`) runs it as is; the tensor executor (`crate::tensor`) converts it to device
//! tensors. The linear layers are held in the CPU's formats ([`Linear`]: f32, or our int8),
//! which the tensor path converts from f32.

use candle_core::Tensor;
use tandem_core::BlockId;

use super::config::LlamaConfig;
use super::format::WeightFormat;
use crate::cpu::Linear;
use crate::ExecError;

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// `hidden × (q + k + v)`.
    pub wqkv: Linear,
    pub bqkv: Option<Vec<f32>>,
    /// `heads·head_dim × hidden`.
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    /// `hidden × 2·intermediate` (gate then up).
    pub w_gate_up: Linear,
    /// `intermediate × hidden`.
    pub w_down: Linear,
}

impl Layer {
    pub(crate) fn into_format(self, f: WeightFormat) -> Result<Self, ExecError> {
        Ok(Layer {
            wqkv: self.wqkv.into_format(f)?,
            wo: self.wo.into_format(f)?,
            w_gate_up: self.w_gate_up.into_format(f)?,
            w_down: self.w_down.into_format(f)?,
            ..self
        })
    }

    /// This layer's linears (f32) in 4-bit weights, input channels `outliers[i]` of linear `i`
    /// ([`Self::linears`]' order) multiplied apart in f32.
    pub(crate) fn into_q4(self, outliers: &[Vec<usize>; 4]) -> Result<Self, ExecError> {
        Ok(Layer {
            wqkv: self.wqkv.into_q4(&outliers[0])?,
            wo: self.wo.into_q4(&outliers[1])?,
            w_gate_up: self.w_gate_up.into_q4(&outliers[2])?,
            w_down: self.w_down.into_q4(&outliers[3])?,
            ..self
        })
    }

    /// QKV, O, gate/up and down.
    pub fn linears(&self) -> [&Linear; 4] {
        [&self.wqkv, &self.wo, &self.w_gate_up, &self.w_down]
    }
}

/// A loaded model: config, weights and RoPE tables.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    /// `vocab × hidden`, for the embedding lookup.
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    /// `hidden × vocab`.
    pub lm_head: Linear,
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
}

/// One sequence's slice of a packed batch.
#[derive(Debug, Clone)]
pub struct SeqSlice<'a> {
    /// Rows of the batch (`start_row .. start_row + len`).
    pub start_row: usize,
    pub len: usize,
    /// Position of the first fed token.
    pub start_pos: usize,
    pub table: &'a [BlockId],
}

impl LlamaModel {
    pub fn new(
        config: LlamaConfig,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        lm_head: Linear,
    ) -> Result<Self, ExecError> {
        let half = config.head_dim / 2;
        let max = config.max_position.max(1);
        let (mut cos, mut sin) = (Vec::with_capacity(max * half), Vec::with_capacity(max * half));
        for p in 0..max {
            for i in 0..half {
                let inv = config.rope_theta.powf(-(2.0 * i as f64) / config.head_dim as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self { config, embed, layers, norm, lm_head, cos, sin })
    }

    /// This model with its linear layers in `format` (f32 → int8 quantizes; `Auto` keeps them).
    pub fn into_format(self, format: WeightFormat) -> Result<Self, ExecError> {
        let layers = self.layers.into_iter().map(|l| l.into_format(format)).collect::<Result<_, _>>()?;
        Ok(LlamaModel { layers, lm_head: self.lm_head.into_format(format.lm_head())?, ..self })
    }

    /// This model (f32) with its layers in 4-bit weights, layer `l`'s linear `i` multiplying
    /// input channels `outliers[l][i]` apart, and its LM head in [`WeightFormat::lm_head`]'s.
    pub(crate) fn into_q4(self, outliers: &[[Vec<usize>; 4]]) -> Result<Self, ExecError> {
        if outliers.len() != self.layers.len() {
            return Err(ExecError::Device("one outlier set per layer".into()));
        }
        let layers = self.layers.into_iter().zip(outliers).map(|(l, o)| l.into_q4(o)).collect::<Result<_, _>>()?;
        Ok(LlamaModel { layers, lm_head: self.lm_head.into_format(WeightFormat::Q4.lm_head())?, ..self })
    }

    /// Bytes of linear-layer weights (the matmuls' operands; embedding and norms excluded).
    pub fn linear_bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| l.linears()).map(Linear::bytes).sum::<usize>() + self.lm_head.bytes()
    }

    /// Bytes the loaded model holds: embedding, linear layers, norms, biases, RoPE tables (what
    /// [`super::model_bytes`] predicts from the config).
    pub fn memory_bytes(&self) -> usize {
        let small: usize = self
            .layers
            .iter()
            .map(|l| l.attn_norm.len() + l.ffn_norm.len() + l.bqkv.as_ref().map_or(0, Vec::len))
            .sum();
        self.embed.elem_count() * 4
            + self.linear_bytes()
            + 4 * (small + self.norm.len() + self.cos.len() + self.sin.len())
    }

    /// The format of the linear layers (the LM head's for a model without layers).
    pub fn weight_format(&self) -> WeightFormat {
        self.layers.first().map_or(&self.lm_head, |l| l.linears()[0]).format()
    }

    /// The RoPE tables, `max_position × head_dim/2` each, row-major: (cos, sin).
    pub fn rope_tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }
}
