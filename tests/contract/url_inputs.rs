//! URL inputs (issue 6, Scope 4): refused by default with a 400 that names the flag; when on,
//! only listed hosts, only addresses that pass the checks (after resolution and on every
//! redirect), one deadline for the whole fetch, a size cap counted while streaming, and an image
//! decided by its bytes, not its `Content-Type`.
//!
//! Every server here is an in-process axum app on 127.0.0.1:0 that counts the requests it gets.
//! No test sends traffic anywhere else: `evil.example` and the metadata address are refused
//! before any lookup or connection, which the counters and messages show.

use std::future::pending;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;

use sightline::engine::{EmbedError, Engine, EngineOptions, ErrorKind};
use sightline::http::router;
use sightline::url::{Fetcher, HostRule, UrlOptions};

use crate::common::*;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const IMAGE: &str = "small-100x50.png";
/// The cap the size tests run under; the fixture image is well below it.
const SMALL_CAP: usize = 64 << 10;

/// A loopback image host and the number of requests it has answered.
struct ImageHost {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl ImageHost {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn redirect(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

/// Starts the image host on 127.0.0.1:0 with one route per behaviour under test.
async fn image_host() -> ImageHost {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new()
        // `text/plain` on purpose: the bytes say what a body is.
        .route(
            "/images/{name}",
            get(|Path(name): Path<String>| async move {
                ([(header::CONTENT_TYPE, "text/plain")], image_bytes(&name))
            }),
        )
        .route(
            "/away",
            get(|| async { redirect("http://evil.example/cat.jpg") }),
        )
        .route(
            "/metadata",
            get(|| async { redirect("http://169.254.169.254/latest/meta-data/") }),
        )
        // `/hops/n` redirects n times (relative locations), then serves the image.
        .route(
            "/hops/{n}",
            get(|Path(n): Path<u32>| async move {
                match n {
                    0 => image_bytes(IMAGE).into_response(),
                    n => redirect(&format!("/hops/{}", n - 1)),
                }
            }),
        )
        // Never answers: the handler's future never completes.
        .route("/silent", get(pending::<&'static str>))
        // Sends the headers and a first chunk, then nothing more.
        .route(
            "/stalls",
            get(|| async {
                let first = futures::stream::once(async {
                    Ok::<_, std::io::Error>(Bytes::from_static(PNG_SIGNATURE))
                });
                Body::from_stream(first.chain(futures::stream::pending()))
            }),
        )
        // Declares its length up front.
        .route("/huge", get(|| async { oversized() }))
        // Streams without a declared length, so only counting while reading can stop it.
        .route(
            "/huge-chunked",
            get(|| async {
                let chunks = oversized()
                    .chunks(8 << 10)
                    .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>();
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            "/html",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/jpeg")],
                    "<html>not a cat</html>",
                )
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            next.run(req)
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    ImageHost { addr, hits }
}

/// PNG-signed bytes four times the small cap: only the size can be wrong with them.
fn oversized() -> Vec<u8> {
    let mut body = PNG_SIGNATURE.to_vec();
    body.resize(4 * SMALL_CAP, 0);
    body
}

fn rules(hosts: &[&str]) -> Vec<HostRule> {
    hosts
        .iter()
        .map(|h| h.parse().expect("valid rule"))
        .collect()
}

/// URL options for the loopback image host: private addresses must be allowed to reach it.
fn loopback_options() -> UrlOptions {
    UrlOptions {
        allow_hosts: rules(&["127.0.0.1", "localhost"]),
        allow_private: true,
        timeout: Duration::from_secs(5),
        ..UrlOptions::default()
    }
}

fn fetcher(opts: UrlOptions) -> Fetcher {
    Fetcher::new(opts).expect("the fetcher builds")
}

fn bad_input(result: Result<Vec<u8>, EmbedError>) -> String {
    let e = result.expect_err("the fetch must fail");
    assert_eq!(e.kind, ErrorKind::BadInput, "{}", e.message);
    e.message
}

// ---------------------------------------------------------------------------------------------
// Through the router

/// An engine with URL inputs on for the loopback host; a timeout short enough for the slow test
/// and long enough for a loaded two-core machine.
fn url_engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            start_engine(EngineOptions {
                url_fetcher: Some(Arc::new(fetcher(UrlOptions {
                    timeout: Duration::from_secs(1),
                    ..loopback_options()
                }))),
                ..test_options()
            })
        })
        .clone()
}

fn url_app() -> Router {
    router(url_engine(), http_config())
}

#[tokio::test]
async fn url_inputs_are_refused_by_default_naming_the_flag() {
    let app = app();
    let body = openai_body(
        &["how big", "https://images.example.com/cat.jpg"],
        None,
        None,
        false,
    );
    let reply = send(&app, openai_request("/v1/embeddings", body.clone())).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    let (message, kind) = reply.openai_error();
    assert!(
        message.starts_with("input[1]: URL inputs are disabled")
            && message.contains("`--allow-url-hosts`"),
        "{message}"
    );
    assert_eq!(kind, "invalid_request_error");

    let reply = send(
        &app,
        hf_request("/embed", hf_body(&["http://images.example.com/a.png"])),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert!(reply
        .hf_error()
        .starts_with("input[0]: URL inputs are disabled"));

    // A link is still a text when the endpoint says its inputs are texts.
    openai_vectors(&app, "/v1/embeddings?modality=text", body, 2).await;
}

#[tokio::test]
async fn an_allowed_url_embeds_like_the_same_image_inline() {
    let host = image_host().await;
    let by_name = format!("http://localhost:{}/images/palette.png", host.addr.port());
    let by_ip = host.url(&format!("/images/{IMAGE}"));
    let inline = [data_uri(IMAGE), data_uri("palette.png")];
    let body = openai_body(
        &[&inline[0], &by_ip, "how big", &by_name, &inline[1]],
        None,
        None,
        false,
    );
    let v = openai_vectors(&url_app(), "/v1/embeddings", body, 5).await;
    assert_same_vector(&v[1], &v[0], "URL by address vs inline");
    assert_same_vector(&v[3], &v[4], "URL by name vs inline");
    assert_eq!(host.hits(), 2);
}

#[tokio::test]
async fn refusals_are_400s_that_name_the_input() {
    let app = url_app();
    let host = image_host().await;
    let cases = [
        (
            vec![
                "how big".to_owned(),
                "a cat".to_owned(),
                "https://evil.example/cat.jpg".to_owned(),
            ],
            "input[2]: URL host `evil.example` is not in `--allow-url-hosts`",
        ),
        (
            vec![host.url("/away")],
            "input[0]: redirect refused: URL host `evil.example` is not in `--allow-url-hosts`",
        ),
        (
            vec!["a dog".to_owned(), host.url("/html")],
            "input[1]: the URL's response body is not an image",
        ),
        (
            vec![host.url("/silent")],
            "input[0]: fetching the URL took longer than 1s (`--url-timeout`)",
        ),
    ];
    for (inputs, expected) in cases {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let body = openai_body(&inputs, None, None, false);
        let reply = send(&app, openai_request("/v1/embeddings", body)).await;
        reply.assert_status(StatusCode::BAD_REQUEST);
        let (message, _) = reply.openai_error();
        assert!(message.starts_with(expected), "{message}");
    }
    // `evil.example` was refused before any request; the other three reached the host once.
    assert_eq!(host.hits(), 3);
}

// ---------------------------------------------------------------------------------------------
// The fetcher itself

#[tokio::test]
async fn redirects_are_followed_checked_and_capped() {
    let host = image_host().await;
    let f = fetcher(loopback_options());
    let bytes = f.fetch(&host.url("/hops/3")).await.expect("3 redirects");
    assert_eq!(bytes, image_bytes(IMAGE));
    let message = bad_input(f.fetch(&host.url("/hops/4")).await);
    assert_eq!(message, "the URL redirects more than 3 times");
    let message = bad_input(f.fetch(&host.url("/away")).await);
    assert_eq!(
        message,
        "redirect refused: URL host `evil.example` is not in `--allow-url-hosts`"
    );
    // Even with private addresses allowed, and the host allowed, metadata is never fetched.
    let any = fetcher(UrlOptions {
        allow_hosts: rules(&["*"]),
        ..loopback_options()
    });
    let message = bad_input(any.fetch(&host.url("/metadata")).await);
    assert_eq!(
        message,
        "redirect refused: URL host `169.254.169.254` is a cloud metadata address, always refused"
    );
    // 4 + 4 + 1 + 1 requests, none of them beyond the loopback host.
    assert_eq!(host.hits(), 10);
}

#[tokio::test]
async fn private_addresses_need_the_flag_and_are_refused_before_connecting() {
    let host = image_host().await;
    let f = fetcher(UrlOptions {
        allow_private: false,
        ..loopback_options()
    });
    let path = format!("/images/{IMAGE}");
    // A name goes through the checking resolver.
    let by_name = format!("http://localhost:{}{path}", host.addr.port());
    let message = bad_input(f.fetch(&by_name).await);
    assert!(
        message.starts_with("URL host `localhost` resolves to ")
            && message
                .ends_with(", a loopback address, refused unless `--allow-url-private` is set"),
        "{message}"
    );
    // An address literal never reaches a resolver and is checked before the request.
    let message = bad_input(f.fetch(&host.url(&path)).await);
    assert_eq!(
        message,
        "URL host `127.0.0.1` is a loopback address, refused unless `--allow-url-private` is set"
    );
    assert_eq!(host.hits(), 0, "nothing was sent");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_a_400() {
    let host = image_host().await;
    let f = fetcher(UrlOptions {
        timeout: Duration::from_millis(300),
        ..loopback_options()
    });
    for path in ["/silent", "/stalls"] {
        let message = bad_input(f.fetch(&host.url(path)).await);
        assert_eq!(
            message, "fetching the URL took longer than 300ms (`--url-timeout`)",
            "{path}"
        );
    }
}

/// A current-thread runtime: if a fetch blocked its thread, the second fetch could never run.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_fetch_does_not_hold_up_other_fetches() {
    let host = image_host().await;
    let f = Arc::new(fetcher(UrlOptions {
        timeout: Duration::from_secs(600),
        ..loopback_options()
    }));
    let slow = {
        let (f, url) = (f.clone(), host.url("/silent"));
        tokio::spawn(async move { f.fetch(&url).await })
    };
    let bytes = f
        .fetch(&host.url(&format!("/images/{IMAGE}")))
        .await
        .expect("the fast fetch succeeds");
    assert_eq!(bytes, image_bytes(IMAGE));
    assert!(!slow.is_finished(), "the slow fetch is still waiting");
    slow.abort();
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let host = image_host().await;
    let f = fetcher(UrlOptions {
        max_bytes: SMALL_CAP,
        ..loopback_options()
    });
    for path in ["/huge", "/huge-chunked"] {
        let message = bad_input(f.fetch(&host.url(path)).await);
        assert_eq!(
            message,
            format!("the URL's response body exceeds {SMALL_CAP} bytes (`--url-max-bytes`)"),
            "{path}"
        );
    }
    let image = f.fetch(&host.url(&format!("/images/{IMAGE}"))).await;
    assert_eq!(image.expect("under the cap"), image_bytes(IMAGE));
}

#[tokio::test]
async fn the_bytes_decide_what_a_body_is_not_its_content_type() {
    let host = image_host().await;
    let f = fetcher(loopback_options());
    let message = bad_input(f.fetch(&host.url("/html")).await);
    assert!(
        message.starts_with("the URL's response body is not an image"),
        "{message}"
    );
    // Served as `text/plain`, and still an image.
    let bytes = f.fetch(&host.url("/images/image.webp")).await;
    assert_eq!(bytes.expect("an image"), image_bytes("image.webp"));
    let message = bad_input(f.fetch(&host.url("/missing")).await);
    assert_eq!(message, "URL host `127.0.0.1` answered HTTP 404 Not Found");
}
