//! Every decoder of the bytes that open a stream: it must answer Ok(None), Ok(Some) or Err,
//! never panic, and what it accepts must re-encode to something it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sat_proto::stream::{ClientHeader, Response, StreamHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((h, used))) = StreamHeader::decode(data) {
        assert!(used <= data.len());
        let mut out = bytes::BytesMut::new();
        h.encode(&mut out);
        let (again, _) = StreamHeader::decode(&out).unwrap().unwrap();
        assert_eq!(again, h);
    }
    if let Ok(Some((h, used))) = ClientHeader::decode(data) {
        assert!(used <= data.len());
        let mut out = bytes::BytesMut::new();
        h.encode(&mut out);
        assert_eq!(ClientHeader::decode(&out).unwrap().unwrap().0, h);
    }
    if let Ok(Some((r, used))) = Response::decode(data) {
        assert!(used <= data.len());
        let mut out = bytes::BytesMut::new();
        r.encode(&mut out);
        assert_eq!(Response::decode(&out).unwrap().unwrap().0, r);
    }
});
