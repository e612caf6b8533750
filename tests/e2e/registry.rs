//! The control plane as the system of record: the relay registry and its health, the admin API
//! (and `sat admin`), and what survives a restart of the control plane.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::Instant;

/// How often a poll looks again: small against the 1 s bounds measured here.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// HTTP without a client library: the admin API, relay probes and relay plain HTTP all speak
// plain HTTP/1.1, and a bare request shows exactly what the server said.

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

/// One request on its own connection (`Connection: close`). `Ok(None)`: connection refused.
async fn http_try(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Option<Reply>> {
    let what = format!("{method} http://{addr}{path}");
    tokio::time::timeout(SHORT, async {
        let mut tcp = match TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        tcp.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        parse_reply(&raw).map(Some)
    })
    .await
    .with_context(|| format!("{what}: no answer within {SHORT:?}"))?
    .with_context(|| what.clone())
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply> {
    http_try(addr, method, "localhost", path, headers, body)
        .await?
        .with_context(|| format!("{method} http://{addr}{path}: connection refused"))
}

fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("truncated chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        s = rest.get(size + 2..).context("short chunk")?;
    }
}

/// `curl` against the admin API: (status, body). A real client for the cases a person or a
/// script would type.
async fn curl_api(
    net: &Net,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("http://{}{path}", net.admin_addr));
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "curl {method} {path}: {status}: {err}");
    let (body, code) = out.rsplit_once('\n').context("curl -w output")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// The `error` of a JSON error body; fails unless the body is exactly that shape.
fn api_error(body: &str) -> Result<String> {
    let v: Value =
        serde_json::from_str(body).with_context(|| format!("error body is not JSON: {body:?}"))?;
    v.get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("error body has no \"error\" text: {body}"))
}

// ---------------------------------------------------------------------------------------------
// The registry as the admin API shows it

async fn relays_json(net: &Net) -> Result<Vec<Value>> {
    let bearer = format!("Bearer {}", net.admin_token);
    let reply = http(
        net.admin_addr,
        "GET",
        "/v1/relays",
        &[("Authorization", &bearer)],
        None,
    )
    .await?;
    ensure!(reply.status == 200, "GET /v1/relays: {reply:?}");
    Ok(serde_json::from_str(&reply.body)?)
}

fn state_of(relays: &[Value], name: &str) -> Option<String> {
    relays
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["state"].as_str())
        .map(str::to_owned)
}

