//! State shared by every task of one relay process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use quinn::Connection;
use sat_proto::control::{ConfigPush, Heartbeat, Location, RelayState};
use sat_transport::metrics::{OpenStream, StreamClass};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::pool::Uplinks;
use crate::routes::Routes;

pub struct Relay {
    pub name: String,
    pub region: String,
    /// The name in the control plane's certificate.
    pub server_name: String,
    pub uplinks: Uplinks,
    /// `None` until the first config push arrives.
    pub routes: watch::Sender<Option<Arc<Routes>>>,
    /// Cancelled when the relay starts draining.
    pub draining: CancellationToken,
    /// Every user connection in flight, so that a drain can wait for them.
    pub users: TaskTracker,
    open_streams: AtomicU64,
    ready: AtomicBool,
    /// The network map lists this relay as draining (an operator drained it).
    listed_draining: AtomicBool,
    /// Announced in Hello: where users reach this relay and where it stands.
    pub addresses: Vec<String>,
    pub location: Option<Location>,
    pub latency_url: Option<String>,
    load: crate::load::LoadMeter,
    /// Why the control plane last refused this relay for good, until an uplink gets in.
    refusal: std::sync::Mutex<Option<String>>,
    /// Bumped when the relay's certificate is renewed; uplinks then reconnect with it.
    pub cert_epoch: watch::Sender<u64>,
    /// What `/metrics` shows.
    pub metrics: crate::metrics::Metrics,
    /// Round trips to other relays, and clients' reports, for the next heartbeat.
    pub measurements: crate::measure::Measurements,
}

impl Relay {
    pub fn new(name: String, region: String, server_name: String, uplinks: usize) -> Self {
        let metrics = crate::metrics::Metrics::new(uplinks);
        Self {
            name,
            region,
            server_name,
            uplinks: Uplinks::new(uplinks, metrics.resent.clone(), metrics.not_resent.clone()),
            metrics,
            routes: watch::channel(None).0,
            draining: CancellationToken::new(),
            users: TaskTracker::new(),
            open_streams: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            listed_draining: AtomicBool::new(false),
            addresses: Vec::new(),
            location: None,
            latency_url: None,
            load: crate::load::LoadMeter::default(),
            refusal: std::sync::Mutex::new(None),
            measurements: crate::measure::Measurements::default(),
            cert_epoch: watch::channel(0).0,
        }
    }

    pub fn routes(&self) -> Option<Arc<Routes>> {
        self.routes.borrow().clone()
    }

    pub fn apply(&self, push: &ConfigPush) {
        let me = push.relays.iter().find(|r| r.name == self.name);
        let listed_draining = me.is_some_and(|r| r.state == RelayState::Draining);
        if self
            .listed_draining
            .swap(listed_draining, Ordering::Relaxed)
            != listed_draining
            && !self.draining.is_cancelled()
        {
            if listed_draining {
                info!("an operator drained this relay: it is out of rotation, and serves who still comes");
            } else {
                info!("this relay is back in rotation");
            }
        }
        self.routes.send_if_modified(|current| {
            // A push older than what we run (from a lagging replica) changes nothing.
            if current
                .as_ref()
                .is_some_and(|r| push.generation <= r.generation)
            {
                return false;
            }
            let new = Routes::from_push(push);
            // Periodic refreshes of round trips and loads are not worth a line each.
            if current.as_ref().is_some_and(|old| old.same_news(&new)) {
                debug!(generation = push.generation, "config refreshed");
            } else {
                info!(
                    generation = push.generation,
                    services = push.services.len(),
                    "config applied"
                );
            }
            *current = Some(Arc::new(new));
            true
        });
    }

    /// Logs `relay ready` the first time an uplink is up with a config.
    pub fn note_ready(&self) {
        if self.routes.borrow().is_some() && !self.ready.swap(true, Ordering::Relaxed) {
            info!(relay = %self.name, region = %self.region, "relay ready");
        }
    }

    /// Records (or clears) the control plane's refusal of this relay.
    pub fn refused(&self, reason: Option<String>) {
        if let Ok(mut r) = self.refusal.lock() {
            *r = reason;
        }
    }

    /// Whether the relay should get new users: `Err` says why not, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.is_cancelled() {
            return Err("draining: the relay is shutting down".into());
        }
        if self.listed_draining.load(Ordering::Relaxed) {
            return Err("drained by an operator (sat admin relays resume NAME)".into());
        }
        if self.routes.borrow().is_none() {
            return Err("no config from the control plane yet".into());
        }
        if !self.uplinks.any_alive() {
            let refusal = self.refusal.lock().ok().and_then(|r| r.clone());
            return Err(match refusal {
                Some(r) => format!("refused by the control plane: {r}"),
                None => "no uplink to the control plane is up".into(),
            });
        }
        Ok(())
    }

    pub fn heartbeat(&self, seq: u64, conn: &Connection) -> Heartbeat {
        let generation = self.routes.borrow().as_ref().map_or(0, |r| r.generation);
        Heartbeat {
            seq,
            open_streams: self.open_streams.load(Ordering::Relaxed),
            user_connections: self.users.len() as u64,
            rtt_us: conn.rtt().as_micros() as u64,
            generation,
            draining: self.draining.is_cancelled(),
            load: self.load.sample(),
            peer_rtts: self.measurements.peer_rtts(),
            client_rtts: self.measurements.take_client_rtts(),
        }
    }

    /// Counts a stream of `class` to the control plane, for heartbeats and `/metrics`, for as
    /// long as the guard lives.
    pub fn stream_guard(self: &Arc<Self>, class: StreamClass) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            relay: self.clone(),
            _open: self.metrics.streams.open(class),
        }
    }
}

pub struct StreamGuard {
    relay: Arc<Relay>,
    _open: OpenStream,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.relay.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}
