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

use rustls::pki_types::ServerName;
use sat_geo::rank::{self, Client, PeerRtts, Relay, State};
use sat_geo::Location;
use sat_proto::control::{RelayInfo, RelayState};
use sat_transport::tls;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::ClientError;

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

/// Fetches the relay map from `relay` (host:port of its HTTPS listener) and probes every
/// relay that is up, in parallel. The result is in ranking order, the chosen one first, then
/// the relays left out.
pub async fn probe_relays(relay: &str, ca: &std::path::Path) -> Result<Vec<Probed>, ClientError> {
    let roots = tls::load_roots(ca)?;
    let config = tls::client_config(roots, None, &[b"http/1.1"])?;
    let tls = TlsConnector::from(Arc::new(config));
    let body = fetch(&tls, "https", relay, "/api/relays")
        .await
        .map_err(|e| ClientError::Probe(format!("relay map from {relay}: {e}")))?;
    let map: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| ClientError::Probe(format!("relay map from {relay}: {e}")))?;
    let infos: Vec<RelayInfo> = serde_json::from_value(map["relays"].clone())
        .map_err(|e| ClientError::Probe(format!("relay map from {relay}: {e}")))?;

    let probes = infos.iter().map(|info| {
        let tls = tls.clone();
        async move {
            match (&info.latency_url, info.state) {
                (Some(url), RelayState::Up) => time(&tls, url).await.map_err(|e| e.to_string()),
                (None, _) => Err("announces no latency check".into()),
                _ => Err("not up".into()),
            }
        }
    });
    let results = futures_util::future::join_all(probes).await;
    Ok(rank_probed(infos, results))
}

/// Ranks relays by their measured round trips; those not measured come after, unranked.
fn rank_probed(infos: Vec<RelayInfo>, results: Vec<Result<Duration, String>>) -> Vec<Probed> {
    let measured: BTreeMap<String, Duration> = infos
        .iter()
        .zip(&results)
        .filter_map(|(i, r)| r.as_ref().ok().map(|d| (i.name.clone(), *d)))
        .collect();
    let relays: Vec<Relay> = infos
        .iter()
        .filter(|i| measured.contains_key(&i.name))
        .map(geo_relay)
        .collect();
    let client = Client {
        location: None,
        measured: measured.clone(),
    };
    let mut out: Vec<Probed> = Vec::with_capacity(infos.len());
    // The relay map carries no round trips between relays yet; every relay ranked here is
    // measured anyway.
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

/// A relay of the map as the ranking takes it.
fn geo_relay(info: &RelayInfo) -> Relay {
    Relay {
        name: info.name.clone(),
        region: info.region.clone(),
        state: match info.state {
            RelayState::Up => State::Up,
            RelayState::Draining => State::Draining,
            RelayState::Down => State::Down,
        },
        location: info.location.map(|l| Location {
            lat: l.lat,
            lon: l.lon,
        }),
        // 0 is the map's "not measured yet".
        primary_rtt: (info.rtt_us > 0).then(|| Duration::from_micros(info.rtt_us)),
        load: info.load,
    }
}

/// The fastest of [`SAMPLES`] round trips to `url` on one connection.
async fn time(tls: &TlsConnector, url: &str) -> Result<Duration, String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let work = async {
        let mut conn = connect(tls, scheme, authority).await?;
        let mut best = Duration::MAX;
        for _ in 0..SAMPLES {
            let sent = Instant::now();
            request(&mut conn, authority, path).await?;
            best = best.min(sent.elapsed());
        }
        Ok(best)
    };
    tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

async fn connect(
    tls: &TlsConnector,
    scheme: &str,
    authority: &str,
) -> Result<BufReader<Box<dyn Conn>>, String> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Conn> = match scheme {
        "https" => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
            Box::new(
                tls.connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            )
        }
        "http" => Box::new(tcp),
        other => return Err(format!("unknown scheme {other}")),
    };
    Ok(BufReader::new(stream))
}

/// One GET on a kept-alive connection; returns the body.
async fn request(
    conn: &mut BufReader<Box<dyn Conn>>,
    authority: &str,
    path: &str,
) -> Result<String, String> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: sat\r\n\r\n");
    conn.get_mut()
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut status = String::new();
    conn.read_line(&mut status)
        .await
        .map_err(|e| e.to_string())?;
    if !status.starts_with("HTTP/1.1 2") {
        return Err(format!("answered {}", status.trim()));
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
    }
    let mut body = vec![0u8; length.min(16 << 20)];
    conn.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    String::from_utf8(body).map_err(|e| e.to_string())
}

/// `GET scheme://authority/path` on a connection of its own.
async fn fetch(
    tls: &TlsConnector,
    scheme: &str,
    authority: &str,
    path: &str,
) -> Result<String, String> {
    let work = async {
        let mut conn = connect(tls, scheme, authority).await?;
        request(&mut conn, authority, path).await
    };
    tokio::time::timeout(PROBE_TIMEOUT * 2, work)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
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
