//! Heartbeat timing for the control channel.
//!
//! The relay sends a heartbeat every [`HEARTBEAT_INTERVAL`]; the control plane holds a relay to
//! be out of rotation once nothing has arrived for [`HEARTBEAT_TIMEOUT`]. Both are driven by an
//! explicit `now`, so the rules are tested on virtual time.

use std::time::{Duration, Instant};

/// Twice a second: geo DNS must stop handing out a dead relay within 3 s, and the timeout
/// below plus a publish has to fit in that.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Four heartbeats missed in a row: one lost packet, or a slow second, does not take a relay
/// out of rotation.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// The receiving side's view: when did the peer last speak?
#[derive(Debug, Clone)]
pub struct Liveness {
    last_heard: Instant,
    timeout: Duration,
}

impl Liveness {
    pub fn new(now: Instant, timeout: Duration) -> Self {
        Self {
            last_heard: now,
            timeout,
        }
    }

    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    pub fn is_alive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) < self.timeout
    }

    /// The instant at which the peer will be considered gone, if nothing more arrives.
    pub fn deadline(&self) -> Instant {
        self.last_heard + self.timeout
    }
}

/// The sending side: when is the next heartbeat due?
#[derive(Debug, Clone)]
pub struct HeartbeatSchedule {
    next: Instant,
    interval: Duration,
    seq: u64,
}

impl HeartbeatSchedule {
    pub fn new(now: Instant, interval: Duration) -> Self {
        Self {
            next: now + interval,
            interval,
            seq: 0,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Returns the sequence number to send if a heartbeat is due at `now`. A late wake-up sends
    /// one heartbeat, not a burst to catch up.
    pub fn poll(&mut self, now: Instant) -> Option<u64> {
        if now < self.next {
            return None;
        }
        self.next = now + self.interval;
        self.seq += 1;
        Some(self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peer_is_gone_after_timeout_without_heartbeats() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, HEARTBEAT_TIMEOUT);
        assert!(l.is_alive(t0 + HEARTBEAT_TIMEOUT - MS));
        assert!(!l.is_alive(t0 + HEARTBEAT_TIMEOUT));
        let later = t0 + Duration::from_secs(2);
        l.heard(later);
        assert!(l.is_alive(later + HEARTBEAT_TIMEOUT - MS));
        assert!(!l.is_alive(later + HEARTBEAT_TIMEOUT));
    }

    #[test]
    fn heard_never_moves_backwards() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0 + Duration::from_secs(10), HEARTBEAT_TIMEOUT);
        l.heard(t0);
        assert_eq!(
            l.deadline(),
            t0 + Duration::from_secs(10) + HEARTBEAT_TIMEOUT
        );
    }

    #[test]
    fn late_wakeup_sends_one_heartbeat() {
        let t0 = Instant::now();
        let mut s = HeartbeatSchedule::new(t0, HEARTBEAT_INTERVAL);
        assert_eq!(s.poll(t0), None);
        let late = t0 + HEARTBEAT_INTERVAL * 10;
        assert_eq!(s.poll(late), Some(1));
        assert_eq!(s.poll(late), None);
        assert_eq!(s.deadline(), late + HEARTBEAT_INTERVAL);
        assert_eq!(s.poll(late + HEARTBEAT_INTERVAL), Some(2));
    }

    #[test]
    fn a_dead_relay_is_noticed_with_time_to_spare_for_geo_dns() {
        // Geo DNS must drop a dead relay within 3 s: the timeout, plus the publisher's
        // quarter-second health tick, plus a push, must fit.
        assert!(HEARTBEAT_TIMEOUT + Duration::from_millis(500) < Duration::from_secs(3));
        assert!(HEARTBEAT_TIMEOUT >= HEARTBEAT_INTERVAL * 4);
    }
}
