//! Relays connected to this replica, as their control channels report them: which uplinks are
//! up, when each last sent a heartbeat, and what it said. The durable half of a relay's record
//! (region, admin state, enrolment) lives in the store; this is the live half.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use quinn::Connection;
use sat_proto::control::{Heartbeat, Hello, Location, PeerRtt, RoutingTable};
use sat_proto::liveness::HEARTBEAT_TIMEOUT;
use sat_transport::metrics::{QuicCounters, QuicTally};
use tokio::time::Instant;

use crate::routing::{self, ClientRtts};

/// A relay's health as its uplinks show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A heartbeat arrived within [`HEARTBEAT_TIMEOUT`].
    Up,
    /// The relay itself said it is draining (it is shutting down).
    Draining,
    /// Connected but silent, or not connected.
    Down,
}

/// What one relay looks like right now.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub health: Health,
    pub version: String,
    pub addresses: Vec<String>,
    pub location: Option<Location>,
    pub latency_url: Option<String>,
    pub uplinks: u32,
    pub since_heartbeat: Option<Duration>,
    /// The best uplink's round trip.
    pub rtt_us: Option<u64>,
    pub open_streams: u64,
    pub user_connections: u64,
    pub load: Option<f32>,
}

struct Uplink {
    conn: Connection,
    /// What of the connection's QUIC figures `/metrics` has counted.
    tally: QuicTally,
    last_heartbeat: Option<Instant>,
    beat: Option<Heartbeat>,
}

struct Live {
    version: String,
    addresses: Vec<String>,
    location: Option<Location>,
    latency_url: Option<String>,
    uplinks: HashMap<usize, Uplink>,
}

#[derive(Default)]
pub struct Registry {
    relays: Mutex<HashMap<String, Live>>,
    /// What clients reported to relays, per network.
    client_rtts: Mutex<ClientRtts>,
}

impl Registry {
    /// Records an uplink whose Hello was accepted.
    pub fn connected(&self, hello: &Hello, conn: &Connection) {
        let mut relays = self.lock();
        let live = relays.entry(hello.relay.clone()).or_insert_with(|| Live {
            version: String::new(),
            addresses: Vec::new(),
            location: None,
            latency_url: None,
            uplinks: HashMap::new(),
        });
        live.version.clone_from(&hello.version);
        live.addresses.clone_from(&hello.addresses);
        live.location = hello.location;
        live.latency_url.clone_from(&hello.latency_url);
        live.uplinks.insert(
            conn.stable_id(),
            Uplink {
                conn: conn.clone(),
                tally: QuicTally::default(),
                // The Hello counts as the first sign of life.
                last_heartbeat: Some(Instant::now()),
                beat: None,
            },
        );
    }

    pub fn heartbeat(&self, relay: &str, conn: &Connection, mut beat: Heartbeat) {
        let reports = std::mem::take(&mut beat.client_rtts);
        if !reports.is_empty() {
            if let Ok(mut c) = self.client_rtts.lock() {
                c.add(reports, Instant::now());
            }
        }
        let mut relays = self.lock();
        if let Some(up) = relays
            .get_mut(relay)
            .and_then(|l| l.uplinks.get_mut(&conn.stable_id()))
        {
            up.last_heartbeat = Some(Instant::now());
            up.beat = Some(beat);
        }
    }

    /// Forgets an uplink that closed, counting its last QUIC figures into `quic`.
    pub fn disconnected(&self, relay: &str, conn: &Connection, quic: &QuicCounters) {
        let mut relays = self.lock();
        if let Some(live) = relays.get_mut(relay) {
            if let Some(up) = live.uplinks.remove(&conn.stable_id()) {
                up.tally.fold(&up.conn, quic);
            }
        }
    }

    /// Counts every connected uplink's QUIC figures since the last call into `quic`.
    pub fn fold_quic(&self, quic: &QuicCounters) {
        for live in self.lock().values() {
            for up in live.uplinks.values() {
                up.tally.fold(&up.conn, quic);
            }
        }
    }

    /// Uplinks connected now, over all relays.
    pub fn uplink_count(&self) -> usize {
        self.lock().values().map(|l| l.uplinks.len()).sum()
    }

    /// Closes every uplink of `relay` with `reason`. Returns how many there were.
    pub fn close_all(&self, relay: &str, reason: &str) -> usize {
        let conns: Vec<Connection> = self
            .lock()
            .get(relay)
            .map(|l| l.uplinks.values().map(|u| u.conn.clone()).collect())
            .unwrap_or_default();
        for conn in &conns {
            conn.close(sat_proto::close::REFUSED.into(), reason.as_bytes());
        }
        conns.len()
    }

    pub fn view(&self, relay: &str, now: Instant) -> Option<LiveView> {
        let relays = self.lock();
        let live = relays.get(relay)?;
        let since = live
            .uplinks
            .values()
            .filter_map(|u| u.last_heartbeat)
            .max()
            .map(|t| now.saturating_duration_since(t));
        let beats: Vec<&Heartbeat> = live
            .uplinks
            .values()
            .filter_map(|u| u.beat.as_ref())
            .collect();
        let draining = beats.iter().any(|b| b.draining);
        let alive = since.is_some_and(|s| s <= HEARTBEAT_TIMEOUT);
        let health = match (alive, draining) {
            (false, _) => Health::Down,
            (true, true) => Health::Draining,
            (true, false) => Health::Up,
        };
        let rtt_us = live
            .uplinks
            .values()
            .map(|u| u.conn.rtt().as_micros() as u64)
            .min();
        // Every uplink reports the relay-wide counts; take the latest.
        let latest = beats.iter().max_by_key(|b| b.seq);
        Some(LiveView {
            health,
            version: live.version.clone(),
            addresses: live.addresses.clone(),
            location: live.location,
            latency_url: live.latency_url.clone(),
            uplinks: live.uplinks.len() as u32,
            since_heartbeat: since,
            rtt_us,
            open_streams: latest.map_or(0, |b| b.open_streams),
            user_connections: latest.map_or(0, |b| b.user_connections),
            load: latest.map(|b| b.load),
        })
    }

    /// The routing table as of now: relay-to-relay round trips from each relay's latest
    /// heartbeat, and the clients' reports.
    pub fn routing_table(&self) -> RoutingTable {
        let peers: Vec<(String, Vec<PeerRtt>)> = self
            .lock()
            .iter()
            .filter_map(|(name, live)| {
                let latest = live
                    .uplinks
                    .values()
                    .filter_map(|u| u.beat.as_ref())
                    .max_by_key(|b| b.seq)?;
                Some((name.clone(), latest.peer_rtts.clone()))
            })
            .collect();
        let links = routing::peer_links(&peers);
        match self.client_rtts.lock() {
            Ok(clients) => routing::table(links, &clients),
            Err(_) => routing::table(links, &ClientRtts::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }
}
