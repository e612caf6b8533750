//! A Satellite relay: it takes users' HTTPS, HTTP, TCP and `sat connect` traffic in its region
//! and carries each connection or request over one QUIC stream to the control plane, on one of
//! several uplinks. It holds no backend addresses; it knows services by name and host only,
//! from what the control plane pushes.
//!
//! - [`config`]: `relay.toml`, validated before anything binds.
//! - [`Sockets`] (in `listen`): binding, done by the caller; the HTTPS and HTTP accept loops.
//! - [`run`]: the service entry point.
//! - `identity`: enrolment with a one-time token, the files it keeps, certificate renewal.
//! - `uplink`: QUIC connections to the control plane, reconnection, heartbeats, config.
//! - `pool`: choosing an uplink for a stream, liveness, retrying an unanswered stream.
//! - `http`: routing by Host, forwarding headers, one stream per request.
//! - `public`: the relay's own endpoints, the relay map and the latency check.
//! - `tcp` and `client`: tunnels from relay TCP ports and from `sat connect`.
//! - `health`: `/healthz` and `/readyz`.
//! - `relay`: what every task of the process shares; `routes`: the pushed services and the
//!   access-token check.
//! - `measure`: round trips and clients' reports held for the next heartbeat; `peers`: the
//!   task that times the other relays.

mod client;
pub mod config;
mod error;
mod health;
mod http;
mod identity;
mod listen;
mod load;
mod measure;
mod metrics;
mod peers;
mod pool;
mod public;
mod relay;
mod routes;
mod tcp;
mod uplink;

use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use sat_geo::dns::{self, DnsConfig, DnsSection, DnsSockets};
use sat_geo::geoip::GeoIp;
use sat_routing::map::dns_table;
use sat_transport::identity::Identity;
use sat_transport::pin::CertSlot;
use sat_transport::tls::{self, QuicLimits};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use config::RelayConfig;
pub use error::RelayError;
pub use listen::Sockets;

use relay::Relay;
use routes::Routes;
use uplink::Lifecycle;

