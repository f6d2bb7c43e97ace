//! [`WeightFormat`]: how a loaded model holds its linear-layer weights — chosen per model at
//! load, as mistral.rs's in-situ quantization (`--isq Q8_0`) does.

use std::fmt;
use std::str::FromStr;

use crate::ExecError;

/// How the CPU model holds its linear-layer weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// f32 for a file whose weights are f32/f16/bf16; 4-bit for a GGUF file whose layers are
    /// all Q4_1 (their own grid, kept exactly); int8 for other quantized GGUF files (whose
    /// weights already sit on a coarser grid than int8's).
    #[default]
    Auto,
    /// f32: the file's values exactly (GGUF dequantized). The parity tests run this.
    F32,
    /// int8 weights × int8 activations in groups of 32 (W8A8, llama.cpp's Q8_0 × Q8_0).
    Q8,
    /// 4-bit weights (`d·q + m` per group of 32, Q4_1's grid) × int8 activations — llama.cpp's
    /// arithmetic for a Q4_1 file, whose blocks it keeps exactly; the LM head is int8. Half the
    /// bytes of `Q8` a decode step reads; not smoothed, so a little less accurate.
    Q4,
}

/// How a model file stores its linear layers' weights: what [`WeightFormat::Auto`] resolves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredWeights {
    /// f32, f16 or bf16 (safetensors, or a float GGUF file).
    Float,
    /// Every layer matrix Q4_1 (the output matrix may differ).
    Q4_1,
    /// Any other quantized GGUF file.
    Quantized,
}

impl WeightFormat {
    /// The concrete format for a file whose weights are stored as `stored`.
    pub fn resolve(self, stored: StoredWeights) -> WeightFormat {
        match (self, stored) {
            (WeightFormat::Auto, StoredWeights::Float) => WeightFormat::F32,
            (WeightFormat::Auto, StoredWeights::Q4_1) => WeightFormat::Q4,
            (WeightFormat::Auto, StoredWeights::Quantized) => WeightFormat::Q8,
            (other, _) => other,
        }
    }
}

impl WeightFormat {
    /// The format of the LM head in a model whose layers are in this one: int8 under `Q4`, as a
    /// GGUF file stores its output (or tied embedding) matrix on a finer grid than its layers
    /// (Q8_0 in the default model's file).
    pub fn lm_head(self) -> WeightFormat {
        match self {
            WeightFormat::Q4 => WeightFormat::Q8,
            other => other,
        }
    }
}

impl FromStr for WeightFormat {
    type Err = ExecError;

    fn from_str(s: &str) -> Result<Self, ExecError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WeightFormat::Auto),
            "f32" => Ok(WeightFormat::F32),
            "q8" | "q8_0" | "int8" => Ok(WeightFormat::Q8),
            "q4" | "q4_1" | "int4" => Ok(WeightFormat::Q4),
            other => Err(ExecError::UnknownWeightFormat(other.to_string())),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::Auto => "auto",
            WeightFormat::F32 => "f32",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q4 => "q4",
        })
    }
}
