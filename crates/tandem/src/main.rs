//! The `tandem` binary: parses arguments and calls the crates. Nothing else lives here.

mod bench;
mod bench_model;
mod contexts;
mod gen_model;
mod generate;
mod model;
mod parity;
mod serve;
mod simulate;
mod simulate_contexts;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tandem", version, about = "An LLM inference scheduler and serving engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the embedded default model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Measure the CPU executor: decode tokens/s by batch size, prefill tokens/s.
    BenchModel(bench_model::BenchModelArgs),
    /// Generate a reply to one prompt with a real model (the embedded default unless --model).
    Generate(Box<generate::GenerateArgs>),
    /// Simulate a workload on a modelled device with the real scheduler (virtual time).
    Simulate(Box<simulate::SimulateArgs>),
    /// Simulate two models sharing one device: time-sliced contexts vs a static partition.
    SimulateContexts(simulate_contexts::SimulateContextsArgs),
    /// Benchmark an OpenAI-compatible server or in-process engines (vLLM bench serve's metrics).
    Bench(Box<bench::BenchArgs>),
    /// Write a random-weight model directory of a preset shape (tiny, qwen2.5-0.5b).
    GenModel(gen_model::GenModelArgs),
    /// Check the tensor executor (cuda, tensor-cpu): logits against the CPU f32 forward, batched
    /// against alone.
    Parity(parity::ParityArgs),
}

fn main() {
    let cli = Cli::parse();
    let (name, result) = match cli.command {
        Command::Serve(args) => ("serve", serve::run(args)),
        Command::BenchModel(args) => ("bench-model", bench_model::run(args)),
        Command::Generate(args) => ("generate", generate::run(*args)),
        Command::Simulate(args) => ("simulate", simulate::run(*args)),
        Command::Bench(args) => ("bench", bench::run_cli(*args)),
        Command::GenModel(args) => ("gen-model", gen_model::run(args)),
        Command::SimulateContexts(args) => ("simulate-contexts", simulate_contexts::run(args)),
        Command::Parity(args) => ("parity", parity::run(args)),
    };
    if let Err(e) = result {
        eprintln!("tandem {name}: {e}");
        std::process::exit(2);
    }
}
