//! Heartbeat timing for the control channel.
//!
//! The relay sends a heartbeat every [`HEARTBEAT_INTERVAL`]; the control plane holds a relay to
//! be out of rotation once nothing has arrived for [`HEARTBEAT_TIMEOUT`]. Both are driven by an
//! explicit `now`, so the rules are tested on virtual time.

use std::time::{Duration, Instant};

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

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

    #[test]
    fn peer_is_gone_after_timeout_without_heartbeats() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, HEARTBEAT_TIMEOUT);
        assert!(l.is_alive(t0 + Duration::from_millis(2999)));
        assert!(!l.is_alive(t0 + HEARTBEAT_TIMEOUT));
        l.heard(t0 + Duration::from_secs(2));
        assert!(l.is_alive(t0 + Duration::from_millis(4999)));
        assert!(!l.is_alive(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn heard_never_moves_backwards() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0 + Duration::from_secs(10), HEARTBEAT_TIMEOUT);
        l.heard(t0);
        assert_eq!(l.deadline(), t0 + Duration::from_secs(13));
    }

    #[test]
    fn late_wakeup_sends_one_heartbeat() {
        let t0 = Instant::now();
        let mut s = HeartbeatSchedule::new(t0, HEARTBEAT_INTERVAL);
        assert_eq!(s.poll(t0), None);
        assert_eq!(s.poll(t0 + Duration::from_secs(5)), Some(1));
        assert_eq!(s.poll(t0 + Duration::from_secs(5)), None);
        assert_eq!(s.deadline(), t0 + Duration::from_secs(6));
        assert_eq!(s.poll(t0 + Duration::from_secs(6)), Some(2));
    }
}
