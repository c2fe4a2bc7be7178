//! Load spreads over replicas (issue 14 §1). Three in-process `serve` replicas sit behind a
//! round-robin TCP proxy (balanced per connection, as a Kubernetes Service is); a client keeps
//! exactly 20 keep-alive HTTP/1.1 connections, as Elasticsearch's inference client does per
//! route, and reconnects only when a response says `Connection: close`. The third replica starts
//! and joins the rotation after the load began. With `--max-connection-requests` connections turn
//! over and every replica serves a share; without it the late replica serves nothing, because no
//! connection is ever made again. Zero requests may fail either way.
//!
//! Everything is driven by request counts: the replica joins once `JOIN_AFTER` responses came
//! back, the load is `TOTAL` requests, and every wait has `PATIENCE` as its deadline. The
//! connection-age flag is not used here: it turns over on the wall clock, which a count-driven
//! test cannot pin; the server's unit tests (`http::server`) cover its close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use sightline::http::server::ServerLimits;

use crate::common::*;
use crate::connections::{quiet_limits, Running};

/// Connections the client keeps, as Elasticsearch's HTTP client does per route.
const POOL: usize = 20;
/// Requests in one run.
const TOTAL: usize = 1000;
/// Responses before the third replica starts and joins.
const JOIN_AFTER: usize = 50;
/// `--max-connection-requests` in the half with the flag.
const REQUESTS_PER_CONNECTION: u64 = 5;

/// The replica router, counting the requests it serves.
fn counting_app(served: Arc<AtomicU64>) -> Router {
    app().layer(middleware::from_fn(move |request: Request, next: Next| {
        let served = Arc::clone(&served);
        async move {
            served.fetch_add(1, Ordering::SeqCst);
            next.run(request).await
        }
    }))
}

/// A TCP proxy that sends each new connection to the next backend in turn; backends can be added
/// while it runs. Counts the connections it made to each.
struct Proxy {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    connections: Arc<Mutex<Vec<usize>>>,
}

impl Proxy {
    async fn start(backends: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("proxy address");
        let connections = Arc::new(Mutex::new(vec![0; backends.len()]));
        let backends = Arc::new(Mutex::new(backends));
        let (list, counts) = (Arc::clone(&backends), Arc::clone(&connections));
        tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backend = {
                    let list = list.lock().unwrap();
                    let chosen = next % list.len();
                    next += 1;
                    counts.lock().unwrap()[chosen] += 1;
                    list[chosen]
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            backends,
            connections,
        }
    }

    fn add(&self, backend: SocketAddr) {
        self.connections.lock().unwrap().push(0);
        self.backends.lock().unwrap().push(backend);
    }

    fn connections(&self) -> Vec<usize> {
        self.connections.lock().unwrap().clone()
    }
}

/// What the client pool saw.
#[derive(Default)]
struct Load {
    issued: AtomicUsize,
    answered: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

async fn connect(proxy: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One of the pool's connections: requests one after another on the same connection, a new
/// connection only after a response carrying `Connection: close`. Nothing is retried, so any
/// error — a reset, a close the client was not told about — is a failure.
async fn pool_connection(proxy: SocketAddr, load: Arc<Load>) {
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while load.issued.fetch_add(1, Ordering::SeqCst) < TOTAL {
        let open = match sender {
            Some(ref mut open) => open,
            None => match connect(proxy).await {
                Ok(fresh) => sender.insert(fresh),
                Err(e) => {
                    load.fail(e);
                    continue;
                }
            },
        };
        let request = hyper::Request::post("/v1/embeddings")
            .header("host", "sightline")
            .header("authorization", format!("Bearer {API_KEY}"))
            .header("content-type", OPENAI_CONTENT_TYPE)
            .body(Full::new(Bytes::from(openai_body(
                &["a photo of a dog in the snow"],
                None,
                None,
                false,
            ))))
            .expect("request");
        let outcome = async {
            open.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let response = open
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = response.status();
            let close = response
                .headers()
                .get("connection")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            if status != 200 {
                return Err(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(close)
        };
        match patiently("a response through the proxy", outcome).await {
            Ok(close) => {
                load.answered.fetch_add(1, Ordering::SeqCst);
                if close {
                    sender = None;
                }
            }
            Err(e) => {
                load.fail(e);
                sender = None;
            }
        }
    }
}

/// Requests each replica served, in start order (the late one last), and the connections the
/// proxy made to each.
struct Spread {
    served: [u64; 3],
    served_before_join: [u64; 3],
    connections: Vec<usize>,
}

async fn run_spread(limits: ServerLimits) -> Spread {
    let served: [Arc<AtomicU64>; 3] = Default::default();
    let first = Running::start(counting_app(Arc::clone(&served[0])), limits.clone()).await;
    let second = Running::start(counting_app(Arc::clone(&served[1])), limits.clone()).await;
    let proxy = Proxy::start(vec![first.addr, second.addr]).await;

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..POOL)
        .map(|_| tokio::spawn(pool_connection(proxy.addr, Arc::clone(&load))))
        .collect();
    wait_until(format!("{JOIN_AFTER} responses"), || {
        std::future::ready(load.answered.load(Ordering::SeqCst) >= JOIN_AFTER)
    })
    .await;
    let late = Running::start(counting_app(Arc::clone(&served[2])), limits).await;
    let served_before_join = served.each_ref().map(|n| n.load(Ordering::SeqCst));
    proxy.add(late.addr);
    for client in clients {
        patiently("the client pool to finish", client)
            .await
            .expect("client task");
    }

    let failures = load.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(load.answered.load(Ordering::SeqCst), TOTAL);
    let served = served.each_ref().map(|n| n.load(Ordering::SeqCst));
    assert_eq!(served.iter().sum::<u64>(), TOTAL as u64, "{served:?}");
    Spread {
        served,
        served_before_join,
        connections: proxy.connections(),
    }
}

#[tokio::test]
async fn with_max_connection_requests_a_replica_added_under_load_gets_its_share() {
    let spread = run_spread(ServerLimits {
        max_connection_requests: Some(REQUESTS_PER_CONNECTION),
        ..quiet_limits()
    })
    .await;
    let after: Vec<u64> = (0..3)
        .map(|r| spread.served[r] - spread.served_before_join[r])
        .collect();
    let after_total: u64 = after.iter().sum();
    // The join must leave most of the load to measure; it comes after 50 of 1000.
    assert!(
        after_total >= TOTAL as u64 / 2,
        "the third replica joined too late: {after:?}"
    );
    // The bound: each replica serves at least half its fair third of what came after the join
    // (the 20 connections open at the join finish their last few requests where they are).
    for (replica, n) in after.iter().enumerate() {
        assert!(
            *n * 6 >= after_total,
            "replica {replica} served {n} of the {after_total} requests after the join: {after:?}, connections {:?}",
            spread.connections
        );
    }
    // Connections turned over: one per 5 responses, none left open beyond the pool.
    let connections: usize = spread.connections.iter().sum();
    assert!(
        connections >= TOTAL / REQUESTS_PER_CONNECTION as usize,
        "{:?}",
        spread.connections
    );
}

#[tokio::test]
async fn without_the_flags_a_replica_added_under_load_gets_nothing() {
    let spread = run_spread(quiet_limits()).await;
    assert_eq!(
        spread.served[2], 0,
        "the late replica: {:?}, connections {:?}",
        spread.served, spread.connections
    );
    // The pool's 20 connections were made once, before the join, and kept for the whole load.
    assert_eq!(spread.connections, [POOL / 2, POOL / 2, 0]);
}
