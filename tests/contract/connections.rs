//! Connections (issue 16 §1, §5): the connection cap, the header, body and idle timeouts, the
//! request-body budget and the shutdown grace of `http::server`, on 127.0.0.1:0 with raw sockets
//! so each test controls exactly which bytes are sent and when. Timeouts are short through
//! [`ServerLimits`]; what is not under test is an hour, so a close can only come from the timeout
//! the test is about. Every wait is for an observable state (the server's [`StatsHandle`], an
//! end of file) under `common::PATIENCE`; a close is asserted no earlier than its timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use sightline::http::server::{Server, ServerLimits, StatsHandle, StatsSnapshot};
use sightline::http::{router, HttpConfig};

use crate::common::*;

const HOUR: Duration = Duration::from_secs(3600);
/// The timeout under test: long enough to be measured, short enough to keep the suite quick.
const SHORT: Duration = Duration::from_millis(300);

/// Limits where nothing times out or is capped unless the test says so.
pub fn quiet_limits() -> ServerLimits {
    ServerLimits {
        max_connections: 1000,
        header_timeout: HOUR,
        body_timeout: HOUR,
        idle_timeout: HOUR,
        shutdown_grace: HOUR,
        ..ServerLimits::default()
    }
}

pub struct Running {
    pub addr: SocketAddr,
    pub stats: StatsHandle,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<()>,
}

impl Running {
    pub async fn start(app: Router, limits: ServerLimits) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = Server::new(listener, None, app, limits);
        Running::run(server)
    }

    pub fn run(server: Server) -> Running {
        let addr = server.local_addr().expect("local address");
        let stats = server.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stats,
            stop: Some(stop),
            done,
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Waits until the server's counters satisfy `holds`.
    pub async fn wait_for(&self, what: &str, holds: impl Fn(&StatsSnapshot) -> bool) {
        wait_until(what, || {
            let snapshot = self.snapshot();
            std::future::ready(holds(&snapshot))
        })
        .await;
    }

    pub fn shutdown(&mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
    }

    pub async fn stopped(self) {
        patiently("the server to stop", self.done)
            .await
            .expect("the server task");
    }
}

/// Reads until the server closes the connection (end of file, or a reset); returns what it sent.
pub async fn until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match patiently(what, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP response with a `Content-Length` body, leaving the connection open.
async fn one_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = patiently("a response", stream.read(&mut buf))
            .await
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a Content-Length");
            if data.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("TCP connect")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

async fn health(addr: SocketAddr) -> StatusCode {
    client()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("GET /health")
        .status()
}

async fn embed(addr: SocketAddr) -> Vec<Vec<f32>> {
    let reply = client()
        .post(format!("http://{addr}/v1/embeddings"))
        .bearer_auth(API_KEY)
        .header("content-type", OPENAI_CONTENT_TYPE)
        .body(openai_body(&["A dog in the snow"], None, None, false))
        .send()
        .await
        .expect("POST /v1/embeddings");
    assert_eq!(reply.status(), StatusCode::OK);
    es_old_openai_parse(&reply.bytes().await.expect("body")).expect("ES reads the answer")
}

/// A router whose `/hold` answers only when the test adds a permit; counts who is waiting.
fn holding_app() -> (Router, Arc<AtomicUsize>, Arc<Semaphore>) {
    let (entered, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let app = {
        let (entered, release) = (entered.clone(), release.clone());
        app().route(
            "/hold",
            get(move || async move {
                entered.fetch_add(1, Ordering::SeqCst);
                release.acquire().await.expect("open").forget();
                "released"
            }),
        )
    };
    (app, entered, release)
}

#[tokio::test]
async fn idle_connections_beyond_the_cap_evict_each_other_and_health_still_answers() {
    let limits = ServerLimits {
        max_connections: 8,
        ..quiet_limits()
    };
    let server = Running::start(app(), limits).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect(server.addr).await);
    }
    server
        .wait_for("20 connections accepted", |s| s.accepted == 20)
        .await;
    let s = server.snapshot();
    assert_eq!((s.open, s.evicted, s.refused), (8, 12, 0), "{s:?}");
    // The 12 oldest were closed, oldest first; the 8 newest are still open.
    for (i, stream) in idle.iter_mut().take(12).enumerate() {
        let sent = until_closed(stream, &format!("idle connection {i} to be evicted")).await;
        assert!(sent.is_empty(), "an evicted connection got data");
    }
    // Served at once although the cap is full of idle sockets: a new one evicts the oldest.
    assert_eq!(health(server.addr).await, StatusCode::OK);
    let vectors = embed(server.addr).await;
    assert_eq!(vectors.len(), 1);
    assert_unit(&vectors[0], "a request at the connection cap");
    let s = server.snapshot();
    assert_eq!((s.evicted, s.refused), (14, 0), "{s:?}");
}

