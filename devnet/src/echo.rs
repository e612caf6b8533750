//! TCP echo backend for `sat up`.
//!
//! Every connection gets its bytes back until the client sends EOF; the server then shuts
//! down its write half. That last step is the point of this service: a tunnel that forwards
//! half-closes correctly lets the client read the full echo *after* it has closed its own
//! write side, and one that does not either truncates or hangs.
//!
//! This is a demo backend, not a hardened server: it has no connection limit and no idle
//! timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Serves TCP echo on `listener` until `shutdown` is cancelled.
///
/// On cancellation it stops accepting, closes every open connection (write half first, so
/// clients see an orderly EOF rather than a reset where possible) and returns once all
/// connection tasks have finished.
pub async fn run(listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(service = "echo", "listening on tcp {local}");

    let tracker = TaskTracker::new();
    let mut conn: u64 = 0;
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        conn += 1;
        let span = tracing::info_span!("conn", service = "echo", conn, peer = %peer);
        tracker.spawn(serve(stream, shutdown.clone()).instrument(span));
    }

    // Dropping the listener here, before the drain, makes new connection attempts fail
    // fast instead of sitting in the accept backlog until we exit.
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tracing::debug!(service = "echo", "stopped");
    Ok(())
}

async fn serve(mut stream: TcpStream, shutdown: CancellationToken) {
    let (mut rd, mut wr) = stream.split();
    let outcome = tokio::select! {
        // tokio::io::copy flushes and returns at EOF, so by the time we shut down the
        // write half every echoed byte has been handed to the kernel.
        copied = tokio::io::copy(&mut rd, &mut wr) => copied.map(Some),
        () = shutdown.cancelled() => Ok(None),
    };
    match outcome {
        Ok(Some(bytes)) => tracing::debug!(bytes, "client sent EOF; half-closing"),
        Ok(None) => tracing::debug!("shutting down; closing connection"),
        Err(err) => {
            // Most often a reset from the peer: nothing to send back, so just drop.
            tracing::debug!(error = %err, "echo connection failed");
            return;
        }
    }
    if let Err(err) = wr.shutdown().await {
        tracing::debug!(error = %err, "half-close failed");
    }
}

/// Waits for the next connection, or `None` once `shutdown` is cancelled.
///
/// Accept errors never end the service: per-connection failures (the peer gave up while
/// queued) are skipped at once, and resource exhaustion (EMFILE and friends) is retried
/// after a pause instead of spinning, as axum and hyper-util's servers do. It is
/// `pub(crate)` because the demo web app shares it; it lives here since `lib.rs` is kept
/// a table of contents.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    const BACKOFF: Duration = Duration::from_secs(1);
    loop {
        let accepted = tokio::select! {
            // Biased so a cancelled token wins even when connections keep arriving.
            biased;
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Echo and the demo page are interactive: small writes should leave now.
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %err, "could not set TCP_NODELAY");
                }
                return Some((stream, peer));
            }
            Err(err) if is_per_connection(&err) => {
                tracing::debug!(error = %err, "accept failed for one connection");
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; retrying in {BACKOFF:?}");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(BACKOFF) => {}
                }
            }
        }
    }
}

fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::task::JoinHandle;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    const TIMEOUT: Duration = Duration::from_secs(10);

    async fn start() -> io::Result<(SocketAddr, CancellationToken, JoinHandle<io::Result<()>>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(run(listener, shutdown.clone()));
        Ok((addr, shutdown, server))
    }

    #[tokio::test]
    async fn echoes_then_half_closes_after_client_eof() -> TestResult {
        let (addr, shutdown, server) = start().await?;
        let mut client = TcpStream::connect(addr).await?;

        // A ping-pong first: the echo must flow while the client is still sending.
        client.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(TIMEOUT, client.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"ping");

        // Then half-close: whatever was sent last must still come back, followed by EOF.
        client.write_all(b" and goodbye").await?;
        client.shutdown().await?;
        let mut rest = Vec::new();
        tokio::time::timeout(TIMEOUT, client.read_to_end(&mut rest)).await??;
        assert_eq!(rest, b" and goodbye");

        shutdown.cancel();
        tokio::time::timeout(TIMEOUT, server).await???;
        Ok(())
    }

    #[tokio::test]
    async fn echoes_more_than_socket_buffers_hold() -> TestResult {
        let (addr, shutdown, server) = start().await?;
        let client = TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = client.into_split();

        // 8 MiB cannot sit in kernel buffers, so this only passes if the server keeps
        // reading while the client is slow to drain, and the client writes concurrently.
        let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await?;
            wr.shutdown().await
        });
        let mut got = Vec::with_capacity(expected.len());
        tokio::time::timeout(TIMEOUT, rd.read_to_end(&mut got)).await??;
        writer.await??;
        assert!(got == expected, "echo differs from what was sent");

        shutdown.cancel();
        tokio::time::timeout(TIMEOUT, server).await???;
        Ok(())
    }

    #[tokio::test]
    async fn shutdown_closes_open_connections_and_stops_accepting() -> TestResult {
        let (addr, shutdown, server) = start().await?;
        let mut client = TcpStream::connect(addr).await?;
        client.write_all(b"x").await?;
        let mut one = [0u8; 1];
        tokio::time::timeout(TIMEOUT, client.read_exact(&mut one)).await??;

        shutdown.cancel();
        tokio::time::timeout(TIMEOUT, server).await???;

        // The server closed its side of the still-open connection ...
        let mut rest = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, client.read_to_end(&mut rest)).await?;
        assert!(
            read.is_err() || rest.is_empty(),
            "unexpected bytes: {rest:?}"
        );
        // ... and the listener is gone.
        assert!(TcpStream::connect(addr).await.is_err());
        Ok(())
    }
}
