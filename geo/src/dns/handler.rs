//! The geo DNS request handler's state, which both paths answer from: the UDP threads
//! (`udp.rs`, through `fast.rs` or `answer.rs`) and hickory-server's TCP listener (`tcp.rs`).
//! A leaf: the modules that answer import it, not the other way round.

use std::sync::Arc;

use tokio::sync::watch;

use super::config::{DnsConfig, Zone};
use super::metrics::DnsMetrics;
use super::table::DnsTable;
use crate::geoip::GeoIp;
use crate::GeoError;

/// The request handler: the zone, the relays, and the GeoIP database. [`serve`](super::serve)
/// runs it; it is public for callers that want to give hickory-server other sockets too.
/// Clones share everything, so that the UDP threads and the TCP tasks answer from the same
/// table.
#[derive(Clone)]
pub struct GeoDns {
    pub(super) zone: Arc<Zone>,
    pub(super) table: watch::Receiver<Arc<DnsTable>>,
    pub(super) geoip: Arc<GeoIp>,
    pub(super) metrics: DnsMetrics,
}

impl GeoDns {
    /// Checks `config` (see [`DnsConfig::validate`]).
    pub fn new(
        config: &DnsConfig,
        table: watch::Receiver<Arc<DnsTable>>,
        geoip: Arc<GeoIp>,
    ) -> Result<Self, GeoError> {
        Ok(Self {
            zone: Arc::new(Zone::from_config(config)?),
            table,
            geoip,
            metrics: DnsMetrics::unregistered(),
        })
    }

    /// Counts answers into `metrics` (by default into counters no page shows).
    pub fn with_metrics(mut self, metrics: DnsMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

impl std::fmt::Debug for GeoDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDns")
            .field("zone", &self.zone.origin)
            .field("geoip", &self.geoip)
            .finish_non_exhaustive()
    }
}
