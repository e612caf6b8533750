//! Secrets the control plane makes for itself on first start: the key that signs service
//! access tokens, and the first admin token. Both live in the store (only a hash of the admin
//! token); the admin token is also written to `<data_dir>/admin.token` for the operator, and
//! is never logged.

use std::path::Path;
use std::time::Duration;

use rand::RngCore;
use sat_proto::access::{AccessClaims, SigningKey, VerifyKey};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::publish::now_ms;
use crate::store::{AdminTokenRecord, SigningKeyRecord, Store};
use crate::ControlError;

/// Signs service access tokens with the newest key; relays verify with every key listed.
pub struct Signer {
    key: SigningKey,
    all: Vec<VerifyKey>,
}

impl Signer {
    /// The signing keys from the store; one is made on first start.
    pub async fn load_or_create(store: &Store) -> Result<Self, ControlError> {
        let mut records = store.signing_keys().await?;
        if records.is_empty() {
            let record = SigningKeyRecord {
                id: random_hex(8),
                pkcs8: SigningKey::generate_pkcs8(),
                created_at: now_ms(),
            };
            store.insert_signing_key(&record).await?;
            info!(kid = %record.id, "created the access-token signing key");
            records.push(record);
        }
        let mut keys = Vec::with_capacity(records.len());
        for r in &records {
            let key = SigningKey::from_pkcs8(r.id.clone(), &r.pkcs8).map_err(|e| {
                ControlError::Pki(format!("signing key {} in the store: {e}", r.id))
            })?;
            keys.push(key);
        }
        let all = keys.iter().map(SigningKey::public_key).collect();
        let key = keys
            .pop()
            .ok_or_else(|| ControlError::Pki("no signing key".into()))?;
        Ok(Self { key, all })
    }

    pub fn verify_keys(&self) -> Vec<VerifyKey> {
        self.all.clone()
    }

    /// A new token for `services`, valid for `ttl` from `now` (unix seconds).
    pub fn issue(&self, services: Vec<String>, ttl: Duration, now: u64) -> (String, AccessClaims) {
        let claims = AccessClaims {
            kid: self.key.kid().to_owned(),
            jti: random_hex(8),
            services,
            issued_at: now,
            expires_at: now + ttl.as_secs(),
        };
        (self.key.sign(&claims), claims)
    }
}

/// Makes an admin token if `<data_dir>/admin.token` is missing: on first start, or when an
/// operator deleted the file to get a new one (older tokens stay valid).
pub async fn ensure_admin_token(store: &Store, dir: &Path) -> Result<(), ControlError> {
    let path = dir.join("admin.token");
    if path.exists() {
        return Ok(());
    }
    let token = format!("sat_admin_{}", random_hex(32));
    let record = AdminTokenRecord {
        id: random_hex(8),
        hash: sha256_hex(&token),
        name: "admin.token".into(),
        created_at: now_ms(),
    };
    store.insert_admin_token(&record).await?;
    crate::pki::write_file(&path, &format!("{token}\n"), 0o600)?;
    info!(path = %path.display(), "created an admin token (mode 0600)");
    Ok(())
}

pub fn sha256_hex(text: &str) -> String {
    sat_transport::pin::hex(&Sha256::digest(text.as_bytes()))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    sat_transport::pin::hex(&buf)
}
