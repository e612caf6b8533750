//! `sat relays`: which relays there are, and how far each is from here.
//!
//! The relay map comes from any relay (`GET /api/relays`). Each healthy relay's latency check
//! (`/api/latency`) is then timed in parallel over one kept-alive connection: the connection's
//! own set-up (TCP and TLS handshakes) is not counted, only request-to-answer round trips, and
//! the fastest of a few is taken, as the least disturbed by scheduling. The relays are then
//! ranked by the estimated end-to-end path, client to relay plus relay to primary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sat_geo::rank::{self, Client, PeerRtts, Relay};
use sat_proto::control::names_port;
use sat_proto::control::{RelayInfo, RelayState};
use sat_routing::latency;
use sat_routing::map::geo_relay;
use sat_transport::tls;
use tokio_rustls::TlsConnector;

use crate::trust::is_certificate_error;
use crate::{ClientError, Trust};

/// Round trips timed per relay; the fastest counts.
const SAMPLES: usize = 4;
/// A relay that does not answer within this is left unmeasured.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One relay as `sat relays` shows it.
#[derive(Debug, Clone)]
pub struct Probed {
    pub info: RelayInfo,
    /// The measured client→relay round trip, if the probe worked.
    pub rtt: Option<Duration>,
    /// Why the probe failed, if it did.
    pub error: Option<String>,
    /// Client→relay plus relay→primary, where both are known.
    pub end_to_end: Option<Duration>,
    /// Best first; None for relays left out (down, draining, unmeasured).
    pub rank: Option<usize>,
}

/// Fetches the relay map from the first of `sources` (host:port of relays' HTTPS listeners)
/// that answers, and probes every relay that is up, in parallel. The result is in ranking
/// order, the chosen one first, then the relays left out.
pub async fn probe_relays(sources: &[String], trust: &Trust) -> Result<Vec<Probed>, ClientError> {
    let prober = Prober::new(trust)?;
    let infos = prober.relay_map(sources).await?;
    let results = prober.time_all(&infos).await;
    Ok(rank_probed(infos, results))
}

/// Reads relay maps and times relays, checking their certificates against one [`Trust`].
#[derive(Clone)]
pub struct Prober {
    tls: TlsConnector,
    /// What certificates are checked against, for the error when one fails.
    trust: String,
}

impl Prober {
    pub fn new(trust: &Trust) -> Result<Self, ClientError> {
        let config = tls::client_config(trust.roots()?, None, &[b"http/1.1"])?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            trust: trust.describe(),
        })
    }

    /// The relay map from the first of `sources` (relays' host:port) that gives one. Every
    /// relay serves the whole map, so any relay that is up will do.
    pub async fn relay_map(&self, sources: &[String]) -> Result<Vec<RelayInfo>, ClientError> {
        let mut errors = Vec::new();
        let mut untrusted = None;
        for relay in sources {
            match self.relay_map_from(relay).await {
                Ok(infos) => return Ok(infos),
                Err(e) => {
                    if untrusted.is_none() && is_certificate_error(&e) {
                        untrusted = Some(ClientError::Untrusted {
                            relay: relay.clone(),
                            reason: e.clone(),
                            trust: self.trust.clone(),
                        });
                    }
                    errors.push(format!("relay map from {relay}: {e}"));
                }
            }
        }
        // A certificate that does not verify is the user's to fix, and the likely reason for
        // the rest; say that rather than a list of failures.
        if let Some(untrusted) = untrusted {
            return Err(untrusted);
        }
        Err(ClientError::Probe(if errors.is_empty() {
            "no relay to ask for the relay map: pass --relay host:port (any relay) or set SAT_RELAY"
                .to_owned()
        } else {
            errors.join("; ")
        }))
    }

    async fn relay_map_from(&self, relay: &str) -> Result<Vec<RelayInfo>, String> {
        let body = latency::get(&self.tls, relay, "/api/relays", PROBE_TIMEOUT * 2).await?;
        let map: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        serde_json::from_value(map["relays"].clone()).map_err(|e| e.to_string())
    }

    /// POSTs a JSON `body` to `url` (on a relay, so trusted with the same CA).
    pub async fn post(&self, url: &str, body: &[u8]) -> Result<(), String> {
        latency::post_json(&self.tls, url, body, PROBE_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// Times every relay that is up, in parallel: the fastest of a few round trips each, or
    /// why there is no figure.
    pub async fn time_all(&self, infos: &[RelayInfo]) -> Vec<Result<Duration, String>> {
        let probes = infos.iter().map(|info| async move {
            match (&info.latency_url, info.state) {
                (Some(url), RelayState::Up) => {
                    latency::time(&self.tls, url, SAMPLES, PROBE_TIMEOUT).await
                }
                (None, _) => Err("announces no latency check".into()),
                _ => Err("not up".into()),
            }
        });
        futures_util::future::join_all(probes).await
    }
}

/// Where a client dials a relay: the host:port of its HTTPS listener (which serves QUIC on the
/// same port), from its latency-check URL, or else its first public address with a port.
pub fn dial_address(info: &RelayInfo) -> Option<String> {
    let from_url = info
        .latency_url
        .as_deref()
        .and_then(|url| url.strip_prefix("https://"))
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned());
    from_url.or_else(|| info.addresses.iter().find(|a| names_port(a)).cloned())
}

