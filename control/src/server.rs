//! The control plane's entry point and the life of one uplink connection.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use rustls::RootCertStore;
use sat_geo::dns::{self, DnsConfig, DnsSection, DnsSockets};
use sat_geo::geoip::GeoIp;
use sat_proto::close;
use sat_proto::stream::{RejectCode, Response, StreamHeader, StreamKind};
use sat_transport::header::{self, HeaderError};
use sat_transport::pin::CertSlot;
use sat_transport::routing::dns_table;
use sat_transport::tls::{self, ClientAuth, Identity, QuicLimits};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::{BackendSection, ControlSection};
use crate::pki::{Ca, Usage};
use crate::publish::{self, Snapshot, Sources};
use crate::registry::Registry;
use crate::secrets::Signer;
use crate::store::{RelayAdminState, Store};
use crate::{admin, channel, enrol, http, tunnel, ControlConfig, ControlError};

/// How long a relay has to send a stream's header once it opened the stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The control plane's own uplink certificate: reissued at every start and every day, when
/// expired relay certificates are also forgotten.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const SERVER_CERT_RENEW_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What every task of this process shares.
pub(crate) struct Shared {
    pub store: Store,
    pub ca: Ca,
    pub signer: Signer,
    pub registry: Registry,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Asks the publisher to publish what the store holds; see [`Shared::publish`].
    pub publish_requests: mpsc::UnboundedSender<publish::PublishRequest>,
    pub control: ControlSection,
    pub backend: BackendSection,
    pub http: http::Pool,
    /// Cancelled when the process starts draining: new streams are refused from then on.
    pub draining: CancellationToken,
    /// Every data stream in flight, so that a drain can wait for them.
    pub streams: TaskTracker,
}

/// How long a change waits for the publisher before its caller carries on regardless.
const PUBLISH_WAIT: Duration = Duration::from_secs(2);

impl Shared {
    /// Publishes what the store holds now, and returns once relays have been sent a config
    /// that includes it: an operator who adds a service and then uses it finds it there.
    pub(crate) async fn publish(&self) {
        let (tx, rx) = oneshot::channel();
        if self.publish_requests.send(tx).is_ok() {
            let _ = tokio::time::timeout(PUBLISH_WAIT, rx).await;
        }
    }
}

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
    seed_services(&store, &config).await?;
    let ca = match &config.ca {
        Some(files) => Ca::load_files(&files.cert, &files.key)?,
        None => Ca::load_or_create(dir, "Satellite control plane CA")?,
    };
    let signer = Signer::load_or_create(&store).await?;
    crate::secrets::ensure_admin_token(&store, dir).await?;

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
        http: http::Pool::new(&config.backend),
        control: config.control.clone(),
        backend: config.backend.clone(),
        draining: shutdown.clone(),
        streams: TaskTracker::new(),
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
        background.spawn(serve_dns(
            dns.authority.clone(),
            sockets,
            geoip,
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

/// Geo DNS from this control plane's own snapshots, the relay map it pushes: a relay it marks
/// down or draining leaves the answers with the snapshot that says so, as it leaves the relays'
/// answers with the push.
async fn serve_dns(
    config: DnsConfig,
    sockets: DnsSockets,
    geoip: Arc<GeoIp>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
) {
    let to_table = |s: &Arc<Snapshot>| Some(dns_table(&s.push.relays, &s.push.routing));
    if let Err(e) = dns::serve_from(config, sockets, geoip, snapshots, to_table, stop).await {
        error!("{e}");
    }
}

/// On the very first start, `[[service]]` entries of the config become the store's services.
/// Later starts leave the store alone: from then on services are managed with `sat admin`.
async fn seed_services(store: &Store, config: &ControlConfig) -> Result<(), ControlError> {
    if store.meta("seeded").await?.is_some() {
        if !config.services.is_empty() {
            info!("[[service]] entries in the config were seeded on first start; the store is authoritative now (use `sat admin services`)");
        }
        return Ok(());
    }
    let now = publish::now_ms();
    for s in &config.services {
        let record = crate::store::ServiceRecord {
            name: s.name.clone(),
            kind: s.kind,
            backend: s.backend.clone(),
            hostnames: s.hostnames.clone(),
            access: s.access,
            created_at: now,
        };
        store.insert_service(&record).await?;
    }
    store.set_meta("seeded", &now.to_string()).await?;
    info!(
        services = config.services.len(),
        "seeded services from the config"
    );
    Ok(())
}

fn server_identity(ca: &Ca, names: &[String]) -> Result<Identity, ControlError> {
    let issued = ca.issue(names, Usage::Server, SERVER_CERT_LIFETIME)?;
    // The CA goes in the chain so that a relay enrolling with a pinned fingerprint finds it.
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    Ok(Identity::from_pem(&chain, &issued.key_pem)?)
}

async fn renew_server_cert(shared: Arc<Shared>, certs: Arc<CertSlot>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SERVER_CERT_RENEW_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let renewed = server_identity(&shared.ca, &shared.control.server_names)
            .and_then(|id| Ok(certs.replace(&id)?));
        match renewed {
            Ok(()) => info!("renewed the control plane's uplink certificate"),
            Err(e) => warn!("cannot renew the control plane's uplink certificate: {e}"),
        }
        // Records of relay certificates that expired a day ago or more serve no purpose.
        let day = SERVER_CERT_RENEW_EVERY.as_millis() as i64;
        match shared
            .store
            .prune_relay_certs(publish::now_ms() - day)
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "forgot expired relay certificates"),
            Err(e) => warn!("cannot prune expired relay certificates: {e}"),
        }
    }
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
                        shared.registry.disconnected(&relay, &conn);
                        accepting.await;
                    }
                }
            }
            () = &mut accepting => {}
        }
        shared.registry.disconnected(&relay, &conn);
    }
    .instrument(span)
    .await
}

