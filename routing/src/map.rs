//! The pushed relay map in geo routing's types. `sat-geo` takes no wire types (its inputs are
//! its own), so each process that ranks relays converts what the control plane sends; this is
//! that one conversion, for the relays' and the control plane's geo DNS and for clients.

use std::collections::BTreeMap;
use std::time::Duration;

use sat_geo::dns::{DnsRelay, DnsTable, Network};
use sat_geo::rank::{PeerRtts, Relay, State};
use sat_geo::Location;
use sat_proto::control::{RelayInfo, RelayState, RoutingTable};

/// A relay of the map as the ranking takes it.
pub fn geo_relay(info: &RelayInfo) -> Relay {
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

/// The DNS table for a relay map: every relay, down and draining ones too (the ranking
/// leaves those out), with the IP literals among its addresses, and the routing table's round
/// trips between relays and from clients' networks.
pub fn dns_table(relays: &[RelayInfo], routing: &RoutingTable) -> DnsTable {
    let relays = relays
        .iter()
        .map(|info| DnsRelay::new(geo_relay(info), &info.addresses));
    let peers: PeerRtts = routing
        .peers
        .iter()
        .map(|l| (&l.a, &l.b, Duration::from_micros(l.rtt_us)))
        .collect();
    let mut networks = BTreeMap::new();
    for n in &routing.networks {
        // The control plane sends only well-formed networks; one that is not is skipped.
        let Ok(network) = n.network.parse::<Network>() else {
            continue;
        };
        let rtts = n
            .rtts
            .iter()
            .map(|r| (r.relay.clone(), Duration::from_micros(r.rtt_us)))
            .collect();
        networks.insert(network, rtts);
    }
    DnsTable::new(relays.collect(), peers, networks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_proto::control::{NetworkRtts, PeerLink, PeerRtt};

    fn info(name: &str, state: RelayState, rtt_us: u64) -> RelayInfo {
        RelayInfo {
            name: name.into(),
            region: format!("region-{name}"),
            state,
            addresses: vec!["192.0.2.7:443".into(), "relay.example.net:443".into()],
            location: Some(sat_proto::control::Location {
                lat: 51.5,
                lon: -0.1,
            }),
            rtt_us,
            load: 0.25,
            latency_url: None,
        }
    }

    #[test]
    fn an_unmeasured_round_trip_is_none_not_zero() {
        let relay = geo_relay(&info("eu", RelayState::Draining, 0));
        assert_eq!(relay.state, State::Draining);
        assert_eq!(relay.primary_rtt, None);
        assert_eq!(
            relay.location,
            Some(Location {
                lat: 51.5,
                lon: -0.1
            })
        );
        let relay = geo_relay(&info("eu", RelayState::Up, 1500));
        assert_eq!(relay.primary_rtt, Some(Duration::from_micros(1500)));
    }

    #[test]
    fn the_table_keeps_every_relay_and_skips_malformed_networks() {
        let relays = [
            info("eu", RelayState::Up, 1000),
            info("us", RelayState::Down, 0),
        ];
        let routing = RoutingTable {
            peers: vec![PeerLink {
                a: "eu".into(),
                b: "us".into(),
                rtt_us: 70_000,
            }],
            networks: vec![
                NetworkRtts {
                    network: "192.0.2.0/24".into(),
                    rtts: vec![PeerRtt {
                        relay: "eu".into(),
                        rtt_us: 9000,
                    }],
                },
                NetworkRtts {
                    network: "not a network".into(),
                    rtts: vec![],
                },
            ],
        };
        let table = dns_table(&relays, &routing);
        let names: Vec<&str> = table
            .relays()
            .iter()
            .map(|r| r.relay.name.as_str())
            .collect();
        assert_eq!(names, ["eu", "us"]);
        assert_eq!(
            table.relays()[0].ipv4,
            ["192.0.2.7".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let network: Network = "192.0.2.0/24".parse().unwrap();
        let measured = table.measured(network).unwrap();
        assert_eq!(measured.get("eu"), Some(&Duration::from_millis(9)));
        assert_eq!(
            table.peers().rtt("eu", "us"),
            Some(Duration::from_millis(70))
        );
    }
}