#[tokio::test]
async fn when_every_connection_has_a_request_in_progress_a_new_one_is_closed_at_once() {
    let (app, entered, release) = holding_app();
    let limits = ServerLimits {
        max_connections: 2,
        ..quiet_limits()
    };
    let server = Running::start(app, limits).await;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client().get(format!("http://{}/hold", server.addr)).send()))
        .collect();
    wait_until("two requests in progress", || {
        std::future::ready(entered.load(Ordering::SeqCst) == 2)
    })
    .await;
    // Refused fast, not left hanging: the kernel accepted it, the server closed it unread.
    let mut third = connect(server.addr).await;
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let answer = until_closed(&mut third, "the connection over the cap to be closed").await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let s = server.snapshot();
    assert_eq!((s.open, s.refused, s.evicted), (2, 1, 0), "{s:?}");

    release.add_permits(2);
    for request in held {
        let reply = request.await.expect("task").expect("the held request");
        assert_eq!(reply.status(), StatusCode::OK);
    }
    assert_eq!(health(server.addr).await, StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_stalls_is_closed_after_the_body_timeout() {
    let limits = ServerLimits {
        body_timeout: SHORT,
        ..quiet_limits()
    };
    let server = Running::start(app(), limits).await;
    let mut stream = connect(server.addr).await;
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: {OPENAI_CONTENT_TYPE}\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[b' '; 40]).await.expect("40 bytes");
    let sent = Instant::now();
    let answer = until_closed(&mut stream, "the stalled body to be cut").await;
    let waited = sent.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("`--body-timeout`"), "{answer}");
    assert!(waited >= SHORT, "cut after {waited:?}, before {SHORT:?}");
    server
        .wait_for("the connection to be gone", |s| s.open == 0)
        .await;
}

