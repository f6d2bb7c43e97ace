//! [`WeightFormat`]: how a loaded model holds its linear-layer weights — chosen per model at
//! load, as mistral.rs's in-situ quantization (`--isq Q8_0`) does.

use std::fmt;
use std::str::FromStr;

use crate::ExecError;

/// How the CPU model holds its linear-layer weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// f32 for a file whose weights are f32/f16/bf16, int8 for a quantized GGUF file (whose
    /// weights already sit on a coarser grid than int8's).
    #[default]
    Auto,
    /// f32: the file's values exactly (GGUF dequantized). The parity tests run this.
    F32,
    /// int8 weights × int8 activations in groups of 32 (W8A8, llama.cpp's Q8_0 × Q8_0).
    Q8,
}

impl WeightFormat {
    /// The concrete format for a file whose weights are `quantized` (or not).
    pub fn resolve(self, quantized: bool) -> WeightFormat {
        match self {
            WeightFormat::Auto if quantized => WeightFormat::Q8,
            WeightFormat::Auto => WeightFormat::F32,
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
        })
    }
}