/// The relays that were measured, as the ranking takes them, and the client that measured
/// them.
pub(crate) fn measured(
    infos: &[RelayInfo],
    results: &[Result<Duration, String>],
) -> (Client, Vec<Relay>) {
    let measured: BTreeMap<String, Duration> = infos
        .iter()
        .zip(results)
        .filter_map(|(i, r)| r.as_ref().ok().map(|d| (i.name.clone(), *d)))
        .collect();
    let relays: Vec<Relay> = infos
        .iter()
        .filter(|i| measured.contains_key(&i.name))
        .map(geo_relay)
        .collect();
    let client = Client {
        location: None,
        measured,
    };
    (client, relays)
}

/// Ranks relays by their measured round trips; those not measured come after, unranked.
fn rank_probed(infos: Vec<RelayInfo>, results: Vec<Result<Duration, String>>) -> Vec<Probed> {
    let (client, relays) = measured(&infos, &results);
    let measured = &client.measured;
    let mut out: Vec<Probed> = Vec::with_capacity(infos.len());
    // Every relay ranked here is measured: round trips between relays, which place relays a
    // client has not measured, add nothing.
    let ranked = rank::rank(&client, &relays, &PeerRtts::default());
    for (i, r) in ranked.iter().enumerate() {
        let Some(info) = infos.iter().find(|info| info.name == r.relay.name) else {
            continue;
        };
        out.push(Probed {
            rtt: measured.get(&r.relay.name).copied(),
            error: None,
            end_to_end: r.end_to_end(),
            rank: Some(i),
            info: info.clone(),
        });
    }
    for (info, result) in infos.into_iter().zip(results) {
        if out.iter().any(|p| p.info.name == info.name) {
            continue;
        }
        out.push(Probed {
            rtt: result.as_ref().ok().copied(),
            error: result.err(),
            end_to_end: None,
            rank: None,
            info,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, primary_ms: u64) -> RelayInfo {
        RelayInfo {
            name: name.into(),
            region: format!("region-{name}"),
            state: RelayState::Up,
            addresses: vec![],
            location: None,
            rtt_us: primary_ms * 1000,
            load: 0.0,
            latency_url: None,
        }
    }

    #[test]
    fn the_shortest_whole_path_wins_and_failures_come_last() {
        let infos = vec![info("near", 80), info("far", 5), info("dead", 1)];
        let results = vec![
            Ok(Duration::from_millis(5)),
            Ok(Duration::from_millis(30)),
            Err("connect refused".into()),
        ];
        let out = rank_probed(infos, results);
        let names: Vec<&str> = out.iter().map(|p| p.info.name.as_str()).collect();
        // near: 5 + 80 = 85 ms; far: 30 + 5 = 35 ms.
        assert_eq!(names, ["far", "near", "dead"]);
        assert_eq!(out[0].rank, Some(0));
        assert_eq!(out[0].end_to_end, Some(Duration::from_millis(35)));
        assert_eq!(out[2].rank, None);
        assert_eq!(out[2].error.as_deref(), Some("connect refused"));
    }
}
