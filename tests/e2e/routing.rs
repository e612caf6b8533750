//! Clients choosing relays: by the whole path, steadily under jitter, remembered between runs,
//! and moving within a second when the chosen relay dies; and the measurements behind geo DNS
//! (relay-to-relay probes, clients' reports) reaching the control plane's routing table.
//!
//! Distances come from delay proxies: each "distant" relay's public port (TCP for HTTPS and the
//! latency check, UDP for QUIC) sits behind one, as does its uplink to the control plane.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::delay::{DelayProxy, Jitter, Props};
use crate::common::*;
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A relay whose users are `client` away (one way) and whose uplink is `uplink` away.
struct Distant {
    relay: Relay,
    /// Where clients reach it: the delay proxies' address.
    public: SocketAddr,
    _proxies: Vec<DelayProxy>,
}

async fn distant(
    net: &mut Net,
    client: Props,
    uplink: Duration,
    extra: RelayOpts,
) -> Result<Distant> {
    let mut proxies = Vec::new();
    let mut control = vec![];
    if !uplink.is_zero() {
        let p = DelayProxy::udp(
            "127.0.0.1:0".parse()?,
            net.control_addr,
            Props::delay(uplink),
        )
        .await?;
        control.push(p.addr());
        proxies.push(p);
    }
    let listen = free_port_pair()?;
    let public = free_port_pair()?;
    proxies.push(DelayProxy::tcp(public, listen, client).await?);
    proxies.push(DelayProxy::udp(public, listen, client).await?);
    let mut public_addresses = vec![public.to_string()];
    public_addresses.extend(extra.public_addresses.iter().cloned());
    let relay = net
        .relay(RelayOpts {
            control,
            https_listen: Some(listen),
            public_addresses,
            ..extra
        })
        .await?;
    Ok(Distant {
        relay,
        public,
        _proxies: proxies,
    })
}

