//! The task that republishes the config every relay runs (a [`Snapshot`]).
//!
//! The publisher rebuilds the snapshot when an admin change wakes it, and checks relay health
//! four times a second, so that a relay going silent for 2 s, or coming back, reaches every
//! relay within a second. Each new snapshot gets the next
//! generation from the store, so generations keep growing across restarts.

use std::sync::Arc;
use std::time::Duration;

use sat_proto::control::RelayInfo;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::snapshot::{PublishRequest, Snapshot, Sources};
use crate::state::Shared;

const HEALTH_EVERY: Duration = Duration::from_millis(250);
/// Round trips, loads and the routing table in the pushed map are at most this old.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// A relay's round trip to the primary that moves this far (and by a quarter) is pushed
/// without waiting for [`REFRESH_EVERY`], at most once per [`MOVED_GAP`]: the first figures
/// after a relay connects are often tens of ms high while QUIC's estimate settles, and ranking
/// on them for 10 s sends clients and DNS answers to the wrong relay.
const MOVED_BY: Duration = Duration::from_millis(5);
const MOVED_GAP: Duration = Duration::from_secs(1);

/// Republishes until `stop`: at once for each request (see [`Shared::publish`]), and whenever
/// a relay's state changes.
pub(crate) async fn run(
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<Snapshot>>,
    mut requests: mpsc::UnboundedReceiver<PublishRequest>,
    mut sources: Sources,
    stop: CancellationToken,
) {
    let mut published_relays = tx.borrow().push.relays.clone();
    let mut published = comparable(&published_relays);
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting = Vec::new();
    let mut last_publish = tokio::time::Instant::now();
    loop {
        let woken = tokio::select! {
            Some(first) = requests.recv() => {
                // Every request taken here was sent after its change reached the store, so the
                // reload below includes them all.
                waiting.push(first);
                while let Ok(more) = requests.try_recv() {
                    waiting.push(more);
                }
                true
            }
            _ = tick.tick() => false,
            () = stop.cancelled() => return,
        };
        if woken {
            match Sources::load(&shared.store, shared.signer.verify_keys()).await {
                Ok(s) => sources = s,
                Err(e) => {
                    warn!("cannot reload config from the store; keeping the last one: {e}");
                    continue;
                }
            }
        }
        let relays = sources.relays(&shared.registry);
        let now = comparable(&relays);
        let since = last_publish.elapsed();
        let moved = since >= MOVED_GAP && round_trips_moved(&published_relays, &relays);
        if !woken && now == published && !moved && since < REFRESH_EVERY {
            continue;
        }
        let generation = match shared.store.bump_generation().await {
            Ok(g) => g,
            Err(e) => {
                warn!("cannot publish config: {e}");
                continue;
            }
        };
        log_changes(&published, &now);
        if woken || now != published {
            info!(
                generation,
                services = sources.services.len(),
                relays = relays.len(),
                "config published"
            );
        } else {
            debug!(generation, "relay round trips and loads refreshed");
        }
        published = now;
        published_relays.clone_from(&relays);
        last_publish = tokio::time::Instant::now();
        let routing = shared.registry.routing_table();
        tx.send_replace(Arc::new(sources.snapshot(generation, relays, routing)));
        for w in waiting.drain(..) {
            let _ = w.send(generation);
        }
    }
}

/// The relay map without round trips and loads, which change all the time and are not news
/// (they are refreshed every [`REFRESH_EVERY`]).
fn comparable(relays: &[RelayInfo]) -> Vec<RelayInfo> {
    relays
        .iter()
        .map(|r| RelayInfo {
            rtt_us: 0,
            load: 0.0,
            ..r.clone()
        })
        .collect()
}

/// Whether a relay's round trip to the primary was first measured, or moved by more than
/// [`MOVED_BY`] and a quarter, since `before` was pushed.
fn round_trips_moved(before: &[RelayInfo], after: &[RelayInfo]) -> bool {
    let floor = u64::try_from(MOVED_BY.as_micros()).unwrap_or(u64::MAX);
    after.iter().any(|r| {
        let old = before
            .iter()
            .find(|b| b.name == r.name)
            .map_or(0, |b| b.rtt_us);
        match (old, r.rtt_us) {
            (0, 0) => false,
            (0, _) | (_, 0) => true,
            (old, new) => old.abs_diff(new) > floor.max(old / 4),
        }
    })
}

fn log_changes(before: &[RelayInfo], after: &[RelayInfo]) {
    for r in after {
        let old = before.iter().find(|b| b.name == r.name).map(|b| b.state);
        if old != Some(r.state) {
            info!(relay = %r.name, region = %r.region, state = ?r.state, was = ?old, "relay state changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_proto::control::RelayState;

    fn relay(name: &str, rtt_ms: u64) -> RelayInfo {
        RelayInfo {
            name: name.to_owned(),
            region: "r".to_owned(),
            state: RelayState::Up,
            addresses: vec![],
            location: None,
            rtt_us: rtt_ms * 1000,
            load: 0.0,
            latency_url: None,
        }
    }

    #[test]
    fn a_first_or_lost_round_trip_is_news() {
        assert!(round_trips_moved(&[relay("a", 0)], &[relay("a", 30)]));
        assert!(round_trips_moved(&[relay("a", 30)], &[relay("a", 0)]));
        assert!(round_trips_moved(&[], &[relay("a", 30)]));
        assert!(!round_trips_moved(&[relay("a", 0)], &[relay("a", 0)]));
    }

    #[test]
    fn a_round_trip_must_move_by_5_ms_and_a_quarter() {
        // Settling after connect: 45 ms read at first, 25 ms true.
        assert!(round_trips_moved(&[relay("a", 45)], &[relay("a", 25)]));
        // Jitter on a long path: 4% is not news.
        assert!(!round_trips_moved(&[relay("a", 180)], &[relay("a", 187)]));
        // A quarter of a short path, but under 5 ms.
        assert!(!round_trips_moved(&[relay("a", 4)], &[relay("a", 8)]));
        // Only the relay that moved counts, whichever it is.
        let before = [relay("a", 10), relay("b", 100)];
        assert!(round_trips_moved(
            &before,
            &[relay("a", 10), relay("b", 140)]
        ));
        assert!(!round_trips_moved(
            &before,
            &[relay("a", 11), relay("b", 101)]
        ));
    }
}
