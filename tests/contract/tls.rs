//! HTTPS (`--tls-cert`/`--tls-key`, issue 6 Scope 4): a self-signed certificate made in the
//! test, served by the same accept loop `sightline serve` runs (`http::server::Server`) on
//! 127.0.0.1:0; clients trust only that certificate. Covers the routes ES calls, refusals of
//! plain HTTP and of untrusting clients, graceful shutdown with a request in flight, the
//! handshake cap and timeout under a flood of silent clients, the start-up errors for bad files,
//! and the container healthcheck's choice of scheme.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use sightline::http::server::{Server, ServerLimits, StatsHandle};
use sightline::http::tls::{load_config, HandshakeLimits};

use crate::child::ChildServer;
use crate::common::*;
use crate::connections::quiet_limits;

/// A certificate for `localhost` and its key, as PEM files in a temporary directory.
struct CertFiles {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> CertFiles {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_pem, key_pem) = (cert.pem(), key_pair.serialize_pem());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, &key_pem).expect("write key");
    CertFiles {
        _dir: dir,
        cert,
        key,
        cert_pem,
        key_pem,
    }
}

/// A running HTTPS server and the means to stop it gracefully.
struct Running {
    addr: SocketAddr,
    stats: StatsHandle,
    stop: oneshot::Sender<()>,
    done: JoinHandle<()>,
}

async fn serve_tls(app: Router, files: &CertFiles) -> Running {
    serve_tls_with(app, files, HandshakeLimits::default()).await
}

async fn serve_tls_with(app: Router, files: &CertFiles, handshake: HandshakeLimits) -> Running {
    let config = load_config(&files.cert, &files.key).expect("the test certificate loads");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let limits = ServerLimits {
        handshake,
        ..quiet_limits()
    };
    let server = Server::new(listener, Some(config), app, limits);
    let (addr, stats) = (server.local_addr().expect("local address"), server.stats());
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        stop,
        done,
    }
}

/// A client that trusts only the test certificate and finds `localhost` at `addr`.
fn trusting_client(files: &CertFiles, addr: SocketAddr) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(files.cert_pem.as_bytes()).expect("PEM cert");
    reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("localhost", addr)
        .build()
        .expect("client")
}

fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

