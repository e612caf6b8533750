//! The admin API's server: HTTP/1.1 + JSON on its own listener. Every `/v1` request needs the
//! admin token as a Bearer header; `/healthz` and `/readyz` are open, for load balancers and
//! orchestrators. Each change is written to the store with an audit record, then the publisher
//! is woken so that relays get it within a second.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sat_proto::clock;
use sat_proto::control::Access;
use sat_proto::enrol::EnrolToken;
use sat_proto::stream::{validate_service_name, StreamKind};
use sat_transport::metrics;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::api::{
    AccessTokenView, ApiError, AuditView, CreateAccessToken, CreateRelayToken, RelayTokenView,
    RelayView, ServiceView,
};
use super::status_page;
use crate::config::ServiceConfig;
use crate::secrets::{random_hex, sha256_hex};
use crate::state::Shared;
use crate::status::{self, audit_view, relay_view, service_view};
use crate::store::{
    AccessTokenRecord, AuditRecord, RelayAdminState, RelayTokenRecord, ServiceRecord, StoreError,
};

const MAX_BODY: usize = 64 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RELAY_TOKEN_TTL: Duration = Duration::from_secs(3600);
const MAX_RELAY_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(8 * 3600);
const MAX_ACCESS_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

type Reply = Response<Full<Bytes>>;

/// An answer that is not 2xx: a status and the message for `{"error": ...}`.
struct Refusal(StatusCode, String);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        warn!("admin API: store failed: {e}");
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is unavailable: {e}"),
        )
    }
}

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::NOT_FOUND, msg.into())
}

fn conflict(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::CONFLICT, msg.into())
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%peer, "admin connection: {e}") },
                () = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = route(req, shared).await;
    match result {
        Ok(reply) => reply,
        Err(Refusal(status, message)) => {
            if status != StatusCode::UNAUTHORIZED {
                info!(%method, %path, status = status.as_u16(), "admin request refused: {message}");
            }
            json(status, &ApiError::new(message))
        }
    }
}

/// `GET /metrics`: the gauges that mirror state brought up to date, then every family.
fn metrics_page(shared: &Shared) -> Reply {
    let snapshot = shared.snapshot.borrow().clone();
    shared.registry.fold_quic(&shared.metrics.quic);
    shared.metrics.refresh(
        &snapshot.push.relays,
        snapshot.push.generation,
        shared.registry.uplink_count(),
    );
    match metrics::encode(&shared.metrics.registry) {
        Ok(page) => {
            let mut resp = Response::new(Full::new(page));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            resp
        }
        Err(e) => json(StatusCode::INTERNAL_SERVER_ERROR, &ApiError::new(e)),
    }
}

async fn route(req: Request<Incoming>, shared: &Shared) -> Result<Reply, Refusal> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["healthz"]) => {
            return Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        (&Method::GET, ["readyz"]) => return Ok(readyz(shared).await),
        // The public relay map, as relays serve it too: no token needed.
        (&Method::GET, ["api", "relays"]) => {
            let snapshot = shared.snapshot.borrow().clone();
            let map = serde_json::json!({
                "generation": snapshot.push.generation,
                "relays": snapshot.push.relays,
            });
            return Ok(json(StatusCode::OK, &map));
        }
        // For Prometheus, which carries no token: counts and states, no secrets.
        (&Method::GET, ["metrics"]) => return Ok(metrics_page(shared)),
        // The status page and its JSON: the status token or an admin token.
        (&Method::GET, ["status"]) => return Ok(status_page(&req, shared).await),
        (&Method::GET, ["api", "status"]) => {
            may_read_status(&req, shared).await?;
            let mut reply = json(StatusCode::OK, &status::gather(shared).await);
            reply.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            return Ok(reply);
        }
        (_, ["v1", ..]) => {}
        _ => return Err(not_found(format!("no such path: {method} {path}"))),
    }
    let actor = authenticate(&req, shared).await?;
    let query = req.uri().query().unwrap_or("").to_owned();
    match (&method, &parts[1..]) {
        (&Method::GET, ["relays"]) => ok(relays(shared).await?),
        (&Method::POST, ["relays", name, action]) => {
            let name = (*name).to_owned();
            ok(relay_action(shared, &actor, &name, action).await?)
        }
        (&Method::POST, ["relay-tokens"]) => {
            let body: CreateRelayToken = read_json(req).await?;
            created(create_relay_token(shared, &actor, body).await?)
        }
        (&Method::GET, ["services"]) => ok(services(shared).await?),
        (&Method::POST, ["services"]) => {
            let body: ServiceView = read_json(req).await?;
            created(add_service(shared, &actor, body).await?)
        }
        (&Method::DELETE, ["services", name]) => {
            let name = (*name).to_owned();
            ok(remove_service(shared, &actor, &name).await?)
        }
        (&Method::GET, ["tokens"]) => ok(access_tokens(shared).await?),
        (&Method::POST, ["tokens"]) => {
            let body: CreateAccessToken = read_json(req).await?;
            created(create_access_token(shared, &actor, body).await?)
        }
        (&Method::POST, ["tokens", id, "revoke"]) => {
            let id = (*id).to_owned();
            ok(revoke_access_token(shared, &actor, &id).await?)
        }
        (&Method::GET, ["audit"]) => ok(audit(shared, &query).await?),
        // The routing table as last pushed to relays: relay-to-relay round trips and what
        // clients reported per network.
        (&Method::GET, ["routing"]) => ok(shared.snapshot.borrow().push.routing.clone()),
        _ => Err(not_found(format!("no such endpoint: {method} {path}"))),
    }
}

