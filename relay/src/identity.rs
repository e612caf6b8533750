//! The relay's identity: enrolment with a one-time token, the files it keeps, and renewal.
//!
//! A relay starts with nothing but a token. The token pins the control plane's CA by its
//! fingerprint, so the first connection (ALPN `sat-enrol/1`) trusts exactly that CA. The relay
//! makes its own key, sends a CSR with the token, and keeps the signed certificate, its key
//! and the CA in its data dir. The certificate is short-lived; after two thirds of its life the
//! relay sends a new CSR over a connection authenticated with the current certificate, swaps
//! the new one in, and its uplinks reconnect with it one by one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use rcgen::{CertificateParams, KeyPair};
use rustls::RootCertStore;
use sat_proto::clock;
use sat_proto::control::{Enrol, Frame, FrameDecoder, Renew};
use sat_proto::enrol::{fingerprint_hex, EnrolToken};
use sat_transport::header::next_frame;
use sat_transport::identity::{self, Identity};
use sat_transport::pin::{self, CertSlot};
use sat_transport::tls::{self, QuicLimits};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::relay::Relay;
use crate::RelayError;

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What enrolment decided, kept in `<data_dir>/identity.json` beside the PEM files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolment {
    pub name: String,
    pub region: String,
    /// Unix seconds: when the current certificate arrived, and when it expires.
    pub issued_at: u64,
    pub not_after: u64,
    /// The id of the token this identity came from: a token with another id means the
    /// operator wants the relay enrolled again.
    #[serde(default)]
    pub token_id: String,
}

impl Enrolment {
    /// When to renew: after two thirds of the certificate's life.
    fn renew_at(&self) -> u64 {
        self.issued_at + (self.not_after.saturating_sub(self.issued_at)) * 2 / 3
    }
}

/// The files of one data dir.
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The stored enrolment, if there is one.
    pub fn load(&self) -> Result<Option<(Enrolment, Identity, RootCertStore)>, RelayError> {
        let meta = self.path("identity.json");
        if !meta.exists() {
            return Ok(None);
        }
        let text = read(&meta)?;
        let enrolment: Enrolment = serde_json::from_str(&text).map_err(|e| RelayError::Enrol {
            message: format!(
                "{} is damaged ({e}); move the data dir aside and enrol again",
                meta.display()
            ),
            retry: false,
        })?;
        let identity = Identity::load(&self.path("relay.pem"), &self.path("relay-key.pem"))?;
        let roots = identity::load_roots(&self.path("ca.pem"))?;
        Ok(Some((enrolment, identity, roots)))
    }

    /// Stores a new certificate (and on enrolment the CA), each file replaced atomically.
    fn store(
        &self,
        enrolment: &Enrolment,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: Option<&str>,
    ) -> Result<(), RelayError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| RelayError::Io {
            path: self.dir.clone(),
            source,
        })?;
        if let Some(ca) = ca_pem {
            write_atomic(&self.path("ca.pem"), ca, 0o644)?;
        }
        write_atomic(&self.path("relay-key.pem"), key_pem, 0o600)?;
        write_atomic(&self.path("relay.pem"), cert_pem, 0o644)?;
        let meta = serde_json::to_string_pretty(enrolment).unwrap_or_default();
        write_atomic(&self.path("identity.json"), &meta, 0o644)
    }
}

