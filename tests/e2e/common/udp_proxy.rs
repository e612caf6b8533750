//! A UDP forwarder between QUIC peers on loopback, which a test can cut and restore.
//!
//! Each client address gets its own upstream socket, so the server sees one peer per client, as
//! it would through a NAT. Every datagram, either way, passes [`Link::pass`]: the one place where
//! the project's delay proxy will decide delay, jitter and loss. Today it knows only "cut".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};

/// Largest UDP payload; QUIC datagrams are far smaller.
const MAX_DATAGRAM: usize = 65_535;

/// The state of the path both directions share.
#[derive(Default)]
struct Link {
    cut: AtomicBool,
}

impl Link {
    /// Whether a datagram gets through.
    fn pass(&self) -> bool {
        !self.cut.load(Ordering::Relaxed)
    }
}

pub struct UdpProxy {
    addr: SocketAddr,
    link: Arc<Link>,
    task: JoinHandle<()>,
}

impl UdpProxy {
    /// Listens on 127.0.0.1:0 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let link = Arc::new(Link::default());
        let task = tokio::spawn(forward(front, target, link.clone()));
        Ok(Self { addr, link, task })
    }

    /// Where clients send their datagrams.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram both ways until [`UdpProxy::restore`]: a partition, not a closed
    /// port, so the peers learn of it only through their own timeouts.
    pub fn cut(&self) {
        self.link.cut.store(true, Ordering::Relaxed);
    }

    pub fn restore(&self) {
        self.link.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Client → target. Owns the return tasks, so aborting it ends them too.
async fn forward(front: Arc<UdpSocket>, target: SocketAddr, link: Arc<Link>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut returns = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // Errors on an unconnected UDP socket are transient (e.g. a late ICMP); keep going.
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            continue;
        };
        let upstream = match upstreams.get(&client) {
            Some(up) => up.clone(),
            None => {
                let Ok(up) = connect_upstream(target).await else {
                    continue;
                };
                returns.spawn(back(up.clone(), front.clone(), client, link.clone()));
                upstreams.insert(client, up.clone());
                up
            }
        };
        if link.pass() {
            let _ = upstream.send(&buf[..n]).await;
        }
    }
}

async fn connect_upstream(target: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
    let up = UdpSocket::bind("127.0.0.1:0").await?;
    up.connect(target).await?;
    Ok(Arc::new(up))
}

/// Target → client, for one client.
async fn back(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    link: Arc<Link>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(n) if link.pass() => {
                let _ = front.send_to(&buf[..n], client).await;
            }
            // Dropped by the link, or an ICMP error while the target was down: both pass.
            Ok(_) | Err(_) => {}
        }
    }
}
