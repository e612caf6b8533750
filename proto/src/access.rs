//! Service access tokens: what a user shows a relay to reach a service whose access is
//! [`Access::Token`](crate::control::Access::Token).
//!
//! ```text
//! sat_at1.<payload>.<signature>            both parts base64url without padding
//!   payload    JSON {"kid": signing key id, "jti": token id (16 hex), "svc": [service, ...],
//!                    "iat": issued at, "exp": expires at}          (times in unix seconds)
//!   signature  Ed25519 over the ASCII text "sat_at1.<payload>", everything before the last dot
//! ```
//!
//! The control plane holds the private keys and signs; relays hold the public keys and the list
//! of revoked token ids from [`ConfigPush`](crate::control::ConfigPush), so checking a token costs
//! no round trip. A token is bearer credential: whoever has the text has the access, until it
//! expires or is revoked.
//!
//! This module never reads the clock (callers pass `now`) and never panics on any input; a fuzz
//! target holds it to that.

use std::collections::HashSet;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::DecodeError;

/// What every access token starts with; the digit is the token format's version.
pub const PREFIX: &str = "sat_at1.";
/// Longest token text accepted. Bounds the work a stranger can make a relay do per request.
pub const MAX_TOKEN_LEN: usize = 4096;
/// How far in the future a token's issue time may be: the control plane's clock and the
/// relay's may disagree this much. Expiry gets no such grace.
pub const CLOCK_SKEW_SECS: u64 = 30;

/// What a token grants, as signed. The JSON names are the short ones of the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Id of the signing key, to pick the public key that verifies it.
    pub kid: String,
    /// Id of this token (16 hex characters); what revocation names.
    pub jti: String,
    /// Services the token opens.
    #[serde(rename = "svc")]
    pub services: Vec<String>,
    /// Unix seconds.
    #[serde(rename = "iat")]
    pub issued_at: u64,
    /// Unix seconds; the token is refused from this second on.
    #[serde(rename = "exp")]
    pub expires_at: u64,
}

/// Why a token was refused. Each message is shown to the user, so it names the fix. All are
/// the token holder's to solve (a new token, the right one, or in the case of
/// [`AccessError::NotYetValid`] a clock); presenting the same token again cannot help.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccessError {
    #[error("this service requires an access token; pass --token, SAT_TOKEN, a Bearer header or the sat_token cookie")]
    Missing,
    #[error("malformed access token: {0}; pass the whole sat_at1.… text you were given")]
    Malformed(String),
    #[error("access token was signed with key \"{0}\", which this network does not know (a token of another network, or of a retired key); ask for a new token")]
    UnknownKey(String),
    #[error("access token signature does not match: the token is forged or corrupted; copy it again in full")]
    BadSignature,
    #[error("access token expired at {}; ask for a new token", utc(.at))]
    Expired { at: u64 },
    #[error("access token is issued in the future: the clocks of the control plane and this relay disagree by more than {CLOCK_SKEW_SECS} s")]
    NotYetValid,
    #[error("access token {0} was revoked; ask for a new token")]
    Revoked(String),
    #[error("access token does not grant service \"{service}\"; ask for a token that includes it")]
    WrongService { service: String },
}

/// A private key that signs access tokens, with its id. `Debug` shows only the id.
pub struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Loads a key from its PKCS#8 (v2) document, as [`SigningKey::generate_pkcs8`] made it.
    pub fn from_pkcs8(kid: impl Into<String>, pkcs8: &[u8]) -> Result<Self, DecodeError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| DecodeError::Malformed("Ed25519 signing key (PKCS#8 v2 document)"))?;
        Ok(Self {
            kid: kid.into(),
            pair,
        })
    }

    /// A new private key as a PKCS#8 v2 document, the form to store.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails. On the platforms we support it
    /// does not once the machine has booted, and a machine without one cannot do TLS either.
    pub fn generate_pkcs8() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("the operating system's random number generator failed")
            .as_ref()
            .to_vec()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The half relays get, in [`ConfigPush::access_keys`](crate::control::ConfigPush).
    pub fn public_key(&self) -> VerifyKey {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        VerifyKey {
            kid: self.kid.clone(),
            public,
        }
    }

    /// The token text for `claims`. Its `kid` is this key's, whatever `claims.kid` says, so that
    /// a token always names the key that verifies it. Keep the service list short: a token
    /// longer than [`MAX_TOKEN_LEN`] is refused.
    pub fn sign(&self, claims: &AccessClaims) -> String {
        let claims = AccessClaims {
            kid: self.kid.clone(),
            ..claims.clone()
        };
        // Serialising strings and integers to a Vec cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let mut token = String::with_capacity(PREFIX.len() + payload.len() * 4 / 3 + 90);
        token.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        token
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("private", &"***")
            .finish()
    }
}