#[tokio::test]
async fn half_sent_headers_are_closed_after_the_header_timeout_and_a_silent_socket_is_not() {
    let limits = ServerLimits {
        header_timeout: SHORT,
        ..quiet_limits()
    };
    let server = Running::start(app(), limits).await;
    // Opened first: if the header timeout ran from the accept, this one would go first.
    let _silent = connect(server.addr).await;
    let mut half = connect(server.addr).await;
    server.wait_for("two connections", |s| s.open == 2).await;
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half the headers");
    let sent = Instant::now();
    until_closed(&mut half, "half-sent headers to be cut").await;
    let waited = sent.elapsed();
    assert!(waited >= SHORT, "cut after {waited:?}, before {SHORT:?}");
    server
        .wait_for("the header timeout to be counted", |s| {
            s.header_timeouts == 1
        })
        .await;
    let s = server.snapshot();
    assert_eq!(
        (s.open, s.idle_timeouts),
        (1, 0),
        "the silent socket: {s:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let limits = ServerLimits {
        idle_timeout: SHORT,
        ..quiet_limits()
    };
    let server = Running::start(app(), limits).await;
    let mut stream = connect(server.addr).await;
    for _ in 0..2 {
        // Two requests on one connection: keep-alive works until the connection goes idle.
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let answer = one_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let answered = Instant::now();
    let rest = until_closed(&mut stream, "the idle connection to be closed").await;
    let waited = answered.elapsed();
    assert!(rest.is_empty());
    assert!(waited >= SHORT, "closed after {waited:?}, before {SHORT:?}");
    server
        .wait_for("the idle timeout to be counted", |s| s.idle_timeouts == 1)
        .await;
}

/// A POST of `len` declared bytes, sent with `Expect: 100-continue` and no body yet. Returns once
/// the server has asked for the body: the request is then in progress (its handler is reading
/// the body), an explicit hold the test releases by writing the body.
pub async fn post_awaiting_body(addr: SocketAddr, len: usize) -> TcpStream {
    let mut stream = connect(addr).await;
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: {OPENAI_CONTENT_TYPE}\r\nContent-Length: {len}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        let n = patiently("the server to ask for the body", stream.read(&mut byte))
            .await
            .expect("read");
        assert_eq!(n, 1, "closed before asking for the body");
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream
}

/// Splits a raw HTTP/1.1 answer into its final status and body (skipping a `100 Continue`).
pub fn final_response(answer: &[u8]) -> (u16, Vec<u8>) {
    let mut text = String::from_utf8_lossy(answer).into_owned();
    while text.starts_with("HTTP/1.1 100") {
        let end = text.find("\r\n\r\n").expect("an interim response") + 4;
        text = text[end..].to_owned();
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, body.as_bytes().to_vec())
}

/// A POST whose body is declared in full and held back after `sent` bytes.
async fn partial_post(addr: SocketAddr, body: &[u8], sent: usize) -> TcpStream {
    let mut stream = connect(addr).await;
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: {OPENAI_CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&body[..sent])
        .await
        .expect("part of the body");
    stream
}

/// An OpenAI body of exactly `len` bytes.
fn padded_body(len: usize) -> Vec<u8> {
    let open = r#"{"input":["A dog in the snow"],"pad":""#;
    let pad = len - open.len() - 2;
    format!("{open}{}\"}}", " ".repeat(pad)).into_bytes()
}

#[tokio::test]
async fn bodies_held_at_once_are_capped_with_a_429_and_retry_after() {
    let app = router(
        engine(),
        HttpConfig {
            max_body: 1000,
            max_buffered_body: 1024,
            ..http_config()
        },
    );
    let server = Running::start(app, quiet_limits()).await;
    // A client holds 800 bytes of the 1 KiB budget with a body it has not finished sending.
    let first_body = padded_body(800);
    let mut first = partial_post(server.addr, &first_body, 100).await;
    let probe = || async {
        client()
            .post(format!("http://{}/v1/embeddings", server.addr))
            .bearer_auth(API_KEY)
            .header("content-type", OPENAI_CONTENT_TYPE)
            .body(padded_body(500))
            .send()
            .await
            .expect("POST")
    };
    // The 500 bytes do not fit beside the 800 held: 429 at once, with the reason.
    wait_until("a request over the body budget to get its 429", || async {
        probe().await.status() == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    // The first body is still held: the next one is refused the same way.
    let refused = probe().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let message = refused.text().await.expect("body");
    assert!(message.contains("`--max-buffered-body`"), "{message}");

    // The held body completes: its request is answered, and the budget is free again.
    first.write_all(&first_body[100..]).await.expect("the rest");
    let answer =
        String::from_utf8_lossy(&until_closed(&mut first, "the held request").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(probe().await.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_cuts_stalled_requests_after_the_grace() {
    let (app, entered, release) = holding_app();
    let limits = ServerLimits {
        shutdown_grace: Duration::from_millis(500),
        ..quiet_limits()
    };
    let mut server = Running::start(app, limits).await;
    let mut silent = connect(server.addr).await;
    let mut mid_headers = connect(server.addr).await;
    mid_headers
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half the headers");
    let mut mid_body = post_awaiting_body(server.addr, 1000).await;
    mid_body.write_all(&[b' '; 40]).await.expect("40 bytes");
    let held = tokio::spawn(client().get(format!("http://{}/hold", server.addr)).send());
    wait_until("the held request to be in progress", || {
        std::future::ready(entered.load(Ordering::SeqCst) == 1)
    })
    .await;
    server.wait_for("4 connections", |s| s.open == 4).await;

    let signalled = Instant::now();
    server.shutdown();
    // Nothing in progress on these two: closed at once, while the held request still runs.
    until_closed(&mut silent, "the silent connection to close at shutdown").await;
    until_closed(
        &mut mid_headers,
        "the mid-headers connection to close at shutdown",
    )
    .await;
    assert!(!held.is_finished());
    // A request in progress finishes within the grace.
    release.add_permits(1);
    let reply = held.await.expect("task").expect("the held request");
    assert_eq!(reply.status(), StatusCode::OK);
    // The stalled body is cut when the grace runs out, and the server stops.
    let answer = until_closed(&mut mid_body, "the stalled body to be cut at the grace").await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(signalled.elapsed() >= Duration::from_millis(500));
    let stats = server.stats.clone();
    server.stopped().await;
    assert_eq!(stats.snapshot().cut_at_shutdown, 1);
}

#[tokio::test]
async fn after_max_connection_requests_the_response_says_close_and_the_connection_ends_cleanly() {
    let limits = ServerLimits {
        max_connection_requests: Some(3),
        ..quiet_limits()
    };
    let server = Running::start(app(), limits).await;
    let mut stream = connect(server.addr).await;
    for i in 1..=3 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let answer = one_response(&mut stream).await.to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert_eq!(
            answer.contains("connection: close"),
            i == 3,
            "response {i}: {answer}"
        );
    }
    // A clean end of file after the third response, never a reset.
    let mut buf = [0u8; 16];
    let n = patiently("the close after the last response", stream.read(&mut buf))
        .await
        .expect("a clean close, not a reset");
    assert_eq!(n, 0);
}

/// Runs `sightline serve` under `ulimit -n` settings and returns its log up to "serving".
fn serve_log_under(ulimit: &str) -> String {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(r#"{ulimit} && exec "$0" "$@""#))
        .arg(env!("CARGO_BIN_EXE_sightline"))
        .arg("serve")
        .arg("--model-dir")
        .arg(fixture("tiny-clip"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--threads", "1", "--decode-workers", "1"])
        .env("SIGHTLINE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().expect("stderr"))
        .lines()
        .map_while(Result::ok)
    {
        log.push_str(&line);
        log.push('\n');
        if line.contains("serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    log
}

/// The value of `key=` in the log line holding `needle`.
fn log_field(log: &str, needle: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} line in:\n{log}"));
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key}= is not a number in {line}"))
}

#[test]
fn serve_raises_the_soft_descriptor_limit_and_caps_connections_below_it() {
    let hard: u64 = {
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .expect("sh");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(u64::MAX)
    };
    assert!(
        hard > 512,
        "this test needs a hard descriptor limit over 512"
    );
    let log = serve_log_under("ulimit -Sn 512");
    assert_eq!(
        log_field(&log, "open-file limit", "soft_before"),
        512,
        "{log}"
    );
    let soft = log_field(&log, "open-file limit", "soft");
    assert_eq!(soft, log_field(&log, "open-file limit", "hard"), "{log}");
    assert_eq!(
        log_field(&log, "serving", "max_connections"),
        soft.saturating_sub(256).min(4096),
        "{log}"
    );
    // A hard limit of 512 cannot be raised: the cap leaves 256 descriptors of it.
    let log = serve_log_under("ulimit -n 512");
    assert_eq!(log_field(&log, "open-file limit", "soft"), 512, "{log}");
    assert_eq!(log_field(&log, "serving", "max_connections"), 256, "{log}");
}

/// For the shared `Request` builder: a GET with an `Authorization` value as given.
fn get_with_authorization(value: &str) -> Request<Body> {
    Request::builder()
        .uri("/info")
        .header(header::AUTHORIZATION, value)
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = app();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        send(&app, get_with_authorization(&format!("{scheme} {API_KEY}")))
            .await
            .assert_status(StatusCode::OK);
    }
    for value in [
        format!("Basic {API_KEY}"),
        format!("Bearer{API_KEY}"),
        "bearer wrong-key".to_owned(),
    ] {
        send(&app, get_with_authorization(&value))
            .await
            .assert_status(StatusCode::UNAUTHORIZED);
    }
}
