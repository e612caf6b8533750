//! When to move to another relay. Round trips jitter, and a client that always took the
//! momentary best would hop between two similar relays, dropping warm connections each time.
//! So a client keeps its relay until another is clearly better, by the rule Tailscale uses for
//! its home DERP region (`addReportHistoryAndSetPreferredDERP` in tailscale's
//! `net/netcheck/netcheck.go`): the newcomer must be at least [`MIN_GAIN`] (10 ms) faster *and*
//! at least a third faster (its round trip at most two thirds of the current one). The first
//! condition ignores big ratios of small numbers (5 ms against 12 ms is not worth a move), the
//! second ignores small ratios of big numbers (250 ms against 300 ms is within the noise).
//!
//! Each relay is judged by the median of its recent end-to-end samples (see [`History`]), so
//! that one spike or one lucky probe moves nothing; Tailscale keeps the minimum over five
//! minutes instead, which a single lucky probe can move. A relay that needs
//! [`History::min_samples`] samples to win is also what stops a newcomer from taking over on
//! its first reading.
//!
//! Some things do not wait for history: a current relay that is down, draining or gone from the
//! relay map is left at once, for the best of the rest; and an overloaded one is left at once
//! for one that is not.
//!
//! The state machine reads no clock: every call takes `now`, so tests run it on virtual time.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::rank::Ranked;

/// The least absolute gain worth a switch.
pub const MIN_GAIN: Duration = Duration::from_millis(10);

/// How much history a relay is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Samples kept per relay, the most recent ones.
    pub samples: usize,
    /// Samples another relay needs before it can take over from a current relay that is
    /// still healthy. At least 1, and at most `samples`.
    pub min_samples: usize,
    /// Samples older than this are forgotten, so that a client back from sleep, or on a new
    /// network, judges by what it measures now.
    pub window: Duration,
}

impl Default for History {
    /// With probes every few seconds: a clear improvement is taken within three rounds, and a
    /// median of five outvotes two bad samples in a row.
    fn default() -> Self {
        Self {
            samples: 5,
            min_samples: 3,
            window: Duration::from_secs(60),
        }
    }
}

/// A change of relay, for the caller to act on and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub from: Option<String>,
    /// `None` when no relay is available at all.
    pub to: Option<String>,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// There was no current relay.
    First,
    /// The current relay is down, draining or gone from the relay map (or, with `to: None`,
    /// so is every other).
    Unavailable,
    /// The current relay is overloaded and the new one is not.
    Overloaded,
    /// The new relay is clearly faster: `from` and `to` are the two relays' median end-to-end
    /// round trips.
    Faster { from: Duration, to: Duration },
}

/// One client's (or one client network's) choice of relay.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    config: History,
    current: Option<String>,
    /// End-to-end samples per relay, oldest first.
    history: BTreeMap<String, VecDeque<(Instant, Duration)>>,
}

impl Hysteresis {
    pub fn new(config: History) -> Self {
        let samples = config.samples.max(1);
        Self {
            config: History {
                samples,
                min_samples: config.min_samples.clamp(1, samples),
                window: config.window,
            },
            current: None,
            history: BTreeMap::new(),
        }
    }

    /// Starts on a relay chosen earlier, such as the one a previous run remembered. It is kept
    /// while it is available and no other is clearly faster, as if it had been chosen here.
    pub fn resume(config: History, current: impl Into<String>) -> Self {
        let mut this = Self::new(config);
        this.current = Some(current.into());
        this
    }

    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The median of `relay`'s end-to-end samples as of the last update: the figure it is
    /// judged by.
    pub fn typical_rtt(&self, relay: &str) -> Option<Duration> {
        let samples = self.history.get(relay)?;
        let mut rtts: Vec<Duration> = samples.iter().map(|&(_, rtt)| rtt).collect();
        rtts.sort_unstable();
        let mid = rtts.len() / 2;
        match rtts.len() {
            0 => None,
            n if n % 2 == 1 => Some(rtts[mid]),
            // Halving the difference rather than the sum cannot overflow.
            _ => Some(rtts[mid - 1] + (rtts[mid] - rtts[mid - 1]) / 2),
        }
    }

