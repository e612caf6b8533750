//! The uplinks as stream handlers see them: which one to use for a new stream, whether it is
//! still alive, and opening a stream that survives an uplink dying before it was answered.
//!
//! An uplink counts as alive while datagrams keep arriving on it: QUIC keep-alives every
//! 300 ms are acknowledged, and heartbeats are echoed every second, so a silent uplink is
//! noticed within [`STALE_AFTER`], long before QUIC's 5 s idle timeout gives up on it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use quinn::{Connection, RecvStream, SendStream};
use sat_proto::stream::{RejectCode, StreamHeader};
use sat_transport::ahead::SentAhead;
use sat_transport::io::Rejected;
use sat_transport::metrics::{QuicCounters, QuicTally};
use sat_transport::splice::{self, SpliceError};
use tokio::io::AsyncRead;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// An uplink silent for this long gets no new streams, and streams waiting on it for an answer
/// move to another uplink.
const STALE_AFTER: Duration = Duration::from_millis(1000);
/// How often a stream waiting for its answer checks that its uplink is still alive.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// How long a stream handler waits for stream credit on a busy uplink.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Connection>>,
    /// Milliseconds since `Uplinks::epoch` when this uplink last received anything.
    heard_ms: AtomicU64,
    /// Datagrams received on the connection when last looked at.
    rx_datagrams: AtomicU64,
    /// The control plane asked for no new streams on this uplink.
    draining: AtomicBool,
    /// What of the connection's QUIC figures `/metrics` has counted.
    tally: QuicTally,
}

pub struct Uplinks {
    slots: Vec<Slot>,
    next: AtomicUsize,
    epoch: Instant,
    /// Streams sent again after their uplink went silent, and those that could not be.
    resent: IntCounter,
    not_resent: IntCounter,
}

/// Why no stream could be had.
#[derive(Debug)]
pub enum OpenError {
    /// The control plane refused the stream.
    Rejected(Rejected),
    /// No uplink is alive, or every one failed.
    NoUplink,
    /// Reading the user failed before the answer: the user gave the stream up.
    UserGone(std::io::Error),
    /// The uplink failed after the control plane may have passed the user's bytes on.
    MaybeDelivered,
    /// The control plane reset the stream before its answer could be read (the service aborted
    /// the connection at once): the user's side is to be reset too.
    Reset,
}

/// A stream the control plane accepted; `leftover` arrived behind its answer.
pub struct Answered {
    pub send: SendStream,
    pub recv: RecvStream,
    pub leftover: Bytes,
    /// The user's bytes that went out before the answer (the first ones, and those passed on
    /// while waiting).
    pub ahead: u64,
}

impl Uplinks {
    /// `count` uplink slots; re-sends are counted in `resent` and `not_resent`.
    pub fn new(count: usize, resent: IntCounter, not_resent: IntCounter) -> Self {
        Self {
            slots: (0..count).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            resent,
            not_resent,
        }
    }

    /// Each uplink's round trip, `None` for one that is down or silent.
    pub fn rtts(&self) -> Vec<Option<Duration>> {
        (0..self.slots.len())
            .map(|i| {
                let conn = self.slots[i].conn.lock().ok().and_then(|c| c.clone())?;
                self.alive(i, &conn).then(|| conn.rtt())
            })
            .collect()
    }