/// Runs a relay until `shutdown` is cancelled, then drains: listeners close, the control plane
/// is told, connections in flight get `drain_grace` to finish, then the uplinks say goodbye.
pub async fn run(
    config: RelayConfig,
    sockets: Sockets,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    // Before enrolling or serving: a wrong GeoIP path stops us here.
    let geoip = config
        .dns
        .as_ref()
        .map(DnsSection::open_geoip)
        .transpose()?;
    // Dual-stack where the host has IPv6, so control replicas may have either family.
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
    let mut endpoint = tls::client_endpoint(v6)
        .or_else(|_| tls::client_endpoint(v4))
        .map_err(RelayError::Endpoint)?;
    let files = identity::Files::new(&config.relay.data_dir);
    let (enrolment, id, roots) = load_or_enrol(&config, &endpoint, &files).await?;
    let certs = Arc::new(CertSlot::new(&id)?);
    let uplink_tls =
        tls::client_config_with(roots.clone(), certs.clone(), &[sat_proto::ALPN_UPLINK])?;
    endpoint.set_default_client_config(tls::quic_client_config(uplink_tls, QuicLimits::UPLINK)?);

    let mut relay = Relay::new(
        enrolment.name.clone(),
        enrolment.region.clone(),
        config.uplink.server_name.clone(),
        config.uplink.connections,
    );
    relay.location = config.relay.location;
    relay.addresses = public_addresses(&config, &sockets);
    relay.latency_url = latency_url(&sockets, &relay.addresses);
    relay.metrics.certificate(enrolment.not_after);
    let relay = Arc::new(relay);
    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();
    let renewal = identity::Renewal {
        endpoint: endpoint.clone(),
        control: config.uplink.control.clone(),
        server_name: config.uplink.server_name.clone(),
        roots,
        certs,
        files,
        enrolment,
    };
    background.spawn(identity::renew_forever(
        renewal,
        relay.clone(),
        stop_background.clone(),
    ));
    let life = Lifecycle {
        drain: shutdown.clone(),
        close: CancellationToken::new(),
    };
    let uplinks = TaskTracker::new();
    for i in 0..config.uplink.connections {
        let control = config.uplink.control[i % config.uplink.control.len()].clone();
        uplinks.spawn(uplink::maintain(
            i,
            control,
            endpoint.clone(),
            relay.clone(),
            life.clone(),
        ));
    }

    let listeners = TaskTracker::new();
    let stop = shutdown.child_token();
    let https_identity = match &config.https {
        Some(h) => Some(Identity::load(&h.cert, &h.key)?),
        None => None,
    };
    if let (Some(listener), Some(identity)) = (sockets.https, &https_identity) {
        let alpn: &[&[u8]] = &[b"h2", b"http/1.1", sat_proto::ALPN_CLIENT];
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(identity, None, alpn)?));
        let listener = tokio::net::TcpListener::from_std(listener).map_err(RelayError::Endpoint)?;
        listeners.spawn(listen::serve_https(
            listener,
            acceptor,
            config.http.clone(),
            relay.clone(),
            stop.clone(),
        ));
    }
    let mut client_endpoint = None;
    if let (Some(socket), Some(identity)) = (sockets.quic, &https_identity) {
        let tls = tls::server_config(identity, None, &[sat_proto::ALPN_CLIENT])?;
        let server = tls::quic_server_config(tls, QuicLimits::CLIENT)?;
        // A restarted relay resets its clients' old connections at once; they redial.
        let dir = &config.relay.data_dir;
        let reset = tls::reset_secret(dir).map_err(|source| RelayError::Io {
            path: dir.join("quic-reset.key"),
            source,
        })?;
        let ep =
            tls::server_endpoint(socket, server, Some(&reset)).map_err(RelayError::Endpoint)?;
        listeners.spawn(accept_clients(ep.clone(), relay.clone(), stop.clone()));
        client_endpoint = Some(ep);
    }
    if let Some(listener) = sockets.http {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(RelayError::Endpoint)?;
        listeners.spawn(listen::serve_plain(
            listener,
            config.http.clone(),
            relay.clone(),
            stop.clone(),
        ));
    }
    for (service, listener) in sockets.tcp {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(RelayError::Endpoint)?;
        listeners.spawn(tcp::serve(listener, service, relay.clone(), stop.clone()));
    }
    background.spawn(peers::run(relay.clone(), stop_background.clone()));
    if let (Some(dns_sockets), Some(dns), Some(geoip)) = (sockets.dns, &config.dns, geoip) {
        background.spawn(serve_dns(
            dns.authority.clone(),
            dns_sockets,
            geoip,
            relay.metrics.dns.clone(),
            relay.routes.subscribe(),
            stop_background.clone(),
        ));
    }
    if let Some(listener) = sockets.health {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(RelayError::Endpoint)?;
        // Health answers until the very end, so that load balancers see the drain (503).
        background.spawn(health::serve(
            listener,
            relay.clone(),
            stop_background.clone(),
        ));
    }

    shutdown.cancelled().await;
    relay.draining.cancel();
    listeners.close();
    listeners.wait().await;
    let grace = config.relay.drain_grace;
    info!(
        in_flight = relay.users.len(),
        ?grace,
        "draining: listeners closed; waiting for connections in flight"
    );
    relay.users.close();
    if tokio::time::timeout(grace, relay.users.wait())
        .await
        .is_err()
    {
        warn!(
            cut = relay.users.len(),
            "drain grace over; cutting remaining connections"
        );
    }
    life.close.cancel();
    uplinks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), uplinks.wait()).await;
    stop_background.cancel();
    background.close();
    background.wait().await;
    if let Some(ep) = client_endpoint {
        ep.close(0u32.into(), b"relay stopped");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    info!("relay stopped");
    Ok(())
}

/// Geo DNS from the relay map of each config push, so that a relay the control plane marks
/// down or draining stops being handed out with the next push.
async fn serve_dns(
    config: DnsConfig,
    sockets: DnsSockets,
    geoip: Arc<GeoIp>,
    metrics: dns::DnsMetrics,
    routes: watch::Receiver<Option<Arc<Routes>>>,
    stop: CancellationToken,
) {
    // The push's generation becomes the zone's SOA serial.
    let to_table = |r: &Option<Arc<Routes>>| {
        r.as_ref()
            .map(|r| dns_table(r.relays(), &r.routing).with_generation(r.generation))
    };
    if let Err(e) = dns::serve_from(config, sockets, geoip, metrics, routes, to_table, stop).await {
        error!("{e}");
    }
}

