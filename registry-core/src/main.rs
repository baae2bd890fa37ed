//! The `registry-core` binary: serve (default) or collect garbage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use registry_core::config::{Config, FileConfig};

#[derive(Parser)]
#[command(
    name = "registry-core",
    version,
    about = "An OCI Distribution v1.1 registry"
)]
struct Cli {
    /// TOML config file.
    #[arg(long, global = true, env = "REGISTRY_CORE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address: host:port, or unix:PATH. Also REGISTRY_HTTP_ADDR, as registry:2 reads it.
    #[arg(long, global = true, env = "REGISTRY_HTTP_ADDR")]
    listen: Option<String>,
    /// Storage root (Distribution's filesystem layout).
    #[arg(long, global = true, env = "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")]
    root: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics on this address.
    #[arg(long, global = true)]
    metrics_listen: Option<String>,
    /// Allow DELETE of manifests, tags and blobs.
    #[arg(long, global = true, env = "REGISTRY_STORAGE_DELETE_ENABLED")]
    delete_enabled: Option<bool>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry (the default).
    Serve,
    /// Remove blobs and untagged manifests that nothing references.
    Gc {
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Never touch anything younger than this (e.g. "1h"); default from the config.
        #[arg(long)]
        grace: Option<String>,
    },
}

/// registry:2 settings registry-core takes from the environment.
const HONOURED_ENV: &[&str] = &[
    "REGISTRY_HTTP_ADDR",
    "REGISTRY_STORAGE",
    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
    "REGISTRY_STORAGE_DELETE_ENABLED",
    registry_core::config::REGISTRY_REDIRECT_DISABLE,
];

fn load(cli: &Cli) -> Result<Config, registry_core::config::ConfigError> {
    use registry_core::config::{check_registry_env, ConfigError, Unsupported};
    let env: Vec<(String, String)> = std::env::vars().collect();
    let honoured: Vec<&str> = HONOURED_ENV
        .iter()
        .copied()
        .chain(
            registry_core::config::REGISTRY_S3_ENV
                .iter()
                .map(|(n, _)| *n),
        )
        .collect();
    for u in check_registry_env(env.iter().map(|(k, v)| (k.as_str(), v.as_str())), &honoured) {
        match u {
            Unsupported::Refused { name, why } => {
                return Err(ConfigError::Unsupported { name, why });
            }
            Unsupported::Ignored { name } => {
                tracing::warn!(setting = %name, "registry:2 setting not supported by registry-core: ignored");
            }
        }
    }
    // The file, then registry:2's storage variables over its `[s3]` table, then flags.
    let (mut file, origin) = match &cli.config {
        Some(p) => (FileConfig::read(p)?, p.display().to_string()),
        None => (FileConfig::default(), "defaults".to_owned()),
    };
    let used =
        Config::registry_storage_env(&mut file, env.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let origin = if used.is_empty() {
        origin
    } else {
        format!("{origin} with {}", used.join(", "))
    };
    let mut c = Config::default();
    c.apply(file, &origin)?;
    c.apply(
        FileConfig {
            // registry:2 accepts ":5000" for every interface.
            listen: cli.listen.as_ref().map(|l| {
                if l.starts_with(':') {
                    format!("0.0.0.0{l}")
                } else {
                    l.clone()
                }
            }),
            root: cli.root.clone(),
            metrics_listen: cli.metrics_listen.clone(),
            delete_enabled: cli.delete_enabled,
            gc_grace: match &cli.command {
                Some(Command::Gc { grace, .. }) => grace.clone(),
                _ => None,
            },
            ..FileConfig::default()
        },
        "command line",
    )?;
    Ok(c)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-core: {e}");
            return ExitCode::from(64);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            None | Some(Command::Serve) => {
                registry_core::run(config, shutdown_signal(), |_| {}).await?;
            }
            Some(Command::Gc { dry_run, .. }) => {
                registry_core::check(&config).await?;
                let registry = registry_core::open(&config)?;
                let report = registry_core::gc::collect(&registry, config.gc_grace, dry_run)
                    .await
                    .map_err(std::io::Error::other)?;
                for line in report.lines(dry_run) {
                    println!("{line}");
                }
            }
        }
        Ok::<_, std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-core: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