    /// Counts every uplink's QUIC figures since the last call into `quic`.
    pub fn fold_quic(&self, quic: &QuicCounters) {
        for slot in &self.slots {
            if let Some(conn) = slot.conn.lock().ok().and_then(|c| c.clone()) {
                slot.tally.fold(&conn, quic);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Notes that uplink `i` heard from the control plane just now.
    pub fn heard(&self, i: usize) {
        self.slots[i]
            .heard_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// Installs (or clears) the connection of uplink `i`. The old connection's last QUIC
    /// figures are counted into `quic` first.
    pub fn set(&self, i: usize, conn: Option<Connection>, quic: &QuicCounters) {
        let slot = &self.slots[i];
        slot.draining.store(false, Ordering::Relaxed);
        slot.rx_datagrams.store(0, Ordering::Relaxed);
        if let Ok(mut guard) = slot.conn.lock() {
            if let Some(old) = guard.take() {
                slot.tally.fold(&old, quic);
            }
            slot.tally.reset();
            *guard = conn;
        }
        self.heard(i);
    }

    /// Whether uplink `i` holds `conn`, i.e. that connection got as far as its first config.
    pub fn was_set(&self, i: usize, conn: &Connection) -> bool {
        let current = self.slots[i].conn.lock().ok().and_then(|c| c.clone());
        current.is_some_and(|c| c.stable_id() == conn.stable_id())
    }

    /// The control plane asked for no new streams on uplink `i`.
    pub fn drain(&self, i: usize) {
        self.slots[i].draining.store(true, Ordering::Relaxed);
    }

    /// Whether uplink `i`, whose connection is `conn`, has received anything recently.
    fn alive(&self, i: usize, conn: &Connection) -> bool {
        if conn.close_reason().is_some() {
            return false;
        }
        let slot = &self.slots[i];
        let rx = conn.stats().udp_rx.datagrams;
        if slot.rx_datagrams.swap(rx, Ordering::Relaxed) != rx {
            self.heard(i);
        }
        let silent = self
            .now_ms()
            .saturating_sub(slot.heard_ms.load(Ordering::Relaxed));
        silent <= STALE_AFTER.as_millis() as u64
    }

    /// The next usable uplink, round-robin, skipping those in `tried` (a bit per uplink).
    fn pick(&self, tried: u64) -> Option<(usize, Connection)> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).find_map(|i| {
            let slot = &self.slots[i];
            if tried & (1 << i) != 0 || slot.draining.load(Ordering::Relaxed) {
                return None;
            }
            let conn = slot.conn.lock().ok()?.clone()?;
            self.alive(i, &conn).then_some((i, conn))
        })
    }

    /// Whether any uplink is connected and recently heard from.
    pub fn any_alive(&self) -> bool {
        self.slots.iter().enumerate().any(|(i, slot)| {
            let conn = slot.conn.lock().ok().and_then(|c| c.clone());
            conn.is_some_and(|c| self.alive(i, &c))
        })
    }

    /// Resolves once uplink `i` has gone silent.
    pub async fn gone_quiet(&self, i: usize, conn: &Connection) {
        while self.alive(i, conn) {
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Opens a stream on the next usable uplink (not one in `tried`) and sends `header` and
    /// the `early` bytes on it. Returns the uplink's index with the stream.
    pub async fn open(
        &self,
        header: &StreamHeader,
        early: &[Bytes],
        tried: &mut u64,
    ) -> Option<(usize, Connection, SendStream, RecvStream)> {
        let len: usize = early.iter().map(Bytes::len).sum();
        let mut buf = BytesMut::with_capacity(64 + len);
        header.encode(&mut buf);
        for chunk in early {
            buf.extend_from_slice(chunk);
        }
        while let Some((i, conn)) = self.pick(*tried) {
            *tried |= 1 << i;
            match tokio::time::timeout(OPEN_TIMEOUT, conn.open_bi()).await {
                Ok(Ok((mut send, recv))) => {
                    if send.write_all(&buf).await.is_ok() {
                        return Some((i, conn, send, recv));
                    }
                }
                Ok(Err(e)) => debug!(uplink = i, "cannot open stream: {e}"),
                Err(_) => warn!(uplink = i, "no stream credit within {OPEN_TIMEOUT:?}"),
            }
        }
        None
    }

    /// Opens a stream, sends `header` and the user's `early` bytes, and waits for the control
    /// plane's answer, passing on what `user` sends meanwhile (see [`sat_transport::ahead`]),
    /// so that a client-first protocol's first request costs no extra round trip to the
    /// control plane.
    ///
    /// If the uplink goes silent first, the header and everything sent so far go out again on
    /// another uplink, when that cannot deliver the user's bytes twice: none were sent, or
    /// nothing at all came back on the uplink after the stream went out (a control plane that
    /// received the stream acknowledges it within its ack delay). Otherwise the stream fails
    /// with [`OpenError::MaybeDelivered`], as a client's tunnel does in the same case.
    pub async fn open_answered<R>(
        &self,
        header: &StreamHeader,
        early: Bytes,
        user: &mut R,
    ) -> Result<Answered, OpenError>
    where
        R: AsyncRead + Unpin,
    {
        let mut sent = SentAhead::new(early);
        let mut tried = 0u64;
        loop {
            let (i, conn, mut send, mut recv) = self
                .open(header, sent.chunks(), &mut tried)
                .await
                .ok_or(OpenError::NoUplink)?;
            let heard = conn.stats().udp_rx.datagrams;
            match self
                .await_answer(i, &conn, (&mut send, &mut recv), user, &mut sent)
                .await
            {
                Ok(leftover) => {
                    return Ok(Answered {
                        send,
                        recv,
                        leftover,
                        ahead: sent.len() as u64,
                    })
                }
                Err(Unanswered::Final(e)) => return Err(e),
                Err(Unanswered::Lost(why)) => {
                    let _ = send.reset(splice::ABORTED);
                    if !sent.is_empty() && conn.stats().udp_rx.datagrams != heard {
                        self.not_resent.inc();
                        info!(
                            uplink = i,
                            bytes = sent.len(),
                            "{why} before answering, after it had the stream"
                        );
                        return Err(OpenError::MaybeDelivered);
                    }
                    self.resent.inc();
                    info!(
                        uplink = i,
                        bytes = sent.len(),
                        "{why} before answering; sending the stream again on another uplink"
                    );
                }
            }
        }
    }

    /// Waits on uplink `i` for the answer to the stream `(send, recv)`, passing on (and
    /// keeping) what `user` sends, up to [`sat_transport::ahead::LIMIT`].
    async fn await_answer<R>(
        &self,
        i: usize,
        conn: &Connection,
        (send, recv): (&mut SendStream, &mut RecvStream),
        user: &mut R,
        sent: &mut SentAhead,
    ) -> Result<Bytes, Unanswered>
    where
        R: AsyncRead + Unpin,
    {
        let answer = splice::read_answer(recv);
        let quiet = self.gone_quiet(i, conn);
        tokio::pin!(answer, quiet);
        let mut buf = BytesMut::new();
        // A failed write (the control plane stopped the stream) stops the reads; its answer,
        // or the uplink's silence, still decides.
        let mut writable = true;
        loop {
            let reading = writable && sent.wants_more();
            tokio::select! {
                answer = &mut answer => return match answer {
                    Ok(leftover) => Ok(leftover),
                    Err(SpliceError::Rejected(r)) => Err(Unanswered::Final(OpenError::Rejected(r))),
                    Err(SpliceError::QuicReset(_)) => Err(Unanswered::Final(OpenError::Reset)),
                    Err(e) => Err(Unanswered::Lost(format!("the stream failed: {e}"))),
                },
                () = &mut quiet => return Err(Unanswered::Lost(format!("uplink {i} went silent"))),
                read = sent.read_from(user, &mut buf), if reading => match read {
                    Ok(None) => {}
                    // Within the stream's flow-control window (far above the limit), so this
                    // does not wait on the control plane.
                    Ok(Some(chunk)) => writable = send.write_chunk(chunk).await.is_ok(),
                    Err(e) => {
                        let _ = send.reset(splice::ABORTED);
                        return Err(Unanswered::Final(OpenError::UserGone(e)));
                    }
                },
            }
        }
    }
}

/// How waiting for an answer ended, short of one.
enum Unanswered {
    /// The end of this stream: refused, reset, or the user gone.
    Final(OpenError),
    /// The uplink went silent or the stream failed (why): worth another uplink.
    Lost(String),
}

impl OpenError {
    /// The refusal to pass on to a user: the control plane's, or ours when no uplink worked.
    pub fn into_refusal(self, relay: &str) -> (RejectCode, String) {
        match self {
            Self::Rejected(r) => (r.code, r.message),
            Self::NoUplink => (
                RejectCode::NoUplink,
                format!("relay {relay} has no uplink to the control plane; retry shortly"),
            ),
            Self::UserGone(e) => (RejectCode::Internal, format!("the user went away: {e}")),
            Self::Reset => (
                RejectCode::BackendRefused,
                "the service reset the connection".into(),
            ),
            Self::MaybeDelivered => (
                RejectCode::NoUplink,
                format!(
                    "relay {relay} lost its uplink to the control plane before the answer; the \
                     service may have seen this tunnel's bytes, so they were not sent again — \
                     open the tunnel again"
                ),
            ),
        }
    }

    /// A refusal of the relay's own, before any uplink is asked.
    pub fn refused(code: RejectCode, message: String) -> Self {
        Self::Rejected(Rejected { code, message })
    }
}
