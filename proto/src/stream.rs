//! Data-stream headers and answers.
//!
//! Every data stream opens with a header from the side that opened it, followed at once by the
//! user's bytes (the opener does not wait for the answer). The other side answers with a
//! [`Response`], then the stream carries raw bytes both ways.
//!
//! ```text
//! StreamHeader (relay → control)       ClientHeader (client → relay)
//!   u8  version                          u8  version
//!   u16 length of the rest               u16 length of the rest
//!   u8  kind (1 tcp, 2 http)             u8  name length, name
//!   u8  name length, name                u16 token length, token
//!   u8  family (4|6), ip, u16 port       .. fields a later minor version adds
//!   u16 identity length, identity
//!   .. fields a later minor version adds
//!
//! Response (control → relay → client)
//!   u8 code (0 accepted), u16 message length, message (UTF-8)
//! ```
//!
//! The length prefix lets a decoder skip fields appended by a newer peer; see the version rule
//! in `docs/protocol.md`. Decoders take a prefix of a buffer and answer `Ok(None)` while more
//! bytes are needed, so they work on partial reads.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};

use crate::{DecodeError, VERSION};

/// Largest encoded header, whichever kind. Bounds what a peer can make us buffer.
pub const MAX_HEADER_LEN: usize = 4096;
/// Largest reason message in a [`Response`].
pub const MAX_MESSAGE_LEN: usize = 1024;
const MAX_NAME_LEN: usize = 63;

/// What a data stream carries once accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// Raw bytes of one TCP connection.
    Tcp,
    /// Exactly one HTTP/1.1 request and its response (and an upgraded connection, if any).
    Http,
}

impl StreamKind {
    fn code(self) -> u8 {
        match self {
            Self::Tcp => 1,
            Self::Http => 2,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        match code {
            1 => Ok(Self::Tcp),
            2 => Ok(Self::Http),
            _ => Err(DecodeError::Malformed("stream kind")),
        }
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
        })
    }
}

/// Checks a service name: 1 to 63 characters of `a-z`, `0-9`, `-` and `_`, as in a DNS label.
pub fn validate_service_name(name: &str) -> Result<(), DecodeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DecodeError::ServiceName(format!(
            "{name:?}: use 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '-' and '_'"
        )))
    }
}

/// Opens every data stream on an uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub kind: StreamKind,
    pub service: String,
    /// The user's address as the relay saw it.
    pub user_addr: SocketAddr,
    /// The identity the relay verified for this user; empty when the service needs none.
    pub identity: String,
}

impl StreamHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        let at = begin(out);
        out.put_u8(self.kind.code());
        put_name(out, &self.service);
        put_addr(out, self.user_addr);
        put_bytes16(out, self.identity.as_bytes());
        finish(out, at);
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((mut body, used)) = framed(buf)? else {
            return Ok(None);
        };
        let kind = StreamKind::from_code(body.u8()?)?;
        let service = body.name()?;
        let user_addr = body.addr()?;
        let identity = body.string16("identity")?;
        Ok(Some((
            Self {
                kind,
                service,
                user_addr,
                identity,
            },
            used,
        )))
    }
}

/// Opens every tunnel from a `sat` client to a relay.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientHeader {
    pub service: String,
    /// Access token for the service; empty when none was given.
    pub token: String,
}

impl std::fmt::Debug for ClientHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHeader")
            .field("service", &self.service)
            .field("token", &if self.token.is_empty() { "" } else { "***" })
            .finish()
    }
}

impl ClientHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        let at = begin(out);
        put_name(out, &self.service);
        put_bytes16(out, self.token.as_bytes());
        finish(out, at);
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((mut body, used)) = framed(buf)? else {
            return Ok(None);
        };
        let service = body.name()?;
        let token = body.string16("token")?;
        Ok(Some((Self { service, token }, used)))
    }
}

/// Why a stream was refused. The code travels on the wire; the message is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    UnknownService,
    /// The service exists but is of the other kind (a TCP tunnel to an HTTP service, say).
    WrongKind,
    BackendRefused,
    BackendTimeout,
    BackendUnreachable,
    /// The relay has no live uplink to the control plane.
    NoUplink,
    /// The receiver is shutting down and takes no new streams.
    Draining,
    Unauthorized,
    /// The header could not be decoded.
    BadHeader,
    Internal,
    /// A code from a newer peer that this build does not know.
    Other(u8),
}