/// `sat relays --json` from `via`, until `ready` holds for its rows.
async fn relay_map_until(
    via: SocketAddr,
    ca: &std::path::Path,
    what: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut cmd = sat_cmd(["relays", "--json", "--relay"]);
        cmd.arg(via.to_string()).arg("--ca").arg(ca);
        let (status, out, err) = run(cmd, SHORT).await?;
        ensure!(status.success(), "sat relays: {err}");
        let rows: Vec<Value> = serde_json::from_str(&out)?;
        if ready(&rows) {
            return Ok(rows);
        }
        ensure!(
            Instant::now() < deadline,
            "{what} never happened: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One `sat connect echo` run: an echo through it, then `linger` with the tunnel open (so
/// that the background re-probe can finish), and the relay it went through.
async fn connect_once(relay: SocketAddr, ca: &std::path::Path, linger: Duration) -> Result<String> {
    let mut cmd = sat_cmd(["connect", "echo", "--relay", &relay.to_string(), "--ca"]);
    cmd.arg(ca).env("SAT_LOG", "info,sat_client=debug");
    let mut tunnel = Proc::spawn_piped("connect echo", cmd)?;
    let (mut stdin, mut stdout) = (tunnel.stdin()?, tunnel.stdout()?);
    stdin.write_all(b"ping\n").await?;
    let mut buf = [0u8; 5];
    tokio::time::timeout(SHORT, stdout.read_exact(&mut buf))
        .await
        .with_context(|| format!("no echo; log:\n{}", tunnel.log.tail()))??;
    ensure!(&buf == b"ping\n", "echo gave {buf:?}");
    tokio::time::sleep(linger).await;
    drop(stdin);
    let line = tunnel.log.wait_for("tunnel open", SHORT).await?;
    let relay = line
        .split("relay=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("no relay in the tunnel line")?
        .to_owned();
    let _ = tunnel.wait_exit(SHORT).await;
    Ok(relay)
}

/// Three relays: `near` is closest to the user (2 ms) but 25 ms from the primary; `c1` and
/// `c2` are 8 and 9 ms from the user (each ±4 ms of jitter) and next to the primary. The whole
/// path favours c1 or c2 (about 16-18 ms against 54 ms), and the two are too alike for a move
/// between them to be worth it: six runs must all use the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_the_whole_path_and_does_not_flap_under_jitter() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let jitter = |ms| {
        Props::delay(Duration::from_millis(ms))
            .with_jitter(Jitter::Uniform(Duration::from_millis(4)))
    };
    let near = distant(
        &mut net,
        Props::delay(Duration::from_millis(2)),
        Duration::from_millis(25),
        RelayOpts::default(),
    )
    .await?;
    let c1 = distant(&mut net, jitter(8), Duration::ZERO, RelayOpts::default()).await?;
    let c2 = distant(&mut net, jitter(9), Duration::ZERO, RelayOpts::default()).await?;
    let near_name = near.relay.name.clone();
    relay_map_until(near.public, net.ca(), "a settled relay map", |rows| {
        rows.len() == 3
            && rows.iter().all(|r| r["state"] == "up")
            && rows.iter().any(|r| {
                r["name"] == near_name.as_str() && r["primary_rtt_us"].as_u64() > Some(40_000)
            })
    })
    .await?;

    let mut used = Vec::new();
    for _ in 0..6 {
        used.push(connect_once(near.public, net.ca(), Duration::from_millis(700)).await?);
    }
    ensure!(
        !used.contains(&near.relay.name),
        "the relay nearest the user, far from the primary, was used: {used:?}"
    );
    ensure!(
        used.iter().all(|r| *r == used[0]),
        "the choice moved between runs: {used:?}"
    );
    ensure!(
        [&c1.relay.name, &c2.relay.name].contains(&&used[0]),
        "used {used:?}"
    );

    // The choice was remembered, and the runs reported their round trips, which reached the
    // control plane's routing table for this network (127.0.0.0/24), as did the relays'
    // probes of each other.
    let cache = std::fs::read_dir(test_cache_dir())?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("relays-"))
        .context("no relay cache file")?;
    let cache: Value = serde_json::from_slice(&std::fs::read(cache.path())?)?;
    ensure!(cache["current"] == used[0].as_str(), "cache: {cache:#}");
    // With a cache, `sat relays` needs no --relay.
    let mut cmd = sat_cmd(["relays", "--json", "--ca"]);
    cmd.arg(net.ca());
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "sat relays from the cache: {err}");
    let rows: Vec<Value> = serde_json::from_str(&out)?;
    ensure!(rows.len() == 3, "{rows:#?}");

    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let routing: Value = serde_json::from_str(&net.admin_ok(["routing", "--json"]).await?)?;
        let peers = routing["peers"].as_array().map_or(0, Vec::len);
        let ours = routing["networks"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["network"] == "127.0.0.0/24"))
            .and_then(|n| n["rtts"].as_array())
            .map_or(0, Vec::len);
        if peers == 3 && ours == 3 {
            // near→c1 crosses two proxies: about (2 + 8) ms each way.
            let link = routing["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["a"] == near.relay.name.as_str() || p["b"] == near.relay.name.as_str())
                .and_then(|p| p["rtt_us"].as_u64())
                .context("a link of the near relay")?;
            ensure!(
                link > 4_000,
                "a link through delay proxies measured {link} µs"
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "routing table never filled (3 links, 3 figures for 127.0.0.0/24): {routing:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Kills the relay `sat forward` uses: new connections go through the warm standby within a
/// second, a new `sat connect` whose cache names the dead relay gets through as fast, and the
/// other relay's geo DNS stops handing the dead one out within 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_is_left_within_limits() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let dns = |ip: &str| {
        RelayOpts {
        // The address DNS hands out for this relay, told apart from the other's.
        public_addresses: vec![ip.to_owned()],
        dns: Some(format!(
            "geoip = \"{}/tests/data/GeoIP2-City-Test.mmdb\"\n\n[dns.authority]\nzone = \"sat.test\"\n\
             hosts = {{ app = \"echo\" }}\nrelays_per_answer = 2\n",
            env!("CARGO_MANIFEST_DIR")
        )),
        ..Default::default()
    }
    };
    let a = distant(
        &mut net,
        Props::delay(Duration::ZERO),
        Duration::ZERO,
        dns("127.0.0.21"),
    )
    .await?;
    let b = distant(
        &mut net,
        Props::delay(Duration::ZERO),
        Duration::ZERO,
        dns("127.0.0.22"),
    )
    .await?;
    let (forward, local) = forward_echo(&net, &a).await?;
    echo_through(local, Duration::from_secs(2)).await?;
    let line = forward.log.wait_for("tunnel open", SHORT).await?;
    let (mut dead, alive, dead_dns_ip) = if line.contains(&format!("relay={}", a.relay.name)) {
        (a, b, "127.0.0.21")
    } else {
        (b, a, "127.0.0.22")
    };
    let alive_dns = alive.relay.dns.context("the relay serves DNS")?;
    // Both relays are in the answer while both are up.
    ensure!(
        dig_app(alive_dns).await?.contains(&dead_dns_ip.to_owned()),
        "before the kill"
    );
    // The standby is connected by now: it was warmed up when forward started.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = Instant::now();
    dead.relay.proc.kill().await?;
    // A connection made at once goes into the dead relay's kept connection, which still counts
    // as live for a few hundred milliseconds. It must not be lost: its bytes are replayed
    // through the standby.
    echo_through(local, Duration::from_secs(3))
        .await
        .with_context(|| {
            format!(
                "the first connection after the kill; log:\n{}",
                forward.log.tail()
            )
        })?;
    let failover = killed.elapsed();
    eprintln!(
        "forward: a connection made at the kill echoed through the standby {failover:?} after it"
    );
    ensure!(
        failover < Duration::from_secs(1),
        "failover took {failover:?}"
    );
    forward
        .log
        .wait_for("opening the tunnel again through the next relay", SHORT)
        .await?;
    // Later connections skip the dead relay.
    let started = Instant::now();
    echo_through(local, Duration::from_secs(1)).await?;
    eprintln!("forward: the next connection took {:?}", started.elapsed());
    forward
        .log
        .wait_for(&format!("tunnel open relay={}", alive.relay.name), SHORT)
        .await?;

    // A new process whose cache still names the dead relay.
    let started = Instant::now();
    let used = connect_once(dead.public, net.ca(), Duration::ZERO).await;
    let took = started.elapsed();
    let used = used?;
    eprintln!("connect with the dead relay cached: through {used} in {took:?}");
    ensure!(used == alive.relay.name, "went through {used}");
    ensure!(took < Duration::from_secs(1), "took {took:?}");

    // DNS: the dead relay leaves the answers once the control plane misses its heartbeats.
    loop {
        let answer = dig_app(alive_dns).await?;
        if !answer.contains(&dead_dns_ip.to_owned()) {
            break;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(10),
            "the dead relay is still in DNS answers: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = killed.elapsed();
    eprintln!("DNS: the dead relay left the answers {gone:?} after the kill");
    ensure!(gone < Duration::from_secs(3), "DNS took {gone:?}");
    Ok(())
}

/// A relay that stops answering for a moment (SIGSTOP) is doubted, not dropped: a connection
/// made meanwhile goes through the standby within a second, and a tunnel already open through
/// the paused relay carries on once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_pauses_is_doubted_not_dropped() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let near = Props::delay(Duration::ZERO);
    let a = distant(&mut net, near, Duration::ZERO, RelayOpts::default()).await?;
    let b = distant(&mut net, near, Duration::ZERO, RelayOpts::default()).await?;
    let (forward, local) = forward_echo(&net, &a).await?;

    // A tunnel that stays open through the pause.
    let mut kept = TcpStream::connect(local).await?;
    echo_on(&mut kept, b"before\n").await?;
    let line = forward.log.wait_for("tunnel open", SHORT).await?;
    let paused = match line.contains(&format!("relay={}", a.relay.name)) {
        true => &a,
        false => &b,
    };
    // Let the standby's warm-up finish.
    tokio::time::sleep(Duration::from_millis(300)).await;

    paused.relay.proc.signal(libc::SIGSTOP)?;
    let _resume = Resume(paused.relay.proc.pid()?);
    let stopped = Instant::now();
    let through = echo_through(local, Duration::from_secs(3)).await;
    let took = stopped.elapsed();
    through.with_context(|| {
        format!(
            "a connection during the pause; log:\n{}",
            forward.log.tail()
        )
    })?;
    eprintln!("forward: a connection made during the pause echoed after {took:?}");
    ensure!(took < Duration::from_secs(1), "took {took:?}");

    signal(paused.relay.proc.pid()?, libc::SIGCONT)?;
    tokio::time::timeout(Duration::from_secs(5), echo_on(&mut kept, b"after\n"))
        .await
        .context("the tunnel through the paused relay did not carry on")??;
    // The tunnel given up during the pause reaches the relay as a reset stream: not a refusal.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let said = paused.relay.proc.log.lines().join("\n");
    ensure!(!said.contains("tunnel refused"), "the relay said:\n{said}");
    Ok(())
}

/// A relay that acknowledged a tunnel and then died may already have passed it on: the tunnel
/// fails, saying why it was not replayed, and the service sees its bytes once, not twice. The
/// uplinks are 300 ms away, so the dead relay's stream is still on its way to the control
/// plane when the relay dies, and reaches the service after its death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_the_dead_relay_had_taken_is_not_replayed() -> Result<()> {
    let (backend, firsts) = recording_echo().await?;
    let mut net = Net::start(vec![Service::tcp("echo", backend.addr)]).await?;
    let near = Props::delay(Duration::ZERO);
    let uplink = Duration::from_millis(300);
    let a = distant(&mut net, near, uplink, RelayOpts::default()).await?;
    let b = distant(&mut net, near, uplink, RelayOpts::default()).await?;
    let (forward, local) = forward_echo(&net, &a).await?;
    echo_through(local, Duration::from_secs(5)).await?;
    let line = forward.log.wait_for("tunnel open", SHORT).await?;
    let mut chosen = match line.contains(&format!("relay={}", a.relay.name)) {
        true => a,
        false => b,
    };

    let mut tunnel = TcpStream::connect(local).await?;
    // Written after the tunnel's header has gone out, so the bytes reach the relay after it,
    // as a client-first protocol's first request does.
    tokio::time::sleep(Duration::from_millis(50)).await;
    tunnel.write_all(b"once\n").await?;
    // The relay acknowledges within its ack delay and passes the bytes on at once, without
    // waiting for the control plane's answer, which cannot reach it before one uplink round
    // trip (600 ms). Killed before then, it has sent the bytes but never hears the answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    chosen.relay.proc.kill().await?;

    ends_unechoed(&mut tunnel)
        .await
        .context("the tunnel through the dead relay")?;
    forward.log.wait_for("not replayed", SHORT).await?;
    let onces = seen(&firsts, b"once\n");
    ensure!(
        onces == 1,
        "the service saw the tunnel's bytes {onces} times"
    );
    Ok(())
}

/// SIGCONT on drop, so that a failed test does not leave a stopped relay behind.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGCONT);
    }
}

