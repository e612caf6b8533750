//! Which relays serve a client best, as a pure function: the same client and relays always give
//! the same order, whatever order the relays come in.
//!
//! A user's traffic goes client → relay → primary (the control plane that reaches the
//! backends), so a relay is judged by the whole path: the client's round trip to it plus its
//! round trip to the primary. The relay nearest the client is not the best one if its way to
//! the primary is long. For the client's leg, a measured round trip beats a distance estimate.
//!
//! Order:
//! 1. Relays that are down or draining are left out: they take no new users.
//! 2. Overloaded relays (load above [`OVERLOADED`]) come after all the others, so that they
//!    get new users only when every relay is overloaded.
//! 3. Relays whose whole path is known come before those missing a leg (no location and no
//!    measurement for the client's leg; no heartbeat yet for the primary's), since a partial
//!    sum is not comparable with a whole one.
//! 4. Then by estimated end-to-end round trip (the sum of the known legs), and ties by name.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::latency::estimated_rtt;
use crate::Location;

/// Load above which a relay is demoted: at 85% busy, queues start to add latency that the
/// round trips measured a moment ago do not show yet, and the relay needs headroom for the
/// users it already has.
pub const OVERLOADED: f32 = 0.85;

/// What is known about the client (or, for DNS, about the client's network).
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// From GeoIP of its address, or of the ECS subnet.
    pub location: Option<Location>,
    /// Round trips to relays, by relay name: the client's own probes, or probes that clients
    /// of its network reported, aggregated.
    pub measured: BTreeMap<String, Duration>,
}

/// A relay as the ranking sees it: what the relay map says of it, and how busy it is. The
/// caller builds it from whatever it was told (the control plane's relay map, a heartbeat).
#[derive(Debug, Clone, PartialEq)]
pub struct Relay {
    /// Unique among the relays; measurements are keyed by it.
    pub name: String,
    /// Not used by the ranking; carried for callers that pin a region.
    pub region: String,
    pub state: State,
    /// Configured, or from GeoIP of its public address; `None` if neither is known.
    pub location: Option<Location>,
    /// Its round trip to the primary, as QUIC measures it; `None` until its first heartbeat
    /// reports one.
    pub primary_rtt: Option<Duration>,
    /// From 0.0 (idle) to 1.0 (full). A NaN counts as not overloaded.
    pub load: f32,
}

/// Whether a relay takes new users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected and taking new users.
    Up,
    /// Connected but taking no new users (drained by an operator, or shutting down).
    Draining,
    /// Not connected, or silent for too long.
    Down,
}

/// The client's leg of the path, and where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRtt {
    Measured(Duration),
    /// From the great-circle distance between the client and the relay; see
    /// [`crate::latency`].
    Estimated(Duration),
    /// Neither measured nor placeable (the client or the relay has no location).
    Unknown,
}

impl ClientRtt {
    pub fn get(self) -> Option<Duration> {
        match self {
            ClientRtt::Measured(rtt) | ClientRtt::Estimated(rtt) => Some(rtt),
            ClientRtt::Unknown => None,
        }
    }
}

/// One relay in the ranking, with the figures it was ranked by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked<'a> {
    pub relay: &'a Relay,
    pub client_rtt: ClientRtt,
    pub overloaded: bool,
}

impl<'a> Ranked<'a> {
    /// The estimated end-to-end round trip, if both legs are known.
    pub fn end_to_end(&self) -> Option<Duration> {
        // Saturating: a wild figure from a peer must not panic the ranking (and `Duration`'s
        // `+` panics on overflow).
        Some(
            self.client_rtt
                .get()?
                .saturating_add(self.relay.primary_rtt?),
        )
    }

    /// The key that orders the ranking; see the module's documentation.
    fn order_key(&self) -> (bool, Reverse<u8>, Duration, &'a str) {
        let legs = [self.client_rtt.get(), self.relay.primary_rtt];
        let known = legs.iter().flatten().count() as u8;
        let sum = legs
            .iter()
            .flatten()
            .fold(Duration::ZERO, |sum, &leg| sum.saturating_add(leg));
        (
            self.overloaded,
            Reverse(known),
            sum,
            self.relay.name.as_str(),
        )
    }
}

