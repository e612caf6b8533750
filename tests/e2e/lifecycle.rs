//! Starting and stopping: SIGTERM drain, `sat check-config`, and `sat up` from start to Ctrl-C.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use sat_control::pki::Usage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Drain

/// Connecting to `addr` is refused within `within`. Polled: the listener closes some moments
/// after the signal, and nothing announces it.
async fn refused_within(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(SHORT, TcpStream::connect(addr)).await;
        match attempt {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            _ => ensure!(
                Instant::now() < deadline,
                "{addr} still accepted connections {within:?} after SIGTERM"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn echo_relay(grace: &'static str) -> Result<(Relay, Net, Backend)> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net
        .relay(RelayOpts {
            drain_grace: grace,
            tcp: vec!["echo".into()],
            ..Default::default()
        })
        .await?;
    Ok((relay, net, echo))
}

/// SIGTERM: new connections are refused at once, the tunnel already open carries on to its
/// end, and then the relay exits 0, well within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_tunnels_and_refuses_new_ones() -> Result<()> {
    const GRACE: Duration = Duration::from_secs(10);
    let (mut relay, _net, _echo) = echo_relay("10s").await?;
    let port = relay.tcp_port("echo")?;
    let mut tunnel = connect(port).await?;
    round_trip(&mut tunnel, b"before SIGTERM", SHORT).await?;

    relay.proc.signal(libc::SIGTERM)?;
    let signalled = Instant::now();
    refused_within(port, Duration::from_secs(2)).await?;
    refused_within(relay.https()?, Duration::from_secs(2)).await?;

    // The tunnel opened before the signal still works both ways, to a clean end.
    let data = random_bytes(5, 1 << 20);
    let (r, w) = tunnel.into_split();
    let back = tokio::time::timeout(SHORT, exchange(w, r, &data))
        .await
        .context("the in-flight tunnel stalled during the drain")??;
    ensure!(
        back == data,
        "the in-flight tunnel lost data during the drain"
    );

    let status = relay.proc.wait_exit(GRACE + Duration::from_secs(3)).await?;
    ensure!(
        status.success(),
        "relay exited with {status} after draining"
    );
    ensure!(
        signalled.elapsed() < GRACE,
        "relay took {:?} to exit; its only tunnel had ended long before the grace ran out",
        signalled.elapsed()
    );
    Ok(())
}

/// During a drain, a client that already has a QUIC connection to the relay (here `sat forward`,
/// which shares one connection among its tunnels) gets new tunnels refused at once with a
/// message saying so, while its tunnel in flight carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_relay_refuses_new_streams_on_an_open_client_connection() -> Result<()> {
    let (mut relay, net, _echo) = echo_relay("10s").await?;
    let (forward, local) = sat_forward(relay.https()?, net.ca(), "echo").await?;
    let mut first = connect(local).await?;
    round_trip(&mut first, b"before SIGTERM", SHORT).await?;

    relay.proc.signal(libc::SIGTERM)?;
    // "SIGTERM: draining" comes first, from the signal handler; this line comes once the relay
    // has entered the drain and refuses new streams.
    relay
        .proc
        .log
        .wait_for("draining: listeners closed", SHORT)
        .await?;

    let mut second = connect(local).await?;
    second.write_all(b"too late").await?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SHORT, second.read(&mut buf))
        .await
        .context("a new tunnel during the drain was left hanging instead of refused")?;
    ensure!(
        matches!(read, Ok(0) | Err(_)),
        "a new tunnel during the drain was carried: {read:?}"
    );
    forward.log.wait_for("draining", SHORT).await?;

    round_trip(&mut first, b"during the drain", SHORT).await?;
    drop(first);
    let status = relay.proc.wait_exit(SHORT).await?;
    ensure!(
        status.success(),
        "relay exited with {status} after draining"
    );
    Ok(())
}