    /// Takes one round of the ranking (from [`crate::rank::rank`], built from the latest
    /// probes), records each relay's end-to-end estimate, and says whether to move.
    pub fn update(&mut self, now: Instant, ranked: &[Ranked<'_>]) -> Option<Switch> {
        self.record(now, ranked);

        let best = ranked.iter().min_by_key(|r| self.order_key(r));
        let Some(best) = best else {
            let from = self.current.take()?;
            return Some(Switch {
                from: Some(from),
                to: None,
                reason: Reason::Unavailable,
            });
        };
        let Some(current_name) = self.current.as_deref() else {
            return Some(self.switch_to(best, Reason::First));
        };
        let Some(current) = ranked.iter().find(|r| r.relay.name == current_name) else {
            return Some(self.switch_to(best, Reason::Unavailable));
        };
        if current.overloaded && !best.overloaded {
            return Some(self.switch_to(best, Reason::Overloaded));
        }

        // Without a figure for the current relay there is nothing to compare with; staying
        // put is the safe answer until one arrives.
        let current_rtt = self.typical_rtt(current_name)?;
        let challenger = ranked
            .iter()
            .filter(|r| r.relay.name != current.relay.name)
            .filter(|r| !r.overloaded || current.overloaded)
            .filter(|r| self.sample_count(&r.relay.name) >= self.config.min_samples)
            .min_by_key(|r| self.order_key(r))?;
        let challenger_rtt = self.typical_rtt(&challenger.relay.name)?;
        if clearly_faster(challenger_rtt, current_rtt) {
            let reason = Reason::Faster {
                from: current_rtt,
                to: challenger_rtt,
            };
            return Some(self.switch_to(challenger, reason));
        }
        None
    }

    fn record(&mut self, now: Instant, ranked: &[Ranked<'_>]) {
        // A relay missing from the ranking (down, draining, gone) loses its history: if it
        // comes back, it earns its place again rather than winning on samples from before it
        // went away, which would make a client follow a flapping relay.
        self.history
            .retain(|name, _| ranked.iter().any(|r| &r.relay.name == name));
        for r in ranked {
            let Some(rtt) = r.end_to_end() else { continue };
            let samples = match self.history.get_mut(&r.relay.name) {
                Some(samples) => samples,
                None => self.history.entry(r.relay.name.clone()).or_default(),
            };
            samples.push_back((now, rtt));
            if samples.len() > self.config.samples {
                samples.pop_front();
            }
        }
        let window = self.config.window;
        self.history.retain(|_, samples| {
            while samples
                .front()
                .is_some_and(|&(at, _)| now.saturating_duration_since(at) > window)
            {
                samples.pop_front();
            }
            !samples.is_empty()
        });
    }

    fn sample_count(&self, relay: &str) -> usize {
        self.history.get(relay).map_or(0, VecDeque::len)
    }

    /// Like the ranking's order, but by median rather than by the latest round: not
    /// overloaded first, then relays with a figure, then the fastest, then by name.
    fn order_key<'r>(&self, r: &'r Ranked<'_>) -> (bool, bool, Option<Duration>, &'r str) {
        let typical = self.typical_rtt(&r.relay.name);
        (r.overloaded, typical.is_none(), typical, &r.relay.name)
    }

    fn switch_to(&mut self, to: &Ranked<'_>, reason: Reason) -> Switch {
        let from = self.current.replace(to.relay.name.clone());
        Switch {
            from,
            to: Some(to.relay.name.clone()),
            reason,
        }
    }
}

/// Keeping the state between runs: a client that remembers its choice and the samples behind
/// it starts where it left off, so a restart is not a chance to flap.
impl Hysteresis {
    /// Every relay's samples, oldest first.
    pub fn history(&self) -> impl Iterator<Item = (&str, Vec<(Instant, Duration)>)> {
        self.history
            .iter()
            .map(|(name, samples)| (name.as_str(), samples.iter().copied().collect()))
    }

