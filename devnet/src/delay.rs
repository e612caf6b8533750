//! The links between "regions" on one machine, which has no `tc netem`: a delay proxy. `sat up`
//! puts one in front of each relay's ports and on each relay's uplink to give its regions their
//! distances; the end-to-end tests use it for delay, loss and partitions too.
//!
//! A [`DelayProxy`] listens on an address the caller picks (say `127.0.0.5:0` for one region)
//! and forwards UDP datagrams (for QUIC) or TCP connections to a target, adding one-way delay,
//! jitter, loss and partitions. Its [`Link`] handle changes them while traffic flows; a change
//! applies to packets the proxy reads after it. [`Stats`] count what passed and what was dropped,
//! each way. Dropping the proxy ends its listener and every flow and connection.
//!
//! What it models, and what it does not:
//! - Delay runs from the moment the proxy reads a packet. Tokio's timer has 1 ms resolution and
//!   rounds up: each way takes about 1.3 ms more than asked (20 ms measured as 21.3).
//! - Nothing is ever reordered: a packet leaves no earlier than the one before it in the same
//!   direction. Jitter therefore behaves like queueing delay, the main source of jitter on real
//!   paths: within a burst, each packet waits as long as the slowest one before it. Real paths
//!   reorder rarely; QUIC would tolerate it, but no test here needs it.
//! - There is no bandwidth limit, and queues are bounded: UDP drops (and counts) datagrams over
//!   [`UDP_QUEUE`] per flow and direction; TCP stops reading, so TCP's own flow control slows the
//!   sender.
//! - TCP cannot lose bytes, so `loss` applies to UDP only. A TCP partition holds bytes until it
//!   heals (as retransmissions would) or resets every connection; see [`Partition`]. A reset
//!   from a peer, or a failed connect to the target, resets the other side at once, undelayed.
//! - The proxy's upstream sockets bind to the IP it listens on, so the target sees clients as
//!   coming from that "region".

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Datagrams queued per UDP flow and direction (plus the one on the timer); more are dropped.
/// Enough for about 1 Gbit/s of full-size QUIC packets over 40 ms.
pub const UDP_QUEUE: usize = 4096;
/// Chunks queued per TCP direction before the proxy stops reading (up to 16 MiB).
const TCP_QUEUE: usize = 256;
const TCP_CHUNK: usize = 64 << 10;
const MAX_DATAGRAM: usize = 65_535;
/// The seed of [`DelayProxy::udp`] and [`DelayProxy::tcp`]: fixed, so that a test sees the same
/// losses and jitter on every run.
pub const DEFAULT_SEED: u64 = 0x5a7e_111e;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Jitter {
    None,
    /// Uniform within ± this.
    Uniform(Duration),
    /// Normal with this standard deviation, cut at ±3σ so that a test can bound it.
    Normal(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// The link works.
    Off,
    /// Nothing crosses, and nobody is told. UDP: every datagram is dropped. TCP: bytes read from
    /// then on are held and sent, with their delay, when the link heals (as TCP would retransmit
    /// them); a new connection is accepted but reaches the target only then.
    Stall,
    /// UDP: as `Stall`. TCP: every open connection is reset both ways, and new ones are reset
    /// when accepted, as when the far side is known to be gone. (The kernel completes the
    /// handshake before the proxy accepts, so a client sees its connect succeed and then a reset,
    /// not "connection refused".)
    Reset,
}

/// The properties of a link. `up` is client → target, `down` target → client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Props {
    pub up: Duration,
    pub down: Duration,
    /// Added to each packet's delay, either way; the total never goes below zero.
    pub jitter: Jitter,
    /// Probability that a UDP datagram is dropped, each way, independently. Ignored for TCP.
    pub loss: f64,
    pub partition: Partition,
}

impl Default for Props {
    fn default() -> Self {
        Self {
            up: Duration::ZERO,
            down: Duration::ZERO,
            jitter: Jitter::None,
            loss: 0.0,
            partition: Partition::Off,
        }
    }
}

impl Props {
    /// The same delay both ways, and nothing else.
    pub fn delay(one_way: Duration) -> Self {
        Self {
            up: one_way,
            down: one_way,
            ..Self::default()
        }
    }

    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    pub fn with_loss(self, loss: f64) -> Self {
        Self { loss, ..self }
    }
}

/// Counts for one direction. For TCP a "packet" is one chunk the proxy read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    /// Every drop: loss, partition, and overflow.
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// The drops that found the queue full.
    pub overflow: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub up: DirStats,
    pub down: DirStats,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped: AtomicU64,
    dropped_bytes: AtomicU64,
    overflow: AtomicU64,
}

