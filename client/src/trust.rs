//! Which certificates a client trusts for relays. In production a relay's HTTPS and QUIC
//! certificate comes from a public CA, so the default is the operating system's root store, as
//! for a browser or curl; `--ca` names a private CA's bundle instead (such as `sat up`'s).

use std::path::PathBuf;
use std::sync::OnceLock;

use rustls::RootCertStore;
use tracing::debug;

use crate::ClientError;

/// What the client checks relays' certificates against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system's root store (rustls-native-certs): the CA bundle of `SSL_CERT_FILE` and the
    /// directories of `SSL_CERT_DIR` when either is set, else the platform's own store.
    #[default]
    System,
    /// A CA bundle in PEM, and nothing else.
    Ca(PathBuf),
}

impl Trust {
    /// The root certificates to verify relays with.
    pub fn roots(&self) -> Result<RootCertStore, ClientError> {
        match self {
            Self::Ca(path) => Ok(sat_transport::identity::load_roots(path)?),
            // Read once: a client dials several relays, and the store is a few hundred files.
            Self::System => {
                static SYSTEM: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
                SYSTEM
                    .get_or_init(system_roots)
                    .clone()
                    .map_err(|problems| ClientError::NoSystemRoots { problems })
            }
        }
    }

    /// What relays were checked against, for messages: "the system's root certificates" or
    /// "the CA in <path>".
    pub fn describe(&self) -> String {
        match self {
            Self::System => {
                let mut from: Vec<String> = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
                    .iter()
                    .filter_map(|var| Some(format!("{var}={}", std::env::var(var).ok()?)))
                    .collect();
                if from.is_empty() {
                    from.push("the platform's store".into());
                }
                format!("the system's root certificates ({})", from.join(", "))
            }
            Self::Ca(path) => format!("the CA in {}", path.display()),
        }
    }

    /// A short name for the network this trust stands for, for the cache file's name: the
    /// start of the CA's fingerprint, or `system`.
    pub(crate) fn cache_id(&self) -> String {
        let Self::Ca(path) = self else {
            return "system".into();
        };
        std::fs::read(path)
            .ok()
            .and_then(|pem| {
                let cert = sat_transport::identity::certs_from_pem(std::str::from_utf8(&pem).ok()?)
                    .into_iter()
                    .next()?;
                Some(sat_transport::pin::hex(
                    &sat_transport::pin::fingerprint(&cert)[..8],
                ))
            })
            .unwrap_or_else(|| "default".into())
    }
}

/// The system's root store, or what went wrong when it holds nothing usable.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    if added == 0 {
        return Err(if errors.is_empty() {
            "the store holds no certificate".into()
        } else {
            errors.join("; ")
        });
    }
    if ignored > 0 || !errors.is_empty() {
        debug!(
            added,
            ignored,
            "system root certificates: {}",
            errors.join("; ")
        );
    }
    Ok(roots)
}

/// Whether a handshake error (as quinn or tokio-rustls words it, both from rustls) says that
/// the relay's certificate did not verify, rather than that the relay could not be reached.
pub(crate) fn is_certificate_error(error: &str) -> bool {
    // rustls's Display for Error::InvalidCertificate.
    error.contains("invalid peer certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_that_is_not_there_names_the_file() {
        let err = Trust::Ca("/nonexistent/ca.pem".into()).roots().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert_eq!(Trust::System.cache_id(), "system");
        assert_eq!(
            Trust::Ca("/nonexistent/ca.pem".into()).cache_id(),
            "default"
        );
    }

    #[test]
    fn certificate_errors_are_told_from_unreachable_relays() {
        assert!(is_certificate_error(
            "the cryptographic handshake failed: error 48: invalid peer certificate: UnknownIssuer"
        ));
        assert!(is_certificate_error(
            "invalid peer certificate: NotValidForName"
        ));
        assert!(!is_certificate_error("Connection refused (os error 111)"));
        assert!(!is_certificate_error("timed out"));
    }
}
