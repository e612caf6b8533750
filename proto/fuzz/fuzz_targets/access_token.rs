//! Access-token verification with a fixed key. Arbitrary text must never panic, and is accepted
//! only if it is exactly what the key signs (nothing forged, no second spelling of a token).
//! Then claims drawn from the same bytes, once signed, must verify back to those claims or be
//! refused for the one reason that applies.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sat_proto::access::{verify, AccessClaims, AccessError, SigningKey, VerifyKey, MAX_TOKEN_LEN};

/// An Ed25519 PKCS#8 v2 document whose seed is sha256("sat-proto fuzz signing key"), fixed so
/// that a crash reproduces.
const PKCS8_HEX: &str = "3053020101300506032b6570042204207133d0b7347ad75bd22cc0cb1ff824b5\
    2994f40f91ef3879589250bb129d010aa123032100dcda44cd9301bef31eae1e736a6d309b6215d22a247e\
    f571389f1160d8517f7e";
const NOW: u64 = 1_700_000_000;
const REVOKED: &str = "00000000000000ff";

fn key() -> &'static (SigningKey, Vec<VerifyKey>) {
    static KEY: OnceLock<(SigningKey, Vec<VerifyKey>)> = OnceLock::new();
    KEY.get_or_init(|| {
        let hex: Vec<u8> = PKCS8_HEX.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let pkcs8: Vec<u8> = hex
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect();
        let key = SigningKey::from_pkcs8("fuzz", &pkcs8).expect("the fixed key loads");
        let keys = vec![key.public_key()];
        (key, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let (key, keys) = key();
    let revoked = HashSet::from([REVOKED.to_owned()]);

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(claims) = verify(text, keys, &revoked, "web", NOW) {
            assert_eq!(key.sign(&claims), text.trim());
        }
    }

    if data.len() < 16 {
        return;
    }
    let issued_at = u64::from_le_bytes(data[..8].try_into().unwrap());
    let expires_at = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let rest = String::from_utf8_lossy(&data[16..]);
    let mut lines = rest.split('\n');
    let jti = lines.next().unwrap_or_default().to_owned();
    let claims = AccessClaims {
        kid: "fuzz".into(),
        jti,
        services: lines.map(str::to_owned).collect(),
        issued_at,
        expires_at,
    };
    let token = key.sign(&claims);
    let service = claims.services.first().cloned().unwrap_or_default();
    let result = verify(&token, keys, &revoked, &service, issued_at);
    if token.len() > MAX_TOKEN_LEN {
        assert!(matches!(result, Err(AccessError::Malformed(_))), "{result:?}");
        return;
    }
    match result {
        Ok(got) => assert_eq!(got, claims),
        Err(AccessError::Expired { at }) => assert!(at == expires_at && expires_at <= issued_at),
        Err(AccessError::Revoked(jti)) => assert_eq!(jti, REVOKED),
        Err(AccessError::WrongService { .. }) => assert!(claims.services.is_empty()),
        Err(e) => panic!("a token just signed was refused: {e}"),
    }
});
