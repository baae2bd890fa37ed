//! The `registry-edge` binary: `run` (the default) serves; `passwd`, `cert` and `check` manage the
//! files it uses. A bad config exits 64 with the key named; an unusable file exits 70.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use registry_edge::config::{Config, DEFAULT_CONFIG};

/// jemalloc instead of glibc's malloc. glibc kept what bursts of connections had freed in its
/// per-thread arenas: RSS stayed at ~140 MB after two bursts of 1,000 connections, and fell to
/// 22 MB when `malloc_trim` was called by hand. jemalloc's background threads (started in
/// `main`) give freed pages back within seconds, also when the process is idle.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "registry-edge",
    version,
    about = "HTTPS + auth edge for a container registry, with an embedded registry"
)]
struct Cli {
    /// Config file (default: ./proxy.toml, or built-in defaults when it is absent).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Add a user to the htpasswd file, or replace their password (bcrypt).
    Passwd {
        user: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// bcrypt cost (default: auth.bcrypt_cost).
        #[arg(long)]
        cost: Option<u32>,
        /// htpasswd file (default: auth.htpasswd).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write a certificate signed by a one-off CA, its key, and the CA certificate (ca.crt).
    Cert {
        /// A DNS name the certificate is for (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address the certificate is for (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Write domain.crt, domain.key and ca.crt into this directory (default: the tls paths
        /// of the config).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Check the config and the files it names, and say what is wrong.
    Check,
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into());
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        b.json().init();
    } else {
        b.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (path, optional) = match &cli.config {
        Some(p) => (p.clone(), false),
        None => (PathBuf::from(DEFAULT_CONFIG), true),
    };
    let config = match Config::load(&path, optional, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-edge: {e}");
            return ExitCode::from(64);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            init_logging(config.log_json);
            if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
                tracing::warn!(error = %e, "jemalloc background threads not started; freed memory is returned more slowly");
            }
            let signals = registry_edge::Signals {
                drain: config.drain_timeout,
            };
            let args = pingora::server::RunArgs {
                shutdown_signal: Box::new(signals),
            };
            match registry_edge::run(config, args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("registry-edge: {e}");
                    ExitCode::from(70)
                }
            }
        }
        Command::Passwd {
            user,
            password_stdin,
            cost,
            file,
        } => {
            let file = file.unwrap_or(config.htpasswd.clone());
            let cost = cost.unwrap_or(config.bcrypt_cost);
            exit(passwd(&file, &user, password_stdin, cost))
        }
        Command::Cert {
            dns,
            ip,
            out,
            force,
        } => {
            let (cert, key, ca) = match out {
                Some(d) => (d.join("domain.crt"), d.join("domain.key"), d.join("ca.crt")),
                None => (config.cert.clone(), config.key.clone(), config.ca.clone()),
            };
            exit(write_cert(&cert, &key, &ca, dns, ip, force))
        }
        Command::Check => check(&path, &config),
    }
}

fn exit(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-edge: {e}");
            ExitCode::from(70)
        }
    }
}

/// Adds or replaces `user`'s line, writing the file anew and renaming it into place, so a running
/// edge never reads half a file.
fn passwd(file: &Path, user: &str, from_stdin: bool, cost: u32) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        return Err(format!(
            "{user:?} is not a valid user name (no ':' or whitespace)"
        ));
    }
    if !(4..=31).contains(&cost) {
        return Err(format!("bcrypt cost {cost} is not between 4 and 31"));
    }
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(
                "the password is not read from a pipe unless asked: add --password-stdin".into(),
            );
        }
        let p = rpassword::prompt_password(format!("Password for {user}: "))
            .map_err(|e| format!("reading the password: {e}"))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| format!("reading the password: {e}"))?;
        if p != again {
            return Err("the passwords differ".into());
        }
        p
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let line = registry_edge::auth::hash_line(user, &password, cost).map_err(|e| e.to_string())?;
    let existing = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let mut replaced = false;
    let mut out = String::new();
    for l in existing.lines() {
        if l.split_once(':').is_some_and(|(u, _)| u == user) {
            out.push_str(&line);
            replaced = true;
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(&line);
        out.push('\n');
    }
    write_atomically(file, out.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    eprintln!(
        "registry-edge: {} {user} in {}",
        if replaced { "updated" } else { "added" },
        file.display()
    );
    Ok(())
}

fn write_atomically(file: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("htpasswd")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

fn write_cert(
    cert: &Path,
    key: &Path,
    ca: &Path,
    dns: Vec<String>,
    ip: Vec<IpAddr>,
    force: bool,
) -> Result<(), String> {
    if !force {
        for p in [cert, key, ca] {
            if p.exists() {
                return Err(format!(
                    "{} exists; pass --force to replace it",
                    p.display()
                ));
            }
        }
    }
    let mut hosts = dns;
    hosts.extend(ip.iter().map(|i| i.to_string()));
    let g = registry_edge::tls::generate_self_signed(cert, key, ca, &hosts)
        .map_err(|e| e.to_string())?;
    println!("certificate: {}", g.cert.display());
    println!("key:         {}", g.key.display());
    println!(
        "CA:          {}  (copy to /etc/docker/certs.d/<host:port>/ca.crt)",
        g.ca.display()
    );
    println!("names:       {}", g.names.join(", "));
    Ok(())
}

fn check(path: &Path, config: &Config) -> ExitCode {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    match (config.cert.exists(), config.key.exists()) {
        (false, false) if config.self_signed => notes.push(format!(
            "{} and {} do not exist: a self-signed certificate will be generated at start",
            config.cert.display(),
            config.key.display()
        )),
        _ => match registry_edge::tls::load_certified_key(&config.cert, &config.key) {
            Ok(k) => {
                if let Some(t) = registry_edge::tls::expiry(&k) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    if t < now {
                        problems.push(format!(
                            "{}: the certificate has expired",
                            config.cert.display()
                        ));
                    } else {
                        notes.push(format!(
                            "{}: valid for {} more days",
                            config.cert.display(),
                            (t - now) / 86400
                        ));
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        },
    }
    if !config.htpasswd.exists() && config.first_user.is_some() {
        notes.push(format!(
            "{} does not exist: it will be created with a first user at start",
            config.htpasswd.display()
        ));
    } else {
        match registry_edge::auth::Htpasswd::load(&config.htpasswd) {
            Ok(u) => notes.push(format!("{}: {} users", config.htpasswd.display(), u.len())),
            Err(e) => problems.push(e.to_string()),
        }
    }
    for n in &notes {
        println!("ok: {n}");
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if problems.is_empty() {
        println!("{}: config and files are usable", path.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(70)
    }
}
