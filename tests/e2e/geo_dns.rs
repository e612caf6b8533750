//! Geo DNS served by real relays and by a real control plane: `dig` with ECS subnets from the
//! GeoIP test database gets the relay nearest to each, and a relay taken out of rotation (killed
//! or drained) stops being handed out.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use tokio::process::Command;
use tokio::time::Instant;

/// Relays in London, New York and Singapore, each announcing a documentation address that
/// stands for its public one.
const RELAYS: [(&str, (f64, f64), &str); 3] = [
    ("london", (51.51, -0.13), "198.51.100.1"),
    ("newyork", (40.71, -74.01), "198.51.100.2"),
    ("singapore", (1.35, 103.82), "198.51.100.3"),
];
const LONDON_IP: &str = RELAYS[0].2;
const NEWYORK_IP: &str = RELAYS[1].2;
const SINGAPORE_IP: &str = RELAYS[2].2;
/// A resolver in London, and one in Changchun, China, in the test database.
const LONDON: &str = "81.2.69.142/32";
const CHANGCHUN: &str = "175.16.199.0/24";
/// How soon a relay taken out of rotation must leave the answers: the control plane marks a
/// silent relay down after 2 s, and a draining one at once.
const GONE_WITHIN: Duration = Duration::from_secs(3);

/// `dig @dns ARGS`, with one try; its output, once it succeeded.
async fn dig_at(dns: SocketAddr, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string()])
        .args(args)
        .args(["+tries=1", "+time=2"]);
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "dig {args:?}: {status}: {err}\n{out}");
    Ok(out)
}

