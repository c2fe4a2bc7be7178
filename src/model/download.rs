//! The hub client: [`HubClient::fetch`] puts one file in the cache, downloading it into a
//! `.part` file that a later run resumes with `Range: bytes=N-`, checking the size and the
//! checksum the hub publishes, and reusing a cached copy while the hub says it is current (or
//! cannot be reached).
//!
//! Written by hand rather than with the `hf-hub` crate (1.0.0, evaluated for issue 10): hf-hub
//! keeps the Python cache layout (`models--…/blobs` plus symlinked `snapshots/`), rewrites an
//! interrupted `.incomplete` file from zero instead of resuming it with `Range`, and trusts the
//! ETag as a blob name without hashing the bytes, so the sha256 and git-blob checks would stay
//! here anyway; it would also bring a second reqwest (0.13) and the xet client. Switching would
//! lose tested behaviour (resume, the cache layout, mismatch refusals) and remove little code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{CONTENT_RANGE, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::cache::{
    cache_path, meta_path, part_path, read_meta, remove_if_present, write_meta, CacheMeta,
};
use super::catalogue::HubFile;
use super::checksum::{checksum_mismatch, git_blob_sha1, hash_prefix, Checksum};
use super::protocol::{
    content_length, file_url, parse_content_range, parse_endpoint, same_origin, status_error,
    Remote, OFFLINE_HINT,
};

const MAX_REDIRECTS: usize = 10;

/// A response whose body continues the `.part` file from `start`, for a file of `size` bytes.
struct Transfer {
    response: reqwest::Response,
    remote: Remote,
    start: u64,
    size: Option<u64>,
}

/// A file ready in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The checksum the hub published and the file was checked against; `None`: the hub
    /// published none, so only the size was checked (and `sha256` recorded).
    pub published: Option<Checksum>,
    /// Served from the cache without downloading.
    pub cached: bool,
    /// The commit the revision resolved to, when the hub said.
    pub commit: Option<String>,
}

/// Fetches files from one hub endpoint into one cache.
pub(crate) struct HubClient {
    http: reqwest::Client,
    endpoint: Url,
    token: Option<String>,
    cache: PathBuf,
    progress: bool,
    /// Set once a freshness check could not reach the hub: the other cached files are then
    /// used without waiting for the same connect timeout again.
    offline: AtomicBool,
}

