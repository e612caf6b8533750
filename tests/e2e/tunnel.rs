//! TCP tunnels end to end: `sat connect` (QUIC, and the TLS-over-TCP fallback), `sat forward`,
//! and a relay's own TCP port, each through a real control plane to a real backend.

use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

const MIB: usize = 1 << 20;

/// 64 MiB out and back through `sat connect` over QUIC, hashed at both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_through_sat_connect() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;
    let https = relay.https()?;
    // `sat connect --relay HOST:PORT` reaches QUIC and the TLS fallback with one port number.
    ensure!(
        relay.quic.map(|q| q.port()) == Some(https.port()),
        "QUIC {:?} and HTTPS {https} differ in port",
        relay.quic
    );

    let mut tunnel = sat_connect("echo", https, net.ca())?;
    let data = random_bytes(1, 64 * MIB);
    let (stdin, stdout) = (tunnel.stdin()?, tunnel.stdout()?);
    let back = tokio::time::timeout(Duration::from_secs(180), exchange(stdin, stdout, &data))
        .await
        .context("64 MiB echo did not finish within 180 s")??;

    ensure!(
        back.len() == data.len(),
        "sent {} bytes, got {} back",
        data.len(),
        back.len()
    );
    ensure!(
        sha256_hex(&back) == sha256_hex(&data),
        "echoed bytes differ from what was sent"
    );
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(
        status.success(),
        "sat connect exited with {status} after a clean close"
    );
    Ok(())
}