impl RejectCode {
    fn code(self) -> u8 {
        match self {
            Self::UnknownService => 1,
            Self::WrongKind => 2,
            Self::BackendRefused => 3,
            Self::BackendTimeout => 4,
            Self::BackendUnreachable => 5,
            Self::NoUplink => 6,
            Self::Draining => 7,
            Self::Unauthorized => 8,
            Self::BadHeader => 9,
            Self::Internal => 10,
            Self::Other(c) => c,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::UnknownService,
            2 => Self::WrongKind,
            3 => Self::BackendRefused,
            4 => Self::BackendTimeout,
            5 => Self::BackendUnreachable,
            6 => Self::NoUplink,
            7 => Self::Draining,
            8 => Self::Unauthorized,
            9 => Self::BadHeader,
            10 => Self::Internal,
            c => Self::Other(c),
        }
    }

    /// The number of codes this build knows: [`Self::index`] is below it for each of them.
    pub const KNOWN: usize = 10;

    /// A short `snake_case` name, for logs and metric labels; `other` for a code this build
    /// does not know.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnknownService => "unknown_service",
            Self::WrongKind => "wrong_kind",
            Self::BackendRefused => "backend_refused",
            Self::BackendTimeout => "backend_timeout",
            Self::BackendUnreachable => "backend_unreachable",
            Self::NoUplink => "no_uplink",
            Self::Draining => "draining",
            Self::Unauthorized => "unauthorized",
            Self::BadHeader => "bad_header",
            Self::Internal => "internal",
            Self::Other(_) => "other",
        }
    }

    /// A dense index: `0..KNOWN` for the known codes in wire order, `KNOWN` for any other.
    pub fn index(self) -> usize {
        match self {
            Self::Other(_) => Self::KNOWN,
            known => usize::from(known.code()) - 1,
        }
    }

    /// The code at `index` (see [`Self::index`]); `Other(0)` past the known ones.
    pub fn at(index: usize) -> Self {
        match u8::try_from(index + 1) {
            Ok(code) if index < Self::KNOWN => Self::from_code(code),
            _ => Self::Other(0),
        }
    }

    /// The HTTP status a relay answers with when an HTTP request meets this refusal.
    pub fn http_status(self) -> u16 {
        match self {
            Self::UnknownService => 404,
            Self::BackendRefused | Self::BackendUnreachable | Self::WrongKind => 502,
            Self::BackendTimeout => 504,
            Self::NoUplink | Self::Draining => 503,
            Self::Unauthorized => 401,
            Self::BadHeader => 400,
            Self::Internal | Self::Other(_) => 502,
        }
    }
}

/// The answer to a stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Accepted,
    Rejected { code: RejectCode, message: String },
}

