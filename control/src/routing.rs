//! The routing table relays get with each config: round trips between relays, from their
//! heartbeats, and the round trips clients reported per network, aggregated here.
//!
//! Each (network, relay) pair keeps its last [`SAMPLES`] reports and is judged by their
//! median, so that one odd report moves nothing. A network that has reported nothing for
//! [`FORGET_AFTER`] is forgotten (clients move, networks get renumbered), and at most
//! [`MAX_NETWORKS`] are kept, the most recently heard; every relay gets the whole table, so
//! its size is the bound on each push.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use sat_proto::control::{NetworkRtts, PeerLink, PeerRtt, RoutingTable};
use tokio::time::Instant;
use tracing::debug;

pub const SAMPLES: usize = 5;
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
pub const MAX_NETWORKS: usize = 10_000;

#[derive(Default)]
pub struct ClientRtts {
    networks: HashMap<String, Network>,
}

struct Network {
    heard: Instant,
    by_relay: BTreeMap<String, VecDeque<u64>>,
}

impl ClientRtts {
    /// Adds what one relay's heartbeat carried. Networks that are not a /24 or a /48 are
    /// dropped: relays file reports only under those.
    pub fn add(&mut self, reports: Vec<NetworkRtts>, now: Instant) {
        for report in reports {
            if !is_client_network(&report.network) {
                debug!(network = %report.network, "dropping a report for a malformed network");
                continue;
            }
            let network = self.networks.entry(report.network).or_insert(Network {
                heard: now,
                by_relay: BTreeMap::new(),
            });
            network.heard = now;
            for PeerRtt { relay, rtt_us } in report.rtts {
                let samples = network.by_relay.entry(relay).or_default();
                samples.push_back(rtt_us);
                if samples.len() > SAMPLES {
                    samples.pop_front();
                }
            }
        }
        self.networks
            .retain(|_, n| now.saturating_duration_since(n.heard) < FORGET_AFTER);
        if self.networks.len() > MAX_NETWORKS {
            let mut by_age: Vec<(Instant, String)> = self
                .networks
                .iter()
                .map(|(k, n)| (n.heard, k.clone()))
                .collect();
            by_age.sort();
            let excess = self.networks.len() - MAX_NETWORKS;
            for (_, key) in by_age.into_iter().take(excess) {
                self.networks.remove(&key);
            }
        }
    }

    /// Each network's median round trip to each relay, in a stable order.
    pub fn medians(&self) -> Vec<NetworkRtts> {
        let mut out: Vec<NetworkRtts> = self
            .networks
            .iter()
            .map(|(network, n)| NetworkRtts {
                network: network.clone(),
                rtts: n
                    .by_relay
                    .iter()
                    .map(|(relay, samples)| PeerRtt {
                        relay: relay.clone(),
                        rtt_us: median(samples),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.network.cmp(&b.network));
        out
    }
}

/// The relay-to-relay links from each relay's latest heartbeat: one entry per pair, the mean
/// of the two directions where both relays measured it.
pub fn peer_links(reports: &[(String, Vec<PeerRtt>)]) -> Vec<PeerLink> {
    let mut pairs: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (from, rtts) in reports {
        for r in rtts {
            if *from == r.relay {
                continue;
            }
            let key = if *from < r.relay {
                (from.clone(), r.relay.clone())
            } else {
                (r.relay.clone(), from.clone())
            };
            pairs.entry(key).or_default().push(r.rtt_us);
        }
    }
    pairs
        .into_iter()
        .map(|((a, b), rtts)| PeerLink {
            a,
            b,
            rtt_us: rtts.iter().sum::<u64>() / rtts.len() as u64,
        })
        .collect()
}

pub fn table(peers: Vec<PeerLink>, clients: &ClientRtts) -> RoutingTable {
    RoutingTable {
        peers,
        networks: clients.medians(),
    }
}

fn median(samples: &VecDeque<u64>) -> u64 {
    let mut sorted: Vec<u64> = samples.iter().copied().collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// `81.2.69.0/24` or `2001:db8:1::/48`, with no host bits set.
fn is_client_network(network: &str) -> bool {
    let Some((ip, prefix)) = network.split_once('/') else {
        return false;
    };
    match (ip.parse::<IpAddr>(), prefix) {
        (Ok(IpAddr::V4(v4)), "24") => v4.octets()[3] == 0,
        (Ok(IpAddr::V6(v6)), "48") => v6.segments()[3..].iter().all(|s| *s == 0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(network: &str, relay: &str, rtt_us: u64) -> NetworkRtts {
        NetworkRtts {
            network: network.into(),
            rtts: vec![PeerRtt {
                relay: relay.into(),
                rtt_us,
            }],
        }
    }

    #[test]
    fn medians_outvote_an_odd_report_and_bad_networks_are_dropped() {
        let mut c = ClientRtts::default();
        let now = Instant::now();
        for rtt in [10_000, 11_000, 900_000, 12_000] {
            c.add(vec![report("81.2.69.0/24", "eu", rtt)], now);
        }
        c.add(
            vec![
                report("81.2.69.7/24", "eu", 1),
                report("81.2.69.0/16", "eu", 1),
                report("nonsense", "eu", 1),
                report("2001:db8:1::/48", "us", 30_000),
            ],
            now,
        );
        let m = c.medians();
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].network, "2001:db8:1::/48");
        assert_eq!(m[1].network, "81.2.69.0/24");
        assert_eq!(m[1].rtts[0].rtt_us, 12_000);
    }

    #[test]
    fn old_networks_are_forgotten() {
        let mut c = ClientRtts::default();
        let then = Instant::now();
        c.add(vec![report("81.2.69.0/24", "eu", 5)], then);
        c.add(vec![report("81.2.70.0/24", "eu", 5)], then + FORGET_AFTER);
        let m = c.medians();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].network, "81.2.70.0/24");
    }

    #[test]
    fn peer_links_join_both_directions() {
        let reports = vec![
            (
                "a".to_owned(),
                vec![PeerRtt {
                    relay: "b".into(),
                    rtt_us: 10,
                }],
            ),
            (
                "b".to_owned(),
                vec![
                    PeerRtt {
                        relay: "a".into(),
                        rtt_us: 20,
                    },
                    PeerRtt {
                        relay: "c".into(),
                        rtt_us: 7,
                    },
                ],
            ),
        ];
        let links = peer_links(&reports);
        assert_eq!(
            links,
            vec![
                PeerLink {
                    a: "a".into(),
                    b: "b".into(),
                    rtt_us: 15
                },
                PeerLink {
                    a: "b".into(),
                    b: "c".into(),
                    rtt_us: 7
                },
            ]
        );
    }
}
