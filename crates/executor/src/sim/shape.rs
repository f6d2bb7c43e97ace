//! Transformer shapes for the cost model (decoder-only, Llama family: GQA attention, gated MLP).

/// The numbers of a model the cost model needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub name: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// Total parameters (embedding counted once when tied).
    pub params: u64,
    /// Bytes per weight (2 for bf16, 1 for int8).
    pub dtype_bytes: u64,
    /// Bytes per KV element (2 for bf16; tandem's CPU executor keeps f32).
    pub kv_dtype_bytes: u64,
}

impl ModelShape {
    /// SmolLM2-135M (tandem's embedded default): 30 layers, hidden 576, 9 heads / 3 KV heads.
    pub fn smollm2_135m() -> Self {
        Self {
            name: "smollm2-135m",
            layers: 30,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            intermediate: 1536,
            vocab: 49_152,
            params: 134_515_008,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
        }
    }

    /// Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads / 2 KV heads × 64.
    pub fn qwen2_5_0_5b() -> Self {
        Self {
            name: "qwen2.5-0.5b",
            layers: 24,
            hidden: 896,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
            intermediate: 4864,
            vocab: 151_936,
            params: 494_032_768,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
        }
    }

    /// Qwen2.5-1.5B: 28 layers, hidden 1536, 12 heads / 2 KV heads × 128, tied embeddings.
    pub fn qwen2_5_1_5b() -> Self {
        Self {
            name: "qwen2.5-1.5b",
            layers: 28,
            hidden: 1536,
            heads: 12,
            kv_heads: 2,
            head_dim: 128,
            intermediate: 8960,
            vocab: 151_936,
            params: 1_543_714_304,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
        }
    }

    /// Llama-3-8B: 32 layers, hidden 4096, 32 heads / 8 KV heads × 128.
    pub fn llama3_8b() -> Self {
        Self {
            name: "llama3-8b",
            layers: 32,
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 14_336,
            vocab: 128_256,
            params: 8_030_261_248,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
        }
    }

    /// Looks a shape up by name (`smollm2-135m`, `qwen2.5-0.5b`, `qwen2.5-1.5b`, `llama3-8b`).
    pub fn by_name(name: &str) -> Option<Self> {
        [Self::smollm2_135m(), Self::qwen2_5_0_5b(), Self::qwen2_5_1_5b(), Self::llama3_8b()]
            .into_iter()
            .find(|m| m.name == name)
    }

    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> u64 {
        self.params * self.dtype_bytes
    }

    /// KV bytes per token across all layers: `2 (K,V) · layers · kv_heads · head_dim · dtype`.
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * (self.layers * self.kv_heads * self.head_dim) as u64 * self.kv_dtype_bytes
    }

    /// Parameters touched per token by the transformer layers (everything but the embedding
    /// table and the LM head, which are `vocab · hidden` each, or shared when tied).
    pub fn layer_params(&self) -> u64 {
        self.params.saturating_sub((self.vocab * self.hidden) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_per_token_matches_the_formula() {
        // Qwen2.5-0.5B: 2 · 24 · 2 · 64 · 2 bytes = 12,288 bytes per token.
        assert_eq!(ModelShape::qwen2_5_0_5b().kv_bytes_per_token(), 12_288);
        // Llama-3-8B: 2 · 32 · 8 · 128 · 2 = 131,072 bytes = 128 KiB per token.
        assert_eq!(ModelShape::llama3_8b().kv_bytes_per_token(), 131_072);
    }
}
