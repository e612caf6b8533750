//! Copying bytes between a QUIC stream and something else, in both directions at once.
//!
//! A clean end of input (FIN) on one side becomes a clean end of output on the other: TCP
//! `shutdown(Write)` ⇄ QUIC `finish()`. An abort becomes an abort: a TCP reset ⇄ QUIC
//! `RESET_STREAM`/`STOP_SENDING`. That is what SSH and other protocols that half-close need.
//!
//! Backpressure is QUIC flow control: a direction reads more only once the previous chunk has
//! been handed to the writer, so at most one chunk per direction is in our hands. Idle tunnels
//! hold no read buffer: the TCP side waits for readability before allocating one, and drops it
//! once the socket runs dry.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::io::{Prefixed, Rejected};

/// Largest read from a socket in one go.
const CHUNK: usize = 64 * 1024;

/// The QUIC error code we send with RESET_STREAM / STOP_SENDING when the other side aborted.
pub const ABORTED: VarInt = VarInt::from_u32(1);

/// How long, after a write to a stream we opened failed, its answer (most likely a refusal)
/// still gets to arrive.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Bytes moved in each direction, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// From the local side into the QUIC stream.
    pub into_quic: u64,
    /// From the QUIC stream out to the local side.
    pub out_of_quic: u64,
}

/// How a splice ended, when it did not end with both sides finishing cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("peer aborted the stream (code {0})")]
    QuicReset(VarInt),
    #[error("QUIC connection lost: {0}")]
    QuicLost(quinn::ConnectionError),
    #[error("local side failed: {0}")]
    Local(io::Error),
    #[error("refused: {0}")]
    Rejected(Rejected),
}

/// A splice that ended short of both sides finishing cleanly: why, and what had moved by then
/// (metrics count those bytes too).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Aborted {
    pub error: SpliceError,
    pub moved: Moved,
}

/// What a splice moved, and why it ended short if it did: the one shape callers count and
/// log, whichever way the splice ended.
pub fn outcome(result: Result<Moved, Aborted>) -> (Moved, Option<SpliceError>) {
    match result {
        Ok(moved) => (moved, None),
        Err(aborted) => (aborted.moved, Some(aborted.error)),
    }
}

impl From<ReadError> for SpliceError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Reset(code) => Self::QuicReset(code),
            ReadError::ConnectionLost(e) => Self::QuicLost(e),
            other => Self::Local(io::Error::other(other)),
        }
    }
}

impl From<WriteError> for SpliceError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stopped(code) => Self::QuicReset(code),
            WriteError::ConnectionLost(e) => Self::QuicLost(e),
            other => Self::Local(io::Error::other(other)),
        }
    }
}

/// Splices a TCP connection with a QUIC stream. `first` (what arrived behind the stream's
/// header or answer) goes to the TCP side first. On an abort from the QUIC side the TCP
/// connection is reset, not closed.
pub async fn tcp(
    tcp: TcpStream,
    send: &mut SendStream,
    recv: &mut RecvStream,
    first: Bytes,
) -> Result<Moved, Aborted> {
    let (mut r, mut w) = tcp.into_split();
    let mut moved = Moved::default();
    let result = tokio::try_join!(
        tcp_to_quic(&mut r, send, &mut moved.into_quic),
        quic_to_io(recv, &mut w, first, &mut moved.out_of_quic)
    );
    match result {
        Ok(_) => Ok(moved),
        Err(error) => {
            abort_quic(send, recv);
            if let Ok(tcp) = r.reunite(w) {
                // Linger 0 turns the close into a RST, so the local peer sees the abort.
                let _ = tcp.set_zero_linger();
            }
            Err(Aborted { error, moved })
        }
    }
}

