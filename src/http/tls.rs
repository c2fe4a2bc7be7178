//! HTTPS for `sightline serve` (`--tls-cert`/`--tls-key`), with rustls and the ring provider.
//!
//! [`TlsListener`] is an `axum::serve::Listener`, so HTTPS is served by the same `axum::serve`
//! loop as plain HTTP and keeps its graceful shutdown unchanged: on SIGTERM/SIGINT the listener
//! is dropped (no new connections), in-flight requests finish, idle keep-alive connections close.
//! Handshakes run in their own tasks with a deadline, so a client that connects and says nothing
//! holds up no one else. Certificates are read once at start; rotating them means a restart.
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
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPT_BACKLOG: usize = 64;

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
    /// Handshake tasks send finished connections here; `accept` hands them on.
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        let (tx, handshaken) = mpsc::channel(ACCEPT_BACKLOG);
        TlsListener {
            listener,
            acceptor: TlsAcceptor::from(config),
            tx,
            handshaken,
        }
    }

    /// Runs one handshake in its own task, so a slow or silent client delays no one else.
    fn handshake(&self, tcp: TcpStream, peer: SocketAddr) {
        let (acceptor, tx) = (self.acceptor.clone(), self.tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.handshake(tcp, peer),
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
