//! What every task of a control plane process shares. A leaf: it imports none of the tasks
//! and handlers that use it (uplinks, streams, the control channel, enrolment, the admin API,
//! the publisher), so imports run one way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sat_geo::geoip::GeoIp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BackendSection, ControlSection};
use crate::metrics::Metrics;
use crate::pki::Ca;
use crate::pool::Pool;
use crate::registry::Registry;
use crate::secrets::{Signer, StatusToken};
use crate::snapshot::{PublishRequest, Snapshot};
use crate::store::Store;

/// What every task of this process shares.
pub(crate) struct Shared {
    pub store: Store,
    pub ca: Ca,
    pub signer: Signer,
    pub registry: Registry,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Asks the publisher to publish what the store holds; see [`Shared::publish`].
    pub publish_requests: mpsc::UnboundedSender<PublishRequest>,
    pub control: ControlSection,
    pub backend: BackendSection,
    pub http: Pool,
    /// Cancelled when the process starts draining: new streams are refused from then on.
    pub draining: CancellationToken,
    /// Every data stream in flight, so that a drain can wait for them.
    pub streams: TaskTracker,
    /// The GeoIP database of `[dns]`, if configured: the status page places clients with it.
    pub geoip: Option<Arc<GeoIp>>,
    /// The read-only token for the status page.
    pub status_token: StatusToken,
    /// Where this replica listens, as bound.
    pub listening: Listening,
    /// What `/metrics` shows.
    pub metrics: Metrics,
}

/// The addresses a replica's sockets are bound to (ports chosen by the system included), for
/// the status page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listening {
    pub uplink: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// How long a change waits for the publisher before its caller carries on regardless.
const PUBLISH_WAIT: Duration = Duration::from_secs(2);

impl Shared {
    /// Publishes what the store holds now, and returns once relays have been sent a config
    /// that includes it: an operator who adds a service and then uses it finds it there.
    pub(crate) async fn publish(&self) {
        let (tx, rx) = oneshot::channel();
        if self.publish_requests.send(tx).is_ok() {
            let _ = tokio::time::timeout(PUBLISH_WAIT, rx).await;
        }
    }
}