/// Splices any byte stream (stdin/stdout, a TLS session) with a QUIC stream.
pub async fn io<R, W>(
    mut r: R,
    mut w: W,
    send: &mut SendStream,
    recv: &mut RecvStream,
    first_into_quic: Bytes,
) -> Result<Moved, Aborted>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut moved = Moved::default();
    let into_quic = &mut moved.into_quic;
    let up = async {
        if !first_into_quic.is_empty() {
            *into_quic += first_into_quic.len() as u64;
            send.write_chunk(first_into_quic).await?;
        }
        io_to_quic(&mut r, send, into_quic).await
    };
    let down = quic_to_io(recv, &mut w, Bytes::new(), &mut moved.out_of_quic);
    match tokio::try_join!(up, down) {
        Ok(_) => Ok(moved),
        Err(error) => {
            abort_quic(send, recv);
            Err(Aborted { error, moved })
        }
    }
}

/// Splices two QUIC streams (a user's tunnel to the relay with the relay's uplink stream).
/// `first` goes to `b` before anything read from `a`. Chunks pass through without a copy.
pub async fn quic(
    a: (&mut SendStream, &mut RecvStream),
    b: (&mut SendStream, &mut RecvStream),
    first: Bytes,
) -> Result<Moved, Aborted> {
    let (a_send, a_recv) = a;
    let (b_send, b_recv) = b;
    let mut moved = Moved::default();
    let into_quic = &mut moved.into_quic;
    let a_to_b = async {
        if !first.is_empty() {
            *into_quic += first.len() as u64;
            b_send.write_chunk(first).await?;
        }
        quic_to_quic(a_recv, b_send, into_quic).await
    };
    let b_to_a = quic_to_quic(b_recv, a_send, &mut moved.out_of_quic);
    match tokio::try_join!(a_to_b, b_to_a) {
        Ok(_) => Ok(moved),
        Err(error) => {
            abort_quic(a_send, a_recv);
            abort_quic(b_send, b_recv);
            Err(Aborted { error, moved })
        }
    }
}

fn abort_quic(send: &mut SendStream, recv: &mut RecvStream) {
    // Either may already be closed; an abort of a closed half is a no-op worth ignoring.
    let _ = send.reset(ABORTED);
    let _ = recv.stop(ABORTED);
}

/// Each copy loop adds what it moved to `total` as it goes, so that an aborted splice still
/// says how much got through.
async fn tcp_to_quic(
    r: &mut OwnedReadHalf,
    send: &mut SendStream,
    total: &mut u64,
) -> Result<(), SpliceError> {
    let mut scratch: Option<BytesMut> = None;
    loop {
        if scratch.is_none() {
            // Nothing buffered while idle: wait for bytes before allocating room for them.
            r.readable().await.map_err(SpliceError::Local)?;
        }
        let buf = scratch.get_or_insert_with(|| BytesMut::with_capacity(CHUNK));
        if buf.capacity() < CHUNK / 4 {
            *buf = BytesMut::with_capacity(CHUNK);
        }
        match r.try_read_buf(buf) {
            Ok(0) => {
                let _ = send.finish();
                return Ok(());
            }
            Ok(n) => {
                *total += n as u64;
                // split() hands the filled part on and keeps the rest of the allocation for
                // the next read while bytes keep coming.
                send.write_chunk(buf.split().freeze()).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => scratch = None,
            Err(e) => return Err(SpliceError::Local(e)),
        }
    }
}

async fn io_to_quic<R: AsyncRead + Unpin>(
    r: &mut R,
    send: &mut SendStream,
    total: &mut u64,
) -> Result<(), SpliceError> {
    let mut buf = BytesMut::new();
    loop {
        if buf.capacity() < CHUNK / 4 {
            buf = BytesMut::with_capacity(CHUNK);
        }
        let n = r.read_buf(&mut buf).await.map_err(SpliceError::Local)?;
        if n == 0 {
            let _ = send.finish();
            return Ok(());
        }
        *total += n as u64;
        send.write_chunk(buf.split().freeze()).await?;
    }
}

async fn quic_to_io<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    w: &mut W,
    first: Bytes,
    total: &mut u64,
) -> Result<(), SpliceError> {
    if !first.is_empty() {
        w.write_all(&first).await.map_err(SpliceError::Local)?;
        *total += first.len() as u64;
    }
    while let Some(chunk) = recv.read_chunk(CHUNK, true).await? {
        *total += chunk.bytes.len() as u64;
        w.write_all(&chunk.bytes)
            .await
            .map_err(SpliceError::Local)?;
    }
    // The QUIC side finished: pass the half-close on. The peer may already be gone, and that
    // is not an error of ours.
    let _ = w.shutdown().await;
    Ok(())
}