    /// The state [`Hysteresis::current`] and [`Hysteresis::history`] described, with samples
    /// past the window or over the limit dropped.
    pub fn restore(
        config: History,
        current: Option<String>,
        history: impl IntoIterator<Item = (String, Vec<(Instant, Duration)>)>,
        now: Instant,
    ) -> Self {
        let mut this = Self::new(config);
        this.current = current;
        for (name, mut samples) in history {
            samples.sort_by_key(|&(at, _)| at);
            samples.retain(|&(at, _)| now.saturating_duration_since(at) <= this.config.window);
            let keep = samples.len().saturating_sub(this.config.samples);
            let samples: VecDeque<_> = samples.into_iter().skip(keep).collect();
            if !samples.is_empty() {
                this.history.insert(name, samples);
            }
        }
        this
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn restore_keeps_the_choice_and_recent_samples_only() {
        let now = Instant::now();
        let config = History::default();
        let old = now - config.window - Duration::from_secs(1);
        let recent: Vec<(Instant, Duration)> = (1..=7u64)
            .map(|i| (now - Duration::from_secs(8 - i), Duration::from_millis(i)))
            .collect();
        let h = Hysteresis::restore(
            config,
            Some("a".into()),
            [
                ("a".to_owned(), recent),
                ("gone".to_owned(), vec![(old, Duration::from_millis(1))]),
            ],
            now,
        );
        assert_eq!(h.current(), Some("a"));
        let history: Vec<_> = h.history().collect();
        assert_eq!(history.len(), 1, "samples past the window are dropped");
        let kept: Vec<Duration> = history[0].1.iter().map(|&(_, d)| d).collect();
        // The newest five of seven.
        assert_eq!(kept, (3..=7).map(Duration::from_millis).collect::<Vec<_>>());
        assert_eq!(h.typical_rtt("a"), Some(Duration::from_millis(5)));
    }
}

/// The Tailscale rule: at least [`MIN_GAIN`] faster, and at most two thirds of the time.
fn clearly_faster(new: Duration, old: Duration) -> bool {
    new.saturating_add(MIN_GAIN) <= old && new.as_micros() * 3 <= old.as_micros() * 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::{rank, Client, PeerRtts, Relay, State};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Relays with a 1 ms round trip to the primary, so end to end = client RTT + 1 ms.
    fn relays(names: &[&str]) -> Vec<Relay> {
        names
            .iter()
            .map(|&name| Relay {
                name: name.to_owned(),
                region: format!("region-{name}"),
                state: State::Up,
                location: None,
                primary_rtt: Some(ms(1)),
                load: 0.0,
            })
            .collect()
    }

    /// Virtual time: one probe round per second.
    struct Rounds {
        start: Instant,
        elapsed: Duration,
    }

    impl Rounds {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                elapsed: Duration::ZERO,
            }
        }

        fn tick(&mut self, by: Duration) -> Instant {
            self.elapsed += by;
            self.start + self.elapsed
        }

        /// One round: the client measured `rtts` (ms) to the relays; `overloaded` are busy.
        fn run(
            &mut self,
            choice: &mut Hysteresis,
            relays: &[Relay],
            rtts: &[(&str, u64)],
            overloaded: &[&str],
        ) -> Option<Switch> {
            let now = self.tick(Duration::from_secs(1));
            let ranked = ranking(relays, rtts, overloaded);
            choice.update(now, &rank_of(&ranked))
        }
    }

    type Ranking = (Client, Vec<Relay>);

    fn ranking(relays: &[Relay], rtts: &[(&str, u64)], overloaded: &[&str]) -> Ranking {
        let client = Client {
            location: None,
            measured: rtts.iter().map(|&(n, r)| (n.to_owned(), ms(r))).collect(),
        };
        let with_load = relays
            .iter()
            .map(|r| Relay {
                load: if overloaded.contains(&r.name.as_str()) {
                    0.95
                } else {
                    0.1
                },
                ..r.clone()
            })
            .collect();
        (client, with_load)
    }

