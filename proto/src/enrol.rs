//! Relay enrolment tokens: the one-time secret an operator gives a new relay so that it can get
//! its first certificate from the control plane's CA.
//!
//! ```text
//! satr1.<id>.<secret>.<ca>
//!   id      16 lowercase hex characters (8 random bytes); names the token in the store
//!   secret  43 characters of base64url without padding (32 random bytes); the store keeps
//!           only sha256(secret) in hex, so a leaked database cannot enrol anyone
//!   ca      64 lowercase hex characters: sha256 of the control plane CA certificate (DER)
//! ```
//!
//! The `ca` part is the relay's pin on the control plane: before it holds any certificate it
//! has nothing else to tell the real control plane from an impostor. The format is strict (one
//! spelling per token) so that what the control plane printed, what the operator pasted and
//! what [`EnrolToken`]'s `Display` gives are the same text.
//!
//! This module parses and prints; the caller brings the random bytes, as the crate does no IO.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::DecodeError;

/// What every enrolment token starts with; the digit is the token format's version.
pub const PREFIX: &str = "satr1.";

const ID_LEN: usize = 16;
const SECRET_LEN: usize = 43;
const CA_LEN: usize = 64;

/// A parsed relay enrolment token. `Debug` hides the secret; `Display` gives the full text.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolToken {
    /// 16 lowercase hex characters, the store's key for this token.
    pub id: String,
    /// 43 characters of base64url (no padding): the one-time secret.
    pub secret: String,
    /// sha256 of the control plane CA certificate's DER encoding.
    pub ca_fingerprint: [u8; 32],
}

impl EnrolToken {
    /// A token from fresh random bytes (the caller draws them; this crate has no RNG).
    pub fn new(id_bytes: [u8; 8], secret_bytes: [u8; 32], ca_fingerprint: [u8; 32]) -> Self {
        Self {
            id: hex(&id_bytes),
            secret: URL_SAFE_NO_PAD.encode(secret_bytes),
            ca_fingerprint,
        }
    }

    /// Parses the token text. Surrounding whitespace (a pasted newline) is ignored; anything
    /// else that deviates from the format is an error that names the part at fault.
    pub fn parse(text: &str) -> Result<Self, DecodeError> {
        let bad = |msg: String| DecodeError::EnrolToken(msg);
        let text = text.trim();
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("it does not start with \"{PREFIX}\"")))?;
        let parts: Vec<&str> = rest.split('.').collect();
        let [id, secret, ca] = parts[..] else {
            return Err(bad(format!(
                "it has {} dot-separated parts, expected 4 (satr1.<id>.<secret>.<ca>)",
                parts.len() + 1
            )));
        };
        if id.len() != ID_LEN {
            return Err(bad(format!(
                "the id is {} characters, expected {ID_LEN}",
                id.len()
            )));
        }
        if parse_hex::<8>(id).is_none() {
            return Err(bad("the id is not lowercase hex".into()));
        }
        if secret.len() != SECRET_LEN {
            return Err(bad(format!(
                "the secret is {} characters, expected {SECRET_LEN}",
                secret.len()
            )));
        }
        // The strict decoder rejects non-zero trailing bits, so each secret has one spelling.
        match URL_SAFE_NO_PAD.decode(secret) {
            Ok(bytes) if bytes.len() == 32 => {}
            _ => return Err(bad("the secret is not base64url without padding".into())),
        }
        if ca.len() != CA_LEN {
            return Err(bad(format!(
                "the CA fingerprint is {} characters, expected {CA_LEN}",
                ca.len()
            )));
        }
        let ca_fingerprint = parse_hex::<32>(ca)
            .ok_or_else(|| bad("the CA fingerprint is not lowercase hex".into()))?;
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_fingerprint,
        })
    }

    /// What the store keeps instead of the secret: sha256 of the secret's text, in lowercase hex.
    pub fn secret_hash(&self) -> String {
        hex(&Sha256::digest(self.secret.as_bytes()))
    }
}

