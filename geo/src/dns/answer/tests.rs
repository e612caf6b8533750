//! The handler, driven with queries built by hickory-proto and parsed as hickory-server parses
//! them, and its answers encoded as hickory-server encodes them; no sockets.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_proto::xfer::Protocol;
use hickory_server::authority::{MessageRequest, MessageResponse};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tokio::sync::watch;

use crate::dns::{DnsConfig, DnsRelay, DnsTable, GeoDns, Network};
use crate::geoip::GeoIp;
use crate::rank::{PeerRtts, Relay, State};
use crate::Location;

const LONDON: Location = Location {
    lat: 51.5074,
    lon: -0.1278,
};
const NEW_YORK: Location = Location {
    lat: 40.7128,
    lon: -74.0060,
};
const SINGAPORE: Location = Location {
    lat: 1.3521,
    lon: 103.8198,
};

/// The resolver the queries come from: an address the test database does not place.
const RESOLVER: &str = "192.0.2.53:5353";

fn geoip() -> Arc<GeoIp> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/GeoIP2-City-Test.mmdb");
    Arc::new(GeoIp::open(&path).expect("test database"))
}

fn relay(name: &str, location: Location, addresses: &[&str]) -> DnsRelay {
    let relay = Relay {
        name: name.to_owned(),
        region: format!("region-{name}"),
        state: State::Up,
        location: Some(location),
        primary_rtt: Some(Duration::from_millis(10)),
        load: 0.1,
    };
    DnsRelay::new(relay, addresses)
}

/// Relays in London, New York and Singapore, dual-stack, all 10 ms from the primary.
fn three_relays() -> Vec<DnsRelay> {
    vec![
        relay("lon", LONDON, &["198.51.100.1:443", "[2001:db8::1]:443"]),
        relay("nyc", NEW_YORK, &["198.51.100.2:443", "[2001:db8::2]:443"]),
        relay("sin", SINGAPORE, &["198.51.100.3:443", "[2001:db8::3]:443"]),
    ]
}

fn config() -> DnsConfig {
    let mut config = DnsConfig::for_zone("sat.example.com");
    config.name_servers = vec!["ns1.sat.example.com".into(), "ns.other.example.net.".into()];
    config.hosts = [
        ("app".to_owned(), "app".to_owned()),
        ("api.sat.example.com.".to_owned(), "api".to_owned()),
        ("deep.tree".to_owned(), "deep".to_owned()),
    ]
    .into();
    config
}

/// A table of relays, with nothing measured about them.
fn relays_only(relays: &[DnsRelay]) -> DnsTable {
    DnsTable::new(relays.to_vec(), PeerRtts::default(), BTreeMap::new())
}

struct Fixture {
    dns: GeoDns,
    table: watch::Sender<Arc<DnsTable>>,
}

impl Fixture {
    fn new(config: &DnsConfig, relays: &[DnsRelay]) -> Self {
        let (table, rx) = watch::channel(Arc::new(relays_only(relays)));
        let dns = GeoDns::new(config, rx, geoip()).expect("valid config");
        Self { dns, table }
    }

    fn standard() -> Self {
        Self::new(&config(), &three_relays())
    }

    fn set_relays(&self, relays: &[DnsRelay]) {
        self.set_table(relays_only(relays));
    }

    fn set_table(&self, table: DnsTable) {
        self.table.send_replace(Arc::new(table));
    }

    /// Sends `query` as bytes from the resolver over `protocol` and returns the decoded answer.
    async fn ask_over(&self, query: &Message, protocol: Protocol) -> Message {
        let bytes = query.to_bytes().expect("query encodes");
        self.ask_bytes(&bytes, protocol)
            .await
            .expect("the query parses")
    }

    async fn ask(&self, query: &Message) -> Message {
        self.ask_over(query, Protocol::Udp).await
    }

    /// What hickory-server does with a datagram, up to our handler; `Err` when it does not
    /// parse (hickory-server then answers FORMERR itself, or drops it when even the header is
    /// short).
    async fn ask_bytes(&self, bytes: &[u8], protocol: Protocol) -> Result<Message, String> {
        if protocol == Protocol::Udp {
            return self.ask_datagram(bytes);
        }
        let request = MessageRequest::read(&mut BinDecoder::new(bytes)).map_err(|e| {
            if e.kind().as_form_error().is_some() {
                "FORMERR".to_owned()
            } else {
                format!("dropped: {e}")
            }
        })?;
        let src: SocketAddr = RESOLVER.parse().unwrap();
        let request = Request::new(request, src, protocol);
        let capture = Capture {
            protocol,
            sent: Arc::default(),
        };
        self.dns.handle_request(&request, capture.clone()).await;
        let sent = capture.sent.lock().unwrap().take().expect("an answer");
        Ok(Message::from_vec(&sent).expect("the answer decodes"))
    }
}

impl Fixture {
    /// What a UDP thread does with a datagram: the same `Err`s as [`Fixture::ask_bytes`]
    /// when there is no answer, or when the query does not parse (and then the answer must be
    /// FORMERR, with the query's ID).
    fn ask_datagram(&self, bytes: &[u8]) -> Result<Message, String> {
        let mut out = Vec::new();
        self.dns
            .answer_datagram(bytes, RESOLVER.parse().unwrap(), &mut out);
        if out.is_empty() {
            return Err("dropped".to_owned());
        }
        let answer = Message::from_vec(&out).expect("the answer decodes");
        if MessageRequest::read(&mut BinDecoder::new(bytes)).is_err() {
            assert_eq!(answer.response_code(), ResponseCode::FormErr);
            assert_eq!(answer.id(), u16::from_be_bytes([bytes[0], bytes[1]]));
            assert!(answer.queries().is_empty() && answer.answers().is_empty());
            return Err("FORMERR".to_owned());
        }
        Ok(answer)
    }
}