    fn rank_of(ranking: &Ranking) -> Vec<Ranked<'_>> {
        let (client, relays) = ranking;
        rank(client, relays, &PeerRtts::default())
    }

    fn to(name: &str, reason: Reason, from: Option<&str>) -> Option<Switch> {
        Some(Switch {
            from: from.map(str::to_owned),
            to: Some(name.to_owned()),
            reason,
        })
    }

    /// A small deterministic generator, so that the noisy series is the same on every run.
    struct Lcg(u64);

    impl Lcg {
        /// Uniform in `-spread..=spread`.
        fn jitter(&mut self, spread: u64) -> i64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % (2 * spread + 1)) as i64 - spread as i64
        }
    }

    #[test]
    fn first_round_takes_the_best() {
        let net = relays(&["a", "b"]);
        let mut choice = Hysteresis::new(History::default());
        let mut rounds = Rounds::new();
        let switch = rounds.run(&mut choice, &net, &[("a", 50), ("b", 30)], &[]);
        assert_eq!(switch, to("b", Reason::First, None));
        assert_eq!(choice.current(), Some("b"));
    }

    #[test]
    fn jitter_within_the_thresholds_never_flips_the_choice() {
        // b is typically 4 ms (10%) faster than a: not worth a move. Both jitter by ±5 ms,
        // a spikes by +150 ms every 7th round and b has a lucky 5 ms probe every 7th round.
        // Taking the momentary best would hop between them; the hysteresis must not, ever.
        let net = relays(&["a", "b"]);
        let mut choice = Hysteresis::resume(History::default(), "a");
        let mut rounds = Rounds::new();
        let mut noise = Lcg(7);
        let mut naive_flips = 0;
        let mut naive_best = String::from("a");
        for round in 0..2000u64 {
            let mut a = (40 + noise.jitter(5)) as u64;
            let mut b = (36 + noise.jitter(5)) as u64;
            if round % 7 == 0 {
                a += 150;
            }
            if round % 7 == 3 {
                b = 5;
            }
            let rtts = [("a", a), ("b", b)];
            let ranked = ranking(&net, &rtts, &[]);
            let best = &rank_of(&ranked)[0].relay.name;
            if *best != naive_best {
                naive_flips += 1;
                naive_best = best.clone();
            }
            let switch = rounds.run(&mut choice, &net, &rtts, &[]);
            assert_eq!(switch, None, "round {round}: a {a} ms, b {b} ms");
        }
        assert_eq!(choice.current(), Some("a"));
        assert!(
            naive_flips > 100,
            "the series is not noisy enough to test anything"
        );
    }

    #[test]
    fn both_thresholds_must_hold() {
        let cases = [
            // (current, other, switch?) in ms, client leg only (end to end adds 1 ms).
            (19, 10, false),  // 45% faster, but only 9 ms
            (100, 75, false), // 25 ms faster, but only 24%
            (29, 19, true),   // exactly 10 ms and exactly a third: 20 against 30
            (300, 100, true),
        ];
        for (current, other, switches) in cases {
            let net = relays(&["cur", "new"]);
            let mut choice = Hysteresis::resume(History::default(), "cur");
            let mut rounds = Rounds::new();
            let rtts = [("cur", current), ("new", other)];
            let switched: Vec<_> = (0..10)
                .filter_map(|_| rounds.run(&mut choice, &net, &rtts, &[]))
                .collect();
            assert_eq!(!switched.is_empty(), switches, "{current} ms vs {other} ms");
        }
    }

    #[test]
    fn a_clearly_better_relay_is_taken_once_its_history_fills() {
        let net = relays(&["a", "b"]);
        let mut choice = Hysteresis::new(History::default());
        let mut rounds = Rounds::new();
        assert_eq!(
            rounds.run(&mut choice, &net[..1], &[("a", 100)], &[]),
            to("a", Reason::First, None)
        );
        // b appears, much faster; it needs three samples before it may take over.
        let rtts = [("a", 100), ("b", 40)];
        assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        let faster = Reason::Faster {
            from: ms(101),
            to: ms(41),
        };
        assert_eq!(
            rounds.run(&mut choice, &net, &rtts, &[]),
            to("b", faster, Some("a"))
        );
        assert_eq!(choice.current(), Some("b"));
    }

    #[test]
    fn a_path_that_improves_wins_when_its_median_does() {
        let net = relays(&["a", "b"]);
        let mut choice = Hysteresis::resume(History::default(), "a");
        let mut rounds = Rounds::new();
        for _ in 0..5 {
            assert_eq!(
                rounds.run(&mut choice, &net, &[("a", 100), ("b", 100)], &[]),
                None
            );
        }
        // b's path gets better. Its median of five moves on the third good sample.
        let better = [("a", 100), ("b", 40)];
        assert_eq!(rounds.run(&mut choice, &net, &better, &[]), None);
        assert_eq!(rounds.run(&mut choice, &net, &better, &[]), None);
        assert_eq!(choice.typical_rtt("b"), Some(ms(101)));
        let switch = rounds.run(&mut choice, &net, &better, &[]);
        assert_eq!(switch.and_then(|s| s.to).as_deref(), Some("b"));
        assert_eq!(choice.typical_rtt("b"), Some(ms(41)));
    }

    #[test]
    fn failover_is_immediate_when_the_current_relay_goes() {
        for how in ["down", "draining", "gone"] {
            let mut net = relays(&["a", "b"]);
            let mut choice = Hysteresis::new(History::default());
            let mut rounds = Rounds::new();
            // a is far better, so b has never been close to winning.
            let rtts = [("a", 10), ("b", 80)];
            rounds.run(&mut choice, &net, &rtts, &[]);
            rounds.run(&mut choice, &net, &rtts, &[]);
            assert_eq!(choice.current(), Some("a"));

            match how {
                "down" => net[0].state = State::Down,
                "draining" => net[0].state = State::Draining,
                _ => {
                    net.remove(0);
                }
            }
            let switch = rounds.run(&mut choice, &net, &rtts, &[]);
            assert_eq!(switch, to("b", Reason::Unavailable, Some("a")), "{how}");
        }
    }

    #[test]
    fn a_returning_relay_earns_its_place_again() {
        let mut net = relays(&["a", "b"]);
        let mut choice = Hysteresis::resume(History::default(), "a");
        let mut rounds = Rounds::new();
        let rtts = [("a", 10), ("b", 80)];
        for _ in 0..5 {
            rounds.run(&mut choice, &net, &rtts, &[]);
        }
        net[0].state = State::Down;
        assert!(rounds.run(&mut choice, &net, &rtts, &[]).is_some());
        assert_eq!(choice.current(), Some("b"));

        // a is back, as fast as before; its samples from before it went down do not count.
        net[0].state = State::Up;
        assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        let switch = rounds.run(&mut choice, &net, &rtts, &[]);
        assert_eq!(switch.and_then(|s| s.to).as_deref(), Some("a"));
    }

    #[test]
    fn an_overloaded_relay_is_left_at_once() {
        let net = relays(&["a", "b"]);
        let mut choice = Hysteresis::resume(History::default(), "a");
        let mut rounds = Rounds::new();
        let rtts = [("a", 10), ("b", 15)];
        assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        assert_eq!(
            rounds.run(&mut choice, &net, &rtts, &["a"]),
            to("b", Reason::Overloaded, Some("a"))
        );
        // When a recovers it is only 5 ms better: not worth moving back.
        for _ in 0..10 {
            assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        }
        // If everything is overloaded, latency decides as usual, and b stays.
        for _ in 0..10 {
            assert_eq!(rounds.run(&mut choice, &net, &rtts, &["a", "b"]), None);
        }
        assert_eq!(choice.current(), Some("b"));
    }

    #[test]
    fn with_nothing_available_the_choice_is_dropped_then_made_afresh() {
        let mut net = relays(&["a"]);
        let mut choice = Hysteresis::new(History::default());
        let mut rounds = Rounds::new();
        rounds.run(&mut choice, &net, &[("a", 10)], &[]);
        net[0].state = State::Down;
        let lost = Switch {
            from: Some("a".to_owned()),
            to: None,
            reason: Reason::Unavailable,
        };
        assert_eq!(rounds.run(&mut choice, &net, &[], &[]), Some(lost));
        assert_eq!(choice.current(), None);
        assert_eq!(rounds.run(&mut choice, &net, &[], &[]), None);
        net[0].state = State::Up;
        assert_eq!(
            rounds.run(&mut choice, &net, &[("a", 10)], &[]),
            to("a", Reason::First, None)
        );
    }

    #[test]
    fn samples_older_than_the_window_do_not_count() {
        let net = relays(&["a", "b"]);
        let config = History::default();
        let mut choice = Hysteresis::resume(config, "a");
        let mut rounds = Rounds::new();
        let rtts = [("a", 100), ("b", 40)];
        rounds.run(&mut choice, &net, &rtts, &[]);
        rounds.run(&mut choice, &net, &rtts, &[]);
        // The client sleeps past the window; b's two samples are stale when it wakes, so b
        // needs three fresh ones.
        rounds.tick(config.window);
        assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        assert_eq!(rounds.run(&mut choice, &net, &rtts, &[]), None);
        assert!(rounds.run(&mut choice, &net, &rtts, &[]).is_some());
    }

    #[test]
    fn a_resumed_choice_stands_until_beaten() {
        let net = relays(&["a", "b"]);
        let mut choice = Hysteresis::resume(History::default(), "b");
        let mut rounds = Rounds::new();
        // a is a little faster: b, remembered from the last run, stays.
        for _ in 0..10 {
            assert_eq!(
                rounds.run(&mut choice, &net, &[("a", 30), ("b", 35)], &[]),
                None
            );
        }
        // A remembered relay that is no longer in the map is replaced at once.
        let mut gone = Hysteresis::resume(History::default(), "retired");
        let switch = rounds.run(&mut gone, &net, &[("a", 30), ("b", 35)], &[]);
        assert_eq!(switch, to("a", Reason::Unavailable, Some("retired")));
    }

    #[test]
    fn without_a_figure_for_the_current_relay_it_stays() {
        // The current relay's leg cannot be measured this run (no probe answer, no location):
        // nothing to compare with, so no latency switch, however good the other looks.
        let net = relays(&["a", "b"]);
        let mut choice = Hysteresis::resume(History::default(), "a");
        let mut rounds = Rounds::new();
        for _ in 0..10 {
            assert_eq!(rounds.run(&mut choice, &net, &[("b", 5)], &[]), None);
        }
    }

    #[test]
    fn median_of_the_samples() {
        let net = relays(&["a"]);
        let mut choice = Hysteresis::new(History::default());
        let mut rounds = Rounds::new();
        for rtt in [10, 90, 20, 30] {
            rounds.run(&mut choice, &net, &[("a", rtt)], &[]);
        }
        // 11, 91, 21, 31: the middle two are 21 and 31.
        assert_eq!(choice.typical_rtt("a"), Some(ms(26)));
        rounds.run(&mut choice, &net, &[("a", 40)], &[]);
        assert_eq!(choice.typical_rtt("a"), Some(ms(31)));
        assert_eq!(choice.typical_rtt("nobody"), None);
    }

    #[test]
    fn history_keeps_the_configured_number_of_samples() {
        let net = relays(&["a"]);
        let mut choice = Hysteresis::new(History {
            samples: 3,
            min_samples: 10, // more than kept: clamped to 3
            window: Duration::from_secs(60),
        });
        let mut rounds = Rounds::new();
        for rtt in [500, 500, 500, 10, 10] {
            rounds.run(&mut choice, &net, &[("a", rtt)], &[]);
        }
        // Only the last three (501, 11, 11) are kept.
        assert_eq!(choice.typical_rtt("a"), Some(ms(11)));
    }
}