impl FromStr for EnrolToken {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for EnrolToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}.{}.{}",
            self.id,
            self.secret,
            fingerprint_hex(&self.ca_fingerprint)
        )
    }
}

impl fmt::Debug for EnrolToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolToken")
            .field("id", &self.id)
            .field("secret", &"***")
            .field("ca_fingerprint", &fingerprint_hex(&self.ca_fingerprint))
            .finish()
    }
}

/// A fingerprint as 64 lowercase hex characters, as in the token and in logs.
pub fn fingerprint_hex(fingerprint: &[u8; 32]) -> String {
    hex(fingerprint)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Exactly `2 * N` lowercase hex digits.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> EnrolToken {
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = i as u8 * 7;
        }
        EnrolToken::new(
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            secret,
            [0xa5; 32],
        )
    }

    #[test]
    fn new_display_parse_round_trip() {
        let t = token();
        let text = t.to_string();
        assert!(text.starts_with("satr1.0123456789abcdef."), "{text}");
        assert_eq!(text.len(), 6 + 16 + 1 + 43 + 1 + 64);
        assert_eq!(EnrolToken::parse(&text).unwrap(), t);
        assert_eq!(format!(" {text}\n").parse::<EnrolToken>().unwrap(), t);
        assert_eq!(fingerprint_hex(&t.ca_fingerprint), "a5".repeat(32));
    }

    #[test]
    fn secret_hash_is_sha256_hex_of_the_secret_text() {
        let t = EnrolToken {
            id: "0".repeat(16),
            secret: "abc".into(),
            ca_fingerprint: [0; 32],
        };
        assert_eq!(
            t.secret_hash(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token().secret_hash().len(), 64);
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = token();
        let debug = format!("{t:?}");
        assert!(!debug.contains(&t.secret), "{debug}");
        assert!(debug.contains("***"));
    }

    #[test]
    fn errors_name_the_part_at_fault() {
        let good = token().to_string();
        let parts: Vec<&str> = good.split('.').collect();
        let (id, secret, ca) = (parts[1], parts[2], parts[3]);
        // The secret's last character carries 2 bits that must be zero; 'B' sets one of them.
        let loose_secret = format!("{}B", &secret[..42]);
        let cases = [
            (String::new(), "does not start"),
            (good.replace("satr1.", "satr2."), "does not start"),
            (good.replace("satr1.", "SATR1."), "does not start"),
            (format!("satr1.{id}.{secret}"), "3 dot-separated parts"),
            (format!("{good}.x"), "5 dot-separated parts"),
            (format!("satr1.{}.{secret}.{ca}", &id[1..]), "id is 15"),
            (
                format!("satr1.{}.{secret}.{ca}", id.to_uppercase()),
                "id is not lowercase hex",
            ),
            (format!("satr1.{id}.{}.{ca}", &secret[1..]), "secret is 42"),
            (
                format!("satr1.{id}.{}+.{ca}", &secret[..42]),
                "secret is not base64url",
            ),
            (
                format!("satr1.{id}.{loose_secret}.{ca}"),
                "secret is not base64url",
            ),
            (format!("satr1.{id}.{secret}.{ca}00"), "fingerprint is 66"),
            (
                format!("satr1.{id}.{secret}.{}", ca.replace('a', "g")),
                "fingerprint is not lowercase hex",
            ),
        ];
        for (text, want) in cases {
            let err = EnrolToken::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("invalid relay enrolment token"), "{err}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            ".",
            "satr1.",
            "satr1....",
            "satr1.é.é.é",
            "satr1.\u{0}",
            "satr1.ééééééééé",
        ] {
            assert!(EnrolToken::parse(text).is_err(), "{text:?}");
        }
        // Multi-byte characters of the right byte length must not trip the hex parser.
        let text = format!(
            "satr1.{}.{}.{}",
            "é".repeat(8),
            "a".repeat(43),
            "0".repeat(64)
        );
        assert!(EnrolToken::parse(&text).is_err());
    }
}
