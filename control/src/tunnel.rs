//! A TCP stream: dial the service's backend, answer, splice.

use std::io::ErrorKind;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use sat_proto::stream::RejectCode;
use sat_transport::splice;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::answer::{accept, reject};
use crate::config::BackendSection;
use crate::services::Service;
use crate::state::Shared;

pub(crate) async fn serve(
    service: &Service,
    first: Bytes,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: &Shared,
) {
    let metrics = &shared.metrics;
    let dialling = Instant::now();
    let tcp = match dial(service, &shared.backend).await {
        Ok(tcp) => tcp,
        Err((code, message)) => return reject(&mut send, &metrics.refusals, code, message).await,
    };
    metrics.tunnel_set_up(dialling);
    if accept(&mut send).await.is_err() {
        return;
    }
    let (moved, ended) = splice::outcome(splice::tcp(tcp, &mut send, &mut recv, first).await);
    metrics.tunnel_moved(moved.out_of_quic, moved.into_quic);
    match ended {
        None => debug!(
            to_backend = moved.out_of_quic,
            from_backend = moved.into_quic,
            "tunnel closed"
        ),
        Some(e) => debug!("tunnel aborted: {e}"),
    }
}

/// Connects to the service's configured backend. The error is what the user is told; the
/// backend's address goes to our log only.
pub(crate) async fn dial(
    service: &Service,
    backend: &BackendSection,
) -> Result<TcpStream, (RejectCode, String)> {
    let name = &service.name;
    let connect = TcpStream::connect(service.backend.as_str());
    match tokio::time::timeout(backend.connect_timeout, connect).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => {
            info!(backend = %service.backend, "backend dial failed: {e}");
            let code = match e.kind() {
                ErrorKind::ConnectionRefused => RejectCode::BackendRefused,
                ErrorKind::TimedOut => RejectCode::BackendTimeout,
                _ => RejectCode::BackendUnreachable,
            };
            let what = match code {
                RejectCode::BackendRefused => "refused the connection".to_string(),
                _ => format!("is unreachable ({})", e.kind()),
            };
            Err((code, format!("backend of service \"{name}\" {what}")))
        }
        Err(_) => {
            info!(backend = %service.backend, "backend dial timed out");
            Err((
                RejectCode::BackendTimeout,
                format!(
                    "backend of service \"{name}\" did not accept a connection within {:?}",
                    backend.connect_timeout
                ),
            ))
        }
    }
}