async fn readyz(shared: &Shared) -> Reply {
    let reason = if shared.draining.is_cancelled() {
        Some("draining".to_owned())
    } else {
        shared
            .store
            .schema_version()
            .await
            .err()
            .map(|e| format!("store: {e}"))
    };
    match reason {
        None => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Some(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not ready", "reason": reason}),
        ),
    }
}

/// The admin token's holder, for the audit log.
async fn authenticate(req: &Request<Incoming>, shared: &Shared) -> Result<String, Refusal> {
    let unauthorized = |m: &str| Refusal(StatusCode::UNAUTHORIZED, m.to_owned());
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing admin token: send `Authorization: Bearer <token>` (the token is in <data_dir>/admin.token)"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <admin token>`"))?;
    // Only hashes are stored, so the lookup compares hashes and reveals nothing about tokens.
    match shared.store.admin_token_by_hash(&sha256_hex(token)).await? {
        Some(t) => Ok(format!("admin:{}", t.id)),
        None if shared.status_token.matches(token) => Err(Refusal(
            StatusCode::FORBIDDEN,
            "the status token reads only GET /status and GET /api/status; this needs the admin \
             token (in <data_dir>/admin.token)"
                .to_owned(),
        )),
        None => Err(unauthorized("the admin token is not valid")),
    }
}

/// The token a reader of the status presented: the Bearer header, else the `token` query
/// parameter, since a browser cannot put a header on a link or a bookmark.
fn presented_token(req: &Request<Incoming>) -> Option<&str> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// Lets a request read the status if it presents the status token or an admin token. A
/// refusal says which tokens would do, and where they are.
async fn may_read_status(req: &Request<Incoming>, shared: &Shared) -> Result<(), Refusal> {
    let refused = |what: &str| {
        let status = shared.status_token.path();
        Refusal(
            StatusCode::UNAUTHORIZED,
            format!(
                "{what}: reading the status needs the status token (in {}) or the admin token \
                 (in {}); open /status?token=TOKEN, or send `Authorization: Bearer TOKEN`",
                status.display(),
                status.with_file_name("admin.token").display()
            ),
        )
    };
    let token = presented_token(req)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused("no token"))?;
    // The status token first: it needs no store, so the page works while the store is down.
    if shared.status_token.matches(token) {
        return Ok(());
    }
    match shared.store.admin_token_by_hash(&sha256_hex(token)).await? {
        Some(_) => Ok(()),
        None => Err(refused("the token is not valid")),
    }
}

/// `GET /status`: the page, or a short page saying which token it needs.
async fn status_page(req: &Request<Incoming>, shared: &Shared) -> Reply {
    let (status, body) = match may_read_status(req, shared).await {
        Ok(()) => (
            StatusCode::OK,
            status_page::render(&status::gather(shared).await),
        ),
        Err(Refusal(status, message)) => (status, status_page::refused(&message)),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    let policy = header::HeaderValue::from_str(status_page::content_security_policy())
        .unwrap_or_else(|_| header::HeaderValue::from_static("default-src 'none'"));
    for (name, value) in [
        (
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        ),
        (
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("no-referrer"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        ),
        (header::CONTENT_SECURITY_POLICY, policy),
    ] {
        headers.insert(name, value);
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"sat status\""),
        );
    }
    resp
}

async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Refusal> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            bad(format!(
                "cannot read the request body (limit {MAX_BODY} bytes): {e}"
            ))
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| bad(format!("malformed JSON body: {e}")))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn ok<T: Serialize>(value: T) -> Result<Reply, Refusal> {
    Ok(json(StatusCode::OK, &value))
}

fn created<T: Serialize>(value: T) -> Result<Reply, Refusal> {
    Ok(json(StatusCode::CREATED, &value))
}

