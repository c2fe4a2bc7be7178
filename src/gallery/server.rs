//! Routes of the gallery: the page's three static files (compiled in, so the binary is the whole
//! deployment and nothing is fetched from the internet), the JSON API, the optional `--auth`
//! check, and the headers every answer carries — a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline code, images from here or `data:`/`blob:` for the
//! thumbnails and the query preview), `nosniff`, no framing, no referrer.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::api::{self, ApiError, ErrorCode, Gallery};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// No inline script or style, nothing from another origin; `data:` images are the stored
/// thumbnails, `blob:` the preview of a dropped picture.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'";

/// `--auth`: who may use the gallery once it listens beyond loopback.
#[derive(Clone, PartialEq, Eq)]
pub enum GalleryAuth {
    /// `basic:USER:PASSWORD`: the browser asks once; page and API are both behind it.
    Basic { user: String, password: String },
    /// `token:SECRET`: `Authorization: Bearer SECRET` on the API; the page asks for the token
    /// and keeps it for the tab.
    Token(String),
}

impl fmt::Debug for GalleryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GalleryAuth::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            GalleryAuth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl FromStr for GalleryAuth {
    type Err = String;

    fn from_str(text: &str) -> Result<GalleryAuth, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("basic:") {
            let (user, password) = rest
                .split_once(':')
                .filter(|(user, password)| !user.is_empty() && !password.is_empty())
                .ok_or("basic auth is `basic:USER:PASSWORD`, both non-empty")?;
            return Ok(GalleryAuth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            });
        }
        if let Some(token) = text.strip_prefix("token:") {
            if token.is_empty() {
                return Err("token auth is `token:SECRET` with a non-empty secret".into());
            }
            return Ok(GalleryAuth::Token(token.to_owned()));
        }
        Err("expected `basic:USER:PASSWORD` or `token:SECRET`".into())
    }
}

impl GalleryAuth {
    /// Whether `headers` authorise a request for `path`.
    fn admits(&self, path: &str, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match self {
            GalleryAuth::Basic { user, password } => {
                let expected = format!("{user}:{password}");
                presented
                    .strip_prefix("Basic ")
                    .and_then(|b64| BASE64.decode(b64.trim()).ok())
                    .is_some_and(|given| bool::from(given.ct_eq(expected.as_bytes())))
            }
            // The page itself holds no data; it must load to ask for the token.
            GalleryAuth::Token(token) => {
                !path.starts_with("/api/")
                    || presented.strip_prefix("Bearer ").is_some_and(|given| {
                        bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
                    })
            }
        }
    }
}

/// The gallery's router.
pub(crate) fn router(gallery: Arc<Gallery>, auth: Option<GalleryAuth>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
        .route("/api/status", get(api::status))
        .route("/api/search", post(api::search))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such page").into_response() })
        .with_state(gallery)
        .layer(middleware::from_fn_with_state(Arc::new(auth), check_auth))
        .layer(middleware::map_response(security_headers))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary; a restart must not leave an old script cached.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn check_auth(
    State(auth): State<Arc<Option<GalleryAuth>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = auth.as_ref() else {
        return next.run(request).await;
    };
    if auth.admits(request.uri().path(), request.headers()) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        ErrorCode::Unauthorized,
        "this gallery needs credentials (`--auth`)",
    )
    .into_response();
    if matches!(auth, GalleryAuth::Basic { .. }) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sightline gallery\", charset=\"UTF-8\""),
        );
    }
    debug_assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    response
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        // API answers are per query and may carry thumbnails of private pictures.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn auth_flags_parse_and_hide_their_secrets() {
        let parsed: GalleryAuth = "basic:ann:pa:ss".parse().unwrap();
        assert_eq!(
            parsed,
            GalleryAuth::Basic {
                user: "ann".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(format!("{parsed:?}"), "Basic(ann:***)");
        assert_eq!(
            "token:s3".parse::<GalleryAuth>().unwrap(),
            GalleryAuth::Token("s3".into())
        );
        assert!("basic:ann".parse::<GalleryAuth>().is_err());
        assert!("token:".parse::<GalleryAuth>().is_err());
        assert!("s3cret".parse::<GalleryAuth>().is_err());
    }

    #[test]
    fn basic_guards_everything_token_guards_the_api() {
        let auth: GalleryAuth = "basic:ann:pw".parse().unwrap();
        let good = format!("Basic {}", BASE64.encode("ann:pw"));
        assert!(auth.admits("/", &basic(&good)));
        assert!(!auth.admits("/", &HeaderMap::new()));
        assert!(!auth.admits(
            "/api/status",
            &basic(&format!("Basic {}", BASE64.encode("ann:p")))
        ));
        let token: GalleryAuth = "token:t0".parse().unwrap();
        assert!(token.admits("/", &HeaderMap::new()));
        assert!(!token.admits("/api/search", &HeaderMap::new()));
        assert!(token.admits("/api/search", &basic("Bearer t0")));
        assert!(!token.admits("/api/search", &basic("Bearer t1")));
    }
}
