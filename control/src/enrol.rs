//! Enrolment and renewal: QUIC connections with ALPN `sat-enrol/1`, one stream each.
//!
//! A new relay has no certificate yet. It connects without one, pinning our CA by the
//! fingerprint in its token, and sends `Enrol` with the token and a CSR; the token is redeemed
//! once and the relay gets a short-lived client certificate. Before that certificate expires
//! the relay connects again, this time presenting it, and sends `Renew` with a fresh CSR.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use sat_proto::clock;
use sat_proto::control::{Enrol, Enrolled, Frame, FrameDecoder, Refused, Renew, Renewed};
use sat_proto::stream::validate_service_name;
use sat_transport::header::next_frame;
use tracing::{info, warn};

use crate::authorize::authorize;
use crate::metrics::EnrolRefusal;
use crate::secrets::sha256_hex;
use crate::state::Shared;
use crate::store::{AuditRecord, RedeemRefusal, RelayAdminState, RelayRecord};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(conn: Connection, shared: Arc<Shared>) {
    let Ok(Ok((mut send, mut recv))) =
        tokio::time::timeout(REQUEST_TIMEOUT, conn.accept_bi()).await
    else {
        return conn.close(sat_proto::close::PROTOCOL_ERROR.into(), b"no request");
    };
    let mut decoder = FrameDecoder::new();
    let request = tokio::time::timeout(REQUEST_TIMEOUT, next_frame(&mut recv, &mut decoder)).await;
    let answer = match request {
        Ok(Ok(Some(Frame::Enrol(req)))) => enrol(req, &shared).await,
        Ok(Ok(Some(Frame::Renew(req)))) => renew(req, &conn, &shared).await,
        Ok(Ok(other)) => Err(bad_request(format!(
            "expected Enrol or Renew, got {other:?}"
        ))),
        Ok(Err(e)) => Err(bad_request(e)),
        Err(_) => Err(bad_request(format!(
            "no request within {REQUEST_TIMEOUT:?}"
        ))),
    };
    let frame = match answer {
        Ok(frame) => {
            shared.metrics.enrolled(matches!(frame, Frame::Renewed(_)));
            frame
        }
        Err((why, reason)) => {
            shared.metrics.enrol_refused(why);
            warn!(peer = %conn.remote_address(), "refused: {reason}");
            Frame::Refused(Refused { reason })
        }
    };
    if send.write_all(&frame.to_bytes()).await.is_ok() {
        let _ = send.finish();
        // The relay closes once it has the answer; do not cut the answer short.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.closed()).await;
    }
}

/// A refusal: why, for `/metrics`, and what the relay is told.
type Refusal = (EnrolRefusal, String);

fn bad_request(text: String) -> Refusal {
    (EnrolRefusal::BadRequest, text)
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    let text = format!("the control plane cannot reach its store ({e}); retry");
    (EnrolRefusal::StoreUnavailable, text)
}

fn bad_csr(e: impl std::fmt::Display) -> Refusal {
    (EnrolRefusal::BadCsr, e.to_string())
}

