//! Faults (issue 6, Scope 3): work nobody waits for never reaches the model, broken bundles fail
//! at start with a message naming the file, an inference failure fails only its own batch, and
//! SIGTERM lets what is in flight finish while new connections are refused.
//!
//! The queue tests run the real binary (`sightline serve`) on a loopback port, because whether a
//! disconnected client's job ran is visible only in that process's own `/metrics`
//! (`sightline_batch_items`, `sightline_inferred_total`: what reached the model;
//! `sightline_dropped_total`: what was dropped and why), which the other tests of this binary
//! would otherwise share. A long `--text-batch-wait` holds jobs in the queue, and the test
//! fills the batch to release it: no sleeps, every wait is for an observable state.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;

use crate::common::*;
use sightline::engine::{Engine, EngineOptions, Modality};
use sightline::http::router;

const TEXT: &str = "A dog in the snow";
/// Longest any wait for an observable state may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// A `sightline serve` child process on a loopback port.

struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    client: reqwest::Client,
}

impl Server {
    /// Starts `sightline serve` on the tiny bundle with `args`, and returns once it listens.
    fn start(args: &[&str]) -> Server {
        // The port is picked by the kernel and released for the child: if another process takes
        // it in between, the child fails to listen and we try again with a new one.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut child = Command::new(env!("CARGO_BIN_EXE_sightline"))
                .arg("serve")
                .arg("--model-dir")
                .arg(fixture("tiny-clip"))
                .args(["--addr", &addr.to_string(), "--api-key", API_KEY])
                .args(["--threads", "1", "--decode-workers", "1"])
                .args(args)
                .env("SIGHTLINE_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the sightline binary starts");
            // Read the log until the server says it is serving (or exits); then keep draining it
            // on a thread so request logs never fill the pipe.
            let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
            let log = Arc::new(Mutex::new(String::new()));
            let mut serving = false;
            for line in lines.by_ref() {
                let line = line.unwrap_or_default();
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if line.contains("serving") {
                    serving = true;
                    break;
                }
            }
            if !serving {
                let status = child.wait().expect("wait");
                let log = log.lock().unwrap().clone();
                if log.contains("cannot listen") {
                    continue;
                }
                panic!("sightline serve exited ({status}) before serving:\n{log}");
            }
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    sink.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
            let client = reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .expect("client");
            return Server {
                child,
                addr,
                log,
                client,
            };
        }
        panic!("no free loopback port after 3 tries");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs an OpenAI-dialect body on a connection of its own; returns status and JSON.
    fn embed(&self, inputs: &[&str]) -> impl std::future::Future<Output = (StatusCode, Value)> {
        // A fresh client per request: its own connection, closed when the future is dropped.
        let client = reqwest::Client::builder()
            .timeout(PATIENCE)
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let request = client
            .post(self.url("/v1/embeddings"))
            .bearer_auth(API_KEY)
            .header("content-type", OPENAI_CONTENT_TYPE)
            .body(openai_body(inputs, None, None, false));
        async move {
            let response = request.send().await.expect("the server answers");
            let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
            let json = response.json().await.expect("a JSON body");
            (status, json)
        }
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("text")
    }

    /// The value of one sample line of `/metrics` (0 when absent).
    async fn metric(&self, sample: &str) -> f64 {
        sample_value(&self.metrics().await, sample)
    }

