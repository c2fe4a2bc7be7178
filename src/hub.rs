//! Downloads from the Hugging Face hub for `sightline model pull`.
//!
//! [`plan`] turns a model name into the files to fetch (pure, unit-tested); [`HubClient`] fetches
//! one file into the cache `{cache}/hub/{repo}/{revision}/{path}`, streaming to a `.part` file
//! that a later run resumes with `Range: bytes=N-`, and checks the size and checksum the hub
//! publishes; [`pull`] fetches a whole plan and hands the cached files to
//! [`create_bundle`](crate::engine::inspect::create_bundle), the same code `model init` uses.
//!
//! The hub answers `GET {endpoint}/{repo}/resolve/{revision}/{path}` for an LFS file with a
//! redirect to a CDN whose own `ETag` is not a checksum: the sha256 (`X-Linked-Etag`) and the
//! size (`X-Linked-Size`) travel on the hub's redirect response, so redirects are followed
//! here by hand and the metadata is taken from the first hop that carries it. Small files kept
//! in git come back directly with `ETag` = the git blob sha1, which is checked as git computes it.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::engine::inspect::{create_bundle, BundleSpec, CreatedBundle, TensorOverrides};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_MODEL: &str = "clip-ViT-B-32-multilingual-v1";
pub const DEFAULT_REVISION: &str = "main";
/// What every error that ends a pull without a bundle offers instead.
const OFFLINE_HINT: &str = "or build a bundle from local files with `sightline model init`";
const MAX_REDIRECTS: usize = 10;

/// What a downloaded file is for in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ImageEncoder,
    TextEncoder,
    Dense,
    Tokenizer,
}

/// One file of one repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub role: Role,
    pub repo: String,
    pub revision: String,
    pub path: String,
}

/// The files of a known model and the bundle settings that go with them.
#[derive(Debug, Clone, PartialEq)]
pub struct PullPlan {
    /// Bundle name (`sightline.json` `name`, default directory `models/{name}`).
    pub name: String,
    pub dimensions: usize,
    pub max_seq_len: usize,
    pub files: Vec<HubFile>,
}

impl PullPlan {
    fn file(&self, role: Role) -> Option<&HubFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// A model `pull` knows: the sentence-transformers text encoder in form (b) (the published
/// `onnx/` export outputs token states; Sightline pools and projects with `2_Dense`), and a
/// published export of the CLIP image tower it was distilled against (model.md §3.1).
struct KnownModel {
    name: &'static str,
    text_repo: &'static str,
    text_onnx: &'static str,
    text_onnx_quantized: &'static str,
    dense: &'static str,
    tokenizer: &'static str,
    image_repo: &'static str,
    image_onnx: &'static str,
    image_repo_quantized: &'static str,
    image_onnx_quantized: &'static str,
    dimensions: usize,
    max_seq_len: usize,
}

const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "clip-ViT-B-32-multilingual-v1",
    text_repo: "sentence-transformers/clip-ViT-B-32-multilingual-v1",
    text_onnx: "onnx/model.onnx",
    text_onnx_quantized: "onnx/model_qint8_avx512_vnni.onnx",
    dense: "2_Dense/model.safetensors",
    tokenizer: "tokenizer.json",
    image_repo: "Qdrant/clip-ViT-B-32-vision",
    image_onnx: "model.onnx",
    // Qdrant publishes no int8 vision tower; Xenova's is the same ViT-B/32 weights.
    image_repo_quantized: "Xenova/clip-vit-base-patch32",
    image_onnx_quantized: "onnx/vision_model_quantized.onnx",
    dimensions: 512,
    max_seq_len: 128,
}];