/// Why a peer was turned away, and whether it may try again as it is.
pub(crate) struct Refusal {
    pub code: u32,
    pub reason: String,
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        String::from(reason).into()
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self {
            code: close::REFUSED,
            reason,
        }
    }
}

/// Who the peer of an uplink is, if we let it in: a certificate this control plane issued,
/// to a relay that is not revoked.
pub(crate) async fn authorize(conn: &Connection, shared: &Shared) -> Result<String, Refusal> {
    let leaf = tls::peer_leaf(conn).ok_or(
        "no client certificate: an uplink needs the certificate the relay got at enrolment",
    )?;
    let name = tls::leaf_name(&leaf).ok_or("client certificate names no relay")?;
    let (serial, _) = tls::serial_and_expiry(&leaf).ok_or("unreadable client certificate")?;
    let unavailable = |e| Refusal {
        code: close::TRY_AGAIN,
        reason: format!("control plane cannot check relay identity now ({e}); retry"),
    };
    // The relay's state first: a revoked relay hears that it is revoked, not merely that its
    // certificate (forgotten at the revocation) is unknown.
    match shared.store.relay(&name).await.map_err(unavailable)? {
        Some(r) if r.state == RelayAdminState::Revoked => {
            return Err(format!(
                "relay \"{name}\" has been revoked by an operator; to bring it back, enrol it \
                 again with a new token"
            )
            .into())
        }
        // Not registered: its certificate cannot be ours either, which the check below says.
        Some(_) | None => {}
    }
    let owner = shared
        .store
        .cert_owner(&serial)
        .await
        .map_err(unavailable)?;
    if owner.as_deref() != Some(name.as_str()) {
        return Err(format!(
            "certificate {serial} for \"{name}\" is unknown to this control plane (replaced by \
             a newer enrolment, or never issued here); enrol the relay again with a new token \
             (`sat admin relay-token create`)"
        )
        .into());
    }
    Ok(name)
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
        let service = shared.snapshot.borrow().services.get(&header.service);
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
