//! The tensor (CUDA-path) forward on the CPU device, against the CPU executor's forward: the
//! same logits for prefills and decodes through a paged cache with scattered block tables, a
//! batch equal to its sequences run alone, and swap-out/in preserving the cache.

use std::sync::OnceLock;

use candle_core::{DType, Device};
use tandem_core::BlockId;
use tandem_executor::cpu::PagedKvCache;
use tandem_executor::model::{load_model, LoadedModel, SeqSlice};
use tandem_executor::store::default_model;
use tandem_executor::tensor::{TensorKvCache, TensorModel, TensorSeq};

fn loaded() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&default_model().expect("default model")).expect("load"))
}

fn tensor_model() -> &'static TensorModel {
    static M: OnceLock<TensorModel> = OnceLock::new();
    M.get_or_init(|| TensorModel::from_cpu(&loaded().model, &Device::Cpu, DType::F32).unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

#[test]
fn prefill_and_decode_match_the_cpu_forward() {
    let m = &loaded().model;
    let c = &m.config;
    let ids = loaded().tokenizer.encode("The capital of France is").unwrap();
    // Blocks of 4 tokens, in a scattered order.
    let table: Vec<BlockId> = [7u32, 2, 9, 0, 5, 3].into_iter().map(BlockId).collect();
    let mut cpu_cache = PagedKvCache::new(c.layers, c.kv_dim(), 4, 10, 0);
    let mut dev_cache = TensorKvCache::new(tensor_model(), 4, 10).unwrap();
    let n = ids.len();
    let positions: Vec<usize> = (0..n).collect();
    let cpu = m
        .forward(
            &ids,
            &positions,
            &[SeqSlice { start_row: 0, len: n, start_pos: 0, table: &table }],
            &[n - 1],
            &mut cpu_cache,
        )
        .unwrap();
    let dev = tensor_model()
        .forward(
            &ids,
            &positions,
            &[TensorSeq { start_row: 0, len: n, start_pos: 0, table: &table }],
            &[n - 1],
            &mut dev_cache,
        )
        .unwrap();
    assert!(max_diff(&cpu[0], &dev[0]) < 1e-3, "prefill: max |Δ| = {}", max_diff(&cpu[0], &dev[0]));
    // Three decode steps through the caches.
    let mut next = argmax(&cpu[0]) as u32;
    for step in 0..3 {
        let p = n + step;
        let cpu = m
            .forward(
                &[next],
                &[p],
                &[SeqSlice { start_row: 0, len: 1, start_pos: p, table: &table }],
                &[0],
                &mut cpu_cache,
            )
            .unwrap();
        let dev = tensor_model()
            .forward(
                &[next],
                &[p],
                &[TensorSeq { start_row: 0, len: 1, start_pos: p, table: &table }],
                &[0],
                &mut dev_cache,
            )
            .unwrap();
        assert!(max_diff(&cpu[0], &dev[0]) < 1e-3, "decode {step}: max |Δ| = {}", max_diff(&cpu[0], &dev[0]));
        assert_eq!(argmax(&cpu[0]), argmax(&dev[0]));
        next = argmax(&dev[0]) as u32;
    }
}

#[test]
fn a_batch_gives_what_its_sequences_give_alone() {
    let t = &loaded().tokenizer;
    let (a, b) = (t.encode("Hello there").unwrap(), t.encode("One, two, three, four, five,").unwrap());
    let (ta, tb): (Vec<BlockId>, Vec<BlockId>) = ((0..4).map(BlockId).collect(), (4..8).map(BlockId).collect());
    let alone = |ids: &[u32], table: &[BlockId]| {
        let mut cache = TensorKvCache::new(tensor_model(), 4, 8).unwrap();
        let pos: Vec<usize> = (0..ids.len()).collect();
        tensor_model()
            .forward(
                ids,
                &pos,
                &[TensorSeq { start_row: 0, len: ids.len(), start_pos: 0, table }],
                &[ids.len() - 1],
                &mut cache,
            )
            .unwrap()
            .remove(0)
    };
    let (la, lb) = (alone(&a, &ta), alone(&b, &tb));
    let mut cache = TensorKvCache::new(tensor_model(), 4, 8).unwrap();
    let ids: Vec<u32> = a.iter().chain(&b).copied().collect();
    let pos: Vec<usize> = (0..a.len()).chain(0..b.len()).collect();
    let seqs = [
        TensorSeq { start_row: 0, len: a.len(), start_pos: 0, table: &ta },
        TensorSeq { start_row: a.len(), len: b.len(), start_pos: 0, table: &tb },
    ];
    let both = tensor_model().forward(&ids, &pos, &seqs, &[a.len() - 1, ids.len() - 1], &mut cache).unwrap();
    assert!(max_diff(&both[0], &la) < 1e-4 && max_diff(&both[1], &lb) < 1e-4);
    assert_eq!((argmax(&both[0]), argmax(&both[1])), (argmax(&la), argmax(&lb)));
}

#[test]
fn bad_steps_are_errors() {
    let mut cache = TensorKvCache::new(tensor_model(), 4, 2).unwrap();
    let table = [BlockId(5)];
    let seq = [TensorSeq { start_row: 0, len: 1, start_pos: 0, table: &table }];
    assert!(tensor_model().forward(&[1], &[0], &seq, &[0], &mut cache).is_err(), "block beyond the pool");
    let table = [BlockId(0)];
    let seq = [TensorSeq { start_row: 0, len: 1, start_pos: 0, table: &table }];
    assert!(tensor_model().forward(&[u32::MAX], &[0], &seq, &[0], &mut cache).is_err(), "token beyond the vocabulary");
}

#[test]
fn the_parity_check_passes_on_the_cpu_device() {
    // `tandem parity`'s check, f32 on the CPU: the tensor model's logits equal the CPU
    // executor's (RMS difference ~1e-6 of the logits), and batched equals alone.
    use tandem_executor::tensor::parity::{check, ParityOptions};
    let opts = ParityOptions { prompt_lens: vec![5, 33], steps: 3, seed: 3 };
    let r = check(&loaded().model, &Device::Cpu, DType::F32, &opts).unwrap();
    assert_eq!(r.vs_reference.positions, 8, "2 prompts × (prefill + 3 steps)");
    assert!(r.vs_reference.rel_rms < 1e-4, "{r:?}");
    assert_eq!(r.vs_reference.top1_agree, 8, "{r:?}");
    assert!(r.batched_vs_alone.rel_rms < 1e-4 && r.greedy_batch_invariant, "{r:?}");
}
