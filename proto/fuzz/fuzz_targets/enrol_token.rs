//! Enrolment-token parsing fed arbitrary text: no panic, and whatever parses prints back as the
//! same text (one spelling per token). Tokens made from arbitrary bytes parse back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sat_proto::enrol::EnrolToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = EnrolToken::parse(text) {
            assert_eq!(token.to_string(), text.trim());
        }
    }
    if data.len() >= 72 {
        let token = EnrolToken::new(
            data[..8].try_into().unwrap(),
            data[8..40].try_into().unwrap(),
            data[40..72].try_into().unwrap(),
        );
        assert_eq!(EnrolToken::parse(&token.to_string()).unwrap(), token);
    }
});
