//! stdin and stdout as the local end of a tunnel (`sat connect`), where the end of a
//! connection is the end of the process.
//!
//! A TCP peer that sees our FIN can close its side when it likes; stdin has no such signal. A
//! program reading `sat connect`'s stdout (ssh, a script) learns that the service has finished
//! only when stdout closes, and it may keep stdin open until `sat connect` exits. So when the
//! service's side ends, stdout is closed at once ([`ClosingStdout`]), and stdin then counts as
//! ended once it has been quiet for [`QUIET_AFTER_REMOTE_END`] ([`QuietAfterEnd`]): what the
//! user is still sending goes through (a service may half-close and keep reading), and an
//! idle stdin does not keep the process alive. socat does much the same (its `-t`, 0.5 s).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, Stdout};
use tokio::time::Sleep;
use tracing::debug;

/// How long stdin may stay quiet, once the service has ended its side, before it is taken as
/// ended too.
pub const QUIET_AFTER_REMOTE_END: Duration = Duration::from_secs(1);

/// The process's stdout; shutting it down closes file descriptor 1, so that its reader sees
/// the end of the stream while the process still runs.
pub struct ClosingStdout {
    inner: Stdout,
    closed: bool,
}

impl ClosingStdout {
    pub fn new() -> Self {
        Self {
            inner: tokio::io::stdout(),
            closed: false,
        }
    }
}

impl AsyncWrite for ClosingStdout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if !self.closed {
            self.closed = true;
            close_stdout();
        }
        Poll::Ready(Ok(()))
    }
}

/// Points file descriptor 1 at /dev/null, which closes the pipe or socket it was (the reader
/// sees EOF once no other process holds it) and keeps the number taken, so that nothing opened
/// later lands on it and receives what a stray write to stdout would send.
fn close_stdout() {
    let closed = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .and_then(|null| nix::unistd::dup2_stdout(null).map_err(io::Error::from));
    if let Err(e) = closed {
        debug!("cannot close stdout: {e}");
    }
}

/// A reader that reports end of input once it has been quiet for `quiet` after `remote_ended`
/// was set. Until then it is the reader itself.
pub struct QuietAfterEnd<'a, R> {
    inner: R,
    remote_ended: &'a AtomicBool,
    quiet: Duration,
    /// Running while the remote side has ended and the reader waits for input.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<'a, R> QuietAfterEnd<'a, R> {
    pub fn new(inner: R, remote_ended: &'a AtomicBool, quiet: Duration) -> Self {
        Self {
            inner,
            remote_ended,
            quiet,
            timer: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for QuietAfterEnd<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(read) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            // Input arrived (or ended): the quiet starts again from here.
            this.timer = None;
            return Poll::Ready(read);
        }
        if !this.remote_ended.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let quiet = this.quiet;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(quiet)));
        ready!(timer.as_mut().poll(cx));
        debug!("the service has ended and stdin has been quiet for {quiet:?}: ending");
        // Nothing filled in: end of input.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn quiet_input_ends_only_after_the_remote_end() {
        let ended = AtomicBool::new(false);
        let (mut user, stdin) = tokio::io::duplex(64);
        let mut reader = QuietAfterEnd::new(stdin, &ended, Duration::from_secs(1));
        let mut buf = [0u8; 8];

        // Before the remote ends, silence is only silence.
        let read = tokio::time::timeout(Duration::from_secs(60), reader.read(&mut buf)).await;
        assert!(read.is_err(), "read ended before the remote did: {read:?}");

        ended.store(true, Ordering::Release);
        // Input that keeps coming keeps going through.
        tokio::io::AsyncWriteExt::write_all(&mut user, b"more")
            .await
            .unwrap();
        assert_eq!(reader.read(&mut buf).await.unwrap(), 4);
        let started = tokio::time::Instant::now();
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0, "quiet input ends");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
