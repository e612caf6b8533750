//! The world `sat up` simulates on one machine: where each region's relay stands, how far it
//! is from the primary and from this machine ([`REGIONS`]), and the delay proxies that put it
//! there ([`Links`]). The story the numbers tell is in [`crate::up`].

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use sat_proto::control::Location;

use crate::delay::{DelayProxy, Props, Proto};
use crate::DevnetError;

/// One simulated region.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// The region the relay enrols in.
    pub name: &'static str,
    /// Where the relay stands: its announced location, which geo DNS ranks by.
    pub city: &'static str,
    pub location: Location,
    /// One way, relay → primary: the delay on its uplink.
    pub to_primary: Duration,
    /// One way, this machine → relay: the delay on every port users reach.
    pub from_here: Duration,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The regions, in the order relays get them (and their addresses, 127.0.0.2 up).
pub static REGIONS: [Region; 3] = [
    Region {
        name: "us-east",
        city: "Ashburn, VA",
        location: Location {
            lat: 39.0438,
            lon: -77.4874,
        },
        to_primary: ms(1),
        from_here: ms(80),
    },
    Region {
        name: "eu-west",
        // The test database's London, so that its London subnet finds the relay in town.
        city: "London",
        location: Location {
            lat: 51.5142,
            lon: -0.0931,
        },
        to_primary: ms(30),
        from_here: ms(70),
    },
    Region {
        name: "ap-south",
        city: "Singapore",
        location: Location {
            lat: 1.336,
            lon: 103.7716,
        },
        to_primary: ms(90),
        from_here: ms(40),
    },
];

/// Where, above a public port, a relay really listens, behind its delay proxy.
pub const INNER_OFFSET: u16 = 10_000;

/// Client subnets from MaxMind's test database for `dig +subnet=...`, with the place each
/// stands for. With all three relays up, each gets a different one.
pub const DIG_SUBNETS: [(&str, &str); 3] = [
    ("81.2.69.142/32", "London"),
    ("175.16.199.0/24", "Changchun, China"),
    ("214.0.0.0/24", "Singapore"),
];

/// MaxMind's GeoIP2 City test database, for the relays' geo DNS: fake networks in real cities
/// (London, Milton WA, Changchun, Singapore, ...), 22 KB. Copyright MaxMind, Inc., under the
/// Apache License 2.0 or the MIT License; source and entries in tests/data/README.md.
pub const GEOIP_TEST_DB: &[u8] = include_bytes!("../../tests/data/GeoIP2-City-Test.mmdb");

/// The file name the database is written to, in the data directory.
pub const GEOIP_FILE: &str = "GeoIP2-City-Test.mmdb";

/// The proxies that put one relay at its region's distances; dropping them cuts its links.
pub struct Links {
    _proxies: Vec<DelayProxy>,
}

impl Links {
    /// Starts a relay's proxies: on `ip`, each public TCP and UDP port forwards to the port
    /// [`INNER_OFFSET`] above it with `from_here`, and `ip` at `control`'s port forwards to
    /// `control` with `to_primary`.
    pub async fn start(
        region: &Region,
        ip: Ipv4Addr,
        tcp_ports: &[u16],
        udp_ports: &[u16],
        control: SocketAddr,
    ) -> Result<Self, DevnetError> {
        let user = Props::delay(region.from_here);
        let mut plan: Vec<(Proto, SocketAddr, SocketAddr, Props)> = Vec::new();
        for (proto, ports) in [(Proto::Tcp, tcp_ports), (Proto::Udp, udp_ports)] {
            for &port in ports {
                let inner = SocketAddr::from((ip, port + INNER_OFFSET));
                plan.push((proto, SocketAddr::from((ip, port)), inner, user));
            }
        }
        let uplink = SocketAddr::from((ip, control.port()));
        plan.push((Proto::Udp, uplink, control, Props::delay(region.to_primary)));
        let mut proxies = Vec::with_capacity(plan.len());
        for (proto, listen, target, props) in plan {
            let proxy = DelayProxy::start(proto, listen, target, props, crate::delay::DEFAULT_SEED)
                .await
                .map_err(|source| DevnetError::Bind {
                    what: format!("{} distance proxy to {target}", region.name),
                    addr: format!("{listen} ({proto:?})").to_lowercase(),
                    source,
                })?;
            proxies.push(proxy);
        }
        Ok(Self { _proxies: proxies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The story the module tells, in numbers: the relay nearest this machine is not the one
    /// at the end of the shortest whole path.
    #[test]
    fn the_nearest_relay_is_not_the_shortest_path() {
        let nearest = REGIONS.iter().min_by_key(|r| r.from_here).map(|r| r.name);
        let best = REGIONS
            .iter()
            .min_by_key(|r| r.from_here + r.to_primary)
            .map(|r| r.name);
        assert_eq!(nearest, Some("ap-south"));
        assert_eq!(best, Some("us-east"));
    }
}