/// Runs both directions of a stream we opened, like `try_join!(up, down)`, except that an
/// error from `up` gives `down` a moment to bring the peer's refusal. A peer that refuses
/// writes its reason and drops its receiving half; the stop can reach our writer before our
/// reader has looked at the reason, and "stopped by peer" would hide why.
pub async fn join_refusal_first<A, B, E>(
    up: impl Future<Output = Result<A, E>>,
    down: impl Future<Output = Result<B, E>>,
    is_refusal: impl Fn(&E) -> bool,
) -> Result<(A, B), E> {
    tokio::pin!(up, down);
    tokio::select! {
        biased;
        d = &mut down => {
            let d = d?;
            Ok((up.await?, d))
        }
        u = &mut up => match u {
            Ok(u) => Ok((u, down.await?)),
            Err(e) => match tokio::time::timeout(REFUSAL_GRACE, down).await {
                Ok(Err(refused)) if is_refusal(&refused) => Err(refused),
                _ => Err(e),
            },
        },
    }
}

/// Reads the peer's answer off the front of `recv`; returns the bytes that followed it. A
/// refusal is [`SpliceError::Rejected`]. A stream the peer reset before its answer could be read
/// is [`SpliceError::QuicReset`]: a reset may overtake the answer (a backend that resets at once,
/// say), since QUIC drops what a reset stream had not yet delivered.
pub async fn read_answer(recv: &mut RecvStream) -> Result<Bytes, SpliceError> {
    let mut answered = Prefixed::awaiting_answer(&mut *recv);
    match answered.answer().await {
        Ok(()) => Ok(answered.into_pending()),
        Err(e) => match e.downcast::<Rejected>() {
            Ok(rejected) => Err(SpliceError::Rejected(rejected)),
            Err(e) => Err(match e.downcast::<ReadError>() {
                Ok(read) => read.into(),
                Err(e) => SpliceError::Local(e),
            }),
        },
    }
}

async fn quic_to_quic(
    recv: &mut RecvStream,
    send: &mut SendStream,
    total: &mut u64,
) -> Result<(), SpliceError> {
    while let Some(chunk) = recv.read_chunk(CHUNK, true).await? {
        *total += chunk.bytes.len() as u64;
        send.write_chunk(chunk.bytes).await?;
        // quinn takes no part in tokio's cooperative budget: without this, a stream that
        // always has data ready would keep its worker thread from every other task.
        tokio::task::consume_budget().await;
    }
    let _ = send.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use super::*;

    fn refused(e: &&str) -> bool {
        e.starts_with("refused")
    }

    #[tokio::test]
    async fn a_refusal_that_follows_a_failed_write_wins() {
        let up = async { Err::<(), _>("stopped by peer") };
        let down = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<(), _>("refused: unknown service")
        };
        let got = join_refusal_first(up, down, refused).await;
        assert_eq!(got, Err("refused: unknown service"));
    }

    #[tokio::test]
    async fn a_failed_write_without_a_refusal_reports_itself_within_the_grace() {
        let started = std::time::Instant::now();
        let up = async { Err::<(), _>("stopped by peer") };
        let got = join_refusal_first(up, pending::<Result<(), &str>>(), refused).await;
        assert_eq!(got, Err("stopped by peer"));
        assert!(started.elapsed() < REFUSAL_GRACE * 2);

        let up = async { Err::<(), _>("stopped by peer") };
        let down = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<(), _>("reset")
        };
        assert_eq!(
            join_refusal_first(up, down, refused).await,
            Err("stopped by peer")
        );
    }

    #[tokio::test]
    async fn both_directions_run_to_the_end() {
        let up = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, &str>(1)
        };
        let down = async { Ok::<_, &str>(2) };
        assert_eq!(join_refusal_first(up, down, refused).await, Ok((1, 2)));
        let down = async { Err::<(), _>("reset") };
        assert_eq!(
            join_refusal_first(pending::<Result<(), &str>>(), down, refused).await,
            Err("reset")
        );
    }
}