/// The client writes, then closes stdin; the backend answers only after that EOF, and the
/// answer still arrives: FIN crosses the tunnel without closing the way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_the_backend_and_the_answer_comes_back() -> Result<()> {
    let sha = sha_backend().await?;
    let mut net = Net::start(vec![Service::tcp("sha", sha.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let mut tunnel = sat_connect("sha", relay.https()?, net.ca())?;
    let data = random_bytes(2, MIB);
    let (stdin, stdout) = (tunnel.stdin()?, tunnel.stdout()?);
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange(stdin, stdout, &data))
        .await
        .context("no answer within 30 s after closing stdin")??;

    ensure!(
        String::from_utf8_lossy(&answer) == sha256_hex(&data),
        "backend answered {:?}, expected the sha256 of the 1 MiB sent",
        String::from_utf8_lossy(&answer)
    );
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(status.success(), "sat connect exited with {status}");
    Ok(())
}

/// A service that writes and closes ends `sat connect`'s stdout, and the process, while the
/// user keeps stdin open: as ssh does with its ProxyCommand, waiting for stdout's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_closing_ends_stdout_while_stdin_stays_open() -> Result<()> {
    let bye = serve(|mut stream| async move {
        let _ = stream.write_all(b"bye\n").await;
        // Dropped: the whole connection closes.
    })
    .await?;
    let mut net = Net::start(vec![Service::tcp("bye", bye.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let mut tunnel = sat_connect("bye", relay.https()?, net.ca())?;
    // Held open, never written: the user is still there.
    let _stdin = tunnel.stdin()?;
    let mut stdout = tunnel.stdout()?;
    let mut got = Vec::new();
    tokio::time::timeout(SHORT, stdout.read_to_end(&mut got))
        .await
        .context("stdout did not end after the service closed, with stdin still open")??;
    ensure!(got == b"bye\n", "got {:?}", String::from_utf8_lossy(&got));
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(status.success(), "sat connect exited with {status}");
    Ok(())
}

/// A service that half-closes (its answer, then FIN) and keeps reading: stdout ends at once,
/// what the user types after that still reaches the service, and once stdin has been quiet for
/// a moment the tunnel ends (the service sees our FIN) and `sat connect` exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_service_half_closes_stdin_still_reaches_it_until_quiet() -> Result<()> {
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let half = serve(move |stream| {
        let heard_tx = heard_tx.clone();
        async move {
            let (mut r, mut w) = stream.into_split();
            let _ = w.write_all(b"answer\n").await;
            let _ = w.shutdown().await;
            let mut got = Vec::new();
            let _ = r.read_to_end(&mut got).await;
            // Sent at our FIN, with everything that came before it.
            let _ = heard_tx.send(got);
        }
    })
    .await?;
    let mut net = Net::start(vec![Service::tcp("half", half.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let mut tunnel = sat_connect("half", relay.https()?, net.ca())?;
    let mut stdin = tunnel.stdin()?;
    let mut stdout = tunnel.stdout()?;
    let mut got = Vec::new();
    tokio::time::timeout(SHORT, stdout.read_to_end(&mut got))
        .await
        .context("stdout did not end after the service half-closed")??;
    ensure!(
        got == b"answer\n",
        "got {:?}",
        String::from_utf8_lossy(&got)
    );

    stdin.write_all(b"late\n").await?;
    stdin.flush().await?;
    let heard = tokio::time::timeout(SHORT, heard.recv())
        .await
        .context("the service saw no end of input: stdin, open and quiet, kept the tunnel")?
        .context("backend gone")?;
    ensure!(
        heard == b"late\n",
        "the service heard {:?}, not what was typed after its half-close",
        String::from_utf8_lossy(&heard)
    );
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(status.success(), "sat connect exited with {status}");
    drop(stdin);
    Ok(())
}

/// A backend that aborts its connection (RST) makes the relay abort the user's connection too,
/// rather than close it cleanly as if the data were complete: through a relay TCP port and
/// through `sat forward`. The backend resets as soon as the user's first bytes arrive, and those
/// go out before the control plane's answer, so the reset often overtakes the answer; ten
/// connections each way take both orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_reaches_the_client_as_a_reset() -> Result<()> {
    let rst = reset_backend().await?;
    let mut net = Net::start(vec![Service::tcp("rst", rst.addr)]).await?;
    let relay = net
        .relay(RelayOpts {
            tcp: vec!["rst".into()],
            ..Default::default()
        })
        .await?;
    let (_forward, local) = sat_forward(relay.https()?, net.ca(), "rst").await?;
    for (way, addr) in [
        ("relay tcp port", relay.tcp_port("rst")?),
        ("sat forward", local),
    ] {
        for i in 0..10 {
            let stream = connect(addr).await?;
            ends_in_a_reset(stream)
                .await
                .with_context(|| format!("connection {i} through the {way}"))?;
        }
    }
    Ok(())
}

async fn ends_in_a_reset(mut stream: TcpStream) -> Result<()> {
    stream.write_all(b"hello").await?;
    let mut buf = [0u8; 1024];
    let outcome = tokio::time::timeout(SHORT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .context("the client's connection stayed open after the backend reset")?;
    match outcome {
        Ok(()) => anyhow::bail!("the client saw a clean EOF; the backend's reset was lost"),
        Err(e) => ensure!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "expected a connection reset, got {e}"
        ),
    }
    Ok(())
}

/// 500 tunnels open at once through a relay TCP port, each echoing its own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_tunnels_keep_their_bytes_apart() -> Result<()> {
    const TUNNELS: u64 = 500;
    const SIZE: usize = 64 * 1024;
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net
        .relay(RelayOpts {
            tcp: vec!["echo".into()],
            ..Default::default()
        })
        .await?;
    let port = relay.tcp_port("echo")?;

    let deadline = Instant::now() + Duration::from_secs(120);
    // Connect every tunnel before any sends: all 500 are open at the same time.
    let mut connecting = JoinSet::new();
    for i in 0..TUNNELS {
        connecting.spawn(async move { (i, connect(port).await) });
    }
    let mut streams = Vec::new();
    while let Some(joined) = tokio::time::timeout_at(deadline, connecting.join_next())
        .await
        .context("connecting 500 tunnels took over 120 s")?
    {
        let (i, stream) = joined?;
        streams.push((i, stream.with_context(|| format!("tunnel {i}: connect"))?));
    }

    let mut running = JoinSet::new();
    for (i, stream) in streams {
        running.spawn(async move {
            let data = random_bytes(1000 + i, SIZE);
            let (r, w) = stream.into_split();
            let back = exchange(w, r, &data)
                .await
                .with_context(|| format!("tunnel {i}"))?;
            ensure!(
                back == data,
                "tunnel {i}: got {} bytes back, not its own {SIZE}",
                back.len()
            );
            anyhow::Ok(())
        });
    }
    let mut done = 0;
    while let Some(joined) = tokio::time::timeout_at(deadline, running.join_next())
        .await
        .with_context(|| format!("only {done} of {TUNNELS} tunnels finished within 120 s"))?
    {
        joined??;
        done += 1;
    }
    ensure!(done == TUNNELS, "{done} of {TUNNELS} tunnels finished");
    Ok(())
}

/// An unknown service is refused, and `sat connect` says why on stderr and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_refused_with_a_message() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    // stdin stays open: the rejection alone must end the process.
    let mut tunnel = sat_connect("nosuch", relay.https()?, net.ca())?;
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(
        !status.success(),
        "sat connect to an unknown service exited 0"
    );
    let said = tunnel.log.lines().join("\n");
    ensure!(
        said.contains("nosuch") && said.contains("unknown service"),
        "stderr should name the service and say \"unknown service\"; it said:\n{said}"
    );

    // A client already sending when the refusal comes (as ssh sends its banner): the relay
    // stops our stream as it refuses, and the write that fails must not hide the reason.
    for round in 0..10 {
        let mut tunnel = sat_connect("nosuch", relay.https()?, net.ca())?;
        let mut stdin = tunnel.stdin()?;
        let _ = stdin.write_all(&[b'x'; 64 * 1024]).await;
        let status = tunnel.wait_exit(SHORT).await?;
        let said = tunnel.log.lines().join("\n");
        ensure!(
            !status.success() && said.contains("unknown service"),
            "round {round}: {status}; stderr:\n{said}"
        );
    }
    Ok(())
}

/// A service whose backend refuses connections: the tunnel is refused, and the message says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_refused_with_a_message() -> Result<()> {
    let mut net = Net::start(vec![Service::tcp("down", refused_addr()?)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let mut tunnel = sat_connect("down", relay.https()?, net.ca())?;
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(!status.success(), "sat connect to a dead backend exited 0");
    let said = tunnel.log.lines().join("\n");
    ensure!(
        said.to_lowercase().contains("refused"),
        "stderr should say the backend refused; it said:\n{said}"
    );
    Ok(())
}

/// With QUIC off at the relay, `sat connect` falls back to TLS over TCP on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_fallback_works_when_the_relay_has_no_quic() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net
        .relay(RelayOpts {
            quic: false,
            ..Default::default()
        })
        .await?;
    ensure!(
        !relay.proc.log.contains("listening on quic"),
        "relay with quic = false still announced a QUIC socket"
    );

    let started = Instant::now();
    let mut tunnel = sat_connect("echo", relay.https()?, net.ca())?;
    let data = random_bytes(3, 4 * MIB);
    let (stdin, stdout) = (tunnel.stdin()?, tunnel.stdout()?);
    let back = tokio::time::timeout(Duration::from_secs(30), exchange(stdin, stdout, &data))
        .await
        .context("no echo over the TLS fallback within 30 s")??;
    ensure!(
        back == data,
        "echo over the TLS fallback differs ({} bytes back)",
        back.len()
    );
    eprintln!("fallback tunnel: 4 MiB echoed in {:?}", started.elapsed());
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(status.success(), "sat connect exited with {status}");
    Ok(())
}

/// `sat forward` announces its local port and carries connections to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sat_forward_carries_local_connections() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let (_forward, local) = sat_forward(relay.https()?, net.ca(), "echo").await?;

    for i in 0..3u64 {
        let stream = connect(local).await?;
        let data = random_bytes(10 + i, 256 * 1024);
        let (r, w) = stream.into_split();
        let back = tokio::time::timeout(SHORT, exchange(w, r, &data))
            .await
            .with_context(|| {
                format!("connection {i} via sat forward: no echo within {SHORT:?}")
            })??;
        ensure!(back == data, "connection {i} via sat forward: echo differs");
    }
    Ok(())
}
