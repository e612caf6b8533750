//! The life of one uplink connection: enrolment or authorization, the control channel, and
//! each data stream it carries, handed to the TCP or HTTP handler by its service.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use sat_proto::close;
use sat_proto::stream::{RejectCode, StreamHeader, StreamKind};
use sat_transport::header::{self, HeaderError};
use sat_transport::metrics::StreamClass;
use sat_transport::tls;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::answer::reject;
use crate::authorize::{authorize, Refusal};
use crate::state::Shared;
use crate::{channel, enrol, http, tunnel};

/// How long a relay has to send a stream's header once it opened the stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one incoming QUIC connection until it closes: an enrolment, or a relay's uplink.
pub(crate) async fn serve_uplink(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // A relay with a certificate we do not trust lands here.
            warn!(peer = %remote, "uplink handshake failed: {e}");
            return;
        }
    };
    if tls::alpn(&conn).as_deref() == Some(sat_proto::ALPN_ENROL) {
        let span = info_span!("enrol", conn = conn.stable_id(), peer = %remote);
        return enrol::serve(conn, shared).instrument(span).await;
    }
    let relay = match authorize(&conn, &shared).await {
        Ok(name) => name,
        Err(Refusal { code, reason }) => {
            warn!(peer = %remote, "refusing uplink: {reason}");
            return conn.close(code.into(), reason.as_bytes());
        }
    };
    let span = info_span!("uplink", conn = conn.stable_id(), peer = %remote, relay = %relay);
    async move {
        let (send, recv) = match tokio::time::timeout(HEADER_TIMEOUT, conn.accept_bi()).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return debug!("uplink closed before its control channel: {e}"),
            Err(_) => {
                warn!("no control channel within {HEADER_TIMEOUT:?}; closing");
                return conn.close(close::PROTOCOL_ERROR.into(), b"no control channel");
            }
        };
        let channel = channel::run(send, recv, &conn, &relay, &shared);
        let accepting = accept_streams(&conn, &shared);
        tokio::pin!(accepting);
        tokio::select! {
            result = channel => {
                match (result, conn.close_reason()) {
                    (Err(_), Some(closed)) => info!("uplink closed: {closed}"),
                    (Err(reason), None) => {
                        warn!("closing uplink: {reason}");
                        conn.close(close::PROTOCOL_ERROR.into(), reason.as_bytes());
                    }
                    // A goodbye: the relay opens no new streams here, but some may be on
                    // their way; serve them until the relay closes the connection.
                    (Ok(()), _) => {
                        shared.registry.disconnected(&relay, &conn, &shared.metrics.quic);
                        accepting.await;
                    }
                }
            }
            () = &mut accepting => {}
        }
        shared
            .registry
            .disconnected(&relay, &conn, &shared.metrics.quic);
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
            return reject(
                &mut send,
                &shared.metrics.refusals,
                RejectCode::BadHeader,
                e.to_string(),
            )
            .await;
        }
    };
    let class = match header.kind {
        StreamKind::Tcp => StreamClass::Tunnel,
        StreamKind::Http => StreamClass::Http,
    };
    let _open = shared.metrics.streams.open(class);
    let span = info_span!("stream", service = %header.service, user = %header.user_addr);
    async move {
        if shared.draining.is_cancelled() {
            return reject(
                &mut send,
                &shared.metrics.refusals,
                RejectCode::Draining,
                "control plane is draining; retry",
            )
            .await;
        }
        let service = shared.snapshot.borrow().services.get(&header.service);
        let Some(service) = service else {
            let msg = format!("unknown service \"{}\"", header.service);
            return reject(
                &mut send,
                &shared.metrics.refusals,
                RejectCode::UnknownService,
                msg,
            )
            .await;
        };
        if service.kind != header.kind {
            let msg = format!(
                "service \"{}\" is {}, not {}",
                service.name, service.kind, header.kind
            );
            return reject(
                &mut send,
                &shared.metrics.refusals,
                RejectCode::WrongKind,
                msg,
            )
            .await;
        }
        match header.kind {
            StreamKind::Tcp => tunnel::serve(&service, first, send, recv, &shared).await,
            StreamKind::Http => http::serve(service, first, send, recv, &shared).await,
        }
    }
    .instrument(span)
    .await
}