/// A ResponseHandler that encodes as hickory-server's `ResponseHandle` does (the same size
/// limits per transport) and keeps the bytes.
#[derive(Clone)]
struct Capture {
    protocol: Protocol,
    sent: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> io::Result<ResponseInfo> {
        let max = match self.protocol {
            Protocol::Udp => response.get_edns().as_ref().map_or(4096, Edns::max_payload),
            _ => u16::MAX,
        };
        let mut buffer = Vec::new();
        let mut encoder = BinEncoder::new(&mut buffer);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(io::Error::other)?;
        *self.sent.lock().unwrap() = Some(buffer);
        Ok(info)
    }
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new();
    message
        .set_id(0x5a7e)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

fn with_edns(mut message: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.set_edns(edns);
    message
}

fn with_ecs(message: Message, subnet: &str) -> Message {
    let mut message = with_edns(message, 1232);
    let ecs: ClientSubnet = subnet.parse().unwrap();
    edns_mut(&mut message)
        .options_mut()
        .insert(EdnsOption::Subnet(ecs));
    message
}

fn edns_mut(message: &mut Message) -> &mut Edns {
    message.extensions_mut().get_or_insert_with(Edns::new)
}

fn ecs_of(answer: &Message) -> Option<ClientSubnet> {
    match answer.extensions().as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(ecs) => Some(*ecs),
        _ => None,
    }
}

fn addresses(answer: &Message) -> Vec<IpAddr> {
    answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

const LON4: &str = "198.51.100.1";
const NYC4: &str = "198.51.100.2";
const SIN4: &str = "198.51.100.3";

/// The test database's networks (see tests/data/README.md): each ECS subnet gets the relays
/// nearest its city, and the scope is the database network's prefix length, whatever the
/// source prefix.
#[tokio::test]
async fn ecs_answers_for_the_test_networks() {
    let f = Fixture::standard();
    let cases = [
        // London: New York is nearer than Singapore.
        ("81.2.69.142/32", 31, [LON4, NYC4]),
        // Milton, WA: New York, then London.
        ("216.160.83.56/32", 29, [NYC4, LON4]),
        ("216.160.83.56/29", 29, [NYC4, LON4]),
        // Changchun: Singapore, then London (8,000 km) before New York (10,500 km).
        ("175.16.199.0/24", 24, [SIN4, LON4]),
        // Linköping.
        ("89.160.20.112/28", 28, [LON4, NYC4]),
        ("89.160.20.112/32", 28, [LON4, NYC4]),
    ];
    for (subnet, scope, want) in cases {
        let answer = f
            .ask(&with_ecs(
                query("app.sat.example.com.", RecordType::A),
                subnet,
            ))
            .await;
        assert_eq!(answer.response_code(), ResponseCode::NoError, "{subnet}");
        assert!(answer.authoritative(), "{subnet}");
        assert_eq!(addresses(&answer), ips(&want), "{subnet}");
        let ecs = ecs_of(&answer).expect("ECS echoed");
        let sent: ClientSubnet = subnet.parse().unwrap();
        assert_eq!(ecs.addr(), sent.addr(), "{subnet}");
        assert_eq!(ecs.source_prefix(), sent.source_prefix(), "{subnet}");
        assert_eq!(ecs.scope_prefix(), scope, "{subnet}");
        assert!(answer.answers().iter().all(|r| r.ttl() == 30), "{subnet}");
    }
}

#[tokio::test]
async fn ipv6_subnet_gets_its_network_scope() {
    let f = Fixture::standard();
    let answer = f
        .ask(&with_ecs(
            query("app.sat.example.com.", RecordType::AAAA),
            "2001:480:10::/56",
        ))
        .await;
    assert_eq!(addresses(&answer), ips(&["2001:db8::2", "2001:db8::1"]));
    let ecs = ecs_of(&answer).unwrap();
    assert_eq!((ecs.source_prefix(), ecs.scope_prefix()), (56, 48));
    assert!(ecs.addr().is_ipv6());
}

#[tokio::test]
async fn unplaced_subnet_is_scoped_to_its_source_prefix() {
    let f = Fixture::standard();
    // 81.2.69.0/24 is what a resolver sends for the London address; the database has no
    // record for 81.2.69.0.
    for (subnet, scope) in [("81.2.69.0/24", 24), ("10.0.0.0/8", 8)] {
        let answer = f
            .ask(&with_ecs(
                query("app.sat.example.com.", RecordType::A),
                subnet,
            ))
            .await;
        assert_eq!(answer.answers().len(), 2, "{subnet}");
        assert_eq!(ecs_of(&answer).unwrap().scope_prefix(), scope, "{subnet}");
    }
}

#[tokio::test]
async fn zero_source_prefix_uses_the_resolver_and_scope_zero() {
    let f = Fixture::standard();
    let answer = f
        .ask(&with_ecs(
            query("app.sat.example.com.", RecordType::A),
            "0.0.0.0/0",
        ))
        .await;
    assert_eq!(answer.answers().len(), 2);
    let ecs = ecs_of(&answer).unwrap();
    assert_eq!((ecs.source_prefix(), ecs.scope_prefix()), (0, 0));
}

#[tokio::test]
async fn without_ecs_the_resolver_address_places_the_client() {
    let f = Fixture::standard();
    let bytes = query("app.sat.example.com.", RecordType::A)
        .to_bytes()
        .unwrap();
    let request = MessageRequest::read(&mut BinDecoder::new(&bytes)).unwrap();
    for (resolver, want) in [
        ("81.2.69.142:53", [LON4, NYC4]),
        ("[::ffff:175.16.199.7]:53", [SIN4, LON4]),
        ("216.160.83.57:53", [NYC4, LON4]),
    ] {
        let reply = f
            .dns
            .reply(&request, resolver.parse().unwrap(), Protocol::Udp);
        let got: Vec<IpAddr> = reply
            .answers
            .iter()
            .filter_map(|r| r.data().ip_addr())
            .collect();
        assert_eq!(got, ips(&want), "{resolver}");
        // A query without EDNS gets no OPT record, so no ECS either.
        assert!(reply.edns.is_none());
    }
    // With EDNS but no ECS: an OPT record, without ECS.
    let answer = f
        .ask(&with_edns(
            query("app.sat.example.com.", RecordType::A),
            1232,
        ))
        .await;
    assert!(answer.extensions().is_some());
    assert_eq!(ecs_of(&answer), None);
}

/// Round trips that clients of each network reported, in ms, by relay name.
fn networks(entries: &[(&str, &[(&str, u64)])]) -> BTreeMap<Network, BTreeMap<String, Duration>> {
    entries
        .iter()
        .map(|&(network, rtts)| {
            let rtts = rtts
                .iter()
                .map(|&(relay, ms)| (relay.to_owned(), Duration::from_millis(ms)))
                .collect();
            (network.parse().unwrap(), rtts)
        })
        .collect()
}

/// The three relays, and what clients of `measured` networks reported.
fn measured_table(measured: &[(&str, &[(&str, u64)])]) -> DnsTable {
    DnsTable::new(three_relays(), PeerRtts::default(), networks(measured))
}

/// The addresses and the ECS scope of the answer to an A (or, for an IPv6 subnet, AAAA) query
/// for `subnet`.
async fn answer_for(f: &Fixture, subnet: &str) -> (Vec<IpAddr>, u8) {
    let sent: ClientSubnet = subnet.parse().unwrap();
    let qtype = if sent.addr().is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    };
    let answer = f
        .ask(&with_ecs(query("app.sat.example.com.", qtype), subnet))
        .await;
    let scope = ecs_of(&answer).expect("ECS echoed").scope_prefix();
    (addresses(&answer), scope)
}

