//! How the control plane describes its fleet: the rule that names a relay's state, the views
//! the admin API answers with, and the whole [`StatusView`] behind `/status` and `/api/status`.
//!
//! [`gather`] reads the store (relays, certificates, services, the audit log), the registry
//! (uplinks, heartbeats), and the relay map last published. A store that does not answer
//! leaves its sections empty and says so in `problems`, so the page still shows the live half
//! of the fleet when it is most wanted.
//!
//! - `routes`: the routing picture, a pure function of the relay map and the GeoIP database.

mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;

use sat_proto::clock;
use sat_proto::control::Access;
use sat_routing::map::dns_table;
use tokio::time::Instant;

use crate::admin::api::{
    AuditView, RelayView, ReplicaView, ServiceView, StatusRelay, StatusView, StoreView,
};
use crate::registry::{Health, Registry};
use crate::state::Shared;
use crate::store::{AuditRecord, RelayAdminState, RelayRecord, ServiceRecord, StoreError};

/// How many admin changes the page lists.
const AUDIT_SHOWN: u32 = 10;

/// A relay's state as the admin API and the status page name it: what an operator said
/// (`revoked`, `drained`) first, then what its uplinks show (`up`, `draining`, `down`).
pub(crate) fn relay_state(admin: RelayAdminState, live: Option<Health>) -> &'static str {
    match (admin, live) {
        (RelayAdminState::Revoked, _) => "revoked",
        (RelayAdminState::Drained, _) => "drained",
        (_, Some(Health::Up)) => "up",
        (_, Some(Health::Draining)) => "draining",
        (_, Some(Health::Down) | None) => "down",
    }
}

/// A relay as the store knows it, joined with its live uplinks.
pub(crate) fn relay_view(
    r: &RelayRecord,
    registry: &Registry,
    now: Instant,
    now_ms: i64,
) -> RelayView {
    let live = registry.view(&r.name, now);
    let state = relay_state(r.state, live.as_ref().map(|l| l.health));
    let last = live
        .as_ref()
        .and_then(|l| l.since_heartbeat)
        .map(|d| d.as_millis() as u64)
        .or_else(|| r.last_seen_at.map(|t| (now_ms - t).max(0) as u64));
    RelayView {
        name: r.name.clone(),
        region: r.region.clone(),
        state: state.into(),
        last_heartbeat_ms_ago: last,
        rtt_us: live.as_ref().and_then(|l| l.rtt_us),
        streams: live.as_ref().map_or(0, |l| l.open_streams),
        connections: live.as_ref().map_or(0, |l| l.user_connections),
        load: live.as_ref().and_then(|l| l.load),
        uplinks: live.as_ref().map_or(0, |l| l.uplinks),
        version: live
            .as_ref()
            .map_or_else(|| r.version.clone(), |l| l.version.clone()),
        addresses: live.map_or_else(|| r.addresses.clone(), |l| l.addresses),
        enrolled_at: r.enrolled_at,
    }
}

pub(crate) fn service_view(s: &ServiceRecord) -> ServiceView {
    ServiceView {
        name: s.name.clone(),
        kind: s.kind.to_string(),
        backend: s.backend.clone(),
        hostnames: s.hostnames.clone(),
        access: match s.access {
            Access::Public => "public".into(),
            Access::Token => "token".into(),
        },
        created_at: s.created_at,
    }
}

pub(crate) fn audit_view(e: AuditRecord) -> AuditView {
    AuditView {
        at: e.at,
        actor: e.actor,
        action: e.action,
        target: e.target,
        detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::String(e.detail)),
    }
}

/// The whole status view, as of now.
pub(crate) async fn gather(shared: &Shared) -> StatusView {
    let (now, now_ms) = (Instant::now(), clock::unix_millis());
    let mut problems = Vec::new();
    let schema_version = or_note(
        shared.store.schema_version().await.map(Some),
        "the store does not answer",
        &mut problems,
    );
    let store_error = problems.first().cloned();
    let expiries: HashMap<String, i64> = or_note(
        shared.store.relay_cert_expiries().await,
        "cannot read relay certificates",
        &mut problems,
    );
    let records = or_note(
        shared.store.relays().await,
        "cannot read relays",
        &mut problems,
    );
    let relays: Vec<StatusRelay> = records
        .iter()
        .filter(|r| r.state != RelayAdminState::Revoked)
        .map(|r| StatusRelay {
            relay: relay_view(r, &shared.registry, now, now_ms),
            cert_expires_at: expiries.get(&r.name).copied(),
        })
        .collect();
    let services = or_note(
        shared.store.services().await,
        "cannot read services",
        &mut problems,
    )
    .iter()
    .map(service_view)
    .collect();
    let audit = or_note(
        shared.store.audit_log(AUDIT_SHOWN).await,
        "cannot read the audit log",
        &mut problems,
    )
    .into_iter()
    .map(audit_view)
    .collect();

    let snapshot = shared.snapshot.borrow().clone();
    let table = dns_table(&snapshot.push.relays, &snapshot.push.routing);
    let measured: Vec<String> = snapshot
        .push
        .routing
        .networks
        .iter()
        .map(|n| n.network.clone())
        .collect();
    let left_out = relays
        .iter()
        .filter(|r| r.relay.state != "up")
        .map(|r| (r.relay.name.clone(), r.relay.state.clone()))
        .collect();
    let routing = routes::picture(&table, shared.geoip.as_deref(), &measured, left_out);

    let replica = ReplicaView {
        name: shared.control.name.clone(),
        uplink_address: address(shared.listening.uplink),
        admin_address: address(shared.listening.admin),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state: if shared.draining.is_cancelled() {
            "draining"
        } else {
            "serving"
        }
        .to_owned(),
        // One replica, with the store to itself: it is the leader. Replicas sharing a store
        // will take this from the lease.
        leader: true,
        this: true,
    };
    let store = StoreView {
        kind: shared.store.kind().to_owned(),
        location: shared.store.location(),
        mode: if store_error.is_none() {
            "read-write"
        } else {
            "unavailable"
        }
        .to_owned(),
        schema_version,
        error: store_error,
    };
    StatusView {
        generated_at: now_ms,
        generation: snapshot.push.generation,
        replicas: vec![replica],
        store,
        relays,
        routing,
        services,
        audit,
        problems,
    }
}

fn address(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

/// The value, or the default with a line in `problems` saying what could not be read.
fn or_note<T: Default>(result: Result<T, StoreError>, what: &str, problems: &mut Vec<String>) -> T {
    result.unwrap_or_else(|e| {
        problems.push(format!("{what}: {e}"));
        T::default()
    })
}
