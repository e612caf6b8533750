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
