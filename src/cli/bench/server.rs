//! The server under test: a `sightline serve` child process on a free loopback port, the time
//! it takes to become ready, its memory figures from `/proc`, and a graceful stop.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::BenchConfig;

/// A `sightline serve` child process on a free loopback port.
pub(super) struct Server {
    child: tokio::process::Child,
    pub(super) url: String,
    pub(super) loaded: Loaded,
}

/// A server once loaded: its resident memory and how long it took from start to `/ready`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Loaded {
    pub(super) lanes: usize,
    pub(super) rss_mib: f64,
    pub(super) ready_after: Duration,
}

impl Server {
    /// Starts `sightline serve` with `lanes` image lanes and waits until it is ready.
    pub(super) async fn start(cfg: &BenchConfig, lanes: usize) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let exe = std::env::current_exe()?;
        let started = Instant::now();
        let child = tokio::process::Command::new(exe)
            .args(["serve", "--model-dir"])
            .arg(&cfg.model_dir)
            .args(["--addr", &addr, "--threads", &cfg.threads.to_string()])
            .args(["--image-lanes", &lanes.to_string()])
            .args(cfg.per_lane_weights.then_some("--per-lane-weights"))
            .args(&cfg.serve_args)
            .env("SIGHTLINE_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `sightline serve`")?;
        let mut server = Server {
            child,
            url: format!("http://{addr}"),
            loaded: Loaded::default(),
        };
        server.wait_ready().await?;
        let ready_after = started.elapsed();
        server.loaded = Loaded {
            lanes,
            rss_mib: server.memory_mib("VmRSS")?,
            ready_after,
        };
        // Loading briefly holds a model twice; reset the peak so it reports the load test.
        let pid = server.child.id().context("the server has exited")?;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("cannot reset the server's peak RSS (/proc/<pid>/clear_refs)")?;
        Ok(server)
    }

    /// Polls `/ready` while the model loads (up to two minutes for the full-size model).
    async fn wait_ready(&self) -> Result<()> {
        let client = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(120);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while Instant::now() < until {
            tick.tick().await;
            if let Ok(r) = client.get(format!("{}/ready", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
        }
        bail!("`sightline serve` did not become ready within two minutes")
    }

    /// A memory figure of the server process: `VmRSS` (now) or `VmHWM` (peak since reset).
    pub(super) fn memory_mib(&self, field: &str) -> Result<f64> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        Ok(kib / 1024.0)
    }

    /// SIGTERM, then wait: the server must drain and exit 0.
    pub(super) async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("the server has exited")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let status = self.child.wait().await?;
        ensure!(
            status.success(),
            "`sightline serve` exited with {status} after SIGTERM"
        );
        Ok(())
    }
}
