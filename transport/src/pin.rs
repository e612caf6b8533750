//! Certificates that change while the process runs, and trust pinned by a CA fingerprint.
//!
//! - [`CertSlot`] holds the identity a process presents. Relay certificates are short-lived and
//!   renewed in place: new handshakes use the new certificate at once, and connections already
//!   up keep theirs, so no stream is dropped by a renewal.
//! - [`pinned_client_config`] is for a relay's first contact with the control plane, before it
//!   has the CA certificate: the enrolment token carries the CA's SHA-256 fingerprint, the
//!   control plane sends its CA certificate in its chain, and the handshake succeeds only if
//!   that CA matches the pin and signed the server's certificate.

use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::identity::{provider, Identity};
use crate::TransportError;

/// SHA-256 of a certificate's DER: the fingerprint an enrolment token pins.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// The identity this process presents, replaceable while it runs.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    pub fn new(identity: &Identity) -> Result<Self, TransportError> {
        Ok(Self {
            current: RwLock::new(certified(identity)?),
        })
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: &Identity) -> Result<(), TransportError> {
        let new = certified(identity)?;
        if let Ok(mut current) = self.current.write() {
            *current = new;
        }
        Ok(())
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn certified(identity: &Identity) -> Result<Arc<CertifiedKey>, TransportError> {
    let key = provider()
        .key_provider
        .load_private_key(identity.key.clone_key())?;
    Ok(Arc::new(CertifiedKey::new(identity.chain.clone(), key)))
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Why a pinned handshake failed, in words an operator can act on. rustls reduces a verifier's
/// error to a TLS alert on the wire, so the verifier keeps its own account here.
pub type PinFailure = Arc<Mutex<Option<String>>>;

/// A client config that trusts only the CA whose certificate has SHA-256 `pin`, which the
/// server must send in its chain. Returns the config and where a pin mismatch is explained.
pub fn pinned_client_config(
    pin: [u8; 32],
    alpn: &[&[u8]],
) -> Result<(rustls::ClientConfig, PinFailure), TransportError> {
    let failure = PinFailure::default();
    let verifier = Arc::new(PinnedCa {
        pin,
        provider: provider(),
        failure: failure.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((config, failure))
}

#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    failure: PinFailure,
}

impl PinnedCa {
    fn fail(&self, message: String) -> rustls::Error {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = Some(message.clone());
        }
        rustls::Error::General(message)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.pin) else {
            let sent: Vec<String> = intermediates.iter().map(|c| hex(&fingerprint(c))).collect();
            return Err(self.fail(format!(
                "the control plane's CA does not match the token: the token pins {}, the \
                 server sent [{}]. The token belongs to another control plane, or something \
                 is intercepting the connection",
                hex(&self.pin),
                sent.join(", ")
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(roots.into(), self.provider.clone())
                .build()
                .map_err(|e| self.fail(format!("pinned CA unusable: {e}")))?;
        webpki
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
            .map_err(|e| self.fail(format!("control plane certificate: {e}")))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config allows TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Lower-case hex, as fingerprints are shown to operators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
