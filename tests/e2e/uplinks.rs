//! Several uplinks per relay: losing one costs only the streams it carried.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::delay::{DelayProxy, Props};
use crate::common::udp_proxy::UdpProxy;
use crate::common::*;
use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

const TUNNELS: usize = 10;
/// Per tunnel: 6 MiB at 1.5 MiB/s, so traffic is still flowing well after the cut.
const BULK: usize = 6 << 20;
const CHUNK: usize = 64 << 10;
const CHUNK_EVERY: Duration = Duration::from_millis(42);
/// Echoed bytes every tunnel must have seen before the cut: the cut lands mid-traffic.
const BEFORE_CUT: usize = 1 << 20;

/// Sends `BULK` paced bytes and half-closes, while hashing what comes back; Ok when the echo
/// was complete and identical.
async fn paced_echo(stream: TcpStream, seed: u64, echoed: Arc<AtomicUsize>) -> Result<()> {
    let data = random_bytes(seed, BULK);
    let (mut r, mut w) = stream.into_split();
    let send = async {
        let mut tick = tokio::time::interval(CHUNK_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for chunk in data.chunks(CHUNK) {
            tick.tick().await;
            w.write_all(chunk).await?;
        }
        w.shutdown().await?;
        anyhow::Ok(())
    };
    let receive = async {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n;
            echoed.store(total, Ordering::Relaxed);
        }
        anyhow::Ok((total, hex(&hasher.finalize())))
    };
    let (sent, received) = tokio::join!(send, receive);
    let (total, hash) = received.context("receiving")?;
    sent.context("sending")?;
    ensure!(total == BULK, "echoed {total} of {BULK} bytes");
    ensure!(hash == sha256_hex(&data), "echoed bytes differ");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_uplink_spares_the_streams_on_the_other() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let proxy = UdpProxy::start(net.control_addr).await?;
    let relay = net
        .relay(RelayOpts {
            uplinks: 2,
            // Uplinks spread over the control list in order: uplink 1 goes through the proxy.
            control: vec![net.control_addr, proxy.addr()],
            tcp: vec!["echo".into()],
            ..Default::default()
        })
        .await?;
    let log = &relay.proc.log;
    log.wait_for("uplink 0 connected", STARTUP).await?;
    let line = log.wait_for("uplink 1 connected", STARTUP).await?;
    ensure!(
        line.contains(&proxy.addr().to_string()),
        "uplink 1 does not go through the proxy: {line}"
    );
    let port = relay.tcp_port("echo")?;

    // Open the tunnels one after another, each proven by a round trip before the next, so that
    // round-robin puts the even ones on one uplink and the odd ones on the other.
    let mut streams = Vec::new();
    for i in 0..TUNNELS {
        let mut stream = connect(port).await?;
        round_trip(&mut stream, format!("tunnel {i}").as_bytes(), SHORT)
            .await
            .with_context(|| format!("tunnel {i}"))?;
        streams.push(stream);
    }
    let progress: Vec<Arc<AtomicUsize>> = (0..TUNNELS).map(|_| Arc::default()).collect();
    let mut running = JoinSet::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let echoed = progress[i].clone();
        running.spawn(async move { (i, paced_echo(stream, i as u64, echoed).await) });
    }

    // Cut once every tunnel has had 1 MiB echoed: mid-traffic on both uplinks.
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress
        .iter()
        .any(|p| p.load(Ordering::Relaxed) < BEFORE_CUT)
    {
        ensure!(
            Instant::now() < deadline,
            "tunnels did not reach 1 MiB each within 30 s; echoed bytes: {:?}",
            progress
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mark = log.mark();
    proxy.cut();
    let cut_at = Instant::now();

    // New tunnels opened right after the cut must not be stuck on the dead uplink for long.
    // Two, one after the other: plain round-robin would give one of them to uplink 1. They run
    // beside the checks below, and their verdict comes after those.
    let after_cut = tokio::spawn(async move {
        for i in 0..2 {
            let opened = Instant::now();
            let mut fresh = connect(port).await?;
            round_trip(&mut fresh, b"opened after the cut", Duration::from_secs(3))
                .await
                .with_context(|| format!("tunnel {i} opened just after the cut"))?;
            eprintln!("tunnel {i} after the cut echoed in {:?}", opened.elapsed());
        }
        anyhow::Ok(())
    });

    log.wait_for_since(mark, "uplink 1 lost", Duration::from_secs(20))
        .await?;
    eprintln!("uplink 1 lost seen {:?} after the cut", cut_at.elapsed());

    let mut ok = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) =
        tokio::time::timeout_at(cut_at + Duration::from_secs(60), running.join_next())
            .await
            .context("tunnels on the lost uplink were still open 60 s after the cut")?
    {
        let (i, result) = joined?;
        match result {
            Ok(()) => ok.push(i),
            Err(e) => failed.push((i, format!("{e:#}"))),
        }
    }
    ok.sort();
    eprintln!("complete: {ok:?}; failed: {failed:?}");
    ensure!(
        ok.len() == TUNNELS / 2 && ok.iter().all(|i| i % 2 == ok[0] % 2),
        "expected the 5 tunnels of the surviving uplink (all even or all odd) to complete; \
         complete: {ok:?}, failed: {failed:?}"
    );

    after_cut.await??;

    // Restore the path: uplink 1 comes back, and new tunnels use both uplinks again.
    let mark = log.mark();
    proxy.restore();
    log.wait_for_since(mark, "uplink 1 connected", Duration::from_secs(30))
        .await?;
    for i in 0..4 {
        let mut stream = connect(port).await?;
        round_trip(&mut stream, b"after restore", SHORT)
            .await
            .with_context(|| format!("tunnel {i} after uplink 1 reconnected"))?;
    }
    Ok(())
}