fn read(path: &Path) -> Result<String, RelayError> {
    std::fs::read_to_string(path).map_err(|source| RelayError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), RelayError> {
    sat_transport::files::write_atomic(path, text.as_bytes(), mode).map_err(|source| {
        RelayError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// A fresh key and a CSR for `name` (the control plane decides the final name and lifetime).
fn csr(name: &str) -> Result<(String, String), RelayError> {
    let fail = |e: rcgen::Error| RelayError::Enrol {
        message: format!("cannot make a key and CSR: {e}"),
        retry: false,
    };
    let key = KeyPair::generate().map_err(fail)?;
    let params = CertificateParams::new(vec![name.to_owned()]).map_err(fail)?;
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.pem().map_err(fail)?, key.serialize_pem()))
}

/// Redeems `token` with the first control plane in `control` that answers, and stores the
/// result in `files`.
pub async fn enrol(
    endpoint: &Endpoint,
    control: &[String],
    server_name: &str,
    token: &str,
    name: Option<&str>,
    files: &Files,
) -> Result<(Enrolment, Identity, RootCertStore), RelayError> {
    let token = EnrolToken::parse(token).map_err(|e| RelayError::Enrol {
        message: format!("the enrolment token is malformed: {e}; copy it again from `sat admin relay-token create`"),
        retry: false,
    })?;
    let (tls, failure) = pin::pinned_client_config(token.ca_fingerprint, &[sat_proto::ALPN_ENROL])?;
    let config = tls::quic_client_config(tls, QuicLimits::UPLINK)?;
    let (csr_pem, key_pem) = csr(name.unwrap_or("relay"))?;
    let request = Frame::Enrol(Enrol {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        csr_pem,
        name: name.map(str::to_owned),
        version: env!("CARGO_PKG_VERSION").into(),
    });
    info!(
        ca = %fingerprint_hex(&token.ca_fingerprint),
        "enrolling with the control plane (pinning its CA)"
    );
    let answer = exchange_any(endpoint, control, server_name, &config, &request)
        .await
        .map_err(|e| {
            let pinned = failure.lock().ok().and_then(|f| f.clone());
            RelayError::Enrol {
                message: pinned.unwrap_or(e),
                retry: false,
            }
        })?;
    let Frame::Enrolled(done) = answer else {
        return Err(refused("enrolment", answer));
    };
    let (_, not_after) = expiry_of(&done.cert_chain_pem)?;
    let enrolment = Enrolment {
        name: done.name.clone(),
        region: done.region.clone(),
        issued_at: clock::unix_seconds(),
        not_after,
        token_id: token.id.clone(),
    };
    files.store(
        &enrolment,
        &done.cert_chain_pem,
        &key_pem,
        Some(&done.ca_pem),
    )?;
    info!(
        relay = %done.name,
        region = %done.region,
        expires_in = ?Duration::from_secs(not_after.saturating_sub(clock::unix_seconds())),
        "enrolled"
    );
    let identity = Identity::from_pem(&done.cert_chain_pem, &key_pem)?;
    let mut roots = RootCertStore::empty();
    for c in identity::certs_from_pem(&done.ca_pem) {
        roots.add(c).map_err(sat_transport::TransportError::Tls)?;
    }
    Ok((enrolment, identity, roots))
}

fn expiry_of(chain_pem: &str) -> Result<(String, u64), RelayError> {
    identity::certs_from_pem(chain_pem)
        .first()
        .and_then(tls::serial_and_expiry)
        .map(|(serial, not_after)| (serial, not_after.max(0) as u64))
        .ok_or_else(|| RelayError::Enrol {
            message: "the control plane sent an unreadable certificate".into(),
            retry: true,
        })
}

fn refused(what: &str, answer: Frame) -> RelayError {
    match answer {
        Frame::Refused(r) => RelayError::Enrol {
            message: format!("the control plane refused {what}: {}", r.reason),
            retry: false,
        },
        other => RelayError::Enrol {
            message: format!("unexpected answer to {what}: {}", other.name()),
            retry: true,
        },
    }
}

/// Sends `request` to each control plane in turn until one answers.
async fn exchange_any(
    endpoint: &Endpoint,
    control: &[String],
    server_name: &str,
    config: &quinn::ClientConfig,
    request: &Frame,
) -> Result<Frame, String> {
    let mut last = String::from("no control plane address");
    for addr in control {
        match exchange(endpoint, addr, server_name, config, request).await {
            Ok(answer) => return Ok(answer),
            Err(e) => {
                warn!("control plane {addr}: {e}");
                last = format!("{addr}: {e}");
            }
        }
    }
    Err(last)
}

async fn exchange(
    endpoint: &Endpoint,
    addr: &str,
    server_name: &str,
    config: &quinn::ClientConfig,
    request: &Frame,
) -> Result<Frame, String> {
    let work = async {
        let target = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or("name has no address")?;
        let conn = endpoint
            .connect_with(config.clone(), target, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&request.to_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let mut decoder = FrameDecoder::new();
        let answer = next_frame(&mut recv, &mut decoder).await;
        conn.close(0u32.into(), b"done");
        match answer {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(conn
                .close_reason()
                .map_or_else(|| "closed without an answer".to_owned(), |r| r.to_string())),
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {EXCHANGE_TIMEOUT:?}")))
}

/// What the renewal task needs.
pub struct Renewal {
    pub endpoint: Endpoint,
    pub control: Vec<String>,
    pub server_name: String,
    pub roots: RootCertStore,
    pub certs: Arc<CertSlot>,
    pub files: Files,
    pub enrolment: Enrolment,
}

/// Renews the certificate after two thirds of its life, for as long as the relay runs.
pub async fn renew_forever(mut r: Renewal, relay: Arc<Relay>, stop: CancellationToken) {
    let mut retry = RETRY_MIN;
    loop {
        let wait =
            Duration::from_secs(r.enrolment.renew_at().saturating_sub(clock::unix_seconds()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        match renew_once(&r).await {
            Ok((enrolment, identity)) => {
                if let Err(e) = r.certs.replace(&identity) {
                    warn!(retry_in = ?RETRY_MAX, "cannot use the renewed certificate: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_MAX) => {}
                        () = stop.cancelled() => return,
                    }
                    continue;
                }
                r.enrolment = enrolment;
                relay.metrics.certificate(r.enrolment.not_after);
                retry = RETRY_MIN;
                relay.cert_epoch.send_modify(|e| *e += 1);
                info!(
                    expires_in = ?Duration::from_secs(r.enrolment.not_after.saturating_sub(clock::unix_seconds())),
                    "certificate renewed; uplinks reconnect with it one by one"
                );
            }
            Err(e) => {
                let left = r.enrolment.not_after.saturating_sub(clock::unix_seconds());
                warn!(retry_in = ?retry, expires_in = ?Duration::from_secs(left), "cannot renew the certificate: {e}");
                if left == 0 {
                    warn!("the certificate has expired: uplinks cannot reconnect until the relay enrols again with a new token");
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = stop.cancelled() => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn renew_once(r: &Renewal) -> Result<(Enrolment, Identity), RelayError> {
    let (csr_pem, key_pem) = csr(&r.enrolment.name)?;
    let tls = tls::client_config_with(r.roots.clone(), r.certs.clone(), &[sat_proto::ALPN_ENROL])?;
    let config = tls::quic_client_config(tls, QuicLimits::UPLINK)?;
    let request = Frame::Renew(Renew { csr_pem });
    let answer = exchange_any(&r.endpoint, &r.control, &r.server_name, &config, &request)
        .await
        .map_err(|message| RelayError::Enrol {
            message,
            retry: true,
        })?;
    let Frame::Renewed(done) = answer else {
        return Err(refused("renewal", answer));
    };
    let (_, not_after) = expiry_of(&done.cert_chain_pem)?;
    let enrolment = Enrolment {
        issued_at: clock::unix_seconds(),
        not_after,
        ..r.enrolment.clone()
    };
    r.files
        .store(&enrolment, &done.cert_chain_pem, &key_pem, None)?;
    Ok((
        enrolment,
        Identity::from_pem(&done.cert_chain_pem, &key_pem)?,
    ))
}
