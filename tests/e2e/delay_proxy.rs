//! The delay proxy itself: delay, jitter, loss and partitions measured through it, for UDP and
//! TCP, against echo servers on the test's own runtime. Figures allow for tokio's 1 ms timer
//! (deadlines round up) and for a loaded 2-core machine, but fail if the property is missing.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::delay::{DelayProxy, Jitter, Props, Proto, DEFAULT_SEED, UDP_QUEUE};
use crate::common::{echo_backend, random_bytes, sha256_hex, sha_backend};
use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// The proxy stands for a "region" on its own loopback address.
const REGION: &str = "127.0.0.5:0";
/// Every test finishes well within this, or fails.
const TEST_LIMIT: Duration = Duration::from_secs(9);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn bounded(test: impl Future<Output = Result<()>>) -> Result<()> {
    timeout(TEST_LIMIT, test)
        .await
        .context("the test ran out of time")?
}

/// Polls `cond` until it holds: for counters, which have no readiness signal.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            bail!("not within {limit:?}: {what}");
        }
        tokio::time::sleep(ms(2)).await;
    }
    Ok(())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn region() -> SocketAddr {
    REGION.parse().expect("a socket address")
}

// ---------------------------------------------------------------------------------------------
// UDP peers

/// A datagram as the echo server saw it.
struct Arrival {
    from: SocketAddr,
    data: Vec<u8>,
    at: Instant,
}

/// Echoes every datagram at once, and reports each one, so that a test can time both
/// directions separately (everything runs in one process, on one clock).
struct UdpEcho {
    addr: SocketAddr,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    task: JoinHandle<()>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpEcho {
    async fn start() -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let (tx, arrivals) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let at = Instant::now();
                let _ = socket.send_to(&buf[..n], from).await;
                let _ = tx.send(Arrival {
                    from,
                    data: buf[..n].to_vec(),
                    at,
                });
            }
        });
        Ok(Self {
            addr,
            arrivals,
            task,
        })
    }

    /// When the datagram `seq` arrived, skipping earlier ones.
    async fn arrival_of(&mut self, seq: u32) -> Result<Instant> {
        loop {
            let a = timeout(ms(1000), self.arrivals.recv())
                .await
                .context("no arrival reported")?
                .context("echo server gone")?;
            if a.data.get(..4) == Some(&seq.to_be_bytes()[..]) {
                return Ok(a.at);
            }
        }
    }
}

/// A client socket on `ip`, connected to the proxy.
async fn udp_client(ip: &str, proxy: &DelayProxy) -> Result<UdpSocket> {
    let socket = UdpSocket::bind((ip, 0)).await?;
    socket.connect(proxy.addr()).await?;
    Ok(socket)
}

/// Sends `seq` and waits up to `wait` for its echo; returns when it was sent and when the echo
/// came back, or `None` if it did not.
async fn ping(socket: &UdpSocket, seq: u32, wait: Duration) -> Result<Option<(Instant, Instant)>> {
    let sent = Instant::now();
    socket.send(&seq.to_be_bytes()).await?;
    let deadline = sent + wait;
    let mut buf = [0u8; 64];
    loop {
        let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await else {
            return Ok(None);
        };
        // A late echo of an earlier ping is not this one's.
        if buf[..received?] == seq.to_be_bytes() {
            return Ok(Some((sent, Instant::now())));
        }
    }
}

/// One-way times of `count` pings, one after the other: (client → echo, echo → client).
async fn one_way_times(
    socket: &UdpSocket,
    echo: &mut UdpEcho,
    first_seq: u32,
    count: u32,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for seq in first_seq..first_seq + count {
        let (sent, back) = ping(socket, seq, ms(1000))
            .await?
            .with_context(|| format!("ping {seq} lost"))?;
        let at = echo.arrival_of(seq).await?;
        up.push(at - sent);
        down.push(back - at);
    }
    Ok((up, down))
}

// ---------------------------------------------------------------------------------------------
// UDP

