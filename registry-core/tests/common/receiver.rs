//! A webhook receiver for the notification tests: a small HTTP/1.1 server on 127.0.0.1 (port 0,
//! or a port it is told to come back on) that records every POST, on a thread and runtime of its
//! own, stopped on drop. It can hold its answers until the test opens its gate, to show that
//! nothing a client does waits for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Post {
    pub fn events(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON envelope");
        v["events"].as_array().expect("events list").clone()
    }
}

#[derive(Default)]
struct Shared {
    posts: Mutex<Vec<Post>>,
    /// Answers completed.
    answered: Mutex<usize>,
}

pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Answers every POST with 200 at once.
    pub fn start() -> Receiver {
        Self::start_on(0, true)
    }

    /// A receiver on `port` (0: any); with `open` false, POSTs are held until [`Receiver::open`].
    pub fn start_on(port: u16, open: bool) -> Receiver {
        let gate = Arc::new(tokio::sync::Semaphore::new(if open {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            0
        }));
        Self::serve(port, Arc::new(Shared::default()), gate)
    }

    fn serve(port: u16, shared: Arc<Shared>, gate: Arc<tokio::sync::Semaphore>) -> Receiver {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (s2, g2) = (shared.clone(), gate.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let (sock, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                        _ = &mut stop_rx => break,
                    };
                    let (shared, gate) = (s2.clone(), g2.clone());
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: http::Request<hyper::body::Incoming>| {
                                let (shared, gate) = (shared.clone(), gate.clone());
                                async move {
                                    let (parts, body) = req.into_parts();
                                    let body = body
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    shared.posts.lock().unwrap().push(Post {
                                        path: parts.uri.path().to_owned(),
                                        headers: parts.headers,
                                        body,
                                    });
                                    let _permit = gate.acquire().await;
                                    *shared.answered.lock().unwrap() += 1;
                                    Ok::<_, std::convert::Infallible>(http::Response::new(
                                        Full::new(Bytes::from_static(b"ok")),
                                    ))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                            .await;
                    });
                }
                // Down means down: open connections go too.
                conns.abort_all();
            });
        });
        Receiver {
            port,
            shared,
            gate,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Lets every held and later POST be answered.
    pub fn open(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    /// Stops listening (the port stays reserved by nobody: a sender sees connection refused).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port, keeping what it received.
    pub fn restart(mut self) -> Receiver {
        self.stop();
        let (port, shared, gate) = (self.port, self.shared.clone(), self.gate.clone());
        // The port was just released; binding it again can race a lingering socket.
        for _ in 0..50 {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Self::serve(port, shared, gate)
    }

    pub fn posts(&self) -> Vec<Post> {
        self.shared.posts.lock().unwrap().clone()
    }

    pub fn answered(&self) -> usize {
        *self.shared.answered.lock().unwrap()
    }

    /// Every event received at `path`, in order of arrival.
    pub fn events(&self, path: &str) -> Vec<serde_json::Value> {
        self.posts()
            .iter()
            .filter(|p| p.path == path)
            .flat_map(|p| p.events())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.gate.close();
        self.stop();
    }
}
