//! The real model on the CPU: parity with an independent numpy forward, end-to-end text, and
//! clear errors for bad model files. Uses the embedded default model (fetched once into the
//! cache by `tandem_executor::store::default_model`).

use std::sync::OnceLock;

use tandem_core::BlockId;
use tandem_executor::cpu::{Linear, PagedKvCache};
use tandem_executor::model::{load_model, load_model_as, model_bytes, score_text, LoadedModel, WeightFormat};
use tandem_executor::store::default_model;
use tandem_executor::text::{ChatMessage, IncrementalDecoder};
use tandem_executor::ExecError;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&default_model().expect("fetch the default model")).expect("load"))
}

fn int8_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model_as(&default_model().expect("fetch the default model"), WeightFormat::Q8).expect("load"))
}

fn int4_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model_as(&default_model().expect("fetch the default model"), WeightFormat::Q4).expect("load"))
}

/// Last-position logits of `ids`, run as one prefill through a fresh paged cache.
fn logits(ids: &[u32]) -> Vec<f32> {
    logits_of(model(), ids)
}

fn logits_of(loaded: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let m = &loaded.model;
    let c = &m.config;
    let mut cache = PagedKvCache::new(c.layers, c.kv_dim(), 16, 64, 0);
    let table: Vec<BlockId> = (0..64).map(BlockId).collect();
    let positions: Vec<usize> = (0..ids.len()).collect();
    let seq = tandem_executor::model::SeqSlice { start_row: 0, len: ids.len(), start_pos: 0, table: &table };
    m.forward(ids, &positions, &[seq], &[ids.len() - 1], &mut cache).unwrap().remove(0)
}

#[test]
fn logits_match_the_independent_numpy_reference() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2_parity");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}.json")).unwrap()).unwrap();
    let raw = std::fs::read(format!("{dir}.bin")).unwrap();
    let expected: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let vocab = meta["vocab"].as_u64().unwrap() as usize;
    for (i, prompt) in meta["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = prompt.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = logits(&ids);
        let want = &expected[i * vocab..(i + 1) * vocab];
        let max_diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("prompt {i}: {} tokens, max |Δlogit| = {max_diff:.2e}", ids.len());
        assert!(max_diff <= 1e-3, "prompt {i}: max |Δlogit| = {max_diff}");
        let argmax = got.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax as u64, meta["argmax"][i].as_u64().unwrap(), "prompt {i}: argmax");
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

#[test]
fn int8_weights_track_the_f32_logits() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2_parity");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}.json")).unwrap()).unwrap();
    assert_eq!(model().model.weight_format(), WeightFormat::F32);
    assert_eq!(int8_model().model.weight_format(), WeightFormat::Q8);
    for (i, prompt) in meta["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = prompt.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let (exact, q8) = (logits(&ids), logits_of(int8_model(), &ids));
        let spread = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let max_diff = exact.iter().zip(&q8).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let mean_diff = exact.iter().zip(&q8).map(|(a, b)| (a - b).abs()).sum::<f32>() / exact.len() as f32;
        eprintln!(
            "prompt {i}: max |Δlogit| int8 vs f32 = {max_diff:.3}, mean {mean_diff:.3} (max |logit| {spread:.1})"
        );
        // Measured: int8 rounding (weights and activations, groups of 32) moves logits by 0.1–0.5
        // on average and at most ~1.3 where they span ±20–30 — llama.cpp's Q8_0 activations do
        // the same. Bound: a tenth of the largest logit; the top token must not move.
        assert!(max_diff < 0.1 * spread, "prompt {i}: max |Δlogit| = {max_diff}");
        assert_eq!(argmax(&q8), argmax(&exact), "prompt {i}: argmax");
    }
}

