//! `tandem gen-model`: writes a random-weight model directory of a preset shape (for load,
//! soak and speed tests without downloads), with the default model's tokenizer or a byte-level one.

use std::path::PathBuf;

use clap::Args;
use tandem_executor::model::load_model;
use tandem_executor::synth::{write_hf_model, SynthShape};

#[derive(Debug, Args)]
pub struct GenModelArgs {
    /// Shape: `tiny` (2 layers, hidden 64) or `qwen2.5-0.5b`.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a byte-level tokenizer instead of the default model's (no download needed).
    #[arg(long)]
    no_tokenizer: bool,
}

pub fn run(args: GenModelArgs) -> Result<(), String> {
    let shape = SynthShape::preset(&args.preset)
        .ok_or_else(|| format!("unknown preset `{}` (tiny, qwen2.5-0.5b)", args.preset))?;
    let tokenizer = if args.no_tokenizer {
        None
    } else {
        let path = tandem_executor::store::default_model().map_err(|e| e.to_string())?;
        Some(load_model(&path).map_err(|e| e.to_string())?.tokenizer)
    };
    write_hf_model(&args.out, &shape, args.seed, tokenizer.as_ref()).map_err(|e| e.to_string())?;
    println!("wrote {} ({} parameters, random weights) to {}", args.preset, shape.params(), args.out.display());
    Ok(())
}
