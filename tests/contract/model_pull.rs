//! `sightline model pull` against a fake Hugging Face hub on 127.0.0.1: the server answers
//! `/{repo}/resolve/{revision}/{path}` the way the hub does (LFS files: a 302 to a CDN path with
//! the sha256 in `X-Linked-Etag` and the size in `X-Linked-Size`, while the CDN's own `ETag` is
//! not a checksum; git files: 200 with the git blob id as `ETag`; `Range` honoured or not), and
//! serves the tiny form-(b) fixture under the real file names, so a pulled bundle really loads
//! and embeds. Covers the cache, resume, checksum and 404 paths; the endpoint is a parameter,
//! never the process environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use sightline::engine::bundle::{Bundle, Preprocess, TextPooling};
use sightline::model::{self, Checksum, Outcome, PullRequest, Role, DEFAULT_MODEL};

use crate::common::fixture;
use crate::model_init::{assert_same_vectors, vectors};

const ST_REPO: &str = "sentence-transformers/clip-ViT-B-32-multilingual-v1";
const IMAGE_REPO: &str = "Qdrant/clip-ViT-B-32-vision";
const TOKEN: &str = "hf_test_token";

#[derive(Clone)]
struct Served {
    bytes: Vec<u8>,
    /// Large files live in LFS: the hub redirects to the CDN.
    lfs: bool,
    /// What the hub claims the checksum is, when a test wants it to lie.
    advertised: Option<String>,
}

#[derive(Debug, Clone)]
struct Hit {
    method: Method,
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

struct HubState {
    /// Raw request path (`%2F` kept) → file.
    files: Mutex<HashMap<String, Served>>,
    hits: Mutex<Vec<Hit>>,
    honor_range: bool,
}

struct FakeHub {
    endpoint: String,
    state: Arc<HubState>,
}

impl FakeHub {
    async fn start(files: HashMap<String, Served>, honor_range: bool) -> FakeHub {
        let state = Arc::new(HubState {
            files: Mutex::new(files),
            hits: Mutex::new(Vec::new()),
            honor_range,
        });
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeHub { endpoint, state }
    }

    fn hits(&self) -> Vec<Hit> {
        std::mem::take(&mut *self.state.hits.lock().unwrap())
    }

    fn set(&self, path: &str, served: Served) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), served);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn git_blob_id(bytes: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex::encode(hasher.finalize())
}

async fn serve(
    State(state): State<Arc<HubState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let path = uri.path().to_owned();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.hits.lock().unwrap().push(Hit {
        method,
        path: path.clone(),
        range: range.clone(),
        auth,
    });
    let files = state.files.lock().unwrap().clone();

    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(file) = files.values().find(|f| sha256_hex(&f.bytes) == sha) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        // A CDN's ETag is an md5-like tag of its object, not the repository checksum.
        return body(
            &file.bytes,
            range.as_deref(),
            state.honor_range,
            "\"0123456789abcdef0123456789abcdef\"",
        );
    }
    let Some(file) = files.get(&path) else {
        return (
            StatusCode::NOT_FOUND,
            [
                ("x-error-code", "EntryNotFound"),
                ("x-error-message", "Entry not found"),
            ],
        )
            .into_response();
    };
    if file.lfs {
        let sha = sha256_hex(&file.bytes);
        let claimed = format!(
            "\"{}\"",
            file.advertised.clone().unwrap_or_else(|| sha.clone())
        );
        return (
            StatusCode::FOUND,
            [
                (header::LOCATION.as_str(), format!("/cdn/{sha}")),
                ("x-linked-etag", claimed.clone()),
                (header::ETAG.as_str(), claimed),
                ("x-linked-size", file.bytes.len().to_string()),
                ("x-repo-commit", "0123abcd".repeat(5)),
            ],
        )
            .into_response();
    }
    let claimed = format!(
        "\"{}\"",
        file.advertised
            .clone()
            .unwrap_or_else(|| git_blob_id(&file.bytes))
    );
    body(&file.bytes, range.as_deref(), state.honor_range, &claimed)
}