#[tokio::test]
async fn measurements_rank_the_answer_for_their_network_only() {
    let f = Fixture::standard();
    // Clients in London's 81.2.69.0/24 find Singapore 3 ms away and London 200 ms: a tunnel,
    // say, that GeoIP cannot know about.
    f.set_table(measured_table(&[(
        "81.2.69.0/24",
        &[("sin", 3), ("lon", 200)],
    )]));
    let cases = [
        // New York, unmeasured, is placed by distance (about 89 ms) and beats London. GeoIP's
        // network (a /31) is narrower than the /24, so its scope stands.
        ("81.2.69.142/32", [SIN4, NYC4], 31),
        // GeoIP does not place the /24 itself: the measured relays come first.
        ("81.2.69.0/24", [SIN4, LON4], 24),
        // The /24 next door, and another city: GeoIP as before.
        ("81.2.68.0/24", [LON4, NYC4], 24),
        ("89.160.20.112/28", [LON4, NYC4], 28),
    ];
    for (subnet, want, scope) in cases {
        assert_eq!(
            answer_for(&f, subnet).await,
            (ips(&want), scope),
            "{subnet}"
        );
    }
}

#[tokio::test]
async fn an_answer_from_measurements_is_scoped_to_their_network() {
    let f = Fixture::standard();
    // One GeoIP network, San Diego's 214.78.120.0/22: an answer from GeoIP holds for all of
    // it, but one from what clients of 214.78.121.0/24 measured holds for that /24 only.
    let geo_only = [NYC4, LON4];
    assert_eq!(
        answer_for(&f, "214.78.121.0/24").await,
        (ips(&geo_only), 22)
    );
    f.set_table(measured_table(&[("214.78.121.0/24", &[("sin", 5)])]));
    assert_eq!(
        answer_for(&f, "214.78.121.0/24").await,
        (ips(&[SIN4, NYC4]), 24)
    );
    assert_eq!(
        answer_for(&f, "214.78.121.7/32").await,
        (ips(&[SIN4, NYC4]), 24)
    );
    // The rest of the /22 is still placed by GeoIP, but the answer no longer holds for the
    // whole /22: a resolver would hand it to the measured /24's clients too.
    assert_eq!(
        answer_for(&f, "214.78.120.0/24").await,
        (ips(&geo_only), 24)
    );
    assert_eq!(
        answer_for(&f, "214.78.123.9/32").await,
        (ips(&geo_only), 24)
    );

    // IPv6: Japan's 2001:218::/32 in GeoIP (Singapore is nearest); measured, its /48 only.
    assert_eq!(
        answer_for(&f, "2001:218:0:1::/64").await,
        (ips(&["2001:db8::3", "2001:db8::1"]), 32)
    );
    f.set_table(measured_table(&[("2001:218::/48", &[("nyc", 4)])]));
    assert_eq!(
        answer_for(&f, "2001:218:0:1::/64").await,
        (ips(&["2001:db8::2", "2001:db8::3"]), 48)
    );
    assert_eq!(
        answer_for(&f, "2001:218:1::/48").await,
        (ips(&["2001:db8::3", "2001:db8::1"]), 48)
    );

    // Measurements outside the GeoIP network leave its scope alone.
    f.set_table(measured_table(&[("214.78.124.0/24", &[("sin", 5)])]));
    assert_eq!(
        answer_for(&f, "214.78.121.0/24").await,
        (ips(&geo_only), 22)
    );
}

#[tokio::test]
async fn a_subnet_shorter_than_the_network_does_not_use_its_measurements() {
    let plain = Fixture::standard();
    let f = Fixture::standard();
    f.set_table(measured_table(&[
        ("214.78.120.0/24", &[("sin", 5)]),
        ("214.78.121.0/24", &[("sin", 5)]),
        ("2001:218::/48", &[("nyc", 4)]),
    ]));
    // A /23 and a /16 that hold the measured /24s: they may hold other networks too.
    // Their answers are GeoIP's, but hold for one client network only, since the measured
    // networks inside are answered otherwise.
    for (subnet, scope) in [
        ("214.78.120.0/23", 24),
        ("214.78.0.0/16", 24),
        ("2001:218::/40", 48),
    ] {
        assert_eq!(
            answer_for(&f, subnet).await.0,
            answer_for(&plain, subnet).await.0,
            "{subnet}"
        );
        assert_eq!(answer_for(&f, subnet).await.1, scope, "{subnet}");
    }
    assert_eq!(answer_for(&plain, "214.78.0.0/16").await.1, 16);
}

#[tokio::test]
async fn without_ecs_the_resolvers_network_measurements_rank() {
    let f = Fixture::standard();
    // RESOLVER is in 192.0.2.0/24, which GeoIP does not place.
    f.set_table(measured_table(&[("192.0.2.0/24", &[("sin", 5)])]));
    let answer = f.ask(&query("app.sat.example.com.", RecordType::A)).await;
    assert_eq!(addresses(&answer), ips(&[SIN4, LON4]));
    // A source prefix of 0 asks that no address be used to tailor the answer: not even the
    // resolver's network's measurements, which would need a scope of 24 for 0.0.0.0.
    let answer = f
        .ask(&with_ecs(
            query("app.sat.example.com.", RecordType::A),
            "0.0.0.0/0",
        ))
        .await;
    assert_eq!(addresses(&answer), ips(&[LON4, NYC4]));
    assert_eq!(ecs_of(&answer).unwrap().scope_prefix(), 0);
}

