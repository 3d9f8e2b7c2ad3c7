//! The `onnx-cle` binary: `equalize` (one-shot CLI), `serve` (HTTP service), `openapi`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Data-free Cross-Layer Equalization for ONNX models.
#[derive(Parser)]
#[command(name = "onnx-cle", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Equalize one model and write the result (and optionally a JSON report).
    Equalize(cli::EqualizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Equalize(args) => cli::equalize(args),
    }
}
