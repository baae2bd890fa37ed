//! The benchmark's load generator. `requests`: N keep-alive HTTP/1.1 connections (TLS or not),
//! each sending requests back to back for a fixed time — HEAD included, which stock wrk 4.1
//! cannot do — and reporting requests/s and latency percentiles. `handshakes`: full TLS
//! handshakes (no session resumption) per second. Results are one JSON object on stdout.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Request loops on keep-alive connections.
    Requests {
        /// http:// or https:// URL.
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// `Name: value`, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// PEM CA to trust for https.
        #[arg(long)]
        cacert: Option<String>,
    },
    /// Full TLS handshakes, one connection after another on each task.
    Handshakes {
        /// host:port
        #[arg(long)]
        addr: String,
        #[arg(long, default_value = "localhost")]
        server_name: String,
        #[arg(long)]
        cacert: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

fn tls_config(cacert: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(cacert).unwrap_or_else(|e| panic!("{cacert}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.expect("PEM certificate")).expect("a usable CA");
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(
    addr: &str,
    tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
) -> std::io::Result<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some((config, name)) => {
            let name = rustls_pki_types::ServerName::try_from(name.to_owned())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            Ok(Box::new(s))
        }
    }
}

struct Target {
    addr: String,
    host: String,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn parse_url(url: &str, cacert: Option<&str>) -> Target {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        panic!("{url}: http:// or https:// expected");
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    Target {
        addr,
        host: authority.to_owned(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.to_owned()
        },
        tls: tls.then(|| tls_config(cacert.expect("--cacert for https"), &[b"http/1.1"])),
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
}

async fn request_loop(
    t: Arc<Target>,
    method: http::Method,
    headers: Arc<Vec<(String, String)>>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let sni = t
        .host
        .rsplit_once(':')
        .map_or(t.host.as_str(), |(h, _)| h)
        .to_owned();
    'outer: while Instant::now() < deadline {
        let io = match connect(&t.addr, t.tls.as_ref().map(|c| (c, sni.as_str()))).await {
            Ok(io) => io,
            Err(_) => {
                tally.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(io)).await
        else {
            tally.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < deadline {
            let mut b = http::Request::builder()
                .method(method.clone())
                .uri(&t.path)
                .header("host", &t.host);
            for (k, v) in headers.iter() {
                b = b.header(k, v);
            }
            let req = b.body(Empty::new()).expect("request");
            let start = Instant::now();
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(_) => {
                    tally.errors += 1;
                    continue 'outer;
                }
            };
            let status = resp.status().as_u16();
            if resp.into_body().collect().await.is_err() {
                tally.errors += 1;
                continue 'outer;
            }
            *tally.statuses.entry(status).or_default() += 1;
            if (200..300).contains(&status) {
                tally
                    .latencies_us
                    .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
            } else {
                tally.errors += 1;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Requests {
            url,
            method,
            headers,
            connections,
            seconds,
            cacert,
        } => {
            let target = Arc::new(parse_url(&url, cacert.as_deref()));
            let method: http::Method = method.parse().expect("an HTTP method");
            let headers: Arc<Vec<(String, String)>> = Arc::new(
                headers
                    .iter()
                    .map(|h| {
                        let (k, v) = h.split_once(':').expect("Name: value");
                        (k.trim().to_owned(), v.trim().to_owned())
                    })
                    .collect(),
            );
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(seconds);
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    tokio::spawn(request_loop(
                        target.clone(),
                        method.clone(),
                        headers.clone(),
                        deadline,
                    ))
                })
                .collect();
            let mut all = Tally::default();
            for t in tasks {
                let t = t.await.expect("task");
                all.latencies_us.extend(t.latencies_us);
                all.errors += t.errors;
                for (s, n) in t.statuses {
                    *all.statuses.entry(s).or_default() += n;
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            all.latencies_us.sort_unstable();
            let ok = all.latencies_us.len();
            println!(
                "{}",
                serde_json::json!({
                    "requests": ok,
                    "errors": all.errors,
                    "statuses": all.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
                    "seconds": elapsed,
                    "rps": ok as f64 / elapsed,
                    "p50_us": percentile(&all.latencies_us, 0.50),
                    "p99_us": percentile(&all.latencies_us, 0.99),
                })
            );
        }
        Command::Handshakes {
            addr,
            server_name,
            cacert,
            connections,
            seconds,
        } => {
            let config = tls_config(&cacert, &[b"h2", b"http/1.1"]);
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(seconds);
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    let (addr, name, config) = (addr.clone(), server_name.clone(), config.clone());
                    tokio::spawn(async move {
                        let (mut ok, mut failed) = (0u64, 0u64);
                        while Instant::now() < deadline {
                            match connect(&addr, Some((&config, &name))).await {
                                Ok(_) => ok += 1,
                                Err(_) => failed += 1,
                            }
                        }
                        (ok, failed)
                    })
                })
                .collect();
            let (mut ok, mut failed) = (0, 0);
            for t in tasks {
                let (o, f) = t.await.expect("task");
                ok += o;
                failed += f;
            }
            let elapsed = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({ "handshakes": ok, "failed": failed, "seconds": elapsed, "per_second": ok as f64 / elapsed })
            );
        }
    }
}