#[tokio::test]
async fn peer_round_trips_place_the_relays_a_network_has_not_measured() {
    let f = Fixture::standard();
    let measured = networks(&[("81.2.69.0/24", &[("lon", 50)])]);
    // Without peers, New York and Singapore are both unknown, and go by name.
    f.set_table(DnsTable::new(
        three_relays(),
        PeerRtts::default(),
        measured.clone(),
    ));
    assert_eq!(
        answer_for(&f, "81.2.69.0/24").await,
        (ips(&[LON4, NYC4]), 24)
    );
    // Singapore is 5 ms from London, so at most 55 ms from these clients.
    let peers = [("lon", "sin", Duration::from_millis(5))]
        .into_iter()
        .collect();
    f.set_table(DnsTable::new(three_relays(), peers, measured));
    assert_eq!(
        answer_for(&f, "81.2.69.0/24").await,
        (ips(&[LON4, SIN4]), 24)
    );
}

#[tokio::test]
async fn draining_and_down_relays_are_never_handed_out() {
    let f = Fixture::standard();
    let mut relays = three_relays();
    relays[0].relay.state = State::Draining;
    f.set_relays(&relays);
    let london = with_ecs(
        query("app.sat.example.com.", RecordType::A),
        "81.2.69.142/32",
    );
    assert_eq!(addresses(&f.ask(&london).await), ips(&[NYC4, SIN4]));

    relays[1].relay.state = State::Down;
    f.set_relays(&relays);
    assert_eq!(addresses(&f.ask(&london).await), ips(&[SIN4]));

    // None left: NODATA, cached no longer than an answer would be.
    relays[2].relay.state = State::Down;
    f.set_relays(&relays);
    let answer = f.ask(&london).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(answer.answers().is_empty());
    let soa = &answer.name_servers()[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.ttl(), 30);

    // Back in rotation: handed out again on the next query.
    f.set_relays(&three_relays());
    assert_eq!(addresses(&f.ask(&london).await), ips(&[LON4, NYC4]));
}

#[tokio::test]
async fn overloaded_relay_is_demoted() {
    let f = Fixture::standard();
    let mut relays = three_relays();
    relays[0].relay.load = 0.95;
    f.set_relays(&relays);
    let london = with_ecs(
        query("app.sat.example.com.", RecordType::A),
        "81.2.69.142/32",
    );
    assert_eq!(addresses(&f.ask(&london).await), ips(&[NYC4, SIN4]));
}

#[tokio::test]
async fn one_relay_per_answer_when_configured() {
    let mut config = config();
    config.relays_per_answer = 1;
    let f = Fixture::new(&config, &three_relays());
    let answer = f
        .ask(&with_ecs(
            query("app.sat.example.com.", RecordType::A),
            "89.160.20.112/28",
        ))
        .await;
    assert_eq!(addresses(&answer), ips(&[LON4]));
}

#[tokio::test]
async fn relays_without_the_family_are_skipped() {
    let f = Fixture::standard();
    let relays = vec![
        relay("lon", LONDON, &["198.51.100.1"]),
        relay("nyc", NEW_YORK, &["198.51.100.2", "2001:db8::2"]),
        relay(
            "sin",
            SINGAPORE,
            &["2001:db8::3", "relay-sin.example.net:443"],
        ),
    ];
    f.set_relays(&relays);
    let london = "81.2.69.142/32";
    let a = f
        .ask(&with_ecs(
            query("app.sat.example.com.", RecordType::A),
            london,
        ))
        .await;
    assert_eq!(addresses(&a), ips(&[LON4, NYC4]));
    let aaaa = f
        .ask(&with_ecs(
            query("app.sat.example.com.", RecordType::AAAA),
            london,
        ))
        .await;
    assert_eq!(addresses(&aaaa), ips(&["2001:db8::2", "2001:db8::3"]));
    let any = f
        .ask(&with_ecs(
            query("app.sat.example.com.", RecordType::ANY),
            london,
        ))
        .await;
    assert_eq!(
        addresses(&any),
        ips(&[LON4, NYC4, "2001:db8::2", "2001:db8::3"])
    );
}

#[tokio::test]
async fn answers_keep_the_question_spelling() {
    let f = Fixture::standard();
    let answer = f.ask(&query("aPp.SAT.example.COM.", RecordType::A)).await;
    assert_eq!(answer.answers().len(), 2);
    for record in answer.answers() {
        assert!(record
            .name()
            .eq_case(&Name::from_ascii("aPp.SAT.example.COM.").unwrap()));
    }
    let api = f.ask(&query("api.sat.example.com.", RecordType::A)).await;
    assert_eq!(api.answers().len(), 2);
}

/// UDP answers copy the question as it came, and name their records with a pointer to it; the
/// TCP path (hickory-server's encoder) gives the same message.
#[tokio::test]
async fn udp_answers_copy_the_question_and_match_tcp() {
    let f = Fixture::standard();
    let q = with_ecs(
        query("aPp.SAT.example.COM.", RecordType::A),
        "81.2.69.142/32",
    );
    let bytes = q.to_bytes().unwrap();
    let mut out = Vec::new();
    f.dns
        .answer_datagram(&bytes, RESOLVER.parse().unwrap(), &mut out);
    let question_len = "aPp.SAT.example.COM.".len() + 1 + 4;
    assert_eq!(out[12..12 + question_len], bytes[12..12 + question_len]);
    // The first answer's owner: a pointer to offset 12, the question's name.
    assert_eq!(out[12 + question_len..][..2], [0xc0, 0x0c]);
    let udp = Message::from_vec(&out).unwrap();
    let tcp = f.ask_over(&q, Protocol::Tcp).await;
    assert_eq!(udp.to_vec().unwrap(), tcp.to_vec().unwrap());
    assert_eq!(addresses(&udp), ips(&[LON4, NYC4]));
}

