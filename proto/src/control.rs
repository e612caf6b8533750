//! The control channel, and the enrolment exchange that shares its frame codec.
//!
//! ```text
//! frame := u8 type | u32 body length | body (JSON object)
//! ```
//!
//! **Control channel**: the first bidirectional stream of every uplink, opened by the relay.
//! The relay speaks first with [`Hello`]; the control plane answers with [`ConfigPush`] and
//! pushes a new one whenever the config changes (relays never poll). The relay sends a
//! [`Heartbeat`] every second. Either side may send [`Drain`] (stop sending me new work) and
//! [`Goodbye`] (I am closing this connection on purpose). Before its certificate runs out the
//! relay sends [`Renew`]; the control plane answers [`Renewed`] or [`Refused`], and the channel
//! carries on either way.
//!
//! **Enrolment**: a connection of its own, with ALPN [`ALPN_ENROL`](crate::ALPN_ENROL) and no
//! client certificate, since the relay has none yet. The relay opens one bidirectional stream,
//! sends [`Enrol`] with its one-time token and a CSR, and gets [`Enrolled`] (its certificate and
//! the CA) or [`Refused`]; then the control plane closes the connection.
//!
//! Bodies are JSON because these streams carry a few frames a second at most, and JSON lets a
//! newer peer add fields that an older one ignores (new fields are `#[serde(default)]` so that
//! an older peer's frame still decodes). Frame types this build does not know decode as
//! [`Frame::Unknown`] and are skipped, for the same reason.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Deserializer, Serialize};

use crate::access::VerifyKey;
use crate::stream::StreamKind;
use crate::DecodeError;

/// Largest control frame body. A config push of some thousands of services fits with room.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Where the relay stands, from its config; clients rank relays by distance before they
    /// have measured anything.
    #[serde(default, deserialize_with = "lenient_location")]
    pub location: Option<Location>,
    /// Where users reach the relay: public `host:port` or IP addresses, from its config (see
    /// [`names_port`]).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// A URL that answers at once (`/api/latency`), for timing round trips to the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_url: Option<String>,
}

/// A point on Earth, in degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

// serde_json writes a NaN or an infinity as `null`, which a plain f64 field refuses. These
// fields are hints, so a bad value reads as "unknown" instead of failing the whole frame: a
// relay's arithmetic slip must not cost it its uplink, nor one relay's bad location every
// relay's config push.

fn lenient_location<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Location>, D::Error> {
    #[derive(Deserialize)]
    struct Raw {
        lat: Option<f64>,
        lon: Option<f64>,
    }
    let raw = Option::<Raw>::deserialize(d)?;
    Ok(raw
        .and_then(|r| Some((r.lat?, r.lon?)))
        .filter(|(lat, lon)| (-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon))
        .map(|(lat, lon)| Location { lat, lon }))
}

fn lenient_load<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?
        .filter(|v| v.is_finite())
        .unwrap_or(0.0))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// How busy the relay is, from 0.0 (idle) to 1.0 (full); 0.0 when it cannot tell.
    #[serde(default, deserialize_with = "lenient_load")]
    pub load: f32,
    /// The relay's round trips to the other relays, from its own probes of their latency
    /// checks (the latest figure for each).
    #[serde(default)]
    pub peer_rtts: Vec<PeerRtt>,
    /// Round trips that clients reported to this relay since its last heartbeat, per client
    /// network (an IPv4 /24 or IPv6 /48 written as `81.2.69.0/24`).
    #[serde(default)]
    pub client_rtts: Vec<NetworkRtts>,
}

/// Clients' round trips to relays from one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRtts {
    pub network: String,
    pub rtts: Vec<PeerRtt>,
}

/// The measured side of routing, as the control plane aggregates it for relays' geo DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// Round trips between relays: each pair once.
    #[serde(default)]
    pub peers: Vec<PeerLink>,
    /// Per client network, the typical round trip its clients reported to each relay.
    #[serde(default)]
    pub networks: Vec<NetworkRtts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLink {
    pub a: String,
    pub b: String,
    pub rtt_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRtt {
    /// The other relay's name.
    pub relay: String,
    pub rtt_us: u64,
}

/// A service as relays see it: enough to route, nothing about where the backend lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub kind: StreamKind,
    /// Host names an HTTP service answers to (lower case, no port).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Who may use the service. Absent means public, as every service was before tokens.
    #[serde(default)]
    pub access: Access,
}

