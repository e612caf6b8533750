//! The routing picture on the status page: which relay a few sample client networks are sent
//! to, and why. It ranks with [`sat_geo::rank::rank`] on the relay map and routing table this
//! control plane publishes, placing each sample as geo DNS places a query's client subnet: by
//! the GeoIP database, and by the round trips that clients of its /24 or /48 reported.
//!
//! The samples are the networks whose clients reported round trips, and, when a GeoIP database
//! is configured, a fixed few that MaxMind's test database places in cities around the world.
//! With no GeoIP database, one unplaced client shows the order relays take by their round trip
//! to the primary alone.

use std::net::IpAddr;

use sat_geo::dns::{DnsTable, Network};
use sat_geo::geoip::GeoIp;
use sat_geo::rank::{self, Client, ClientRtt, Ranked};

use crate::admin::api::{LeftOut, RankedRelay, RouteSample, RoutingView};
use crate::admin::table::rtt;

/// Shown whenever a GeoIP database is configured: addresses that MaxMind's test database (the
/// one `sat up` and the tests use) places in London, Changchun, Milton (WA), San Diego and
/// Singapore.
const GEOIP_SAMPLES: [&str; 5] = [
    "81.2.69.142",
    "175.16.199.0/24",
    "216.160.83.56",
    "2001:480:10::/48",
    "214.0.0.0/24",
];
/// At most this many networks with reported round trips are shown (the table holds up to
/// 10,000).
const MEASURED_SHOWN: usize = 6;
/// Relays listed in each sample's ranking.
const RANKING_SHOWN: usize = 3;

/// The picture for `table` (the published relay map and routing table in geo's types).
/// `measured` lists the networks clients reported from, as the routing table names them;
/// `left_out` the relays that take no new users, with their state.
pub(super) fn picture(
    table: &DnsTable,
    geoip: Option<&GeoIp>,
    measured: &[String],
    left_out: Vec<(String, String)>,
) -> RoutingView {
    let mut samples: Vec<RouteSample> = Vec::new();
    let measured_samples = measured
        .iter()
        .filter_map(|n| n.parse::<Network>().ok())
        .take(MEASURED_SHOWN)
        .map(|n| (n.to_string(), n.addr()));
    let fixed = geoip
        .is_some()
        .then_some(GEOIP_SAMPLES)
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s.to_owned(), sample_addr(s)?)));
    for (label, addr) in fixed.chain(measured_samples) {
        if samples.iter().any(|s| s.network == label) {
            continue;
        }
        samples.push(sample(table, geoip, label, addr));
    }
    let basis = if geoip.is_some() {
        "Ranked as geo DNS and clients rank them, by the whole path: the client's round trip \
         to the relay (measured where clients of the network reported one, else estimated \
         from where GeoIP places them) plus the relay's round trip to the primary. Down and \
         draining relays are left out; overloaded ones go last."
    } else {
        "No GeoIP database ([dns] is not configured), so clients that reported no round \
         trips are not placed: they go by each relay's round trip to the primary alone, the \
         order shown for \"any\". Networks whose clients reported round trips are ranked by \
         them."
    };
    if geoip.is_none() {
        let any = Client::default();
        samples.insert(
            0,
            from_ranking(
                "any".to_owned(),
                "unplaced (no GeoIP)".to_owned(),
                false,
                &rank::rank(&any, table.relays().iter().map(|r| &r.relay), table.peers()),
            ),
        );
    }
    RoutingView {
        geoip: geoip.is_some(),
        basis: basis.to_owned(),
        samples,
        left_out: left_out
            .into_iter()
            .map(|(name, state)| LeftOut { name, state })
            .collect(),
    }
}

/// The address a sample stands for: the address itself, or a network's first address.
fn sample_addr(sample: &str) -> Option<IpAddr> {
    sample.split('/').next()?.parse().ok()
}

