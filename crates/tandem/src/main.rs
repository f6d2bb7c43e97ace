//! The `tandem` binary: parses arguments and calls the crates. Nothing else lives here.

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
    Serve,
    /// Simulate a workload on a modelled device with the real scheduler (virtual time).
    Simulate(Box<simulate::SimulateArgs>),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve => {
            println!("tandem serve: not yet — model execution and the HTTP server land with issues 4 and 5.");
            println!("Meanwhile `tandem simulate` runs the scheduler on a modelled device.");
            0
        }
        Command::Simulate(args) => match simulate::run(*args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tandem simulate: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}
