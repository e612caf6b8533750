//! The control plane's certificate authority: it signs relay client certificates (uplinks) and
//! the server certificates of control and, in development, of relays.
//!
//! Keys are ECDSA P-256. Leaf certificates carry the names they are valid for as SANs (DNS
//! names and IP addresses) and an extended key usage for their one role.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sat_proto::clock;

use crate::ControlError;

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server: the control plane's uplink listener, a relay's HTTPS listener.
    Server,
    /// A TLS client: a relay's uplinks.
    Client,
}

/// A PEM certificate and its PEM private key.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("key_pem", &"***")
            .finish()
    }
}

impl IssuedCert {
    /// Writes `<stem>.pem` and `<stem>-key.pem` into `dir`, the key readable by its owner only.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), ControlError> {
        write_file(&dir.join(format!("{stem}.pem")), &self.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{stem}-key.pem")), &self.key_pem, 0o600)
    }
}

pub struct Ca {
    /// The issuer as rcgen needs it for signing.
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The certificate exactly as relays and clients have it: its fingerprint is what
    /// enrolment tokens pin, so it must never be re-encoded.
    pem: String,
    der: Vec<u8>,
}

/// A relay certificate signed from its CSR.
#[derive(Debug, Clone)]
pub struct SignedCert {
    pub cert_pem: String,
    /// Lower-case hex, as the control plane records it and finds it again at each handshake.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("key", &"***").finish()
    }
}

impl Ca {
    /// A new self-signed CA, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, ControlError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
        let key = KeyPair::generate().map_err(pki)?;
        let cert = params.self_signed(&key).map_err(pki)?;
        Ok(Self {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            cert,
            key,
        })
    }

    /// The CA in `dir` (`ca.pem`, `ca-key.pem`), created on first use.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Self, ControlError> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if cert.exists() {
            return Self::load_files(&cert, &key);
        }
        let ca = Self::generate(common_name)?;
        ca.write(dir, "ca")?;
        tracing::info!(path = %cert.display(), "created the control plane's CA");
        Ok(ca)
    }

    /// A CA from the operator's PEM files.
    pub fn load_files(cert: &Path, key: &Path) -> Result<Self, ControlError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ControlError::Io {
                path: path.to_owned(),
                source,
            })
        };
        Self::load(&read(cert)?, &read(key)?)
    }

    /// Loads a CA from its PEM certificate and key (one the operator provides, or ours).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, ControlError> {
        let key = KeyPair::from_pem(key_pem).map_err(pki)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(pki)?;
        // Re-signing the same parameters with the same key yields an equivalent issuer.
        let cert = params.self_signed(&key).map_err(pki)?;
        let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| ControlError::Pki(format!("CA certificate PEM: {e}")))?
            .1
            .contents;
        Ok(Self {
            cert,
            key,
            pem: cert_pem.to_owned(),
            der,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.pem.clone()
    }

    pub fn cert_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.der.clone().into()
    }

    /// SHA-256 of the CA certificate: the pin enrolment tokens carry.
    pub fn fingerprint(&self) -> [u8; 32] {
        sat_transport::pin::fingerprint(&self.cert_der())
    }

    /// Signs a relay's CSR as a client certificate for `name`, valid for `lifetime`. Only the
    /// CSR's public key is used: the name, usage and lifetime are the control plane's to decide.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        name: &str,
        lifetime: Duration,
    ) -> Result<SignedCert, ControlError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| ControlError::Pki(format!("certificate signing request: {e}")))?;
        let params = leaf_params(&[name.to_owned()], Usage::Client, lifetime)?;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| sat_transport::pin::hex(&s.to_bytes()))
            .unwrap_or_default();
        let not_after = params.not_after.unix_timestamp();
        let request = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&self.cert, &self.key).map_err(pki)?;
        Ok(SignedCert {
            cert_pem: cert.pem(),
            serial,
            not_after,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Writes `<stem>.pem` and `<stem>-key.pem` into `dir`, the key readable by its owner only.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), ControlError> {
        IssuedCert {
            cert_pem: self.cert_pem(),
            key_pem: self.key_pem(),
        }
        .write(dir, stem)
    }

    /// Issues a leaf certificate for `names` (DNS names or IP addresses; the first is also the
    /// common name), valid for `lifetime`.
    pub fn issue(
        &self,
        names: &[String],
        usage: Usage,
        lifetime: Duration,
    ) -> Result<IssuedCert, ControlError> {
        let params = leaf_params(names, usage, lifetime)?;
        let key = KeyPair::generate().map_err(pki)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(pki)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn leaf_params(
    names: &[String],
    usage: Usage,
    lifetime: Duration,
) -> Result<CertificateParams, ControlError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(pki)?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    // A random serial: the control plane knows each relay certificate by it.
    let mut serial: [u8; 16] = rand::random();
    // Positive, and no leading zero byte that DER would strip: the certificate then carries
    // exactly these 16 bytes, the serial the store records.
    serial[0] = (serial[0] & 0x7f).max(1);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    set_validity(&mut params, lifetime);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::UNIX_EPOCH + clock::unix_now();
    // Back-date a little so that peers with a slightly slow clock accept a fresh certificate.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

fn pki(e: rcgen::Error) -> ControlError {
    ControlError::Pki(e.to_string())
}

pub(crate) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), ControlError> {
    sat_transport::files::write_atomic(path, contents.as_bytes(), mode).map_err(|source| {
        ControlError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certs_verify_against_the_ca_and_reload() {
        let ca = Ca::generate("test CA").unwrap();
        let leaf = ca
            .issue(
                &["relay-1".into(), "127.0.0.2".into()],
                Usage::Client,
                Duration::from_secs(3600),
            )
            .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = Ca::load(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let other = again
            .issue(&["x".into()], Usage::Server, Duration::from_secs(60))
            .unwrap();
        // Both leaves name the same issuer.
        let issuer = |pem: &str| {
            let der = rustls_pemfile_like(pem);
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            c.issuer().to_string()
        };
        assert_eq!(issuer(&leaf.cert_pem), issuer(&other.cert_pem));
    }

    #[test]
    fn signed_csrs_carry_the_serial_the_store_records() {
        let ca = Ca::generate("test CA").unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["asked-for".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        // One serial in 128 used to start with a zero byte, which DER drops.
        for _ in 0..512 {
            let signed = ca
                .sign_csr(&csr, "relay-1", Duration::from_secs(60))
                .unwrap();
            let der = rustls_pemfile_like(&signed.cert_pem);
            let (serial, not_after) =
                sat_transport::tls::serial_and_expiry(&der.clone().into()).unwrap();
            assert_eq!(serial, signed.serial);
            assert_eq!(not_after, signed.not_after);
            // The control plane's name wins over the one in the CSR.
            assert_eq!(
                sat_transport::tls::leaf_name(&der.into()).as_deref(),
                Some("relay-1")
            );
        }
    }

    fn rustls_pemfile_like(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }
}