/// A tunnel still open when the grace period ends is cut, and the relay exits 0 all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_at_the_grace_period() -> Result<()> {
    let (mut relay, _net, _echo) = echo_relay("2s").await?;
    let mut tunnel = connect(relay.tcp_port("echo")?).await?;
    round_trip(&mut tunnel, b"idle from now on", SHORT).await?;

    relay.proc.signal(libc::SIGTERM)?;
    let status = relay.proc.wait_exit(Duration::from_secs(2 + 5)).await?;
    ensure!(
        status.success(),
        "relay exited with {status} at the end of its grace period"
    );

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SHORT, tunnel.read(&mut buf))
        .await
        .context("the idle tunnel stayed open after the relay exited")?;
    ensure!(
        matches!(read, Ok(0) | Err(_)),
        "the idle tunnel received data: {read:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// check-config

/// A control.toml and a relay toml that use every table, with their certificates.
fn write_configs(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let pki = Pki::new(dir)?;
    pki.relay_certs("relay-1", &[])?;
    let control = dir.join("control.toml");
    let services = vec![
        Service::tcp("ssh", "127.0.0.1:22".parse()?),
        Service::http("web", "127.0.0.1:8080".parse()?, &["web.localhost"]),
    ];
    let opts = ControlOpts {
        services,
        response_timeout: Some("2s"),
        connect_timeout: Some("1s"),
        relay_cert_lifetime: Some("12h"),
        dns: Some(dns_section("web")),
        ..Default::default()
    };
    std::fs::write(
        &control,
        control_toml(&opts, "127.0.0.1:4433", "127.0.0.1:4434"),
    )?;
    let relay = dir.join("relay-1.toml");
    let opts = RelayOpts {
        plain_http: true,
        header_timeout: Some("1s"),
        max_header_size: Some(8192),
        tcp: vec!["ssh".into()],
        health: true,
        dns: Some(dns_section("web")),
        ..Default::default()
    };
    let uplink: SocketAddr = "127.0.0.1:4433".parse()?;
    std::fs::write(&relay, relay_toml("relay-1", &[uplink], &opts))?;
    Ok((control, relay))
}

async fn check_config(file: &Path) -> Result<(Option<i32>, String)> {
    let mut cmd = sat_cmd(["check-config"]);
    cmd.arg(file);
    let (status, _, err) = run(cmd, SHORT).await?;
    Ok((status.code(), err))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_good_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (control, relay) = write_configs(dir.path())?;
    for file in [control, relay] {
        let (code, err) = check_config(&file).await?;
        ensure!(
            code == Some(0),
            "check-config {}: exit {code:?}\n{err}",
            file.display()
        );
    }
    Ok(())
}

/// Every example in deploy/examples passes `sat check-config`, with the files it names under
/// /etc/sat (the operator's HTTPS certificate) standing in a temp dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_every_shipped_example() -> Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    pki.issue(&["app.example.com"], Usage::Server, "https")?;
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let etc = format!("{}/", dir.path().display());
        let copy = dir.path().join(path.file_name().context("file name")?);
        std::fs::write(&copy, text.replace("/etc/sat/", &etc))?;
        let (code, err) = check_config(&copy).await?;
        ensure!(code == Some(0), "{}: exit {code:?}\n{err}", path.display());
        checked += 1;
    }
    ensure!(
        checked >= 2,
        "only {checked} examples in {}",
        examples.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_the_misspelt_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (control, relay) = write_configs(dir.path())?;
    for (file, good, typo) in [
        (control, "listen =", "lisen ="),
        (relay, "drain_grace =", "drain_grase ="),
    ] {
        let text = std::fs::read_to_string(&file)?;
        ensure!(
            text.contains(good),
            "test setup: {good} not in {}",
            file.display()
        );
        std::fs::write(&file, text.replacen(good, typo, 1))?;
        let (code, err) = check_config(&file).await?;
        let name = file
            .file_name()
            .context("file name")?
            .to_string_lossy()
            .into_owned();
        let key = typo.trim_end_matches(" =");
        ensure!(
            code == Some(64),
            "check-config on a typo ({key}) in {name}: exit {code:?}\n{err}"
        );
        ensure!(
            err.contains(key) && err.contains(&name),
            "check-config should name the file {name} and the key {key}; it said:\n{err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_opens_the_geoip_database() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (control, relay) = write_configs(dir.path())?;
    let missing = dir.path().join("no-such.mmdb");
    for file in [control, relay] {
        let text = std::fs::read_to_string(&file)?;
        ensure!(
            text.contains(&geoip_db()),
            "test setup: no [dns] in {}",
            file.display()
        );
        std::fs::write(
            &file,
            text.replace(&geoip_db(), &missing.display().to_string()),
        )?;
        let (code, err) = check_config(&file).await?;
        ensure!(
            code == Some(64) && err.contains("no-such.mmdb"),
            "check-config on a missing GeoIP file in {}: exit {code:?}\n{err}",
            file.display()
        );
    }
    Ok(())
}

/// A GeoIP file that is not a MaxMind database stops `sat control` and `sat relay` at start,
/// before the relay enrols or serves (no control plane runs here: a relay that tried to enrol
/// first would fail on that instead), with a message that names the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_geoip_database_stops_control_and_relay_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (control, relay) = write_configs(dir.path())?;
    let corrupt = dir.path().join("corrupt.mmdb");
    std::fs::write(&corrupt, b"this is not a MaxMind DB file\n".repeat(100))?;
    for (what, file) in [("control", control), ("relay", relay)] {
        let text = std::fs::read_to_string(&file)?;
        std::fs::write(
            &file,
            text.replace(&geoip_db(), &corrupt.display().to_string()),
        )?;
        let mut cmd = sat_cmd([what, "--config"]);
        cmd.arg(&file);
        let (status, _, err) = run(cmd, SHORT).await?;
        ensure!(
            !status.success() && err.contains("corrupt.mmdb") && err.contains("MaxMind DB"),
            "sat {what} with a corrupt GeoIP file: {status}\n{err}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sat up

#[derive(Debug)]
struct ProcInfo {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    state: char,
}

/// Every process on the machine, from /proc/<pid>/stat.
fn processes() -> Vec<ProcInfo> {
    let mut all = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // gone meanwhile
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if let [state, ppid, pgrp, ..] = fields[..] {
            all.push(ProcInfo {
                pid,
                ppid: ppid.parse().unwrap_or(0),
                pgrp: pgrp.parse().unwrap_or(0),
                state: state.chars().next().unwrap_or('?'),
            });
        }
    }
    all
}

/// Runs a command line as a user pasting it into bash would, with `sat` on the PATH and
/// "hello" typed on stdin; returns its stdout, or an error when it fails.
async fn paste(line: &str, dir: &Path) -> Result<String> {
    let bin_dir = Path::new(SAT).parent().context("sat binary path")?;
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", path)
        // As a user would run it, but with this test's relay choices kept from the user's.
        .env("SAT_CACHE_DIR", test_cache_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(b"hello\n").await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .with_context(|| format!("`{line}` still running after 30 s"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "`{line}` failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

fn descendants(root: i32) -> HashSet<i32> {
    let all = processes();
    let mut found = HashSet::from([root]);
    loop {
        let before = found.len();
        for p in &all {
            if found.contains(&p.ppid) {
                found.insert(p.pid);
            }
        }
        if found.len() == before {
            found.remove(&root);
            return found;
        }
    }
}

/// What `sat up`'s simulated distances must show (see devnet/src/regions.rs): each banner `dig`
/// subnet, the relay it gets, and the ECS scope (the database's network for it).
const DNS_STORY: [(&str, &str, &str); 3] = [
    // London: eu-west, in town.
    ("81.2.69.142/32", "127.0.0.3", "81.2.69.142/32/31"),
    // Changchun: us-east, though ap-south is nearer: ap-south's way to the primary is long.
    ("175.16.199.0/24", "127.0.0.2", "175.16.199.0/24/24"),
    // Singapore: ap-south, in town.
    ("214.0.0.0/24", "127.0.0.4", "214.0.0.0/24/24"),
];

/// The banner's `sat relays` line, run with `--json`: from this machine ap-south is the nearest
/// relay, but us-east, the farthest, is chosen for the shortest whole path.
async fn check_relay_choice(banner: &[String], dir: &Path) -> Result<()> {
    let line = banner
        .iter()
        .find(|l| l.contains(" relays --relay"))
        .context("the banner has no `sat relays` line")?;
    let json = paste(&format!("{} --json", line.trim()), dir).await?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&json).with_context(|| format!("sat relays printed {json}"))?;
    let rtt = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["rtt_us"].as_u64())
            .with_context(|| format!("{name} unmeasured: {rows:#?}"))
    };
    let chosen: Vec<&serde_json::Value> = rows.iter().filter(|r| r["chosen"] == true).collect();
    ensure!(
        chosen.len() == 1 && chosen[0]["name"] == "relay-us-east",
        "us-east should be chosen: {rows:#?}"
    );
    let (us, eu, ap) = (
        rtt("relay-us-east")?,
        rtt("relay-eu-west")?,
        rtt("relay-ap-south")?,
    );
    // 80, 70 and 40 ms each way from here, less a little for the proxies' timer rounding.
    ensure!(
        us > 150_000 && eu > 130_000 && ap > 75_000 && ap < eu && eu < us,
        "round trips from here: us-east {us} µs, eu-west {eu} µs, ap-south {ap} µs"
    );
    Ok(())
}

/// The banner's `dig` lines, as pasted: each subnet gets its relay, with the database's scope.
async fn check_geo_dns(banner: &[String], dir: &Path) -> Result<()> {
    for (subnet, want, scope) in DNS_STORY {
        let line = banner
            .iter()
            .find(|l| l.contains("dig @") && l.contains(&format!("+subnet={subnet} ")))
            .with_context(|| format!("the banner has no dig line for {subnet}"))?;
        let out = paste(line.trim(), dir).await?;
        let answers = a_records(&out);
        ensure!(
            answers == [want],
            "{subnet}: answers {answers:?}, want {want}\n{out}"
        );
        let ecs = out.lines().find(|l| l.contains("CLIENT-SUBNET"));
        ensure!(
            ecs.is_some_and(|l| l.contains(scope)),
            "{subnet}: ECS line {ecs:?}, want scope {scope}"
        );
    }
    // The control plane answers from its own relay map, as the relays do from theirs.
    let line = banner
        .iter()
        .find(|l| l.contains("dig @127.0.0.1 "))
        .context("the banner has no dig line for the control plane's DNS")?;
    let out = paste(line.trim(), dir).await?;
    let (subnet, want, _) = DNS_STORY[0];
    ensure!(
        line.contains(subnet) && a_records(&out) == [want],
        "the control plane's DNS: {line}\n{out}"
    );
    Ok(())
}

/// The addresses of dig's answer section for `demo.sat.test`.
fn a_records(dig_output: &str) -> Vec<&str> {
    dig_output
        .lines()
        .filter(|l| l.starts_with("demo.sat.test.") && l.contains("\tA\t"))
        .filter_map(|l| l.split_whitespace().last())
        .collect()
}

/// Starts `sat up ARGS --data-dir DATA` in its own process group, so that the test can send
/// SIGINT as a terminal's Ctrl-C does, and waits for the end of its banner.
async fn start_up(data: &Path, args: &[&str]) -> Result<(Proc, Log)> {
    let mut cmd = sat_cmd(["up"]);
    cmd.args(args).arg("--data-dir").arg(data);
    let up = Proc::spawn_logged("sat up", cmd, true)?;
    let out = up.out.clone().context("sat up stdout")?;
    out.wait_for(
        "Ctrl-C drains and stops everything",
        Duration::from_secs(90),
    )
    .await
    .with_context(|| format!("sat up {args:?} stderr:\n{}", up.log.tail()))?;
    Ok((up, out))
}

/// `sat up` on its fixed addresses (the one test that uses them, so that no two run at once):
/// it comes up, the curl and `sat connect` lines it prints work when pasted, its TCP port
/// echoes, its `sat relays` and `dig` lines show routing by the whole path, its config files
/// pass check-config, and Ctrl-C stops it with exit 0 and no process left behind. It starts
/// again, with fewer relays, from the same data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sat_up_serves_the_demo_and_stops_cleanly_on_ctrl_c() -> Result<()> {
    let data = tempfile::tempdir()?;
    let started = Instant::now();
    let (mut up, out) = start_up(data.path(), &[]).await?;
    eprintln!("sat up ready in {} ms", started.elapsed().as_millis());
    let banner = out.lines();

    // The printed curl and `sat connect` commands, run as a user pasting them would.
    let curl = out
        .wait_line(0, SHORT, "a curl command", |l| {
            l.find("curl ").map(|i| l[i..].to_owned())
        })
        .await?;
    let body = paste(&curl, data.path()).await?;
    ensure!(
        ["us-east", "eu-west", "ap-south"]
            .iter()
            .any(|r| body.contains(r)),
        "the demo page names no region:\n{body}"
    );
    let connect_line = out
        .wait_line(0, SHORT, "a `sat connect echo` command", |l| {
            (l.contains("connect echo") && !l.contains("ProxyCommand")).then(|| l.trim().to_owned())
        })
        .await?;
    let echoed = paste(&connect_line, data.path()).await?;
    ensure!(
        echoed.contains("hello"),
        "`{connect_line}` with \"hello\" on stdin printed {echoed:?}"
    );

    let mut echo = connect("127.0.0.2:7000").await?;
    round_trip(&mut echo, b"ping", SHORT)
        .await
        .context("sat up's echo port")?;
    echo.shutdown().await?;
    drop(echo);

    check_relay_choice(&banner, data.path()).await?;
    check_geo_dns(&banner, data.path()).await?;

    for file in ["control.toml", "relay-us-east.toml"] {
        let (code, err) = check_config(&data.path().join(file)).await?;
        ensure!(
            code == Some(0),
            "check-config on sat up's {file}: exit {code:?}\n{err}"
        );
    }

    let pid = up.pid()?;
    let children = descendants(pid);
    eprintln!("sat up (pid {pid}) has descendants {children:?}");
    up.signal_group(libc::SIGINT)?;
    let status = up.wait_exit(Duration::from_secs(30)).await?;
    ensure!(status.success(), "sat up exited with {status} on Ctrl-C");

    let left: Vec<ProcInfo> = processes()
        .into_iter()
        .filter(|p| p.state != 'Z' && p.pid != pid && (children.contains(&p.pid) || p.pgrp == pid))
        .collect();
    ensure!(
        left.is_empty(),
        "processes left after sat up exited: {left:?}"
    );

    // Again in the same data dir, with one relay: the first run's other relays stay in the
    // store, down, and must not hold up "ready".
    let (mut again, _) = start_up(data.path(), &["--relays", "1"]).await?;
    again.signal_group(libc::SIGINT)?;
    let status = again.wait_exit(Duration::from_secs(30)).await?;
    ensure!(status.success(), "sat up --relays 1 exited with {status}");
    Ok(())
}
