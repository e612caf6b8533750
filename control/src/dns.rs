//! Geo DNS served by the control plane, from the relay map it publishes.

use std::sync::Arc;

use sat_geo::dns::{self, DnsConfig, DnsSockets};
use sat_geo::geoip::GeoIp;
use sat_routing::map::dns_table;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::snapshot::Snapshot;

/// Geo DNS from this control plane's own snapshots, the relay map it pushes: a relay it marks
/// down or draining leaves the answers with the snapshot that says so, as it leaves the relays'
/// answers with the push.
pub(crate) async fn serve(
    config: DnsConfig,
    sockets: DnsSockets,
    geoip: Arc<GeoIp>,
    metrics: dns::DnsMetrics,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
) {
    // The push's generation becomes the zone's SOA serial, the same as the relays'.
    let to_table = |s: &Arc<Snapshot>| {
        Some(dns_table(&s.push.relays, &s.push.routing).with_generation(s.push.generation))
    };
    if let Err(e) =
        dns::serve_from(config, sockets, geoip, metrics, snapshots, to_table, stop).await
    {
        error!("{e}");
    }
}
