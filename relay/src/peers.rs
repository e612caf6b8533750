//! Round trips to the other relays, for routing: every [`PROBE_EVERY`] the relay times each
//! other relay that is up, the way clients do (`sat_routing::latency`: its latency check on
//! a kept-alive connection, the fastest of a few), and files the figures in its
//! measurements for the next heartbeats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sat_proto::control::RelayState;
use sat_routing::latency;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::relay::Relay;

/// How often a relay times the others.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
const PROBE_SAMPLES: usize = 4;
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Times the other relays every [`PROBE_EVERY`] until `stop`.
pub async fn run(relay: Arc<Relay>, stop: CancellationToken) {
    let tls = TlsConnector::from(Arc::new(latency::timing_only_client_config()));
    loop {
        let targets: Vec<(String, String)> = relay
            .routes()
            .map(|r| {
                r.relays()
                    .iter()
                    .filter(|i| i.name != relay.name && i.state == RelayState::Up)
                    .filter_map(|i| Some((i.name.clone(), i.latency_url.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let probes = targets.iter().map(|(name, url)| {
            let tls = &tls;
            async move {
                let rtt = latency::time(tls, url, PROBE_SAMPLES, PROBE_TIMEOUT).await;
                (name.clone(), rtt)
            }
        });
        let results = futures_util::future::join_all(probes).await;
        let mut fresh = BTreeMap::new();
        for (name, result) in results {
            match result {
                Ok(rtt) => {
                    fresh.insert(name, rtt);
                }
                Err(e) => debug!(peer = %name, "cannot time relay: {e}"),
            }
        }
        relay.measurements.set_peer_rtts(fresh);
        // Until the first relay map arrives there is nothing to time; look again soon.
        let wait = if targets.is_empty() {
            Duration::from_secs(1)
        } else {
            PROBE_EVERY
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}