/// The bytes, or the tail a `Range: bytes=N-` asks for.
fn body(bytes: &[u8], range: Option<&str>, honor_range: bool, etag: &str) -> Response {
    let len = bytes.len();
    let from = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| honor_range);
    match from {
        Some(from) if from >= len => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response(),
        Some(from) => (
            StatusCode::PARTIAL_CONTENT,
            [
                (
                    header::CONTENT_RANGE,
                    format!("bytes {from}-{}/{len}", len - 1),
                ),
                (header::ETAG, etag.to_owned()),
            ],
            bytes[from..].to_vec(),
        )
            .into_response(),
        None => (
            StatusCode::OK,
            [(header::ETAG, etag.to_owned())],
            bytes.to_vec(),
        )
            .into_response(),
    }
}

fn resolve(repo: &str, revision: &str, path: &str) -> String {
    format!("/{repo}/resolve/{}/{path}", revision.replace('/', "%2F"))
}

fn fixture_file(name: &str) -> Vec<u8> {
    std::fs::read(fixture("tiny-clip-tokens").join(name)).unwrap()
}

/// The default plan's four files, filled with the tiny form-(b) fixture.
fn repo_files(revision: &str) -> HashMap<String, Served> {
    let lfs = |name: &str| Served {
        bytes: fixture_file(name),
        lfs: true,
        advertised: None,
    };
    HashMap::from([
        (
            resolve(IMAGE_REPO, "main", "model.onnx"),
            lfs("image_encoder.onnx"),
        ),
        (
            resolve(ST_REPO, revision, "onnx/model.onnx"),
            lfs("text_encoder.onnx"),
        ),
        (
            resolve(ST_REPO, revision, "2_Dense/model.safetensors"),
            lfs("dense.safetensors"),
        ),
        (
            resolve(ST_REPO, revision, "tokenizer.json"),
            Served {
                bytes: fixture_file("tokenizer.json"),
                lfs: false,
                advertised: None,
            },
        ),
    ])
}

fn request(hub: &FakeHub, tmp: &Path) -> PullRequest {
    PullRequest {
        endpoint: hub.endpoint.clone(),
        token: Some(TOKEN.to_owned()),
        ..request_without_hub(tmp)
    }
}

fn cached(tmp: &Path, repo: &str, revision: &str, path: &str) -> PathBuf {
    let mut p = tmp.join("cache/hub").join(repo).join(revision);
    p.push(path);
    p
}

fn part_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.part", path.display()))
}

/// The whole error chain of a pull that must fail.
async fn pull_error(hub: &FakeHub, dir: &Path) -> String {
    format!("{:#}", model::pull(&request(hub, dir)).await.unwrap_err())
}

#[tokio::test]
async fn a_pulled_bundle_embeds_like_the_fixture_and_is_cached() {
    let hub = FakeHub::start(repo_files("main"), true).await;
    let tmp = tempfile::tempdir().unwrap();
    let req = request(&hub, tmp.path());

    let pulled = model::pull(&req).await.unwrap();
    assert_eq!(pulled.bundle.outcome, Outcome::Created);
    let m = Bundle::load(&tmp.path().join("bundle")).unwrap().manifest;
    assert_eq!(
        (m.name.as_str(), m.dimensions, m.max_seq_len),
        (DEFAULT_MODEL, 512, 128)
    );
    assert_eq!(
        (m.text.output.as_str(), m.text.pooling),
        ("last_hidden_state", TextPooling::Mean)
    );
    assert_eq!(m.preprocess, Preprocess::default());
    for (file, fetched) in &pulled.files {
        assert!(!fetched.cached);
        let want_sha = file.role != Role::Tokenizer;
        assert_eq!(
            matches!(fetched.published, Some(Checksum::Sha256(_))),
            want_sha,
            "{file:?}"
        );
        assert_eq!(
            matches!(fetched.published, Some(Checksum::GitSha1(_))),
            !want_sha,
            "{file:?}"
        );
        assert_eq!(
            fetched.commit.as_deref().map(str::len),
            Some(40).filter(|_| want_sha)
        );
    }
    assert_same_vectors(
        &vectors(&tmp.path().join("bundle")).await,
        &vectors(&fixture("tiny-clip-tokens")).await,
    );
    // The token goes to the hub with every request.
    let hits = hub.hits();
    assert!(
        hits.iter()
            .all(|h| h.auth.as_deref() == Some("Bearer hf_test_token")),
        "{hits:?}"
    );
    assert_eq!(
        hits.iter().filter(|h| h.path.starts_with("/cdn/")).count(),
        3,
        "{hits:?}"
    );

    // Second pull: every file is checked with one HEAD and none is downloaded again.
    let again = model::pull(&req).await.unwrap();
    assert_eq!(again.bundle.outcome, Outcome::Unchanged);
    assert!(again.files.iter().all(|(_, f)| f.cached));
    let hits = hub.hits();
    assert!(
        hits.len() == 4 && hits.iter().all(|h| h.method == Method::HEAD),
        "{hits:?}"
    );
}

