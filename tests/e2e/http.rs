//! HTTP through a relay, with real clients: curl (HTTP/1.1 and HTTP/2), a Python WebSocket
//! client, and raw TCP for requests no well-behaved client sends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::Instant;

const BULK: usize = 256 << 20;

// ---------------------------------------------------------------------------------------------
// curl

struct Reply {
    status: u16,
    version: String,
    /// Lower-case names, in order, from the final response head.
    headers: Vec<(String, String)>,
    body: PathBuf,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> Result<String> {
        Ok(String::from_utf8_lossy(&std::fs::read(&self.body)?).into_owned())
    }
}

/// `curl https://HOST:PORT/PATH` with HOST resolved to the relay's address and trusted through
/// the test CA. Body and head go to files in `dir`; `extra` adds curl flags.
async fn curl(
    dir: &Path,
    ca: &Path,
    relay: SocketAddr,
    host: &str,
    path: &str,
    extra: &[&str],
) -> Result<Reply> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let body = dir.join(format!("curl-{n}.body"));
    let head = dir.join(format!("curl-{n}.head"));
    let port = relay.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "150", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:{}", relay.ip()))
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"));
    let (status, out, err) = run(cmd, Duration::from_secs(180)).await?;
    ensure!(
        status.success(),
        "curl {host}{path} {extra:?}: {status}: {err}"
    );
    let (code, version) = out.split_once(' ').context("curl -w output")?;

    let mut headers = Vec::new();
    for line in std::fs::read_to_string(&head)?.lines() {
        if line.starts_with("HTTP/") {
            headers.clear(); // a 100 Continue came first; keep the final head only
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_lowercase(), value.trim().to_owned()));
        }
    }
    Ok(Reply {
        status: code.parse()?,
        version: version.to_owned(),
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Setups

/// The Python HTTP backend (tests/e2e/common/peers.py) behind service `web` at `web.localhost`.
struct Web {
    relay: Relay,
    net: Net,
    _backend: Proc,
}

async fn web() -> Result<Web> {
    let backend = Proc::spawn("http backend", python_peer(["http"]))?;
    let addr = backend.log.wait_listening("http", None, STARTUP).await?;
    let mut net = Net::start(vec![Service::http("web", addr, &["web.localhost"])]).await?;
    let relay = net.relay(RelayOpts::default()).await?;
    Ok(Web {
        relay,
        net,
        _backend: backend,
    })
}

/// A relay with tight limits, in front of a backend that refuses and one that never answers.
struct Errors {
    relay: Relay,
    net: Net,
    _silent: Backend,
}

async fn errors() -> Result<Errors> {
    let silent = silent_backend().await?;
    let mut net = Net::start_with(ControlOpts {
        services: vec![
            Service::http("down", refused_addr()?, &["down.localhost"]),
            Service::http("silent", silent.addr, &["silent.localhost"]),
        ],
        response_timeout: Some("2s"),
        ..Default::default()
    })
    .await?;
    let relay = net
        .relay(RelayOpts {
            plain_http: true,
            header_timeout: Some("1s"),
            max_header_size: Some(8192),
            ..Default::default()
        })
        .await?;
    Ok(Errors {
        relay,
        net,
        _silent: silent,
    })
}

/// Checks an error reply: its status, and a short text/plain body containing one of `cause`.
fn check_error(reply: &Reply, status: u16, cause: &[&str]) -> Result<()> {
    let body = reply.text()?;
    ensure!(
        reply.status == status,
        "expected {status}, got {} with body {body:?}",
        reply.status
    );
    let ctype = reply.header("content-type").unwrap_or_default();
    ensure!(
        ctype.starts_with("text/plain"),
        "{status}: content-type {ctype:?}, not text/plain"
    );
    let lower = body.to_lowercase();
    ensure!(
        cause.iter().any(|c| lower.contains(c)),
        "{status}: body {body:?} does not name the cause (one of {cause:?})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Over HTTP/1.1 and HTTP/2, the backend sees X-Forwarded-*/Forwarded as the relay saw the
/// request, never the client's own values, and the client sees which relay and region served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_come_from_the_relay_over_http1_and_http2() -> Result<()> {
    let w = web().await?;
    let https = w.relay.https()?;
    let spoofed = [
        "-H",
        "X-Forwarded-For: 127.0.0.99",
        "-H",
        "X-Forwarded-Proto: gopher",
        "-H",
        "X-Forwarded-Host: evil.localhost",
        "-H",
        "Forwarded: for=127.0.0.99;proto=gopher;host=evil.localhost",
    ];
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let mut args = vec![flag];
        args.extend(spoofed);
        let reply = curl(
            w.net.dir.path(),
            w.net.ca(),
            https,
            "web.localhost",
            "/headers",
            &args,
        )
        .await?;
        ensure!(reply.status == 200, "{flag}: status {}", reply.status);
        ensure!(
            reply.version == version,
            "{flag}: curl spoke HTTP/{}",
            reply.version
        );
        ensure!(
            reply.header("sat-region") == Some(w.relay.region.as_str()),
            "{flag}: Sat-Region {:?}",
            reply.header("sat-region")
        );
        ensure!(
            reply.header("sat-relay") == Some(w.relay.name.as_str()),
            "{flag}: Sat-Relay {:?}",
            reply.header("sat-relay")
        );

        let seen = reply.text()?;
        let all = |name: &str| -> Vec<&str> {
            seen.lines()
                .filter_map(|l| l.split_once(": "))
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .collect()
        };
        ensure!(
            !seen.contains("127.0.0.99") && !seen.contains("gopher") && !seen.contains("evil"),
            "{flag}: a spoofed value reached the backend:\n{seen}"
        );
        ensure!(
            all("x-forwarded-for") == ["127.0.0.1"],
            "{flag}: X-Forwarded-For {:?}",
            all("x-forwarded-for")
        );
        ensure!(
            all("x-forwarded-proto") == ["https"],
            "{flag}: X-Forwarded-Proto {:?}",
            all("x-forwarded-proto")
        );
        let with_port = format!("web.localhost:{}", https.port());
        let xfh = all("x-forwarded-host");
        ensure!(
            xfh == ["web.localhost"] || xfh == [with_port.as_str()],
            "{flag}: X-Forwarded-Host {xfh:?}"
        );
        let fwd = all("forwarded");
        ensure!(
            fwd.len() == 1 && fwd[0].contains("127.0.0.1") && fwd[0].contains("proto=https"),
            "{flag}: Forwarded {fwd:?}"
        );
    }
    Ok(())
}

/// 256 MiB up and 256 MiB down, streamed: hashes match, and neither relay nor control ever held
/// a whole body in memory.
async fn bulk_both_ways(flag: &str, version: &str) -> Result<()> {
    let w = web().await?;
    let https = w.relay.https()?;
    let dir = w.net.dir.path();

    let upload = dir.join("upload.bin");
    let sent = random_file(&upload, 42, BULK)?;
    let started = Instant::now();
    let upload_arg = upload.display().to_string();
    let reply = curl(
        dir,
        w.net.ca(),
        https,
        "web.localhost",
        "/upload",
        &[flag, "-T", &upload_arg],
    )
    .await?;
    std::fs::remove_file(&upload)?;
    ensure!(
        reply.status == 200 && reply.version == version,
        "upload: {} over HTTP/{}",
        reply.status,
        reply.version
    );
    ensure!(
        reply.text()? == format!("{sent} {BULK}"),
        "upload: backend got {:?}, sent {sent} {BULK}",
        reply.text()?
    );
    eprintln!("{flag}: 256 MiB up in {:?}", started.elapsed());

    let started = Instant::now();
    let reply = curl(
        dir,
        w.net.ca(),
        https,
        "web.localhost",
        &format!("/download/{BULK}"),
        &[flag],
    )
    .await?;
    ensure!(
        reply.status == 200 && reply.version == version,
        "download: {} over HTTP/{}",
        reply.status,
        reply.version
    );
    let expected = reply
        .header("x-sha256")
        .context("download: no X-Sha256 header")?;
    let size = std::fs::metadata(&reply.body)?.len();
    ensure!(
        size == BULK as u64,
        "download: {size} bytes, expected {BULK}"
    );
    ensure!(
        sha256_file(&reply.body)? == expected,
        "download: body differs from what the backend sent"
    );
    std::fs::remove_file(&reply.body)?;
    eprintln!("{flag}: 256 MiB down in {:?}", started.elapsed());

    for proc in [&w.relay.proc, &w.net.control] {
        let peak = peak_rss_mib(proc.pid()?)?;
        ensure!(
            peak < 200,
            "{} peaked at {peak} MiB: a 256 MiB body was buffered, not streamed",
            proc.name
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_streams_256_mib_both_ways() -> Result<()> {
    bulk_both_ways("--http1.1", "1.1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_256_mib_both_ways() -> Result<()> {
    bulk_both_ways("--http2", "2").await
}

/// A real WebSocket client and server, text and binary frames, through the relay's HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_relay() -> Result<()> {
    let backend = Proc::spawn("ws backend", python_peer(["ws-echo"]))?;
    let addr = backend.log.wait_listening("ws", None, STARTUP).await?;
    let mut net = Net::start(vec![Service::http("ws", addr, &["ws.localhost"])]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let port = relay.https()?.port().to_string();
    let ca = net.ca().display().to_string();
    let client = python_peer(["ws-client", &port, "ws.localhost", &ca]);
    let (status, out, err) = run(client, Duration::from_secs(60)).await?;
    ensure!(
        status.success() && out.starts_with("ok"),
        "websocket client: {status}\n{out}\n{err}"
    );
    Ok(())
}

/// `localhost` is on the relay's certificate but routed to no service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404() -> Result<()> {
    let e = errors().await?;
    let reply = curl(
        e.net.dir.path(),
        e.net.ca(),
        e.relay.https()?,
        "localhost",
        "/",
        &[],
    )
    .await?;
    check_error(&reply, 404, &["localhost", "unknown", "no service"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refused_is_502() -> Result<()> {
    let e = errors().await?;
    let reply = curl(
        e.net.dir.path(),
        e.net.ca(),
        e.relay.https()?,
        "down.localhost",
        "/",
        &[],
    )
    .await?;
    check_error(&reply, 502, &["refused"])
}

/// A backend that accepts and never answers: 504 once `response_timeout` (2 s) has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_backend_is_504_after_the_response_timeout() -> Result<()> {
    let e = errors().await?;
    let started = Instant::now();
    let reply = curl(
        e.net.dir.path(),
        e.net.ca(),
        e.relay.https()?,
        "silent.localhost",
        "/",
        &[],
    )
    .await?;
    let took = started.elapsed();
    check_error(&reply, 504, &["time", "answer", "respond"])?;
    ensure!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "504 came after {took:?}; response_timeout is 2 s"
    );
    Ok(())
}

/// The control plane dies: once the relay has noticed, it answers 503 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_uplink_is_503() -> Result<()> {
    let mut e = errors().await?;
    let mark = e.relay.proc.log.mark();
    e.net.control.kill().await?;
    e.relay
        .proc
        .log
        .wait_for_since(mark, "uplink 0 lost", Duration::from_secs(20))
        .await?;
    let reply = curl(
        e.net.dir.path(),
        e.net.ca(),
        e.relay.https()?,
        "down.localhost",
        "/",
        &[],
    )
    .await?;
    check_error(&reply, 503, &["uplink", "control"])
}

/// Sends `request` on the relay's plain HTTP port; returns the status line of the answer.
async fn raw_request(relay: &Relay, request: &[u8]) -> Result<String> {
    let mut stream = connect(relay.http()?).await?;
    // The relay may answer and close before it has read everything: a failed write is not the
    // test's verdict, the answer is.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SHORT, async {
        let mut buf = [0u8; 4096];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_is_400() -> Result<()> {
    let e = errors().await?;
    let status = raw_request(
        &e.relay,
        b"GET / HTTP/1.1\r\nHost: down.localhost\r\nthis is no header\r\n\r\n",
    )
    .await?;
    ensure!(
        status.starts_with("HTTP/1.1 400"),
        "malformed request answered {status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_431() -> Result<()> {
    let e = errors().await?;
    // max_header_size is 8192; this head is 20 KiB.
    let big = "a".repeat(20 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: down.localhost\r\nX-Big: {big}\r\n\r\n");
    let status = raw_request(&e.relay, request.as_bytes()).await?;
    ensure!(
        status.starts_with("HTTP/1.1 431"),
        "oversized head answered {status:?}"
    );
    Ok(())
}

/// A client that trickles its request head, one byte every 200 ms, is cut off once
/// `header_timeout` (1 s) has passed, however busy it keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_after_the_header_timeout() -> Result<()> {
    let e = errors().await?;
    let mut stream = connect(e.relay.http()?).await?;
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: down.localhost\r\n")
        .await?;
    let trickle = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut buf = [0u8; 1024];
    let mut next = 0;
    let closed_after = loop {
        if started.elapsed() > Duration::from_secs(6) {
            bail!("a request head still unfinished after 6 s was not cut off (header_timeout 1 s)");
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(_) => {} // a 408 before the close is fine
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(&trickle[next % trickle.len()..][..1]).await.is_err() {
                    break started.elapsed();
                }
                next += 1;
            }
        }
    };
    ensure!(
        closed_after < Duration::from_secs(4),
        "slow request head cut off after {closed_after:?}; header_timeout is 1 s"
    );
    Ok(())
}
