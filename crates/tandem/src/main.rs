//! The `tandem` binary: parses arguments and calls the crates. Nothing else lives here.

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
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            println!("tandem serve: not yet — model execution and the HTTP server land with issues 4 and 5.");
            println!("The scheduler core is here: run the test suite with `./scripts/test.sh`.");
        }
    }
}
