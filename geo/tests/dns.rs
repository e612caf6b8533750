//! The geo DNS server on real sockets, asked by the real `dig` (Debian's `dnsutils`, which
//! tests/run installs): ECS answers and scopes, bad packets that must not stop it, and TC over
//! UDP with the retry over TCP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use sat_geo::dns::{serve, DnsConfig, DnsRelay, DnsSockets, DnsTable};
use sat_geo::geoip::GeoIp;
use sat_geo::rank::{PeerRtts, Relay, State};
use sat_geo::Location;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

fn relay(name: &str, location: Location, addresses: &[String]) -> DnsRelay {
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

/// London, New York and Singapore, each with one IPv4 address and `v6` IPv6 addresses.
fn relays(v6: u16) -> Vec<DnsRelay> {
    [
        ("lon", LONDON, 1),
        ("nyc", NEW_YORK, 2),
        ("sin", SINGAPORE, 3),
    ]
    .into_iter()
    .map(|(name, location, n)| {
        let mut addresses = vec![format!("198.51.100.{n}:443")];
        addresses.extend((1..=v6).map(|i| format!("[2001:db8:{n}::{i:x}]:443")));
        relay(name, location, &addresses)
    })
    .collect()
}

/// A table of relays, with nothing measured about them.
fn relays_only(relays: Vec<DnsRelay>) -> DnsTable {
    DnsTable::new(relays, PeerRtts::default(), BTreeMap::new())
}

/// A running server on 127.0.0.1, UDP and TCP on the same port as dig expects; stopped on drop.
struct Server {
    port: u16,
    table: watch::Sender<Arc<DnsTable>>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), sat_geo::GeoError>>>,
}

impl Server {
    async fn start(relays: &[DnsRelay]) -> Result<Self> {
        let sockets = DnsSockets::bind("127.0.0.1:0".parse()?)?;
        let port = sockets.local_addr()?.port();
        let geoip =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/GeoIP2-City-Test.mmdb");
        let geoip = Arc::new(GeoIp::open(&geoip)?);
        let mut config = DnsConfig::for_zone("sat.example.com");
        config.hosts.insert("app".into(), "app".into());
        let (table, rx) = watch::channel(Arc::new(relays_only(relays.to_vec())));
        let shutdown = CancellationToken::new();
        let metrics = sat_geo::dns::DnsMetrics::unregistered();
        let task = tokio::spawn(serve(config, sockets, rx, geoip, metrics, shutdown.clone()));
        Ok(Self {
            port,
            table,
            shutdown,
            task: Some(task),
        })
    }

