//! Using a tunnel: as stdin/stdout, or behind a local listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sat_transport::io::{rejection, Prefixed};
use sat_transport::splice;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::answer::{open_answered, Answered};
use crate::stdio::{ClosingStdout, QuietAfterEnd, QUIET_AFTER_REMOTE_END};
use crate::{ClientError, Route};

/// How long `sat connect`, done, waits for the relay to acknowledge the end of its input.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// Joins stdin/stdout to `service`. A refusal from the relay or the control plane comes back
/// as [`ClientError::Refused`] with their reason.
///
/// The end of stdin becomes a half-close. When the service ends its side, stdout is closed at
/// once, and the tunnel ends when stdin does, or once stdin has been quiet for
/// [`QUIET_AFTER_REMOTE_END`]: the program reading stdout may keep stdin open until this one
/// exits (see `stdio.rs`).
pub async fn connect(route: &Route, service: &str) -> Result<(), ClientError> {
    let mut stdin = tokio::io::stdin();
    let stdout = ClosingStdout::new();
    let (answered, relay) = open_answered(route, service, &mut stdin).await?;
    debug!(%relay, "tunnel open");
    let quiet = Some(QUIET_AFTER_REMOTE_END);
    match answered {
        Answered::Quic {
            mut send,
            recv,
            first,
        } => {
            let r = Prefixed::with_pending(recv, first);
            let pumped = pump(stdin, stdout, r, &mut send, service, quiet).await;
            if pumped.is_ok() {
                // The process exits next, and its connection with it: the last of the input
                // and its end (queued by the shutdown) must reach the relay first.
                let _ = tokio::time::timeout(FINISH_WAIT, send.stopped()).await;
            }
            pumped
        }
        Answered::Tls(stream) => {
            let (r, w) = tokio::io::split(stream);
            let r = Prefixed::awaiting_answer(r);
            pump(stdin, stdout, r, w, service, quiet).await
        }
    }
}

/// Copies local → tunnel and tunnel → local at once. End of input becomes a half-close. With
/// `quiet_after_end`, local input also counts as ended once it has been quiet that long after
/// the tunnel's end (for stdin, which has no half-close of its own to wait for).
async fn pump<LR, LW, TR, TW>(
    local_r: LR,
    mut local_w: LW,
    mut tunnel_r: TR,
    mut tunnel_w: TW,
    service: &str,
    quiet_after_end: Option<Duration>,
) -> Result<(), ClientError>
where
    LR: AsyncRead + Unpin,
    LW: AsyncWrite + Unpin,
    TR: AsyncRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let remote_ended = AtomicBool::new(false);
    let up = async {
        match quiet_after_end {
            Some(quiet) => {
                let mut local_r = QuietAfterEnd::new(local_r, &remote_ended, quiet);
                tokio::io::copy(&mut local_r, &mut tunnel_w).await?
            }
            None => {
                let mut local_r = local_r;
                tokio::io::copy(&mut local_r, &mut tunnel_w).await?
            }
        };
        tunnel_w.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut tunnel_r, &mut local_w).await?;
        local_w.flush().await?;
        local_w.shutdown().await?;
        remote_ended.store(true, Ordering::Release);
        Ok(())
    };
    splice::join_refusal_first(up, down, |e| rejection(e).is_some())
        .await
        .map(|_| ())
        .map_err(|e| classify(service, e))
}

fn classify(service: &str, e: std::io::Error) -> ClientError {
    match rejection(&e) {
        Some(r) => ClientError::Refused {
            service: service.into(),
            code: r.code,
            message: r.message.clone(),
        },
        None => ClientError::io(service, e),
    }
}

/// Serves `listener` until `stop`: each local connection gets its own tunnel to `service`.
pub async fn forward(
    route: Arc<Route>,
    listener: TcpListener,
    service: String,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    let tasks = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let (route, service) = (route.clone(), service.clone());
        tasks.spawn(async move {
            debug!(%peer, "new local connection");
            if let Err(e) = forward_one(&route, tcp, &service).await {
                warn!(%peer, "{e}");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn forward_one(route: &Route, mut tcp: TcpStream, service: &str) -> Result<(), ClientError> {
    let _ = tcp.set_nodelay(true);
    let (answered, relay) = match open_answered(route, service, &mut tcp).await {
        Ok(opened) => opened,
        Err(e) => {
            if e.is_reset() {
                // Linger 0 turns the close into a RST, as the service's own was.
                let _ = tcp.set_zero_linger();
            }
            return Err(e);
        }
    };
    debug!(%relay, "tunnel open");
    match answered {
        Answered::Quic {
            mut send,
            mut recv,
            first,
        } => {
            if let Err(e) = splice::tcp(tcp, &mut send, &mut recv, first).await {
                info!("tunnel ended: {e}");
            }
            Ok(())
        }
        Answered::Tls(stream) => {
            let (tr, tw) = tokio::io::split(stream);
            let (lr, lw) = tcp.into_split();
            pump(lr, lw, Prefixed::awaiting_answer(tr), tw, service, None).await
        }
    }
}
