//! Scoring a model on a text: at every position, the log-probability it gives the token that
//! follows (teacher forcing) and its own top choice — perplexity, and top-1 agreement between two
//! models (e.g. int8 weights against f32), the measures llama.cpp's `llama-perplexity` reports.

use tandem_core::BlockId;

use super::weights::{LlamaModel, SeqSlice};
use crate::cpu::PagedKvCache;
use crate::ExecError;

/// A model's predictions over one text.
#[derive(Debug, Clone, PartialEq)]
pub struct TextScore {
    /// The model's most likely next token after each position but the last.
    pub top1: Vec<u32>,
    /// `−log p(next token)` after each position but the last (natural log).
    pub nll: Vec<f64>,
}

impl TextScore {
    /// `exp(mean nll)`.
    pub fn perplexity(&self) -> f64 {
        (self.nll.iter().sum::<f64>() / self.nll.len().max(1) as f64).exp()
    }

    /// Share of positions where both pick the same top token.
    pub fn agreement(&self, other: &TextScore) -> f64 {
        let same = self.top1.iter().zip(&other.top1).filter(|(a, b)| a == b).count();
        same as f64 / self.top1.len().min(other.top1.len()).max(1) as f64
    }
}

/// Scores `ids` in prefill chunks of `chunk` tokens through a paged cache of 16-token blocks.
pub fn score_text(model: &LlamaModel, ids: &[u32], chunk: usize) -> Result<TextScore, ExecError> {
    let c = &model.config;
    let blocks = ids.len().div_ceil(16).max(1);
    let mut cache = PagedKvCache::new(c.layers, c.kv_dim(), 16, blocks, 0);
    let table: Vec<BlockId> = (0..blocks as u32).map(BlockId).collect();
    let mut score = TextScore { top1: Vec::new(), nll: Vec::new() };
    let mut start = 0;
    while start + 1 < ids.len() {
        let len = chunk.max(1).min(ids.len() - start);
        let positions: Vec<usize> = (start..start + len).collect();
        let seq = SeqSlice { start_row: 0, len, start_pos: start, table: &table };
        let rows: Vec<usize> = (0..len).collect();
        let logits = model.forward(&ids[start..start + len], &positions, &[seq], &rows, &mut cache)?;
        for (r, l) in logits.iter().enumerate() {
            let Some(&next) = ids.get(start + r + 1) else { break };
            let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f64 = l.iter().map(|&v| ((v - max) as f64).exp()).sum();
            let top = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
            score.top1.push(top);
            score.nll.push(sum.ln() - (l[next as usize] - max) as f64);
        }
        start += len;
    }
    Ok(score)
}
