//! The `onnx-cle` binary: `equalize` (one-shot CLI), and with the `server` feature `serve`
//! (HTTP service), `openapi` (print the service's OpenAPI document), `healthcheck` (probe a
//! local server), `migrate` (apply the PostgreSQL job store's schema).

mod cli;
#[cfg(feature = "server")]
mod serve;

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
    Equalize(Box<cli::EqualizeArgs>),
    #[cfg(feature = "server")]
    #[command(flatten)]
    Service(serve::Command),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Equalize(args) => cli::equalize(*args),
        #[cfg(feature = "server")]
        Command::Service(c) => serve::run(c),
    }
}
