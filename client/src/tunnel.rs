//! Using a tunnel: as stdin/stdout, or behind a local listener.

use std::sync::Arc;

use sat_transport::io::{rejection, Prefixed, QuicIo};
use sat_transport::splice::{self, SpliceError, Start};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::{ClientError, Route, Transport};

/// Joins stdin/stdout to `service` until both directions end. A refusal from the relay or the
/// control plane comes back as [`ClientError::Refused`] with their reason.
pub async fn connect(route: &Route, service: &str) -> Result<(), ClientError> {
    let stdin = tokio::io::stdin();
    let stdout = tokio::io::stdout();
    let (transport, relay) = route.open(service).await?;
    debug!(%relay, "tunnel open");
    match transport {
        Transport::Quic(send, recv) => {
            let (r, w) = tokio::io::split(QuicIo::awaiting_answer(send, recv));
            pump(stdin, stdout, r, w, service).await
        }
        Transport::Tls(stream) => {
            let (r, w) = tokio::io::split(stream);
            pump(stdin, stdout, Prefixed::awaiting_answer(r), w, service).await
        }
    }
}

/// Copies local → tunnel and tunnel → local at once. End of input becomes a half-close.
async fn pump<LR, LW, TR, TW>(
    mut local_r: LR,
    mut local_w: LW,
    mut tunnel_r: TR,
    mut tunnel_w: TW,
    service: &str,
) -> Result<(), ClientError>
where
    LR: AsyncRead + Unpin,
    LW: AsyncWrite + Unpin,
    TR: AsyncRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let up = async {
        tokio::io::copy(&mut local_r, &mut tunnel_w).await?;
        tunnel_w.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut tunnel_r, &mut local_w).await?;
        local_w.flush().await?;
        local_w.shutdown().await
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
        None => ClientError::Io {
            service: service.into(),
            source: e,
        },
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

async fn forward_one(route: &Route, tcp: TcpStream, service: &str) -> Result<(), ClientError> {
    let _ = tcp.set_nodelay(true);
    let (transport, relay) = route.open(service).await?;
    debug!(%relay, "tunnel open");
    match transport {
        Transport::Quic(mut send, mut recv) => {
            match splice::tcp(tcp, &mut send, &mut recv, Start::AwaitAnswer).await {
                Ok(_) => Ok(()),
                Err(SpliceError::Rejected(r)) => Err(ClientError::Refused {
                    service: service.into(),
                    code: r.code,
                    message: r.message,
                }),
                Err(e) => {
                    info!("tunnel ended: {e}");
                    Ok(())
                }
            }
        }
        Transport::Tls(stream) => {
            let (tr, tw) = tokio::io::split(stream);
            let (lr, lw) = tcp.into_split();
            pump(lr, lw, Prefixed::awaiting_answer(tr), tw, service).await
        }
    }
}