#[test]
fn int8_keeps_f32s_perplexity_and_top_choices_on_the_shipped_text() {
    // The first 512 tokens of tests/fixtures/eval_text.txt (prose written for these tests),
    // scored by the f32 model and by the default int8 one (smoothed at load, see
    // model::smooth). Measured on these 512, f32 perplexity 23.062 on both machines:
    // - Zen 4: int8 23.095 (+0.14%), 97.26% top-1 agreement; unsmoothed 23.446 (+1.7%), 95.69%;
    // - Zen 5 (family 26): int8 23.134 (+0.31%), 95.89%; unsmoothed 23.351 (+1.25%), 95.11%.
    // The near-ties that decide agreement move between CPUs (the f32 reference and the
    // calibration maxima go through candle's gemm, whose kernels and blocking follow the CPU),
    // so the agreement bound leaves room for that; the perplexity bound is the one that rejects
    // the unsmoothed model on every machine measured. (Whole text, 1,187 tokens, Zen 4: 19.024;
    // 19.033; unsmoothed 19.287.)
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval_text.txt")).unwrap();
    let mut ids = model().tokenizer.encode_plain(&text).unwrap();
    ids.truncate(512);
    let exact = score_text(&model().model, &ids, 256).unwrap();
    let q8 = score_text(&int8_model().model, &ids, 256).unwrap();
    let (p32, p8, agree) = (exact.perplexity(), q8.perplexity(), q8.agreement(&exact));
    eprintln!("512 tokens: perplexity f32 {p32:.3}, int8 {p8:.3}; top-1 agreement {agree:.4}");
    assert!(p8 / p32 < 1.005, "int8 perplexity {p8} vs f32 {p32}");
    assert!(agree > 0.955, "top-1 agreement {agree}");
}

#[test]
fn int4_weights_are_the_files_q4_1_blocks_exactly() {
    // The default model's layers are Q4_1 in its file; requantizing their dequantized values
    // must give the same grid back, so that `--weights q4` computes with the file's weights.
    let (exact, q4) = (&model().model, &int4_model().model);
    assert_eq!(q4.weight_format(), WeightFormat::Q4);
    for (l, (a, b)) in exact.layers.iter().zip(&q4.layers).enumerate() {
        for (i, (wa, wb)) in a.linears().iter().zip(b.linears()).enumerate() {
            let (Linear::F32(f), Linear::Q4(q)) = (wa, wb) else { panic!("layer {l} linear {i}: formats") };
            let want = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let same = want.iter().zip(q.dequantize()).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
            assert_eq!(same, want.len(), "layer {l} linear {i}: {same} of {} weights exact", want.len());
        }
    }
    assert!(matches!(q4.lm_head, Linear::Q8(_)), "the LM head stays int8 (the file's Q8_0)");
}

#[test]
fn int4_keeps_f32s_perplexity_and_top_choices_on_the_shipped_text() {
    // As for int8 below, the first 512 tokens of the evaluation text. Measured: int4 with 8
    // outlier channels per layer input in f32 (model::outliers) 23.110 (+0.21%) and 97.85%
    // top-1 agreement; int4 without them 23.274 (+0.92%) and 96.48% — which both bounds below
    // reject. (Whole text: 19.059 and 97.89%; without: 19.119 and 96.21%; f32 19.024.)
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval_text.txt")).unwrap();
    let mut ids = model().tokenizer.encode_plain(&text).unwrap();
    ids.truncate(512);
    let exact = score_text(&model().model, &ids, 256).unwrap();
    let q4 = score_text(&int4_model().model, &ids, 256).unwrap();
    let (p32, p4, agree) = (exact.perplexity(), q4.perplexity(), q4.agreement(&exact));
    eprintln!("512 tokens: perplexity f32 {p32:.3}, int4 {p4:.3}; top-1 agreement {agree:.4}");
    assert!(p4 / p32 < 1.005, "int4 perplexity {p4} vs f32 {p32}");
    assert!(agree > 0.965, "top-1 agreement {agree}");
}