async fn record(
    shared: &Shared,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) {
    let entry = AuditRecord {
        id: random_hex(8),
        at: clock::unix_millis(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail: detail.to_string(),
    };
    if let Err(e) = shared.store.append_audit(&entry).await {
        warn!("cannot write the audit log: {e}");
    }
    info!(%actor, %action, %target, "admin change");
    shared.publish().await;
}

fn parse_ttl(ttl: Option<&str>, default: Duration, max: Duration) -> Result<Duration, Refusal> {
    let ttl = match ttl {
        None => default,
        Some(t) => humantime::parse_duration(t).map_err(|e| {
            bad(format!(
                "ttl: \"{t}\" is not a duration like \"30m\" or \"8h\": {e}"
            ))
        })?,
    };
    if ttl.is_zero() || ttl > max {
        return Err(bad(format!(
            "ttl: must be more than 0 and at most {}",
            humantime::format_duration(max)
        )));
    }
    Ok(ttl)
}

// ---- relays ----

async fn relays(shared: &Shared) -> Result<Vec<RelayView>, Refusal> {
    let (now, now_ms) = (Instant::now(), clock::unix_millis());
    Ok(shared
        .store
        .relays()
        .await?
        .iter()
        .map(|r| relay_view(r, &shared.registry, now, now_ms))
        .collect())
}

async fn relay_action(
    shared: &Shared,
    actor: &str,
    name: &str,
    action: &str,
) -> Result<RelayView, Refusal> {
    let current = shared.store.relay(name).await?.ok_or_else(|| {
        not_found(format!(
            "no relay named \"{name}\" (see `sat admin relays`)"
        ))
    })?;
    let state = match action {
        "drain" => RelayAdminState::Drained,
        "resume" => RelayAdminState::Active,
        "revoke" => RelayAdminState::Revoked,
        _ => {
            return Err(not_found(format!(
                "no relay action \"{action}\"; use drain, resume or revoke"
            )))
        }
    };
    if current.state == RelayAdminState::Revoked && state != RelayAdminState::Revoked {
        return Err(conflict(format!(
            "relay \"{name}\" is revoked; it must enrol again with a new token (`sat admin relay-token create --region {} --name {name}`)",
            current.region
        )));
    }
    shared
        .store
        .set_relay_state(name, state, clock::unix_millis())
        .await?;
    let mut detail = serde_json::json!({ "from": current.state.as_str() });
    if state == RelayAdminState::Revoked {
        shared.store.forget_relay_certs(name).await?;
        let closed = shared
            .registry
            .close_all(name, &format!("relay \"{name}\" revoked by an operator"));
        detail["closed_uplinks"] = closed.into();
    }
    record(shared, actor, &format!("relay.{action}"), name, detail).await;
    let updated = shared.store.relay(name).await?.unwrap_or(current);
    Ok(relay_view(
        &updated,
        &shared.registry,
        Instant::now(),
        clock::unix_millis(),
    ))
}

async fn create_relay_token(
    shared: &Shared,
    actor: &str,
    body: CreateRelayToken,
) -> Result<RelayTokenView, Refusal> {
    validate_service_name(&body.region).map_err(|e| bad(format!("region: {e}")))?;
    if let Some(name) = &body.name {
        validate_service_name(name).map_err(|e| bad(format!("name: {e}")))?;
    }
    let ttl = parse_ttl(
        body.ttl.as_deref(),
        DEFAULT_RELAY_TOKEN_TTL,
        MAX_RELAY_TOKEN_TTL,
    )?;
    let token = EnrolToken::new(rand::random(), rand::random(), shared.ca.fingerprint());
    let now = clock::unix_millis();
    let expires_at = now + ttl.as_millis() as i64;
    let rec = RelayTokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        region: body.region.clone(),
        name: body.name.clone(),
        created_at: now,
        expires_at,
        used_at: None,
        used_by: None,
    };
    shared.store.insert_relay_token(&rec).await?;
    let detail =
        serde_json::json!({ "region": body.region, "name": body.name, "expires_at": expires_at });
    record(shared, actor, "relay-token.create", &token.id, detail).await;
    Ok(RelayTokenView {
        token: token.to_string(),
        id: token.id.clone(),
        region: body.region,
        name: body.name,
        expires_at,
    })
}

// ---- services ----

async fn services(shared: &Shared) -> Result<Vec<ServiceView>, Refusal> {
    Ok(shared
        .store
        .services()
        .await?
        .iter()
        .map(service_view)
        .collect())
}

