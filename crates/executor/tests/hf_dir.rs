//! The HF-directory loader: the default GGUF model converted to an HF directory (safetensors in
//! HF's layout — Q/K un-permuted back to rotate-half RoPE — plus config.json, tokenizer.json and
//! tokenizer_config.json) gives the same logits as the GGUF itself.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use tandem_core::BlockId;
use tandem_executor::cpu::PagedKvCache;
use tandem_executor::model::{load_model, RopeStyle, SeqSlice};
use tandem_executor::store::default_model;

/// llama.cpp's permutation for Q/K undone: rows (head, pair i, lane 2) → (head, lane, i).
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    let hd = out / heads;
    w.reshape((heads, hd / 2, 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

#[test]
fn an_hf_directory_gives_the_same_logits_as_the_gguf() {
    let gguf_path = default_model().unwrap();
    let gguf = load_model(&gguf_path).unwrap();
    let c = gguf.model.config.clone();
    let dir = std::env::temp_dir().join(format!("tandem-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut reader = BufReader::new(File::open(&gguf_path).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in content.tensor_infos.keys() {
        let t = content.tensor(&mut reader, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        let t = t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap(); // as an HF checkpoint would be
        let hf = match name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            n => {
                let (layer, field) = n.strip_prefix("blk.").unwrap().split_once('.').unwrap();
                let f = match field {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    other => panic!("unexpected tensor {other}"),
                };
                format!("model.layers.{layer}.{f}")
            }
        };
        let t = if hf.ends_with("q_proj.weight") {
            unpermute(&t, c.heads)
        } else if hf.ends_with("k_proj.weight") {
            unpermute(&t, c.kv_heads)
        } else {
            t
        };
        tensors.insert(hf, t.to_dtype(DType::BF16).unwrap());
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let config = c.to_hf_json();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    // The tokenizer as `/v1/models`' root exports it for clients: tokenizer.json and a
    // tokenizer_config.json with the GGUF's special tokens and chat template.
    gguf.tokenizer.write_hf_dir(&dir).unwrap();

    let hf = load_model(&dir).unwrap();
    assert_eq!(hf.model.config.rope_style, RopeStyle::Half);
    let back = tandem_executor::model::LlamaConfig { rope_style: c.rope_style, ..hf.model.config.clone() };
    assert_eq!(back, c, "config.json round trip");
    assert_eq!(gguf.model.config.rope_style, RopeStyle::Interleaved);
    let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = hf.tokenizer.encode(text).unwrap();
    assert_eq!(ids, gguf.tokenizer.encode(text).unwrap(), "tokenizer.json round trip");
    let run = |m: &tandem_executor::model::LlamaModel| {
        let mut cache = PagedKvCache::new(c.layers, c.kv_dim(), 16, 8, 0);
        let table: Vec<BlockId> = (0..8).map(BlockId).collect();
        let pos: Vec<usize> = (0..ids.len()).collect();
        let seq = SeqSlice { start_row: 0, len: ids.len(), start_pos: 0, table: &table };
        m.forward(&ids, &pos, &[seq], &[ids.len() - 1], &mut cache).unwrap().remove(0)
    };
    let (a, b) = (run(&gguf.model), run(&hf.model));
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
    assert_eq!(argmax(&a), argmax(&b));
    // Weights went through bf16, so allow bf16-sized differences.
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 0.5, "max |Δlogit| {max_diff}");
    let chat = [
        tandem_executor::text::ChatMessage::new("system", "Be brief."),
        tandem_executor::text::ChatMessage::new("user", "hi"),
    ];
    let rendered = hf.tokenizer.apply_chat_template(&chat).unwrap();
    assert_eq!(rendered, gguf.tokenizer.apply_chat_template(&chat).unwrap(), "the GGUF's template travels");
    assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
    assert_eq!(hf.tokenizer.eos_token_ids, gguf.tokenizer.eos_token_ids);
    let _ = std::fs::remove_dir_all(dir);
}