#[tokio::test]
async fn a_partial_download_is_resumed_or_restarted() {
    let text = fixture_file("text_encoder.onnx");
    let half = text.len() / 2;
    for honor_range in [true, false] {
        let hub = FakeHub::start(repo_files("main"), honor_range).await;
        let tmp = tempfile::tempdir().unwrap();
        let target = cached(tmp.path(), ST_REPO, "main", "onnx/model.onnx");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(part_of(&target), &text[..half]).unwrap();

        model::pull(&request(&hub, tmp.path())).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), text);
        assert!(!part_of(&target).exists());
        let cdn = format!("/cdn/{}", sha256_hex(&text));
        let asked: Vec<_> = hub
            .hits()
            .into_iter()
            .filter(|h| h.path == cdn)
            .map(|h| h.range)
            .collect();
        assert_eq!(
            asked,
            [Some(format!("bytes={half}-"))],
            "honor_range {honor_range}"
        );
        assert_same_vectors(
            &vectors(&tmp.path().join("bundle")).await,
            &vectors(&fixture("tiny-clip-tokens")).await,
        );
    }
}

#[tokio::test]
async fn a_corrupt_partial_download_is_discarded_and_the_next_run_succeeds() {
    let hub = FakeHub::start(repo_files("main"), true).await;
    let tmp = tempfile::tempdir().unwrap();
    let text = fixture_file("text_encoder.onnx");
    let target = cached(tmp.path(), ST_REPO, "main", "onnx/model.onnx");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(part_of(&target), vec![0u8; text.len() / 2]).unwrap();

    let err = pull_error(&hub, tmp.path()).await;
    assert!(
        err.contains("does not match its published sha256")
            && err.contains("run the command again"),
        "{err}"
    );
    assert!(!part_of(&target).exists() && !target.exists());
    assert!(!tmp.path().join("bundle").exists());

    model::pull(&request(&hub, tmp.path())).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), text);
}

#[tokio::test]
async fn a_checksum_mismatch_leaves_no_file_and_no_bundle() {
    let hub = FakeHub::start(repo_files("main"), true).await;
    let dense_path = resolve(ST_REPO, "main", "2_Dense/model.safetensors");
    hub.set(
        &dense_path,
        Served {
            bytes: fixture_file("dense.safetensors"),
            lfs: true,
            advertised: Some("ab".repeat(32)),
        },
    );
    let tmp = tempfile::tempdir().unwrap();

    let err = pull_error(&hub, tmp.path()).await;
    assert!(
        err.contains(&format!(
            "`2_Dense/model.safetensors` from `{ST_REPO}` does not match its published sha256"
        )) && err.contains(&format!("expected {}", "ab".repeat(32)))
            && err.contains("no bundle was written"),
        "{err}"
    );
    let target = cached(tmp.path(), ST_REPO, "main", "2_Dense/model.safetensors");
    assert!(!target.exists() && !part_of(&target).exists());
    assert!(!tmp.path().join("bundle").exists());

    // The git blob id of a file kept in git is checked too.
    let hub = FakeHub::start(repo_files("main"), true).await;
    let tokenizer = Served {
        bytes: fixture_file("tokenizer.json"),
        lfs: false,
        advertised: Some("cd".repeat(20)),
    };
    hub.set(&resolve(ST_REPO, "main", "tokenizer.json"), tokenizer);
    let tmp = tempfile::tempdir().unwrap();
    let err = pull_error(&hub, tmp.path()).await;
    assert!(
        err.contains("does not match its published git blob sha1"),
        "{err}"
    );
    assert!(!tmp.path().join("bundle").exists());
}