impl HubClient {
    /// `token` is sent as a bearer token to the hub only, never to the CDN it redirects to.
    pub(crate) fn new(endpoint: &str, token: Option<String>, cache: PathBuf) -> Result<HubClient> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("sightline/", env!("CARGO_PKG_VERSION")))
            // Redirects are walked in `send` to read the hub's headers on the way.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            // Per read, not per file: a 500 MB download may take minutes but never stalls a minute.
            .read_timeout(Duration::from_secs(60))
            .build()
            .context("cannot create the HTTP client")?;
        Ok(HubClient {
            http,
            endpoint: parse_endpoint(endpoint)?,
            token: token.filter(|t| !t.is_empty()),
            cache,
            progress: false,
            offline: AtomicBool::new(false),
        })
    }

    /// Draw a progress bar per file on stderr (indicatif stays silent when it is no terminal).
    pub(crate) fn with_progress(mut self, progress: bool) -> HubClient {
        self.progress = progress;
        self
    }

    /// Returns the cached file, downloading (or resuming) it first when needed.
    pub(crate) async fn fetch(&self, file: &HubFile) -> Result<Fetched> {
        let url = file_url(&self.endpoint, file)?;
        let target = cache_path(&self.cache, file);
        let meta_file = meta_path(&self.cache, file);
        if let Some(fetched) = self.reuse(file, &url, &target, &meta_file).await? {
            return Ok(fetched);
        }
        let parent = target.parent().unwrap_or(&self.cache);
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("cannot create the cache directory `{}`", parent.display()))?;
        let fetched = self.download(file, &url, &target).await?;
        let meta = CacheMeta {
            url: url.to_string(),
            size: fetched.size,
            sha256: fetched.sha256.clone(),
            published: fetched.published.clone(),
            commit: fetched.commit.clone(),
        };
        write_meta(&meta_file, &meta).await?;
        Ok(fetched)
    }

    /// A cached file is used when its record matches what the hub publishes now. When the
    /// hub cannot be asked, the cached copy is used with a warning: a pull should work offline
    /// once it has worked online.
    async fn reuse(
        &self,
        file: &HubFile,
        url: &Url,
        target: &Path,
        meta_file: &Path,
    ) -> Result<Option<Fetched>> {
        let Ok(on_disk) = tokio::fs::metadata(target).await else {
            return Ok(None);
        };
        let meta = read_meta(meta_file).await;
        let Some(meta) = meta.filter(|m| m.size == on_disk.len()) else {
            // A file without a matching record has unknown origin (an interrupted rename, a
            // hand copy): fetch it again rather than trust it.
            remove_if_present(target).await?;
            return Ok(None);
        };
        let probe = if self.offline.load(Ordering::Relaxed) {
            Err(anyhow!("the hub was unreachable for an earlier file"))
        } else {
            self.send(Method::HEAD, url, 0).await
        };
        let fresh = match probe {
            Ok((response, remote))
                if response.status().is_success() || response.status().is_redirection() =>
            {
                // A file kept in git answers HEAD with its own length.
                let size = remote.size.or_else(|| {
                    response
                        .status()
                        .is_success()
                        .then(|| content_length(response.headers()))
                        .flatten()
                });
                match (&remote.checksum, size) {
                    (Some(Checksum::Sha256(sha)), _) => *sha == meta.sha256,
                    (Some(checksum), _) => meta.published.as_ref() == Some(checksum),
                    (None, Some(size)) => size == meta.size,
                    (None, None) => true,
                }
            }
            Ok((response, _)) => {
                tracing::warn!(file = %file.path, repo = %file.repo, status = %response.status(),
                    "cannot check the cached file against the hub; using the cached copy");
                true
            }
            Err(err) => {
                self.offline.store(true, Ordering::Relaxed);
                tracing::warn!(file = %file.path, repo = %file.repo, error = %format!("{err:#}"),
                    "cannot reach the hub to check the cached file; using the cached copy");
                true
            }
        };
        if !fresh {
            tracing::info!(file = %file.path, repo = %file.repo, revision = %file.revision,
                "the file changed on the hub; downloading it again");
            remove_if_present(target).await?;
            return Ok(None);
        }
        tracing::info!(file = %file.path, repo = %file.repo, "using the cached copy");
        Ok(Some(Fetched {
            path: target.to_path_buf(),
            size: meta.size,
            sha256: meta.sha256,
            published: meta.published,
            cached: true,
            commit: meta.commit,
        }))
    }

    /// The git blob id of a finished file; such files are small (the hub keeps large ones in LFS).
    async fn git_blob_sha1(&self, path: &Path) -> Result<String> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || git_blob_sha1(&path)).await?
    }

    /// Downloads into `{target}.part` (resuming what is there), verifies, then renames.
    async fn download(&self, file: &HubFile, url: &Url, target: &Path) -> Result<Fetched> {
        let part = part_path(target);
        // The second attempt starts from zero: it runs only when the server could not
        // continue the partial file (it ignored or refused the range, or the file changed).
        for attempt in 0..2 {
            let offset = match tokio::fs::metadata(&part).await {
                Ok(m) if attempt == 0 => m.len(),
                _ => {
                    remove_if_present(&part).await?;
                    0
                }
            };
            let (response, remote) = self.send(Method::GET, url, offset).await?;
            let status = response.status();
            let (start, size) = match status {
                StatusCode::OK => (
                    0,
                    remote.size.or_else(|| content_length(response.headers())),
                ),
                StatusCode::PARTIAL_CONTENT => {
                    let range = response
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_content_range);
                    match range {
                        Some((start, total)) if start == offset => (start, remote.size.or(total)),
                        _ => continue,
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => continue,
                _ => return Err(status_error(status, response.headers(), file, url)),
            };
            if size.is_some_and(|size| start > size) {
                continue;
            }
            if start > 0 {
                tracing::info!(file = %file.path, repo = %file.repo, from = start, "resuming the download");
            } else {
                tracing::info!(file = %file.path, repo = %file.repo, bytes = ?size, "downloading");
            }
            let transfer = Transfer {
                response,
                remote,
                start,
                size,
            };
            return self.receive(file, transfer, &part, target).await;
        }
        bail!(
            "the server cannot continue or restart the download of `{}` from `{}`; delete `{}` \
             and run the command again",
            file.path,
            file.repo,
            part.display()
        )
    }

    /// Streams the body to `part` (appending after `start` bytes), then checks size and checksum.
    async fn receive(
        &self,
        file: &HubFile,
        transfer: Transfer,
        part: &Path,
        target: &Path,
    ) -> Result<Fetched> {
        let Transfer {
            response,
            remote,
            start,
            size,
        } = transfer;
        let mut hasher = if start > 0 {
            let prefix = part.to_path_buf();
            tokio::task::spawn_blocking(move || hash_prefix(&prefix, start)).await??
        } else {
            Sha256::new()
        };
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(start > 0)
            .truncate(start == 0)
            .open(part)
            .await
            .with_context(|| format!("cannot write `{}`", part.display()))?;
        let bar = self.bar(file, size, start);
        let mut written = start;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| {
                bar.abandon();
                anyhow!(
                    "the download of `{}` from `{}` broke off after {written} bytes ({err}); run the \
                     command again to resume it",
                    file.path,
                    file.repo
                )
            })?;
            out.write_all(&chunk)
                .await
                .with_context(|| format!("cannot write `{}`", part.display()))?;
            hasher.update(&chunk);
            written += chunk.len() as u64;
            bar.set_position(written);
        }
        out.flush().await?;
        out.sync_all().await?;
        drop(out);
        bar.finish_and_clear();

        if let Some(size) = size {
            if written < size {
                bail!(
                    "the download of `{}` from `{}` ended after {written} of {size} bytes; run the \
                     command again to resume it",
                    file.path,
                    file.repo
                );
            }
            if written > size {
                remove_if_present(part).await?;
                bail!(
                    "`{}` from `{}` is {written} bytes but the hub announced {size}; the download \
                     was discarded: run the command again",
                    file.path,
                    file.repo
                );
            }
        }
        let sha256 = hex::encode(hasher.finalize());
        match &remote.checksum {
            Some(Checksum::Sha256(expected)) => {
                if *expected != sha256 {
                    remove_if_present(part).await?;
                    bail!(checksum_mismatch(file, "sha256", expected, &sha256));
                }
            }
            Some(Checksum::GitSha1(expected)) => {
                let actual = self.git_blob_sha1(part).await?;
                if *expected != actual {
                    remove_if_present(part).await?;
                    bail!(checksum_mismatch(file, "git blob sha1", expected, &actual));
                }
            }
            None => {
                tracing::warn!(file = %file.path, repo = %file.repo, %sha256,
                    "the hub published no checksum for this file: only its size was checked; \
                     recorded its sha256");
            }
        }
        tokio::fs::rename(part, target).await.with_context(|| {
            format!("cannot move `{}` to `{}`", part.display(), target.display())
        })?;
        Ok(Fetched {
            path: target.to_path_buf(),
            size: written,
            sha256,
            published: remote.checksum,
            cached: false,
            commit: remote.commit,
        })
    }

    /// Sends one request, walking redirects by hand and collecting the hub's metadata.
    /// HEAD stops at the first hop that names a checksum (the CDN has nothing to add).
    async fn send(
        &self,
        method: Method,
        url: &Url,
        range_from: u64,
    ) -> Result<(reqwest::Response, Remote)> {
        let mut url = url.clone();
        let mut remote = Remote::default();
        for _ in 0..MAX_REDIRECTS {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(token) = self
                .token
                .as_ref()
                .filter(|_| same_origin(&url, &self.endpoint))
            {
                request = request.bearer_auth(token);
            }
            if range_from > 0 {
                request = request.header(RANGE, format!("bytes={range_from}-"));
            }
            let response = request
                .send()
                .await
                .map_err(|err| self.unreachable(&url, &err))?;
            remote.absorb(response.headers());
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let done = method == Method::HEAD && remote.checksum.is_some();
            match location {
                Some(location) if response.status().is_redirection() && !done => {
                    url = url.join(&location).with_context(|| {
                        format!("the hub redirected to an invalid URL `{location}`")
                    })?;
                }
                _ => return Ok((response, remote)),
            }
        }
        bail!("too many redirects fetching `{url}`")
    }

    fn unreachable(&self, url: &Url, err: &reqwest::Error) -> anyhow::Error {
        let origin = url.origin().ascii_serialization();
        // reqwest's own message names the URL but not the cause ("connection refused", a DNS
        // or TLS failure): that sits at the bottom of the source chain.
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        let why = causes.last().cloned().unwrap_or_else(|| err.to_string());
        let hint = if same_origin(url, &self.endpoint) {
            "check the network or set HF_ENDPOINT to a reachable mirror"
        } else {
            "the hub redirected there for the file's bytes; check the network or proxy"
        };
        anyhow!("cannot reach {origin} ({why}): {hint}; {OFFLINE_HINT}")
    }

    fn bar(&self, file: &HubFile, size: Option<u64>, start: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = match size {
            Some(size) => ProgressBar::new(size),
            None => ProgressBar::new_spinner(),
        };
        let template = "{msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(file.path.clone());
        bar.set_position(start);
        // The bytes already on disk must not count towards the download speed.
        bar.reset_eta();
        bar
    }
}
