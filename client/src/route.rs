//! The relays a client uses, in order: the chosen one first, then the warm standby (and any
//! others). New tunnels go to the first relay that is not known to be gone; one that cannot be
//! reached quickly gets company from the next (a staggered race, as in Happy Eyeballs), so a
//! dead relay costs a new tunnel a fraction of a second, not a timeout.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, info, warn};

use crate::{ClientError, Dialer, Transport};

/// How long a relay gets to take a tunnel before the next one is tried beside it, when there
/// is no measured round trip to go by.
const DEFAULT_STAGGER: Duration = Duration::from_millis(300);
/// Bounds on the stagger: never so short that a live relay loses the race to its standby for
/// being a few milliseconds slow, never so long that a dead one is felt.
const MIN_STAGGER: Duration = Duration::from_millis(100);
const MAX_STAGGER: Duration = Duration::from_millis(500);

/// One relay in a route: how to reach it, and what it is called in the relay map.
pub struct Hop {
    pub name: String,
    pub dialer: Dialer,
    /// The client's measured round trip to it, if known; sets how long it gets to answer.
    pub rtt: Option<Duration>,
}

/// The relays to use, best first. A long-running client re-ranks them from time to time
/// ([`Route::reorder`]); tunnels already open stay where they are.
pub struct Route {
    hops: RwLock<Vec<Arc<Hop>>>,
}

impl Route {
    pub fn new(hops: Vec<Hop>) -> Self {
        Self {
            hops: RwLock::new(hops.into_iter().map(Arc::new).collect()),
        }
    }

    /// The relays, best first, by name.
    pub fn names(&self) -> Vec<String> {
        self.hops().iter().map(|h| h.name.clone()).collect()
    }

    /// Puts the relays in a new order. A relay already in the route keeps its dialer, and so
    /// its connection; `new` has the hops for the others. Names without a hop are dropped.
    pub fn reorder(&self, order: &[String], new: Vec<Hop>) {
        let old = self.hops();
        let mut new: Vec<Arc<Hop>> = new.into_iter().map(Arc::new).collect();
        let hops: Vec<Arc<Hop>> = order
            .iter()
            .filter_map(|name| match old.iter().find(|h| &h.name == name) {
                Some(hop) => Some(hop.clone()),
                None => {
                    let i = new.iter().position(|h| &h.name == name)?;
                    Some(new.swap_remove(i))
                }
            })
            .collect();
        let standby_changed = old.get(1).map(|h| &h.name) != hops.get(1).map(|h| &h.name);
        if hops.is_empty() {
            return;
        }
        if let Ok(mut slot) = self.hops.write() {
            *slot = hops;
        }
        if standby_changed {
            self.warm_standby();
        }
    }

    /// Whether the relay called `name` is known to be gone (see [`Dialer::is_gone`]).
    pub fn is_gone(&self, name: &str) -> bool {
        let Ok(hops) = self.hops.read() else {
            return false;
        };
        hops.iter().any(|h| h.name == name && h.dialer.is_gone())
    }

    /// A tunnel through `name` on `conn` heard nothing back (see [`Dialer::doubt`]).
    pub fn doubt(&self, name: &str, conn: &quinn::Connection, heard: u64) {
        if let Ok(hops) = self.hops.read() {
            for hop in hops.iter().filter(|h| h.name == name) {
                hop.dialer.doubt(conn, heard);
            }
        }
    }

    fn hops(&self) -> Vec<Arc<Hop>> {
        self.hops.read().map(|h| h.clone()).unwrap_or_default()
    }

    /// Connects to the standby (the second relay) in the background, so that a failover
    /// finds a connection ready. The first relay connects with the first tunnel.
    pub fn warm_standby(&self) {
        let Some(hop) = self.hops().into_iter().nth(1) else {
            return;
        };
        tokio::spawn(async move {
            match hop.dialer.warm().await {
                Ok(()) => debug!(relay = %hop.name, "standby relay connected"),
                Err(e) => info!(relay = %hop.name, "standby relay not reachable: {e}"),
            }
        });
    }

    /// Opens a tunnel to `service` through the first relay that takes it. Relays known to be
    /// gone are skipped; a relay that has not connected within its stagger is raced by the
    /// next one; the first tunnel opened wins. With every relay failing, the first relay's
    /// error is returned.
    pub async fn open(&self, service: &str) -> Result<(Transport, String), ClientError> {
        let all = self.hops();
        let mut hops: Vec<&Arc<Hop>> = all.iter().filter(|h| !h.dialer.is_gone()).collect();
        if hops.is_empty() {
            // Everything was silent a moment ago; try them all again rather than give up.
            hops = all.iter().collect();
        }
        let Some(&first) = hops.first() else {
            return Err(ClientError::Probe("no relay to use".into()));
        };
        let mut attempts = FuturesUnordered::new();
        attempts.push(attempt(0, first, service));
        let mut started = 1;
        let mut errors: Vec<(usize, ClientError)> = Vec::new();
        while !attempts.is_empty() {
            let wait = stagger(hops[started - 1].rtt);
            tokio::select! {
                Some((i, result)) = attempts.next() => match result {
                    Ok(transport) => {
                        if i > 0 {
                            warn!(relay = %hops[i].name, skipped = %hops[0].name, "using the standby relay: the chosen one did not answer in time");
                        }
                        return Ok((transport, hops[i].name.clone()));
                    }
                    Err(e) => {
                        warn!(relay = %hops[i].name, "{e}");
                        errors.push((i, e));
                        if attempts.is_empty() && started < hops.len() {
                            attempts.push(attempt(started, hops[started], service));
                            started += 1;
                        }
                    }
                },
                () = tokio::time::sleep(wait), if started < hops.len() => {
                    attempts.push(attempt(started, hops[started], service));
                    started += 1;
                }
            }
        }
        errors.sort_by_key(|(i, _)| *i);
        Err(errors
            .into_iter()
            .next()
            .map(|(_, e)| e)
            .unwrap_or_else(|| ClientError::Probe("no relay to use".into())))
    }
}

async fn attempt(i: usize, hop: &Hop, service: &str) -> (usize, Result<Transport, ClientError>) {
    (i, hop.dialer.open(service).await)
}

/// How long a relay gets before the next one joins: three of its round trips (a QUIC
/// handshake takes one, a lost first packet another), within bounds.
fn stagger(rtt: Option<Duration>) -> Duration {
    rtt.map_or(DEFAULT_STAGGER, |rtt| {
        (rtt * 3).clamp(MIN_STAGGER, MAX_STAGGER)
    })
}