#[tokio::test]
async fn udp_round_trip_is_twice_the_one_way_delay() -> Result<()> {
    bounded(async {
        let echo = UdpEcho::start().await?;
        let proxy = DelayProxy::udp(region(), echo.addr, Props::delay(ms(20))).await?;
        let client = udp_client("127.0.0.1", &proxy).await?;

        let mut rtts = Vec::new();
        for seq in 0..20 {
            let (sent, back) = ping(&client, seq, ms(1000)).await?.context("ping lost")?;
            rtts.push(back - sent);
        }
        let (min, med) = (*rtts.iter().min().context("no pings")?, median(rtts));
        eprintln!("20 ms each way: median RTT {med:?}, min {min:?}");
        ensure!(min >= ms(40), "an RTT of {min:?} is shorter than the delay");
        ensure!(med <= ms(60), "median RTT {med:?} for 2 × 20 ms");
        let stats = proxy.stats();
        ensure!(
            stats.up.forwarded == 20 && stats.down.forwarded == 20,
            "{stats:?}"
        );
        ensure!(
            stats.up.forwarded_bytes == 80 && stats.up.dropped == 0,
            "{stats:?}"
        );

        // A change applies to the packets after it.
        proxy.link().set_delay(Duration::ZERO);
        let mut rtts = Vec::new();
        for seq in 100..105 {
            let (sent, back) = ping(&client, seq, ms(1000)).await?.context("ping lost")?;
            rtts.push(back - sent);
        }
        let after = median(rtts);
        eprintln!("no delay: median RTT {after:?}");
        ensure!(
            after < ms(10),
            "median RTT {after:?} after removing the delay"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn udp_delays_each_direction_on_its_own() -> Result<()> {
    bounded(async {
        let mut echo = UdpEcho::start().await?;
        let props = Props {
            up: ms(30),
            down: ms(5),
            ..Props::default()
        };
        let proxy = DelayProxy::udp(region(), echo.addr, props).await?;
        let client = udp_client("127.0.0.1", &proxy).await?;
        let (up, down) = one_way_times(&client, &mut echo, 0, 10).await?;
        let (up, down) = (median(up), median(down));
        eprintln!("30 ms up, 5 ms down: medians {up:?} up, {down:?} down");
        ensure!((ms(30)..ms(40)).contains(&up), "up {up:?}");
        ensure!((ms(5)..ms(15)).contains(&down), "down {down:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn udp_keeps_flows_apart_and_datagrams_whole() -> Result<()> {
    bounded(async {
        let mut echo = UdpEcho::start().await?;
        let proxy = DelayProxy::udp(region(), echo.addr, Props::delay(ms(2))).await?;
        // Two clients from two other "regions".
        let clients = [
            udp_client("127.0.0.6", &proxy).await?,
            udp_client("127.0.0.7", &proxy).await?,
        ];
        // From empty to the largest UDP payload over IPv4.
        let sizes = [0, 1, 1200, 9000, 65_507];
        for (i, client) in clients.iter().enumerate() {
            for (j, &size) in sizes.iter().enumerate() {
                let data = random_bytes((i * 10 + j) as u64, size);
                client.send(&data).await?;
                let mut buf = vec![0u8; 65_535];
                let n = timeout(ms(1000), client.recv(&mut buf))
                    .await
                    .context("no echo")??;
                ensure!(
                    buf[..n] == data[..],
                    "client {i}: {size} bytes came back as {n}"
                );
            }
        }
        let mut peers = BTreeSet::new();
        while let Ok(a) = echo.arrivals.try_recv() {
            peers.insert(a.from);
        }
        ensure!(peers.len() == 2, "the echo server saw {peers:?}");
        for peer in &peers {
            ensure!(
                peer.ip() == proxy.addr().ip(),
                "{peer} is not from the proxy's region"
            );
        }
        let stats = proxy.stats();
        ensure!(
            stats.up.forwarded == 10 && stats.down.forwarded == 10,
            "{stats:?}"
        );
        Ok(())
    })
    .await
}

/// Times in milliseconds, sorted, for percentiles: a loaded machine adds the odd late packet,
/// which is the scheduler's doing and not the link's, so upper bounds look at the 90th.
struct Sample(Vec<f64>);

impl Sample {
    fn new(times: &[Duration]) -> Self {
        let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Self(ms)
    }

    fn at(&self, p: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * p).round() as usize]
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [min, p10, p25, p50, p75, p90, max] =
            [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0].map(|p| self.at(p));
        write!(
            f,
            "min {min:.2}, p10 {p10:.2}, p25 {p25:.2}, median {p50:.2}, p75 {p75:.2}, \
             p90 {p90:.2}, max {max:.2} ms"
        )
    }
}

#[tokio::test]
async fn udp_jitter_stays_within_its_bounds() -> Result<()> {
    bounded(async {
        let mut echo = UdpEcho::start().await?;
        let props = Props::delay(ms(10)).with_jitter(Jitter::Uniform(ms(5)));
        let proxy = DelayProxy::udp(region(), echo.addr, props).await?;
        let client = udp_client("127.0.0.1", &proxy).await?;

        // Uniform, 10 ± 5 ms. Nothing may come early; the timer adds up to 1.5 ms.
        let (up, down) = one_way_times(&client, &mut echo, 0, 40).await?;
        for (dir, times) in [("up", up), ("down", down)] {
            let s = Sample::new(&times);
            eprintln!("10 ± 5 ms uniform, {dir}: {s}");
            ensure!(s.at(0.0) >= 5.0 && s.at(0.9) <= 17.0, "{dir}: {s}");
            // About 8 ms for uniform draws; without jitter, well under 1.
            ensure!(
                s.at(0.9) - s.at(0.1) >= 5.0,
                "{dir}: too little jitter: {s}"
            );
        }

        // Normal, σ = 2 ms, cut at ±3σ, so never under 4 ms. Its interquartile range is 2.7 ms.
        proxy.link().set_jitter(Jitter::Normal(ms(2)));
        let (up, down) = one_way_times(&client, &mut echo, 100, 40).await?;
        let s = Sample::new(&[up, down].concat());
        let iqr = s.at(0.75) - s.at(0.25);
        eprintln!("10 ms, normal σ 2 ms, both ways: {s}, IQR {iqr:.2} ms");
        ensure!(s.at(0.0) >= 4.0 && s.at(0.9) <= 16.0, "{s}");
        ensure!((9.5..12.5).contains(&s.at(0.5)), "{s}");
        ensure!((1.8..4.0).contains(&iqr), "IQR {iqr:.2} ms: {s}");
        Ok(())
    })
    .await
}

/// Sends `count` datagrams through a proxy with `loss` (no delay); returns the sequence
/// numbers that reached the echo server, and the proxy.
async fn lossy_run(seed: u64, loss: f64, count: u32) -> Result<(BTreeSet<u32>, DelayProxy)> {
    let mut echo = UdpEcho::start().await?;
    let props = Props::default().with_loss(loss);
    let proxy = DelayProxy::start(Proto::Udp, region(), echo.addr, props, seed).await?;
    let client = udp_client("127.0.0.1", &proxy).await?;
    for seq in 0..count {
        client.send(&seq.to_be_bytes()).await?;
        // Never more than a few datagrams in a socket buffer, so that the kernel drops none:
        // every loss here is the proxy's.
        if seq % 32 == 31 || seq + 1 == count {
            let sent = u64::from(seq + 1);
            eventually("the proxy read the batch", ms(2000), || {
                let up = proxy.stats().up;
                up.forwarded + up.dropped == sent
            })
            .await?;
        }
    }
    let link = proxy.link().clone();
    eventually("every echo went through the proxy", ms(2000), || {
        let s = link.stats();
        s.down.forwarded + s.down.dropped == s.up.forwarded
    })
    .await?;
    let mut arrived = BTreeSet::new();
    while let Ok(a) = echo.arrivals.try_recv() {
        arrived.insert(u32::from_be_bytes(a.data[..4].try_into()?));
    }
    Ok((arrived, proxy))
}

#[tokio::test]
async fn udp_loss_drops_about_its_share_reproducibly() -> Result<()> {
    bounded(async {
        let (arrived, proxy) = lossy_run(DEFAULT_SEED, 0.3, 1000).await?;
        let stats = proxy.stats();
        let up_loss = stats.up.dropped as f64 / 1000.0;
        let down_loss = stats.down.dropped as f64 / stats.up.forwarded as f64;
        eprintln!("loss 0.3: {up_loss:.3} up, {down_loss:.3} down; {stats:?}");
        ensure!(
            arrived.len() as u64 == stats.up.forwarded,
            "{} arrived",
            arrived.len()
        );
        ensure!(
            stats.up.overflow == 0 && stats.down.overflow == 0,
            "{stats:?}"
        );
        // 1000 draws: σ ≈ 1.5 points.
        ensure!((0.25..0.35).contains(&up_loss), "up loss {up_loss:.3}");
        ensure!(
            (0.25..0.35).contains(&down_loss),
            "down loss {down_loss:.3}"
        );

        // Seeded: the same seed drops the same datagrams; another seed others.
        let (again, _) = lossy_run(DEFAULT_SEED, 0.3, 1000).await?;
        ensure!(again == arrived, "the same seed dropped other datagrams");
        let (other, _) = lossy_run(DEFAULT_SEED + 1, 0.3, 1000).await?;
        ensure!(other != arrived, "another seed dropped the same datagrams");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn udp_partition_drops_everything_and_heals() -> Result<()> {
    bounded(async {
        let echo = UdpEcho::start().await?;
        let proxy = DelayProxy::udp(region(), echo.addr, Props::delay(ms(5))).await?;
        let client = udp_client("127.0.0.1", &proxy).await?;
        ping(&client, 0, ms(1000)).await?.context("ping before")?;

        proxy.link().partition();
        for seq in 1..=5 {
            ensure!(
                ping(&client, seq, ms(150)).await?.is_none(),
                "ping {seq} crossed"
            );
        }
        let stats = proxy.stats();
        ensure!(
            stats.up.dropped == 5 && stats.up.forwarded == 1,
            "{stats:?}"
        );

        proxy.link().heal();
        let (sent, back) = ping(&client, 6, ms(1000)).await?.context("ping after")?;
        eprintln!(
            "partition: 5 of 5 dropped; first RTT after healing {:?}",
            back - sent
        );
        ensure!(back - sent < ms(50), "RTT {:?} after healing", back - sent);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn udp_queue_is_bounded_and_overflow_counted() -> Result<()> {
    bounded(async {
        let echo = UdpEcho::start().await?;
        let proxy = DelayProxy::udp(region(), echo.addr, Props::delay(ms(1000))).await?;
        let client = udp_client("127.0.0.1", &proxy).await?;
        let sent = UDP_QUEUE as u64 + 1000;
        for seq in 0..sent {
            client.send(&seq.to_be_bytes()).await?;
            // Let the proxy read, so the kernel drops none (see lossy_run).
            if seq % 32 == 31 {
                tokio::task::yield_now().await;
            }
        }
        let link = proxy.link().clone();
        eventually("the proxy read everything", ms(3000), || {
            let up = link.stats().up;
            up.forwarded + up.dropped == sent
        })
        .await?;
        let up = proxy.stats().up;
        eprintln!("{sent} datagrams into a 1 s link: {up:?}");
        ensure!(up.overflow > 0 && up.dropped == up.overflow, "{up:?}");
        ensure!(up.overflow <= sent - UDP_QUEUE as u64, "{up:?}");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// TCP

async fn tcp_client(proxy: &DelayProxy) -> Result<TcpStream> {
    let stream = TcpStream::connect(proxy.addr()).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One 8-byte round trip through an echo; its time.
async fn tcp_ping(stream: &mut TcpStream, seq: u64, wait: Duration) -> Result<Duration> {
    let sent = Instant::now();
    stream.write_all(&seq.to_be_bytes()).await?;
    let mut buf = [0u8; 8];
    timeout(wait, stream.read_exact(&mut buf))
        .await
        .context("no echo in time")??;
    ensure!(u64::from_be_bytes(buf) == seq, "echo out of order");
    Ok(sent.elapsed())
}

#[tokio::test]
async fn tcp_ping_pong_takes_twice_the_one_way_delay() -> Result<()> {
    bounded(async {
        let echo = echo_backend().await?;
        let proxy = DelayProxy::tcp(region(), echo.addr, Props::delay(ms(10))).await?;
        let mut stream = tcp_client(&proxy).await?;
        let mut rtts = Vec::new();
        for seq in 0..20 {
            rtts.push(tcp_ping(&mut stream, seq, ms(1000)).await?);
        }
        let (min, med) = (*rtts.iter().min().context("no pings")?, median(rtts));
        eprintln!("TCP, 10 ms each way: median ping-pong {med:?}, min {min:?}");
        ensure!(
            min >= ms(20) && med <= ms(35),
            "min {min:?}, median {med:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn tcp_keeps_8_mib_intact_over_a_jittery_link() -> Result<()> {
    bounded(async {
        const LEN: usize = 8 << 20;
        let echo = echo_backend().await?;
        // Jitter as well, so that delivery order is at stake.
        let props = Props::delay(ms(5)).with_jitter(Jitter::Uniform(ms(2)));
        let proxy = DelayProxy::tcp(region(), echo.addr, props).await?;
        let data = random_bytes(8, LEN);
        let (mut r, mut w) = tcp_client(&proxy).await?.into_split();
        let started = Instant::now();
        let send = async {
            w.write_all(&data).await?;
            w.shutdown().await
        };
        let mut back = Vec::with_capacity(LEN);
        let (sent, read) = tokio::join!(send, r.read_to_end(&mut back));
        sent?;
        read?;
        eprintln!(
            "8 MiB echoed through a 5 ± 2 ms link in {:?}",
            started.elapsed()
        );
        ensure!(back.len() == LEN, "{} bytes came back", back.len());
        ensure!(sha256_hex(&back) == sha256_hex(&data), "the bytes changed");
        let stats = proxy.stats();
        ensure!(stats.up.forwarded_bytes == LEN as u64, "{stats:?}");
        ensure!(stats.down.forwarded_bytes == LEN as u64, "{stats:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn tcp_half_close_passes_after_the_data() -> Result<()> {
    bounded(async {
        // It answers only after reading EOF.
        let sha = sha_backend().await?;
        let proxy = DelayProxy::tcp(region(), sha.addr, Props::delay(ms(20))).await?;
        let data = random_bytes(1, 1 << 20);
        let mut stream = tcp_client(&proxy).await?;
        let started = Instant::now();
        stream.write_all(&data).await?;
        stream.shutdown().await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let took = started.elapsed();
        eprintln!("half-close through 20 ms each way: answer after {took:?}");
        ensure!(answer == sha256_hex(&data), "answer {answer:?}");
        // The FIN went up and the answer (with its FIN) came down: both delays.
        ensure!(took >= ms(40), "answered after {took:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn tcp_partition_stalls_and_heals() -> Result<()> {
    bounded(async {
        let echo = echo_backend().await?;
        let proxy = DelayProxy::tcp(region(), echo.addr, Props::delay(ms(5))).await?;
        let mut open = tcp_client(&proxy).await?;
        tcp_ping(&mut open, 0, ms(1000)).await?;

        proxy.link().partition();
        // Both an open connection and a new one stall: bytes wait, nothing fails.
        let mut new = tcp_client(&proxy).await?;
        open.write_all(&1u64.to_be_bytes()).await?;
        new.write_all(&2u64.to_be_bytes()).await?;
        let mut buf = [0u8; 8];
        ensure!(
            timeout(ms(300), open.read(&mut buf)).await.is_err(),
            "a byte crossed the partition"
        );
        ensure!(
            timeout(ms(100), new.read(&mut buf)).await.is_err(),
            "a byte crossed"
        );

        let healed = Instant::now();
        proxy.link().heal();
        for (stream, seq) in [(&mut open, 1u64), (&mut new, 2)] {
            timeout(ms(1000), stream.read_exact(&mut buf))
                .await
                .context("nothing after healing")??;
            ensure!(u64::from_be_bytes(buf) == seq, "wrong bytes after healing");
        }
        eprintln!(
            "TCP stall: held bytes arrived {:?} after healing",
            healed.elapsed()
        );
        tcp_ping(&mut open, 3, ms(1000)).await?;
        let stats = proxy.stats();
        ensure!(
            stats.up.dropped == 0 && stats.down.dropped == 0,
            "{stats:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn tcp_partition_with_reset_resets_and_heals() -> Result<()> {
    bounded(async {
        let echo = echo_backend().await?;
        let proxy = DelayProxy::tcp(region(), echo.addr, Props::delay(ms(5))).await?;
        let mut open = tcp_client(&proxy).await?;
        tcp_ping(&mut open, 0, ms(1000)).await?;

        proxy.link().partition_reset();
        let mut buf = [0u8; 8];
        let read = timeout(ms(1000), open.read(&mut buf))
            .await
            .context("no reset")?;
        ensure!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "open connection: {read:?}"
        );
        // The kernel completes the handshake before the proxy accepts; then comes the reset.
        let mut new = tcp_client(&proxy).await?;
        let read = timeout(ms(1000), new.read(&mut buf))
            .await
            .context("no reset")?;
        ensure!(matches!(read, Err(_) | Ok(0)), "new connection: {read:?}");

        proxy.link().heal();
        let mut after = tcp_client(&proxy).await?;
        tcp_ping(&mut after, 1, ms(1000)).await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Both

#[tokio::test]
async fn dropping_the_proxy_ends_everything() -> Result<()> {
    bounded(async {
        let echo = echo_backend().await?;
        let proxy = DelayProxy::tcp(region(), echo.addr, Props::delay(ms(1))).await?;
        let addr = proxy.addr();
        let mut open = tcp_client(&proxy).await?;
        tcp_ping(&mut open, 0, ms(1000)).await?;

        let udp_echo = UdpEcho::start().await?;
        let udp = DelayProxy::udp(region(), udp_echo.addr, Props::delay(ms(1))).await?;
        let client = udp_client("127.0.0.1", &udp).await?;
        ping(&client, 0, ms(1000)).await?.context("UDP ping")?;

        drop(proxy);
        drop(udp);
        let mut buf = [0u8; 8];
        let read = timeout(ms(1000), open.read(&mut buf))
            .await
            .context("still open")?;
        ensure!(matches!(read, Ok(0) | Err(_)), "open connection: {read:?}");
        ensure!(TcpStream::connect(addr).await.is_err(), "still accepting");
        ensure!(
            ping(&client, 1, ms(200))
                .await
                .map_or(true, |p| p.is_none()),
            "UDP still up"
        );
        Ok(())
    })
    .await
}
