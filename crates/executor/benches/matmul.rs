//! f32 (candle/gemm) vs int8 (`Q8Matrix`) vs 4-bit (`Q4Matrix`) matmul at the CPU model's shapes (SmolLM2-135M:
//! hidden 576, intermediate 1536, vocab 49152) for decode batches of 1, 8 and 32 rows and a
//! 512-token prefill chunk. `cargo bench -p tandem-executor --bench matmul`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tandem_executor::cpu::q4::Q4Matrix;
use tandem_executor::cpu::q8::Q8Matrix;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn matmul(c: &mut Criterion) {
    // (name, k, n): fused gate/up, down, LM head.
    let shapes = [("gate_up", 576, 3072), ("down", 1536, 576), ("lm_head", 576, 49152)];
    for (name, k, n) in shapes {
        let w = values(k * n, 1);
        let wt = Tensor::from_slice(&w, (k, n), &Device::Cpu).unwrap();
        let q = Q8Matrix::quantize(&w, k, n);
        let q4 = Q4Matrix::quantize(&w, k, n);
        let mut group = c.benchmark_group(format!("matmul/{name}"));
        group.sample_size(10);
        for m in [1usize, 8, 32, 512] {
            if name == "lm_head" && m == 512 {
                continue;
            }
            let x = values(m * k, 2);
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            group.bench_with_input(BenchmarkId::new("f32", m), &x, |b, x| {
                b.iter(|| {
                    let xt = Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap();
                    xt.matmul(&wt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
            });
            group.bench_with_input(BenchmarkId::new("q8", m), &x, |b, x| b.iter(|| q.matmul(x, m)));
            group.bench_with_input(BenchmarkId::new("q4", m), &x, |b, x| b.iter(|| q4.matmul(x, m)));
        }
        group.finish();
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