/// A public key that verifies access tokens. JSON: `{"kid": "...", "public": "<base64url>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyKey {
    pub kid: String,
    #[serde(with = "base64_key")]
    pub public: [u8; 32],
}

/// Checks `token` and answers what it grants, or why it is refused.
///
/// `keys` are the public keys the network trusts; `revoked` holds the ids (`jti`) of revoked
/// tokens that have not expired yet, as the last config push listed them. The checks run in
/// this order, so a token that fails several reports the first: format (length, prefix,
/// base64, JSON) → signing key known → signature → expiry (and an issue time at most
/// [`CLOCK_SKEW_SECS`] ahead) → revocation → `service` among the granted ones. Nothing that is
/// not signed reaches the checks after the signature's.
///
/// Whitespace around the token (a newline from a file or an environment variable) is ignored;
/// an empty token is [`AccessError::Missing`].
pub fn verify(
    token: &str,
    keys: &[VerifyKey],
    revoked: &HashSet<String>,
    service: &str,
    now_unix: u64,
) -> Result<AccessClaims, AccessError> {
    let malformed = |msg: &str| AccessError::Malformed(msg.to_owned());
    let token = token.trim();
    if token.is_empty() {
        return Err(AccessError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AccessError::Malformed(format!(
            "it is {} bytes, above the limit of {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or_else(|| malformed("it does not start with \"sat_at1.\""))?;
    let Some((payload_b64, signature_b64)) = rest.split_once('.') else {
        return Err(malformed("it has no signature part"));
    };
    if signature_b64.contains('.') {
        return Err(malformed("it has more than three dot-separated parts"));
    }
    let signed = &token[..PREFIX.len() + payload_b64.len()];
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| malformed("the payload is not base64url without padding"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or_else(|| malformed("the signature is not 64 bytes of base64url"))?;
    let claims: AccessClaims = serde_json::from_slice(&payload)
        .map_err(|e| AccessError::Malformed(format!("the payload does not decode: {e}")))?;

    let key = keys
        .iter()
        .find(|k| k.kid == claims.kid)
        .ok_or_else(|| AccessError::UnknownKey(claims.kid.clone()))?;
    UnparsedPublicKey::new(&ED25519, &key.public)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| AccessError::BadSignature)?;

    if now_unix >= claims.expires_at {
        return Err(AccessError::Expired {
            at: claims.expires_at,
        });
    }
    if claims.issued_at > now_unix.saturating_add(CLOCK_SKEW_SECS) {
        return Err(AccessError::NotYetValid);
    }
    if revoked.contains(&claims.jti) {
        return Err(AccessError::Revoked(claims.jti));
    }
    if !claims.services.iter().any(|s| s == service) {
        return Err(AccessError::WrongService {
            service: service.to_owned(),
        });
    }
    Ok(claims)
}

/// Unix seconds as RFC 3339 UTC, for messages people read. Days to civil date after
/// Howard Hinnant's `civil_from_days`; written out because this crate has no date library.
fn utc(secs: &u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // All terms stay non-negative and far from overflow: days < 2^48 for any u64 input.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

mod base64_key {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(key))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|e| D::Error::custom(format!("public key is not base64url: {e}")))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            D::Error::custom(format!("public key is {} bytes, expected 32", bytes.len()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn key(kid: &str) -> SigningKey {
        SigningKey::from_pkcs8(kid, &SigningKey::generate_pkcs8()).unwrap()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            kid: "k1".into(),
            jti: "0123456789abcdef".into(),
            services: vec!["web".into(), "ssh".into()],
            issued_at: NOW - 60,
            expires_at: NOW + 3600,
        }
    }

    fn check(token: &str, keys: &[VerifyKey]) -> Result<AccessClaims, AccessError> {
        verify(token, keys, &HashSet::new(), "web", NOW)
    }

    /// Re-encodes `token` with its payload bytes changed by `edit`, keeping the signature.
    fn with_payload(token: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        edit(&mut payload);
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload),
            parts[2]
        )
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let k = key("k1");
        let token = k.sign(&claims());
        assert!(token.starts_with(PREFIX), "{token}");
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(check(&token, &[k.public_key()]), Ok(claims()));
        assert_eq!(
            check(&format!("  {token}\n"), &[k.public_key()]),
            Ok(claims())
        );
        // Found among several keys; the claims' kid is the signing key's.
        let other = key("k0");
        let token = k.sign(&AccessClaims {
            kid: "ignored".into(),
            ..claims()
        });
        assert_eq!(
            check(&token, &[other.public_key(), k.public_key()]),
            Ok(claims())
        );
    }

    #[test]
    fn payload_is_the_documented_json() {
        let token = key("k1").sign(&claims());
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kid": "k1", "jti": "0123456789abcdef", "svc": ["web", "ssh"],
                "iat": NOW - 60, "exp": NOW + 3600})
        );
    }

    #[test]
    fn forged_payloads_and_signatures_are_refused() {
        let k = key("k1");
        let keys = [k.public_key()];
        let token = k.sign(&claims());

        // A forger widens the grant: well-formed payload, old signature.
        let forged = with_payload(&token, |p| {
            let json = String::from_utf8(p.clone()).unwrap().replace("ssh", "db1");
            *p = json.into_bytes();
        });
        assert_eq!(check(&forged, &keys), Err(AccessError::BadSignature));

        // Any byte of the payload flipped: refused, never accepted.
        let len = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap()
            .len();
        for i in 0..len {
            let flipped = with_payload(&token, |p| p[i] ^= 0x01);
            assert!(check(&flipped, &keys).is_err(), "byte {i}");
        }

        // Any byte of the signature flipped.
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        for i in 0..sig.len() {
            let mut bad = sig.clone();
            bad[i] ^= 0x80;
            let text = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bad));
            assert_eq!(check(&text, &keys), Err(AccessError::BadSignature), "{i}");
        }
    }

    #[test]
    fn another_key_is_refused() {
        let k = key("k1");
        let token = k.sign(&claims());
        // Same id, different key: a control plane that lost its keys, or a forger.
        assert_eq!(
            check(&token, &[key("k1").public_key()]),
            Err(AccessError::BadSignature)
        );
        assert_eq!(
            check(&token, &[key("k2").public_key()]),
            Err(AccessError::UnknownKey("k1".into()))
        );
        assert_eq!(
            check(&token, &[]),
            Err(AccessError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn expiry_and_issue_time() {
        let k = key("k1");
        let keys = [k.public_key()];
        let token = k.sign(&claims());
        let at = |now| verify(&token, &keys, &HashSet::new(), "web", now);
        assert!(at(NOW + 3599).is_ok());
        assert_eq!(at(NOW + 3600), Err(AccessError::Expired { at: NOW + 3600 }));
        assert_eq!(at(u64::MAX), Err(AccessError::Expired { at: NOW + 3600 }));
        // Issued 60 s before NOW: fine from NOW - 90 (30 s of skew), refused before.
        assert!(at(NOW - 90).is_ok());
        assert_eq!(at(NOW - 91), Err(AccessError::NotYetValid));
        assert_eq!(at(0), Err(AccessError::NotYetValid));
    }

    #[test]
    fn revoked_and_wrong_service() {
        let k = key("k1");
        let keys = [k.public_key()];
        let token = k.sign(&claims());
        let revoked = HashSet::from(["0123456789abcdef".to_string()]);
        assert_eq!(
            verify(&token, &keys, &revoked, "web", NOW),
            Err(AccessError::Revoked("0123456789abcdef".into()))
        );
        let others = HashSet::from(["fedcba9876543210".to_string()]);
        assert!(verify(&token, &keys, &others, "ssh", NOW).is_ok());
        assert_eq!(
            verify(&token, &keys, &others, "db", NOW),
            Err(AccessError::WrongService {
                service: "db".into()
            })
        );
        // The order is part of the contract: expiry before revocation before scope.
        assert_eq!(
            verify(&token, &keys, &revoked, "db", NOW + 4000),
            Err(AccessError::Expired { at: NOW + 3600 })
        );
        assert!(matches!(
            verify(&token, &keys, &revoked, "db", NOW),
            Err(AccessError::Revoked(_))
        ));
    }

    #[test]
    fn messages_name_the_fix() {
        assert_eq!(
            AccessError::Expired { at: 1_700_000_000 }.to_string(),
            "access token expired at 2023-11-14T22:13:20Z; ask for a new token"
        );
        assert!(AccessError::Missing.to_string().contains("--token"));
        assert!(AccessError::BadSignature.to_string().contains("forged"));
        assert!(AccessError::WrongService {
            service: "web".into()
        }
        .to_string()
        .contains("does not grant service \"web\""));
    }

    #[test]
    fn utc_formats_calendar_dates() {
        assert_eq!(utc(&0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(&951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(&4_107_542_399), "2100-02-28T23:59:59Z");
        assert!(utc(&u64::MAX).ends_with('Z'));
    }

    #[test]
    fn garbage_never_panics_and_is_never_accepted() {
        let k = key("k1");
        let keys = [k.public_key()];
        let valid = k.sign(&claims());
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let sig = valid.rsplit_once('.').unwrap().1;
        let cases: Vec<String> = vec![
            "x".into(),
            "sat_at1".into(),
            "sat_at1.".into(),
            "sat_at1..".into(),
            "sat_at1...".into(),
            "sat_at1.a.b".into(),
            "sat_at1.a.b.c".into(),
            "sat_at2.a.b".into(),
            "Bearer sat_at1.a.b".into(),
            "sat_at1.é.é".into(),
            "sat_at1.\u{0}.\u{0}".into(),
            format!("sat_at1.{}.{sig}", b64("null")),
            format!("sat_at1.{}.{sig}", b64("[]")),
            format!("sat_at1.{}.{sig}", b64("{}")),
            format!("sat_at1.{}.{sig}", b64("{\"kid\":1}")),
            format!(
                "sat_at1.{}.{sig}",
                b64(r#"{"kid":"k1","jti":"a","svc":"web","iat":1,"exp":2}"#)
            ),
            format!(
                "sat_at1.{}.{sig}",
                b64(r#"{"kid":"k1","jti":"a","svc":["web"],"iat":-1,"exp":1e400}"#)
            ),
            format!("sat_at1.{}.{}", b64("{}"), b64("short")),
            format!("{valid}="),
            format!("{valid}.{sig}"),
            valid.replace('.', ".."),
            valid[..valid.len() - 1].to_string(),
            "a".repeat(MAX_TOKEN_LEN + 1),
            format!("{valid}{}", " x".repeat(MAX_TOKEN_LEN)),
        ];
        for text in &cases {
            match check(text, &keys) {
                Err(AccessError::Malformed(_) | AccessError::BadSignature) => {}
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert_eq!(check("", &keys), Err(AccessError::Missing));
        assert_eq!(check(" \n", &keys), Err(AccessError::Missing));

        // Random edits of a valid token (deterministic xorshift): never a panic, never accepted.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"AZaz09-_.=+/ \x00";
        for _ in 0..5000 {
            let mut bytes = valid.clone().into_bytes();
            for _ in 0..=(next() % 3) {
                let i = (next() % bytes.len() as u64) as usize;
                let c = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => bytes[i] = c,
                    1 => bytes.insert(i, c),
                    _ => bytes.truncate(i.max(1)),
                }
            }
            let text = String::from_utf8(bytes).unwrap();
            if text.trim() != valid {
                assert!(check(&text, &keys).is_err(), "{text}");
            }
        }
    }

    #[test]
    fn verify_key_json() {
        let k = key("k1");
        let public = k.public_key();
        let json = serde_json::to_value(&public).unwrap();
        assert_eq!(json["kid"], "k1");
        assert_eq!(json["public"].as_str().unwrap().len(), 43);
        let back: VerifyKey = serde_json::from_value(json).unwrap();
        assert_eq!(back, public);
        for bad in [
            r#"{"kid":"k","public":"abc"}"#,
            r#"{"kid":"k","public":"!!!!"}"#,
            r#"{"kid":"k","public":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
            r#"{"kid":"k"}"#,
        ] {
            assert!(serde_json::from_str::<VerifyKey>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signing_keys_load_and_hide() {
        assert!(matches!(
            SigningKey::from_pkcs8("k", b"not a key"),
            Err(DecodeError::Malformed(_))
        ));
        let k = key("k9");
        let debug = format!("{k:?}");
        assert!(debug.contains("k9") && debug.contains("***"), "{debug}");
    }
}
