//! The service's subcommands: `serve`, `openapi`, `healthcheck`, `migrate`.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use onnx_cle::server;

#[derive(Subcommand)]
pub enum Command {
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
pub struct MigrateArgs {
    /// The database (`postgres://user:password@host:5432/db?sslmode=verify-full`; TLS settings
    /// as for `serve --database-url`).
    #[arg(long, env = "ONNX_CLE_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The CA (PEM) that signed the database's certificate, when the URL has no `sslrootcert`.
    #[arg(long, env = "ONNX_CLE_DATABASE_CA", value_name = "PATH")]
    database_ca: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct HealthcheckArgs {
    /// Address of the server (0.0.0.0 means this host).
    #[arg(long, env = "ONNX_CLE_ADDR", default_value = server::config::DEFAULT_ADDR)]
    addr: SocketAddr,
}

/// Runs one of the service's subcommands.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(cfg) => serve(*cfg),
        Command::Openapi => {
            print!("{}", server::openapi_json());
            ExitCode::SUCCESS
        }
        Command::Migrate(a) => migrate(&a.database_url, a.database_ca.as_deref()),
        Command::Healthcheck(a) => match server::healthcheck(a.addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("onnx-cle: unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs `f` on a new async runtime (`threads` workers, or one per core).
fn block_on<T>(
    threads: Option<usize>,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(f)
}

fn serve(cfg: server::ServeConfig) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONNX_CLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match block_on(None, async {
        server::serve(cfg).await.map_err(|e| e.to_string())
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onnx-cle: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(url: &str, ca: Option<&std::path::Path>) -> ExitCode {
    match block_on(Some(1), async {
        server::migrate(url, ca).await.map_err(|e| e.to_string())
    }) {
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
