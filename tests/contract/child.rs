//! A `sightline serve` child process on a loopback port, for tests that need what only a process
//! of its own shows: its own `/metrics` (the in-process tests of this binary share one registry),
//! real connections that clients drop, and signals. Replies come back as [`Reply`]s and pass the
//! suite-wide rules like every in-process one; if a test fails, the server's log is printed.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::*;

pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    client: reqwest::Client,
}

impl ChildServer {
    /// Starts `sightline serve` on the tiny bundle (one ONNX thread, so one image lane, and one
    /// decoding thread) with `args`, and returns once it listens.
    pub fn start(args: &[&str]) -> ChildServer {
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
            return ChildServer {
                child,
                addr,
                log,
                client,
            };
        }
        panic!("no free loopback port after 3 tries");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs an OpenAI-dialect body of `inputs` on a connection of its own (closed when the
    /// future is dropped, as a client that hangs up).
    pub fn embed(&self, inputs: &[&str]) -> impl std::future::Future<Output = Reply> {
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
            let (status, headers) = (response.status(), response.headers().clone());
            let body = response.bytes().await.expect("the body can be read");
            let reply = Reply {
                status,
                headers,
                body,
            };
            assert_suite_rules("POST /v1/embeddings", &reply);
            reply
        }
    }

    pub async fn metrics(&self) -> String {
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
    pub async fn metric(&self, sample: &str) -> f64 {
        sample_value(&self.metrics().await, sample)
    }

    /// Inference batches run so far for `modality`, and the inputs they held in all
    /// (`sightline_batch_items`' `_count` and `_sum`).
    pub async fn batches(&self, modality: &str) -> (f64, f64) {
        let metrics = self.metrics().await;
        let sample = |part: &str| {
            sample_value(
                &metrics,
                &format!(
                    r#"sightline_batch_items_{part}{{modality="{modality}",model="tiny-clip"}}"#
                ),
            )
        };
        (sample("count"), sample("sum"))
    }

    /// Waits until `/metrics` shows `depth` inputs admitted for `modality` (of the tiny bundle).
    pub async fn wait_for_depth(&self, modality: &str, depth: usize) {
        let sample =
            &format!(r#"sightline_queue_depth{{modality="{modality}",model="tiny-clip"}}"#);
        wait_until(format!("{modality} queue depth {depth}"), || async move {
            self.metric(sample).await == depth as f64
        })
        .await;
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let mut status = None;
        wait_until("the server to exit", || {
            status = status.or_else(|| child.try_wait().expect("try_wait"));
            std::future::ready(status.is_some())
        })
        .await;
        status.expect("it exited")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("sightline serve log:\n{}", self.log());
        }
    }
}

/// The value of one sample line of a `/metrics` text (0 when absent).
pub fn sample_value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}
