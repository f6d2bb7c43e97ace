//! `tandem generate`: one prompt through the real engine, streamed to stdout.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tandem_core::{NewRequest, SamplerParams};
use tandem_engine::{Generation, GenerationEvent, ModelLease, ServedModel};
use tandem_executor::text::ChatMessage;

use crate::model::{start, ModelArgs};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user's message (or raw prompt text with --raw).
    #[arg(long)]
    prompt: String,
    /// A system message for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Divides seen tokens' positive logits (multiplies negative ones); 1 is off (llama.cpp's
    /// --repeat-penalty).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
}

pub fn run(a: GenerateArgs) -> Result<(), String> {
    let sane = a.temperature.is_finite() && a.temperature >= 0.0 && a.top_p > 0.0 && a.top_p <= 1.0;
    let penalty_ok = a.repetition_penalty.is_finite() && a.repetition_penalty > 0.0;
    if !sane || !penalty_ok || a.max_tokens == 0 {
        return Err("need temperature >= 0, 0 < top_p <= 1, repetition_penalty > 0 and max_tokens >= 1".into());
    }
    let load = Instant::now();
    let running = start(&a.model)?;
    eprintln!("tandem: {} (loaded in {:.1} s)", running.describe, load.elapsed().as_secs_f64());
    let tok = &running.tokenizer;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", &a.prompt));
        tok.apply_chat_template(&messages).map_err(|e| e.to_string())?
    };
    let ids = tok.encode(&text).map_err(|e| e.to_string())?;
    let mut req = NewRequest::new(0, ids.clone(), a.max_tokens, Duration::ZERO);
    req.params.ignore_eos = a.ignore_eos;
    req.params.sampler = SamplerParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        repetition_penalty: a.repetition_penalty,
        ..SamplerParams::default()
    };
    let prompt_len = ids.len();
    let model =
        ServedModel::new(running.name, running.engine, running.tokenizer, running.max_model_len, running.describe);
    let started = Instant::now();
    let mut generation = Generation::start(Arc::new(ModelLease::unmanaged(Arc::new(model))), req, a.stop.clone())
        .map_err(|e| e.to_string())?;
    let mut first = None;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = generation.blocking_next() {
        match ev {
            GenerationEvent::Logprobs(_) => {}
            GenerationEvent::Text { text, .. } => {
                first.get_or_insert_with(|| started.elapsed());
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            GenerationEvent::Finished { reason, text } => {
                let n = generation.tokens();
                let _ = out.write_all(text.as_bytes());
                let total = started.elapsed();
                let ttft = first.unwrap_or(total);
                let tps = if n > 1 { (n - 1) as f64 / (total - ttft).as_secs_f64().max(1e-9) } else { 0.0 };
                let _ = writeln!(out);
                eprintln!(
                    "tandem: {} prompt tokens, {n} generated, finish {}, TTFT {:.0} ms, {tps:.1} tok/s",
                    prompt_len,
                    reason.as_openai(),
                    ttft.as_secs_f64() * 1e3
                );
            }
            GenerationEvent::Failed(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