/// The files to fetch for `model` (a known name, or its `owner/name` repo id). `revision`
/// applies to the model's own repository (text encoder, Dense weights, tokenizer);
/// `image_revision` to the image encoder's repository, a different repo with its own commits.
pub fn plan(
    model: &str,
    revision: &str,
    image_revision: &str,
    quantized: bool,
) -> Result<PullPlan> {
    let known = KNOWN_MODELS
        .iter()
        .find(|k| k.name == model || k.text_repo == model)
        .ok_or_else(|| {
            let names: Vec<&str> = KNOWN_MODELS.iter().map(|k| k.name).collect();
            anyhow!(
                "`{model}` is not a model `sightline model pull` knows (known: {}); for another \
                 model download its ONNX files and run `sightline model init`",
                names.join(", ")
            )
        })?;
    check_revision(revision).context("--revision")?;
    check_revision(image_revision).context("--image-revision")?;
    let file = |role, repo: &str, rev: &str, path: &str| HubFile {
        role,
        repo: repo.to_owned(),
        revision: rev.to_owned(),
        path: path.to_owned(),
    };
    let (image_repo, image_onnx, text_onnx) = if quantized {
        (
            known.image_repo_quantized,
            known.image_onnx_quantized,
            known.text_onnx_quantized,
        )
    } else {
        (known.image_repo, known.image_onnx, known.text_onnx)
    };
    Ok(PullPlan {
        // Quantised vectors differ slightly: a different name keeps both bundles apart.
        name: if quantized {
            format!("{}-int8", known.name)
        } else {
            known.name.to_owned()
        },
        dimensions: known.dimensions,
        max_seq_len: known.max_seq_len,
        files: vec![
            file(Role::ImageEncoder, image_repo, image_revision, image_onnx),
            file(Role::TextEncoder, known.text_repo, revision, text_onnx),
            file(Role::Dense, known.text_repo, revision, known.dense),
            file(Role::Tokenizer, known.text_repo, revision, known.tokenizer),
        ],
    })
}

/// A revision is a branch, tag, `refs/pr/N` or commit; it becomes cache directories, so
/// nothing that could climb out of the cache is accepted.
fn check_revision(revision: &str) -> Result<()> {
    let safe = !revision.is_empty()
        && !revision.contains('\\')
        && !revision.chars().any(char::is_control)
        && Path::new(revision)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    ensure!(
        safe,
        "`{revision}` is not a valid revision (a branch, tag or commit)"
    );
    Ok(())
}

/// `{endpoint}/{repo}/resolve/{revision}/{path}`; a `/` inside the revision is encoded
/// (`refs%2Fpr%2F3`), as the hub expects.
pub fn file_url(endpoint: &Url, file: &HubFile) -> Result<Url> {
    let mut url = endpoint.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow!("the hub endpoint `{endpoint}` cannot take a path"))?
        .pop_if_empty()
        .extend(file.repo.split('/'))
        .push("resolve")
        .push(&file.revision)
        .extend(file.path.split('/'));
    Ok(url)
}

/// Parses `HF_ENDPOINT`; only http(s) URLs make sense.
pub fn parse_endpoint(endpoint: &str) -> Result<Url> {
    let url = Url::parse(endpoint).with_context(|| {
        format!("the hub endpoint `{endpoint}` is not a URL (set HF_ENDPOINT to e.g. {DEFAULT_ENDPOINT})")
    })?;
    ensure!(
        matches!(url.scheme(), "http" | "https"),
        "the hub endpoint `{endpoint}` is not an http(s) URL"
    );
    Ok(url)
}

/// The Sightline cache directory: `SIGHTLINE_CACHE`, else `$XDG_CACHE_HOME/sightline`, else
/// `~/.cache/sightline`. `env` is the environment lookup, passed in so tests need no globals.
pub fn cache_root(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("SIGHTLINE_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return Ok(dir.join("sightline"));
    }
    if let Some(home) = set("HOME") {
        return Ok(home.join(".cache").join("sightline"));
    }
    bail!("cannot find a cache directory: HOME is not set; set SIGHTLINE_CACHE to a writable directory")
}

/// Where `file` lives in the cache.
pub fn cache_path(root: &Path, file: &HubFile) -> PathBuf {
    let mut path = root.join("hub");
    path.extend(file.repo.split('/'));
    path.extend(file.revision.split('/'));
    path.extend(file.path.split('/'));
    path
}

/// Download metadata, kept apart from the files (`{cache}/hub-meta/…json`) so the `hub/` tree
/// holds exactly the repositories' files.
fn meta_path(root: &Path, file: &HubFile) -> PathBuf {
    let mut path = root.join("hub-meta");
    path.extend(file.repo.split('/'));
    path.extend(file.revision.split('/'));
    path.extend(file.path.split('/'));
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".json");
    path.set_file_name(name);
    path
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().map(OsString::from).unwrap_or_default();
    name.push(".part");
    target.with_file_name(name)
}

/// A checksum the hub publishes for a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "hex", rename_all = "kebab-case")]
pub enum Checksum {
    /// LFS files: the sha256 of the content.
    Sha256(String),
    /// Files kept in git: the blob id, sha1 of `blob {len}\0{content}`.
    GitSha1(String),
}

