//! Which relays serve a client best, as a pure function: the same client and relays always give
//! the same order, whatever order the relays come in.
//!
//! A user's traffic goes client → relay → primary (the control plane that reaches the
//! backends), so a relay is judged by the whole path: the client's round trip to it plus its
//! round trip to the primary. The relay nearest the client is not the best one if its way to
//! the primary is long. For the client's leg, a measured round trip beats a distance estimate.
//!
//! A client that measured one relay can place the others. The relays measure round trips to
//! each other ([`PeerRtts`]), and round trips obey the triangle inequality, near enough (a path
//! through another relay exists, so the direct one should not be much longer). So for a relay R
//! the client has not measured, each relay M that it has measured, and whose round trip to R is
//! known, bounds the client's leg to R:
//!
//! ```text
//! |rtt(client, M) − rtt(M, R)|  ≤  rtt(client, R)  ≤  rtt(client, M) + rtt(M, R)
//! ```
//!
//! Over all such M, the lower bound L is the greatest of their lower bounds and the upper bound
//! U the least of their upper ones. The leg is then the distance estimate clamped into [L, U],
//! or U where there is no distance estimate (the client or R has no location), and counts as
//! [`ClientRtt::Estimated`]. Measured legs are used as they are. Where the figures contradict
//! each other (L > U, which jitter can cause), U wins: it is the length of a path that exists.
//! This matters because the distance model is crude (it errs by tens of milliseconds across
//! oceans, and by more where peering is poor), and because a client that GeoIP cannot place has
//! no estimate at all: one probe to a relay nearby, with the relays' own measurements, places
//! every relay that relay has measured.
//!
//! Order:
//! 1. Relays that are down or draining are left out: they take no new users.
//! 2. Overloaded relays (load above [`OVERLOADED`]) come after all the others, so that they
//!    get new users only when every relay is overloaded.
//! 3. Relays whose whole path is known come before those missing a leg (for the client's leg:
//!    no measurement, no location and no bound from a peer; for the primary's: no heartbeat
//!    yet), since a partial sum is not comparable with a whole one.
//! 4. Then by estimated end-to-end round trip (the sum of the known legs), and ties by name.

use std::cmp::{Ordering, Reverse};
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

/// Round trips between relays, as they measure them to each other. Symmetric: the round trip
/// from `a` to `b` is the one from `b` to `a`, whichever way round it was given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerRtts {
    /// Every pair under both names, so that a lookup needs no ordering of the two.
    by_relay: BTreeMap<String, BTreeMap<String, Duration>>,
}

impl PeerRtts {
    /// Records the round trip between `a` and `b`. A pair given twice (either way round)
    /// keeps the smaller figure: as with probes, the fastest sample is the least disturbed by
    /// queues. A relay paired with itself is ignored.
    pub fn insert(&mut self, a: &str, b: &str, rtt: Duration) {
        if a == b {
            return;
        }
        for (from, to) in [(a, b), (b, a)] {
            let slot = self
                .by_relay
                .entry(from.to_owned())
                .or_default()
                .entry(to.to_owned())
                .or_insert(rtt);
            *slot = (*slot).min(rtt);
        }
    }

    /// The round trip between `a` and `b`, if one was given.
    pub fn rtt(&self, a: &str, b: &str) -> Option<Duration> {
        self.by_relay.get(a)?.get(b).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_relay.is_empty()
    }

    /// For each relay in `measured` that has a round trip to `relay`: the measured figure and
    /// that round trip. Both maps are ordered by name, so one walk along each finds them all,
    /// in about half the time that looking up each measured relay takes (100 relays with a
    /// full mesh, a third of them measured: see `benches/ranking.rs`).
    fn via_measured<'p>(
        &'p self,
        relay: &str,
        measured: &'p BTreeMap<String, Duration>,
    ) -> impl Iterator<Item = (Duration, Duration)> + 'p {
        let mut peers = self.by_relay.get(relay).into_iter().flatten().peekable();
        let mut measured = measured.iter().peekable();
        std::iter::from_fn(move || loop {
            let (via, &rtt) = *measured.peek()?;
            let (peer, &peer_rtt) = *peers.peek()?;
            match via.cmp(peer) {
                Ordering::Less => {
                    measured.next();
                }
                Ordering::Greater => {
                    peers.next();
                }
                Ordering::Equal => {
                    measured.next();
                    peers.next();
                    return Some((rtt, peer_rtt));
                }
            }
        })
    }
}