/// A relay whose uplink 0 goes straight to the control plane and uplink 1 through `far`: 300 ms
/// up and 500 ms down. Cut just after a stream went out on it, uplink 1 still carries the stream
/// to the control plane (and so to the service), and the replies already on their way down still
/// reach the relay; the answer never does.
struct FarUplink {
    relay: Relay,
    far: DelayProxy,
    _net: Net,
}

async fn far_uplink(service: Service, opts: RelayOpts) -> Result<FarUplink> {
    let mut net = Net::start(vec![service]).await?;
    let far = Props {
        up: Duration::from_millis(300),
        down: Duration::from_millis(500),
        ..Props::default()
    };
    let far = DelayProxy::udp("127.0.0.1:0".parse()?, net.control_addr, far).await?;
    let relay = net
        .relay(RelayOpts {
            uplinks: 2,
            control: vec![net.control_addr, far.addr()],
            ..opts
        })
        .await?;
    relay
        .proc
        .log
        .wait_for("uplink 0 connected", STARTUP)
        .await?;
    relay
        .proc
        .log
        .wait_for("uplink 1 connected", STARTUP)
        .await?;
    Ok(FarUplink {
        relay,
        far,
        _net: net,
    })
}

/// New streams take the uplinks in turn: runs `probe` until one answers quickly (through uplink
/// 0), so that the next stream goes through uplink 1.
async fn until_uplink_1_is_next<F, Fut>(probe: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for _ in 0..4 {
        let started = Instant::now();
        probe().await?;
        if started.elapsed() < Duration::from_millis(300) {
            return Ok(());
        }
    }
    anyhow::bail!("no probe answered quickly, as through the direct uplink")
}

