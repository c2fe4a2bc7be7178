//! HTTPS for `sightline serve` (`--tls-cert`/`--tls-key`), with rustls and the ring provider.
//!
//! This module reads the certificate and key and says how handshakes are limited; the handshakes
//! themselves run in `http/server.rs`, in each connection's own task, so HTTPS shares the plain
//! HTTP accept loop, its connection cap, timeouts and graceful shutdown. At most
//! [`HandshakeLimits::max_concurrent`] handshakes run at once, each within
//! [`HandshakeLimits::timeout`]: a client that connects and says nothing holds up no one else,
//! and beyond the cap the oldest handshake in progress is dropped, so a flood of silent clients
//! cannot keep a real one waiting. Certificates are read once at start; rotating them means a
//! restart. Routing, auth and limits are left to `http/mod.rs`; the flags to `cli/serve.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// How many TLS handshakes may run at once, and how long each may take.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Handshakes in progress at once; a new one beyond this drops the oldest in progress.
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