async fn enrol(req: Enrol, shared: &Shared) -> Result<Frame, Refusal> {
    let store = &shared.store;
    let token = store
        .relay_token(&req.token_id)
        .await
        .map_err(unavailable)?
        .ok_or((EnrolRefusal::UnknownToken, "the enrolment token is not known to this control plane; check that it was created here with `sat admin relay-token create`".to_owned()))?;
    let name = token.name.clone().or(req.name.clone()).ok_or((EnrolRefusal::BadName,
        "neither the token nor the relay names the relay; set [relay] name in relay.toml, or create the token with --name".to_owned(),
    ))?;
    validate_service_name(&name)
        .map_err(|e| (EnrolRefusal::BadName, format!("relay name \"{name}\": {e}")))?;
    if let Some(existing) = store.relay(&name).await.map_err(unavailable)? {
        if token.name.is_none() && existing.state != RelayAdminState::Revoked {
            return Err((
                EnrolRefusal::BadName,
                format!(
                "a relay named \"{name}\" is already enrolled; to replace it create a token with \
                 `--name {name}`, or give this relay another name"
            ),
            ));
        }
    }
    let now = clock::unix_millis();
    let hash = sha256_hex(&req.secret);
    match store
        .redeem_relay_token(&req.token_id, &hash, &name, now)
        .await
        .map_err(unavailable)?
    {
        Ok(_) => {}
        Err(refusal) => return Err((refusal_reason(&refusal), refusal_text(&refusal))),
    }
    let signed = shared
        .ca
        .sign_csr(&req.csr_pem, &name, shared.control.relay_cert_lifetime)
        .map_err(bad_csr)?;
    let record = RelayRecord {
        name: name.clone(),
        region: token.region.clone(),
        state: RelayAdminState::Active,
        version: req.version.clone(),
        addresses: Vec::new(),
        location: None,
        enrolled_at: now,
        last_seen_at: None,
        state_changed_at: now,
    };
    store.put_relay(&record).await.map_err(unavailable)?;
    // A relay replaced under the same name: its old certificates (perhaps stolen, if it was
    // revoked) must not open uplinks any more.
    store.forget_relay_certs(&name).await.map_err(unavailable)?;
    store
        .insert_relay_cert(&signed.serial, &name, now, signed.not_after * 1000)
        .await
        .map_err(unavailable)?;
    let audit = AuditRecord {
        id: crate::secrets::random_hex(8),
        at: now,
        actor: format!("relay-token {}", token.id),
        action: "relay.enrol".into(),
        target: name.clone(),
        detail: serde_json::json!({ "region": token.region, "version": req.version }).to_string(),
    };
    if let Err(e) = store.append_audit(&audit).await {
        warn!("cannot write the audit log: {e}");
    }
    shared.publish().await;
    info!(relay = %name, region = %token.region, serial = %signed.serial, "relay enrolled");
    Ok(Frame::Enrolled(Enrolled {
        name,
        region: token.region,
        cert_chain_pem: signed.cert_pem,
        ca_pem: shared.ca.cert_pem(),
        not_after: signed.not_after.max(0) as u64,
    }))
}

fn refusal_reason(refusal: &RedeemRefusal) -> EnrolRefusal {
    match refusal {
        RedeemRefusal::Unknown => EnrolRefusal::UnknownToken,
        RedeemRefusal::WrongSecret => EnrolRefusal::WrongSecret,
        RedeemRefusal::Used { .. } => EnrolRefusal::UsedToken,
        RedeemRefusal::Expired { .. } => EnrolRefusal::ExpiredToken,
    }
}

fn refusal_text(refusal: &RedeemRefusal) -> String {
    let again = "create a new one with `sat admin relay-token create`";
    match refusal {
        RedeemRefusal::Unknown => format!("the enrolment token is not known; {again}"),
        RedeemRefusal::WrongSecret => {
            format!("the enrolment token's secret does not match (mistyped or forged); {again}")
        }
        RedeemRefusal::Used { at, by } => format!(
            "the enrolment token was already used (by relay \"{by}\", {}); tokens work once; {again}",
            crate::admin::table::timestamp(*at)
        ),
        RedeemRefusal::Expired { at } => format!(
            "the enrolment token expired at {}; {again}",
            crate::admin::table::timestamp(*at)
        ),
    }
}

async fn renew(req: Renew, conn: &Connection, shared: &Shared) -> Result<Frame, Refusal> {
    let name = authorize(conn, shared)
        .await
        .map_err(|r| (EnrolRefusal::NotAuthorized, r.reason))?;
    let signed = shared
        .ca
        .sign_csr(&req.csr_pem, &name, shared.control.relay_cert_lifetime)
        .map_err(bad_csr)?;
    shared
        .store
        .insert_relay_cert(
            &signed.serial,
            &name,
            clock::unix_millis(),
            signed.not_after * 1000,
        )
        .await
        .map_err(unavailable)?;
    info!(relay = %name, serial = %signed.serial, "renewed a relay certificate");
    Ok(Frame::Renewed(Renewed {
        cert_chain_pem: signed.cert_pem,
        not_after: signed.not_after.max(0) as u64,
    }))
}