/// The fast path (`fast.rs`) writes the same bytes the general path does, for every query
/// shape it takes; and it takes the common ones.
#[test]
fn the_fast_path_answers_as_the_general_path_does() {
    let f = Fixture::standard();
    let names = [
        "app.sat.example.com.",
        "aPp.SAT.example.COM.",
        "api.sat.example.com.",
        "deep.tree.sat.example.com.",
        "ns1.sat.example.com.",
        "sat.example.com.",
        "tree.sat.example.com.",
        "missing.sat.example.com.",
        "app.other.example.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::MX,
        RecordType::ANY,
    ];
    let subnets = [
        None,
        Some("81.2.69.142/32"),
        Some("81.2.69.0/24"),
        Some("216.160.83.56/29"),
        Some("2001:218::/32"),
        Some("0.0.0.0/0"),
    ];
    let sources = ["192.0.2.53:5353", "81.2.69.142:53", "[2001:db8::53]:53"];
    let mut fast_answers = 0;
    let mut compared = 0;
    for name in names {
        for qtype in types {
            for subnet in subnets {
                for (payload, flags) in [(None, 0u8), (Some(512), 1), (Some(4096), 2)] {
                    let mut q = query(name, qtype);
                    q.set_recursion_desired(flags != 1)
                        .set_checking_disabled(flags == 2);
                    let q = match (subnet, payload) {
                        (Some(subnet), _) => with_ecs(q, subnet),
                        (None, Some(payload)) => with_edns(q, payload),
                        (None, None) => q,
                    };
                    let mut q = q;
                    if flags == 2 {
                        edns_mut(&mut q).set_dnssec_ok(true);
                    }
                    let bytes = q.to_bytes().unwrap();
                    for src in sources {
                        let src: SocketAddr = src.parse().unwrap();
                        let (mut fast, mut general) = (Vec::new(), Vec::new());
                        f.dns.answer_general(&bytes, src, &mut general);
                        compared += 1;
                        if f.dns.answer_fast(&bytes, src, &mut fast) {
                            fast_answers += 1;
                            assert_eq!(
                                fast, general,
                                "{name} {qtype} {subnet:?} {payload:?} from {src}"
                            );
                        } else {
                            assert!(fast.is_empty(), "a declined query leaves no bytes");
                        }
                    }
                }
            }
        }
    }
    // app, its other spelling, api, deep.tree and ns1; A and AAAA; every subnet, size and
    // source.
    assert_eq!(
        fast_answers,
        5 * 2 * subnets.len() * 3 * sources.len(),
        "of {compared}"
    );
}

fn with_option(mut message: Message, code: u16, data: &[u8]) -> Message {
    edns_mut(&mut message)
        .options_mut()
        .insert(EdnsOption::Unknown(code, data.to_vec()));
    message
}

/// Resolvers send other EDNS options too (BIND a COOKIE with every query). The fast path
/// answers past those the general path ignores, and leaves it the ones it judges.
#[test]
fn other_edns_options_on_the_fast_path() {
    let f = Fixture::standard();
    let src: SocketAddr = RESOLVER.parse().unwrap();
    let cookie = [0x5a; 8];
    let ecs = with_ecs(
        query("app.sat.example.com.", RecordType::A),
        "81.2.69.142/32",
    );
    let plain = with_edns(query("app.sat.example.com.", RecordType::AAAA), 1232);
    for q in [
        with_option(ecs.clone(), 10, &cookie),
        with_option(plain, 10, &cookie),
        with_option(with_option(ecs.clone(), 3, &[]), 12, &[0; 16]),
    ] {
        let bytes = q.to_bytes().unwrap();
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        assert!(f.dns.answer_fast(&bytes, src, &mut fast), "{q:?}");
        f.dns.answer_general(&bytes, src, &mut general);
        assert_eq!(fast, general);
    }
    // DAU, which hickory-proto parses: the general path's to judge.
    let dau = with_option(ecs, 5, &[8, 13]).to_bytes().unwrap();
    assert!(!f.dns.answer_fast(&dau, src, &mut Vec::new()));
}

/// Mutated queries (bytes changed, cut or added at random, from a fixed seed): neither path
/// panics, and whatever the fast path still takes, it answers as the general path does.
#[test]
fn mutated_queries_never_split_the_two_paths() {
    let f = Fixture::standard();
    let src: SocketAddr = RESOLVER.parse().unwrap();
    let seeds: Vec<Vec<u8>> = [
        query("app.sat.example.com.", RecordType::A),
        with_edns(query("api.sat.example.com.", RecordType::AAAA), 1232),
        with_ecs(
            query("aPp.sat.example.com.", RecordType::A),
            "81.2.69.142/32",
        ),
        with_ecs(
            query("ns1.sat.example.com.", RecordType::AAAA),
            "2001:218::/32",
        ),
        with_option(
            with_ecs(query("app.sat.example.com.", RecordType::A), "81.2.69.0/24"),
            10,
            &[0x5a; 8],
        ),
    ]
    .iter()
    .map(|q| q.to_bytes().unwrap())
    .collect();
    // xorshift64: deterministic, so a failure replays.
    let mut state: u64 = 0x5a7e_d15c_0ffe_e123;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % below as u64).unwrap()
    };
    let (mut fast_answers, mut declined) = (0, 0);
    for round in 0..60_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..=next(3) {
            match next(4) {
                0 if !bytes.is_empty() => {
                    let cut = next(bytes.len());
                    bytes.truncate(cut);
                }
                1 => bytes.push(u8::try_from(next(256)).unwrap()),
                _ if !bytes.is_empty() => {
                    let at = next(bytes.len());
                    bytes[at] = u8::try_from(next(256)).unwrap();
                }
                _ => {}
            }
        }
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        f.dns.answer_general(&bytes, src, &mut general);
        if f.dns.answer_fast(&bytes, src, &mut fast) {
            fast_answers += 1;
            assert_eq!(fast, general, "round {round}: {bytes:02x?}");
        } else {
            declined += 1;
        }
    }
    // The mutations leave many queries of the common shape (a changed ID, a changed case) and
    // break many others.
    assert!(
        fast_answers > 1000 && declined > 1000,
        "{fast_answers} fast, {declined} declined"
    );
}

