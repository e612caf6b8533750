//! What a relay measures for routing, and what clients tell it, until the next heartbeat
//! carries it to the control plane.
//!
//! - Round trips to the other relays: `peers` times them every 10 s and files the figures
//!   here. Each heartbeat carries the latest.
//! - Clients' round trips: `POST /api/rtt-report` with `{"rtts": {"relay-name": microseconds}}`,
//!   which `sat connect` and `sat forward` send to their chosen relay after probing. The relay
//!   files each report under the client's network (its address's /24, or /48 for IPv6), never
//!   the address itself, and sends what piled up with the next heartbeat.
//!
//! Reports are checked, not trusted: names must be relays of the map, figures between 1 µs and
//! [`MAX_RTT`], and a relay holds at most [`MAX_NETWORKS`] networks between heartbeats. A
//! client can only skew the figures of its own network.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use sat_proto::control::{NetworkRtts, PeerRtt};

pub const REPORT_PATH: &str = "/api/rtt-report";
/// The longest round trip a report may claim.
pub const MAX_RTT: Duration = Duration::from_secs(10);
/// Networks held between two heartbeats; reports from more are dropped.
pub const MAX_NETWORKS: usize = 4096;
/// The largest report body read.
pub const MAX_REPORT_BYTES: usize = 8 << 10;

#[derive(Default)]
pub struct Measurements {
    /// The latest round trip to each other relay.
    peers: Mutex<BTreeMap<String, Duration>>,
    /// Clients' reports since the last heartbeat: network → relay → round trip (the latest).
    reports: Mutex<HashMap<String, BTreeMap<String, u64>>>,
}

impl Measurements {
    /// Replaces the round trips to other relays with the latest round of timing.
    pub fn set_peer_rtts(&self, fresh: BTreeMap<String, Duration>) {
        if let Ok(mut peers) = self.peers.lock() {
            *peers = fresh;
        }
    }

    pub fn peer_rtts(&self) -> Vec<PeerRtt> {
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        peers
            .iter()
            .map(|(relay, rtt)| PeerRtt {
                relay: relay.clone(),
                rtt_us: rtt.as_micros() as u64,
            })
            .collect()
    }

    /// The reports gathered since the last call.
    pub fn take_client_rtts(&self) -> Vec<NetworkRtts> {
        let Ok(mut reports) = self.reports.lock() else {
            return Vec::new();
        };
        reports
            .drain()
            .map(|(network, rtts)| NetworkRtts {
                network,
                rtts: rtts
                    .into_iter()
                    .map(|(relay, rtt_us)| PeerRtt { relay, rtt_us })
                    .collect(),
            })
            .collect()
    }

    /// Files a client's report; `known` are the relay map's names. Returns how many figures
    /// were taken, or why none was.
    pub fn report(
        &self,
        client: IpAddr,
        body: &[u8],
        known: &[&str],
    ) -> Result<usize, ReportError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Report {
            rtts: BTreeMap<String, u64>,
        }
        let report: Report = serde_json::from_slice(body)
            .map_err(|e| ReportError::Malformed(format!("not a report: {e}")))?;
        let max = MAX_RTT.as_micros() as u64;
        let rtts: BTreeMap<String, u64> = report
            .rtts
            .into_iter()
            .filter(|(relay, rtt)| known.contains(&relay.as_str()) && (1..=max).contains(rtt))
            .collect();
        if rtts.is_empty() {
            return Err(ReportError::Malformed(
                "no figure for a known relay within 1 µs to 10 s".into(),
            ));
        }
        let taken = rtts.len();
        let network = network_of(client);
        let Ok(mut reports) = self.reports.lock() else {
            return Err(ReportError::Full);
        };
        if reports.len() >= MAX_NETWORKS && !reports.contains_key(&network) {
            return Err(ReportError::Full);
        }
        reports.entry(network).or_default().extend(rtts);
        Ok(taken)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReportError {
    /// Not JSON of the right shape, or no usable figure in it.
    Malformed(String),
    /// The relay holds as many networks as it may until its next heartbeat.
    Full,
}

/// The client network a report is filed under: the address's /24 (IPv4) or /48 (IPv6).
pub fn network_of(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            format!("{prefix}/48")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_filed_by_network_and_checked() {
        let m = Measurements::default();
        let known = ["eu", "us"];
        let ip: IpAddr = "81.2.69.142".parse().unwrap();
        assert_eq!(
            m.report(
                ip,
                br#"{"rtts": {"eu": 12000, "us": 0, "mars": 5}}"#,
                &known
            ),
            Ok(1)
        );
        assert!(m
            .report(ip, br#"{"rtts": {"us": 99000000}}"#, &known)
            .is_err());
        assert!(m.report(ip, b"garbage", &known).is_err());
        assert!(m
            .report(ip, br#"{"rtts": {}, "extra": 1}"#, &known)
            .is_err());
        let v6: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        m.report(v6, br#"{"rtts": {"us": 40000}}"#, &known).unwrap();

        let mut taken = m.take_client_rtts();
        taken.sort_by(|a, b| a.network.cmp(&b.network));
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].network, "2001:db8:1::/48");
        assert_eq!(taken[1].network, "81.2.69.0/24");
        assert_eq!(
            taken[1].rtts,
            vec![PeerRtt {
                relay: "eu".into(),
                rtt_us: 12000
            }]
        );
        assert!(m.take_client_rtts().is_empty(), "taking empties the pile");
    }

    #[test]
    fn networks_are_bounded() {
        let m = Measurements::default();
        for i in 0..MAX_NETWORKS as u32 {
            let ip = IpAddr::from((10u32 << 24 | i << 8).to_be_bytes());
            m.report(ip, br#"{"rtts": {"eu": 1000}}"#, &["eu"]).unwrap();
        }
        let one_more: IpAddr = "11.0.0.1".parse().unwrap();
        assert!(m
            .report(one_more, br#"{"rtts": {"eu": 1000}}"#, &["eu"])
            .is_err());
        // A network already held still takes reports.
        assert!(m
            .report(
                "10.0.0.9".parse().unwrap(),
                br#"{"rtts": {"eu": 900}}"#,
                &["eu"]
            )
            .is_ok());
    }
}
