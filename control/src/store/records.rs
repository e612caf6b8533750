//! The rows of the store as Rust values. All `i64` times are unix milliseconds.

use std::fmt;

use sat_proto::control::Access;
use sat_proto::stream::StreamKind;

/// What the operator has decided about a relay. Whether it is up or down right now is not stored:
/// that is live state of its uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAdminState {
    /// Takes traffic.
    Active,
    /// Kept enrolled but sent no new traffic.
    Drained,
    /// Its certificates are no longer accepted.
    Revoked,
}

impl RelayAdminState {
    /// The text stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Drained => "drained",
            Self::Revoked => "revoked",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "drained" => Some(Self::Drained),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl fmt::Display for RelayAdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An enrolled relay.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayRecord {
    pub name: String,
    pub region: String,
    pub state: RelayAdminState,
    /// The software version it last reported.
    pub version: String,
    /// Public `host:port` or IPs users reach it at, as it last reported them.
    pub addresses: Vec<String>,
    /// Latitude and longitude in degrees.
    pub location: Option<(f64, f64)>,
    pub enrolled_at: i64,
    pub last_seen_at: Option<i64>,
    pub state_changed_at: i64,
}

/// A one-time relay enrolment token. Only the hash of its secret is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayTokenRecord {
    /// 16 lowercase hex characters.
    pub id: String,
    /// sha256 of the secret text, lowercase hex.
    pub secret_hash: String,
    /// The region the enrolled relay joins.
    pub region: String,
    /// The name the relay gets; `None` lets the relay propose one.
    pub name: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// The relay the token enrolled.
    pub used_by: Option<String>,
}

impl fmt::Debug for RelayTokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayTokenRecord")
            .field("id", &self.id)
            .field("secret_hash", &format_args!("***"))
            .field("region", &self.region)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .field("used_by", &self.used_by)
            .finish()
    }
}

/// Why an enrolment token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemRefusal {
    /// No token has this id.
    Unknown,
    /// The id exists but the secret does not match it.
    WrongSecret,
    /// Already redeemed, at `at` by relay `by`.
    Used { at: i64, by: String },
    /// Expired at `at`.
    Expired { at: i64 },
}

impl fmt::Display for RedeemRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // These go back to the relay's operator, who fixes them by asking for a new token.
        match self {
            Self::Unknown => f.write_str("unknown enrolment token; ask for a new one"),
            Self::WrongSecret => f.write_str(
                "enrolment token secret does not match; copy the whole token or ask for a new one",
            ),
            Self::Used { by, .. } => write!(
                f,
                "enrolment token already used by relay {by}; tokens work once, ask for a new one"
            ),
            Self::Expired { .. } => f.write_str("enrolment token expired; ask for a new one"),
        }
    }
}

/// A service the relays expose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub name: String,
    pub kind: StreamKind,
    /// Where the control plane dials, `host:port`.
    pub backend: String,
    pub hostnames: Vec<String>,
    pub access: Access,
    pub created_at: i64,
}

/// A service access token that was issued. The token text is not kept, only what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRecord {
    /// The token's `jti`: 16 lowercase hex characters.
    pub id: String,
    pub services: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// An Ed25519 key that signs access tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// The `kid` in the tokens it signs.
    pub id: String,
    /// The PKCS#8 document holding the private key.
    pub pkcs8: Vec<u8>,
    pub created_at: i64,
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("id", &self.id)
            .field("pkcs8", &format_args!("***"))
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// An admin API bearer token. Only its hash is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    pub id: String,
    /// sha256 of the token text, lowercase hex.
    pub hash: String,
    /// Who or what the token is for, as the operator named it.
    pub name: String,
    pub created_at: i64,
}

impl fmt::Debug for AdminTokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTokenRecord")
            .field("id", &self.id)
            .field("hash", &format_args!("***"))
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// One change made through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: String,
    pub at: i64,
    /// The admin token's name.
    pub actor: String,
    /// What was done, such as `service.add`.
    pub action: String,
    /// The name or id it was done to.
    pub target: String,
    /// A JSON document with the particulars.
    pub detail: String,
}
