//! The control plane's entry point: the sockets it serves, and `run`, which starts every task
//! and drains them at the end.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use sat_geo::dns::{DnsSection, DnsSockets};
use sat_transport::pin::CertSlot;
use sat_transport::tls::{self, ClientAuth, QuicLimits};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::certs::{renew_server_cert, server_identity};
use crate::pki::Ca;
use crate::pool::Pool;
use crate::registry::Registry;
use crate::secrets::{Signer, StatusToken};
use crate::snapshot::Sources;
use crate::state::{Listening, Shared};
use crate::store::Store;
use crate::uplink::serve_uplink;
use crate::{admin, dns, publish, services, ControlConfig, ControlError};

/// The sockets a control plane serves, bound by the caller before `run`.
pub struct Sockets {
    /// QUIC: relay uplinks and enrolment.
    pub uplink: std::net::UdpSocket,
    /// HTTP: the admin API, `/healthz` and `/readyz`.
    pub admin: std::net::TcpListener,
    /// Geo DNS, UDP and TCP on one port, if the config has `[dns]`.
    pub dns: Option<DnsSockets>,
}

impl Sockets {
    /// Binds what `config` asks for, announcing each socket with `listening on`.
    pub fn bind(config: &ControlConfig) -> Result<Self, ControlError> {
        let bind_err =
            |what: &'static str, addr| move |source| ControlError::Bind { what, addr, source };
        let uplink = std::net::UdpSocket::bind(config.control.listen)
            .map_err(bind_err("uplinks (udp)", config.control.listen))?;
        let admin = std::net::TcpListener::bind(config.admin.listen)
            .map_err(bind_err("admin API (tcp)", config.admin.listen))?;
        admin
            .set_nonblocking(true)
            .map_err(bind_err("admin API (tcp)", config.admin.listen))?;
        let dns = config.dns.as_ref().map(DnsSection::bind).transpose()?;
        if let Ok(addr) = uplink.local_addr() {
            info!("listening on quic {addr}");
        }
        if let Ok(addr) = admin.local_addr() {
            info!("listening on admin {addr}");
            if !addr.ip().is_loopback() {
                warn!("the admin API is plain HTTP on a non-loopback address; put it behind TLS");
            }
        }
        Ok(Self { uplink, admin, dns })
    }
}

/// Runs a control plane on `sockets` until `shutdown` is cancelled, then drains: relays are
/// told to send new work elsewhere, streams in flight get `drain_grace` to finish, and the
/// rest are cut.
pub async fn run(
    config: ControlConfig,
    sockets: Sockets,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    // Before anything is written: a wrong GeoIP path stops us here.
    let geoip = config
        .dns
        .as_ref()
        .map(DnsSection::open_geoip)
        .transpose()?;
    let dir = &config.control.data_dir;
    // Owner-only: it holds the CA key, the admin token and the store.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ControlError::Io {
            path: dir.clone(),
            source,
        })?;
    let store = Store::open(&dir.join("sat.db")).await?;
    services::seed(&store, &config).await?;
    let ca = match &config.ca {
        Some(files) => Ca::load_files(&files.cert, &files.key)?,
        None => Ca::load_or_create(dir, "Satellite control plane CA")?,
    };
    let signer = Signer::load_or_create(&store).await?;
    crate::secrets::ensure_admin_token(&store, dir).await?;
    let status_token = StatusToken::load_or_create(dir)?;

    let certs = Arc::new(CertSlot::new(&server_identity(
        &ca,
        &config.control.server_names,
    )?)?);
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der())
        .map_err(sat_transport::TransportError::Tls)?;
    let alpn = [sat_proto::ALPN_UPLINK, sat_proto::ALPN_ENROL];
    let tls = tls::server_config_with(certs.clone(), ClientAuth::Optional(roots), &alpn)?;
    let server = tls::quic_server_config(tls, QuicLimits::UPLINK)?;
    // Kept across restarts: after a crash, relays' old uplinks are reset at once rather
    // than left to time out, so they reconnect within a round trip.
    let reset = tls::reset_secret(dir).map_err(|source| ControlError::Io {
        path: dir.join("quic-reset.key"),
        source,
    })?;
    let listening = Listening {
        uplink: sockets.uplink.local_addr().ok(),
        admin: sockets.admin.local_addr().ok(),
    };
    let endpoint = tls::server_endpoint(sockets.uplink, server, Some(&reset))
        .map_err(ControlError::Endpoint)?;

    let registry = Registry::default();
    let sources = Sources::load(&store, signer.verify_keys()).await?;
    let generation = store.bump_generation().await?;
    let first = sources.snapshot(
        generation,
        sources.relays(&registry),
        registry.routing_table(),
    );
    info!(
        name = %config.control.name,
        services = first.services.len(),
        generation,
        ca = %sat_transport::pin::hex(&ca.fingerprint()),
        "control plane up"
    );
    let (tx, snapshot) = watch::channel(Arc::new(first));
    let (publish_requests, requests) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        store,
        ca,
        signer,
        registry,
        snapshot,
        publish_requests,
        http: Pool::new(&config.backend),
        control: config.control.clone(),
        backend: config.backend.clone(),
        draining: shutdown.clone(),
        streams: TaskTracker::new(),
        geoip: geoip.clone(),
        status_token,
        listening,
        metrics: crate::metrics::Metrics::new(),
    });

    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();
    background.spawn(publish::run(
        shared.clone(),
        tx,
        requests,
        sources,
        stop_background.clone(),
    ));
    background.spawn(renew_server_cert(
        shared.clone(),
        certs,
        stop_background.clone(),
    ));
    let admin = tokio::net::TcpListener::from_std(sockets.admin).map_err(ControlError::Endpoint)?;
    background.spawn(admin::server::serve(
        admin,
        shared.clone(),
        stop_background.clone(),
    ));
    if let (Some(dns), Some(sockets), Some(geoip)) = (&config.dns, sockets.dns, geoip) {
        background.spawn(dns::serve(
            dns.authority.clone(),
            sockets,
            geoip,
            shared.metrics.dns.clone(),
            shared.snapshot.clone(),
            stop_background.clone(),
        ));
    }

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
    stop_background.cancel();
    background.close();
    background.wait().await;
    endpoint.wait_idle().await;
    shared.store.close().await;
    info!("control plane stopped");
    Ok(())
}