    /// Waits until `/metrics` shows `depth` inputs admitted for `modality`.
    async fn wait_for_depth(&self, modality: &str, depth: usize) {
        let sample = format!(r#"sightline_queue_depth{{modality="{modality}"}}"#);
        let until = Instant::now() + PATIENCE;
        loop {
            if self.metric(&sample).await == depth as f64 {
                return;
            }
            assert!(
                Instant::now() < until,
                "{modality} queue depth never reached {depth}:\n{}",
                self.log()
            );
            tokio::task::yield_now().await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit by itself, within `PATIENCE`.
    fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "the server did not exit:\n{}",
                self.log()
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample_value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn text_vector(json: &Value, i: usize) -> Vec<f32> {
    json["data"][i]["embedding"]
        .as_array()
        .expect("an embedding")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

const TEXT_BATCH_SUM: &str = r#"sightline_batch_items_sum{modality="text"}"#;
const TEXT_BATCH_COUNT: &str = r#"sightline_batch_items_count{modality="text"}"#;
const TEXT_INFERRED: &str = r#"sightline_inferred_total{modality="text"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_clients_input_never_reaches_the_model() {
    // The text worker takes the first job and then waits up to an hour for its batch of 4 to
    // fill, so jobs stay in the queue for as long as the test needs.
    let server = Server::start(&["--text-batch-wait", "1h", "--max-batch-text", "4"]);
    let first = tokio::spawn(server.embed(&[TEXT]));
    server.wait_for_depth("text", 1).await;
    // The second client's request is admitted and queued (admission and enqueueing happen in
    // one poll of the handler, so depth 2 means its job is in the queue), then it hangs up.
    let gone = tokio::spawn(server.embed(&["a client that hangs up"]));
    server.wait_for_depth("text", 2).await;
    gone.abort();
    // The server notices the closed connection and drops the handler: its admission is released.
    server.wait_for_depth("text", 1).await;
    // Two more texts fill the batch (1 + 1 abandoned + 2 = 4): it runs now.
    let (status, third) = server.embed(&[TEXT, TEXT]).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let (status, first) = first.await.expect("first request");
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_golden(&text_vector(&first, 0), &golden_text(TEXT), "first request");
    assert_golden(&text_vector(&third, 1), &golden_text(TEXT), "third request");
    // One batch ran, with 3 inputs: the abandoned one was dropped before inference.
    let metrics = server.metrics().await;
    assert_eq!(sample_value(&metrics, TEXT_BATCH_COUNT), 1.0, "{metrics}");
    assert_eq!(
        sample_value(&metrics, TEXT_BATCH_SUM),
        3.0,
        "the disconnected client's input reached the model"
    );
    assert_eq!(sample_value(&metrics, TEXT_INFERRED), 3.0, "{metrics}");
    assert_eq!(
        sample_value(
            &metrics,
            r#"sightline_dropped_total{modality="text",reason="disconnected"}"#
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_past_request_timeout_is_503_and_never_reaches_the_model() {
    let server = Server::start(&[
        "--text-batch-wait",
        "1h",
        "--max-batch-text",
        "3",
        "--request-timeout",
        "2s",
    ]);
    // Alone in the batch, the first input waits past its deadline: the client gets a 503.
    let (status, late) = server.embed(&[TEXT]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{late}");
    let message = late["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("input[0]: ") && message.contains("--request-timeout"),
        "{message}"
    );
    // Its job is still in the gathering batch; two fresh inputs complete the batch of 3, and the
    // expired one is answered with a timeout instead of being run.
    let (status, fresh) = server.embed(&[TEXT, TEXT]).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_golden(&text_vector(&fresh, 0), &golden_text(TEXT), "fresh request");
    let metrics = server.metrics().await;
    assert_eq!(sample_value(&metrics, TEXT_BATCH_COUNT), 1.0, "{metrics}");
    assert_eq!(
        sample_value(&metrics, TEXT_BATCH_SUM),
        2.0,
        "the expired input reached the model"
    );
    assert_eq!(sample_value(&metrics, TEXT_INFERRED), 2.0, "{metrics}");
    assert_eq!(
        sample_value(
            &metrics,
            r#"sightline_dropped_total{modality="text",reason="timeout"}"#
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() {
    // Batches wait 6 s for company, so every request below is still in flight when SIGTERM comes.
    let mut server = Server::start(&[
        "--batch-wait",
        "6s",
        "--text-batch-wait",
        "6s",
        "--max-batch",
        "64",
        "--max-batch-text",
        "64",
    ]);
    let jpeg = data_uri("landscape.jpg");
    let png = data_uri("small-100x50.png");
    let mut in_flight = Vec::new();
    for i in 0..8 {
        in_flight.push(tokio::spawn(server.embed(&[TEXT])));
        let image = if i % 2 == 0 { &jpeg } else { &png };
        in_flight.push(tokio::spawn(server.embed(&[image])));
    }
    server.wait_for_depth("text", 8).await;
    server.wait_for_depth("image", 8).await;

    server.terminate();
    // New connections are refused while the 16 requests are still being served.
    let until = Instant::now() + PATIENCE;
    while TcpStream::connect_timeout(&server.addr, Duration::from_secs(1)).is_ok() {
        assert!(Instant::now() < until, "still accepting after SIGTERM");
        tokio::task::yield_now().await;
    }
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "the refusal must be observed while requests are in flight"
    );
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "the server exited before finishing its requests"
    );

    for (i, task) in in_flight.into_iter().enumerate() {
        let (status, json) = task.await.expect("request task");
        assert_eq!(status, StatusCode::OK, "request {i}: {json}");
        let golden = if i % 2 == 0 {
            golden_text(TEXT)
        } else if i % 4 == 1 {
            golden_image("landscape.jpg")
        } else {
            golden_image("small-100x50.png")
        };
        assert_golden(&text_vector(&json, 0), &golden, &format!("request {i}"));
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit();
        (status, server.log())
    })
    .await
    .expect("join");
    assert_eq!(status.0.code(), Some(0), "exit status; log:\n{}", status.1);
}

// ---------------------------------------------------------------------------------------------
// Broken bundles: a clear error at start.

/// A copy of the tiny bundle in a temporary directory, for breaking.
fn bundle_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture("tiny-clip")).expect("bundle") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).expect("copy");
    }
    dir
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("sightline.json");
    let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

fn start_error(dir: &Path) -> String {
    match Engine::start(dir, test_options()) {
        Ok(_) => panic!("a broken bundle in {} started", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// What is broken, how, and what the start error must say.
type Breakage<'a> = (&'a str, &'a dyn Fn(&Path), &'a [&'a str]);

#[test]
fn a_broken_or_missing_model_file_is_a_clear_error_at_start() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let cases: [Breakage; 6] = [
        (
            "image encoder is garbage",
            &|d| std::fs::write(d.join("image_encoder.onnx"), &garbage).unwrap(),
            &["cannot load the ONNX model", "image_encoder.onnx"],
        ),
        (
            "text encoder cut in half",
            &|d| {
                let p = d.join("text_encoder.onnx");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
            },
            &["cannot load the ONNX model", "text_encoder.onnx"],
        ),
        (
            "text encoder empty",
            &|d| std::fs::write(d.join("text_encoder.onnx"), b"").unwrap(),
            &["text_encoder.onnx"],
        ),
        (
            "image encoder missing",
            &|d| std::fs::remove_file(d.join("image_encoder.onnx")).unwrap(),
            &["image_encoder.onnx", "does not exist"],
        ),
        (
            "tokenizer is garbage",
            &|d| std::fs::write(d.join("tokenizer.json"), &garbage).unwrap(),
            &["cannot load the tokenizer", "tokenizer.json"],
        ),
        (
            "manifest missing",
            &|d| std::fs::remove_file(d.join("sightline.json")).unwrap(),
            &["sightline.json"],
        ),
    ];
    for (what, breakage, needles) in cases {
        let dir = bundle_copy();
        breakage(dir.path());
        let message = start_error(dir.path());
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: {message:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn serve_with_a_broken_model_exits_non_zero_before_listening() {
    let dir = bundle_copy();
    std::fs::write(dir.path().join("image_encoder.onnx"), b"not a model").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .arg("serve")
        .arg("--model-dir")
        .arg(dir.path())
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("image_encoder.onnx"),
        "the broken file is not named: {stderr}"
    );
    assert!(!stderr.contains("serving"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Inference failures.

#[tokio::test]
async fn an_inference_failure_fails_only_its_own_batch_with_500() {
    // This copy claims 512 positions while the graph has 128: a text over 128 tokens makes the
    // text encoder fail (its position table is too short), shorter ones run fine.
    let dir = bundle_copy();
    edit_manifest(dir.path(), |m| m["max_seq_len"] = 512.into());
    let engine = Engine::start(
        dir.path(),
        EngineOptions {
            batch_wait: Duration::from_secs(3600),
            text_batch_wait: Duration::from_secs(3600),
            max_batch_text: 2,
            max_batch_image: 1,
            ..test_options()
        },
    )
    .expect("the bundle loads");
    let app = router(engine.clone(), http_config());
    let long = "dog ".repeat(300);

    // A short text and the poisonous one share a batch (2 jobs fill it): both fail.
    let innocent = tokio::spawn({
        let app = app.clone();
        async move {
            send(
                &app,
                openai_request("/v1/embeddings", openai_body(&[TEXT], None, None, false)),
            )
            .await
        }
    });
    while engine.queue_depth(Modality::Text) < 1 {
        tokio::task::yield_now().await;
    }
    let poison = send(
        &app,
        openai_request("/v1/embeddings", openai_body(&[&long], None, None, false)),
    )
    .await;
    let innocent = innocent.await.expect("task");
    for (what, reply) in [("poison", &poison), ("same batch", &innocent)] {
        reply.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
        let (message, kind) = reply.openai_error();
        assert_eq!(kind, "server_error", "{what}");
        assert!(
            message.starts_with("input[0]: inference failed: "),
            "{what}: {message}"
        );
    }
    // The next batch is unaffected, and the worker is still ready.
    let v = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&[TEXT, "how big"], None, None, false),
        2,
    )
    .await;
    assert_golden(&v[0], &golden_text(TEXT), "the batch after a failed one");
    send(&app, get("/ready", None))
        .await
        .assert_status(StatusCode::OK);
    // Images never shared the failed batch.
    let v = openai_vectors(
        &app,
        "/v1/embeddings",
        openai_body(&[&data_uri("landscape.jpg")], None, None, false),
        1,
    )
    .await;
    assert_golden(
        &v[0],
        &golden_image("landscape.jpg"),
        "image after text failure",
    );
}

#[tokio::test]
async fn a_manifest_that_misstates_the_dimensions_is_a_clear_error() {
    // The graph outputs 512 values; this copy's manifest says 256.
    let dir = bundle_copy();
    edit_manifest(dir.path(), |m| m["dimensions"] = 256.into());
    match Engine::start(dir.path(), test_options()) {
        // Best: refused at start, naming both numbers.
        Err(e) => {
            let message = format!("{e:#}");
            assert!(
                message.contains("256") && message.contains("512"),
                "{message}"
            );
        }
        // Otherwise every batch fails with a 500 that names both numbers.
        Ok(engine) => {
            let app = router(engine, http_config());
            for input in [TEXT.to_owned(), data_uri("landscape.jpg")] {
                let reply = send(
                    &app,
                    openai_request("/v1/embeddings", openai_body(&[&input], None, None, false)),
                )
                .await;
                reply.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
                let (message, _) = reply.openai_error();
                eprintln!("dimensions 256 vs 512: {message}");
                assert!(
                    message.contains("256") && message.contains("512"),
                    "{message}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Over-limit bodies on a real connection.

/// Sends `body` with its Content-Length on a raw connection, then reads the whole answer.
/// Returns what the client saw: the status line and body, or the I/O error that ended it.
fn raw_post(addr: SocketAddr, body: &[u8]) -> Result<String, std::io::Error> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: {OPENAI_CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_gets_its_400_not_a_reset_connection() {
    // ES's HTTP client writes the whole body before it reads the answer, and it retries an
    // I/O error (es-contract §11 item 13) but not a 400. A server that answers early and closes
    // while the body is still arriving makes the client's write fail (EPIPE/ECONNRESET): the
    // clear `--max-body` message is lost and ES retries in vain. Finding F6 in docs/reliability.md.
    let server = Server::start(&["--max-body", "8MiB"]);
    let body = format!(r#"{{"input":["{TEXT}"],"pad":"{}"}}"#, " ".repeat(16 << 20));
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || raw_post(addr, body.as_bytes()))
        .await
        .expect("join");
    let answer = answer.unwrap_or_else(|e| {
        panic!("the client could not send its 16 MiB body and read the answer: {e}")
    });
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("--max-body"), "{answer}");
    // The server is unharmed.
    let (status, json) = server.embed(&[TEXT]).await;
    assert_eq!(status, StatusCode::OK, "{json}");
}