/// Who may reach a service through a relay.
///
/// Adding a value here is an incompatible change: an older relay could not decode the push,
/// which is the safe failure (treating an unknown rule as public would not be).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone who can reach the relay.
    #[default]
    Public,
    /// Only holders of an access token that grants this service; see [`crate::access`].
    Token,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigPush {
    /// Grows with every change; a relay ignores a push older than what it runs.
    pub generation: u64,
    pub services: Vec<ServiceInfo>,
    /// Every relay of the network that is not revoked, the receiver included (it finds itself
    /// by name).
    #[serde(default)]
    pub relays: Vec<RelayInfo>,
    /// Public keys that verify access tokens.
    #[serde(default)]
    pub access_keys: Vec<VerifyKey>,
    /// Ids (`jti`) of revoked access tokens that have not expired yet.
    #[serde(default)]
    pub revoked_tokens: Vec<String>,
    /// Measured round trips between relays and from client networks.
    #[serde(default)]
    pub routing: RoutingTable,
}

/// Whether a relay's public address (as in [`Hello::addresses`]) names its port: `host:port`,
/// `1.2.3.4:443` or `[2001:db8::1]:443`, not a bare host or IP (whose port is the listener's).
pub fn names_port(address: &str) -> bool {
    address.parse::<std::net::SocketAddr>().is_ok()
        || address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.contains(':') && port.parse::<u16>().is_ok())
}

/// A relay as other relays and clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub name: String,
    pub region: String,
    pub state: RelayState,
    /// Where users reach it, as in its [`Hello`].
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "lenient_location")]
    pub location: Option<Location>,
    /// Its smoothed round trip to the control plane that sent the push; 0 if unknown.
    #[serde(default)]
    pub rtt_us: u64,
    /// Its share of CPU at its last heartbeat, 0.0 to 1.0.
    #[serde(default, deserialize_with = "lenient_load")]
    pub load: f32,
    /// Where browsers and clients time a round trip to it, as in its [`Hello`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_url: Option<String>,
}

/// Whether a relay takes new users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayState {
    /// Connected and taking new users.
    Up,
    /// Connected but taking no new users (an operator drained it, or it is shutting down).
    Draining,
    /// Not connected, or silent for longer than the heartbeat timeout.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    pub reason: String,
}

/// Relay → control plane on an enrolment connection (ALPN `sat-enrol/1`) authenticated with
/// the relay's current certificate: please sign my next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renew {
    /// A PKCS#10 request for a fresh key pair, PEM; its subject is ignored (the control plane
    /// names the certificate after the relay it already knows on this connection).
    pub csr_pem: String,
}

/// Control plane → relay: the answer to [`Renew`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewed {
    /// The relay's new certificate first, then any intermediates, PEM.
    pub cert_chain_pem: String,
    /// When the new certificate expires, unix seconds.
    pub not_after: u64,
}

/// Control plane → relay: a [`Renew`] or an [`Enrol`] is refused. The enrolment connection is
/// closed after this frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// For the relay's operator: what is wrong and what to do.
    pub reason: String,
}

/// Relay → control plane, the only frame of an enrolment connection's relay side. `Debug`
/// hides the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrol {
    /// The `id` part of the enrolment token.
    pub token_id: String,
    /// The `secret` part of the enrolment token, as text.
    pub secret: String,
    /// A PKCS#10 request for the relay's key pair, PEM.
    pub csr_pem: String,
    /// The name the relay asks for, if its operator chose one. The control plane decides and
    /// answers with the name in [`Enrolled`].
    #[serde(default)]
    pub name: Option<String>,
    /// The relay's software version.
    pub version: String,
}

impl std::fmt::Debug for Enrol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrol")
            .field("token_id", &self.token_id)
            .field("secret", &"***")
            .field("csr_pem", &self.csr_pem)
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

