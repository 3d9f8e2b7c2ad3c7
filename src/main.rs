//! The `onnx-cle` binary: `equalize` (one-shot CLI), `serve` (HTTP service), `openapi` (print
//! the service's OpenAPI document), `healthcheck` (probe a local server), `migrate` (apply the
//! PostgreSQL job store's schema).

mod cli;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use onnx_cle::server;

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
    /// Run the HTTP job service (POST /equalize, GET /jobs/{id}, /docs, /metrics…).
    Serve(Box<server::ServeConfig>),
    /// Print the service's OpenAPI 3.1 document.
    Openapi,
    /// Exit 0 when the server at --addr answers its liveness probe (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Apply the job store's schema migrations to the PostgreSQL database (`serve
    /// --database-url` also applies them at start).
    Migrate(MigrateArgs),
}

#[derive(Args)]
struct MigrateArgs {
    /// The database (`postgres://user:password@host:5432/db`).
    #[arg(long, env = "ONNX_CLE_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[derive(Args)]
struct HealthcheckArgs {
    /// Address of the server (0.0.0.0 means this host).
    #[arg(long, env = "ONNX_CLE_ADDR", default_value = server::config::DEFAULT_ADDR)]
    addr: SocketAddr,
}

fn serve(cfg: server::ServeConfig) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONNX_CLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("onnx-cle: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onnx-cle: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(url: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("onnx-cle: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::migrate(url)) {
        Ok(applied) if applied.is_empty() => {
            println!("database schema up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!("applied migrations {applied:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onnx-cle: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Equalize(args) => cli::equalize(*args),
        Command::Serve(cfg) => serve(*cfg),
        Command::Openapi => {
            print!("{}", server::openapi_json());
            ExitCode::SUCCESS
        }
        Command::Migrate(a) => migrate(&a.database_url),
        Command::Healthcheck(a) => match server::healthcheck(a.addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("onnx-cle: unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