/// Relays the fast path cannot answer for (none up, or an answer too big for the client's
/// buffer) fall through to the general path's NODATA and truncation.
#[test]
fn the_fast_path_leaves_nodata_and_truncation_to_the_general_path() {
    let many: Vec<DnsRelay> = (1..=40)
        .map(|n| {
            let v6 = format!("[2001:db8::{n:x}]:443");
            relay(&format!("r{n}"), LONDON, &[v6.as_str()])
        })
        .collect();
    let mut config = config();
    config.relays_per_answer = 2;
    let f = Fixture::new(&config, &many[..1]);
    let src: SocketAddr = RESOLVER.parse().unwrap();
    // Only IPv6 addresses: an A query is NODATA.
    let a = query("app.sat.example.com.", RecordType::A)
        .to_bytes()
        .unwrap();
    let mut out = Vec::new();
    assert!(!f.dns.answer_fast(&a, src, &mut out) && out.is_empty());
    // Within the limit, the fast path answers.
    let aaaa = with_edns(query("app.sat.example.com.", RecordType::AAAA), 512)
        .to_bytes()
        .unwrap();
    assert!(f.dns.answer_fast(&aaaa, src, &mut out));
    // A relay with many addresses overflows 512 bytes without EDNS.
    let addresses: Vec<String> = (1..=40).map(|n| format!("[2001:db8::{n:x}]:443")).collect();
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    f.set_relays(&[relay("big", LONDON, &refs)]);
    let plain = query("app.sat.example.com.", RecordType::AAAA)
        .to_bytes()
        .unwrap();
    let mut out = Vec::new();
    assert!(!f.dns.answer_fast(&plain, src, &mut out) && out.is_empty());
    f.dns.answer_datagram(&plain, src, &mut out);
    let answer = Message::from_vec(&out).unwrap();
    assert!(answer.truncated() && answer.answers().is_empty());
}

#[tokio::test]
async fn responses_and_port_zero_get_no_answer() {
    let f = Fixture::standard();
    let mut response = query("app.sat.example.com.", RecordType::A);
    response.set_message_type(MessageType::Response);
    assert_eq!(
        f.ask_datagram(&response.to_bytes().unwrap()).unwrap_err(),
        "dropped"
    );
    let good = query("app.sat.example.com.", RecordType::A)
        .to_bytes()
        .unwrap();
    let mut out = Vec::new();
    f.dns
        .answer_datagram(&good, "192.0.2.53:0".parse().unwrap(), &mut out);
    assert!(out.is_empty(), "an answer to port 0");
}

/// A query whose ECS option is `data` as it goes on the wire: FAMILY, SOURCE PREFIX-LENGTH,
/// SCOPE PREFIX-LENGTH, ADDRESS.
fn with_raw_ecs(message: Message, data: &[u8]) -> Vec<u8> {
    let mut message = with_edns(message, 1232);
    edns_mut(&mut message)
        .options_mut()
        .insert(EdnsOption::Unknown(8, data.to_vec()));
    message.to_bytes().unwrap()
}

