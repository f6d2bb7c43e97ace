//! Load-time choice of the input channels a 4-bit model multiplies in f32 — LLM.int8()'s
//! mixed-precision decomposition (Dettmers et al. 2022), for the activations only.
//!
//! A few channels of a linear layer's input carry values far above the rest, so quantizing a
//! row's group of 32 to int8 rounds the ordinary values in that group to a coarse grid. The int8
//! format moves them into the weights instead (SmoothQuant, [`super::smooth`]), which a 4-bit
//! file's grid cannot take without losing its exactness; so under [`super::WeightFormat::Q4`] the
//! [`OUTLIERS`] channels with the largest calibration maxima of each layer's input are zeroed
//! before quantizing and added back as `x_j · w_j` in f32 with the file's weights.
//!
//! The maxima come from the calibration text run through the f32 model, as for smoothing.

use super::smooth::{input_maxima, CALIBRATION_TEXT};
use super::weights::LlamaModel;
use crate::text::TextTokenizer;
use crate::ExecError;

/// Input channels computed in f32 per linear layer.
pub const OUTLIERS: usize = 8;

/// The `count` channels of `maxima` with the largest values, in increasing channel order.
fn largest(maxima: &[f32], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..maxima.len()).collect();
    order.sort_by(|&a, &b| maxima[b].total_cmp(&maxima[a]).then(a.cmp(&b)));
    order.truncate(count);
    order.sort_unstable();
    order
}

/// `model` (f32) with its layers in 4-bit weights and each layer input's outlier channels
/// multiplied apart; the LM head int8.
pub fn into_q4(model: LlamaModel, tokenizer: &TextTokenizer) -> Result<LlamaModel, ExecError> {
    let ids = tokenizer.encode_plain(CALIBRATION_TEXT)?;
    let maxima = input_maxima(&model, &ids)?;
    let channels: Vec<[Vec<usize>; 4]> =
        maxima.iter().map(|per| [0, 1, 2, 3].map(|i| largest(&per[i], OUTLIERS))).collect();
    model.into_q4(&channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_channels_in_channel_order() {
        // Maxima 1, 9, 3, 9, 0.5: the two largest are channels 1 and 3 (ties by channel).
        assert_eq!(largest(&[1.0, 9.0, 3.0, 9.0, 0.5], 2), vec![1, 3]);
        assert_eq!(largest(&[1.0, 2.0], 5), vec![0, 1]);
    }
}