impl<A: AsRef<str>, B: AsRef<str>> FromIterator<(A, B, Duration)> for PeerRtts {
    /// From `(a, b, round trip)` entries; see [`PeerRtts::insert`].
    fn from_iter<I: IntoIterator<Item = (A, B, Duration)>>(entries: I) -> Self {
        let mut peers = Self::default();
        for (a, b, rtt) in entries {
            peers.insert(a.as_ref(), b.as_ref(), rtt);
        }
        peers
    }
}

/// The client's leg of the path, and where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRtt {
    Measured(Duration),
    /// From the great-circle distance between the client and the relay (see
    /// [`crate::latency`]), kept within the bounds that the client's measurements of other
    /// relays and their round trips to this one set; or the upper bound alone where there is
    /// no distance. See the module's documentation.
    Estimated(Duration),
    /// Neither measured, nor placeable (the client or the relay has no location), nor bounded
    /// through a peer.
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

/// The relays that take new users, best first. `peers` may be empty; see the module's
/// documentation for what it adds.
pub fn rank<'a>(
    client: &Client,
    relays: impl IntoIterator<Item = &'a Relay>,
    peers: &PeerRtts,
) -> Vec<Ranked<'a>> {
    let mut ranked: Vec<Ranked<'a>> = relays
        .into_iter()
        .filter(|relay| relay.state == State::Up)
        .map(|relay| Ranked {
            relay,
            client_rtt: client_rtt(client, relay, peers),
            overloaded: relay.load > OVERLOADED,
        })
        .collect();
    ranked.sort_by_cached_key(|r| r.order_key());
    ranked
}

fn client_rtt(client: &Client, relay: &Relay, peers: &PeerRtts) -> ClientRtt {
    if let Some(&rtt) = client.measured.get(&relay.name) {
        return ClientRtt::Measured(rtt);
    }
    let distance = match (client.location, relay.location) {
        (Some(here), Some(there)) => Some(estimated_rtt(here, there)),
        _ => None,
    };
    match (distance, triangle_bounds(client, relay, peers)) {
        // `max` then `min`, not `clamp`, which panics when the bounds cross: then U wins.
        (Some(estimate), Some((lower, upper))) => {
            ClientRtt::Estimated(estimate.max(lower).min(upper))
        }
        (None, Some((_, upper))) => ClientRtt::Estimated(upper),
        (Some(estimate), None) => ClientRtt::Estimated(estimate),
        (None, None) => ClientRtt::Unknown,
    }
}

