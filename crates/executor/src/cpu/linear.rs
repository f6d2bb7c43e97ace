//! A linear layer's weights in the format the CPU forward multiplies with: f32 (candle's gemm,
//! exact to the file), int8 ([`Q8Matrix`], about four times faster at decode batch sizes and
//! a quarter of the memory) or 4-bit ([`Q4Matrix`], a Q4_1 file's own grid, half int8's bytes). The format is chosen per model at load ([`WeightFormat`]), as
//! mistral.rs's in-situ quantization (`--isq Q8_0`) does.

use candle_core::{Device, Tensor};

use super::q4::Q4Matrix;
use super::q8::Q8Matrix;
use crate::model::WeightFormat;
use crate::ExecError;

/// One linear layer: `y = x · w` with `w` of `k` inputs × `n` outputs.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Contiguous f32 `k × n` tensor.
    F32(Tensor),
    Q8(Q8Matrix),
    Q4(Q4Matrix),
}

impl Linear {
    /// From an f32 tensor laid out `in × out`.
    pub fn f32(w: Tensor) -> Result<Self, ExecError> {
        if w.rank() != 2 {
            return Err(ExecError::Device(format!("a linear weight must be 2-D, got {:?}", w.dims()).into()));
        }
        Ok(Linear::F32(w.contiguous()?))
    }

    /// Inputs and outputs.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Linear::F32(w) => (w.dims()[0], w.dims()[1]),
            Linear::Q8(q) => (q.k(), q.n()),
            Linear::Q4(q) => (q.k(), q.n()),
        }
    }

    /// This layer in `format` (`Auto` keeps it as it is).
    pub fn into_format(self, format: WeightFormat) -> Result<Self, ExecError> {
        match (self, format) {
            (f32 @ Linear::F32(_), WeightFormat::Q8) => {
                let (values, k, n) = f32.f32_values()?;
                Ok(Linear::Q8(Q8Matrix::quantize(&values, k, n)))
            }
            (f32 @ Linear::F32(_), WeightFormat::Q4) => f32.into_q4(&[]),
            (same @ Linear::F32(_), WeightFormat::F32 | WeightFormat::Auto)
            | (same @ Linear::Q8(_), WeightFormat::Q8 | WeightFormat::Auto)
            | (same @ Linear::Q4(_), WeightFormat::Q4 | WeightFormat::Auto) => Ok(same),
            (held, asked) => {
                Err(ExecError::Device(format!("{} weights cannot be turned into {asked}", held.format()).into()))
            }
        }
    }

    /// The format these weights are held in.
    pub fn format(&self) -> WeightFormat {
        match self {
            Linear::F32(_) => WeightFormat::F32,
            Linear::Q8(_) => WeightFormat::Q8,
            Linear::Q4(_) => WeightFormat::Q4,
        }
    }

    /// This layer (f32) in 4-bit weights, input channels `outliers` multiplied in f32.
    pub fn into_q4(self, outliers: &[usize]) -> Result<Self, ExecError> {
        let (values, k, n) = self.f32_values()?;
        Ok(Linear::Q4(Q4Matrix::quantize_with_outliers(&values, k, n, outliers)))
    }

    /// An f32 layer's weights, `k × n` row-major, with `k` and `n`; an error for quantized ones
    /// (their f32 values are gone).
    pub fn f32_values(&self) -> Result<(Vec<f32>, usize, usize), ExecError> {
        match self {
            Linear::F32(w) => Ok((w.flatten_all()?.to_vec1::<f32>()?, w.dims()[0], w.dims()[1])),
            held => Err(ExecError::Device(format!("{} weights hold no f32 values", held.format()).into())),
        }
    }

    /// Bytes a `k × n` layer takes in `format` (`Auto` counts as f32).
    pub fn bytes_for(format: WeightFormat, k: usize, n: usize) -> usize {
        match format {
            WeightFormat::Q8 => Q8Matrix::bytes_for(k, n),
            WeightFormat::Q4 => Q4Matrix::bytes_with_outliers(k, n, crate::model::outliers::OUTLIERS),
            WeightFormat::F32 | WeightFormat::Auto => 4 * k * n,
        }
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        match self {
            Linear::F32(w) => w.elem_count() * 4,
            Linear::Q8(q) => q.bytes(),
            Linear::Q4(q) => q.bytes(),
        }
    }

    /// `x · w` for `x` of `m × k`, row-major; returns `m × n`.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>, ExecError> {
        let (k, _) = self.dims();
        if x.len() != m * k {
            return Err(ExecError::Device(format!("linear input has {} values, expected {m} × {k}", x.len()).into()));
        }
        match self {
            Linear::F32(w) => {
                let xt = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
                Ok(xt.matmul(w)?.flatten_all()?.to_vec1::<f32>()?)
            }
            Linear::Q8(q) => Ok(q.matmul(x, m)),
            Linear::Q4(q) => Ok(q.matmul(x, m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StoredWeights;

    #[test]
    fn formats_parse_and_resolve() {
        assert_eq!("Q8_0".parse::<WeightFormat>(), Ok(WeightFormat::Q8));
        assert_eq!("f32".parse::<WeightFormat>(), Ok(WeightFormat::F32));
        assert!("fp4".parse::<WeightFormat>().is_err());
        assert_eq!("q4_1".parse::<WeightFormat>(), Ok(WeightFormat::Q4));
        assert_eq!(WeightFormat::Auto.resolve(StoredWeights::Quantized), WeightFormat::Q8);
        assert_eq!(WeightFormat::Auto.resolve(StoredWeights::Q4_1), WeightFormat::Q4);
        assert_eq!(WeightFormat::Auto.resolve(StoredWeights::Float), WeightFormat::F32);
        assert_eq!(WeightFormat::F32.resolve(StoredWeights::Q4_1), WeightFormat::F32);
    }

    #[test]
    fn both_formats_multiply_alike() {
        // w = [[1, 2], [3, 4]] (in × out), x = [1, 1] → y = [4, 6]; int8 grids hold these
        // to within a scale step (4/127 ≈ 0.03 per product).
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
        let f = Linear::f32(w).unwrap();
        assert_eq!(f.forward(&[1.0, 1.0], 1).unwrap(), vec![4.0, 6.0]);
        let q = f.into_format(WeightFormat::Q8).unwrap();
        assert_eq!(q.dims(), (2, 2));
        let y = q.forward(&[1.0, 1.0], 1).unwrap();
        assert!((y[0] - 4.0).abs() < 0.1 && (y[1] - 6.0).abs() < 0.1, "{y:?}");
        assert!(q.forward(&[1.0], 1).is_err());
    }
}