fn sample(table: &DnsTable, geoip: Option<&GeoIp>, network: String, addr: IpAddr) -> RouteSample {
    let hit = geoip.and_then(|g| g.lookup(addr));
    let measured = table.measured(Network::containing(addr));
    let place = match (&hit, geoip) {
        (Some(hit), _) => match (&hit.city, &hit.country) {
            (Some(city), Some(country)) => format!("{city}, {country}"),
            (Some(place), None) | (None, Some(place)) => place.clone(),
            (None, None) => format!("{:.1}, {:.1}", hit.location.lat, hit.location.lon),
        },
        (None, Some(_)) => "not in the GeoIP database".to_owned(),
        (None, None) => "unplaced (no GeoIP)".to_owned(),
    };
    let client = Client {
        location: hit.map(|h| h.location),
        measured: measured.cloned().unwrap_or_default(),
    };
    let ranked = rank::rank(
        &client,
        table.relays().iter().map(|r| &r.relay),
        table.peers(),
    );
    from_ranking(network, place, measured.is_some(), &ranked)
}

fn from_ranking(
    network: String,
    place: String,
    measured: bool,
    ranked: &[Ranked<'_>],
) -> RouteSample {
    RouteSample {
        network,
        place,
        measured,
        chosen: ranked.first().map(|r| r.relay.name.clone()),
        reason: reason(ranked),
        ranking: ranked
            .iter()
            .take(RANKING_SHOWN)
            .map(ranked_relay)
            .collect(),
    }
}

fn ranked_relay(r: &Ranked<'_>) -> RankedRelay {
    let micros = |d: std::time::Duration| d.as_micros() as u64;
    RankedRelay {
        name: r.relay.name.clone(),
        region: r.relay.region.clone(),
        client_rtt_source: match r.client_rtt {
            ClientRtt::Measured(_) => "measured",
            ClientRtt::Estimated(_) => "estimated",
            ClientRtt::Unknown => "unknown",
        }
        .to_owned(),
        client_rtt_us: r.client_rtt.get().map(micros),
        primary_rtt_us: r.relay.primary_rtt.map(micros),
        end_to_end_us: r.end_to_end().map(micros),
        overloaded: r.overloaded,
    }
}

/// Why the first relay of `ranked` wins, in a sentence.
fn reason(ranked: &[Ranked<'_>]) -> String {
    let Some(best) = ranked.first() else {
        return "no relay takes new users: none is up".to_owned();
    };
    let us = |d: std::time::Duration| rtt(Some(d.as_micros() as u64));
    let leg = match best.client_rtt {
        ClientRtt::Measured(d) => format!("{} measured by clients here", us(d)),
        ClientRtt::Estimated(d) => format!("about {} by distance", us(d)),
        ClientRtt::Unknown => "an unknown round trip".to_owned(),
    };
    let primary = best.relay.primary_rtt.map_or_else(
        || "a round trip to the primary not measured yet".to_owned(),
        |d| format!("{} on to the primary", us(d)),
    );
    let mut why = match (best.client_rtt, best.end_to_end()) {
        (ClientRtt::Unknown, _) => format!(
            "the shortest round trip to the primary ({}); this client is not placed",
            best.relay.primary_rtt.map_or_else(|| "-".to_owned(), us)
        ),
        (_, Some(total)) => format!("shortest whole path, {}: {leg} + {primary}", us(total)),
        (_, None) => format!("{leg} + {primary}"),
    };
    if best.overloaded {
        why.push_str("; every relay is overloaded");
    }
    match ranked.get(1) {
        Some(next) => {
            let total = next
                .end_to_end()
                .or(next.relay.primary_rtt)
                .map_or_else(|| "-".to_owned(), us);
            let overloaded = if next.overloaded && !best.overloaded {
                ", overloaded"
            } else {
                ""
            };
            why.push_str(&format!(
                "; next {} at {total}{overloaded}",
                next.relay.name
            ));
        }
        None => why.push_str("; the only relay up"),
    }
    why
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use sat_geo::dns::DnsRelay;
    use sat_geo::rank::{PeerRtts, Relay, State};
    use sat_geo::Location;

    use super::*;

    const LONDON: Location = Location {
        lat: 51.5,
        lon: -0.1,
    };
    const ASHBURN: Location = Location {
        lat: 39.0,
        lon: -77.5,
    };

    fn relay(name: &str, state: State, location: Location, primary_ms: u64) -> DnsRelay {
        DnsRelay::new(
            Relay {
                name: name.into(),
                region: format!("region-{name}"),
                state,
                location: Some(location),
                primary_rtt: Some(Duration::from_millis(primary_ms)),
                load: 0.1,
            },
            &["127.0.0.2:443"],
        )
    }

    fn table(networks: BTreeMap<Network, BTreeMap<String, Duration>>) -> DnsTable {
        DnsTable::new(
            vec![
                relay("eu", State::Up, LONDON, 65),
                relay("us", State::Up, ASHBURN, 2),
                relay("gone", State::Down, LONDON, 1),
            ],
            PeerRtts::default(),
            networks,
        )
    }

    fn geoip() -> GeoIp {
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/GeoIP2-City-Test.mmdb");
        GeoIp::open(&db).expect("the test GeoIP database")
    }

    #[test]
    fn without_geoip_the_order_is_by_round_trip_to_the_primary() {
        let view = picture(&table(BTreeMap::new()), None, &[], vec![]);
        assert!(!view.geoip);
        assert!(view.basis.contains("No GeoIP"), "{}", view.basis);
        assert_eq!(view.samples.len(), 1);
        let any = &view.samples[0];
        assert_eq!(any.network, "any");
        assert_eq!(any.chosen.as_deref(), Some("us"));
        let names: Vec<&str> = any.ranking.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["us", "eu"], "the down relay is left out");
        assert!(
            any.reason
                .contains("shortest round trip to the primary (2.0 ms)"),
            "{}",
            any.reason
        );
        assert!(any.reason.contains("next eu at 65.0 ms"), "{}", any.reason);
    }

    #[test]
    fn geoip_places_the_fixed_samples_and_the_whole_path_decides() {
        let geoip = geoip();
        let view = picture(&table(BTreeMap::new()), Some(&geoip), &[], vec![]);
        let networks: Vec<&str> = view.samples.iter().map(|s| s.network.as_str()).collect();
        assert_eq!(networks, GEOIP_SAMPLES);
        let london = &view.samples[0];
        assert_eq!(london.place, "London, GB");
        assert_eq!(london.chosen.as_deref(), Some("eu"), "{london:?}");
        assert!(
            london.reason.starts_with("shortest whole path"),
            "{}",
            london.reason
        );
        assert!(london.reason.contains("by distance"), "{}", london.reason);
        assert_eq!(london.ranking[0].client_rtt_source, "estimated");
        let changchun = &view.samples[1];
        assert_eq!(changchun.place, "Changchun, CN");
        // eu is nearer Changchun than us is, but its 65 ms on to the primary makes the whole
        // path through us, at the primary's door, the shorter.
        assert_eq!(changchun.chosen.as_deref(), Some("us"), "{changchun:?}");
        assert_eq!(view.samples[3].place, "San Diego, US");
        assert_eq!(view.samples[4].place, "Singapore, SG");
    }

    #[test]
    fn measured_networks_are_ranked_by_what_their_clients_reported() {
        let net: Network = "81.2.69.0/24".parse().unwrap();
        let rtts = [
            ("eu".to_owned(), Duration::from_millis(3)),
            ("us".to_owned(), Duration::from_millis(200)),
        ];
        let table = table([(net, rtts.into_iter().collect())].into());
        let measured = vec!["81.2.69.0/24".to_owned(), "garbage".to_owned()];
        let left_out = vec![("gone".to_owned(), "down".to_owned())];
        let view = picture(&table, None, &measured, left_out);
        assert_eq!(view.samples.len(), 2, "{:?}", view.samples);
        let s = &view.samples[1];
        assert_eq!(s.network, "81.2.69.0/24");
        assert!(s.measured);
        assert_eq!(s.chosen.as_deref(), Some("eu"));
        assert_eq!(s.ranking[0].client_rtt_source, "measured");
        assert_eq!(s.ranking[0].end_to_end_us, Some(68_000));
        assert!(
            s.reason.contains("3.0 ms measured by clients here"),
            "{}",
            s.reason
        );
        assert_eq!(view.left_out[0].name, "gone");
    }

    #[test]
    fn no_relay_up_says_so() {
        let table = DnsTable::new(
            vec![relay("gone", State::Draining, LONDON, 1)],
            PeerRtts::default(),
            BTreeMap::new(),
        );
        let view = picture(&table, None, &[], vec![]);
        assert_eq!(view.samples[0].chosen, None);
        assert!(view.samples[0].reason.contains("none is up"));
    }
}
