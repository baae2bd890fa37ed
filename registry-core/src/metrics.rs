//! Prometheus metrics, prefix `regcore_`, registered in the `prometheus` crate's default registry
//! so that an embedding process (the edge) serves them beside its own. No label takes an
//! unbounded value: routes are classes, never repositories or digests.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_http_requests_total",
        "HTTP requests answered, by route class, method and status code.",
        &["route", "method", "code"]
    )
    .expect("metric registers once")
});

static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "regcore_http_request_duration_seconds",
        "Time from request to response headers, by route class and method.",
        &["route", "method"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 300.0, 1800.0
        ]
    )
    .expect("metric registers once")
});

static BYTES_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "regcore_received_bytes_total",
        "Blob upload bytes received and stored."
    )
    .expect("metric registers once")
});

static BYTES_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_sent_bytes_total",
        "Body bytes sent, by route class.",
        &["route"]
    )
    .expect("metric registers once")
});

static UPLOADS_IN_PROGRESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "regcore_uploads_in_progress",
        "Upload requests whose body is being received right now."
    )
    .expect("metric registers once")
});

static UPLOAD_OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_uploads_total",
        "Upload session events: started, completed, mounted, digest_mismatch, interrupted, cancelled, purged, rehashed (a digest computed by reading the upload back, when no saved hash state fits).",
        &["outcome"]
    )
    .expect("metric registers once")
});

static NOTIFY_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_notification_events_sent_total",
        "Notification events delivered, by endpoint (a configured name).",
        &["endpoint"]
    )
    .expect("metric registers once")
});

static NOTIFY_FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_notification_deliveries_failed_total",
        "Notification POSTs that failed (and will be retried), by endpoint.",
        &["endpoint"]
    )
    .expect("metric registers once")
});

static NOTIFY_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_notification_events_dropped_total",
        "Notification events dropped (the queue was full), by endpoint.",
        &["endpoint"]
    )
    .expect("metric registers once")
});

static NOTIFY_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "regcore_notification_events_pending",
        "Notification events queued for delivery, by endpoint.",
        &["endpoint"]
    )
    .expect("metric registers once")
});

static STORAGE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "regcore_storage_errors_total",
        "Storage operations that failed with an I/O error."
    )
    .expect("metric registers once")
});

static STORAGE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_storage_requests_total",
        "Requests to the storage backend, by kind: get, put, stat, read, list, delete, write (a streamed write opened), rename.",
        &["op"]
    )
    .expect("metric registers once")
});

/// Counts one storage request of kind `op` (a fixed set: see the metric's help).
pub fn storage_request(op: &'static str) {
    STORAGE_REQUESTS.with_label_values(&[op]).inc();
}

static GC_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_gc_runs_total",
        "Scheduled garbage collections, by result (ok, failed).",
        &["result"]
    )
    .expect("metric registers once")
});

static GC_FREED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "regcore_gc_freed_bytes_total",
        "Bytes of blobs removed by scheduled garbage collections."
    )
    .expect("metric registers once")
});

static GC_REMOVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "regcore_gc_removed_total",
        "Manifests and blobs removed by scheduled garbage collections, by kind.",
        &["kind"]
    )
    .expect("metric registers once")
});

static GC_DURATION: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    prometheus::register_gauge!(
        "regcore_gc_last_duration_seconds",
        "How long the last scheduled garbage collection took."
    )
    .expect("metric registers once")
});

/// Records one scheduled garbage collection.
pub fn gc_run(
    result: &Result<crate::gc::Report, crate::error::RegistryError>,
    took: std::time::Duration,
) {
    GC_DURATION.set(took.as_secs_f64());
    match result {
        Ok(r) => {
            GC_RUNS.with_label_values(&["ok"]).inc();
            GC_FREED.inc_by(r.bytes);
            GC_REMOVED
                .with_label_values(&["manifest"])
                .inc_by(r.manifests.len() as u64);
            GC_REMOVED
                .with_label_values(&["blob"])
                .inc_by(r.blobs.len() as u64);
        }
        Err(_) => GC_RUNS.with_label_values(&["failed"]).inc(),
    }
}

/// Registers every metric now, so a scrape shows them before the first request.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&DURATION);
    LazyLock::force(&BYTES_RECEIVED);
    LazyLock::force(&BYTES_SENT);
    LazyLock::force(&UPLOADS_IN_PROGRESS);
    LazyLock::force(&UPLOAD_OUTCOMES);
    LazyLock::force(&STORAGE_ERRORS);
    LazyLock::force(&STORAGE_REQUESTS);
    LazyLock::force(&GC_RUNS);
    LazyLock::force(&GC_FREED);
    LazyLock::force(&GC_REMOVED);
    LazyLock::force(&GC_DURATION);
}

/// A method as a metric label: one of the standard methods, or `other`. A client chooses the
/// method, so it is never used as a label as it is.
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

pub fn request(route: &str, method: &http::Method, code: u16, seconds: f64) {
    let method = method_label(method);
    REQUESTS
        .with_label_values(&[route, method, &code.to_string()])
        .inc();
    DURATION
        .with_label_values(&[route, method])
        .observe(seconds);
}

pub fn bytes_received(n: usize) {
    BYTES_RECEIVED.inc_by(n as u64);
}

pub fn bytes_sent(route: &str, n: usize) {
    BYTES_SENT.with_label_values(&[route]).inc_by(n as u64);
}

pub fn uploads_in_progress(delta: i64) {
    UPLOADS_IN_PROGRESS.add(delta);
}

pub fn upload_outcome(outcome: &str) {
    UPLOAD_OUTCOMES.with_label_values(&[outcome]).inc();
}

pub fn notification_sent(endpoint: &str, n: usize) {
    NOTIFY_SENT.with_label_values(&[endpoint]).inc_by(n as u64);
}

pub fn notification_failed(endpoint: &str) {
    NOTIFY_FAILED.with_label_values(&[endpoint]).inc();
}

pub fn notification_dropped(endpoint: &str, n: usize) {
    NOTIFY_DROPPED
        .with_label_values(&[endpoint])
        .inc_by(n as u64);
}

pub fn notification_pending(endpoint: &str, n: usize) {
    NOTIFY_PENDING.with_label_values(&[endpoint]).set(n as i64);
}

pub fn storage_error() {
    STORAGE_ERRORS.inc();
}

/// The default registry in the Prometheus text format.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    enc.encode(&prometheus::gather(), &mut buf)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}
