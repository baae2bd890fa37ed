//! The `registry-edge` binary: `run` (the default) serves; `passwd`, `cert` and `check` manage the
//! files it uses; `gc` collects the embedded registry's garbage. A bad config exits 64 with the key named; an unusable file exits 70.

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
    Run {
        /// Take the listening sockets over from a running edge (a zero-downtime binary
        /// upgrade): start this, then send the running edge SIGQUIT.
        #[arg(long, short)]
        upgrade: bool,
    },
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
    /// Write a server certificate and its key, signed by the edge's CA (ca.crt, whose key
    /// ca.key is kept beside it; made when absent), so clients that trust ca.crt trust it.
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
        /// Replace an existing certificate (the CA stays).
        #[arg(long)]
        force: bool,
        /// Make a new CA too: every client must then be given the new ca.crt.
        #[arg(long)]
        new_ca: bool,
    },
    /// Check the config and the files it names, and say what is wrong.
    Check,
    /// Garbage-collect the embedded registry's storage ([storage] root): remove untagged,
    /// unreferenced manifests and the blobs nothing references. Safe while the edge serves:
    /// nothing younger than the grace period is touched.
    Gc {
        /// Say what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep what is younger than this (default: storage.gc_grace), e.g. "1h", "0s".
        #[arg(long)]
        grace: Option<String>,
    },
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
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Run { upgrade } => {
            init_logging(config.log_json);
            if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
                tracing::warn!(error = %e, "jemalloc background threads not started; freed memory is returned more slowly");
            }
            let signals = registry_edge::Signals {
                drain: config.drain_timeout,
                upgrade_socket: config.upgrade_socket.clone(),
            };
            let args = pingora::server::RunArgs {
                shutdown_signal: Box::new(signals),
            };
            match registry_edge::run(config, args, upgrade) {
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
            new_ca,
        } => {
            let files = match out {
                Some(d) => registry_edge::tls::self_signed::Files {
                    cert: d.join("domain.crt"),
                    key: d.join("domain.key"),
                    ca: d.join("ca.crt"),
                },
                None => registry_edge::cert_files(&config),
            };
            let mut hosts = config.hosts.clone();
            hosts.extend(dns);
            hosts.extend(ip.iter().map(|i| i.to_string()));
            let wanted =
                registry_edge::tls::self_signed::Wanted::for_listener(&hosts, &config.listen);
            exit(write_cert(&files, &wanted, force, new_ca))
        }
        Command::Check => check(&path, &config),
        Command::Gc { dry_run, grace } => exit(gc(&config, dry_run, grace.as_deref())),
    }
}