/// Control plane → relay: the answer to [`Enrol`], everything the relay needs to open uplinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The relay's name in the network (also the name in its certificate).
    pub name: String,
    pub region: String,
    /// The relay's certificate first, then any intermediates, PEM.
    pub cert_chain_pem: String,
    /// The control plane's CA certificate, PEM: the relay's trust anchor from now on.
    pub ca_pem: String,
    /// When the certificate expires, unix seconds.
    pub not_after: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Heartbeat(Heartbeat),
    ConfigPush(ConfigPush),
    Drain(Drain),
    Goodbye(Goodbye),
    Renew(Renew),
    Renewed(Renewed),
    Refused(Refused),
    Enrol(Enrol),
    Enrolled(Enrolled),
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
            Self::Renew(_) => 6,
            Self::Renewed(_) => 7,
            Self::Refused(_) => 8,
            Self::Enrol(_) => 9,
            Self::Enrolled(_) => 10,
            Self::Unknown(t) => *t,
        }
    }

    /// The frame type's name, for logs and errors (`Debug` would print whole bodies).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Heartbeat(_) => "Heartbeat",
            Self::ConfigPush(_) => "ConfigPush",
            Self::Drain(_) => "Drain",
            Self::Goodbye(_) => "Goodbye",
            Self::Renew(_) => "Renew",
            Self::Renewed(_) => "Renewed",
            Self::Refused(_) => "Refused",
            Self::Enrol(_) => "Enrol",
            Self::Enrolled(_) => "Enrolled",
            Self::Unknown(_) => "unknown",
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
            Self::Renew(m) => serde_json::to_vec(m),
            Self::Renewed(m) => serde_json::to_vec(m),
            Self::Refused(m) => serde_json::to_vec(m),
            Self::Enrol(m) => serde_json::to_vec(m),
            Self::Enrolled(m) => serde_json::to_vec(m),
            Self::Unknown(_) => Ok(b"{}".to_vec()),
        }
        // Serialising plain structs of strings and numbers to a Vec cannot fail (a float that
        // is not finite becomes null, which the reader takes as unknown).
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
            6 => Self::Renew(parse(body)?),
            7 => Self::Renewed(parse(body)?),
            8 => Self::Refused(parse(body)?),
            9 => Self::Enrol(parse(body)?),
            10 => Self::Enrolled(parse(body)?),
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

    #[test]
    fn an_address_names_its_port_or_not() {
        for with in [
            "relay.example.net:443",
            "192.0.2.7:443",
            "[2001:db8::1]:443",
        ] {
            assert!(names_port(with), "{with}");
        }
        for without in [
            "relay.example.net",
            "192.0.2.7",
            "2001:db8::1",
            "host:https",
        ] {
            assert!(!names_port(without), "{without}");
        }
    }

    fn frames() -> Vec<Frame> {
        let here = Some(Location {
            lat: 52.37,
            lon: 4.89,
        });
        vec![
            Frame::Hello(Hello {
                relay: "relay-eu-1".into(),
                region: "eu-west".into(),
                version: "0.1.0".into(),
                uplink: 1,
                capabilities: vec!["http".into()],
                location: here,
                addresses: vec!["relay-eu-1.example.net:443".into(), "192.0.2.7".into()],
                latency_url: Some("https://relay-eu-1.example.net/api/latency".into()),
            }),
            Frame::Heartbeat(Heartbeat {
                seq: 7,
                open_streams: 3,
                user_connections: 2,
                rtt_us: 250,
                generation: 4,
                draining: false,
                load: 0.25,
                peer_rtts: vec![PeerRtt {
                    relay: "relay-us-1".into(),
                    rtt_us: 80_000,
                }],
                client_rtts: vec![NetworkRtts {
                    network: "81.2.69.0/24".into(),
                    rtts: vec![PeerRtt {
                        relay: "relay-eu-1".into(),
                        rtt_us: 9_000,
                    }],
                }],
            }),
            Frame::ConfigPush(ConfigPush {
                generation: 4,
                services: vec![
                    ServiceInfo {
                        name: "web".into(),
                        kind: StreamKind::Http,
                        hostnames: vec!["web.example.com".into()],
                        access: Access::Token,
                    },
                    ServiceInfo {
                        name: "ssh".into(),
                        kind: StreamKind::Tcp,
                        hostnames: vec![],
                        access: Access::Public,
                    },
                ],
                relays: vec![
                    RelayInfo {
                        name: "relay-eu-1".into(),
                        region: "eu-west".into(),
                        state: RelayState::Up,
                        addresses: vec!["192.0.2.7:443".into()],
                        location: here,
                        rtt_us: 250,
                        load: 0.0,
                        latency_url: None,
                    },
                    RelayInfo {
                        name: "relay-us-1".into(),
                        region: "us-east".into(),
                        state: RelayState::Draining,
                        addresses: vec![],
                        location: None,
                        rtt_us: 0,
                        load: 0.0,
                        latency_url: None,
                    },
                ],
                access_keys: vec![VerifyKey {
                    kid: "k1".into(),
                    public: [7; 32],
                }],
                revoked_tokens: vec!["0123456789abcdef".into()],
                routing: RoutingTable {
                    peers: vec![PeerLink {
                        a: "relay-eu-1".into(),
                        b: "relay-us-1".into(),
                        rtt_us: 80_000,
                    }],
                    networks: vec![],
                },
            }),
            Frame::Drain(Drain {
                reason: "sigterm".into(),
            }),
            Frame::Goodbye(Goodbye {
                reason: "bye".into(),
            }),
            Frame::Renew(Renew {
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n...".into(),
            }),
            Frame::Renewed(Renewed {
                cert_chain_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
                not_after: 1_700_000_000,
            }),
            Frame::Refused(Refused {
                reason: "token already used".into(),
            }),
            Frame::Enrol(Enrol {
                token_id: "0123456789abcdef".into(),
                secret: "c2VjcmV0".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n...".into(),
                name: Some("relay-eu-2".into()),
                version: "0.1.0".into(),
            }),
            Frame::Enrolled(Enrolled {
                name: "relay-eu-2".into(),
                region: "eu-west".into(),
                cert_chain_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
                not_after: 1_700_000_000,
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

    #[test]
    fn every_frame_type_is_covered_with_its_code() {
        let codes: Vec<u8> = frames().iter().map(Frame::type_code).collect();
        assert_eq!(codes, (1..=10).collect::<Vec<u8>>());
        for f in frames() {
            assert_ne!(f.name(), "unknown");
            assert_eq!(
                Frame::decode_body(f.type_code(), &f.to_bytes()[5..]).unwrap(),
                f
            );
        }
    }

    fn decode(ty: u8, body: &str) -> Frame {
        Frame::decode_body(ty, body.as_bytes()).unwrap()
    }

    #[test]
    fn frames_of_older_peers_decode_with_defaults() {
        let hello = decode(1, r#"{"relay":"r","region":"eu","version":"0.1.0"}"#);
        assert_eq!(
            hello,
            Frame::Hello(Hello {
                relay: "r".into(),
                region: "eu".into(),
                version: "0.1.0".into(),
                ..Hello::default()
            })
        );
        let hb = decode(
            2,
            r#"{"seq":1,"open_streams":0,"user_connections":0,"rtt_us":9,"generation":3}"#,
        );
        assert_eq!(
            hb,
            Frame::Heartbeat(Heartbeat {
                seq: 1,
                rtt_us: 9,
                generation: 3,
                ..Heartbeat::default()
            })
        );
        let push = decode(
            3,
            r#"{"generation":2,"services":[{"name":"web","kind":"http","hostnames":["a.example"]}]}"#,
        );
        assert_eq!(
            push,
            Frame::ConfigPush(ConfigPush {
                generation: 2,
                services: vec![ServiceInfo {
                    name: "web".into(),
                    kind: StreamKind::Http,
                    hostnames: vec!["a.example".into()],
                    access: Access::Public,
                }],
                ..ConfigPush::default()
            })
        );
    }

    #[test]
    fn enumerations_are_lowercase_words() {
        let push = ConfigPush {
            services: vec![ServiceInfo {
                name: "web".into(),
                kind: StreamKind::Http,
                hostnames: vec![],
                access: Access::Token,
            }],
            relays: vec![RelayInfo {
                name: "r".into(),
                region: "eu".into(),
                state: RelayState::Down,
                addresses: vec![],
                location: None,
                rtt_us: 0,
                load: 0.0,
                latency_url: None,
            }],
            ..ConfigPush::default()
        };
        let json = serde_json::to_value(&push).unwrap();
        assert_eq!(json["services"][0]["access"], "token");
        assert_eq!(json["relays"][0]["state"], "down");
        // A rule this build does not know fails the push rather than opening the service.
        let body = r#"{"generation":1,"services":[{"name":"w","kind":"tcp","access":"sso"}]}"#;
        assert!(Frame::decode_body(3, body.as_bytes()).is_err());
    }

    #[test]
    fn bad_hints_read_as_unknown_instead_of_failing_the_frame() {
        let hb = Heartbeat {
            load: f32::NAN,
            ..Heartbeat::default()
        };
        let Frame::Heartbeat(back) = decode(2, &serde_json::to_string(&hb).unwrap()) else {
            panic!("not a heartbeat");
        };
        assert_eq!(back.load, 0.0);

        let hello = Hello {
            location: Some(Location {
                lat: f64::INFINITY,
                lon: 0.0,
            }),
            ..Hello::default()
        };
        let Frame::Hello(back) = decode(1, &serde_json::to_string(&hello).unwrap()) else {
            panic!("not a hello");
        };
        assert_eq!(back.location, None);
        for body in [
            r#"{"relay":"r","region":"eu","version":"1","location":{"lat":91,"lon":0}}"#,
            r#"{"relay":"r","region":"eu","version":"1","location":{"lat":1}}"#,
            r#"{"relay":"r","region":"eu","version":"1","location":null}"#,
        ] {
            let Frame::Hello(h) = decode(1, body) else {
                panic!("not a hello");
            };
            assert_eq!(h.location, None, "{body}");
        }
        let body = r#"{"relay":"r","region":"eu","version":"1","location":"here"}"#;
        assert!(Frame::decode_body(1, body.as_bytes()).is_err());
    }

    #[test]
    fn enrol_debug_hides_the_secret() {
        let Some(Frame::Enrol(enrol)) = frames().into_iter().find(|f| f.type_code() == 9) else {
            panic!("no Enrol frame");
        };
        let debug = format!("{:?}", Frame::Enrol(enrol.clone()));
        assert!(!debug.contains(&enrol.secret), "{debug}");
        assert!(debug.contains("***"));
    }
}
