//! `tandem bench-model`: the CPU executor's raw speed — aggregate decode tokens/s at several
//! batch sizes (each sequence with a real cached context) and prefill tokens/s — driving the
//! executor with the same `SchedulerOutput`s the scheduler would emit.

use std::time::Instant;

use clap::Args;
use tandem_core::{BlockId, RequestId, SchedulerOutput};
use tandem_engine::build::{executor_for, kv_bytes_for_tokens, DeviceKind, ModelSource, BLOCK_SIZE as BS};
use tandem_executor::model::WeightFormat;

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// A .gguf file or HF directory; default: the embedded model.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Linear-layer weights: auto, f32, q8 or q4 (as for `serve`).
    #[arg(long, default_value_t = WeightFormat::Auto)]
    weights: WeightFormat,
    /// cpu, cuda or tensor-cpu (as for `serve`).
    #[arg(long, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// KV cache memory for the tensor executor, MiB (the CPU executor sizes its own).
    #[arg(long, default_value_t = 4096)]
    kv_memory_mb: u64,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    batch: Vec<usize>,
    /// Cached context per sequence before decoding (0: decode from an empty cache, as
    /// llama-bench's tg does).
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Decode steps timed per batch size.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Timed prefills after the first, untimed-in-the-mean one (llama-bench's warm-up and
    /// `-r`): each one a prompt of other token ids; the mean of their tokens/s is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// A step feeding `fed` tokens to each of `n` sequences at `start`, sequence `i` owning blocks
/// `i * per_seq ..`; `prompt` picks other token ids (a prompt of its own per prefill run).
fn step(n: usize, per_seq: usize, start: usize, fed: usize, sample: bool, prompt: usize) -> SchedulerOutput {
    let mut out = SchedulerOutput::default();
    for i in 0..n {
        let tokens = (0..fed).map(|j| ((i * 131 + start + j + prompt * 7_919) % 40_000 + 100) as u32);
        let table = (0..per_seq).map(|b| BlockId((i * per_seq + b) as u32));
        out.push_seq(RequestId(i as u64), tokens, start, table, sample);
    }
    out.num_batched_tokens = n * fed;
    out.micro_batches.push(0..n);
    out
}

pub fn run(a: BenchModelArgs) -> Result<(), String> {
    let source = ModelSource::resolve(a.model.as_deref(), a.device, a.weights).map_err(|e| e.to_string())?;
    let max_batch = a.batch.iter().copied().max().unwrap_or(1);
    let per_seq = (a.context + a.steps + 1).max(a.prefill + 1).div_ceil(BS);
    let model = source.load().map_err(|e| e.to_string())?.model;
    let linear_mib = model.linear_bytes() >> 20;
    let needed = (max_batch * per_seq) as u64;
    let kv_bytes = match a.device {
        // The CPU executor gets exactly the blocks the run needs.
        DeviceKind::Cpu => kv_bytes_for_tokens(&model.config, a.device, needed * BS as u64),
        _ => a.kv_memory_mb << 20,
    };
    let (mut exec, blocks) = executor_for(a.device, model, kv_bytes, 0).map_err(|e| e.to_string())?;
    if (blocks as u64) < needed {
        return Err(format!("--kv-memory-mb holds {blocks} blocks, the run needs {needed}"));
    }
    println!("{} ({linear_mib} MiB of linear layers loaded)", exec.describe());
    println!("threads: {}", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("kernels: {}", tandem_executor::cpu::kernels());
    // Prefill: prompts of `prefill` tokens in chunks of 512, each with token ids of its own. The
    // first run is the process's first forward (its KV pages and buffers touched for the first
    // time); like llama-bench, the figure is the mean over the runs after it.
    let mut prefill = |prompt: usize| -> Result<f64, String> {
        let t = Instant::now();
        let mut pos = 0;
        while pos < a.prefill {
            let n = 512.min(a.prefill - pos);
            exec.execute(&step(1, per_seq, pos, n, pos + n == a.prefill, prompt)).map_err(|e| e.to_string())?;
            pos += n;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let first = prefill(0)?;
    let runs = (1..=a.reps).map(&mut prefill).collect::<Result<Vec<_>, _>>()?;
    let tok = |s: f64| a.prefill as f64 / s;
    let rates: Vec<f64> = runs.iter().map(|&s| tok(s)).collect();
    if rates.is_empty() {
        println!("prefill  {} tokens: {first:.2} s → {:.0} tokens/s (one run, the first)", a.prefill, tok(first));
    } else {
        let mean_rate = rates.iter().sum::<f64>() / rates.len() as f64;
        let mean_secs = runs.iter().sum::<f64>() / runs.len() as f64;
        let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "prefill  {} tokens: {mean_secs:.2} s → {mean_rate:.0} tokens/s (mean of {} runs after the first: {}; the first: {:.0})",
            a.prefill,
            rates.len(),
            each.join(" "),
            tok(first)
        );
    }
    for &b in &a.batch {
        // Fill each sequence's context (none: the first timed step starts it), then time
        // decode steps.
        if a.context > 0 {
            exec.execute(&step(b, per_seq, 0, a.context, true, 0)).map_err(|e| e.to_string())?;
        }
        let t = Instant::now();
        for s in 0..a.steps {
            exec.execute(&step(b, per_seq, a.context + s, 1, true, 0)).map_err(|e| e.to_string())?;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "decode batch {b:>3} (context {}): {:.1} ms/step → {:.0} tokens/s",
            a.context,
            secs * 1e3 / a.steps as f64,
            (b * a.steps) as f64 / secs
        );
    }
    Ok(())
}