/// `registry-edge gc`: registry-core's collection, on the embedded registry's storage.
fn gc(config: &Config, dry_run: bool, grace: Option<&str>) -> Result<(), String> {
    let registry_edge::config::Upstream::Embedded(core) = &config.upstream else {
        return Err("gc works on the embedded registry's storage, and [upstream] urls are set: run `registry-core gc` (or the upstream registry's own garbage collector) where its storage is".into());
    };
    let grace = match grace {
        Some(g) => humantime::parse_duration(g)
            .map_err(|e| format!("--grace {g:?} is not a duration like \"1h\": {e}"))?,
        None => core.gc_grace,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let what = registry_core::describe_storage(core);
        registry_core::check(core)
            .await
            .map_err(|e| format!("cannot use storage {what}: {e}"))?;
        let registry =
            registry_core::open(core).map_err(|e| format!("cannot use storage {what}: {e}"))?;
        let report = registry_core::gc::collect(&registry, grace, dry_run)
            .await
            .map_err(|e| e.to_string())?;
        for line in report.lines(dry_run) {
            println!("{line}");
        }
        Ok(())
    })
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
    if user == registry_edge::access::ANONYMOUS {
        return Err(format!(
            "{user:?} is reserved for clients that do not log in (the access rules' anonymous user)"
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
    files: &registry_edge::tls::self_signed::Files,
    wanted: &registry_edge::tls::self_signed::Wanted,
    force: bool,
    new_ca: bool,
) -> Result<(), String> {
    use registry_edge::tls::self_signed::{issue, Outcome};
    if !force {
        for p in [&files.cert, &files.key] {
            if p.exists() {
                return Err(format!(
                    "{} exists; pass --force to replace it (the CA stays)",
                    p.display()
                ));
            }
        }
    }
    let Outcome::Issued { names, new_ca, .. } =
        issue(files, wanted, new_ca, std::time::SystemTime::now()).map_err(|e| e.to_string())?
    else {
        unreachable!("issue always issues");
    };
    println!("certificate: {}", files.cert.display());
    println!("key:         {}", files.key.display());
    println!(
        "CA:          {}  ({}; copy to /etc/docker/certs.d/<host:port>/ca.crt)",
        files.ca.display(),
        if new_ca {
            "new: give it to every client"
        } else {
            "unchanged: clients that trust it need nothing"
        }
    );
    println!("CA key:      {}", files.ca_key().display());
    println!("names:       {}", names.join(", "));
    Ok(())
}

/// What `check` says of the certificate's names: a certificate of ours that misses some is
/// re-issued at start; a user's that misses configured names is a problem.
fn cert_coverage(config: &Config, problems: &mut Vec<String>, notes: &mut Vec<String>) {
    use registry_edge::tls::self_signed::{inspect, Files};
    let Ok(leaf) = inspect(&config.cert) else {
        return;
    };
    let wanted = registry_edge::wanted_names(config);
    let files: Files = registry_edge::cert_files(config);
    let ours = leaf.from_edge_ca && files.ca_key().exists();
    if ours && config.self_signed {
        let missing = leaf.uncovered(&wanted.all());
        if !missing.is_empty() {
            notes.push(format!(
                "{}: will be re-issued at start under the same CA, to cover {}",
                config.cert.display(),
                missing.join(", ")
            ));
        }
        return;
    }
    let missing = leaf.uncovered(&wanted.configured);
    if !missing.is_empty() {
        problems.push(format!(
            "{}: does not cover the configured name(s) {}; clients using them will refuse it{}",
            config.cert.display(),
            missing.join(", "),
            match (leaf.from_edge_ca, ours) {
                (true, true) => " ([tls] self_signed is false, so it is not re-issued)",
                (true, false) => " (it was made by an older registry-edge that did not keep its CA key: `registry-edge cert --force` makes a new CA)",
                _ => "",
            }
        ));
    }
}

fn check(path: &Path, config: &Config) -> ExitCode {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    match (config.cert.exists(), config.key.exists()) {
        _ if !config.tls => notes.push(
            "TLS is off ([tls] enabled = false): plain HTTP, for use behind a TLS terminator"
                .to_owned(),
        ),
        _ if config.acme.is_some() => {
            let a = config.acme.as_ref().expect("checked");
            notes.push(format!(
                "certificates from the ACME CA {} for {} by {:?}, kept in {}",
                a.directory_url,
                a.domains.join(", "),
                a.challenge,
                a.cache.display()
            ));
            for root in &a.ca_roots {
                if let Err(e) = std::fs::read(root) {
                    problems.push(format!("tls.acme.ca_roots: {}: {e}", root.display()));
                }
            }
        }
        (false, false) if config.self_signed => notes.push(format!(
            "{} and {} do not exist: a self-signed certificate will be generated at start",
            config.cert.display(),
            config.key.display()
        )),
        _ => match registry_edge::tls::load_certified_key(&config.cert, &config.key) {
            Ok(k) => {
                cert_coverage(config, &mut problems, &mut notes);
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
    if let registry_edge::config::Upstream::Embedded(core) = &config.upstream {
        let what = registry_core::describe_storage(core);
        match registry_edge::check_storage(core) {
            Ok(()) => notes.push(format!("storage {what}: usable")),
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
