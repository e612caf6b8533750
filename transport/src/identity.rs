//! What a process presents and trusts, from PEM: its identity (a certificate chain and its
//! key) and CA certificates; and the one crypto provider every config is built with. A leaf:
//! `tls` builds configs from these and `pin` replaces identities at run time.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::TransportError;

/// A certificate chain and its private key, as loaded from PEM files.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .field("key", &"***")
            .finish()
    }
}

impl Identity {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let chain = load_certs(cert)?;
        let pem = read(key)?;
        let key = rustls_pemfile::private_key(&mut pem.as_slice())
            .ok()
            .flatten()
            .ok_or_else(|| TransportError::NoPem {
                path: key.to_owned(),
                what: "PRIVATE KEY",
            })?;
        Ok(Self { chain, key })
    }
}

impl Identity {
    /// An identity from PEM text: a certificate chain and its private key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TransportError> {
        let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .ok()
            .flatten();
        match (chain.is_empty(), key) {
            (false, Some(key)) => Ok(Self { chain, key }),
            _ => Err(TransportError::BadPem),
        }
    }
}

/// Certificates from PEM text.
pub fn certs_from_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read {
        path: path.to_owned(),
        source,
    })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TransportError::NoPem {
            path: path.to_owned(),
            what: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Loads a CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
