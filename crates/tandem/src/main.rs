//! The `tandem` binary: parses arguments and calls the crates. Nothing else lives here.

mod bench;
mod bench_model;
mod config_spec;
mod gen_model;
mod generate;
mod model;
mod serve;
mod simulate;

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
    /// Benchmark an OpenAI-compatible server or in-process engines (vLLM bench serve's metrics).
    Bench(Box<bench::BenchArgs>),
    /// Write a random-weight model directory of a preset shape (tiny, qwen2.5-0.5b).
    GenModel(gen_model::GenModelArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => match serve::run(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tandem serve: {e}");
                2
            }
        },
        Command::BenchModel(args) => match bench_model::run(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tandem bench-model: {e}");
                2
            }
        },
        Command::Generate(args) => match generate::run(*args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tandem generate: {e}");
                2
            }
        },
        Command::Simulate(args) => match simulate::run(*args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tandem simulate: {e}");
                2
            }
        },
        Command::Bench(args) => match bench::run_cli(*args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tandem bench: {e}");
                2
            }
        },
        Command::GenModel(args) => match gen_model::run(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tandem gen-model: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}