#[tokio::test]
async fn malformed_ecs_is_formerr() {
    let f = Fixture::standard();
    let a = || query("app.sat.example.com.", RecordType::A);

    // Well formed, written by hand: 81.2.69.142/32 and 175.16.199.0/24.
    for (data, scope) in [
        (&[0, 1, 32, 0, 81, 2, 69, 142][..], 31),
        (&[0, 1, 24, 0, 175, 16, 199][..], 24),
    ] {
        let answer = f.ask_bytes(&with_raw_ecs(a(), data), Protocol::Udp).await;
        let answer = answer.unwrap();
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert_eq!(ecs_of(&answer).unwrap().scope_prefix(), scope);
    }

    // Address bits set beyond the source prefix: 81.2.69.0/22 has 69 = 0b0100_0101, whose
    // last two bits are past the 22nd.
    let answer = f
        .ask_bytes(&with_raw_ecs(a(), &[0, 1, 22, 0, 81, 2, 69]), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(answer.response_code(), ResponseCode::FormErr);
    assert!(answer.answers().is_empty());
    assert_eq!(answer.id(), 0x5a7e);
    // The same for IPv6: 2001:480:10::/47 has a 1 in bit 48.
    let answer = f
        .ask_bytes(
            &with_raw_ecs(a(), &[0, 2, 47, 0, 0x20, 0x01, 0x04, 0x80, 0x00, 0x11]),
            Protocol::Udp,
        )
        .await
        .unwrap();
    assert_eq!(answer.response_code(), ResponseCode::FormErr);

    // Two ECS options.
    let mut twice = with_ecs(a(), "81.2.69.142/32");
    edns_mut(&mut twice)
        .options_mut()
        .insert(EdnsOption::Subnet("89.160.20.112/28".parse().unwrap()));
    let answer = f.ask(&twice).await;
    assert_eq!(answer.response_code(), ResponseCode::FormErr);

    // An unknown family, a source prefix longer than the family's addresses, and an address
    // cut short do not even parse: hickory-server answers those with FORMERR before our
    // handler sees them.
    for data in [
        &[0, 3, 24, 0, 81, 2, 69][..],
        &[0, 1, 33, 0, 81, 2, 69, 142, 0][..],
        &[0, 2, 129, 0][..],
        &[0, 1, 32, 0, 81, 2][..],
        &[0, 1][..],
    ] {
        let got = f.ask_bytes(&with_raw_ecs(a(), data), Protocol::Udp).await;
        assert_eq!(got.unwrap_err(), "FORMERR", "{data:?}");
    }
}

#[tokio::test]
async fn out_of_zone_and_other_classes_are_refused() {
    let f = Fixture::standard();
    for name in [
        "example.com.",
        "app.example.org.",
        "sat.example.com.evil.net.",
        ".",
    ] {
        let answer = f.ask(&query(name, RecordType::A)).await;
        assert_eq!(answer.response_code(), ResponseCode::Refused, "{name}");
        assert!(!answer.authoritative(), "{name}");
        assert!(answer.answers().is_empty(), "{name}");
    }
    let mut chaos = query("app.sat.example.com.", RecordType::TXT);
    chaos.queries_mut()[0].set_query_class(DNSClass::CH);
    assert_eq!(f.ask(&chaos).await.response_code(), ResponseCode::Refused);
    let axfr = query("sat.example.com.", RecordType::AXFR);
    let answer = f.ask_over(&axfr, Protocol::Tcp).await;
    assert_eq!(answer.response_code(), ResponseCode::Refused);
}

#[tokio::test]
async fn missing_names_are_nxdomain_with_the_soa() {
    let f = Fixture::standard();
    let answer = f.ask(&query("nope.sat.example.com.", RecordType::A)).await;
    assert_eq!(answer.response_code(), ResponseCode::NXDomain);
    assert!(answer.authoritative());
    assert!(answer.answers().is_empty());
    let [soa] = answer.name_servers() else {
        panic!("one SOA in authority: {answer:?}")
    };
    assert_eq!(soa.name(), &Name::from_ascii("sat.example.com.").unwrap());
    // RFC 2308: the lesser of the SOA's TTL (1h) and its minimum (60 s).
    assert_eq!(soa.ttl(), 60);
    let RData::SOA(rdata) = soa.data() else {
        panic!("{soa:?}")
    };
    assert_eq!(rdata.minimum(), 60);
    // Below a host is not the host.
    let below = f.ask(&query("x.app.sat.example.com.", RecordType::A)).await;
    assert_eq!(below.response_code(), ResponseCode::NXDomain);
}

#[tokio::test]
async fn other_types_and_empty_non_terminals_are_nodata() {
    let f = Fixture::standard();
    for (name, qtype) in [
        ("app.sat.example.com.", RecordType::MX),
        ("app.sat.example.com.", RecordType::TXT),
        ("sat.example.com.", RecordType::A),
        ("sat.example.com.", RecordType::MX),
        // deep.tree exists, so tree does too (RFC 8020), with nothing of its own.
        ("tree.sat.example.com.", RecordType::A),
    ] {
        let answer = f.ask(&query(name, qtype)).await;
        assert_eq!(
            answer.response_code(),
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(answer.authoritative());
        assert!(answer.answers().is_empty(), "{name} {qtype}");
        let [soa] = answer.name_servers() else {
            panic!("one SOA in authority for {name} {qtype}: {answer:?}")
        };
        assert_eq!(soa.record_type(), RecordType::SOA);
        assert_eq!(soa.ttl(), 60, "{name} {qtype}");
    }
    let deep = f
        .ask(&query("deep.tree.sat.example.com.", RecordType::A))
        .await;
    assert_eq!(deep.answers().len(), 2);
}

/// The SOA serials of the apex's SOA, of an NXDOMAIN and of a NODATA answer.
async fn serials(f: &Fixture) -> Vec<u32> {
    let questions = [
        ("sat.example.com.", RecordType::SOA),
        ("nope.sat.example.com.", RecordType::A),
        ("app.sat.example.com.", RecordType::MX),
    ];
    let mut serials = Vec::new();
    for (name, qtype) in questions {
        let answer = f.ask(&query(name, qtype)).await;
        let serial = answer
            .answers()
            .iter()
            .chain(answer.name_servers())
            .find_map(|r| match r.data() {
                RData::SOA(soa) => Some(soa.serial()),
                _ => None,
            });
        serials.push(serial.unwrap_or_else(|| panic!("no SOA for {name} {qtype}: {answer:?}")));
    }
    serials
}

/// The serial of every SOA the zone gives (at the apex, and in NXDOMAIN and NODATA answers)
/// is the table's config generation, so it grows whenever the relay map, and with it the
/// answers, can have changed.
#[tokio::test]
async fn the_soa_serial_is_the_config_generation() {
    let f = Fixture::standard();
    assert_eq!(serials(&f).await, [0, 0, 0], "no generation yet");
    f.set_table(relays_only(&three_relays()).with_generation(7));
    assert_eq!(serials(&f).await, [7, 7, 7]);
    // A drain, say: the next push, the next generation.
    f.set_table(relays_only(&three_relays()[..2]).with_generation(8));
    assert_eq!(serials(&f).await, [8, 8, 8]);
    // Serial numbers wrap at 2^32 (RFC 1982).
    f.set_table(relays_only(&three_relays()).with_generation((1 << 32) + 5));
    assert_eq!(serials(&f).await, [5, 5, 5]);
}

#[tokio::test]
async fn soa_and_ns_at_the_apex() {
    let f = Fixture::standard();
    let answer = f.ask(&query("sat.example.com.", RecordType::SOA)).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(answer.authoritative());
    let [soa] = answer.answers() else {
        panic!("{answer:?}")
    };
    assert_eq!(soa.ttl(), 3600);
    let RData::SOA(rdata) = soa.data() else {
        panic!("{soa:?}")
    };
    assert_eq!(
        rdata.mname(),
        &Name::from_ascii("ns1.sat.example.com.").unwrap()
    );
    assert_eq!(
        rdata.rname(),
        &Name::from_ascii("hostmaster.sat.example.com.").unwrap()
    );
    assert_eq!(
        (
            rdata.serial(),
            rdata.refresh(),
            rdata.retry(),
            rdata.expire()
        ),
        // The serial is the table's generation: none pushed yet.
        (0, 3600, 600, 604_800)
    );

    let answer = f.ask(&query("sat.example.com.", RecordType::NS)).await;
    let names: Vec<String> = answer
        .answers()
        .iter()
        .map(|r| match r.data() {
            RData::NS(ns) => ns.0.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["ns1.sat.example.com.", "ns.other.example.net."]);

    // An NS name inside the zone resolves to the relays, which serve the zone.
    let ns1 = f
        .ask(&with_ecs(
            query("ns1.sat.example.com.", RecordType::A),
            "81.2.69.142/32",
        ))
        .await;
    assert_eq!(addresses(&ns1), ips(&[LON4, NYC4]));
}

#[tokio::test]
async fn soa_fields_come_from_the_config() {
    let config: DnsConfig = toml::from_str(
        r#"
        zone = "Geo.Example.NET."
        name_servers = ["a.ns.example.org"]
        ttl = "5s"
        zone_ttl = "10m"
        [hosts]
        "@" = "root"
        [soa]
        rname = "dns-admin@example.org"
        refresh = "2h"
        retry = "15m"
        expire = "14days"
        minimum = "5m"
        "#,
    )
    .unwrap();
    let f = Fixture::new(&config, &three_relays());
    f.set_table(relays_only(&three_relays()).with_generation(42));
    let answer = f.ask(&query("geo.example.net.", RecordType::SOA)).await;
    let RData::SOA(soa) = answer.answers()[0].data() else {
        panic!("{answer:?}")
    };
    assert_eq!(soa.mname(), &Name::from_ascii("a.ns.example.org.").unwrap());
    assert_eq!(
        soa.rname(),
        &Name::from_ascii("dns-admin.example.org.").unwrap()
    );
    assert_eq!(
        (
            soa.serial(),
            soa.refresh(),
            soa.retry(),
            soa.expire(),
            soa.minimum()
        ),
        // The serial is the table's, not the config's.
        (42, 7200, 900, 14 * 86400, 300)
    );
    assert_eq!(answer.answers()[0].ttl(), 600);
    // The apex as a host.
    let apex = f.ask(&query("geo.example.net.", RecordType::A)).await;
    assert_eq!(apex.answers().len(), 2);
    assert!(apex.answers().iter().all(|r| r.ttl() == 5));
    // NXDOMAIN: min(10m, 5m).
    let nx = f.ask(&query("x.geo.example.net.", RecordType::A)).await;
    assert_eq!(nx.name_servers()[0].ttl(), 300);
}

#[tokio::test]
async fn question_count_must_be_one() {
    let f = Fixture::standard();
    let mut none = query("app.sat.example.com.", RecordType::A);
    none.queries_mut().clear();
    let answer = f.ask(&none).await;
    assert_eq!(answer.response_code(), ResponseCode::FormErr);

    let mut two = query("app.sat.example.com.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("api.sat.example.com.").unwrap(),
        RecordType::A,
    ));
    let answer = f.ask(&two).await;
    assert_eq!(answer.response_code(), ResponseCode::FormErr);
    assert!(answer.answers().is_empty());

    // A huge QDCOUNT with one question's bytes: the parse runs out of bytes.
    let mut huge = query("app.sat.example.com.", RecordType::A)
        .to_bytes()
        .unwrap();
    huge[4] = 0xff;
    huge[5] = 0xff;
    assert_eq!(
        f.ask_bytes(&huge, Protocol::Udp).await.unwrap_err(),
        "FORMERR"
    );
}

#[tokio::test]
async fn garbage_never_panics() {
    let f = Fixture::standard();
    let good = with_ecs(
        query("app.sat.example.com.", RecordType::A),
        "81.2.69.142/32",
    )
    .to_bytes()
    .unwrap();
    // Every prefix of a good query, and every single-byte corruption of it: each is answered
    // or dropped, and nothing panics.
    for len in 0..good.len() {
        let _ = f.ask_bytes(&good[..len], Protocol::Udp).await;
    }
    for at in 0..good.len() {
        for value in [0x00, 0x01, 0x3f, 0x80, 0xc0, 0xff] {
            let mut bytes = good.clone();
            bytes[at] = value;
            let _ = f.ask_bytes(&bytes, Protocol::Udp).await;
        }
    }
    assert!(f
        .ask_bytes(&good[..11], Protocol::Udp)
        .await
        .unwrap_err()
        .starts_with("dropped"));
}

#[tokio::test]
async fn other_opcodes_and_edns_versions() {
    let f = Fixture::standard();
    let mut notify = query("sat.example.com.", RecordType::SOA);
    notify.set_op_code(OpCode::Notify);
    assert_eq!(f.ask(&notify).await.response_code(), ResponseCode::NotImp);

    let mut v1 = with_edns(query("app.sat.example.com.", RecordType::A), 1232);
    edns_mut(&mut v1).set_version(1);
    let answer = f.ask(&v1).await;
    // BADVERS is 16, which hickory-proto decodes as BADSIG (the same number, for TSIG).
    assert_eq!(u16::from(answer.response_code()), 16);
    assert_eq!(answer.extensions().as_ref().map(Edns::version), Some(0));
}

/// Relays with `count` IPv6 addresses each (say, one per uplink): two of them with 20 each make
/// an AAAA answer of about 1,150 bytes.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn crowded_relays(count: u16) -> Vec<DnsRelay> {
    let many = |net: u16| -> Vec<String> {
        (1..=count)
            .map(|i| format!("[2001:db8:{net:x}::{i:x}]:443"))
            .collect()
    };
    let (lon, nyc, sin) = (many(1), many(2), many(3));
    vec![
        relay("lon", LONDON, &strs(&lon)),
        relay("nyc", NEW_YORK, &strs(&nyc)),
        relay("sin", SINGAPORE, &strs(&sin)),
    ]
}

#[tokio::test]
async fn big_udp_answers_are_truncated_and_tcp_carries_them() {
    let f = Fixture::new(&config(), &crowded_relays(20));
    let aaaa = query("app.sat.example.com.", RecordType::AAAA);

    // No EDNS: 512 bytes at most.
    let udp = f.ask(&aaaa).await;
    assert!(udp.truncated());
    assert_eq!(udp.response_code(), ResponseCode::NoError);
    assert!(udp.answers().is_empty());
    let bytes = udp.to_bytes().unwrap();
    assert!(bytes.len() <= 512, "{}", bytes.len());

    // TCP: everything.
    let tcp = f.ask_over(&aaaa, Protocol::Tcp).await;
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 40);

    // EDNS with room for it: everything, over UDP too.
    let roomy = with_ecs(aaaa.clone(), "81.2.69.142/32");
    let answer = f.ask(&roomy).await;
    assert!(!answer.truncated());
    assert_eq!(answer.answers().len(), 40);
    assert!(answer.to_bytes().unwrap().len() <= 1232);

    // A small EDNS buffer: truncated, and the OPT with the ECS option is still there.
    let mut small = with_ecs(aaaa.clone(), "81.2.69.142/32");
    edns_mut(&mut small).set_max_payload(512);
    let answer = f.ask(&small).await;
    assert!(answer.truncated());
    assert_eq!(ecs_of(&answer).map(|e| e.scope_prefix()), Some(31));

    // A client that claims 4096 still gets at most max_udp_payload (1232).
    let f = Fixture::new(&config(), &crowded_relays(52));
    let answer = f.ask(&with_edns(aaaa.clone(), 4096)).await;
    assert!(answer.truncated());
    assert!(answer.answers().is_empty());
    let tcp = f.ask_over(&aaaa, Protocol::Tcp).await;
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 2 * 52);
}

#[test]
fn relays_with_no_ip_address_are_not_answered() {
    let relay = relay("named", LONDON, &["relay.example.net:443"]);
    assert!(relay.ipv4.is_empty() && relay.ipv6.is_empty());
}