/// `dig @dns A app.sat.test +subnet=SUBNET`: the answers in order and the CLIENT-SUBNET line.
async fn dig(dns: SocketAddr, subnet: &str) -> Result<(Vec<String>, String)> {
    let subnet = format!("+subnet={subnet}");
    let out = dig_at(dns, &["app.sat.test", "A", &subnet]).await?;
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

/// `dig @dns SOA sat.test +short`: the zone's SOA serial.
async fn soa_serial(dns: SocketAddr) -> Result<u32> {
    let out = dig_at(dns, &["sat.test", "SOA", "+short"]).await?;
    // "ns1.sat.test. hostmaster.sat.test. SERIAL REFRESH RETRY EXPIRE MINIMUM"
    out.split_whitespace()
        .nth(2)
        .and_then(|serial| serial.parse().ok())
        .with_context(|| format!("no SOA serial in {out:?}"))
}

/// Asks `dns` for `subnet` every 20 ms until the one answer is `want`; returns how long that
/// took, or fails once `limit` has passed.
async fn wait_answer(
    dns: SocketAddr,
    subnet: &str,
    want: &str,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let (answers, _) = dig(dns, subnet).await?;
        if answers == [want] {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{subnet} still got {answers:?}, not {want}, after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The three relays; the London one serves geo DNS if `london_dns`.
/// How many threads of process `pid` have names starting with `prefix`.
fn threads_named(pid: i32, prefix: &str) -> Result<usize> {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm")).unwrap_or_default();
        n += usize::from(comm.starts_with(prefix));
    }
    Ok(n)
}

async fn start_relays(net: &mut Net, london_dns: bool) -> Result<Vec<Relay>> {
    let mut relays = Vec::new();
    for (name, location, ip) in RELAYS {
        let opts = RelayOpts {
            region: Some(name.into()),
            location: Some(location),
            public_addresses: vec![ip.into()],
            dns: (london_dns && name == "london").then(|| dns_section("echo")),
            ..Default::default()
        };
        relays.push(net.relay(opts).await?);
    }
    Ok(relays)
}

/// Waits until the relay map behind `dns` has every relay up: before that, the answers mean
/// nothing.
async fn wait_all_up(dns: SocketAddr) -> Result<()> {
    wait_answer(dns, CHANGCHUN, SINGAPORE_IP, SHORT)
        .await
        .context("China never got Singapore")?;
    wait_answer(dns, LONDON, LONDON_IP, SHORT)
        .await
        .context("London never got London")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_answer_geo_dns_with_the_nearest_healthy_relay() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relays = start_relays(&mut net, true).await?;
    let dns = relays[0].dns.context("the london relay serves no DNS")?;
    wait_all_up(dns).await?;
    for (subnet, want, scope) in [
        (LONDON, LONDON_IP, "81.2.69.142/32/31"),
        ("216.160.83.56/32", NEWYORK_IP, "216.160.83.56/32/29"),
        (CHANGCHUN, SINGAPORE_IP, "175.16.199.0/24/24"),
        ("89.160.20.112/28", LONDON_IP, "89.160.20.112/28/28"),
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

    // Drain London: within a push, London's clients get the next best relay instead, and the
    // zone's SOA serial (the config generation) grows with the answers' change.
    let serial_before = soa_serial(dns).await?;
    net.admin_ok(["relays", "drain", &relays[0].name]).await?;
    let took = wait_answer(dns, LONDON, NEWYORK_IP, GONE_WITHIN).await?;
    let serial_after = soa_serial(dns).await?;
    eprintln!(
        "drain to DNS change: {} ms; SOA serial {serial_before} -> {serial_after}",
        took.as_millis()
    );
    ensure!(
        serial_after > serial_before,
        "the SOA serial went from {serial_before} to {serial_after} across a drain"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_geo_dns_drops_killed_and_draining_relays_within_3s() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start_with(ControlOpts {
        services: vec![Service::tcp("echo", echo.addr)],
        // Three threads where the default here (2 cores) is one: the setting takes effect.
        dns: Some(dns_section("echo") + "udp_threads = 3\n"),
        ..Default::default()
    })
    .await?;
    let dns = net.control_dns.context("the control plane serves no DNS")?;
    // No relay serves DNS here: every answer below is the control plane's.
    let relays = start_relays(&mut net, false).await?;
    wait_all_up(dns).await?;
    let threads = threads_named(net.control.pid()?, "dns-udp-")?;
    ensure!(threads == 3, "{threads} UDP threads for udp_threads = 3");
    let (_, ecs) = dig(dns, LONDON).await?;
    ensure!(
        ecs.contains("81.2.69.142/32/31"),
        "London's ECS line: {ecs:?}"
    );

    // SIGKILL: the relay says nothing; the control plane notices its heartbeats stop.
    relays[0].proc.signal(libc::SIGKILL)?;
    let killed = wait_answer(dns, LONDON, NEWYORK_IP, GONE_WITHIN)
        .await
        .context("the killed London relay was still handed out")?;
    // SIGTERM: the relay drains and tells the control plane so.
    relays[1].proc.signal(libc::SIGTERM)?;
    let drained = wait_answer(dns, LONDON, SINGAPORE_IP, GONE_WITHIN)
        .await
        .context("the draining New York relay was still handed out")?;
    eprintln!(
        "control plane DNS: killed relay gone in {} ms, draining relay gone in {} ms",
        killed.as_millis(),
        drained.as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_dns_port_stops_the_control_plane_at_start() -> Result<()> {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let dir = tempfile::tempdir()?;
    let opts = ControlOpts {
        dns: Some(dns_section("echo")),
        ..Default::default()
    };
    let toml = control_toml(&opts, "127.0.0.1:0", "127.0.0.1:0");
    let any_port = "[dns]\nlisten = \"127.0.0.1:0\"";
    ensure!(toml.contains(any_port), "test setup: no [dns] in\n{toml}");
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        toml.replace(any_port, &format!("[dns]\nlisten = \"{addr}\"")),
    )?;
    let mut cmd = sat_cmd(["control", "--config"]);
    cmd.arg(&config);
    let (status, _, err) = run(cmd, STARTUP).await?;
    ensure!(
        !status.success(),
        "sat control ran with its DNS port taken: {status}\n{err}"
    );
    ensure!(
        err.contains(&addr.to_string()) && err.contains("dns.listen"),
        "the error should name {addr} and the key to change; it said:\n{err}"
    );
    ensure!(
        !dir.path().join("control-data").exists(),
        "the control plane wrote its data dir before failing"
    );
    Ok(())
}
