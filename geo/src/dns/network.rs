//! Client networks: the unit by which clients' reported round trips are kept, and so the
//! narrowest ECS scope an answer made from them needs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::GeoError;

/// An IPv4 /24 or an IPv6 /48, exactly: the longest prefixes that the internet's routing
/// tables generally carry, so the clients within one share their routes to the relays (and
/// an ECS source prefix of at least that length names one such network).
///
/// Written and parsed as `81.2.69.0/24` or `2001:db8:1::/48`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Network {
    /// The first address, with the bits past the prefix zero.
    first: IpAddr,
}

impl Network {
    /// The prefix length of an IPv4 network.
    pub const IPV4_PREFIX_LEN: u8 = 24;
    /// The prefix length of an IPv6 network.
    pub const IPV6_PREFIX_LEN: u8 = 48;

    /// The network that holds `ip`. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as
    /// dual-stack sockets show IPv4 peers) is in the IPv4 address's network.
    pub fn containing(ip: IpAddr) -> Self {
        let first = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX << (32 - Self::IPV4_PREFIX_LEN);
                IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - Self::IPV6_PREFIX_LEN);
                IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
            }
        };
        Self { first }
    }

    /// The first address of the network.
    pub fn addr(&self) -> IpAddr {
        self.first
    }

    /// [`Self::IPV4_PREFIX_LEN`] or [`Self::IPV6_PREFIX_LEN`].
    pub fn prefix_len(&self) -> u8 {
        if self.first.is_ipv4() {
            Self::IPV4_PREFIX_LEN
        } else {
            Self::IPV6_PREFIX_LEN
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.first, self.prefix_len())
    }
}

impl FromStr for Network {
    type Err = GeoError;

    /// Takes only what [`Display`](fmt::Display) writes: an IPv4 /24 or an IPv6 /48, with the
    /// bits past the prefix zero.
    fn from_str(s: &str) -> Result<Self, GeoError> {
        let bad = |problem: String| GeoError::Network {
            input: s.to_owned(),
            problem,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| bad("no prefix length".to_owned()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad(format!("`{addr}` is not an IP address")))?;
        if addr.to_canonical() != addr {
            let v4 = Self::containing(addr);
            return Err(bad(format!(
                "an IPv4-mapped address; write the IPv4 network, {v4}"
            )));
        }
        let network = Self { first: addr };
        if len != network.prefix_len().to_string() {
            return Err(bad(format!(
                "the prefix length must be {}",
                network.prefix_len()
            )));
        }
        let expected = Self::containing(addr);
        if expected != network {
            return Err(bad(format!(
                "bits past the prefix are set; did you mean {expected}?"
            )));
        }
        Ok(network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(ip: &str) -> Network {
        Network::containing(ip.parse().unwrap())
    }

    #[test]
    fn addresses_are_masked_to_their_network() {
        assert_eq!(net("81.2.69.142").to_string(), "81.2.69.0/24");
        assert_eq!(net("81.2.69.0"), net("81.2.69.255"));
        assert_ne!(net("81.2.69.0"), net("81.2.68.255"));
        assert_eq!(net("2001:db8:1:2:3::4").to_string(), "2001:db8:1::/48");
        assert_eq!(net("2001:db8:1:ffff::"), net("2001:db8:1::"));
        assert_ne!(net("2001:db8:1::"), net("2001:db8:2::"));
        // IPv4-mapped: the IPv4 network.
        assert_eq!(net("::ffff:81.2.69.142"), net("81.2.69.1"));
        assert_eq!(net("81.2.69.1").prefix_len(), 24);
        assert_eq!(net("2001:db8::1").prefix_len(), 48);
        assert_eq!(
            net("81.2.69.1").addr(),
            "81.2.69.0".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn parses_what_it_writes_and_nothing_else() {
        for s in ["81.2.69.0/24", "2001:db8:1::/48", "0.0.0.0/24", "::/48"] {
            let network: Network = s.parse().unwrap();
            assert_eq!(network.to_string(), s);
        }
        for (s, problem) in [
            ("81.2.69.0", "no prefix length"),
            ("81.2.69.0/16", "must be 24"),
            ("81.2.69.0/024", "must be 24"),
            ("2001:db8::/56", "must be 48"),
            ("81.2.69.7/24", "did you mean 81.2.69.0/24?"),
            ("2001:db8:1:2::/48", "did you mean 2001:db8:1::/48?"),
            (
                "::ffff:81.2.69.0/24",
                "write the IPv4 network, 81.2.69.0/24",
            ),
            ("example.net/24", "not an IP address"),
            ("", "no prefix length"),
        ] {
            let error = s.parse::<Network>().unwrap_err().to_string();
            assert!(error.contains(problem), "{s}: {error}");
        }
    }
}
