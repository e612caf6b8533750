//! The control plane's own uplink certificate, issued by its CA at every start and renewed
//! every day, when the records of expired relay certificates are also pruned.

use std::sync::Arc;
use std::time::Duration;

use sat_proto::clock;
use sat_transport::identity::Identity;
use sat_transport::pin::CertSlot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pki::{Ca, Usage};
use crate::state::Shared;
use crate::ControlError;

/// How long the uplink certificate lasts: it is reissued long before, at every start and
/// every day.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const SERVER_CERT_RENEW_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The control plane's uplink certificate for `names`, issued by its own CA.
pub(crate) fn server_identity(ca: &Ca, names: &[String]) -> Result<Identity, ControlError> {
    let issued = ca.issue(names, Usage::Server, SERVER_CERT_LIFETIME)?;
    // The CA goes in the chain so that a relay enrolling with a pinned fingerprint finds it.
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    Ok(Identity::from_pem(&chain, &issued.key_pem)?)
}

/// Every day until `stop`: a fresh uplink certificate into `certs`, and the store's records of
/// relay certificates that expired forgotten.
pub(crate) async fn renew_server_cert(
    shared: Arc<Shared>,
    certs: Arc<CertSlot>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SERVER_CERT_RENEW_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let renewed = server_identity(&shared.ca, &shared.control.server_names)
            .and_then(|id| Ok(certs.replace(&id)?));
        match renewed {
            Ok(()) => info!("renewed the control plane's uplink certificate"),
            Err(e) => warn!("cannot renew the control plane's uplink certificate: {e}"),
        }
        // Records of relay certificates that expired a day ago or more serve no purpose.
        let day = SERVER_CERT_RENEW_EVERY.as_millis() as i64;
        match shared
            .store
            .prune_relay_certs(clock::unix_millis() - day)
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "forgot expired relay certificates"),
            Err(e) => warn!("cannot prune expired relay certificates: {e}"),
        }
    }
}