/// Polls `GET /v1/relays` until `name` is in `state`; returns when it first was seen so.
async fn wait_state(net: &Net, name: &str, state: &str, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let relays = relays_json(net).await?;
        if state_of(&relays, name).as_deref() == Some(state) {
            return Ok(Instant::now());
        }
        ensure!(
            Instant::now() < deadline,
            "{name} not {state} within {within:?}; the API says {relays:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `sat admin --json relays`, parsed.
async fn cli_relays(net: &Net) -> Result<Vec<Value>> {
    let out = net.admin_ok(["--json", "relays"]).await?;
    serde_json::from_str(&out).with_context(|| format!("sat admin --json relays printed {out}"))
}

/// Waits for the control plane's `relay state changed` line for `relay` with `state`.
async fn wait_state_line(
    log: &Log,
    mark: usize,
    relay: &str,
    state: &str,
    timeout: Duration,
) -> Result<String> {
    let relay_field = format!("relay={relay} ");
    let state_field = format!("state={state}");
    log.wait_line(
        mark,
        timeout,
        &format!("relay state changed for {relay} to {state}"),
        |l| {
            (l.contains("relay state changed")
                && l.contains(&relay_field)
                && l.contains(&state_field))
            .then(|| l.to_owned())
        },
    )
    .await
}

/// `generation=N` of every `config applied` line since `mark`.
fn generations(log: &Log, mark: usize) -> Vec<u64> {
    log.lines()
        .iter()
        .skip(mark)
        .filter(|l| l.contains("config applied"))
        .filter_map(|l| {
            let rest = &l[l.find("generation=")? + "generation=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Probes

/// `GET /readyz` on a relay's health port; `None` when the connection is refused.
async fn readyz(addr: SocketAddr) -> Result<Option<Reply>> {
    http_try(addr, "GET", "localhost", "/readyz", &[], None).await
}

/// Polls a relay's `/readyz` until `want(status)`; returns when it first did, and the reply.
async fn wait_readyz(
    addr: SocketAddr,
    want: u16,
    within: Duration,
) -> Result<(Instant, Option<Reply>)> {
    let deadline = Instant::now() + within;
    loop {
        let reply = readyz(addr).await?;
        if reply.as_ref().map(|r| r.status) == Some(want) {
            return Ok((Instant::now(), reply));
        }
        ensure!(
            Instant::now() < deadline,
            "/readyz at {addr} did not answer {want} within {within:?}; last: {reply:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// `sat connect SERVICE` through `relay`: 64 KiB echoed, then a clean exit.
async fn echo_via_connect(net: &Net, relay: &Relay, service: &str, seed: u64) -> Result<()> {
    let mut tunnel = sat_connect(service, relay.https()?, net.ca())?;
    let data = random_bytes(seed, 64 << 10);
    let (stdin, stdout) = (tunnel.stdin()?, tunnel.stdout()?);
    let back = tokio::time::timeout(SHORT, exchange(stdin, stdout, &data))
        .await
        .with_context(|| {
            format!(
                "no echo from {service} through {} within {SHORT:?}",
                relay.name
            )
        })?
        .with_context(|| format!("{service} through {}", relay.name))?;
    ensure!(
        back == data,
        "{service} through {}: {} bytes came back, not the 64 KiB sent",
        relay.name,
        back.len()
    );
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(
        status.success(),
        "sat connect {service} exited with {status}"
    );
    Ok(())
}

/// `sat connect SERVICE` through `relay` must be refused: returns what it said on stderr.
async fn refused_via_connect(net: &Net, relay: &Relay, service: &str) -> Result<String> {
    // stdin stays open: the refusal alone must end the process.
    let mut tunnel = sat_connect(service, relay.https()?, net.ca())?;
    let status = tunnel.wait_exit(SHORT).await?;
    let said = tunnel.log.lines().join("\n");
    ensure!(
        !status.success(),
        "sat connect {service} through {} succeeded; stderr:\n{said}",
        relay.name
    );
    Ok(said)
}

/// Answers every HTTP/1.1 request on a connection with 200 and `body`.
async fn http_backend(body: &'static str) -> Result<Backend> {
    serve(move |mut stream| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// A tunnel kept busy: 16 KiB every 10 ms out, and a reader that never stops reading, so that
/// the moment the tunnel ends is seen at once. Resolves with when it ended and how.
struct Busy {
    echoed: Arc<AtomicUsize>,
    ended: tokio::task::JoinHandle<(Instant, String)>,
    writer: tokio::task::JoinHandle<()>,
}

impl Busy {
    fn start(stream: TcpStream) -> Self {
        const CHUNK: usize = 16 << 10;
        let (mut r, mut w) = stream.into_split();
        let echoed = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(async move {
            let chunk = random_bytes(7, CHUNK);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let count = echoed.clone();
        let ended = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => return (Instant::now(), "EOF".to_owned()),
                    Ok(n) => {
                        count.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => return (Instant::now(), format!("error: {e}")),
                }
            }
        });
        Self {
            echoed,
            ended,
            writer,
        }
    }

    async fn wait_echoed(&self, bytes: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.echoed.load(Ordering::Relaxed) < bytes {
            ensure!(
                !self.ended.is_finished(),
                "the tunnel ended before carrying {bytes} bytes"
            );
            ensure!(
                Instant::now() < deadline,
                "only {} of {bytes} bytes echoed within {within:?}",
                self.echoed.load(Ordering::Relaxed)
            );
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.writer.abort();
        self.ended.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Revoke

/// Revoking a relay cuts its live tunnels within a second, and it cannot come back: its uplinks
/// are refused as revoked, the registry says "revoked", and users get a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cuts_a_live_tunnel_within_a_second() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;
    let (_forward, local) = sat_forward(relay.https()?, net.ca(), "echo").await?;
    let mut busy = Busy::start(connect(local).await?);
    // 256 KiB echoed: the tunnel is carrying data in both directions when the revoke lands.
    busy.wait_echoed(256 << 10, SHORT).await?;

    let (cmark, rmark) = (net.control.log.mark(), relay.proc.log.mark());
    let asked = Instant::now();
    let out = net
        .admin_ok(["--json", "relays", "revoke", &relay.name])
        .await?;
    let answered = Instant::now();
    let view: Value = serde_json::from_str(&out)?;
    ensure!(view["state"] == "revoked", "revoke answered {out}");

    let (ended, how) = tokio::time::timeout(SHORT, &mut busy.ended)
        .await
        .context("the tunnel was still open 10 s after the revoke")??;
    let after_answer = ended.saturating_duration_since(answered);
    eprintln!(
        "revoke: tunnel ended ({how}) {} ms after `sat admin relays revoke` returned ({} ms after \
         it started; the command took {} ms); {} bytes echoed before",
        after_answer.as_millis(),
        ended.saturating_duration_since(asked).as_millis(),
        answered.duration_since(asked).as_millis(),
        busy.echoed.load(Ordering::Relaxed),
    );
    ensure!(
        after_answer < Duration::from_secs(1),
        "the tunnel ended {after_answer:?} after the revoke returned; want < 1 s"
    );

    // The relay's log says it was refused for good, why, and how to come back.
    let refusal = relay
        .proc
        .log
        .wait_for_since(rmark, "refuses this relay", SHORT)
        .await?;
    ensure!(
        refusal.contains("revoked by an operator") && refusal.contains("relay-token create"),
        "the relay's log of the cut does not say it was revoked and what to do: {refusal}"
    );

    let relays = cli_relays(&net).await?;
    ensure!(
        state_of(&relays, &relay.name).as_deref() == Some("revoked"),
        "sat admin relays: {relays:#?}"
    );
    let said = refused_via_connect(&net, &relay, "echo").await?;
    ensure!(
        said.contains("no uplink"),
        "a new tunnel through the revoked relay should be refused for want of an uplink; \
         sat connect said:\n{said}"
    );

    // And an operator cannot undo it by resuming.
    let (status, _, err) = net.admin(["relays", "resume", &relay.name]).await?;
    ensure!(
        status.code() == Some(1) && err.contains("revoked"),
        "resume of a revoked relay: {status}: {err}"
    );

    // Started again with its old identity, it is turned away at once, as revoked.
    let mut relay = relay;
    relay.proc.kill().await?;
    let mut cmd = sat_cmd(["relay", "--config"]);
    cmd.arg(&relay.config);
    let again = Proc::spawn("relay-again", cmd)?;
    let refused = net
        .control
        .log
        .wait_for_since(cmark, "refusing uplink", SHORT)
        .await?;
    ensure!(refused.contains("has been revoked"), "refusal: {refused}");
    again
        .log
        .wait_for("has been revoked", SHORT)
        .await
        .context("the restarted relay's log does not say it is revoked")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Drain

/// Draining takes a relay out of rotation within a second (its /readyz turns 503) while it keeps
/// serving; the other relay stays ready; resume puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_takes_a_relay_out_of_rotation_but_it_keeps_serving() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let health = RelayOpts {
        health: true,
        ..Default::default()
    };
    let r1 = net.relay(health.clone()).await?;
    let r2 = net.relay(health).await?;
    let (h1, h2) = (
        r1.health.context("relay-1 health")?,
        r2.health.context("relay-2 health")?,
    );
    for h in [h1, h2] {
        wait_readyz(h, 200, SHORT).await?;
    }
    wait_state(&net, &r1.name, "up", SHORT).await?;
    wait_state(&net, &r2.name, "up", SHORT).await?;

    let (_forward, local) = sat_forward(r1.https()?, net.ca(), "echo").await?;
    let mut existing = connect(local).await?;
    round_trip(&mut existing, b"before the drain", SHORT).await?;

    let (cmark, rmark) = (net.control.log.mark(), r1.proc.log.mark());
    let out = net
        .admin_ok(["--json", "relays", "drain", &r1.name])
        .await?;
    let drained_at = Instant::now();
    let view: Value = serde_json::from_str(&out)?;
    ensure!(view["state"] == "drained", "drain answered {out}");

    let (seen, reply) = wait_readyz(h1, 503, Duration::from_secs(5)).await?;
    let took = seen.saturating_duration_since(drained_at);
    let body = reply.map(|r| r.body).unwrap_or_default();
    eprintln!(
        "drain: relay-1 /readyz answered 503 {} ms after `sat admin relays drain` returned: {body:?}",
        took.as_millis()
    );
    ensure!(
        took < Duration::from_secs(1),
        "/readyz turned 503 {took:?} after the drain; want < 1 s"
    );
    ensure!(body.contains("drained"), "503 body: {body:?}");
    wait_state_line(&net.control.log, cmark, &r1.name, "Draining", SHORT).await?;
    r1.proc
        .log
        .wait_for_since(rmark, "an operator drained this relay", SHORT)
        .await?;

    let relays = cli_relays(&net).await?;
    ensure!(
        state_of(&relays, &r1.name).as_deref() == Some("drained")
            && state_of(&relays, &r2.name).as_deref() == Some("up"),
        "sat admin relays after the drain: {relays:#?}"
    );
    let r2_ready = readyz(h2).await?;
    ensure!(
        r2_ready.as_ref().map(|r| r.status) == Some(200),
        "relay-2 /readyz while relay-1 is drained: {r2_ready:?}"
    );

    // Out of rotation, not refusing: the open tunnel, a new tunnel on the same client
    // connection, and a new client all get through.
    round_trip(&mut existing, b"during the drain, old tunnel", SHORT).await?;
    let mut fresh = connect(local).await?;
    round_trip(&mut fresh, b"during the drain, new tunnel", SHORT).await?;
    echo_via_connect(&net, &r1, "echo", 2).await?;
    let still = readyz(h1).await?;
    ensure!(
        still.as_ref().map(|r| r.status) == Some(503),
        "relay-1 /readyz went back to {still:?} while drained"
    );

    let (cmark, rmark) = (net.control.log.mark(), r1.proc.log.mark());
    let out = net
        .admin_ok(["--json", "relays", "resume", &r1.name])
        .await?;
    let resumed_at = Instant::now();
    let view: Value = serde_json::from_str(&out)?;
    ensure!(view["state"] == "up", "resume answered {out}");
    let (seen, _) = wait_readyz(h1, 200, Duration::from_secs(5)).await?;
    let took = seen.saturating_duration_since(resumed_at);
    eprintln!(
        "resume: relay-1 /readyz answered 200 {} ms after `sat admin relays resume` returned",
        took.as_millis()
    );
    ensure!(
        took < Duration::from_secs(1),
        "/readyz back to 200 {took:?} after the resume; want < 1 s"
    );
    wait_state_line(&net.control.log, cmark, &r1.name, "Up", SHORT).await?;
    r1.proc
        .log
        .wait_for_since(rmark, "back in rotation", SHORT)
        .await?;
    round_trip(&mut existing, b"after the resume", SHORT).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Heartbeat timeout

/// A relay that stops answering (SIGSTOP) is down within the 3 s heartbeat timeout plus a
/// second; when it wakes up (SIGCONT) it is up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_relay_goes_down_and_comes_back() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;
    wait_state(&net, &relay.name, "up", SHORT).await?;

    let cmark = net.control.log.mark();
    relay.proc.signal(libc::SIGSTOP)?;
    let stopped = Instant::now();
    let result = async {
        let down = wait_state(&net, &relay.name, "down", Duration::from_secs(8)).await?;
        let line = wait_state_line(
            &net.control.log,
            cmark,
            &relay.name,
            "Down",
            Duration::from_secs(8),
        )
        .await?;
        let logged = Instant::now();
        let relays = cli_relays(&net).await?;
        anyhow::Ok((down, logged, line, relays))
    }
    .await;
    // Wake it whatever happened, so that a failure above is reported rather than a hang.
    relay.proc.signal(libc::SIGCONT)?;
    let continued = Instant::now();
    let (down, logged, line, relays) = result?;

    let stop_to_down = down.duration_since(stopped);
    let stop_to_log = logged.duration_since(stopped);
    eprintln!(
        "heartbeat timeout: API said down {} ms after SIGSTOP, control logged it after {} ms: {line}",
        stop_to_down.as_millis(),
        stop_to_log.as_millis()
    );
    ensure!(
        state_of(&relays, &relay.name).as_deref() == Some("down"),
        "sat admin relays while the relay is stopped: {relays:#?}"
    );
    // Down no sooner than a missed beat or two (the timeout is 3 s since the last heartbeat,
    // which came at most 1 s before the stop), and no later than the timeout plus a second.
    ensure!(
        stop_to_down >= Duration::from_millis(1500),
        "down only {stop_to_down:?} after the stop: before the 3 s heartbeat timeout"
    );
    for (what, took) in [("API", stop_to_down), ("log", stop_to_log)] {
        ensure!(
            took <= Duration::from_secs(4),
            "{what}: down {took:?} after the stop; want ≤ 3 s + 1 s"
        );
    }

    let cmark = net.control.log.mark();
    let up = wait_state(&net, &relay.name, "up", SHORT).await?;
    wait_state_line(&net.control.log, cmark, &relay.name, "Up", SHORT).await?;
    eprintln!(
        "heartbeat timeout: up again {} ms after SIGCONT",
        up.duration_since(continued).as_millis()
    );
    let relays = cli_relays(&net).await?;
    ensure!(
        state_of(&relays, &relay.name).as_deref() == Some("up"),
        "sat admin relays after SIGCONT: {relays:#?}"
    );
    echo_via_connect(&net, &relay, "echo", 3).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Services through the admin API

/// Polls plain HTTP to a relay with `Host: host` until `done(status, body)`.
async fn wait_http(
    relay: &Relay,
    host: &str,
    within: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let reply = http_try(relay.http()?, "GET", host, "/", &[], None)
            .await?
            .with_context(|| format!("{} plain HTTP refused", relay.name))?;
        if done(reply.status, &reply.body) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < within,
            "{} for {host}: still {reply:?} after {within:?}",
            relay.name
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Services added through the admin API (with `sat admin` and with raw JSON) reach every relay
/// within a second or two, without a restart; removing them takes them off every relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_added_and_removed_through_the_api_reach_every_relay() -> Result<()> {
    const HELLO: &str = "hello from web2";
    let echo = echo_backend().await?;
    let web = http_backend(HELLO).await?;
    let mut net = Net::start(vec![]).await?;
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(
            net.relay(RelayOpts {
                plain_http: true,
                ..Default::default()
            })
            .await?,
        );
    }
    // Not there yet.
    let before = http_try(relays[0].http()?, "GET", "web2.localhost", "/", &[], None)
        .await?
        .context("plain HTTP refused")?;
    ensure!(before.status == 404, "web2 before it was added: {before:?}");

    let web_backend = web.addr.to_string();
    let added = net
        .admin_ok([
            "--json",
            "services",
            "add",
            "web2",
            "--kind",
            "http",
            "--backend",
            &web_backend,
            "--hostname",
            "web2.localhost",
        ])
        .await?;
    let v: Value = serde_json::from_str(&added)?;
    ensure!(
        v["name"] == "web2" && v["kind"] == "http" && v["access"] == "public",
        "services add answered {added}"
    );
    let body = format!(
        r#"{{"name": "echo2", "kind": "tcp", "backend": "{}"}}"#,
        echo.addr
    );
    let (code, answer) = curl_api(
        &net,
        "POST",
        "/v1/services",
        Some(&net.admin_token),
        Some(&body),
    )
    .await?;
    ensure!(code == 201, "POST /v1/services: {code} {answer}");
    let v: Value = serde_json::from_str(&answer)?;
    ensure!(
        v["name"] == "echo2" && v["kind"] == "tcp" && v["created_at"].as_i64() > Some(0),
        "POST /v1/services answered {answer}"
    );

    // The API answers once the new config is on its way; each relay has it a moment later.
    for relay in &relays {
        relay
            .proc
            .log
            .wait_for("services=2", Duration::from_secs(2))
            .await?;
    }
    for relay in &relays {
        let took = wait_http(relay, "web2.localhost", Duration::from_secs(2), |s, b| {
            s == 200 && b == HELLO
        })
        .await?;
        eprintln!(
            "services: web2 answered through {} {} ms after the first check",
            relay.name,
            took.as_millis()
        );
        echo_via_connect(&net, relay, "echo2", 4).await?;
    }

    let listed = net.admin_ok(["--json", "services", "list"]).await?;
    let listed: Vec<Value> = serde_json::from_str(&listed)?;
    let names: Vec<&str> = listed.iter().filter_map(|s| s["name"].as_str()).collect();
    ensure!(names == ["echo2", "web2"], "services list: {names:?}");

    net.admin_ok(["services", "remove", "web2"]).await?;
    let (code, answer) = curl_api(
        &net,
        "DELETE",
        "/v1/services/echo2",
        Some(&net.admin_token),
        None,
    )
    .await?;
    ensure!(code == 200, "DELETE /v1/services/echo2: {code} {answer}");
    for relay in &relays {
        wait_http(relay, "web2.localhost", Duration::from_secs(2), |s, b| {
            s == 404 && b.contains("no service for host")
        })
        .await?;
        let said = refused_via_connect(&net, relay, "echo2").await?;
        ensure!(
            said.contains("unknown service") && said.contains("echo2"),
            "echo2 through {} after its removal; sat connect said:\n{said}",
            relay.name
        );
    }
    let listed = net.admin_ok(["--json", "services", "list"]).await?;
    ensure!(
        serde_json::from_str::<Vec<Value>>(&listed)?.is_empty(),
        "services list after removing both: {listed}"
    );
    // A second removal is a 404, not a success.
    let (status, _, err) = net.admin(["services", "remove", "web2"]).await?;
    ensure!(
        status.code() == Some(1) && err.contains("no service named"),
        "removing web2 twice: {status}: {err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Restart

/// The control plane dies (SIGKILL) and comes back on the same ports and data dir: relays
/// reconnect by themselves and carry traffic again; relays, services, tokens, the audit log and
/// the admin token are all still there; and config generations keep growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_keeps_everything_and_relays_reconnect() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relays = vec![
        net.relay(RelayOpts::default()).await?,
        net.relay(RelayOpts::default()).await?,
    ];

    let echo_backend_addr = echo.addr.to_string();
    net.admin_ok([
        "services",
        "add",
        "added",
        "--kind",
        "tcp",
        "--backend",
        &echo_backend_addr,
        "--access",
        "token",
    ])
    .await?;
    let token = net
        .admin_ok(["--json", "token", "create", "--service", "added"])
        .await?;
    let token: Value = serde_json::from_str(&token)?;
    let token_id = token["id"].as_str().context("token id")?.to_owned();
    ensure!(
        token["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("sat_at1.")),
        "token create answered {token}"
    );
    for relay in &relays {
        relay
            .proc
            .log
            .wait_for("services=2", SHORT)
            .await
            .with_context(|| format!("{} never applied the added service", relay.name))?;
    }
    let audit_before: Vec<Value> = serde_json::from_str(&net.admin_ok(["--json", "audit"]).await?)?;
    let entry = |e: &Value| {
        (
            e["at"].as_i64().unwrap_or_default(),
            e["action"].as_str().unwrap_or_default().to_owned(),
            e["target"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let before: Vec<_> = audit_before.iter().map(entry).collect();
    for (action, target) in [
        ("service.add", "added"),
        ("token.create", token_id.as_str()),
    ] {
        ensure!(
            before.iter().any(|(_, a, t)| a == action && t == target),
            "audit before the restart has no {action} {target}: {before:?}"
        );
    }
    let gen_before: Vec<u64> = relays
        .iter()
        .map(|r| generations(&r.proc.log, 0).into_iter().max().unwrap_or(0))
        .collect();
    ensure!(
        gen_before.iter().all(|&g| g > 0),
        "no config applied yet: {gen_before:?}"
    );
    let marks: Vec<usize> = relays.iter().map(|r| r.proc.log.mark()).collect();

    let killed = Instant::now();
    net.restart_control().await?;
    eprintln!(
        "restart: control plane back up {} ms after the kill",
        killed.elapsed().as_millis()
    );

    for (relay, &mark) in relays.iter().zip(&marks) {
        let log = &relay.proc.log;
        log.wait_for_since(mark, "uplink 0 lost", STARTUP).await?;
        log.wait_for_since(mark, "uplink 0 connected", STARTUP)
            .await?;
        eprintln!(
            "restart: {} reconnected {} ms after the kill",
            relay.name,
            killed.elapsed().as_millis()
        );
    }
    // A relay only applies a push newer than what it runs, so seeing one at all proves the
    // generation grew; check the numbers too.
    for ((relay, &mark), &before) in relays.iter().zip(&marks).zip(&gen_before) {
        relay
            .proc
            .log
            .wait_for_since(mark, "config applied", SHORT)
            .await?;
        let after = generations(&relay.proc.log, mark);
        eprintln!(
            "restart: {} generation {before} before, {after:?} after",
            relay.name
        );
        ensure!(
            after.iter().all(|&g| g > before),
            "{}: generation {after:?} after the restart, not above {before}",
            relay.name
        );
    }

    for relay in &relays {
        echo_via_connect(&net, relay, "echo", 5).await?;
        wait_state(&net, &relay.name, "up", SHORT).await?;
    }
    // The token-gated service, with the token made before the restart: the signing key
    // survived too.
    let token_text = token["token"].as_str().context("token text")?;
    for relay in &relays {
        let mut cmd = sat_cmd([
            "connect",
            "added",
            "--via",
            &relay.https()?.to_string(),
            "--ca",
        ]);
        cmd.arg(net.ca()).env("SAT_TOKEN", token_text);
        let mut tunnel = Proc::spawn_piped("connect added", cmd)?;
        let data = random_bytes(6, 32 << 10);
        let (stdin, stdout) = (tunnel.stdin()?, tunnel.stdout()?);
        let back = tokio::time::timeout(SHORT, exchange(stdin, stdout, &data))
            .await
            .context("no echo from the token-gated service after the restart")??;
        ensure!(
            back == data,
            "token-gated echo after the restart through {} differs",
            relay.name
        );
        tunnel.wait_exit(SHORT).await?;
    }

    let listed = cli_relays(&net).await?;
    let mut names: Vec<&str> = listed.iter().filter_map(|r| r["name"].as_str()).collect();
    names.sort_unstable();
    ensure!(
        names == ["relay-1", "relay-2"],
        "sat admin relays after the restart: {listed:#?}"
    );
    let services: Vec<Value> =
        serde_json::from_str(&net.admin_ok(["--json", "services", "list"]).await?)?;
    ensure!(
        services
            .iter()
            .any(|s| s["name"] == "added" && s["access"] == "token"),
        "services after the restart: {services:#?}"
    );
    let tokens: Vec<Value> =
        serde_json::from_str(&net.admin_ok(["--json", "token", "list"]).await?)?;
    ensure!(
        tokens.iter().any(|t| t["id"] == token_id.as_str()),
        "tokens after the restart: {tokens:#?}"
    );
    let audit_after: Vec<Value> = serde_json::from_str(&net.admin_ok(["--json", "audit"]).await?)?;
    let after: Vec<_> = audit_after.iter().map(entry).collect();
    for e in &before {
        ensure!(
            after.contains(e),
            "audit entry {e:?} lost in the restart; after: {after:?}"
        );
    }
    let token_file = net.dir.path().join("control-data/admin.token");
    ensure!(
        std::fs::read_to_string(&token_file)?.trim() == net.admin_token,
        "the restart replaced the admin token in {}",
        token_file.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input

/// The admin API refuses bad requests with the right status and a JSON message that names the
/// problem; `sat admin` maps them to exit codes and prints the server's message; the admin
/// token stays secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_bad_input_with_statuses_and_messages() -> Result<()> {
    let echo = echo_backend().await?;
    let net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let token = net.admin_token.as_str();

    // 401: no token, a wrong one, a wrong scheme.
    let (code, body) = curl_api(&net, "GET", "/v1/relays", None, None).await?;
    ensure!(code == 401, "no token: {code} {body}");
    let msg = api_error(&body)?;
    ensure!(msg.contains("missing admin token"), "no token: {msg}");
    let (code, body) = curl_api(&net, "GET", "/v1/services", Some("not-the-token"), None).await?;
    ensure!(code == 401, "wrong token: {code} {body}");
    ensure!(
        api_error(&body)?.contains("not valid"),
        "wrong token: {body}"
    );
    let basic = http(
        net.admin_addr,
        "GET",
        "/v1/services",
        &[("Authorization", &format!("Basic {token}"))],
        None,
    )
    .await?;
    ensure!(basic.status == 401, "Basic auth: {basic:?}");
    api_error(&basic.body)?;

    // 400: malformed JSON, a missing field, an unknown kind.
    let (code, body) = curl_api(
        &net,
        "POST",
        "/v1/services",
        Some(token),
        Some(r#"{"name": "x", "kind": "#),
    )
    .await?;
    ensure!(code == 400, "malformed JSON: {code} {body}");
    let msg = api_error(&body)?;
    ensure!(
        msg.contains("malformed JSON") && msg.contains("line 1"),
        "malformed JSON: the message should say so and where: {msg}"
    );
    let (code, body) = curl_api(
        &net,
        "POST",
        "/v1/services",
        Some(token),
        Some(r#"{"name": "x", "backend": "127.0.0.1:9"}"#),
    )
    .await?;
    ensure!(code == 400, "missing kind: {code} {body}");
    ensure!(api_error(&body)?.contains("kind"), "missing kind: {body}");
    let (code, body) = curl_api(
        &net,
        "POST",
        "/v1/services",
        Some(token),
        Some(r#"{"name": "x", "kind": "udp", "backend": "127.0.0.1:9"}"#),
    )
    .await?;
    ensure!(code == 400, "unknown kind: {code} {body}");
    let msg = api_error(&body)?;
    ensure!(
        msg.contains("kind") && msg.contains("udp"),
        "unknown kind: {msg}"
    );

    // 409: a service that exists.
    let dup = format!(
        r#"{{"name": "echo", "kind": "tcp", "backend": "{}"}}"#,
        echo.addr
    );
    let (code, body) = curl_api(&net, "POST", "/v1/services", Some(token), Some(&dup)).await?;
    ensure!(code == 409, "duplicate service: {code} {body}");
    ensure!(api_error(&body)?.contains("\"echo\""), "duplicate: {body}");

    // 404: no such relay, no such token.
    let (code, body) = curl_api(&net, "POST", "/v1/relays/nosuch/drain", Some(token), None).await?;
    ensure!(code == 404, "unknown relay: {code} {body}");
    ensure!(
        api_error(&body)?.contains("nosuch"),
        "unknown relay: {body}"
    );
    let (code, body) = curl_api(
        &net,
        "POST",
        "/v1/tokens/0000000000000000/revoke",
        Some(token),
        None,
    )
    .await?;
    ensure!(code == 404, "unknown token id: {code} {body}");
    api_error(&body)?;

    // Nothing above changed anything.
    let services: Vec<Value> =
        serde_json::from_str(&net.admin_ok(["--json", "services", "list"]).await?)?;
    ensure!(
        services.len() == 1 && services[0]["name"] == "echo",
        "services after refused changes: {services:#?}"
    );

    // `sat admin`: 77 for a refused token, 1 for 404 and 409, the server's words on stderr.
    let url = format!("http://{}", net.admin_addr);
    let mut cmd = sat_cmd(["admin", "--url", &url, "relays"]);
    cmd.env("SAT_ADMIN_TOKEN", "not-the-token");
    let (status, _, err) = run(cmd, SHORT).await?;
    ensure!(
        status.code() == Some(77),
        "wrong token: exit {status}, want 77; stderr: {err}"
    );
    ensure!(
        err.contains("not valid") && err.contains("SAT_ADMIN_TOKEN"),
        "wrong token: stderr should carry the server's message and where the token came from: {err}"
    );
    let (status, _, err) = net.admin(["relays", "drain", "nosuch"]).await?;
    ensure!(
        status.code() == Some(1),
        "unknown relay: exit {status}, want 1; stderr: {err}"
    );
    ensure!(
        err.contains("no relay named \"nosuch\""),
        "unknown relay: {err}"
    );
    let (status, _, err) = net
        .admin([
            "services",
            "add",
            "echo",
            "--kind",
            "tcp",
            "--backend",
            &echo.addr.to_string(),
        ])
        .await?;
    ensure!(
        status.code() == Some(1),
        "duplicate service: exit {status}, want 1; stderr: {err}"
    );
    ensure!(
        err.contains("a service named \"echo\" exists"),
        "duplicate service: {err}"
    );
    let (status, _, err) = net.admin(["token", "revoke", "0000000000000000"]).await?;
    ensure!(
        status.code() == Some(1) && err.contains("no access token"),
        "unknown token: exit {status}: {err}"
    );

    // The token file is the operator's alone, and the token never reaches the log.
    let token_file = net.dir.path().join("control-data/admin.token");
    let mode = std::fs::metadata(&token_file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "{} has mode {mode:o}", token_file.display());
    ensure!(
        token.len() >= 20,
        "admin token is only {} chars",
        token.len()
    );
    let lines = net.control.log.lines();
    if let Some(l) = lines.iter().find(|l| l.contains(token)) {
        bail!("the control plane logged the admin token: {l}");
    }
    ensure!(
        lines.iter().any(|l| l.contains("admin request refused")),
        "refused admin requests should be logged"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Probes

/// /healthz and /readyz: on the control plane's admin listener and on a relay, without auth;
/// and what a relay's probes do while it drains after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_probes() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;

    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let reply = http(net.admin_addr, "GET", path, &[], None).await?;
        ensure!(reply.status == 200, "control {path}: {reply:?}");
        let v: Value = serde_json::from_str(&reply.body)?;
        ensure!(v["status"] == want, "control {path}: {}", reply.body);
    }

    let mut relay = net
        .relay(RelayOpts {
            health: true,
            drain_grace: "20s",
            ..Default::default()
        })
        .await?;
    let health = relay.health.context("relay health")?;
    let reply = http(health, "GET", "/healthz", &[], None).await?;
    ensure!(
        reply.status == 200 && reply.body.trim() == "ok",
        "relay /healthz: {reply:?}"
    );
    let (_, reply) = wait_readyz(health, 200, SHORT).await?;
    ensure!(
        reply.is_some_and(|r| r.body.trim() == "ready"),
        "relay /readyz"
    );

    // A tunnel in flight holds the drain open for its grace.
    let (_forward, local) = sat_forward(relay.https()?, net.ca(), "echo").await?;
    let mut tunnel = connect(local).await?;
    round_trip(&mut tunnel, b"before SIGTERM", SHORT).await?;

    let mark = relay.proc.log.mark();
    relay.proc.signal(libc::SIGTERM)?;
    relay
        .proc
        .log
        .wait_for_since(mark, "waiting for connections in flight", SHORT)
        .await?;
    // The probes keep answering through the drain, so that load balancers see it: /readyz
    // 503 "draining", /healthz 200 (the process is fine).
    let during = readyz(health).await?;
    let live = http_try(health, "GET", "localhost", "/healthz", &[], None).await?;
    eprintln!("probes while draining: /readyz {during:?}; /healthz {live:?}");
    ensure!(
        during
            .as_ref()
            .is_some_and(|r| r.status == 503 && r.body.starts_with("draining")),
        "relay /readyz while draining: {during:?}, want 503 \"draining\""
    );
    ensure!(
        live.as_ref().is_some_and(|r| r.status == 200),
        "relay /healthz while draining: {live:?}, want 200"
    );
    // The registry sees the drain in the relay's heartbeats.
    wait_state(&net, &relay.name, "draining", Duration::from_secs(3)).await?;
    // Draining, the tunnel still works, and /readyz still says so a second later.
    round_trip(&mut tunnel, b"while draining", SHORT).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = readyz(health).await?;
    ensure!(
        later.as_ref().is_some_and(|r| r.status == 503),
        "relay /readyz 1 s into the drain: {later:?}"
    );
    round_trip(&mut tunnel, b"still draining", SHORT).await?;
    drop(tunnel);
    let status = relay.proc.wait_exit(SHORT).await?;
    ensure!(
        status.success(),
        "relay exited with {status} after its drain"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. The public relay map and the latency check

/// `curl -i` of `url` with `Host: host`; returns the status, the headers (lower case) and the body.
async fn curl_get(url: &str, host: &str, method: &str) -> Result<(u16, String, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "10", "-X", method, "-H"])
        .arg(format!("Host: {host}"))
        .arg(url);
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "curl {url}: {status}: {err}");
    let (head, body) = out
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {out:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((code, head.to_ascii_lowercase(), body.to_owned()))
}

/// Every relay and the control plane publish the relay map at /api/relays, and relays answer
/// a latency check that any web page may time; a service's own /api/relays is not shadowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_publish_the_relay_map_and_a_latency_check() -> Result<()> {
    let web = serve(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nbackend")
            .await;
    })
    .await?;
    let mut net = Net::start(vec![Service::http("web", web.addr, &["web.localhost"])]).await?;
    let plain = RelayOpts {
        plain_http: true,
        ..Default::default()
    };
    let r1 = net.relay(plain.clone()).await?;
    let r2 = net.relay(plain).await?;
    wait_state(&net, &r2.name, "up", SHORT).await?;

    for relay in [&r1, &r2] {
        let addr = relay.http()?;
        // The map, by the relay's own address; the second relay may need a push to see both up.
        let deadline = Instant::now() + SHORT;
        let map: Value = loop {
            let (code, head, body) = curl_get(
                &format!("http://{addr}/api/relays"),
                &addr.to_string(),
                "GET",
            )
            .await?;
            ensure!(
                code == 200,
                "GET /api/relays via {}: {code}\n{body}",
                relay.name
            );
            ensure!(head.contains("access-control-allow-origin: *"), "{head}");
            let map: Value = serde_json::from_str(&body)?;
            let up = map["relays"]
                .as_array()
                .is_some_and(|rs| rs.len() == 2 && rs.iter().all(|r| r["state"] == "up"));
            if up {
                break map;
            }
            ensure!(
                Instant::now() < deadline,
                "relay map via {}: {map:#}",
                relay.name
            );
            tokio::time::sleep(POLL).await;
        };
        for r in map["relays"].as_array().into_iter().flatten() {
            let url = r["latency_url"].as_str().unwrap_or_default();
            ensure!(
                url.ends_with("/api/latency") && url.contains("127.0.0.1:"),
                "latency_url of {}: {r:#}",
                r["name"]
            );
            ensure!(
                r["region"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("region-")),
                "{r:#}"
            );
        }

        // The latency check: empty, uncached, timeable from any origin, for GET and preflight.
        for method in ["GET", "OPTIONS"] {
            let (code, head, body) = curl_get(
                &format!("http://{addr}/api/latency"),
                &addr.to_string(),
                method,
            )
            .await?;
            ensure!(
                code == 204 && body.is_empty(),
                "{method} /api/latency: {code} {body}"
            );
            for h in [
                "access-control-allow-origin: *",
                "timing-allow-origin: *",
                "cache-control: no-store",
            ] {
                ensure!(head.contains(h), "{method} /api/latency lacks {h}: {head}");
            }
        }

        // A service's host goes to the service, whatever the path.
        let (code, _, body) =
            curl_get(&format!("http://{addr}/api/relays"), "web.localhost", "GET").await?;
        ensure!(
            code == 200 && body == "backend",
            "web.localhost/api/relays: {code} {body}"
        );
    }

    // The control plane publishes the same map, without a token.
    let (code, body) = curl_api(&net, "GET", "/api/relays", None, None).await?;
    ensure!(code == 200, "control GET /api/relays: {code} {body}");
    let map: Value = serde_json::from_str(&body)?;
    let names: Vec<&str> = map["relays"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(
        names == [r1.name.as_str(), r2.name.as_str()],
        "control map: {map:#}"
    );
    Ok(())
}
