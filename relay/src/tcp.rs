//! A relay TCP port: every connection to it is a tunnel to one TCP service.
//!
//! A raw TCP connection has nowhere to carry an access token, so a port whose service needs
//! one closes every connection at once; such a service is reached with `sat connect --token`.

use std::sync::Arc;

use bytes::Bytes;
use sat_proto::stream::{RejectCode, StreamHeader, StreamKind};
use sat_transport::metrics::StreamClass;
use sat_transport::splice;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::pool::{Answered, OpenError};
use crate::relay::Relay;

pub async fn serve(
    listener: TcpListener,
    service: String,
    relay: Arc<Relay>,
    stop: CancellationToken,
) {
    // Said once per listener: the operator's mistake, which more connections do not change.
    let mut warned = false;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    info!("accept on tcp port for {service} failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // (A service the config does not know is refused by `tunnel`, with its own message.)
        let token_only = relay
            .routes()
            .is_some_and(|r| r.kind(&service).is_some() && r.needs_token(&service));
        if token_only {
            if !std::mem::replace(&mut warned, true) {
                warn!(
                    "service {service} requires an access token; raw TCP ports cannot carry one \
                     — use `sat connect --token` or make the service public"
                );
            }
            debug!(%peer, %service, "connection closed: the service requires an access token");
            drop(tcp);
            continue;
        }
        let span = info_span!("tunnel", %peer, %service);
        relay
            .users
            .spawn(tunnel(tcp, service.clone(), relay.clone()).instrument(span));
    }
}

async fn tunnel(mut tcp: TcpStream, service: String, relay: Arc<Relay>) {
    let _ = tcp.set_nodelay(true);
    let Ok(peer) = tcp.peer_addr() else { return };
    let routes = relay.routes();
    if routes.as_ref().and_then(|r| r.kind(&service)) != Some(StreamKind::Tcp) {
        // Unknown to the pushed config (or no config yet): the user gets a plain close.
        relay.metrics.refusals.count(RejectCode::UnknownService);
        return info!("refused: service \"{service}\" is not a TCP service in the current config");
    }
    let header = StreamHeader {
        kind: StreamKind::Tcp,
        service,
        user_addr: peer,
        identity: String::new(),
    };
    let _guard = relay.stream_guard(StreamClass::Tunnel);
    let opening = Instant::now();
    let Answered {
        mut send,
        mut recv,
        leftover,
        ahead,
    } = match relay
        .uplinks
        .open_answered(&header, Bytes::new(), &mut tcp)
        .await
    {
        Ok(answered) => {
            relay.metrics.tunnel_set_up(opening);
            answered
        }
        Err(OpenError::UserGone(e)) => return debug!("the user left before the answer: {e}"),
        Err(OpenError::Reset) => {
            // Linger 0 turns the close into a RST, as the service's own was.
            let _ = tcp.set_zero_linger();
            return debug!("the service reset the tunnel before the answer");
        }
        Err(e) => {
            let (code, message) = e.into_refusal(&relay.name);
            relay.metrics.refusals.count(code);
            return info!("refused: {message}");
        }
    };
    let (mut moved, ended) =
        splice::outcome(splice::tcp(tcp, &mut send, &mut recv, leftover).await);
    moved.into_quic += ahead;
    relay
        .metrics
        .tunnel_moved(moved.into_quic, moved.out_of_quic);
    match ended {
        None => debug!(
            up = moved.into_quic,
            down = moved.out_of_quic,
            "tunnel closed"
        ),
        Some(e) => debug!("tunnel aborted: {e}"),
    }
}
