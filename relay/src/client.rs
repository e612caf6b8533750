//! Tunnels from `sat connect` / `sat forward`: over QUIC (ALPN `sat-client/1`, one stream per
//! tunnel), or over one TLS connection per tunnel where UDP is blocked. Either way the relay
//! reads the client's header, opens a stream to the control plane with the bytes that came
//! with it, waits for the answer while passing on what the client sends meanwhile (moving to
//! another uplink if this one dies first), passes the answer on, and splices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream};
use sat_proto::clock;
use sat_proto::stream::{ClientHeader, RejectCode, Response, StreamHeader, StreamKind};
use sat_transport::header::{self, HeaderError};
use sat_transport::metrics::StreamClass;
use sat_transport::splice;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, Instrument};

use crate::pool::{Answered, OpenError};
use crate::relay::Relay;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one client QUIC connection: each bidirectional stream is a tunnel.
pub async fn serve_quic(incoming: quinn::Incoming, relay: Arc<Relay>, stop: CancellationToken) {
    let peer = incoming.remote_address();
    let conn: Connection = match incoming.await {
        Ok(conn) => conn,
        Err(e) => return debug!(%peer, "client handshake failed: {e}"),
    };
    // This connection's tunnels; the relay's drain waits for this task, which waits for them.
    let tunnels = TaskTracker::new();
    loop {
        let (send, recv) = tokio::select! {
            // The drain first: a stream that arrives once the relay is draining is refused
            // below, never carried, even when both are ready at once.
            biased;
            () = stop.cancelled() => break,
            accepted = conn.accept_bi() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(%peer, "client connection closed: {e}");
                    break;
                }
            },
        };
        let span = info_span!("tunnel", %peer, via = "quic");
        tunnels.spawn(quic_tunnel(send, recv, peer, relay.clone()).instrument(span));
    }
    tunnels.close();
    if stop.is_cancelled() {
        drain_connection(&relay, &conn, &tunnels).await;
    }
    tunnels.wait().await;
}

/// While a draining relay lets a connection's tunnels finish, new streams on it are refused at
/// once (so the client can go elsewhere) rather than left waiting; then the connection closes.
async fn drain_connection(relay: &Relay, conn: &Connection, tunnels: &TaskTracker) {
    loop {
        tokio::select! {
            () = tunnels.wait() => break,
            accepted = conn.accept_bi() => match accepted {
                Ok((mut send, _recv)) => {
                    let msg = "relay is draining; connect to another relay".to_string();
                    refuse_quic(relay, &mut send, RejectCode::Draining, msg).await;
                }
                Err(_) => return,
            },
        }
    }
    conn.close(0u32.into(), b"relay draining");
}

async fn quic_tunnel(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: SocketAddr,
    relay: Arc<Relay>,
) {
    let (hello, first) = match header::read(&mut recv, ClientHeader::decode, HEADER_TIMEOUT).await {
        Ok(h) => h,
        // The client reset the stream: it gave the tunnel up (a client replays a tunnel through
        // another relay when this one was slow to acknowledge). Nobody is left to refuse.
        Err(HeaderError::Io(e)) => {
            return debug!("the client gave a tunnel up before its header: {e}")
        }
        Err(e) => {
            return refuse_quic(&relay, &mut send, RejectCode::BadHeader, e.to_string()).await
        }
    };
    let _guard = relay.stream_guard(StreamClass::Tunnel);
    let opening = Instant::now();
    let mut up = match open_upstream(&relay, &hello, peer, first, &mut recv).await {
        Ok(up) => up,
        Err(OpenError::Reset) => {
            let _ = send.reset(splice::ABORTED);
            let _ = recv.stop(splice::ABORTED);
            return debug!("the service reset the tunnel before the answer");
        }
        Err(e) => {
            if let Some((code, msg)) = refusal(e, &relay.name) {
                refuse_quic(&relay, &mut send, code, msg).await;
            }
            return;
        }
    };
    relay.metrics.tunnel_set_up(opening);
    if send.write_all(&accepted(&up.leftover)).await.is_err() {
        return;
    }
    let result = splice::quic(
        (&mut send, &mut recv),
        (&mut up.send, &mut up.recv),
        Bytes::new(),
    )
    .await;
    log_end(&relay, &hello.service, up.ahead, result);
}