impl Counters {
    fn forwarded(&self, len: usize) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.forwarded_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    fn dropped(&self, len: usize) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn overflowed(&self, len: usize) {
        self.dropped(len);
        self.overflow.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DirStats {
        DirStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            forwarded_bytes: self.forwarded_bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
            overflow: self.overflow.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    /// A watch rather than atomics: TCP connections must wake up when a partition starts or ends.
    props: watch::Sender<Props>,
    up: Counters,
    down: Counters,
}

impl Shared {
    fn props(&self) -> Props {
        *self.props.borrow()
    }

    async fn wait_partition(&self, want: impl Fn(Partition) -> bool) {
        // Cannot fail: `self` holds the sender.
        let _ = self.props.subscribe().wait_for(|p| want(p.partition)).await;
    }
}

/// A cheap handle on a running proxy's link: clone it into tasks freely.
#[derive(Clone)]
pub struct Link(Arc<Shared>);

impl Link {
    pub fn props(&self) -> Props {
        self.0.props()
    }

    pub fn set(&self, props: Props) {
        self.0.props.send_replace(props);
    }

    pub fn update(&self, change: impl FnOnce(&mut Props)) {
        self.0.props.send_modify(change);
    }

    /// The same one-way delay both ways.
    pub fn set_delay(&self, one_way: Duration) {
        self.set_delays(one_way, one_way);
    }

    pub fn set_delays(&self, up: Duration, down: Duration) {
        self.update(|p| {
            p.up = up;
            p.down = down;
        });
    }

    pub fn set_jitter(&self, jitter: Jitter) {
        self.update(|p| p.jitter = jitter);
    }

    pub fn set_loss(&self, loss: f64) {
        self.update(|p| p.loss = loss);
    }

    /// [`Partition::Stall`]: a silent partition.
    pub fn partition(&self) {
        self.update(|p| p.partition = Partition::Stall);
    }

    /// [`Partition::Reset`]: TCP connections are reset.
    pub fn partition_reset(&self) {
        self.update(|p| p.partition = Partition::Reset);
    }

    pub fn heal(&self) {
        self.update(|p| p.partition = Partition::Off);
    }

    pub fn stats(&self) -> Stats {
        Stats {
            up: self.0.up.snapshot(),
            down: self.0.down.snapshot(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

pub struct DelayProxy {
    addr: SocketAddr,
    link: Link,
    task: JoinHandle<()>,
}

impl DelayProxy {
    pub async fn udp(listen: SocketAddr, target: SocketAddr, props: Props) -> io::Result<Self> {
        Self::start(Proto::Udp, listen, target, props, DEFAULT_SEED).await
    }

    pub async fn tcp(listen: SocketAddr, target: SocketAddr, props: Props) -> io::Result<Self> {
        Self::start(Proto::Tcp, listen, target, props, DEFAULT_SEED).await
    }

    /// Listens on `listen` (port 0 picks one; see [`DelayProxy::addr`]) and forwards to
    /// `target`, on the current tokio runtime.
    pub async fn start(
        proto: Proto,
        listen: SocketAddr,
        target: SocketAddr,
        props: Props,
        seed: u64,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            props: watch::Sender::new(props),
            up: Counters::default(),
            down: Counters::default(),
        });
        let (addr, task) = match proto {
            Proto::Udp => {
                let front = UdpSocket::bind(listen).await?;
                let addr = front.local_addr()?;
                let task = udp_accept(Arc::new(front), target, shared.clone(), seed);
                (addr, tokio::spawn(task))
            }
            Proto::Tcp => {
                let listener = TcpListener::bind(listen).await?;
                let addr = listener.local_addr()?;
                let task = tcp_accept(listener, target, shared.clone(), seed);
                (addr, tokio::spawn(task))
            }
        };
        Ok(Self {
            addr,
            link: Link(shared),
            task,
        })
    }

    /// Where clients connect or send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn stats(&self) -> Stats {
        self.link.stats()
    }
}

impl Drop for DelayProxy {
    /// Every flow and connection lives in a JoinSet owned by this task, so they end with it
    /// (once the runtime gets to run the abort, which is not before `drop` returns).
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Delay and loss

#[derive(Clone, Copy)]
enum Dir {
    Up = 0,
    Down = 1,
}

/// One direction of one flow or connection: decides each packet's fate and delivery time.
struct Line {
    shared: Arc<Shared>,
    dir: Dir,
    rng: StdRng,
    /// When the previous packet leaves: no packet leaves before it (no reordering).
    last: Instant,
}

impl Line {
    /// Line `n` of a proxy (in the order flows and connections arrived) gets its own random
    /// numbers from the proxy's seed, so the same traffic meets the same losses and jitter.
    fn new(shared: Arc<Shared>, dir: Dir, seed: u64, n: u64) -> Self {
        let stream = (2 * n + dir as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Self {
            shared,
            dir,
            rng: StdRng::seed_from_u64(seed ^ stream),
            last: Instant::now(),
        }
    }

    fn counters(&self) -> &Counters {
        match self.dir {
            Dir::Up => &self.shared.up,
            Dir::Down => &self.shared.down,
        }
    }

    /// For a datagram read now: `None` if the link drops it (counted), else when it leaves.
    fn admit(&mut self, len: usize) -> Option<Instant> {
        let props = self.shared.props();
        let loss = props.loss.clamp(0.0, 1.0);
        // `loss > 0.0` is false for NaN too, which `gen_bool` would not accept.
        let lost = loss > 0.0 && self.rng.gen_bool(loss);
        if props.partition != Partition::Off || lost {
            self.counters().dropped(len);
            return None;
        }
        Some(self.deadline(&props))
    }

    /// When a packet read now leaves.
    fn deadline(&mut self, props: &Props) -> Instant {
        let base = match self.dir {
            Dir::Up => props.up,
            Dir::Down => props.down,
        };
        let offset = match props.jitter {
            Jitter::None => 0.0,
            Jitter::Uniform(j) => j.as_secs_f64() * self.rng.gen_range(-1.0..=1.0),
            Jitter::Normal(sd) => {
                sd.as_secs_f64() * standard_normal(&mut self.rng).clamp(-3.0, 3.0)
            }
        };
        let delay = Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0));
        self.last = self.last.max(Instant::now() + delay);
        self.last
    }
}

/// Box–Muller: rand 0.8 has no normal distribution without `rand_distr`.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.gen::<f64>(); // in (0, 1], so ln() is finite
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Waits until `at`. A busy link has many packets already due; they need no timer.
async fn until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

/// A packet on its way, and when it leaves.
type Delayed = (Instant, Vec<u8>);

// ---------------------------------------------------------------------------------------------
// UDP

/// A UDP flow that has heard nothing from its client for this long is dropped, with its
/// upstream socket: longer than any QUIC idle timeout here (60 s), as a NAT would keep it.
pub const UDP_FLOW_IDLE: Duration = Duration::from_secs(120);

/// One client address's flow, as the front task sees it.
struct Flow {
    up: Line,
    queue: mpsc::Sender<Delayed>,
    last_heard: Instant,
    task: tokio::task::AbortHandle,
}

/// Reads datagrams from clients. Each client address gets its own upstream socket, so the
/// target sees one peer per client (as through a NAT) and QUIC's connection holds.
async fn udp_accept(front: Arc<UdpSocket>, target: SocketAddr, shared: Arc<Shared>, seed: u64) {
    let local_ip = front
        .local_addr()
        .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    // Owned here, so aborting this task ends every flow.
    let mut tasks = JoinSet::new();
    let mut flow_no = 0;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(UDP_FLOW_IDLE / 4);
    loop {
        let received = tokio::select! {
            r = front.recv_from(&mut buf) => r,
            _ = sweep.tick() => {
                flows.retain(|_, f| {
                    let live = f.last_heard.elapsed() < UDP_FLOW_IDLE;
                    if !live {
                        f.task.abort();
                    }
                    live
                });
                continue;
            }
        };
        // Errors on an unconnected UDP socket are transient; keep going.
        let Ok((n, client)) = received else {
            continue;
        };
        let flow = match flows.entry(client) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let Ok(upstream) = udp_upstream(local_ip, target).await else {
                    continue;
                };
                let (queue, queued) = mpsc::channel(UDP_QUEUE);
                let down = Line::new(shared.clone(), Dir::Down, seed, flow_no);
                let task = tasks.spawn(udp_flow(upstream, front.clone(), client, queued, down));
                let up = Line::new(shared.clone(), Dir::Up, seed, flow_no);
                flow_no += 1;
                e.insert(Flow {
                    up,
                    queue,
                    last_heard: Instant::now(),
                    task,
                })
            }
        };
        flow.last_heard = Instant::now();
        // Finished flows leave the set, so that a long-lived proxy does not pile them up.
        while tasks.try_join_next().is_some() {}
        if let Some(at) = flow.up.admit(n) {
            if flow.queue.try_send((at, buf[..n].to_vec())).is_err() {
                shared.up.overflowed(n);
            }
        }
    }
}

async fn udp_upstream(local_ip: IpAddr, target: SocketAddr) -> io::Result<UdpSocket> {
    let upstream = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
    upstream.connect(target).await?;
    Ok(upstream)
}

/// One client's flow: sends its queued datagrams upstream when due, and delays what comes back.
async fn udp_flow(
    upstream: UdpSocket,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    mut up_queue: mpsc::Receiver<Delayed>,
    mut down: Line,
) {
    let shared = down.shared.clone();
    let (down_tx, mut down_queue) = mpsc::channel::<Delayed>(UDP_QUEUE);
    let send_up = async {
        while let Some((at, data)) = up_queue.recv().await {
            until(at).await;
            if upstream.send(&data).await.is_ok() {
                shared.up.forwarded(data.len());
            }
        }
    };
    let receive_down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            // An error is an ICMP report (say, the target is not listening yet), not a datagram.
            let Ok(n) = upstream.recv(&mut buf).await else {
                continue;
            };
            if let Some(at) = down.admit(n) {
                if down_tx.try_send((at, buf[..n].to_vec())).is_err() {
                    shared.down.overflowed(n);
                }
            }
        }
    };
    let send_down = async {
        while let Some((at, data)) = down_queue.recv().await {
            until(at).await;
            if front.send_to(&data, client).await.is_ok() {
                shared.down.forwarded(data.len());
            }
        }
    };
    tokio::join!(send_up, receive_down, send_down);
}