/// Reads an `ETag`/`X-Linked-Etag` value: 64 hex digits are a sha256, 40 a git blob sha1;
/// anything else (a CDN's md5, a weak tag) is not a checksum of the file.
pub fn parse_etag(value: &str) -> Option<Checksum> {
    let tag = value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    if !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match tag.len() {
        64 => Some(Checksum::Sha256(tag)),
        40 => Some(Checksum::GitSha1(tag)),
        _ => None,
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL if known).
pub fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((start.parse().ok()?, total))
}

/// What the hub says about a file before its bytes arrive.
#[derive(Debug, Clone, Default, PartialEq)]
struct Remote {
    checksum: Option<Checksum>,
    size: Option<u64>,
    commit: Option<String>,
}

impl Remote {
    /// Takes what this hop offers and keeps what earlier hops said: the hub's hop comes first,
    /// and a CDN's headers further down the chain describe its object, not the repository file.
    fn absorb(&mut self, headers: &HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if self.checksum.is_none() {
            self.checksum = header("x-linked-etag")
                .and_then(parse_etag)
                .or_else(|| header(ETAG.as_str()).and_then(parse_etag));
        }
        if self.size.is_none() {
            self.size = header("x-linked-size").and_then(|v| v.trim().parse().ok());
        }
        if self.commit.is_none() {
            self.commit = header("x-repo-commit").map(str::to_owned);
        }
    }
}

/// A response whose body continues the `.part` file from `start`, for a file of `size` bytes.
struct Transfer {
    response: reqwest::Response,
    remote: Remote,
    start: u64,
    size: Option<u64>,
}

/// Recorded for each cached file under `hub-meta/`, so a later pull can trust the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheMeta {
    url: String,
    size: u64,
    sha256: String,
    /// What the hub published, when it published anything.
    published: Option<Checksum>,
    commit: Option<String>,
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
pub struct HubClient {
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
    pub fn new(endpoint: &str, token: Option<String>, cache: PathBuf) -> Result<HubClient> {
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
    pub fn with_progress(mut self, progress: bool) -> HubClient {
        self.progress = progress;
        self
    }

    /// Returns the cached file, downloading (or resuming) it first when needed.
    pub async fn fetch(&self, file: &HubFile) -> Result<Fetched> {
        let url = file_url(&self.endpoint, file)?;
        let target = cache_path(&self.cache, file);
        let meta_file = meta_path(&self.cache, file);
        if let Some(fetched) = self.reuse(file, &url, &target, &meta_file).await? {
            return Ok(fetched);
        }
        let parent = target.parent().unwrap_or(&self.cache);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the cache directory `{}`", parent.display()))?;
        let fetched = self.download(file, &url, &target).await?;
        let meta = CacheMeta {
            url: url.to_string(),
            size: fetched.size,
            sha256: fetched.sha256.clone(),
            published: fetched.published.clone(),
            commit: fetched.commit.clone(),
        };
        write_meta(&meta_file, &meta)?;
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
        let Ok(on_disk) = std::fs::metadata(target) else {
            return Ok(None);
        };
        let meta: Option<CacheMeta> = std::fs::read(meta_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let Some(meta) = meta.filter(|m| m.size == on_disk.len()) else {
            // A file without a matching record has unknown origin (an interrupted rename, a
            // hand copy): fetch it again rather than trust it.
            remove_if_present(target)?;
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
            remove_if_present(target)?;
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
            let offset = match std::fs::metadata(&part) {
                Ok(m) if attempt == 0 => m.len(),
                _ => {
                    remove_if_present(&part)?;
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
                remove_if_present(part)?;
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
                    remove_if_present(part)?;
                    bail!(checksum_mismatch(file, "sha256", expected, &sha256));
                }
            }
            Some(Checksum::GitSha1(expected)) => {
                let actual = self.git_blob_sha1(part).await?;
                if *expected != actual {
                    remove_if_present(part)?;
                    bail!(checksum_mismatch(file, "git blob sha1", expected, &actual));
                }
            }
            None => {
                tracing::warn!(file = %file.path, repo = %file.repo, %sha256,
                    "the hub published no checksum for this file: only its size was checked; \
                     recorded its sha256");
            }
        }
        std::fs::rename(part, target).with_context(|| {
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

fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Turns a refusal into what to do about it; the hub explains itself in `X-Error-Message`.
fn status_error(
    status: StatusCode,
    headers: &HeaderMap,
    file: &HubFile,
    url: &Url,
) -> anyhow::Error {
    let said = headers
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| format!(" (the hub says: {m})"))
        .unwrap_or_default();
    let (repo, rev, path) = (&file.repo, &file.revision, &file.path);
    match status {
        StatusCode::NOT_FOUND => anyhow!(
            "`{path}` was not found in `{repo}` at revision `{rev}`{said}: {url} answered 404; \
             check the model name and --revision, or HF_ENDPOINT if it points to a mirror; \
             {OFFLINE_HINT}"
        ),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => anyhow!(
            "the hub refused `{path}` of `{repo}` ({status}){said}: the repository may be gated, \
             private or renamed; set HF_TOKEN to a token that can read it"
        ),
        StatusCode::TOO_MANY_REQUESTS => anyhow!(
            "the hub is rate-limiting downloads (429){said}: wait a little and run the command \
             again (set HF_TOKEN for higher limits)"
        ),
        s if s.is_server_error() => anyhow!(
            "the hub failed on `{path}` of `{repo}` ({status}){said}: run the command again later; \
             {OFFLINE_HINT}"
        ),
        _ => anyhow!("{url} answered {status}{said} for `{path}` of `{repo}`; {OFFLINE_HINT}"),
    }
}

fn checksum_mismatch(file: &HubFile, kind: &str, expected: &str, actual: &str) -> String {
    format!(
        "`{}` from `{}` does not match its published {kind}: expected {expected}, got {actual}; the \
         download was discarded and no bundle was written: run the command again (if it fails \
         again, the endpoint serves a corrupted or different file)",
        file.path, file.repo
    )
}

/// sha256 state after the first `len` bytes of `path` (a resumed `.part`).
fn hash_prefix(path: &Path, len: u64) -> Result<Sha256> {
    use std::io::Read;
    let mut hasher = Sha256::new();
    let f =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let copied = std::io::copy(&mut f.take(len), &mut hasher)?;
    ensure!(copied == len, "`{}` shrank while resuming", path.display());
    Ok(hasher)
}

/// The git blob id: sha1 of `blob {len}\0` followed by the content.
fn git_blob_sha1(path: &Path) -> Result<String> {
    use sha1::Sha1;
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?
        .len();
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {len}\0").as_bytes());
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn write_meta(path: &Path, meta: &CacheMeta) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(meta)?)
        .with_context(|| format!("cannot write `{}`", path.display()))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove `{}`", path.display()))
        }
        _ => Ok(()),
    }
}

/// Everything `sightline model pull` needs; the CLI fills it from flags and the environment.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub model: String,
    pub revision: String,
    pub image_revision: String,
    pub quantized: bool,
    /// Bundle directory; `models/{bundle name}` when `None`.
    pub dir: Option<PathBuf>,
    /// `HF_ENDPOINT`.
    pub endpoint: String,
    /// `HF_TOKEN`.
    pub token: Option<String>,
    /// The Sightline cache root (see [`cache_root`]).
    pub cache: PathBuf,
    pub force: bool,
    pub progress: bool,
}

/// What a pull fetched and built.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub files: Vec<(HubFile, Fetched)>,
    pub bundle: CreatedBundle,
}