/// Sends `line` on an open tunnel and reads the echo.
async fn echo_on(s: &mut TcpStream, line: &[u8]) -> Result<()> {
    s.write_all(line).await?;
    let mut buf = vec![0u8; line.len()];
    s.read_exact(&mut buf).await?;
    ensure!(buf == line, "echo gave {buf:?}");
    Ok(())
}

/// Once both relays are up, `sat forward` to the echo service, its map fetched from `a`; its
/// process and local address.
async fn forward_echo(net: &Net, a: &Distant) -> Result<(Proc, SocketAddr)> {
    relay_map_until(a.public, net.ca(), "both relays up", |rows| {
        rows.len() == 2 && rows.iter().all(|r| r["state"] == "up")
    })
    .await?;
    let mut cmd = sat_cmd([
        "forward",
        "127.0.0.1:0",
        "echo",
        "--relay",
        &a.public.to_string(),
        "--ca",
    ]);
    cmd.arg(net.ca()).env("SAT_LOG", "info,sat_client=debug");
    let forward = Proc::spawn("forward", cmd)?;
    let local = forward
        .log
        .wait_listening("tcp", Some("echo"), SHORT)
        .await?;
    Ok((forward, local))
}

/// One line through the forwarder's echo, within `limit`.
async fn echo_through(local: SocketAddr, limit: Duration) -> Result<()> {
    tokio::time::timeout(limit, async {
        let mut s = TcpStream::connect(local).await?;
        s.write_all(b"hello\n").await?;
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await?;
        ensure!(&buf == b"hello\n", "echo gave {buf:?}");
        Ok(())
    })
    .await
    .context("timed out")?
}

/// The A records `dig` gets for app.sat.test from `server`.
async fn dig_app(server: SocketAddr) -> Result<Vec<String>> {
    let mut cmd = tokio::process::Command::new("dig");
    cmd.args(["+short", "+time=1", "+tries=1", "-p"])
        .arg(server.port().to_string())
        .arg(format!("@{}", server.ip()))
        .args(["app.sat.test", "A"]);
    let out = cmd.output().await.context("running dig")?;
    ensure!(
        out.status.success(),
        "dig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}