async fn add_service(
    shared: &Shared,
    actor: &str,
    body: ServiceView,
) -> Result<ServiceView, Refusal> {
    let kind = match body.kind.as_str() {
        "tcp" => StreamKind::Tcp,
        "http" => StreamKind::Http,
        other => return Err(bad(format!("kind: \"{other}\" is not tcp or http"))),
    };
    let access = match body.access.as_str() {
        "public" => Access::Public,
        "token" => Access::Token,
        other => return Err(bad(format!("access: \"{other}\" is not public or token"))),
    };
    let mut config = ServiceConfig {
        name: body.name,
        kind,
        backend: body.backend,
        hostnames: body.hostnames,
        access,
    };
    config.normalise().map_err(bad)?;
    let existing = shared.store.services().await?;
    for s in &existing {
        if let Some(h) = s.hostnames.iter().find(|h| config.hostnames.contains(h)) {
            return Err(conflict(format!(
                "host name \"{h}\" is already routed to service \"{}\"",
                s.name
            )));
        }
    }
    let rec = ServiceRecord {
        name: config.name.clone(),
        kind,
        backend: config.backend.clone(),
        hostnames: config.hostnames.clone(),
        access,
        created_at: clock::unix_millis(),
    };
    if !shared.store.insert_service(&rec).await? {
        return Err(conflict(format!(
            "a service named \"{}\" exists; remove it first to change it",
            rec.name
        )));
    }
    let view = service_view(&rec);
    let detail = serde_json::to_value(&view).unwrap_or_default();
    record(shared, actor, "service.add", &rec.name, detail).await;
    Ok(view)
}

async fn remove_service(shared: &Shared, actor: &str, name: &str) -> Result<ServiceView, Refusal> {
    let existing = shared.store.services().await?;
    let found = existing
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| not_found(format!("no service named \"{name}\"")))?;
    let view = service_view(found);
    shared.store.remove_service(name).await?;
    let detail = serde_json::to_value(&view).unwrap_or_default();
    record(shared, actor, "service.remove", name, detail).await;
    Ok(view)
}

// ---- access tokens ----

fn token_view(t: &AccessTokenRecord, token: Option<String>) -> AccessTokenView {
    AccessTokenView {
        id: t.id.clone(),
        services: t.services.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
        token,
    }
}

async fn create_access_token(
    shared: &Shared,
    actor: &str,
    body: CreateAccessToken,
) -> Result<AccessTokenView, Refusal> {
    if body.services.is_empty() {
        return Err(bad("services: name at least one service the token grants"));
    }
    let known = shared.store.services().await?;
    for s in &body.services {
        if !known.iter().any(|k| &k.name == s) {
            return Err(bad(format!("services: no service named \"{s}\"")));
        }
    }
    let ttl = parse_ttl(body.ttl.as_deref(), DEFAULT_ACCESS_TTL, MAX_ACCESS_TTL)?;
    let now = clock::unix_millis();
    let (token, claims) = shared
        .signer
        .issue(body.services.clone(), ttl, (now / 1000) as u64);
    let rec = AccessTokenRecord {
        id: claims.jti.clone(),
        services: body.services,
        created_at: now,
        expires_at: claims.expires_at as i64 * 1000,
        revoked_at: None,
    };
    shared.store.insert_access_token(&rec).await?;
    let detail = serde_json::json!({ "services": rec.services, "expires_at": rec.expires_at });
    record(shared, actor, "token.create", &rec.id, detail).await;
    Ok(token_view(&rec, Some(token)))
}

async fn access_tokens(shared: &Shared) -> Result<Vec<AccessTokenView>, Refusal> {
    Ok(shared
        .store
        .access_tokens()
        .await?
        .iter()
        .map(|t| token_view(t, None))
        .collect())
}

async fn revoke_access_token(
    shared: &Shared,
    actor: &str,
    id: &str,
) -> Result<AccessTokenView, Refusal> {
    let rec = shared
        .store
        .revoke_access_token(id, clock::unix_millis())
        .await?
        .ok_or_else(|| {
            not_found(format!(
                "no access token with id \"{id}\" (see `sat admin token list`)"
            ))
        })?;
    record(
        shared,
        actor,
        "token.revoke",
        id,
        serde_json::json!({ "services": rec.services }),
    )
    .await;
    Ok(token_view(&rec, None))
}

async fn audit(shared: &Shared, query: &str) -> Result<Vec<AuditView>, Refusal> {
    let mut limit = 50u32;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", v)) => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad(format!("limit: \"{v}\" is not a number from 1 to 1000")))?;
            }
            _ => {
                return Err(bad(format!(
                    "unknown query parameter \"{pair}\"; only limit is known"
                )))
            }
        }
    }
    Ok(shared
        .store
        .audit_log(limit)
        .await?
        .into_iter()
        .map(audit_view)
        .collect())
}
