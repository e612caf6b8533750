//! What one geo DNS query costs the server above the kernel: parse, place the client, rank,
//! encode. Run with `cargo bench -p sat-geo --bench dns`; `bench/run dns` measures the whole
//! server, sockets included, against gdnsd.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use sat_geo::dns::{DnsConfig, DnsRelay, DnsTable, GeoDns};
use sat_geo::geoip::GeoIp;
use sat_geo::rank::{PeerRtts, Relay, State};
use sat_geo::Location;
use tokio::sync::watch;

fn relay(name: &str, lat: f64, lon: f64, address: &str) -> DnsRelay {
    let relay = Relay {
        name: name.into(),
        region: name.into(),
        state: State::Up,
        location: Some(Location { lat, lon }),
        primary_rtt: Some(Duration::from_millis(20)),
        load: 0.1,
    };
    DnsRelay::new(relay, &[address.to_owned()])
}

/// `app.sat.example.com A`, with an ECS option for `subnet` if there is one.
fn query(subnet: Option<(&str, u8)>) -> Vec<u8> {
    let mut message = Message::new();
    message.set_id(4242).set_recursion_desired(true);
    let name = Name::from_ascii("app.sat.example.com.").expect("name");
    message.add_query(Query::query(name, RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some((addr, prefix)) = subnet {
        let addr: IpAddr = addr.parse().expect("address");
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(addr, prefix, 0)));
    }
    message.set_edns(edns);
    message.to_vec().expect("encodes")
}

fn answer(c: &mut Criterion) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/GeoIP2-City-Test.mmdb");
    let geoip = Arc::new(GeoIp::open(&path).expect("test database"));
    let relays = vec![
        relay("london", 51.51, -0.13, "198.51.100.1:443"),
        relay("newyork", 40.71, -74.01, "198.51.100.2:443"),
        relay("singapore", 1.35, 103.82, "198.51.100.3:443"),
    ];
    let table = DnsTable::new(relays, PeerRtts::default(), BTreeMap::new());
    let (_tx, rx) = watch::channel(Arc::new(table));
    let mut config = DnsConfig::for_zone("sat.example.com");
    config.hosts.insert("app".into(), "app".into());
    let dns = GeoDns::new(&config, rx, geoip).expect("valid config");
    let resolver: SocketAddr = "127.0.0.1:5300".parse().expect("address");
    let mut out = Vec::with_capacity(512);

    for (label, subnet) in [
        ("dns answer, A, ECS London /32", Some(("81.2.69.142", 32))),
        ("dns answer, A, no ECS", None),
    ] {
        let query = query(subnet);
        c.bench_function(label, |b| {
            b.iter(|| {
                out.clear();
                dns.answer_datagram(black_box(&query), resolver, &mut out);
                assert!(!out.is_empty());
            })
        });
    }
}

criterion_group!(benches, answer);
criterion_main!(benches);
