//! HTTPS for `sightline serve` (`--tls-cert`/`--tls-key`), with rustls and the ring provider.
//!
//! [`TlsListener`] is an `axum::serve::Listener`, so HTTPS is served by the same `axum::serve`
//! loop as plain HTTP and keeps its graceful shutdown unchanged: on SIGTERM/SIGINT the listener
//! is dropped (no new connections), in-flight requests finish, idle keep-alive connections close.
//! Handshakes run in their own tasks, at most [`HandshakeLimits::max_concurrent`] at once and
//! each within [`HandshakeLimits::timeout`], so a client that connects and says nothing holds up
//! no one else, and a flood of such clients costs a bounded number of tasks: beyond the cap,
//! connections wait in the kernel's backlog until a handshake ends. Certificates are read once at
//! start; rotating them means a restart.
//! Routing, auth and limits are left to `http/mod.rs`; the flags to `cli/serve.rs`.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshaken connections waiting for the server to take them.
const ACCEPT_BACKLOG: usize = 64;

/// How many TLS handshakes may run at once, and how long each may take.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Handshakes in progress at once; further connections are not accepted until one ends.
    pub max_concurrent: usize,
    /// A client that has not finished its handshake by then is dropped.
    pub timeout: Duration,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max_concurrent: 256,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Reads the PEM certificate chain and private key and builds the server's TLS settings.
/// Errors name the flag and the file; they never include key material.
pub fn load_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(e, "--tls-cert", cert, "certificate"))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "`--tls-cert` `{}` holds no PEM certificate",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem_error(e, "--tls-key", key, "private key (PKCS#8, PKCS#1 or SEC1)"))?;
    // The provider is named rather than taken from the process default, which would be
    // ambiguous (and panic) if another crate in the build enabled a second provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            anyhow!(
                "cannot use `--tls-cert` `{}` with `--tls-key` `{}`: {e}",
                cert.display(),
                key.display()
            )
        })?;
    // The server speaks HTTP/1.1 only (es-contract §11 item 1); say so in ALPN.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error(e: pem::Error, flag: &str, path: &Path, what: &str) -> anyhow::Error {
    match e {
        pem::Error::NoItemsFound => {
            anyhow!("`{flag}` `{}` holds no PEM {what}", path.display())
        }
        other => anyhow!("cannot read `{flag}` `{}`: {other}", path.display()),
    }
}

/// Accepts TCP connections and hands `axum::serve` the ones whose TLS handshake succeeded.
/// It owns the listening socket, so dropping it (as `axum::serve` does when graceful shutdown
/// begins) stops accepting at once.
pub struct TlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
    /// One permit per handshake in progress.
    handshakes: Arc<Semaphore>,
    /// Handshake tasks send finished connections here; `accept` hands them on.
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// A listener with the default [`HandshakeLimits`].
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener::with_limits(listener, config, HandshakeLimits::default())
    }

    /// A listener that runs at most `limits.max_concurrent` handshakes at once, each within
    /// `limits.timeout`.
    pub fn with_limits(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        limits: HandshakeLimits,
    ) -> TlsListener {
        let (tx, handshaken) = mpsc::channel(ACCEPT_BACKLOG);
        TlsListener {
            listener,
            acceptor: TlsAcceptor::from(config),
            timeout: limits.timeout,
            handshakes: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            tx,
            handshaken,
        }
    }

    /// Runs one handshake in its own task, so a slow or silent client delays no one else; the
    /// permit is held until the handshake ends, so at most `max_concurrent` run at once.
    fn handshake(&self, tcp: TcpStream, peer: SocketAddr, permit: Option<OwnedSemaphorePermit>) {
        let (acceptor, tx, timeout) = (self.acceptor.clone(), self.tx.clone(), self.timeout);
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    // Fails only once the listener is gone (shutdown); the connection is dropped.
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Waits for a handshake slot, then for a connection. Cancel-safe: a permit taken before the
/// cancellation is simply returned, and `TcpListener::accept` is itself cancel-safe. The permit
/// is `None` only if the semaphore were closed, which nothing does.
async fn accept_with_permit(
    listener: &TcpListener,
    handshakes: Arc<Semaphore>,
) -> (
    io::Result<(TcpStream, SocketAddr)>,
    Option<OwnedSemaphorePermit>,
) {
    let permit = handshakes.acquire_owned().await.ok();
    (listener.accept().await, permit)
}

/// As `axum::serve` does for plain TCP: connection-level errors are the peer's problem; running
/// out of file descriptors is ours, and retrying at once would spin.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    /// Cancel-safe, as `axum::serve` needs: both branches are, and a new TCP connection is
    /// handed to its handshake task in the same poll that accepted it.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                // `self.tx` keeps the channel open, so `recv` never yields `None`.
                Some(conn) = self.handshaken.recv() => return conn,
                (accepted, permit) = accept_with_permit(&self.listener, self.handshakes.clone()) => {
                    match accepted {
                        Ok((tcp, peer)) => self.handshake(tcp, peer, permit),
                        Err(e) => accept_error(e).await,
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
