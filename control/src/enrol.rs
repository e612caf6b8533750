//! Enrolment and renewal: QUIC connections with ALPN `sat-enrol/1`, one stream each.
//!
//! A new relay has no certificate yet. It connects without one, pinning our CA by the
//! fingerprint in its token, and sends `Enrol` with the token and a CSR; the token is redeemed
//! once and the relay gets a short-lived client certificate. Before that certificate expires
//! the relay connects again, this time presenting it, and sends `Renew` with a fresh CSR.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use sat_proto::control::{Enrol, Enrolled, Frame, FrameDecoder, Refused, Renew, Renewed};
use sat_proto::stream::validate_service_name;
use sat_transport::header::next_frame;
use tracing::{info, warn};

use crate::publish::now_ms;
use crate::secrets::sha256_hex;
use crate::server::{self, Shared};
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
        Ok(Ok(other)) => Err(format!("expected Enrol or Renew, got {other:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no request within {REQUEST_TIMEOUT:?}")),
    };
    let frame = answer.unwrap_or_else(|reason| {
        warn!(peer = %conn.remote_address(), "refused: {reason}");
        Frame::Refused(Refused { reason })
    });
    if send.write_all(&frame.to_bytes()).await.is_ok() {
        let _ = send.finish();
        // The relay closes once it has the answer; do not cut the answer short.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.closed()).await;
    }
}

async fn enrol(req: Enrol, shared: &Shared) -> Result<Frame, String> {
    let store = &shared.store;
    let unavailable = |e| format!("the control plane cannot reach its store ({e}); retry");
    let token = store
        .relay_token(&req.token_id)
        .await
        .map_err(unavailable)?
        .ok_or("the enrolment token is not known to this control plane; check that it was created here with `sat admin relay-token create`")?;
    let name = token.name.clone().or(req.name.clone()).ok_or(
        "neither the token nor the relay names the relay; set [relay] name in relay.toml, or create the token with --name",
    )?;
    validate_service_name(&name).map_err(|e| format!("relay name \"{name}\": {e}"))?;
    if let Some(existing) = store.relay(&name).await.map_err(unavailable)? {
        if token.name.is_none() && existing.state != RelayAdminState::Revoked {
            return Err(format!(
                "a relay named \"{name}\" is already enrolled; to replace it create a token with \
                 `--name {name}`, or give this relay another name"
            ));
        }
    }
    let now = now_ms();
    let hash = sha256_hex(&req.secret);
    match store
        .redeem_relay_token(&req.token_id, &hash, &name, now)
        .await
        .map_err(unavailable)?
    {
        Ok(_) => {}
        Err(refusal) => return Err(refusal_text(&refusal)),
    }
    let signed = shared
        .ca
        .sign_csr(&req.csr_pem, &name, shared.control.relay_cert_lifetime)
        .map_err(|e| e.to_string())?;
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

async fn renew(req: Renew, conn: &Connection, shared: &Shared) -> Result<Frame, String> {
    let name = server::authorize(conn, shared)
        .await
        .map_err(|r| r.reason)?;
    let signed = shared
        .ca
        .sign_csr(&req.csr_pem, &name, shared.control.relay_cert_lifetime)
        .map_err(|e| e.to_string())?;
    shared
        .store
        .insert_relay_cert(&signed.serial, &name, now_ms(), signed.not_after * 1000)
        .await
        .map_err(|e| format!("the control plane cannot reach its store ({e}); retry"))?;
    info!(relay = %name, serial = %signed.serial, "renewed a relay certificate");
    Ok(Frame::Renewed(Renewed {
        cert_chain_pem: signed.cert_pem,
        not_after: signed.not_after.max(0) as u64,
    }))
}