// ---------------------------------------------------------------------------------------------
// TCP

async fn tcp_accept(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>, seed: u64) {
    let local_ip = listener
        .local_addr()
        .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    // Owned here, so aborting this task ends every connection.
    let mut conns = JoinSet::new();
    let mut conn_no = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if shared.props().partition == Partition::Reset {
                    reset(client);
                    continue;
                }
                let up = Line::new(shared.clone(), Dir::Up, seed, conn_no);
                let down = Line::new(shared.clone(), Dir::Down, seed, conn_no);
                conn_no += 1;
                conns.spawn(tcp_conn(client, local_ip, target, up, down));
            }
            // Reap finished connections, so the set does not grow with every one a test makes.
            Some(_) = conns.join_next() => {}
        }
    }
}

/// Closes with RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

/// One connection: one task owns both sockets, so a reset or the proxy's drop ends it whole.
async fn tcp_conn(
    mut client: TcpStream,
    local_ip: IpAddr,
    target: SocketAddr,
    up: Line,
    down: Line,
) {
    let shared = up.shared.clone();
    let reset_now = || shared.wait_partition(|p| p == Partition::Reset);
    // During a stall the connection to the target waits too, like a SYN retransmitted until
    // the path heals.
    let connect = async {
        shared.wait_partition(|p| p == Partition::Off).await;
        tcp_upstream(local_ip, target).await
    };
    let mut server = tokio::select! {
        connected = connect => match connected {
            Ok(server) => server,
            Err(_) => return reset(client),
        },
        _ = reset_now() => return reset(client),
    };
    // The proxy writes each chunk when it is due; Nagle would hold small ones back further.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let result = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            done = async {
                tokio::try_join!(
                    pump(client_read, server_write, up),
                    pump(server_read, client_write, down),
                )
            } => done.map(drop),
            _ = reset_now() => Err(io::ErrorKind::ConnectionReset.into()),
        }
    };
    if result.is_err() {
        reset(client);
        reset(server);
    }
    // Otherwise both FINs went through, and dropping the sockets closes them normally.
}

