//! The edge's Prometheus metrics, prefix `regedge_`, in the `prometheus` crate's default registry
//! (beside the embedded core's `regcore_` metrics), served on their own listener. Labels take only
//! values from fixed sets, whatever a client sends: route classes, the standard methods (anything
//! else is `other`, see [`registry_core::metrics::method_label`]), status codes 100-599 (else
//! `other`), results and reasons named here.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

macro_rules! metric {
    ($name:ident: $t:ty = $e:expr) => {
        pub static $name: LazyLock<$t> = LazyLock::new(|| $e.expect("metric registers once"));
    };
}

metric!(REQUESTS: IntCounterVec = register_int_counter_vec!(
    "regedge_http_requests_total",
    "Requests answered, by route class, method and status code.",
    &["route", "method", "code"]
));
metric!(DURATION: HistogramVec = register_histogram_vec!(
    "regedge_http_request_duration_seconds",
    "Time from request to the end of the response, by route class and method.",
    &["route", "method"],
    vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0]
));
metric!(IN_FLIGHT: IntGauge = register_int_gauge!(
    "regedge_http_requests_in_flight",
    "Requests being served right now."
));
metric!(REQUEST_BYTES: IntCounterVec = register_int_counter_vec!(
    "regedge_http_request_body_bytes_total",
    "Request body bytes received from clients, by route class.",
    &["route"]
));
metric!(RESPONSE_BYTES: IntCounterVec = register_int_counter_vec!(
    "regedge_http_response_body_bytes_total",
    "Response body bytes sent to clients, by route class.",
    &["route"]
));
metric!(AUTH: IntCounterVec = register_int_counter_vec!(
    "regedge_auth_attempts_total",
    "Authentication attempts by result: ok, missing, malformed, invalid, locked_out, busy (refused before bcrypt: too many checks in flight).",
    &["result"]
));
metric!(AUTH_CACHE: IntCounterVec = register_int_counter_vec!(
    "regedge_auth_cache_lookups_total",
    "Credential cache lookups for well-formed credentials: hit or miss (a miss runs bcrypt).",
    &["result"]
));
metric!(ACME_ORDERS: IntCounterVec = register_int_counter_vec!(
    "regedge_acme_orders_total",
    "ACME certificate orders, by result: ok, failed (retried with a doubling delay).",
    &["result"]
));
metric!(ACME_NEXT: IntGauge = register_int_gauge!(
    "regedge_acme_next_attempt_timestamp_seconds",
    "When the next ACME order is due (renewal at two thirds of the lifetime, or the next retry)."
));
metric!(ACME_CHALLENGES: IntCounterVec = register_int_counter_vec!(
    "regedge_acme_challenge_requests_total",
    "ACME validation requests received, by challenge (tls-alpn-01, http-01) and result (answered, unknown).",
    &["challenge", "result"]
));
metric!(TOKENS_ISSUED: IntCounterVec = register_int_counter_vec!(
    "regedge_tokens_issued_total",
    "Tokens handed out by /token (token mode), by kind: anonymous, get (Basic credentials), password and refresh_token (OAuth2 grants), refresh (a refresh token).",
    &["kind"]
));
metric!(TOKEN_REFUSED: IntCounterVec = register_int_counter_vec!(
    "regedge_token_requests_refused_total",
    "Token requests refused, by OAuth2 error: invalid_request, invalid_scope, invalid_client, invalid_grant, unsupported_grant_type, too_many_requests.",
    &["error"]
));
metric!(TOKEN_CHECKS: IntCounterVec = register_int_counter_vec!(
    "regedge_token_verifications_total",
    "Bearer tokens of API requests checked (token mode), by result: ok, missing, malformed, bad_signature, expired, not_yet_valid, wrong_issuer, wrong_audience, unknown_user.",
    &["result"]
));
metric!(UPSTREAM_ERRORS: IntCounterVec = register_int_counter_vec!(
    "regedge_upstream_errors_total",
    "Failures talking to the upstream registry, by kind: connect, timeout, other.",
    &["kind"]
));
metric!(UPSTREAMS: IntGauge = register_int_gauge!(
    "regedge_upstreams",
    "Upstream addresses in the pool ([upstream] urls, each resolved to all its addresses)."
));
metric!(UPSTREAMS_HEALTHY: IntGauge = register_int_gauge!(
    "regedge_upstreams_healthy",
    "Upstream addresses that passed their last health check."
));
metric!(BUILD_INFO: IntGaugeVec = register_int_gauge_vec!(
    "regedge_build_info",
    "Always 1; the labels tell the version.",
    &["version"]
));
metric!(HTPASSWD_USERS: IntGauge = register_int_gauge!(
    "regedge_htpasswd_users",
    "Users in the loaded htpasswd file."
));
metric!(RELOADS: IntCounterVec = register_int_counter_vec!(
    "regedge_reloads_total",
    "Reloads of the certificate or the htpasswd file, by file and result (ok, failed).",
    &["file", "result"]
));
metric!(TLS_HELLOS: IntCounter = register_int_counter!(
    "regedge_tls_client_hellos_total",
    "TLS handshakes begun (a certificate was chosen); those begun but not completed failed."
));
metric!(TLS_HANDSHAKES: IntCounterVec = register_int_counter_vec!(
    "regedge_tls_handshakes_total",
    "TLS handshakes completed, by result and protocol version.",
    &["result", "version"]
));
metric!(BCRYPT_QUEUED: IntGauge = register_int_gauge!(
    "regedge_bcrypt_checks_in_progress",
    "Password checks (bcrypt) queued or running on the bcrypt threads."
));
metric!(LOCKOUT_UNTRACKED: IntCounter = register_int_counter!(
    "regedge_lockout_untracked_total",
    "Failed logins not recorded because the lockout table was full of active blocks."
));
metric!(LOCKOUT_ENTRIES: IntGaugeVec = register_int_gauge_vec!(
    "regedge_lockout_entries",
    "Entries in the login lockout's tables, by table: address or user.",
    &["table"]
));
metric!(CONNECTIONS: IntGauge = register_int_gauge!(
    "regedge_connections_open",
    "Client connections open on the HTTPS port."
));
metric!(CONNECTIONS_REFUSED: IntCounterVec = register_int_counter_vec!(
    "regedge_connections_refused_total",
    "Client connections closed by the edge, by reason: per_address (over the per-address cap), handshake_timeout, handshake_failed, plain_http (HTTP on the HTTPS port), header_timeout (a request header not complete in time), draining (arrived while the edge drains to exit), acme_http_full (the ACME port-80 listener at its cap).",
    &["reason"]
));
metric!(CERT_EXPIRY: IntGauge = register_int_gauge!(
    "regedge_tls_certificate_expiry_timestamp_seconds",
    "When the served certificate expires, in seconds since the Unix epoch."
));