impl Response {
    pub fn reject(code: RejectCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            let mut cut = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self::Rejected { code, message }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Self::Accepted => {
                out.put_u8(0);
                out.put_u16(0);
            }
            Self::Rejected { code, message } => {
                out.put_u8(code.code());
                put_bytes16(out, message.as_bytes());
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        if buf.len() < 3 {
            return Ok(None);
        }
        let code = buf[0];
        let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
        if len > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong {
                what: "reject message",
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        if buf.len() < 3 + len {
            return Ok(None);
        }
        let response = if code == 0 {
            Self::Accepted
        } else {
            let message = std::str::from_utf8(&buf[3..3 + len])
                .map_err(|_| DecodeError::Malformed("reject message"))?;
            Self::Rejected {
                code: RejectCode::from_code(code),
                message: message.to_owned(),
            }
        };
        Ok(Some((response, 3 + len)))
    }
}

// --- encoding helpers -------------------------------------------------------------------------

/// Writes the version and a placeholder length; returns where the length sits.
fn begin(out: &mut BytesMut) -> usize {
    out.put_u8(VERSION);
    let at = out.len();
    out.put_u16(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let len = out.len() - at - 2;
    debug_assert!(len + 3 <= MAX_HEADER_LEN, "header over MAX_HEADER_LEN");
    out[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
}

fn put_name(out: &mut BytesMut, name: &str) {
    let name = &name.as_bytes()[..name.len().min(MAX_NAME_LEN)];
    out.put_u8(name.len() as u8);
    out.put_slice(name);
}

fn put_bytes16(out: &mut BytesMut, b: &[u8]) {
    let b = &b[..b.len().min(u16::MAX as usize)];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn put_addr(out: &mut BytesMut, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
}

// --- decoding helpers -------------------------------------------------------------------------

/// Splits off a versioned, length-prefixed header. `Ok(None)` means "read more".
fn framed(buf: &[u8]) -> Result<Option<(Reader<'_>, usize)>, DecodeError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    if buf.len() < 3 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
    if len + 3 > MAX_HEADER_LEN {
        return Err(DecodeError::TooLong {
            what: "stream header",
            len: len + 3,
            max: MAX_HEADER_LEN,
        });
    }
    if buf.len() < 3 + len {
        return Ok(None);
    }
    Ok(Some((Reader(&buf[3..3 + len]), 3 + len)))
}

/// A cursor over a complete header body; running out of bytes here is malformed, not "short".
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("stream header (truncated field)"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn name(&mut self) -> Result<String, DecodeError> {
        let len = self.u8()? as usize;
        let raw = self.take(len)?;
        let name = std::str::from_utf8(raw).map_err(|_| DecodeError::Malformed("service name"))?;
        validate_service_name(name)?;
        Ok(name.to_owned())
    }

    fn string16(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Malformed(what))
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => {
                let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| bad_addr())?;
                IpAddr::V4(Ipv4Addr::from(b))
            }
            6 => {
                let b: [u8; 16] = self.take(16)?.try_into().map_err(|_| bad_addr())?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(bad_addr()),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
}

fn bad_addr() -> DecodeError {
    DecodeError::Malformed("user address")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            kind: StreamKind::Tcp,
            service: "ssh".into(),
            user_addr: "[2001:db8::1]:5555".parse().unwrap(),
            identity: "alice".into(),
        }
    }

    #[test]
    fn stream_header_round_trips_byte_by_byte() {
        let mut buf = BytesMut::new();
        header().encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(StreamHeader::decode(&buf[..cut]), Ok(None), "prefix {cut}");
        }
        buf.extend_from_slice(b"payload");
        let (h, used) = StreamHeader::decode(&buf).unwrap().unwrap();
        assert_eq!(h, header());
        assert_eq!(&buf[used..], b"payload");
    }

    #[test]
    fn newer_peer_fields_are_skipped() {
        let mut buf = BytesMut::new();
        header().encode(&mut buf);
        // A later minor version appends a field and grows the length prefix.
        buf.extend_from_slice(&[0xAB, 0xCD]);
        let len = u16::from_be_bytes([buf[1], buf[2]]) + 2;
        buf[1..3].copy_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(b"x");
        let (h, used) = StreamHeader::decode(&buf).unwrap().unwrap();
        assert_eq!(h, header());
        assert_eq!(&buf[used..], b"x");
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        assert_eq!(
            StreamHeader::decode(&[9, 0, 0]),
            Err(DecodeError::Version(9))
        );
        assert!(matches!(
            StreamHeader::decode(&[1, 0xFF, 0xFF]),
            Err(DecodeError::TooLong { .. })
        ));
        // Length says 2 bytes but the body needs more: truncated field.
        assert!(matches!(
            StreamHeader::decode(&[1, 0, 2, 1, 5]),
            Err(DecodeError::Malformed(_))
        ));
        // Upper-case service names are refused: they would not match a configured service.
        let mut buf = BytesMut::new();
        ClientHeader {
            service: "SSH".into(),
            token: String::new(),
        }
        .encode(&mut buf);
        assert!(matches!(
            ClientHeader::decode(&buf),
            Err(DecodeError::ServiceName(_))
        ));
    }

    #[test]
    fn response_round_trips_and_unknown_codes_survive() {
        for r in [
            Response::Accepted,
            Response::reject(RejectCode::BackendRefused, "connection refused"),
            Response::reject(RejectCode::Other(200), ""),
        ] {
            let mut buf = BytesMut::new();
            r.encode(&mut buf);
            assert_eq!(Response::decode(&buf[..buf.len() - 1]), Ok(None));
            assert_eq!(Response::decode(&buf), Ok(Some((r, buf.len()))));
        }
    }

    #[test]
    fn reject_code_indexes_are_dense_and_named() {
        let mut names = std::collections::HashSet::new();
        for i in 0..RejectCode::KNOWN {
            let code = RejectCode::at(i);
            assert_eq!(code.index(), i);
            assert!(!matches!(code, RejectCode::Other(_)), "{i}");
            assert!(names.insert(code.name()), "{} twice", code.name());
        }
        assert_eq!(RejectCode::from_code(11), RejectCode::Other(11));
        assert_eq!(RejectCode::Other(11).index(), RejectCode::KNOWN);
        assert_eq!(RejectCode::at(RejectCode::KNOWN).name(), "other");
    }

    #[test]
    fn long_reject_messages_are_cut_on_a_char_boundary() {
        let r = Response::reject(RejectCode::Internal, "é".repeat(MAX_MESSAGE_LEN));
        let Response::Rejected { message, .. } = r else {
            panic!("not a rejection")
        };
        assert!(message.len() <= MAX_MESSAGE_LEN);
    }

    #[test]
    fn client_header_debug_hides_the_token() {
        let h = ClientHeader {
            service: "web".into(),
            token: "secret".into(),
        };
        assert!(!format!("{h:?}").contains("secret"));
    }

    #[test]
    fn service_names() {
        assert!(validate_service_name("ssh-prod_2").is_ok());
        for bad in ["", "Web", "a.b", "a b", &"x".repeat(64)] {
            assert!(validate_service_name(bad).is_err(), "{bad:?}");
        }
    }
}
