//! Secrets the control plane makes for itself on first start: the key that signs service
//! access tokens, the first admin token, and the read-only status token. The first two live in
//! the store (only a hash of the admin token); the admin token is also written to
//! `<data_dir>/admin.token` for the operator, and the status token to `<data_dir>/status.token`.
//! No token is ever logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use sat_proto::access::{AccessClaims, SigningKey, VerifyKey};
use sat_proto::clock;
use sha2::{Digest, Sha256};
use tracing::info;

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
                created_at: clock::unix_millis(),
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
        created_at: clock::unix_millis(),
    };
    store.insert_admin_token(&record).await?;
    crate::pki::write_file(&path, &format!("{token}\n"), 0o600)?;
    info!(path = %path.display(), "created an admin token (mode 0600)");
    Ok(())
}

/// The read-only status token: it opens the status page and its JSON (`GET /status`,
/// `GET /api/status`) and nothing else, so it can sit in a bookmark or a wall display's URL.
/// It lives in `<data_dir>/status.token` (mode 0600), made whenever the file is missing at
/// start; this process keeps only its SHA-256. Deleting the file and restarting replaces it,
/// and the old one stops working.
pub struct StatusToken {
    digest: [u8; 32],
    path: PathBuf,
}

impl StatusToken {
    /// Reads `<dir>/status.token`, or makes it if it is missing or empty.
    pub fn load_or_create(dir: &Path) -> Result<Self, ControlError> {
        let path = dir.join("status.token");
        let io = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let token = match existing {
            Some(token) => token,
            None => {
                let token = format!("sat_status_{}", random_hex(32));
                crate::pki::write_file(&path, &format!("{token}\n"), 0o600)?;
                info!(path = %path.display(), "created a status token (mode 0600)");
                token
            }
        };
        // Absolute, so that the refusal can tell a browser user where to look.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
            path,
        })
    }

    /// Whether `presented` is the status token. Compares digests in constant time, so the
    /// time taken says nothing about how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Where the token is, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for StatusToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub fn sha256_hex(text: &str) -> String {
    sat_transport::pin::hex(&Sha256::digest(text.as_bytes()))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    sat_transport::pin::hex(&buf)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_status_token_is_made_once_private_and_matches_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let made = StatusToken::load_or_create(dir.path()).unwrap();
        let file = dir.path().join("status.token");
        let text = std::fs::read_to_string(&file).unwrap();
        let token = text.trim();
        assert!(token.starts_with("sat_status_"), "{token}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(made.matches(token));
        assert!(!made.matches(""));
        assert!(!made.matches(&token[..token.len() - 1]));
        assert!(!format!("{made:?}").contains(token));

        // A restart reads the same token back.
        let again = StatusToken::load_or_create(dir.path()).unwrap();
        assert!(again.matches(token));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        assert!(again.path().is_absolute());

        // Deleted: a new one, and the old one is no good.
        std::fs::remove_file(&file).unwrap();
        let fresh = StatusToken::load_or_create(dir.path()).unwrap();
        assert!(!fresh.matches(token));
    }
}