/// A file with no checksum is accepted on its size, and its sha256 is recorded and reported.
#[tokio::test]
async fn a_file_without_a_published_checksum_is_recorded() {
    let hub = FakeHub::start(repo_files("main"), true).await;
    let bytes = fixture_file("tokenizer.json");
    let tokenizer = Served {
        bytes: bytes.clone(),
        lfs: false,
        advertised: Some("not-a-checksum".into()),
    };
    hub.set(&resolve(ST_REPO, "main", "tokenizer.json"), tokenizer);
    let tmp = tempfile::tempdir().unwrap();
    let req = request(&hub, tmp.path());

    let pulled = model::pull(&req).await.unwrap();
    let (_, fetched) = pulled
        .files
        .iter()
        .find(|(f, _)| f.role == Role::Tokenizer)
        .unwrap();
    assert_eq!(fetched.published, None);
    assert_eq!(fetched.sha256, sha256_hex(&bytes));
    assert_eq!(fetched.size, bytes.len() as u64);

    // The recorded file is reused while the hub reports the same length.
    let again = model::pull(&req).await.unwrap();
    assert!(again.files.iter().all(|(_, f)| f.cached));
    assert_eq!(again.bundle.outcome, Outcome::Unchanged);

    // A different length is a different file: fetched again (and so a different bundle).
    let mut longer = bytes.clone();
    longer.push(b'\n');
    let tokenizer = Served {
        bytes: longer.clone(),
        lfs: false,
        advertised: Some("not-a-checksum".into()),
    };
    hub.set(&resolve(ST_REPO, "main", "tokenizer.json"), tokenizer);
    let replaced = model::pull(&PullRequest { force: true, ..req })
        .await
        .unwrap();
    assert_eq!(replaced.bundle.outcome, Outcome::Replaced);
    let cached = cached(tmp.path(), ST_REPO, "main", "tokenizer.json");
    assert_eq!(std::fs::read(cached).unwrap(), longer);
}

#[tokio::test]
async fn a_missing_file_is_a_clear_404() {
    let mut files = repo_files("main");
    files.remove(&resolve(ST_REPO, "main", "tokenizer.json"));
    let hub = FakeHub::start(files, true).await;
    let tmp = tempfile::tempdir().unwrap();

    let err = pull_error(&hub, tmp.path()).await;
    assert!(
        err.contains(&format!(
            "`tokenizer.json` was not found in `{ST_REPO}` at revision `main`"
        )) && err.contains("Entry not found")
            && err.contains("--revision"),
        "{err}"
    );
    assert!(!tmp.path().join("bundle").exists());
}

#[tokio::test]
async fn an_unreachable_hub_says_what_to_do() {
    // A port that was just free and is closed again: connecting is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let req = PullRequest {
        endpoint: format!("http://127.0.0.1:{port}"),
        ..request_without_hub(tmp.path())
    };

    let err = format!("{:#}", model::pull(&req).await.unwrap_err());
    assert!(
        err.contains(&format!("cannot reach http://127.0.0.1:{port}"))
            && err.contains("HF_ENDPOINT")
            && err.contains("sightline model init"),
        "{err}"
    );
}