/// The stored identity, or a new one from the enrolment token.
async fn load_or_enrol(
    config: &RelayConfig,
    endpoint: &Endpoint,
    files: &identity::Files,
) -> Result<(identity::Enrolment, Identity, rustls::RootCertStore), RelayError> {
    let token = config.relay.token.as_ref().map(|t| t.expose());
    let stored = files.load()?;
    if let Some((enrolment, id, roots)) = stored {
        let expired = enrolment.not_after <= sat_proto::clock::unix_seconds();
        let same_token = token.is_some_and(|t| {
            sat_proto::enrol::EnrolToken::parse(t).is_ok_and(|t| t.id == enrolment.token_id)
        });
        let new_token = token.is_some() && !same_token;
        if new_token {
            info!(relay = %enrolment.name, "a new enrolment token was given: enrolling again");
        } else if !expired {
            if same_token {
                info!(relay = %enrolment.name, "already enrolled with this token; ignoring it");
            }
            if config
                .relay
                .name
                .as_ref()
                .is_some_and(|n| n != &enrolment.name)
            {
                warn!(enrolled = %enrolment.name, "relay.name differs from the enrolled name; the enrolled name is used");
            }
            return Ok((enrolment, id, roots));
        }
        if !new_token {
            return Err(RelayError::Enrol {
                message: format!(
                    "the relay certificate in {} expired while the relay was off; enrol again with a new token (`sat admin relay-token create --region {} --name {}`, then `sat relay --token ...`)",
                    config.relay.data_dir.display(),
                    enrolment.region,
                    enrolment.name
                ),
                retry: false,
            });
        }
    }
    let Some(token) = token else {
        return Err(RelayError::Enrol {
            message: format!(
                "this relay is not enrolled yet (nothing in {}); create a token on the control plane with `sat admin relay-token create --region REGION` and start the relay with `--token TOKEN` (or SAT_RELAY_TOKEN)",
                config.relay.data_dir.display()
            ),
            retry: false,
        });
    };
    identity::enrol(
        endpoint,
        &config.uplink.control,
        &config.uplink.server_name,
        token,
        config.relay.name.as_deref(),
        files,
    )
    .await
}

/// The relay's latency-check URL: its first public address, over HTTPS if it serves HTTPS
/// (else plain HTTP), on the port it listens on when the address names none.
fn latency_url(sockets: &Sockets, addresses: &[String]) -> Option<String> {
    let port = |l: &Option<std::net::TcpListener>| Some(l.as_ref()?.local_addr().ok()?.port());
    let (scheme, port) = match (port(&sockets.https), port(&sockets.http)) {
        (Some(https), _) => ("https", https),
        (None, Some(http)) => ("http", http),
        (None, None) => return None,
    };
    let authority = with_port(
        addresses.first()?,
        port,
        if scheme == "https" { 443 } else { 80 },
    );
    Some(format!("{scheme}://{authority}{}", public::LATENCY_PATH))
}

/// `address` as a URL authority: a public address given without a port (a bare IP or host
/// name, which geo DNS hands out as is) is reached on the port the relay listens on, so the
/// URL names that port unless it is the scheme's default.
fn with_port(address: &str, port: u16, default_port: u16) -> String {
    let has_port = sat_proto::control::names_port(address);
    let host = match address.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => address.to_owned(),
    };
    if has_port || port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Where users reach this relay: as configured, or else the addresses it listens on.
fn public_addresses(config: &RelayConfig, sockets: &Sockets) -> Vec<String> {
    if !config.relay.public_addresses.is_empty() {
        return config.relay.public_addresses.clone();
    }
    let tcp = [&sockets.https, &sockets.http];
    // A wildcard address says nothing about where users reach the relay.
    tcp.iter()
        .filter_map(|l| l.as_ref().and_then(|l| l.local_addr().ok()))
        .filter(|a| !a.ip().is_unspecified())
        .map(|a| a.to_string())
        .collect()
}

async fn accept_clients(endpoint: Endpoint, relay: Arc<Relay>, stop: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => return,
            },
            () = stop.cancelled() => {
                endpoint.set_server_config(None);
                return;
            }
        };
        relay
            .users
            .spawn(client::serve_quic(incoming, relay.clone(), stop.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn a_public_address_without_a_port_takes_the_listening_port() {
        assert_eq!(with_port("192.0.2.7", 8443, 443), "192.0.2.7:8443");
        assert_eq!(with_port("2001:db8::7", 8443, 443), "[2001:db8::7]:8443");
        assert_eq!(
            with_port("relay.example.net", 8443, 443),
            "relay.example.net:8443"
        );
        assert_eq!(with_port("192.0.2.7", 443, 443), "192.0.2.7");
    }

    #[test]
    fn a_public_address_with_a_port_is_kept() {
        assert_eq!(with_port("192.0.2.7:443", 8443, 443), "192.0.2.7:443");
        assert_eq!(
            with_port("[2001:db8::7]:443", 8443, 443),
            "[2001:db8::7]:443"
        );
        assert_eq!(
            with_port("relay.example.net:443", 8443, 443),
            "relay.example.net:443"
        );
    }
}
