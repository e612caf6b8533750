//! The wall clock: the one place Satellite reads the system's time of day.
//!
//! The protocol itself takes `now` as an argument; this is where callers get it when it must
//! be a wall-clock time shared with other machines (token and certificate lifetimes, the
//! store's timestamps, a cache's age across restarts). Durations and deadlines within one
//! process use `tokio::time` instead, which tests can pause.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the unix epoch. A clock set before 1970 reads as zero, which makes every token
/// look issued in the future: refused, with a message that names the clock.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Unix seconds: access tokens, enrolment tokens and certificate lifetimes.
pub fn unix_seconds() -> u64 {
    unix_now().as_secs()
}

/// Unix milliseconds: the control plane store's unit of time, and the admin API's.
pub fn unix_millis() -> i64 {
    i64::try_from(unix_now().as_millis()).unwrap_or(i64::MAX)
}