/// The default bundle into `tmp/bundle`, with no hub endpoint or token.
fn request_without_hub(tmp: &Path) -> PullRequest {
    PullRequest {
        model: DEFAULT_MODEL.to_owned(),
        revision: "main".to_owned(),
        image_revision: "main".to_owned(),
        quantized: false,
        dir: Some(tmp.join("bundle")),
        endpoint: String::new(),
        token: None,
        cache: tmp.join("cache"),
        force: false,
        progress: false,
    }
}

#[tokio::test]
async fn a_file_changed_upstream_is_fetched_again() {
    let hub = FakeHub::start(repo_files("refs/pr/7"), true).await;
    let tmp = tempfile::tempdir().unwrap();
    let req = PullRequest {
        revision: "refs/pr/7".into(),
        ..request(&hub, tmp.path())
    };
    model::pull(&req).await.unwrap();
    // The revision is a path in the cache, and `%2F`-encoded in the URL.
    let tokenizer_cache = cached(tmp.path(), ST_REPO, "refs/pr/7", "tokenizer.json");
    assert!(tokenizer_cache.is_file());
    hub.hits();

    let mut changed = fixture_file("tokenizer.json");
    changed.extend_from_slice(b"\n\n");
    let tokenizer = Served {
        bytes: changed.clone(),
        lfs: false,
        advertised: None,
    };
    hub.set(&resolve(ST_REPO, "refs/pr/7", "tokenizer.json"), tokenizer);

    let err = format!("{:#}", model::pull(&req).await.unwrap_err());
    assert!(
        err.contains("already holds a different bundle") && err.contains("--force"),
        "{err}"
    );
    let downloads: Vec<_> = hub
        .hits()
        .into_iter()
        .filter(|h| h.method == Method::GET)
        .map(|h| h.path)
        .collect();
    assert_eq!(downloads, [resolve(ST_REPO, "refs/pr/7", "tokenizer.json")]);
    assert_eq!(std::fs::read(&tokenizer_cache).unwrap(), changed);

    let replaced = model::pull(&PullRequest { force: true, ..req })
        .await
        .unwrap();
    assert_eq!(replaced.bundle.outcome, Outcome::Replaced);
    assert_eq!(
        std::fs::read(tmp.path().join("bundle/tokenizer.json")).unwrap(),
        changed
    );
}

#[tokio::test]
async fn an_open_clip_preset_is_pulled_from_its_immich_repository() {
    // The tiny XLM-R family fixture is in the layout of Immich's export repositories.
    let repo = "immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k";
    let dir = fixture("tiny-xlmr-openclip");
    let files = [
        "config.json",
        "visual/model.onnx",
        "visual/preprocess_cfg.json",
        "textual/model.onnx",
        "textual/tokenizer.json",
        "textual/tokenizer_config.json",
    ]
    .map(|path| {
        let served = Served {
            bytes: std::fs::read(dir.join(path)).unwrap(),
            lfs: path.ends_with(".onnx"),
            advertised: None,
        };
        (resolve(repo, "main", path), served)
    });
    let hub = FakeHub::start(HashMap::from(files), true).await;
    let tmp = tempfile::tempdir().unwrap();
    let req = PullRequest {
        model: "xlm-roberta-base-vit-b-32".into(),
        ..request(&hub, tmp.path())
    };
    let pulled = model::pull(&req).await.unwrap();
    assert_eq!(pulled.files.len(), 6);
    let mut expected = Bundle::load(&dir).unwrap().manifest;
    expected.name = "xlm-roberta-base-vit-b-32".into();
    expected.image.onnx = "image_encoder.onnx".into();
    expected.text.onnx = "text_encoder.onnx".into();
    expected.tokenizer = "tokenizer.json".into();
    assert_eq!(
        Bundle::load(&tmp.path().join("bundle")).unwrap().manifest,
        expected
    );
    assert!(cached(tmp.path(), repo, "main", "visual/preprocess_cfg.json").is_file());
}
