//! Geo DNS served by a real relay: `dig` with ECS subnets from the GeoIP test database gets
//! the relay nearest to each, and a relay taken out of rotation stops being handed out.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use tokio::process::Command;
use tokio::time::Instant;

/// Relays in London, New York and Singapore, each announcing a documentation address that
/// stands for its public one.
const RELAYS: [(&str, (f64, f64), &str); 3] = [
    ("london", (51.51, -0.13), "198.51.100.1"),
    ("newyork", (40.71, -74.01), "198.51.100.2"),
    ("singapore", (1.35, 103.82), "198.51.100.3"),
];

fn geoip_db() -> String {
    format!(
        "{}/tests/data/GeoIP2-City-Test.mmdb",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `dig @dns A app.sat.test +subnet=SUBNET`: the answers in order and the CLIENT-SUBNET line.
async fn dig(dns: SocketAddr, subnet: &str) -> Result<(Vec<String>, String)> {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "app.sat.test", "A"])
        .arg(format!("+subnet={subnet}"))
        .args(["+tries=1", "+time=2"]);
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "dig: {status}: {err}\n{out}");
    let ecs = out
        .lines()
        .find(|l| l.contains("CLIENT-SUBNET"))
        .unwrap_or_default()
        .to_owned();
    let answers = out
        .lines()
        .filter(|l| l.starts_with("app.sat.test.") && l.contains("\tA\t"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    Ok((answers, ecs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_answer_geo_dns_with_the_nearest_healthy_relay() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let dns_section = format!(
        "geoip = \"{}\"\n\n[dns.authority]\nzone = \"sat.test\"\nhosts = {{ app = \"echo\" }}\nrelays_per_answer = 1\n",
        geoip_db()
    );
    let mut relays = Vec::new();
    for (name, location, ip) in RELAYS {
        let opts = RelayOpts {
            region: Some(name.into()),
            location: Some(location),
            public_addresses: vec![ip.into()],
            dns: (name == "london").then(|| dns_section.clone()),
            ..Default::default()
        };
        relays.push(net.relay(opts).await?);
    }
    let dns = relays[0].dns.context("the london relay serves no DNS")?;

    // Each relay must be up in the map the DNS relay has before the answers mean anything.
    let deadline = Instant::now() + SHORT;
    loop {
        let (answers, _) = dig(dns, "175.16.199.0/24").await?;
        if answers == ["198.51.100.3"] {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "China never got Singapore: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (subnet, want, scope) in [
        ("81.2.69.142/32", "198.51.100.1", "81.2.69.142/32/31"),
        ("216.160.83.56/32", "198.51.100.2", "216.160.83.56/32/29"),
        ("175.16.199.0/24", "198.51.100.3", "175.16.199.0/24/24"),
        ("89.160.20.112/28", "198.51.100.1", "89.160.20.112/28/28"),
    ] {
        let (answers, ecs) = dig(dns, subnet).await?;
        ensure!(
            answers == [want],
            "{subnet}: answers {answers:?}, want {want}"
        );
        ensure!(
            ecs.contains(scope),
            "{subnet}: ECS line {ecs:?}, want scope {scope}"
        );
    }

    // Drain London: within a push, London's clients get the next best relay instead.
    let drained = Instant::now();
    net.admin_ok(["relays", "drain", &relays[0].name]).await?;
    loop {
        let (answers, _) = dig(dns, "81.2.69.142/32").await?;
        if answers == ["198.51.100.2"] {
            break;
        }
        ensure!(
            drained.elapsed() < Duration::from_secs(3),
            "London still handed out 3 s after the drain: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("drain to DNS change: {} ms", drained.elapsed().as_millis());
    Ok(())
}
