//! The control channel: the first bidirectional stream of every uplink, opened by the relay.
//!
//! ```text
//! frame := u8 type | u32 body length | body (JSON object)
//! ```
//!
//! The relay speaks first with [`Hello`]; the control plane answers with [`ConfigPush`] and
//! pushes a new one whenever the config changes (relays never poll). The relay sends a
//! [`Heartbeat`] every second. Either side may send [`Drain`] (stop sending me new work) and
//! [`Goodbye`] (I am closing this connection on purpose).
//!
//! Bodies are JSON because this channel carries a few frames a second at most, and JSON lets a
//! newer peer add fields that an older one ignores. Frame types this build does not know decode
//! as [`Frame::Unknown`] and are skipped, for the same reason.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::stream::StreamKind;
use crate::DecodeError;

/// Largest control frame body. A config push of some thousands of services fits with room.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Relay name, unique in the network.
    pub relay: String,
    pub region: String,
    /// Software version, for `sat admin relays` and for spotting mixed fleets.
    pub version: String,
    /// Which uplink of the relay this is (0-based), to tell them apart in logs.
    #[serde(default)]
    pub uplink: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    /// Streams the relay has open on all its uplinks.
    pub open_streams: u64,
    /// User connections the relay holds (HTTP connections and tunnels).
    pub user_connections: u64,
    /// This uplink's smoothed round trip to the control plane, as QUIC measures it.
    pub rtt_us: u64,
    /// The config generation the relay is running.
    pub generation: u64,
    #[serde(default)]
    pub draining: bool,
}

/// A service as relays see it: enough to route, nothing about where the backend lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub kind: StreamKind,
    /// Host names an HTTP service answers to (lower case, no port).
    #[serde(default)]
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPush {
    /// Grows with every change; a relay ignores a push older than what it runs.
    pub generation: u64,
    pub services: Vec<ServiceInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Heartbeat(Heartbeat),
    ConfigPush(ConfigPush),
    Drain(Drain),
    Goodbye(Goodbye),
    /// A frame type from a newer peer; its body was skipped.
    Unknown(u8),
}

impl Frame {
    fn type_code(&self) -> u8 {
        match self {
            Self::Hello(_) => 1,
            Self::Heartbeat(_) => 2,
            Self::ConfigPush(_) => 3,
            Self::Drain(_) => 4,
            Self::Goodbye(_) => 5,
            Self::Unknown(t) => *t,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let body = match self {
            Self::Hello(m) => serde_json::to_vec(m),
            Self::Heartbeat(m) => serde_json::to_vec(m),
            Self::ConfigPush(m) => serde_json::to_vec(m),
            Self::Drain(m) => serde_json::to_vec(m),
            Self::Goodbye(m) => serde_json::to_vec(m),
            Self::Unknown(_) => Ok(b"{}".to_vec()),
        }
        // Serialising plain structs of strings and numbers to a Vec cannot fail.
        .unwrap_or_else(|_| b"{}".to_vec());
        out.put_u8(self.type_code());
        out.put_u32(body.len() as u32);
        out.put_slice(&body);
    }

    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
            serde_json::from_slice(body).map_err(|e| DecodeError::Body(e.to_string()))
        }
        Ok(match ty {
            1 => Self::Hello(parse(body)?),
            2 => Self::Heartbeat(parse(body)?),
            3 => Self::ConfigPush(parse(body)?),
            4 => Self::Drain(parse(body)?),
            5 => Self::Goodbye(parse(body)?),
            t => Self::Unknown(t),
        })
    }
}

/// Turns a byte stream into frames. Feed it whatever the socket gave; take frames out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the stream
    /// is out of sync and must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let ty = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::TooLong {
                what: "control frame",
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let body = self.buf.split_to(len);
        Frame::decode_body(ty, &body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                relay: "relay-eu-1".into(),
                region: "eu-west".into(),
                version: "0.1.0".into(),
                uplink: 1,
                capabilities: vec!["http".into()],
            }),
            Frame::Heartbeat(Heartbeat {
                seq: 7,
                open_streams: 3,
                user_connections: 2,
                rtt_us: 250,
                generation: 4,
                draining: false,
            }),
            Frame::ConfigPush(ConfigPush {
                generation: 4,
                services: vec![ServiceInfo {
                    name: "web".into(),
                    kind: StreamKind::Http,
                    hostnames: vec!["web.example.com".into()],
                }],
            }),
            Frame::Drain(Drain {
                reason: "sigterm".into(),
            }),
            Frame::Goodbye(Goodbye {
                reason: "bye".into(),
            }),
        ]
    }

    #[test]
    fn frames_round_trip_through_one_byte_reads() {
        let mut wire = BytesMut::new();
        for f in frames() {
            f.encode(&mut wire);
        }
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            dec.push(&[*b]);
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames());
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let mut dec = FrameDecoder::new();
        let body = br#"{"x":1}"#;
        dec.push(&[99, 0, 0, 0, body.len() as u8]);
        dec.push(body);
        assert_eq!(dec.next_frame().unwrap(), Some(Frame::Unknown(99)));

        let body = br#"{"reason":"r","added_later":[1,2]}"#;
        dec.push(&[5, 0, 0, 0, body.len() as u8]);
        dec.push(body);
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::Goodbye(Goodbye { reason: "r".into() }))
        );
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut dec = FrameDecoder::new();
        dec.push(&[3, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(dec.next_frame(), Err(DecodeError::TooLong { .. })));
        let mut dec = FrameDecoder::new();
        dec.push(&[2, 0, 0, 0, 3, b'n', b'o', b'!']);
        assert!(matches!(dec.next_frame(), Err(DecodeError::Body(_))));
    }
}