#[tokio::test]
async fn health_and_embeddings_are_served_over_https() {
    let files = self_signed();
    let server = serve_tls(app(), &files).await;
    let client = trusting_client(&files, server.addr);

    let health = client
        .get(https(server.addr, "/health"))
        .send()
        .await
        .expect("GET /health over TLS");
    assert_eq!(health.status(), StatusCode::OK);

    let embed = |key: Option<&str>| {
        let mut request = client
            .post(https(server.addr, "/v1/embeddings"))
            .header("content-type", OPENAI_CONTENT_TYPE)
            .body(openai_body(&["how big"], None, None, false));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let reply = embed(Some(API_KEY)).await.expect("POST over TLS");
    assert_eq!(reply.status(), StatusCode::OK);
    let body = reply.bytes().await.expect("body");
    let vectors = es_old_openai_parse(&body).expect("ES reads the answer");
    assert_eq!(vectors.len(), 1);
    assert_unit(&vectors[0], "the probe's vector over TLS");
    // TLS does not replace the key.
    let reply = embed(None).await.expect("POST over TLS");
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn plain_http_and_untrusting_clients_are_refused_and_the_server_keeps_serving() {
    let files = self_signed();
    let server = serve_tls(app(), &files).await;
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let result = plain
        .get(format!("http://{}/health", server.addr))
        .send()
        .await;
    assert!(result.is_err(), "plain HTTP got an answer: {result:?}");

    // The built-in roots do not include a self-signed certificate: a real handshake happened.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", server.addr)
        .build()
        .expect("client");
    let result = untrusting.get(https(server.addr, "/health")).send().await;
    assert!(
        result.is_err(),
        "an unknown certificate was accepted: {result:?}"
    );

    let client = trusting_client(&files, server.addr);
    let health = client
        .get(https(server.addr, "/health"))
        .send()
        .await
        .expect("still serving after failed handshakes");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight_and_stops_accepting() {
    let files = self_signed();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = {
        let (entered, release) = (entered.clone(), release.clone());
        Router::new().route(
            "/slow",
            get(move || async move {
                entered.notify_one();
                release.notified().await;
                "finished"
            }),
        )
    };
    let server = serve_tls(slow, &files).await;
    let client = trusting_client(&files, server.addr);
    let request = tokio::spawn(client.get(https(server.addr, "/slow")).send());
    entered.notified().await;

    server.stop.send(()).expect("the server is running");
    // Shutdown has begun once the port refuses connections; the request is still in flight.
    wait_until_closed(server.addr).await;
    assert!(!request.is_finished());

    release.notify_one();
    let reply = request
        .await
        .expect("task")
        .expect("the in-flight request completes");
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.text().await.expect("body"), "finished");
    patiently("the server to stop", server.done)
        .await
        .expect("the server stops cleanly");
}

/// Connects until the listening socket is gone.
async fn wait_until_closed(addr: SocketAddr) {
    wait_until(
        format!("{addr} to refuse connections after the shutdown signal"),
        || async move { TcpStream::connect(addr).await.is_err() },
    )
    .await;
}

/// A client that connects and never says a word: the server is waiting for its ClientHello.
async fn stalled_client(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("TCP connect")
}

/// Waits for the server to close a stalled connection: end of file (or a reset), never data.
async fn closed_by_server(mut stalled: TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    match patiently(what, stalled.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{what}: the server sent {n} bytes to a client that said nothing"),
    }
}

async fn health_over_tls(files: &CertFiles, addr: SocketAddr) -> StatusCode {
    let client = trusting_client(files, addr);
    patiently(
        "GET /health over TLS",
        client.get(https(addr, "/health")).send(),
    )
    .await
    .expect("GET /health over TLS")
    .status()
}

#[tokio::test]
async fn a_stalled_handshake_blocks_no_one_and_is_closed_after_the_timeout() {
    let files = self_signed();
    let limits = HandshakeLimits {
        max_concurrent: 4,
        timeout: Duration::from_secs(2),
    };
    let server = serve_tls_with(app(), &files, limits).await;
    let started = Instant::now();
    let stalled = stalled_client(server.addr).await;
    // Served while the silent client still holds its handshake open.
    assert_eq!(health_over_tls(&files, server.addr).await, StatusCode::OK);
    closed_by_server(stalled, "the stalled handshake").await;
    assert!(
        started.elapsed() >= limits.timeout,
        "closed after {:?}, before the {:?} timeout",
        started.elapsed(),
        limits.timeout
    );
    // The slot it held is free again.
    assert_eq!(health_over_tls(&files, server.addr).await, StatusCode::OK);
}

#[tokio::test]
async fn over_the_handshake_cap_the_oldest_stalled_handshake_makes_room() {
    // One handshake at a time and an hour to finish it: the silent client holds the only slot,
    // and the next client's handshake drops it instead of waiting behind it.
    let files = self_signed();
    let limits = HandshakeLimits {
        max_concurrent: 1,
        timeout: Duration::from_secs(3600),
    };
    let server = serve_tls_with(app(), &files, limits).await;
    let stalled = stalled_client(server.addr).await;
    wait_until("the silent client to be in its handshake", || {
        std::future::ready(server.stats.snapshot().accepted == 1)
    })
    .await;
    assert_eq!(health_over_tls(&files, server.addr).await, StatusCode::OK);
    closed_by_server(stalled, "the stalled handshake").await;
    let s = server.stats.snapshot();
    assert_eq!(
        (s.handshakes_evicted, s.handshake_timeouts),
        (1, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_flood_of_silent_tls_clients_does_not_keep_health_from_answering() {
    let files = self_signed();
    let limits = HandshakeLimits {
        max_concurrent: 4,
        timeout: Duration::from_secs(3600),
    };
    let server = serve_tls_with(app(), &files, limits).await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(stalled_client(server.addr).await);
    }
    wait_until("the flood to be accepted", || {
        std::future::ready(server.stats.snapshot().accepted == 200)
    })
    .await;
    // Answered promptly, and again, while 200 silent clients are connected.
    for _ in 0..3 {
        assert_eq!(health_over_tls(&files, server.addr).await, StatusCode::OK);
    }
    let s = server.stats.snapshot();
    assert!(s.handshakes_evicted >= 196, "{s:?}");
    // The 4 newest silent clients still hold the handshake slots, or were displaced by the
    // /health clients: never more than 4 handshakes at once.
    assert!(s.open <= 4 + 3, "{s:?}");
}

/// Runs `docker/healthcheck.sh` (the image's HEALTHCHECK) with `env`.
fn healthcheck(env: &[(&str, &str)]) -> bool {
    let mut command = std::process::Command::new("sh");
    command
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/healthcheck.sh"))
        .env_remove("SIGHTLINE_TLS_CERT")
        .env("SIGHTLINE_HEALTHCHECK_TIMEOUT", "20");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sh and curl run (curl is the image's healthcheck client)")
        .success()
}

#[tokio::test]
async fn the_container_healthcheck_follows_the_configured_scheme() {
    let files = self_signed();
    let cert = files.cert.to_str().expect("UTF-8 path");
    let key = files.key.to_str().expect("UTF-8 path");
    let https = ChildServer::start(&["--tls-cert", cert, "--tls-key", key]);
    let addr = https.addr.to_string();
    let plain = ChildServer::start(&[]);
    let plain_addr = plain.addr.to_string();
    let (ok_tls, wrong_scheme, ok_plain) = tokio::task::spawn_blocking(move || {
        (
            // Any value will do: the script asks only whether TLS is configured.
            healthcheck(&[
                ("SIGHTLINE_ADDR", &addr),
                ("SIGHTLINE_TLS_CERT", "/run/secrets/tls.crt"),
            ]),
            healthcheck(&[("SIGHTLINE_ADDR", &addr)]),
            healthcheck(&[("SIGHTLINE_ADDR", &plain_addr)]),
        )
    })
    .await
    .expect("join");
    // The certificate is for `localhost`, the probe calls 127.0.0.1: it passes only because the
    // local certificate is not verified.
    assert!(ok_tls, "the HTTPS server failed its healthcheck");
    assert!(!wrong_scheme, "plain HTTP against the HTTPS port passed");
    assert!(ok_plain, "the HTTP server failed its healthcheck");
}

#[test]
fn certificate_problems_are_start_up_errors_naming_the_flag() {
    let files = self_signed();
    let other = self_signed();
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let error = |cert: &Path, key: &Path| {
        let e = load_config(cert, key).expect_err("must fail");
        let message = format!("{e:#}");
        assert!(
            !message.contains(files.key_pem.lines().nth(1).expect("a base64 line")),
            "key material in an error: {message}"
        );
        message
    };

    let missing = dir.path().join("missing.pem");
    let e = error(&missing, &files.key);
    assert!(e.starts_with("cannot read `--tls-cert`"), "{e}");
    let e = error(&empty, &files.key);
    assert!(
        e.contains("`--tls-cert`") && e.contains("holds no PEM certificate"),
        "{e}"
    );
    // A certificate where the key should be.
    let e = error(&files.cert, &files.cert);
    assert!(
        e.contains("`--tls-key`") && e.contains("holds no PEM private key"),
        "{e}"
    );
    // A key that belongs to another certificate.
    let e = error(&files.cert, &other.key);
    assert!(
        e.starts_with("cannot use `--tls-cert`") && e.contains("`--tls-key`"),
        "{e}"
    );
    assert!(load_config(&files.cert, &files.key).is_ok());
}
