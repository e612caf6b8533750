//! Geo DNS over UDP, where nearly all queries arrive: a few threads, each taking a batch of
//! datagrams with one `recvmmsg`, answering them inline and sending the answers back with one
//! `sendmmsg`.
//!
//! Why not hickory-server's UDP loop, as TCP still uses: it makes two system calls and spawns a
//! task for every query, and hands each answer back through a channel. Profiles of it under
//! dnsperf put nearly half the time in the kernel's per-call entry and exit, and it served
//! 0.6-0.7 times the queries per second of gdnsd, which batches as this does. An answer here
//! takes a few microseconds of computation and never waits on IO, so there is nothing for an
//! async runtime to overlap; blocking threads are the simpler and faster shape.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::handler::GeoDns;

/// Datagrams taken or sent per system call. gdnsd uses 16-32; past that, the batch rarely fills.
const BATCH: usize = 32;
/// The largest query read whole. Queries are a name and an OPT record, well under 512 bytes;
/// a longer datagram is cut, fails to parse, and is answered FORMERR.
const MAX_QUERY: usize = 4096;
/// How often a thread waiting for queries looks at the shutdown token.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// The UDP threads of one server. Each sends its outcome on `ended` when it stops.
pub(super) struct UdpThreads {
    ended: mpsc::Receiver<io::Result<()>>,
    running: usize,
}

impl UdpThreads {
    /// Starts `threads` threads answering on `socket` (each reads through its own handle of
    /// the same socket; the kernel hands each datagram to one of them).
    pub(super) fn start(
        socket: UdpSocket,
        dns: &GeoDns,
        threads: usize,
        shutdown: &CancellationToken,
    ) -> io::Result<Self> {
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(SHUTDOWN_POLL))?;
        let (tx, ended) = mpsc::channel(threads);
        for n in 0..threads {
            let spawned = socket.try_clone().and_then(|socket| {
                let (dns, shutdown, tx) = (dns.clone(), shutdown.clone(), tx.clone());
                thread::Builder::new()
                    .name(format!("dns-udp-{n}"))
                    .spawn(move || {
                        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                            answer_until(&socket, &dns, &shutdown)
                        }))
                        .unwrap_or_else(|_| Err(io::Error::other("a UDP thread panicked")));
                        // The receiver is gone only if serve() itself has gone.
                        let _ = tx.blocking_send(outcome);
                    })
            });
            if let Err(error) = spawned {
                // The threads already started must not outlive the error.
                shutdown.cancel();
                return Err(error);
            }
        }
        Ok(Self {
            ended,
            running: threads,
        })
    }

    /// Waits for the next thread to stop, and returns why; `None` once all have.
    pub(super) async fn next_ended(&mut self) -> Option<io::Result<()>> {
        if self.running == 0 {
            return None;
        }
        let outcome = self.ended.recv().await;
        self.running -= 1;
        outcome
    }
}

/// One thread's loop: take a batch, answer it, send the answers, until `shutdown`.
fn answer_until(socket: &UdpSocket, dns: &GeoDns, shutdown: &CancellationToken) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    while !shutdown.is_cancelled() {
        match batch.receive(fd) {
            Ok(()) => {}
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            // Out of kernel memory for a moment: wait, rather than spin on the error.
            Err(error @ (Errno::ENOMEM | Errno::ENOBUFS)) => {
                warn!(%error, "geo DNS cannot receive for now; retrying");
                thread::sleep(SHUTDOWN_POLL);
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        batch.answer(dns);
        batch.send(fd);
    }
    Ok(())
}

/// The buffers of one thread, reused for every batch.
struct Batch {
    /// `BATCH` slots of `MAX_QUERY` bytes.
    queries: Vec<u8>,
    /// Per received datagram: its length and where it came from.
    received: Vec<(usize, SockaddrStorage)>,
    /// Per received datagram: the encoded answer, empty if it gets none.
    answers: Vec<Vec<u8>>,
    /// Separate headers for each direction: `sendmmsg` leaves pointers to its (by then freed)
    /// addresses in the headers it fills, where `recvmmsg` would write the next sources.
    receive_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

impl Batch {
    fn new() -> Self {
        Self {
            queries: vec![0; BATCH * MAX_QUERY],
            received: Vec::with_capacity(BATCH),
            answers: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            receive_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Waits (up to [`SHUTDOWN_POLL`]) for at least one datagram, and takes what else is
    /// queued, up to [`BATCH`].
    fn receive(&mut self, fd: RawFd) -> Result<(), Errno> {
        self.received.clear();
        let mut slots: Vec<[IoSliceMut<'_>; 1]> = self
            .queries
            .chunks_mut(MAX_QUERY)
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        let results = recvmmsg(
            fd,
            &mut self.receive_headers,
            slots.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        for message in results {
            if let Some(from) = message.address {
                self.received.push((message.bytes, from));
            }
        }
        Ok(())
    }

    fn answer(&mut self, dns: &GeoDns) {
        for (slot, &(len, from)) in self.received.iter().enumerate() {
            let answer = &mut self.answers[slot];
            answer.clear();
            let query = &self.queries[slot * MAX_QUERY..][..len];
            if let Some(src) = socket_addr(&from) {
                dns.answer_datagram(query, src, answer);
            }
        }
    }

    /// Sends every non-empty answer. A datagram the kernel refuses (an address it cannot
    /// route to, say) is skipped; the rest still go.
    fn send(&mut self, fd: RawFd) {
        let mut pending: Vec<usize> = (0..self.received.len())
            .filter(|&slot| !self.answers[slot].is_empty())
            .collect();
        while !pending.is_empty() {
            let slices: Vec<[IoSlice<'_>; 1]> = pending
                .iter()
                .map(|&slot| [IoSlice::new(&self.answers[slot])])
                .collect();
            let to: Vec<Option<SockaddrStorage>> = pending
                .iter()
                .map(|&slot| Some(self.received[slot].1))
                .collect();
            let no_control: [ControlMessage<'_>; 0] = [];
            let sent = match sendmmsg(
                fd,
                &mut self.send_headers,
                &slices,
                &to,
                no_control,
                MsgFlags::empty(),
            ) {
                Ok(results) => results.count(),
                Err(Errno::EINTR) => 0,
                Err(error) => {
                    // The first datagram failed; the error is its own, not the others'.
                    debug!(to = ?socket_addr(&self.received[pending[0]].1), %error, "DNS answer not sent");
                    1
                }
            };
            pending.drain(..sent.min(pending.len()));
        }
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(SocketAddr::V4((*v4).into()))
    } else {
        addr.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6((*v6).into()))
    }
}
