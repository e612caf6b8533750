//! The relays the DNS server hands out, and what is measured about them: a snapshot the caller
//! replaces whenever the relay map or the measurements change. Queries read the snapshot in
//! place; they never wait for the caller.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::network::Network;
use crate::rank::{PeerRtts, Relay};

/// What the answers are made from: the relays, with the addresses DNS answers carry; the
/// relays' round trips to each other; and the round trips that clients reported, per client
/// network. The caller builds one from what the control plane pushes, converted into geo's
/// types, and sends it into the server's `watch::Receiver<Arc<DnsTable>>`. Down and draining
/// relays may stay in the table: the ranking leaves them out, so the table can be a plain copy
/// of the relay map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsTable {
    relays: Vec<DnsRelay>,
    peers: PeerRtts,
    networks: BTreeMap<Network, BTreeMap<String, Duration>>,
    /// The config generation the table was made from; 0 before the first.
    generation: u64,
}

/// One relay as the ranking sees it (name, state, location, round trip to the primary, load),
/// and its public addresses by family.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsRelay {
    pub relay: Relay,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl DnsRelay {
    /// The relay with the IP addresses among `addresses` (`192.0.2.7`, `192.0.2.7:443`,
    /// `2001:db8::7`, `[2001:db8::7]:443`). Host names are left out: an A/AAAA answer cannot
    /// carry them. Unspecified addresses (`0.0.0.0`, `::`) are left out too, and IPv4-mapped
    /// IPv6 addresses count as IPv4.
    pub fn new(relay: Relay, addresses: &[impl AsRef<str>]) -> Self {
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for address in addresses {
            let address = address.as_ref().trim();
            let ip = match address.parse::<SocketAddr>() {
                Ok(socket) => socket.ip(),
                Err(_) => match address.parse::<IpAddr>() {
                    Ok(ip) => ip,
                    Err(_) => continue,
                },
            };
            match ip.to_canonical() {
                IpAddr::V4(v4) if !v4.is_unspecified() && !ipv4.contains(&v4) => ipv4.push(v4),
                IpAddr::V6(v6) if !v6.is_unspecified() && !ipv6.contains(&v6) => ipv6.push(v6),
                _ => {}
            }
        }
        Self { relay, ipv4, ipv6 }
    }

    pub(crate) fn has_family(&self, v6: bool) -> bool {
        if v6 {
            !self.ipv6.is_empty()
        } else {
            !self.ipv4.is_empty()
        }
    }
}

impl DnsTable {
    /// `peers` and `networks` may be empty. `peers` places relays that clients have not
    /// measured (see [`crate::rank`]). `networks` holds, per client network, the round trips
    /// its clients measured to relays, by relay name; an answer for a client in one of these
    /// networks is ranked by them (see [`super`]).
    pub fn new(
        relays: Vec<DnsRelay>,
        peers: PeerRtts,
        networks: BTreeMap<Network, BTreeMap<String, Duration>>,
    ) -> Self {
        Self {
            relays,
            peers,
            networks,
            generation: 0,
        }
    }

    /// The table, made from the relay map of config generation `generation`: the control
    /// plane's number for each push, which grows with every change, so that the zone's SOA
    /// serial ([`Self::serial`]) changes whenever the answers can.
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The zone's SOA serial: the config generation, modulo 2^32 as serial numbers are (RFC
    /// 1982; they compare correctly across the wrap, as long as fewer than 2^31 generations pass
    /// between two looks). Every relay and the control plane give the same serial for the same
    /// relay map, and it grows across control-plane restarts, since the generation does.
    pub fn serial(&self) -> u32 {
        self.generation as u32
    }

    pub fn relays(&self) -> &[DnsRelay] {
        &self.relays
    }

    pub fn peers(&self) -> &PeerRtts {
        &self.peers
    }

    /// The round trips that clients in `network` reported, by relay name, if any.
    pub fn measured(&self, network: Network) -> Option<&BTreeMap<String, Duration>> {
        self.networks.get(&network).filter(|rtts| !rtts.is_empty())
    }

    /// Whether a client network inside `addr`/`prefix_len` (a wider network, such as GeoIP's)
    /// has measured round trips, so that its clients may be answered differently from the
    /// rest. An IPv4-mapped `addr` is taken as its IPv4 address, with an IPv4 prefix length.
    pub fn measured_within(&self, addr: IpAddr, prefix_len: u8) -> bool {
        let (first, last) = match addr.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len.min(32)))
                    .unwrap_or(0);
                let first = v4.to_bits() & mask;
                (
                    IpAddr::V4(Ipv4Addr::from_bits(first)),
                    IpAddr::V4(Ipv4Addr::from_bits(first | !mask)),
                )
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len.min(128)))
                    .unwrap_or(0);
                let first = v6.to_bits() & mask;
                (
                    IpAddr::V6(Ipv6Addr::from_bits(first)),
                    IpAddr::V6(Ipv6Addr::from_bits(first | !mask)),
                )
            }
        };
        self.networks
            .range(Network::containing(first)..=Network::containing(last))
            .any(|(_, rtts)| !rtts.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::State;

    #[test]
    fn measured_within_finds_client_networks_inside_a_wider_one() {
        let rtts: BTreeMap<String, Duration> =
            [("lon".to_owned(), Duration::from_millis(5))].into();
        let networks = ["81.2.69.0/24", "2001:218:5::/48"]
            .iter()
            .map(|n| (n.parse().unwrap(), rtts.clone()))
            .chain([("198.51.100.0/24".parse().unwrap(), BTreeMap::new())])
            .collect();
        let table = DnsTable::new(Vec::new(), PeerRtts::default(), networks);
        let within = |addr: &str, len| table.measured_within(addr.parse().unwrap(), len);
        assert!(within("81.2.69.200", 24));
        assert!(within("81.2.0.0", 16));
        assert!(within("0.0.0.0", 0));
        assert!(
            within("::ffff:81.2.1.1", 16),
            "an IPv4-mapped address is its IPv4 one"
        );
        assert!(!within("81.2.70.0", 24));
        assert!(within("81.2.68.0", 23));
        assert!(!within("81.2.66.0", 23));
        assert!(
            !within("198.51.100.0", 24),
            "a network with no figures is not measured"
        );
        assert!(within("2001:218::", 32));
        assert!(!within("2001:218:6::", 48));
        assert!(!within("2001:219::", 32));
    }

    #[test]
    fn ip_literals_are_taken_and_host_names_left_out() {
        let eu = Relay {
            name: "eu".into(),
            region: "eu-west".into(),
            state: State::Up,
            location: None,
            primary_rtt: None,
            load: 0.0,
        };
        let addresses = [
            "relay-eu.example.net:443",
            "192.0.2.7:443",
            "192.0.2.7",
            "198.51.100.1",
            "[2001:db8::7]:443",
            " 2001:db8::8 ",
            "::ffff:203.0.113.9",
            "0.0.0.0:443",
            "[::]:443",
            "garbage",
        ];
        let relay = DnsRelay::new(eu, &addresses);
        let v4: Vec<Ipv4Addr> = ["192.0.2.7", "198.51.100.1", "203.0.113.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v6: Vec<Ipv6Addr> = ["2001:db8::7", "2001:db8::8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(relay.ipv4, v4);
        assert_eq!(relay.ipv6, v6);
        assert!(relay.has_family(false) && relay.has_family(true));
    }
}