#[test]
fn int8_greedy_chat_answers_the_capital_of_france_as_f32_does() {
    // Before smoothing, int8 answered "L'Étoile, la Cité, …" (as llama.cpp does on this file):
    // its first token's logit fell 0.08 behind f32's "The". Smoothed int8 keeps "The" ahead by
    // 0.13–0.25 over the attention arithmetic's variants tried (docs/model.md); the 4-bit
    // default's margin swings between −0.08 and +0.27 with them — within quantization noise,
    // so it is not asserted here (its perplexity and agreement are, above).
    let m = int8_model();
    let prompt =
        m.tokenizer.apply_chat_template(&[ChatMessage::new("user", "What is the capital of France?")]).unwrap();
    let mut ids = m.tokenizer.encode(&prompt).unwrap();
    let mut out = Vec::new();
    for _ in 0..12 {
        let next = argmax(&logits_of(m, &ids)) as u32;
        if m.tokenizer.eos_token_ids.contains(&next) {
            break;
        }
        out.push(next);
        ids.push(next);
    }
    let text = m.tokenizer.decode(&out).unwrap();
    assert!(text.starts_with("The") && text.contains("Paris"), "answer: {text:?}");
}

#[test]
fn memory_is_known_before_loading() {
    let path = default_model().unwrap();
    for (format, loaded) in
        [(WeightFormat::F32, model()), (WeightFormat::Q8, int8_model()), (WeightFormat::Q4, int4_model())]
    {
        let (config, predicted) = model_bytes(&path, format).unwrap();
        assert_eq!(config, loaded.model.config);
        assert_eq!(predicted as usize, loaded.model.memory_bytes(), "{format}");
    }
    // Auto resolves to 4-bit for this file, whose layers are all Q4_1.
    assert_eq!(model_bytes(&path, WeightFormat::Auto).unwrap().1, model_bytes(&path, WeightFormat::Q4).unwrap().1);
}

#[test]
fn greedy_chat_answers_the_capital_of_france() {
    let m = model();
    let prompt =
        m.tokenizer.apply_chat_template(&[ChatMessage::new("user", "What is the capital of France?")]).unwrap();
    assert!(prompt.contains("<|im_start|>assistant"), "{prompt}");
    let mut ids = m.tokenizer.encode(&prompt).unwrap();
    let mut out = Vec::new();
    for _ in 0..12 {
        let l = logits(&ids);
        let next = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        if m.tokenizer.eos_token_ids.contains(&next) {
            break;
        }
        out.push(next);
        ids.push(next);
    }
    let text = m.tokenizer.decode(&out).unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
}

#[test]
fn tokenizer_round_trips_and_streams_whole_characters() {
    let t = &model().tokenizer;
    for text in ["Hello, world! 12345", "naïve café — 東京 🚀", "<|im_start|>user\nhi<|im_end|>"] {
        let ids = t.encode(text).unwrap();
        let mut dec = IncrementalDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            let delta = dec.push(t, id).unwrap();
            assert!(!delta.contains('\u{FFFD}'), "{text:?}: broken character in {delta:?}");
            streamed.push_str(&delta);
        }
        streamed.push_str(&dec.flush(t).unwrap());
        let plain = t.decode(&ids).unwrap();
        assert_eq!(streamed, plain, "{text:?}");
        if !text.starts_with('<') {
            assert_eq!(plain, text);
        }
    }
    // Digits are split one by one (SmolLM's pre-tokenizer).
    assert_eq!(t.encode("2024").unwrap().len(), 4);
    // Special tokens are single ids.
    assert_eq!(t.encode("<|im_start|>").unwrap().len(), 1);
}

#[test]
fn bad_model_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("tandem-badmodel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("nope.gguf");
    match load_model(&missing) {
        Err(ExecError::ModelFile { path, problem }) => {
            assert!(path.contains("nope.gguf") && problem.to_string().contains("no such file"))
        }
        other => panic!("{other:?}"),
    }
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"definitely not a model").unwrap();
    assert!(matches!(load_model(&garbage), Err(ExecError::ModelFile { .. })));
    // A truncated copy of the real file: the header reads, a tensor does not.
    let real = std::fs::read(default_model().unwrap()).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    match load_model(&truncated) {
        Err(ExecError::ModelFile { path, problem }) => assert!(path.contains("truncated.gguf"), "{problem}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let no_config = dir.join("hfdir");
    std::fs::create_dir_all(&no_config).unwrap();
    assert!(
        matches!(load_model(&no_config), Err(ExecError::ModelFile { problem, .. }) if problem.to_string().contains("config.json"))
    );
    let _ = std::fs::remove_dir_all(dir);
}
