//! The control plane's entry point and the life of one uplink connection.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use sat_proto::stream::{RejectCode, Response, StreamHeader, StreamKind};
use sat_transport::header::{self, HeaderError};
use sat_transport::tls::{self, QuicLimits};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::BackendSection;
use crate::services::ServiceTable;
use crate::{channel, http, tunnel, ControlConfig, ControlError};

/// How long a relay has to send a stream's header once it opened the stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every uplink and stream task of this process shares.
pub(crate) struct Shared {
    pub services: watch::Receiver<Arc<ServiceTable>>,
    pub backend: BackendSection,
    pub http: http::Pool,
    /// Cancelled when the process starts draining: new streams are refused from then on.
    pub draining: CancellationToken,
    /// Every data stream in flight, so that a drain can wait for them.
    pub streams: TaskTracker,
}

/// Runs a control plane on `socket` until `shutdown` is cancelled, then drains: relays are told
/// to send new work elsewhere, streams in flight get `drain_grace` to finish, and the rest are
/// cut.
pub async fn run(
    config: ControlConfig,
    socket: std::net::UdpSocket,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    let (roots, identity) = config.tls.load()?;
    let tls = tls::server_config(&identity, Some(roots), &[sat_proto::ALPN_UPLINK])?;
    let server = tls::quic_server_config(tls, QuicLimits::UPLINK)?;
    let endpoint = tls::server_endpoint(socket, server).map_err(ControlError::Endpoint)?;

    let table = ServiceTable::new(1, &config.services);
    info!(
        name = %config.control.name,
        services = table.len(),
        "control plane up"
    );
    // The sender lives as long as the process: later, the store replaces the table through it.
    let (_services_tx, services) = watch::channel(Arc::new(table));
    let shared = Arc::new(Shared {
        services,
        http: http::Pool::new(&config.backend),
        backend: config.backend.clone(),
        draining: shutdown.clone(),
        streams: TaskTracker::new(),
    });

    let uplinks = TaskTracker::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    uplinks.spawn(serve_uplink(incoming, shared.clone()));
                }
                None => break,
            },
            () = shutdown.cancelled() => break,
        }
    }

    // Drain: refuse new uplinks, let relays move new work elsewhere, give streams their grace.
    endpoint.set_server_config(None);
    let grace = config.control.drain_grace;
    info!(
        in_flight = shared.streams.len(),
        ?grace,
        "draining: no new streams; waiting for streams in flight"
    );
    shared.streams.close();
    if tokio::time::timeout(grace, shared.streams.wait())
        .await
        .is_err()
    {
        warn!(
            cut = shared.streams.len(),
            "drain grace over; closing remaining streams"
        );
    }
    endpoint.close(0u32.into(), b"control plane shutting down");
    uplinks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), uplinks.wait()).await;
    endpoint.wait_idle().await;
    info!("control plane stopped");
    Ok(())
}

async fn serve_uplink(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // A relay with a certificate we do not trust lands here.
            warn!(peer = %remote, "uplink handshake failed: {e}");
            return;
        }
    };
    let relay = tls::peer_name(&conn).unwrap_or_else(|| "unnamed".into());
    let span = info_span!("uplink", conn = conn.stable_id(), peer = %remote, relay = %relay);
    async move {
        let (send, recv) = match tokio::time::timeout(HEADER_TIMEOUT, conn.accept_bi()).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return debug!("uplink closed before its control channel: {e}"),
            Err(_) => {
                warn!("no control channel within {HEADER_TIMEOUT:?}; closing");
                return conn.close(1u32.into(), b"no control channel");
            }
        };
        let channel = channel::run(send, recv, &conn, &relay, &shared);
        tokio::select! {
            result = channel => {
                match (result, conn.close_reason()) {
                    (Err(_), Some(closed)) => info!("uplink closed: {closed}"),
                    (Err(reason), None) => {
                        warn!("closing uplink: {reason}");
                        conn.close(1u32.into(), reason.as_bytes());
                    }
                    (Ok(()), _) => {}
                }
            }
            () = accept_streams(&conn, &shared) => {}
        }
    }
    .instrument(span)
    .await
}

async fn accept_streams(conn: &Connection, shared: &Arc<Shared>) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                shared
                    .streams
                    .spawn(serve_stream(send, recv, shared.clone()).in_current_span());
            }
            Err(e) => {
                info!("uplink closed: {e}");
                return;
            }
        }
    }
}

async fn serve_stream(mut send: SendStream, mut recv: RecvStream, shared: Arc<Shared>) {
    let (header, first) = match header::read(&mut recv, StreamHeader::decode, HEADER_TIMEOUT).await
    {
        Ok(h) => h,
        Err(HeaderError::Eof) => return,
        Err(e) => {
            debug!("bad stream header: {e}");
            return reject(&mut send, RejectCode::BadHeader, e.to_string()).await;
        }
    };
    let span = info_span!("stream", service = %header.service, user = %header.user_addr);
    async move {
        if shared.draining.is_cancelled() {
            return reject(
                &mut send,
                RejectCode::Draining,
                "control plane is draining; retry",
            )
            .await;
        }
        let service = shared.services.borrow().get(&header.service);
        let Some(service) = service else {
            let msg = format!("unknown service \"{}\"", header.service);
            return reject(&mut send, RejectCode::UnknownService, msg).await;
        };
        if service.kind != header.kind {
            let msg = format!(
                "service \"{}\" is {}, not {}",
                service.name, service.kind, header.kind
            );
            return reject(&mut send, RejectCode::WrongKind, msg).await;
        }
        match header.kind {
            StreamKind::Tcp => tunnel::serve(&service, first, send, recv, &shared.backend).await,
            StreamKind::Http => http::serve(service, first, send, recv, &shared).await,
        }
    }
    .instrument(span)
    .await
}

/// Answers a stream with a refusal and closes our side of it.
pub(crate) async fn reject(send: &mut SendStream, code: RejectCode, message: impl Into<String>) {
    let response = Response::reject(code, message);
    let mut buf = bytes::BytesMut::new();
    response.encode(&mut buf);
    let _ = send.write_all(&buf).await;
    let _ = send.finish();
}

/// Tells the relay its stream is accepted.
pub(crate) async fn accept(send: &mut SendStream) -> Result<(), quinn::WriteError> {
    let mut buf = bytes::BytesMut::with_capacity(3);
    Response::Accepted.encode(&mut buf);
    send.write_all(&buf).await
}