/// The bounds (L, U) on the client's round trip to `relay` through the relays it measured
/// that have a round trip to `relay`; `None` if there are none.
fn triangle_bounds(
    client: &Client,
    relay: &Relay,
    peers: &PeerRtts,
) -> Option<(Duration, Duration)> {
    peers
        .via_measured(&relay.name, &client.measured)
        .map(|(measured, peer)| (measured.abs_diff(peer), measured.saturating_add(peer)))
        .reduce(|(l1, u1), (l2, u2)| (l1.max(l2), u1.min(u2)))
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

    const NO_PEERS: PeerRtts = PeerRtts {
        by_relay: BTreeMap::new(),
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
        let ranked = rank(&client, &relays, &NO_PEERS);
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
        let ranked = rank(&client, &relays, &NO_PEERS);
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
        let ranked = rank(&client, &relays, &NO_PEERS);
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
        assert_eq!(names(&rank(&client, &relays, &NO_PEERS)), ["c"]);
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
        let ranked = rank(&client, &relays, &NO_PEERS);
        assert_eq!(names(&ranked), ["mid", "slow", "fast"]);
        assert!(ranked[2].overloaded);

        // At the threshold itself a relay is not overloaded yet.
        relays[0].load = OVERLOADED;
        assert_eq!(names(&rank(&client, &relays, &NO_PEERS))[0], "fast");

        // When every relay is overloaded, latency decides among them.
        for r in &mut relays {
            r.load = 0.95;
        }
        assert_eq!(
            names(&rank(&client, &relays, &NO_PEERS)),
            ["fast", "mid", "slow"]
        );
    }

    #[test]
    fn nan_load_is_not_overloaded() {
        let mut relays = [relay("a", None, 5), relay("b", None, 5)];
        let client = measured(&[("a", 1), ("b", 2)]);
        relays[0].load = f32::NAN;
        assert_eq!(names(&rank(&client, &relays, &NO_PEERS)), ["a", "b"]);
    }

    #[test]
    fn relays_missing_a_leg_come_after_complete_paths() {
        let relays = [
            relay("no-primary-rtt", None, 0),
            relay("unplaced", None, 2),
            relay("complete", None, 90),
        ];
        let client = measured(&[("no-primary-rtt", 1), ("complete", 90)]);
        let ranked = rank(&client, &relays, &NO_PEERS);
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
        assert_eq!(names(&rank(&client, &relays, &NO_PEERS)), want);
        relays.reverse();
        assert_eq!(names(&rank(&client, &relays, &NO_PEERS)), want);
        relays.rotate_left(1);
        assert_eq!(names(&rank(&client, &relays, &NO_PEERS)), want);
    }

    #[test]
    fn wild_figures_do_not_panic() {
        let mut relays = [relay("a", None, 0), relay("b", None, 5)];
        relays[0].primary_rtt = Some(Duration::MAX);
        let client = Client {
            location: None,
            measured: [("a".to_owned(), Duration::MAX), ("b".to_owned(), ms(1))].into(),
        };
        let ranked = rank(&client, &relays, &NO_PEERS);
        assert_eq!(names(&ranked), ["b", "a"]);
        assert_eq!(ranked[1].end_to_end(), Some(Duration::MAX));
        // Bounds through a relay measured at Duration::MAX, or a peer figure that large.
        let p = peers(&[("a", "c", 5), ("b", "c", u64::MAX / 2_000_000)]);
        let relays = [relay("c", Some(LONDON), 5)];
        let ranked = rank(&client, &relays, &p);
        assert!(ranked[0].client_rtt.get().is_some());
    }

    fn peers(pairs: &[(&str, &str, u64)]) -> PeerRtts {
        pairs.iter().map(|&(a, b, rtt)| (a, b, ms(rtt))).collect()
    }

    /// The client's leg to `name` in a ranking.
    fn leg(ranked: &[Ranked<'_>], name: &str) -> ClientRtt {
        let found = ranked.iter().find(|r| r.relay.name == name);
        found.expect("ranked").client_rtt
    }

    #[test]
    fn peer_rtts_are_symmetric() {
        let p = peers(&[("a", "b", 7), ("c", "b", 3), ("b", "a", 9), ("a", "a", 1)]);
        assert_eq!(p.rtt("a", "b"), Some(ms(7)));
        assert_eq!(p.rtt("b", "a"), Some(ms(7)));
        assert_eq!(p.rtt("b", "c"), Some(ms(3)));
        assert_eq!(p.rtt("c", "b"), Some(ms(3)));
        assert_eq!(p.rtt("a", "c"), None);
        assert_eq!(p.rtt("a", "a"), None);
        assert!(NO_PEERS.is_empty() && !p.is_empty());
    }

    #[test]
    fn a_close_peer_of_a_measured_relay_is_placed() {
        // An unplaced client measured 20 ms to London, and nothing else. Amsterdam is 4 ms
        // from London, so the client's leg to it is between 16 and 24 ms; with no distance to
        // go by, it counts as 24. Nothing bounds Singapore.
        let relays = [
            relay("lon", None, 10),
            relay("ams", None, 5),
            relay("sin", None, 5),
        ];
        let client = measured(&[("lon", 20)]);
        let ranked = rank(&client, &relays, &peers(&[("lon", "ams", 4)]));
        assert_eq!(names(&ranked), ["ams", "lon", "sin"]);
        assert_eq!(ranked[0].client_rtt, ClientRtt::Estimated(ms(24)));
        assert_eq!(ranked[0].end_to_end(), Some(ms(29)));
        assert_eq!(ranked[1].client_rtt, ClientRtt::Measured(ms(20)));
        assert_eq!(ranked[2].client_rtt, ClientRtt::Unknown);

        // Without the relays' figure, Amsterdam is missing a leg and comes after London.
        assert_eq!(
            names(&rank(&client, &relays, &NO_PEERS)),
            ["lon", "ams", "sin"]
        );
    }

    #[test]
    fn a_distance_estimate_outside_the_bounds_is_clamped() {
        // A client in London on a slow access network: 30 ms to the London relay, where the
        // distance suggests 5 ms.
        let relays = [
            relay("lon", Some(LONDON), 10),
            relay("ams", Some(AMSTERDAM), 10),
            relay("fra", Some(FRANKFURT), 10),
            relay("sin", Some(SINGAPORE), 10),
        ];
        let client = Client {
            location: Some(LONDON),
            measured: [("lon".to_owned(), ms(30))].into(),
        };
        let p = peers(&[("lon", "ams", 6), ("lon", "fra", 25), ("lon", "sin", 100)]);
        let ranked = rank(&client, &relays, &p);
        // Amsterdam: about 10 ms by distance, but at least 30 - 6 = 24 ms through London.
        assert_eq!(leg(&ranked, "ams"), ClientRtt::Estimated(ms(24)));
        // Frankfurt: between 5 and 55 ms, and the distance estimate is within that.
        let distance = estimated_rtt(LONDON, FRANKFURT);
        assert_eq!(leg(&ranked, "fra"), ClientRtt::Estimated(distance));
        // Singapore: about 168 ms by distance, but at most 30 + 100 ms through London.
        assert_eq!(leg(&ranked, "sin"), ClientRtt::Estimated(ms(130)));
        assert_eq!(leg(&ranked, "lon"), ClientRtt::Measured(ms(30)));
    }

    #[test]
    fn every_measured_peer_narrows_the_bounds() {
        // Through a: between 25 and 35 ms; through b: between 10 and 30 ms; so 25 to 30.
        let mut relays = [
            relay("a", None, 5),
            relay("b", None, 5),
            relay("x", None, 5),
        ];
        let mut client = measured(&[("a", 30), ("b", 10)]);
        let p = peers(&[("a", "x", 5), ("b", "x", 20)]);
        let ranked = rank(&client, &relays, &p);
        assert_eq!(leg(&ranked, "x"), ClientRtt::Estimated(ms(30)));
        // Placed next to each other, 5 ms by distance: raised to the lower bound.
        client.location = Some(LONDON);
        relays[2].location = Some(LONDON);
        let ranked = rank(&client, &relays, &p);
        assert_eq!(leg(&ranked, "x"), ClientRtt::Estimated(ms(25)));
    }

    #[test]
    fn contradicting_bounds_give_the_upper_one() {
        // Through a, x is at least 45 ms away; through b, at most 15 ms. Jitter does that.
        let relays = [
            relay("a", None, 5),
            relay("b", None, 5),
            relay("x", Some(SINGAPORE), 5),
        ];
        let client = Client {
            location: Some(LONDON),
            measured: [("a".to_owned(), ms(50)), ("b".to_owned(), ms(10))].into(),
        };
        let ranked = rank(&client, &relays, &peers(&[("a", "x", 5), ("b", "x", 5)]));
        assert_eq!(leg(&ranked, "x"), ClientRtt::Estimated(ms(15)));
    }

    #[test]
    fn peers_without_a_measured_end_change_nothing() {
        let relays = [
            relay("lon", Some(LONDON), 10),
            relay("fra", Some(FRANKFURT), 10),
            relay("ams", None, 10),
        ];
        let client = Client {
            location: Some(LONDON),
            measured: [("lon".to_owned(), ms(60))].into(),
        };
        let unrelated = peers(&[("fra", "ams", 5), ("fra", "elsewhere", 5)]);
        assert_eq!(
            rank(&client, &relays, &unrelated),
            rank(&client, &relays, &NO_PEERS)
        );
        // A measured leg stays as measured, whatever its peers say.
        let mut client = client;
        client.measured.insert("fra".to_owned(), ms(10));
        let ranked = rank(&client, &relays, &peers(&[("lon", "fra", 1)]));
        assert_eq!(leg(&ranked, "lon"), ClientRtt::Measured(ms(60)));
    }

    #[test]
    fn no_relays_no_ranking() {
        assert!(rank(&Client::default(), &[], &NO_PEERS).is_empty());
    }
}