/// The relays that take new users, best first.
pub fn rank<'a>(client: &Client, relays: impl IntoIterator<Item = &'a Relay>) -> Vec<Ranked<'a>> {
    let mut ranked: Vec<Ranked<'a>> = relays
        .into_iter()
        .filter(|relay| relay.state == State::Up)
        .map(|relay| Ranked {
            relay,
            client_rtt: client_rtt(client, relay),
            overloaded: relay.load > OVERLOADED,
        })
        .collect();
    ranked.sort_by_cached_key(|r| r.order_key());
    ranked
}

fn client_rtt(client: &Client, relay: &Relay) -> ClientRtt {
    if let Some(&rtt) = client.measured.get(&relay.name) {
        return ClientRtt::Measured(rtt);
    }
    match (client.location, relay.location) {
        (Some(here), Some(there)) => ClientRtt::Estimated(estimated_rtt(here, there)),
        _ => ClientRtt::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONDON: Location = Location {
        lat: 51.5074,
        lon: -0.1278,
    };
    const AMSTERDAM: Location = Location {
        lat: 52.3676,
        lon: 4.9041,
    };
    const FRANKFURT: Location = Location {
        lat: 50.1109,
        lon: 8.6821,
    };
    const SINGAPORE: Location = Location {
        lat: 1.3521,
        lon: 103.8198,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An idle relay, up; a `primary_ms` of 0 is a relay with no heartbeat yet.
    fn relay(name: &str, location: Option<Location>, primary_ms: u64) -> Relay {
        Relay {
            name: name.to_owned(),
            region: format!("region-{name}"),
            state: State::Up,
            location,
            primary_rtt: (primary_ms > 0).then(|| ms(primary_ms)),
            load: 0.1,
        }
    }

    fn measured(pairs: &[(&str, u64)]) -> Client {
        Client {
            location: None,
            measured: pairs.iter().map(|&(n, r)| (n.to_owned(), ms(r))).collect(),
        }
    }

    fn names(ranked: &[Ranked<'_>]) -> Vec<String> {
        ranked.iter().map(|r| r.relay.name.clone()).collect()
    }

    #[test]
    fn nearest_to_the_client_loses_to_the_shorter_whole_path() {
        // The client is 3 ms from the London relay, but London's way to the primary is long
        // (80 ms, say a poor transit route); Amsterdam is 8 ms away with 7 ms to the primary.
        let relays = [relay("lon", None, 80), relay("ams", None, 7)];
        let client = measured(&[("lon", 3), ("ams", 8)]);
        let ranked = rank(&client, &relays);
        assert_eq!(names(&ranked), ["ams", "lon"]);
        assert_eq!(ranked[0].end_to_end(), Some(ms(15)));
        assert_eq!(ranked[1].end_to_end(), Some(ms(83)));
    }

    #[test]
    fn distance_estimates_rank_when_nothing_is_measured() {
        let relays = [
            relay("sin", Some(SINGAPORE), 10),
            relay("fra", Some(FRANKFURT), 10),
            relay("ams", Some(AMSTERDAM), 10),
        ];
        let client = Client {
            location: Some(LONDON),
            ..Client::default()
        };
        let ranked = rank(&client, &relays);
        assert_eq!(names(&ranked), ["ams", "fra", "sin"]);
        assert!(matches!(ranked[0].client_rtt, ClientRtt::Estimated(_)));
    }

    #[test]
    fn measured_rtt_beats_the_distance_estimate() {
        // By distance the London relay is the obvious pick (about 5 ms against 15 ms), but
        // the client measured 60 ms to it: the measurement wins.
        let relays = [
            relay("lon", Some(LONDON), 10),
            relay("fra", Some(FRANKFURT), 10),
        ];
        let client = Client {
            location: Some(LONDON),
            measured: [("lon".to_owned(), ms(60))].into(),
        };
        let ranked = rank(&client, &relays);
        assert_eq!(names(&ranked), ["fra", "lon"]);
        assert_eq!(ranked[1].client_rtt, ClientRtt::Measured(ms(60)));
        assert!(matches!(ranked[0].client_rtt, ClientRtt::Estimated(_)));
    }

    #[test]
    fn down_and_draining_relays_are_left_out() {
        let mut relays = [
            relay("a", None, 5),
            relay("b", None, 5),
            relay("c", None, 5),
        ];
        relays[0].state = State::Down;
        relays[1].state = State::Draining;
        let client = measured(&[("a", 1), ("b", 1), ("c", 50)]);
        assert_eq!(names(&rank(&client, &relays)), ["c"]);
    }

    #[test]
    fn overloaded_relays_come_after_all_others() {
        let mut relays = [
            relay("fast", None, 5),
            relay("slow", None, 5),
            relay("mid", None, 5),
        ];
        let client = measured(&[("fast", 5), ("slow", 200), ("mid", 50)]);
        relays[0].load = 0.9;
        let ranked = rank(&client, &relays);
        assert_eq!(names(&ranked), ["mid", "slow", "fast"]);
        assert!(ranked[2].overloaded);

        // At the threshold itself a relay is not overloaded yet.
        relays[0].load = OVERLOADED;
        assert_eq!(names(&rank(&client, &relays))[0], "fast");

        // When every relay is overloaded, latency decides among them.
        for r in &mut relays {
            r.load = 0.95;
        }
        assert_eq!(names(&rank(&client, &relays)), ["fast", "mid", "slow"]);
    }

    #[test]
    fn nan_load_is_not_overloaded() {
        let mut relays = [relay("a", None, 5), relay("b", None, 5)];
        let client = measured(&[("a", 1), ("b", 2)]);
        relays[0].load = f32::NAN;
        assert_eq!(names(&rank(&client, &relays)), ["a", "b"]);
    }

    #[test]
    fn relays_missing_a_leg_come_after_complete_paths() {
        let relays = [
            relay("no-primary-rtt", None, 0),
            relay("unplaced", None, 2),
            relay("complete", None, 90),
        ];
        let client = measured(&[("no-primary-rtt", 1), ("complete", 90)]);
        let ranked = rank(&client, &relays);
        // 180 ms in full beats 1 ms and 2 ms of half a path: the other half could be anything.
        assert_eq!(names(&ranked), ["complete", "no-primary-rtt", "unplaced"]);
        assert_eq!(ranked[1].relay.primary_rtt, None);
        assert_eq!(ranked[1].end_to_end(), None);
        assert_eq!(ranked[2].client_rtt, ClientRtt::Unknown);
    }

    #[test]
    fn ties_go_by_name_whatever_the_input_order() {
        let mut relays = [
            relay("c", None, 10),
            relay("a", None, 10),
            relay("d", None, 5),
            relay("b", None, 10),
        ];
        let client = measured(&[("a", 10), ("b", 10), ("c", 10), ("d", 15)]);
        let want = ["a", "b", "c", "d"];
        assert_eq!(names(&rank(&client, &relays)), want);
        relays.reverse();
        assert_eq!(names(&rank(&client, &relays)), want);
        relays.rotate_left(1);
        assert_eq!(names(&rank(&client, &relays)), want);
    }

    #[test]
    fn wild_figures_do_not_panic() {
        let mut relays = [relay("a", None, 0), relay("b", None, 5)];
        relays[0].primary_rtt = Some(Duration::MAX);
        let client = Client {
            location: None,
            measured: [("a".to_owned(), Duration::MAX), ("b".to_owned(), ms(1))].into(),
        };
        let ranked = rank(&client, &relays);
        assert_eq!(names(&ranked), ["b", "a"]);
        assert_eq!(ranked[1].end_to_end(), Some(Duration::MAX));
    }

    #[test]
    fn no_relays_no_ranking() {
        assert!(rank(&Client::default(), &[]).is_empty());
    }
}