/// Fetches every file of the plan into the cache, then writes and checks the bundle.
pub async fn pull(request: &PullRequest) -> Result<Pulled> {
    let plan = plan(
        &request.model,
        &request.revision,
        &request.image_revision,
        request.quantized,
    )?;
    let client = HubClient::new(
        &request.endpoint,
        request.token.clone(),
        request.cache.clone(),
    )?
    .with_progress(request.progress);
    let mut files = Vec::with_capacity(plan.files.len());
    for file in &plan.files {
        let fetched = client.fetch(file).await?;
        files.push((file.clone(), fetched));
    }
    let path = |role| -> Result<PathBuf> {
        let wanted = plan
            .file(role)
            .ok_or_else(|| anyhow!("the plan has no {role:?} file"))?;
        files
            .iter()
            .find(|(f, _)| f == wanted)
            .map(|(_, fetched)| fetched.path.clone())
            .ok_or_else(|| anyhow!("the {role:?} file was not fetched"))
    };
    let spec = BundleSpec {
        name: plan.name.clone(),
        image_onnx: path(Role::ImageEncoder)?,
        text_onnx: path(Role::TextEncoder)?,
        tokenizer: path(Role::Tokenizer)?,
        dense: Some(path(Role::Dense)?),
        max_seq_len: plan.max_seq_len,
        out: request
            .dir
            .clone()
            .unwrap_or_else(|| Path::new("models").join(&plan.name)),
        force: request.force,
        overrides: TensorOverrides::default(),
        expect_dimensions: Some(plan.dimensions),
    };
    let bundle = create_bundle(spec).await?;
    Ok(Pulled { files, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_plan() -> PullPlan {
        plan(DEFAULT_MODEL, "main", "main", false).unwrap()
    }

    #[test]
    fn default_plan_is_form_b_text_and_the_qdrant_vision_tower() {
        let p = default_plan();
        assert_eq!(
            (p.name.as_str(), p.dimensions, p.max_seq_len),
            (DEFAULT_MODEL, 512, 128)
        );
        let listed: Vec<(Role, &str, &str)> = p
            .files
            .iter()
            .map(|f| (f.role, f.repo.as_str(), f.path.as_str()))
            .collect();
        let st = "sentence-transformers/clip-ViT-B-32-multilingual-v1";
        assert_eq!(
            listed,
            vec![
                (
                    Role::ImageEncoder,
                    "Qdrant/clip-ViT-B-32-vision",
                    "model.onnx"
                ),
                (Role::TextEncoder, st, "onnx/model.onnx"),
                (Role::Dense, st, "2_Dense/model.safetensors"),
                (Role::Tokenizer, st, "tokenizer.json"),
            ]
        );
        assert!(p.files.iter().all(|f| f.revision == "main"));
        // The repo id works as a name too.
        assert_eq!(plan(st, "main", "main", false).unwrap(), p);
    }

    #[test]
    fn quantized_plan_swaps_both_encoders_and_the_name() {
        let p = plan(DEFAULT_MODEL, "main", "main", true).unwrap();
        assert_eq!(p.name, "clip-ViT-B-32-multilingual-v1-int8");
        let image = p.file(Role::ImageEncoder).unwrap();
        assert_eq!(
            (image.repo.as_str(), image.path.as_str()),
            (
                "Xenova/clip-vit-base-patch32",
                "onnx/vision_model_quantized.onnx"
            )
        );
        assert_eq!(
            p.file(Role::TextEncoder).unwrap().path,
            "onnx/model_qint8_avx512_vnni.onnx"
        );
        assert_eq!(
            p.file(Role::Dense).unwrap(),
            default_plan().file(Role::Dense).unwrap()
        );
    }

    #[test]
    fn revisions_apply_to_their_own_repositories() {
        let p = plan(DEFAULT_MODEL, "refs/pr/3", "abc123", false).unwrap();
        assert_eq!(p.file(Role::ImageEncoder).unwrap().revision, "abc123");
        for role in [Role::TextEncoder, Role::Dense, Role::Tokenizer] {
            assert_eq!(p.file(role).unwrap().revision, "refs/pr/3");
        }
        for bad in ["", "../x", "/abs", "a/../../b", "a\\b", "a\nb"] {
            let err = format!("{:#}", plan(DEFAULT_MODEL, bad, "main", false).unwrap_err());
            assert!(err.contains("not a valid revision"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unknown_models_point_at_init() {
        let err = plan("openai/clip-vit-large", "main", "main", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clip-ViT-B-32-multilingual-v1") && err.contains("sightline model init"),
            "{err}"
        );
    }

    #[test]
    fn urls_follow_the_resolve_scheme() {
        let p = plan(DEFAULT_MODEL, "refs/pr/3", "main", false).unwrap();
        let hub = parse_endpoint(DEFAULT_ENDPOINT).unwrap();
        assert_eq!(
            file_url(&hub, p.file(Role::ImageEncoder).unwrap())
                .unwrap()
                .as_str(),
            "https://huggingface.co/Qdrant/clip-ViT-B-32-vision/resolve/main/model.onnx"
        );
        assert_eq!(
            file_url(&hub, p.file(Role::Dense).unwrap()).unwrap().as_str(),
            "https://huggingface.co/sentence-transformers/clip-ViT-B-32-multilingual-v1/resolve/refs%2Fpr%2F3/2_Dense/model.safetensors"
        );
        // A mirror under a path prefix, with or without the trailing slash.
        for endpoint in ["http://127.0.0.1:8080/hf", "http://127.0.0.1:8080/hf/"] {
            let mirror = parse_endpoint(endpoint).unwrap();
            assert_eq!(
                file_url(&mirror, p.file(Role::Tokenizer).unwrap()).unwrap().as_str(),
                "http://127.0.0.1:8080/hf/sentence-transformers/clip-ViT-B-32-multilingual-v1/resolve/refs%2Fpr%2F3/tokenizer.json"
            );
        }
        assert!(parse_endpoint("huggingface.co").is_err());
        assert!(parse_endpoint("ftp://mirror").is_err());
    }

    #[test]
    fn cache_root_follows_the_environment() {
        fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
            move |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(*v))
            }
        }
        let all = [
            ("SIGHTLINE_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_root(env(&all[..])).unwrap(), PathBuf::from("/c"));
        assert_eq!(
            cache_root(env(&all[1..])).unwrap(),
            PathBuf::from("/x/sightline")
        );
        assert_eq!(
            cache_root(env(&all[2..])).unwrap(),
            PathBuf::from("/h/.cache/sightline")
        );
        // Empty variables count as unset, as in the XDG spec.
        let empty = [
            ("SIGHTLINE_CACHE", ""),
            ("XDG_CACHE_HOME", ""),
            ("HOME", "/h"),
        ];
        assert_eq!(
            cache_root(env(&empty[..])).unwrap(),
            PathBuf::from("/h/.cache/sightline")
        );
        assert!(cache_root(env(&[]))
            .unwrap_err()
            .to_string()
            .contains("SIGHTLINE_CACHE"));
    }

    #[test]
    fn cache_paths_keep_repo_revision_and_path() {
        let p = plan(DEFAULT_MODEL, "refs/pr/3", "main", false).unwrap();
        let root = Path::new("/cache");
        let text = p.file(Role::TextEncoder).unwrap();
        assert_eq!(
            cache_path(root, text),
            PathBuf::from("/cache/hub/sentence-transformers/clip-ViT-B-32-multilingual-v1/refs/pr/3/onnx/model.onnx")
        );
        assert_eq!(
            meta_path(root, text),
            PathBuf::from("/cache/hub-meta/sentence-transformers/clip-ViT-B-32-multilingual-v1/refs/pr/3/onnx/model.onnx.json")
        );
        assert_eq!(
            part_path(&cache_path(root, text)),
            PathBuf::from("/cache/hub/sentence-transformers/clip-ViT-B-32-multilingual-v1/refs/pr/3/onnx/model.onnx.part")
        );
    }

    #[test]
    fn etags_are_read_as_checksums_only_when_they_are_one() {
        let sha = "A".repeat(64);
        assert_eq!(
            parse_etag(&format!("\"{sha}\"")),
            Some(Checksum::Sha256("a".repeat(64)))
        );
        assert_eq!(
            parse_etag(&format!("W/\"{}\"", "b".repeat(40))),
            Some(Checksum::GitSha1("b".repeat(40)))
        );
        assert_eq!(parse_etag("\"d41d8cd98f00b204e9800998ecf8427e\""), None); // a CDN's md5
        assert_eq!(parse_etag("\"5e1f-abc\""), None);
        assert_eq!(parse_etag(&"g".repeat(64)), None);
    }

    #[test]
    fn hub_hop_metadata_wins_over_the_cdn() {
        let mut remote = Remote::default();
        let mut hub = HeaderMap::new();
        hub.insert(
            "x-linked-etag",
            format!("\"{}\"", "1".repeat(64)).parse().unwrap(),
        );
        hub.insert(ETAG, format!("\"{}\"", "2".repeat(64)).parse().unwrap());
        hub.insert("x-linked-size", "1234".parse().unwrap());
        hub.insert("x-repo-commit", "c0ffee".parse().unwrap());
        remote.absorb(&hub);
        let mut cdn = HeaderMap::new();
        cdn.insert(ETAG, format!("\"{}\"", "3".repeat(64)).parse().unwrap());
        remote.absorb(&cdn);
        assert_eq!(
            remote,
            Remote {
                checksum: Some(Checksum::Sha256("1".repeat(64))),
                size: Some(1234),
                commit: Some("c0ffee".into()),
            }
        );
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "hello\n").unwrap();
        assert_eq!(
            git_blob_sha1(&path).unwrap(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        let p = default_plan();
        let file = p.file(Role::Tokenizer).unwrap();
        let url = file_url(&parse_endpoint(DEFAULT_ENDPOINT).unwrap(), file).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-error-message", "Entry not found".parse().unwrap());
        let not_found = status_error(StatusCode::NOT_FOUND, &headers, file, &url).to_string();
        assert!(
            not_found.contains("`tokenizer.json` was not found")
                && not_found.contains("Entry not found")
                && not_found.contains("--revision"),
            "{not_found}"
        );
        let denied =
            status_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), file, &url).to_string();
        assert!(denied.contains("HF_TOKEN"), "{denied}");
    }
}
