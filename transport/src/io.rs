//! A QUIC stream pair as one tokio byte stream, for code that wants `AsyncRead + AsyncWrite`
//! (hyper, most of all).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use sat_proto::stream::{RejectCode, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The peer refused the stream. Travels inside an `io::Error` so that it survives hyper and
/// can be recovered with [`rejection`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Rejected {
    pub code: RejectCode,
    pub message: String,
}

/// Finds a [`Rejected`] anywhere in an error's source chain.
pub fn rejection<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Rejected> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Rejected>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Rejected>())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

enum State {
    /// The first bytes to arrive are the peer's [`Response`]; consume it before any data.
    Awaiting(BytesMut),
    /// Bytes already read (behind a header or an answer) that the reader has not seen yet.
    Pending(Bytes),
}

/// A reader with something in front of the peer's data: bytes already read off it, or the
/// peer's answer to a header we sent, which is consumed (or turned into a [`Rejected`] error)
/// on the first read. Writes on the other half go out at once: the request travels while the
/// answer is on its way back.
pub struct Prefixed<R> {
    inner: R,
    state: State,
}

impl<R: AsyncRead + Unpin> Prefixed<R> {
    pub fn with_pending(inner: R, pending: Bytes) -> Self {
        Self {
            inner,
            state: State::Pending(pending),
        }
    }

    pub fn awaiting_answer(inner: R) -> Self {
        Self {
            inner,
            state: State::Awaiting(BytesMut::new()),
        }
    }

    /// Waits for the peer's answer, if one is awaited: `Ok` once it accepted, an error holding
    /// [`Rejected`] if it refused.
    pub async fn answer(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_answer(cx)).await
    }

    /// The bytes read off the stream but not handed out yet (what followed the answer).
    pub fn into_pending(self) -> Bytes {
        match self.state {
            State::Pending(pending) => pending,
            State::Awaiting(_) => Bytes::new(),
        }
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let State::Awaiting(buf) = &mut self.state {
            match Response::decode(buf).map_err(io::Error::other)? {
                Some((Response::Accepted, used)) => {
                    buf.advance(used);
                    self.state = State::Pending(std::mem::take(buf).freeze());
                }
                Some((Response::Rejected { code, message }, _)) => {
                    return Poll::Ready(Err(io::Error::other(Rejected { code, message })));
                }
                None => {
                    let mut chunk = [0u8; 256];
                    let mut rb = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "stream closed before it was answered",
                        )));
                    }
                    buf.extend_from_slice(rb.filled());
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        if let State::Pending(pending) = &mut this.state {
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// A bidirectional QUIC stream as `AsyncRead + AsyncWrite`.
pub struct QuicIo {
    send: SendStream,
    recv: Prefixed<RecvStream>,
}

impl QuicIo {
    /// Wraps a stream whose header has been read; `pending` is what followed the header.
    pub fn new(send: SendStream, recv: RecvStream, pending: Bytes) -> Self {
        Self {
            send,
            recv: Prefixed::with_pending(recv, pending),
        }
    }

    /// Wraps a stream we opened and sent a header on; see [`Prefixed::awaiting_answer`].
    pub fn awaiting_answer(send: SendStream, recv: RecvStream) -> Self {
        Self {
            send,
            recv: Prefixed::awaiting_answer(recv),
        }
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}