    async fn dig(&self, args: &[&str]) -> Result<String> {
        let output = dig(self.port, args).await?;
        ensure!(
            output.status.success(),
            "dig {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    /// `dig app.sat.example.com A` with the ECS option for `subnet`.
    async fn a_for_subnet(&self, subnet: &str) -> Result<String> {
        let ecs = format!("+subnet={subnet}");
        self.dig(&["app.sat.example.com", "A", &ecs]).await
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().context("stopped twice")?;
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .context("the server did not stop")???;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A UDP socket and a TCP listener on the same free port.
async fn dig(port: u16, args: &[&str]) -> Result<Output> {
    Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=3"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run dig; install it with `apt-get install dnsutils` (tests/run does)")
}

/// The addresses in dig's ANSWER section, in order.
fn answers(dig: &str) -> Vec<String> {
    dig.lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect()
}

fn status(dig: &str) -> Option<&str> {
    let at = dig.find("status: ")? + "status: ".len();
    dig[at..].split(',').next()
}

fn flags(dig: &str) -> Vec<&str> {
    dig.lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default()
}

fn client_subnet(dig: &str) -> Option<&str> {
    dig.lines()
        .find_map(|l| l.trim().strip_prefix("; CLIENT-SUBNET: "))
        .map(str::trim)
}

const LON: &str = "198.51.100.1";
const NYC: &str = "198.51.100.2";
const SIN: &str = "198.51.100.3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_the_nearest_relays_with_the_ecs_scope() -> Result<()> {
    let server = Server::start(&relays(1)).await?;
    let cases = [
        ("81.2.69.142/32", "81.2.69.142/32/31", [LON, NYC]),
        ("216.160.83.56/32", "216.160.83.56/32/29", [NYC, LON]),
        ("175.16.199.0/24", "175.16.199.0/24/24", [SIN, LON]),
        ("89.160.20.112/28", "89.160.20.112/28/28", [LON, NYC]),
    ];
    for (subnet, scope_line, want) in cases {
        let out = server.a_for_subnet(subnet).await?;
        assert_eq!(status(&out), Some("NOERROR"), "{out}");
        assert!(flags(&out).contains(&"aa"), "{out}");
        assert_eq!(answers(&out), want, "{subnet}: {out}");
        assert_eq!(client_subnet(&out), Some(scope_line), "{out}");
    }

    // IPv6 subnet, AAAA.
    let out = server
        .dig(&["app.sat.example.com", "AAAA", "+subnet=2001:480:10::/56"])
        .await?;
    assert_eq!(answers(&out), ["2001:db8:2::1", "2001:db8:1::1"], "{out}");
    assert_eq!(client_subnet(&out), Some("2001:480:10::/56/48"), "{out}");

    // No ECS: the resolver (127.0.0.1, which the database does not place) gets two relays,
    // and no CLIENT-SUBNET comes back.
    let out = server.dig(&["app.sat.example.com", "A"]).await?;
    assert_eq!(answers(&out).len(), 2, "{out}");
    assert_eq!(client_subnet(&out), None, "{out}");

    // The same over TCP.
    let out = server
        .dig(&["+tcp", "app.sat.example.com", "A", "+subnet=81.2.69.142/32"])
        .await?;
    assert_eq!(answers(&out), [LON, NYC], "{out}");
    assert_eq!(client_subnet(&out), Some("81.2.69.142/32/31"), "{out}");

    // The zone's other answers.
    let out = server.dig(&["nope.sat.example.com", "A"]).await?;
    assert_eq!(status(&out), Some("NXDOMAIN"), "{out}");
    assert!(
        out.contains("IN\tSOA\tns1.sat.example.com. hostmaster.sat.example.com."),
        "{out}"
    );
    let out = server.dig(&["app.sat.example.com", "MX"]).await?;
    assert_eq!(status(&out), Some("NOERROR"), "{out}");
    assert!(answers(&out).is_empty(), "{out}");
    let out = server.dig(&["www.example.org", "A"]).await?;
    assert_eq!(status(&out), Some("REFUSED"), "{out}");
    let out = server.dig(&["sat.example.com", "NS", "+short"]).await?;
    assert_eq!(out.trim(), "ns1.sat.example.com.");

    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_out_of_rotation_leaves_the_next_answer() -> Result<()> {
    let server = Server::start(&relays(1)).await?;
    let ask = [
        "app.sat.example.com",
        "A",
        "+subnet=81.2.69.142/32",
        "+short",
    ];
    assert_eq!(
        server
            .dig(&ask)
            .await?
            .split_whitespace()
            .collect::<Vec<_>>(),
        [LON, NYC]
    );

    let mut drained = relays(1);
    drained[0].relay.state = State::Draining;
    server.table.send_replace(Arc::new(relays_only(drained)));
    assert_eq!(
        server
            .dig(&ask)
            .await?
            .split_whitespace()
            .collect::<Vec<_>>(),
        [NYC, SIN]
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networks_measurements_decide_its_answers_and_their_scope() -> Result<()> {
    let server = Server::start(&relays(1)).await?;
    // Clients of 214.78.121.0/24, inside San Diego's 214.78.120.0/22 in GeoIP, reported
    // Singapore at 5 ms.
    let network = "214.78.121.0/24".parse()?;
    let measured = [("sin".to_owned(), Duration::from_millis(5))].into();
    let table = DnsTable::new(relays(1), PeerRtts::default(), [(network, measured)].into());
    server.table.send_replace(Arc::new(table));
    let cases = [
        // Measured: Singapore first, and the answer holds for the /24 only.
        ("214.78.121.0/24", "214.78.121.0/24/24", [SIN, NYC]),
        // The rest of the GeoIP network: nearest by distance, but for its own /24 only, since
        // a /22 scope would have resolvers give this answer to the measured /24 too.
        ("214.78.120.0/24", "214.78.120.0/24/24", [NYC, LON]),
        // A /16 holds the measured /24 but many other networks: GeoIP alone (it does not
        // place 214.78.0.0, so the relays go by name), scoped to a /24 for the same reason.
        ("214.78.0.0/16", "214.78.0.0/16/24", [LON, NYC]),
        // Outside the /22 that holds the measured /24, GeoIP's scope stands (the test
        // database's 216.160.83.56/29).
        ("216.160.83.56/32", "216.160.83.56/32/29", [NYC, LON]),
    ];
    for (subnet, scope_line, want) in cases {
        let out = server.a_for_subnet(subnet).await?;
        assert_eq!(answers(&out), want, "{subnet}: {out}");
        assert_eq!(client_subnet(&out), Some(scope_line), "{out}");
    }
    server.stop().await
}

fn query_bytes(name: &str) -> Result<Vec<u8>> {
    let mut message = Message::new();
    message
        .set_id(0xbeef)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(message.to_bytes()?)
}

/// Sends `packet` and returns the answer, or `None` if none comes within a second.
async fn exchange(server: SocketAddr, packet: &[u8]) -> Result<Option<Message>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(packet, server).await?;
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
        Ok(n) => Ok(Some(Message::from_vec(&buf[..n?])?)),
        Err(_) => Ok(None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_do_not_stop_the_server() -> Result<()> {
    let server = Server::start(&relays(1)).await?;
    let addr = server.addr();

    // Garbage, of many lengths, and truncated headers: no answer (or FORMERR), no crash.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in [1, 5, 11, 12, 13, 40, 300, 1500] {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.send_to(&garbage, addr)?;
    }
    assert!(exchange(addr, &[0xbe, 0xef, 0x01]).await?.is_none());

    // A huge QDCOUNT: FORMERR.
    let mut huge = query_bytes("app.sat.example.com.")?;
    huge[4] = 0xff;
    huge[5] = 0xff;
    let answer = exchange(addr, &huge)
        .await?
        .context("an answer to a huge qdcount")?;
    assert_eq!(answer.response_code(), ResponseCode::FormErr);
    assert_eq!(answer.id(), 0xbeef);

    // No question: FORMERR.
    let mut none = query_bytes("app.sat.example.com.")?;
    none[5] = 0;
    none.truncate(12);
    let answer = exchange(addr, &none)
        .await?
        .context("an answer to qdcount 0")?;
    assert_eq!(answer.response_code(), ResponseCode::FormErr);

    // Malformed ECS, sent by dig itself: family 3; and address bits past the source prefix.
    for option in ["+ednsopt=8:00031800510245", "+ednsopt=8:00011600510245"] {
        let output = dig(server.port, &["app.sat.example.com", "A", option]).await?;
        let out = String::from_utf8(output.stdout)?;
        assert_eq!(status(&out), Some("FORMERR"), "{option}: {out}");
    }

    // A truncated TCP message: the connection is dropped, the server lives on.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(&[0x00, 0x40, 0xbe, 0xef, 0x01]).await?;
        drop(tcp);
    }

    // And a normal query still works, over UDP and TCP.
    let out = server
        .dig(&["app.sat.example.com", "A", "+subnet=81.2.69.142/32"])
        .await?;
    assert_eq!(answers(&out), [LON, NYC], "{out}");
    let out = server.dig(&["+tcp", "app.sat.example.com", "A"]).await?;
    assert_eq!(answers(&out).len(), 2, "{out}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() -> Result<()> {
    // Two relays with 20 IPv6 addresses each: an AAAA answer of about 1,150 bytes, over the
    // 512 bytes a query without EDNS allows, under the 1232 of a default EDNS query.
    let server = Server::start(&relays(20)).await?;
    let name = "app.sat.example.com";

    let out = server.dig(&[name, "AAAA", "+noedns", "+ignore"]).await?;
    assert!(flags(&out).contains(&"tc"), "{out}");
    assert!(answers(&out).is_empty(), "{out}");

    let out = server
        .dig(&[name, "AAAA", "+bufsize=512", "+ignore"])
        .await?;
    assert!(flags(&out).contains(&"tc"), "{out}");

    // dig retries over TCP by itself when it sees TC.
    let out = server.dig(&[name, "AAAA", "+noedns"]).await?;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(!flags(&out).contains(&"tc"), "{out}");
    assert_eq!(answers(&out).len(), 40, "{out}");

    let out = server
        .dig(&["+tcp", name, "AAAA", "+subnet=81.2.69.142/32"])
        .await?;
    assert_eq!(answers(&out).len(), 40, "{out}");
    assert_eq!(answers(&out)[0], "2001:db8:1::1", "{out}");
    assert_eq!(client_subnet(&out), Some("81.2.69.142/32/31"), "{out}");

    // With room in the EDNS buffer, UDP carries it all.
    let out = server.dig(&[name, "AAAA", "+bufsize=1232"]).await?;
    assert!(!flags(&out).contains(&"tc"), "{out}");
    assert_eq!(answers(&out).len(), 40, "{out}");
    server.stop().await
}
