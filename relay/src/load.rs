//! How busy the relay is, for the heartbeat: the share of the machine's CPU time the process
//! used since the previous heartbeat. The control plane demotes relays that run hot.

use std::sync::Mutex;
use std::time::Instant;

/// Linux reports process CPU time in `/proc` in USER_HZ ticks, which is 100 on every
/// architecture (it is part of the kernel's ABI, independent of the scheduler's HZ).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Default)]
pub struct LoadMeter {
    last: Mutex<Option<(u64, Instant)>>,
}

impl LoadMeter {
    /// Busy fraction in 0.0..=1.0 since the last call; 0.0 on the first call or where
    /// `/proc` is not available.
    pub fn sample(&self) -> f32 {
        let Some(ticks) = cpu_ticks() else {
            return 0.0;
        };
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.replace((ticks, now));
        let Some((then_ticks, then)) = previous else {
            return 0.0;
        };
        let wall = now.duration_since(then).as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if wall <= 0.0 {
            return 0.0;
        }
        let used = ticks.saturating_sub(then_ticks) as f64 / TICKS_PER_SECOND;
        (used / (wall * cores)).clamp(0.0, 1.0) as f32
    }
}

/// User plus system CPU ticks of this process, from `/proc/self/stat`.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_ticks(&stat)
}

fn parse_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')'
    // are plain. utime and stime are fields 14 and 15, so 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_past_an_awkward_name() {
        let stat = "1234 (sat (relay) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 70 30 0 0 20 0 8 0";
        assert_eq!(parse_ticks(stat), Some(100));
        assert_eq!(parse_ticks("garbage"), None);
    }

    #[test]
    fn load_stays_in_range() {
        let meter = LoadMeter::default();
        assert_eq!(meter.sample(), 0.0);
        let x: u64 = (0..2_000_000u64).map(|i| i ^ (i >> 3)).sum();
        assert!(x > 0);
        let load = meter.sample();
        assert!((0.0..=1.0).contains(&load), "{load}");
    }
}
