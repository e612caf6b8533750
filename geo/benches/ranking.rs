//! The geo DNS server ranks relays and looks up GeoIP on every query, so both must cost far
//! less than a DNS round trip. Run with `cargo bench -p sat-geo`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sat_geo::geoip::GeoIp;
use sat_geo::hysteresis::{History, Hysteresis};
use sat_geo::rank::{rank, Client, PeerRtts, Relay, State};
use sat_geo::Location;

/// `n` relays spread over the globe, one in ten draining, one in twenty overloaded; the
/// client has measured a third of them and is placed (so the rest are estimated).
fn network(n: usize) -> (Client, Vec<Relay>) {
    let relays: Vec<Relay> = (0..n)
        .map(|i| Relay {
            name: format!("relay-{i:03}"),
            region: format!("region-{}", i % 12),
            state: if i % 10 == 9 {
                State::Draining
            } else {
                State::Up
            },
            location: Some(Location {
                lat: (i as f64 * 37.0) % 140.0 - 70.0,
                lon: (i as f64 * 71.0) % 360.0 - 180.0,
            }),
            primary_rtt: Some(Duration::from_micros(5_000 + (i as u64 * 7_919) % 150_000)),
            load: if i % 20 == 7 { 0.9 } else { 0.3 },
        })
        .collect();
    let client = Client {
        location: Some(Location {
            lat: 51.5,
            lon: -0.1,
        }),
        measured: relays
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(i, r)| {
                (
                    r.name.clone(),
                    Duration::from_micros(2_000 + i as u64 * 1_301),
                )
            })
            .collect(),
    };
    (client, relays)
}

/// Every relay's round trip to every other: as much as the control plane could push.
fn full_mesh(relays: &[Relay]) -> PeerRtts {
    relays
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            relays[i + 1..].iter().enumerate().map(move |(j, b)| {
                let rtt = Duration::from_micros(1_000 + ((i * 31 + j * 17) as u64 % 200) * 1_000);
                (a.name.as_str(), b.name.as_str(), rtt)
            })
        })
        .collect()
}

fn ranking(c: &mut Criterion) {
    for n in [3, 100] {
        let (client, relays) = network(n);
        let none = PeerRtts::default();
        c.bench_function(&format!("rank {n} relays"), |b| {
            b.iter(|| rank(black_box(&client), black_box(&relays), black_box(&none)))
        });
        let mesh = full_mesh(&relays);
        c.bench_function(
            &format!("rank {n} relays, with a full mesh of peer RTTs"),
            |b| b.iter(|| rank(black_box(&client), black_box(&relays), black_box(&mesh))),
        );
    }
}

fn hysteresis(c: &mut Criterion) {
    for n in [3, 100] {
        let (client, relays) = network(n);
        let ranked = rank(&client, &relays, &PeerRtts::default());
        let mut choice = Hysteresis::new(History::default());
        let start = Instant::now();
        let mut round = 0u64;
        c.bench_function(&format!("hysteresis update, {n} relays"), |b| {
            b.iter(|| {
                round += 1;
                let now = start + Duration::from_millis(round * 1000);
                choice.update(black_box(now), black_box(&ranked))
            })
        });
    }
}

fn geoip(c: &mut Criterion) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/GeoIP2-City-Test.mmdb");
    let db = GeoIp::open(&path).expect("test database");
    let hit: IpAddr = "81.2.69.142".parse().expect("address");
    let miss: IpAddr = "10.1.2.3".parse().expect("address");
    let v6: IpAddr = "2001:480:10::1".parse().expect("address");
    c.bench_function("geoip lookup, IPv4 hit", |b| {
        b.iter(|| db.lookup(black_box(hit)))
    });
    c.bench_function("geoip lookup, IPv6 hit", |b| {
        b.iter(|| db.lookup(black_box(v6)))
    });
    c.bench_function("geoip lookup, miss", |b| {
        b.iter(|| db.lookup(black_box(miss)))
    });
    // What the DNS server does per query: the place without the names.
    c.bench_function("geoip place, IPv4 hit", |b| {
        b.iter(|| db.place(black_box(hit)))
    });
}

criterion_group!(benches, ranking, hysteresis, geoip);
criterion_main!(benches);
