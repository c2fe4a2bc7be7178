//! A minimal W3C WebDriver client over reqwest, for the gallery's browser test: start
//! `chromedriver`, open a headless Chromium session, navigate, find, click, type, run a script,
//! take a screenshot. Written here rather than pulled in as a crate because these eight
//! endpoints are all the test needs, and the project's own HTTP client already speaks JSON.
//! Every wait has a deadline ([`PATIENCE`]); the driver process is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::PATIENCE;

/// W3C's key for element references in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian's `chromium` and `chromium-driver` put their programs (`scripts/setup-ui.sh`).
pub fn browser_paths() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.is_file());
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]))?;
    let browser = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]))?;
    Some((driver, browser))
}

/// A running `chromedriver` and one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts `driver` on a free loopback port and opens a headless session of `browser` with
    /// a `width` × `height` window.
    pub async fn start(driver: &Path, browser: &Path, width: u32, height: u32) -> Browser {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(PATIENCE)
            .build()
            .unwrap();
        let mut browser_session = Browser {
            driver: child,
            base: format!("http://127.0.0.1:{port}"),
            client,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = browser_session
                .client
                .get(format!("{}/status", browser_session.base))
                .send()
                .await
                .ok();
            if let Some(reply) = ready {
                if let Ok(body) = reply.json::<Value>().await {
                    if body["value"]["ready"] == true {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--disable-background-networking",
                         "--hide-scrollbars", "--force-device-scale-factor=1",
                         format!("--window-size={width},{height}")],
            },
        }}});
        let session = browser_session.post("/session", capabilities).await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        browser_session.base = format!("{}/session/{id}", browser_session.base);
        browser_session
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let reply = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = reply.status();
        let body: Value = reply.json().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status}: {body}");
        body["value"].clone()
    }

    async fn get(&self, path: &str) -> Value {
        let reply = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = reply.status();
        let body: Value = reply.json().await.unwrap();
        assert!(status.is_success(), "GET {path}: {status}: {body}");
        body["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The first element matching `css`.
    pub async fn find(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element for {css}: {found}"))
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/value"), json!({"text": text}))
            .await;
    }

    pub async fn clear(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/clear"), json!({}))
            .await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// Looks at `script`'s value until `holds` accepts it; fails naming `what` after
    /// [`PATIENCE`], with the last value seen.
    pub async fn wait_for(
        &self,
        what: &str,
        script: &str,
        holds: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.run(script, json!([])).await;
            if holds(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} in vain for {what}; last value: {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.get("/screenshot").await;
        BASE64.decode(encoded.as_str().unwrap()).unwrap()
    }

    pub async fn close(&self) {
        let _ = self.client.delete(&self.base).send().await;
    }
}
