//! The `registry-edge` binary: parse the command line, load the config (exit 64 with a clear
//! message when it is wrong), run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use registry_edge::config::{Config, DEFAULT_CONFIG};

#[derive(Parser)]
#[command(
    name = "registry-edge",
    version,
    about = "HTTPS + auth edge for a container registry, with an embedded registry"
)]
struct Cli {
    /// Config file (default: ./proxy.toml, or built-in defaults when it is absent).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let (path, optional) = match cli.config {
        Some(p) => (p, false),
        None => (PathBuf::from(DEFAULT_CONFIG), true),
    };
    let config = match Config::load(&path, optional, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-edge: {e}");
            return ExitCode::from(64);
        }
    };
    match registry_edge::run(config, pingora::server::RunArgs::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-edge: {e}");
            ExitCode::from(70)
        }
    }
}
