//! Who the relay at the other end of an uplink or a renewal is, if it may come in.

use quinn::Connection;
use sat_proto::close;
use sat_transport::tls;

use crate::state::Shared;
use crate::store::RelayAdminState;

/// Why a peer was turned away, and whether it may try again as it is.
pub(crate) struct Refusal {
    pub code: u32,
    pub reason: String,
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        String::from(reason).into()
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self {
            code: close::REFUSED,
            reason,
        }
    }
}

/// Who the peer of an uplink is, if we let it in: a certificate this control plane issued,
/// to a relay that is not revoked.
pub(crate) async fn authorize(conn: &Connection, shared: &Shared) -> Result<String, Refusal> {
    let leaf = tls::peer_leaf(conn).ok_or(
        "no client certificate: an uplink needs the certificate the relay got at enrolment",
    )?;
    let name = tls::leaf_name(&leaf).ok_or("client certificate names no relay")?;
    let (serial, _) = tls::serial_and_expiry(&leaf).ok_or("unreadable client certificate")?;
    let unavailable = |e| Refusal {
        code: close::TRY_AGAIN,
        reason: format!("control plane cannot check relay identity now ({e}); retry"),
    };
    // The relay's state first: a revoked relay hears that it is revoked, not merely that its
    // certificate (forgotten at the revocation) is unknown.
    match shared.store.relay(&name).await.map_err(unavailable)? {
        Some(r) if r.state == RelayAdminState::Revoked => {
            return Err(format!(
                "relay \"{name}\" has been revoked by an operator; to bring it back, enrol it \
                 again with a new token"
            )
            .into())
        }
        // Not registered: its certificate cannot be ours either, which the check below says.
        Some(_) | None => {}
    }
    let owner = shared
        .store
        .cert_owner(&serial)
        .await
        .map_err(unavailable)?;
    if owner.as_deref() != Some(name.as_str()) {
        return Err(format!(
            "certificate {serial} for \"{name}\" is unknown to this control plane (replaced by \
             a newer enrolment, or never issued here); enrol the relay again with a new token \
             (`sat admin relay-token create`)"
        )
        .into());
    }
    Ok(name)
}