/// A stream whose uplink dies after the control plane may have passed its bytes on is not sent
/// again on the other uplink: the service sees its bytes once, and the relay says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_lost_uplink_may_have_delivered_is_not_sent_again() -> Result<()> {
    let (backend, firsts) = recording_echo().await?;
    let opts = RelayOpts {
        tcp: vec!["echo".into()],
        ..Default::default()
    };
    let f = far_uplink(Service::tcp("echo", backend.addr), opts).await?;
    let port = f.relay.tcp_port("echo")?;
    until_uplink_1_is_next(|| async {
        let mut probe = connect(port).await?;
        round_trip(&mut probe, b"probe", Duration::from_secs(5)).await
    })
    .await?;

    let mut tunnel = connect(port).await?;
    tunnel.write_all(b"once\n").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.far.link().partition();

    ends_unechoed(&mut tunnel)
        .await
        .context("the tunnel on the lost uplink")?;
    f.relay
        .proc
        .log
        .wait_for("were not sent again", SHORT)
        .await?;
    let onces = seen(&firsts, b"once\n");
    ensure!(
        onces == 1,
        "the service saw the tunnel's bytes {onces} times"
    );
    // The other uplink carries new tunnels as before.
    let mut fresh = connect(port).await?;
    round_trip(&mut fresh, b"after", SHORT).await
}

/// The same for HTTP: a bodiless POST is not sent again (502, saying why), while a GET, which
/// may safely run twice, is sent again on the other uplink and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_sent_again_after_their_uplink_dies() -> Result<()> {
    let (backend, firsts) = http_recorder().await?;
    let opts = RelayOpts {
        plain_http: true,
        ..Default::default()
    };
    let service = Service::http("web", backend.addr, &["web.localhost"]);
    let f = far_uplink(service, opts).await?;
    let http = f.relay.http()?;
    let probe = || async {
        let answer = http_request(http, "GET", "/probe").await?;
        ensure!(answer.starts_with("HTTP/1.1 200"), "probe: {answer}");
        Ok(())
    };

    until_uplink_1_is_next(probe).await?;
    let answer = send_then_cut(&f, "POST", "/order").await?;
    ensure!(
        answer.starts_with("HTTP/1.1 502") && answer.contains("not sent again"),
        "the POST on the lost uplink: {answer}"
    );
    // It reaches the service after the cut, 300 ms after it left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = seen(&firsts, b"POST /order");
    ensure!(posts == 1, "the service saw the POST {posts} times");

    // Uplink 1 is silent now, so new streams all take uplink 0; heal it, and wait until a
    // request takes it again.
    f.far.link().heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ensure!(Instant::now() < deadline, "uplink 1 did not come back");
        let started = Instant::now();
        probe().await?;
        if started.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    until_uplink_1_is_next(probe).await?;
    let answer = send_then_cut(&f, "GET", "/page").await?;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "the GET on the lost uplink: {answer}"
    );
    Ok(())
}

/// Sends a request (the next stream, so uplink 1's) and cuts uplink 1 20 ms later; the answer.
async fn send_then_cut(f: &FarUplink, method: &'static str, path: &'static str) -> Result<String> {
    let request = tokio::spawn(http_request(f.relay.http()?, method, path));
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.far.link().partition();
    request.await?
}

/// Answers every request `200 ok` and closes, keeping the start of each request.
async fn http_recorder() -> Result<(Backend, Firsts)> {
    let firsts = Firsts::default();
    let recorded = firsts.clone();
    let backend = serve(move |mut stream| {
        let recorded = recorded.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            let start = buf[..n].iter().position(|&b| b == b' ').unwrap_or(0);
            let path_end = buf[start + 1..n].iter().position(|&b| b == b' ');
            let line_end = path_end.map_or(n, |e| start + 1 + e);
            recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buf[..line_end].to_vec());
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
            let _ = stream.write_all(answer).await;
        }
    })
    .await?;
    Ok((backend, firsts))
}

/// One bodiless request to `web.localhost` on the relay's plain HTTP port; the whole answer.
async fn http_request(
    relay: SocketAddr,
    method: &'static str,
    path: &'static str,
) -> Result<String> {
    let mut stream = connect(relay).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: web.localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer))
        .await
        .context("no whole answer within 15 s")??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
