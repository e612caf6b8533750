//! The admin API's JSON bodies. Times are unix milliseconds; durations are humantime text
//! ("8h"). Optional fields are left out when empty, and a missing field decodes as its
//! default, so a client and a server one version apart still understand each other.

use serde::{Deserialize, Serialize};

/// The body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

impl ApiError {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}

/// A relay as the control plane sees it: what the store knows, joined with its live uplinks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayView {
    pub name: String,
    pub region: String,
    /// `up`, `down` or `draining` for an active relay (by its uplinks); `drained` or `revoked`
    /// when an operator said so.
    pub state: String,
    /// None: no heartbeat since the control plane started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms_ago: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    #[serde(default)]
    pub streams: u64,
    #[serde(default)]
    pub connections: u64,
    /// Share of its machine's CPU the relay used over the last heartbeat, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f32>,
    #[serde(default)]
    pub uplinks: u32,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub enrolled_at: i64,
}

/// Asks for a one-time relay enrolment token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRelayToken {
    pub region: String,
    /// The name the relay gets; None lets the relay propose one (or the control plane pick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How long the token stays redeemable, such as "1h"; None takes the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// A new relay enrolment token. `token` is shown this once: the store keeps only a hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayTokenView {
    pub token: String,
    pub id: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub expires_at: i64,
}

/// A service: what `POST /v1/services` takes (without `created_at`) and what the API shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    /// `tcp` or `http`.
    pub kind: String,
    /// host:port the control plane dials.
    pub backend: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// `public` or `token`.
    #[serde(default = "public")]
    pub access: String,
    #[serde(default)]
    pub created_at: i64,
}

fn public() -> String {
    "public".into()
}

/// Asks for a service access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateAccessToken {
    pub services: Vec<String>,
    /// Such as "8h" (the server's default when None).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// A service access token. `token` is set only in the answer that creates it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessTokenView {
    pub id: String,
    pub services: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One admin change, newest first in `GET /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditView {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// The fleet status: what `GET /api/status` answers and the `/status` page shows, built once
/// per request. Times are unix milliseconds, round trips microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// When the control plane built this view; the page's "now".
    pub generated_at: i64,
    /// The generation of the config last pushed to relays.
    pub generation: u64,
    /// The control plane's replicas, this one included (one row until replicas share a store).
    pub replicas: Vec<ReplicaView>,
    pub store: StoreView,
    /// Every relay that is not revoked, by name.
    pub relays: Vec<StatusRelay>,
    pub routing: RoutingView,
    pub services: Vec<ServiceView>,
    /// The last admin changes, newest first.
    pub audit: Vec<AuditView>,
    /// What could not be read while building this view (such as the store being unavailable);
    /// the sections it would have filled are left empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One control-plane replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaView {
    /// `[control] name`.
    pub name: String,
    /// Where relays' uplinks reach it (QUIC, UDP).
    pub uplink_address: String,
    /// Its admin API and status page.
    pub admin_address: String,
    pub version: String,
    /// `serving`, or `draining` once it is shutting down.
    pub state: String,
    /// Whether it holds the leader lease (singleton jobs run there).
    pub leader: bool,
    /// Whether it is the replica that answered.
    pub this: bool,
}

/// The store the control plane keeps its durable state in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreView {
    /// `sqlite`.
    pub kind: String,
    /// Where it is: a file path for SQLite.
    pub location: String,
    /// `read-write`, or why it is not.
    pub mode: String,
    /// The highest migration applied, if the store answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// Why the store did not answer, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A relay on the status page: its [`RelayView`], and when its client certificate expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusRelay {
    #[serde(flatten)]
    pub relay: RelayView,
    /// The expiry of the newest certificate the control plane's CA issued to it; None if it
    /// holds none (revoked, or its certificates were forgotten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_at: Option<i64>,
}

/// Which relay sample client networks are sent to, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutingView {
    /// Whether a GeoIP database places clients (`[dns]` is configured).
    pub geoip: bool,
    /// How the samples were ranked, in a sentence.
    pub basis: String,
    pub samples: Vec<RouteSample>,
    /// Relays the ranking leaves out (down or draining), with their state.
    #[serde(default)]
    pub left_out: Vec<LeftOut>,
}

/// A relay no client is sent to, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeftOut {
    pub name: String,
    pub state: String,
}

/// One sample network and the relays it is sent to, best first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteSample {
    /// An address or a network, such as `81.2.69.142` or `175.16.199.0/24`; `any` when no
    /// GeoIP database places clients.
    pub network: String,
    /// Where GeoIP places it, or what it is ("clients reported round trips").
    pub place: String,
    /// Whether clients of its /24 or /48 reported round trips to relays, which then rank it.
    pub measured: bool,
    /// The relay it is sent to; None when no relay takes new users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// Why, in a sentence.
    pub reason: String,
    /// The ranking, best first (at most a few relays).
    pub ranking: Vec<RankedRelay>,
}

/// A relay in a sample's ranking, with the figures it was ranked by.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankedRelay {
    pub name: String,
    pub region: String,
    /// The client's leg: `measured`, `estimated` (from distance, bounded by the relays' round
    /// trips to each other) or `unknown`.
    pub client_rtt_source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rtt_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_rtt_us: Option<u64>,
    /// The two legs' sum, if both are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end_us: Option<u64>,
    /// Load above the threshold: ranked after every relay that is not.
    #[serde(default)]
    pub overloaded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_defaults_to_public_and_no_hostnames() -> Result<(), serde_json::Error> {
        let s: ServiceView =
            serde_json::from_str(r#"{"name":"ssh","kind":"tcp","backend":"127.0.0.1:22"}"#)?;
        assert_eq!(s.access, "public");
        assert!(s.hostnames.is_empty());
        assert_eq!(s.created_at, 0);
        Ok(())
    }

    #[test]
    fn absent_options_are_left_out() -> Result<(), serde_json::Error> {
        let json = serde_json::to_string(&CreateRelayToken {
            region: "eu-west".into(),
            name: None,
            ttl: None,
        })?;
        assert_eq!(json, r#"{"region":"eu-west"}"#);
        Ok(())
    }
}