/// Serves one TLS connection that negotiated `sat-client/1`: a single tunnel.
pub async fn serve_tls<S>(stream: S, peer: SocketAddr, relay: Arc<Relay>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let (hello, first) = match header::read(&mut r, ClientHeader::decode, HEADER_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => return refuse_io(&relay, &mut w, RejectCode::BadHeader, e.to_string()).await,
    };
    let _guard = relay.stream_guard(StreamClass::Tunnel);
    let opening = Instant::now();
    let mut up = match open_upstream(&relay, &hello, peer, first, &mut r).await {
        Ok(up) => up,
        Err(e) => {
            if let Some((code, msg)) = refusal(e, &relay.name) {
                refuse_io(&relay, &mut w, code, msg).await;
            }
            return;
        }
    };
    relay.metrics.tunnel_set_up(opening);
    if w.write_all(&accepted(&up.leftover)).await.is_err() {
        return;
    }
    let result = splice::io(r, w, &mut up.send, &mut up.recv, Bytes::new()).await;
    log_end(&relay, &hello.service, up.ahead, result);
}

/// Checks the service and the client's access token against the pushed config, opens the
/// service's stream to the control plane with the client's `first` bytes, and waits for the
/// answer, passing on what `client` sends meanwhile.
async fn open_upstream<R>(
    relay: &Relay,
    hello: &ClientHeader,
    peer: SocketAddr,
    first: Bytes,
    client: &mut R,
) -> Result<Answered, OpenError>
where
    R: AsyncRead + Unpin,
{
    let service = &hello.service;
    let routes = relay.routes().ok_or(OpenError::refused(
        RejectCode::NoUplink,
        format!(
            "relay {} has no configuration from the control plane yet; retry shortly",
            relay.name
        ),
    ))?;
    match routes.kind(service) {
        Some(StreamKind::Tcp) => {}
        Some(StreamKind::Http) => {
            return Err(OpenError::refused(
                RejectCode::WrongKind,
                format!(
                    "service \"{service}\" is an HTTP service; open it in a browser or with curl"
                ),
            ))
        }
        None => {
            return Err(OpenError::refused(
                RejectCode::UnknownService,
                format!("unknown service \"{service}\""),
            ))
        }
    }
    routes
        .authorize(service, Some(&hello.token), clock::unix_seconds())
        .map_err(|e| OpenError::refused(RejectCode::Unauthorized, e.to_string()))?;
    let header = StreamHeader {
        kind: StreamKind::Tcp,
        service: service.clone(),
        user_addr: peer,
        identity: String::new(),
    };
    relay.uplinks.open_answered(&header, first, client).await
}

/// What to tell a client whose tunnel could not be opened; nothing when it is already gone.
fn refusal(e: OpenError, relay: &str) -> Option<(RejectCode, String)> {
    match e {
        OpenError::UserGone(e) => {
            debug!("the client gave a tunnel up before its answer: {e}");
            None
        }
        e => Some(e.into_refusal(relay)),
    }
}

/// The acceptance to pass on to the client, with what followed it.
fn accepted(leftover: &Bytes) -> Bytes {
    let mut buf = BytesMut::with_capacity(3 + leftover.len());
    Response::Accepted.encode(&mut buf);
    buf.extend_from_slice(leftover);
    buf.freeze()
}

/// Counts and logs a tunnel's end; `ahead` bytes went up before the answer.
fn log_end(
    relay: &Relay,
    service: &str,
    ahead: u64,
    result: Result<splice::Moved, splice::Aborted>,
) {
    let (mut moved, ended) = splice::outcome(result);
    moved.into_quic += ahead;
    relay
        .metrics
        .tunnel_moved(moved.into_quic, moved.out_of_quic);
    match ended {
        None => debug!(
            service,
            up = moved.into_quic,
            down = moved.out_of_quic,
            "tunnel closed"
        ),
        Some(e) => debug!(service, "tunnel aborted: {e}"),
    }
}

fn encode_refusal(code: RejectCode, message: String) -> Bytes {
    info!("tunnel refused: {message}");
    let mut buf = BytesMut::new();
    Response::reject(code, message).encode(&mut buf);
    buf.freeze()
}

async fn refuse_quic(relay: &Relay, send: &mut SendStream, code: RejectCode, message: String) {
    relay.metrics.refusals.count(code);
    let _ = send.write_all(&encode_refusal(code, message)).await;
    let _ = send.finish();
}

async fn refuse_io<W: AsyncWrite + Unpin>(
    relay: &Relay,
    w: &mut W,
    code: RejectCode,
    message: String,
) {
    relay.metrics.refusals.count(code);
    let _ = w.write_all(&encode_refusal(code, message)).await;
    let _ = w.shutdown().await;
}