/// Registers every metric now, so a scrape shows them before the first request.
pub fn init() {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&DURATION);
    LazyLock::force(&IN_FLIGHT);
    LazyLock::force(&REQUEST_BYTES);
    LazyLock::force(&RESPONSE_BYTES);
    for r in [
        "ok",
        "missing",
        "malformed",
        "invalid",
        "locked_out",
        "busy",
    ] {
        AUTH.with_label_values(&[r]);
    }
    for r in ["hit", "miss"] {
        AUTH_CACHE.with_label_values(&[r]);
    }
    for k in ["connect", "timeout", "other"] {
        UPSTREAM_ERRORS.with_label_values(&[k]);
    }
    LazyLock::force(&TOKENS_ISSUED);
    LazyLock::force(&TOKEN_REFUSED);
    LazyLock::force(&TOKEN_CHECKS);
    LazyLock::force(&HTPASSWD_USERS);
    for f in ["certificate", "htpasswd"] {
        for r in ["ok", "failed"] {
            RELOADS.with_label_values(&[f, r]);
        }
    }
    LazyLock::force(&TLS_HELLOS);
    LazyLock::force(&TLS_HANDSHAKES);
    LazyLock::force(&CERT_EXPIRY);
    LazyLock::force(&BCRYPT_QUEUED);
    LazyLock::force(&LOCKOUT_UNTRACKED);
    LazyLock::force(&CONNECTIONS);
    for t in ["address", "user"] {
        LOCKOUT_ENTRIES.with_label_values(&[t]);
    }
    for r in [
        "per_address",
        "handshake_timeout",
        "handshake_failed",
        "plain_http",
        "header_timeout",
        "draining",
    ] {
        CONNECTIONS_REFUSED.with_label_values(&[r]);
    }
    registry_core::metrics::init();
}

/// The status code as a label: a real HTTP status, or `other` (an upstream may send anything).
pub fn code_label(code: u16) -> String {
    if (100..=599).contains(&code) {
        code.to_string()
    } else {
        "other".to_owned()
    }
}

/// The route class of a request path (the metric label).
pub fn route_class(path: &str) -> &'static str {
    match registry_core::routes::parse(path) {
        Some(r) => r.class(),
        None => "other",
    }
}