async fn tcp_upstream(local_ip: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local_ip, 0))?;
    socket.connect(target).await
}

/// One direction of a connection: a reader stamps chunks with their time, a writer delivers
/// them in order. A zero-length chunk is the end of the stream (as for `read`): the FIN passes
/// after the data, with its own delay. When the queue between them is full the reader waits,
/// and TCP's flow control slows the sender down: nothing is dropped.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut line: Line,
) -> io::Result<()> {
    let shared = line.shared.clone();
    let dir = line.dir;
    let (tx, mut queue) = mpsc::channel::<Delayed>(TCP_QUEUE);
    let stamp = async move {
        let mut buf = vec![0u8; TCP_CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            // Bytes read during a stall wait for the link to heal, as TCP would retransmit
            // them; their delay starts then.
            line.shared.wait_partition(|p| p == Partition::Off).await;
            let at = line.deadline(&line.shared.props());
            // A closed queue means the writer failed, and try_join! has the error already.
            if tx.send((at, buf[..n].to_vec())).await.is_err() || n == 0 {
                return Ok(());
            }
        }
    };
    let deliver = async {
        let counters = match dir {
            Dir::Up => &shared.up,
            Dir::Down => &shared.down,
        };
        while let Some((at, data)) = queue.recv().await {
            until(at).await;
            if data.is_empty() {
                return to.shutdown().await;
            }
            to.write_all(&data).await?;
            counters.forwarded(data.len());
        }
        Ok(())
    };
    tokio::try_join!(stamp, deliver)?;
    Ok(())
}
