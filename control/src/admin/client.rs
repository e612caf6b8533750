//! An async client of the admin API, one method per endpoint. Every failure is a
//! [`ControlError::Admin`] whose message is meant for the operator as-is: the server's own
//! words for a refusal, and what to check when there is no answer at all.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{
    AccessTokenView, ApiError, AuditView, CreateAccessToken, CreateRelayToken, RelayTokenView,
    RelayView, ServiceView,
};
use crate::ControlError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Every endpoint is a few store queries; an answer this late means something is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Far above the largest answer (1000 audit entries), far below what could hurt.
const MAX_BODY: usize = 16 << 20;

/// A connection to one control plane's admin API, authenticated with one admin token.
#[derive(Clone)]
pub struct AdminClient {
    /// `http://host:port` plus any path prefix, without a trailing slash.
    base: String,
    auth: HeaderValue,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .field("token", &"***")
            .finish()
    }
}

impl AdminClient {
    /// A client of the admin API at `base_url` (such as `http://127.0.0.1:4434`). Nothing is
    /// sent yet; this fails only on a URL or token that could never work.
    pub fn new(base_url: &str, token: String) -> Result<Self, ControlError> {
        let base = base_url.trim().trim_end_matches('/');
        let uri: Uri = base.parse().map_err(|e| {
            admin_error(
                None,
                format!("admin API URL {base_url:?} is not a URL ({e}); expected http://HOST:PORT"),
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() || uri.query().is_some() {
            return Err(admin_error(
                None,
                format!(
                    "admin API URL {base_url:?} must look like http://HOST:PORT (the admin API \
                     speaks plain HTTP, so keep it on a loopback or private address)"
                ),
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(admin_error(None, "the admin token is empty".to_owned()));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            admin_error(
                None,
                "the admin token has characters a token never has (is it the right file?)"
                    .to_owned(),
            )
        })?;
        auth.set_sensitive(true);

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Ok(Self {
            base: base.to_owned(),
            auth,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The URL this client talks to, as given (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/relays`: every enrolled relay with its health.
    pub async fn relays(&self) -> Result<Vec<RelayView>, ControlError> {
        self.call(Method::GET, "/v1/relays", None).await
    }

    /// `POST /v1/relays/{name}/drain`: new users go to other relays; streams in flight finish.
    pub async fn drain(&self, name: &str) -> Result<RelayView, ControlError> {
        self.relay_action(name, "drain").await
    }

    /// `POST /v1/relays/{name}/resume`: undoes a drain.
    pub async fn resume(&self, name: &str) -> Result<RelayView, ControlError> {
        self.relay_action(name, "resume").await
    }

    /// `POST /v1/relays/{name}/revoke`: the relay's certificates stop working, for good.
    pub async fn revoke(&self, name: &str) -> Result<RelayView, ControlError> {
        self.relay_action(name, "revoke").await
    }

    async fn relay_action(&self, name: &str, action: &str) -> Result<RelayView, ControlError> {
        let path = format!("/v1/relays/{}/{action}", segment(name));
        self.call(Method::POST, &path, None).await
    }

    /// `POST /v1/relay-tokens`: a one-time token that enrols a relay in `region`.
    pub async fn create_relay_token(
        &self,
        request: &CreateRelayToken,
    ) -> Result<RelayTokenView, ControlError> {
        self.call(Method::POST, "/v1/relay-tokens", Some(json(request)?))
            .await
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceView>, ControlError> {
        self.call(Method::GET, "/v1/services", None).await
    }

    /// `POST /v1/services` (its `created_at` is ignored); answers the service as stored.
    pub async fn add_service(&self, service: &ServiceView) -> Result<ServiceView, ControlError> {
        self.call(Method::POST, "/v1/services", Some(json(service)?))
            .await
    }

    /// `DELETE /v1/services/{name}`; answers the service removed.
    pub async fn remove_service(&self, name: &str) -> Result<ServiceView, ControlError> {
        let path = format!("/v1/services/{}", segment(name));
        self.call(Method::DELETE, &path, None).await
    }

    /// `POST /v1/tokens`: a service access token, whose text is in the answer's `token`.
    pub async fn create_access_token(
        &self,
        request: &CreateAccessToken,
    ) -> Result<AccessTokenView, ControlError> {
        self.call(Method::POST, "/v1/tokens", Some(json(request)?))
            .await
    }

    /// `GET /v1/tokens`: every access token, newest first, without their texts.
    pub async fn access_tokens(&self) -> Result<Vec<AccessTokenView>, ControlError> {
        self.call(Method::GET, "/v1/tokens", None).await
    }

    /// `POST /v1/tokens/{id}/revoke`.
    pub async fn revoke_access_token(&self, id: &str) -> Result<AccessTokenView, ControlError> {
        let path = format!("/v1/tokens/{}/revoke", segment(id));
        self.call(Method::POST, &path, None).await
    }

    /// `GET /v1/audit?limit=N`: the last `limit` admin changes, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditView>, ControlError> {
        self.call(Method::GET, &format!("/v1/audit?limit={limit}"), None)
            .await
    }

    /// `GET /v1/routing`: the routing table as last pushed to relays.
    pub async fn routing(&self) -> Result<sat_proto::control::RoutingTable, ControlError> {
        self.call(Method::GET, "/v1/routing", None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| admin_error(None, format!("cannot build a request for {url}: {e}")))?;

        let response = match tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if e.is_connect() => return Err(self.unreachable(&root_cause(&e))),
            Ok(Err(e)) => {
                return Err(admin_error(
                    None,
                    format!("admin API at {}: {}", self.base, root_cause(&e)),
                ))
            }
            Err(_) => {
                return Err(admin_error(
                    None,
                    format!(
                        "admin API at {} gave no answer within {REQUEST_TIMEOUT:?}",
                        self.base
                    ),
                ))
            }
        };
        let status = response.status();
        let bytes = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(response.into_body(), MAX_BODY).collect(),
        )
        .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return Err(admin_error(
                    Some(status.as_u16()),
                    format!("admin API at {}: reading the answer: {e}", self.base),
                ))
            }
            Err(_) => {
                return Err(admin_error(
                    Some(status.as_u16()),
                    format!("admin API at {}: the answer stalled", self.base),
                ))
            }
        };
        if !status.is_success() {
            return Err(self.refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            admin_error(
                Some(status.as_u16()),
                format!(
                    "admin API at {} answered {path} with JSON this client does not understand \
                     ({e}); is it the same version of sat?",
                    self.base
                ),
            )
        })
    }

    fn unreachable(&self, cause: &str) -> ControlError {
        admin_error(
            None,
            format!(
                "the control plane's admin API is not reachable at {} ({cause}); check that the \
                 control plane is running, its `[admin] listen` address, and --url / SAT_ADMIN_URL",
                self.base
            ),
        )
    }

    fn refusal(&self, status: StatusCode, body: &[u8]) -> ControlError {
        let said = serde_json::from_slice::<ApiError>(body)
            .map(|e| e.error)
            .ok()
            .or_else(|| {
                let text = String::from_utf8_lossy(body).trim().to_owned();
                (!text.is_empty() && text.len() <= 500).then_some(text)
            })
            .unwrap_or_else(|| status.to_string());
        let message = match status {
            StatusCode::UNAUTHORIZED => format!(
                "the admin token was refused ({said}); use the one the control plane keeps in \
                 <control data_dir>/admin.token"
            ),
            s if s.is_client_error() => said,
            s => format!("admin API at {} answered {s}: {said}", self.base),
        };
        admin_error(Some(status.as_u16()), message)
    }
}

fn admin_error(status: Option<u16>, message: String) -> ControlError {
    ControlError::Admin { status, message }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    serde_json::to_vec(value)
        .map_err(|e| admin_error(None, format!("cannot encode the request: {e}")))
}

/// The innermost error in a chain: hyper's own layers say only "client error (Connect)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encodes one path segment, so a name with `/` or `?` cannot reach another endpoint.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Response;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("eu-west-1"), "eu-west-1");
        assert_eq!(segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }

    #[test]
    fn urls_and_tokens_are_checked_up_front() {
        assert!(AdminClient::new("http://127.0.0.1:4434/", "t".into()).is_ok());
        for bad in [
            "127.0.0.1:4434",
            "https://127.0.0.1:4434",
            "http://",
            "not a url",
        ] {
            assert!(
                AdminClient::new(bad, "t".into()).is_err(),
                "{bad} should be refused"
            );
        }
        assert!(AdminClient::new("http://127.0.0.1:4434", " \n".into()).is_err());
        assert!(AdminClient::new("http://127.0.0.1:4434", "a\nb".into()).is_err());
    }

    #[test]
    fn debug_hides_the_token() -> Result<(), ControlError> {
        let client = AdminClient::new("http://127.0.0.1:4434", "s3cret".into())?;
        assert!(!format!("{client:?}").contains("s3cret"));
        Ok(())
    }

    /// Serves one canned answer per connection and records what it was asked.
    async fn serve(
        status: u16,
        body: &'static str,
    ) -> std::io::Result<(String, tokio::sync::mpsc::UnboundedReceiver<String>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let auth = req
                        .headers()
                        .get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(format!("{} {} {auth}", req.method(), req.uri()));
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header(CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap_or_default(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        Ok((url, rx))
    }

    #[tokio::test]
    async fn sends_the_token_and_decodes_the_answer() -> Result<(), Box<dyn std::error::Error>> {
        let (url, mut asked) =
            serve(200, r#"[{"name":"eu","region":"eu-west","state":"up","streams":3,"connections":1,"uplinks":2,"version":"0.1.0","addresses":[],"enrolled_at":1}]"#).await?;
        let client = AdminClient::new(&url, "tok".into())?;
        let relays = client.relays().await?;
        assert_eq!(relays.len(), 1);
        assert_eq!(relays[0].streams, 3);
        assert_eq!(relays[0].last_heartbeat_ms_ago, None);
        assert_eq!(
            asked.recv().await.as_deref(),
            Some("GET /v1/relays Bearer tok")
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_refusal_carries_the_servers_message_and_status(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (url, mut asked) = serve(404, r#"{"error":"no relay named \"x/y\""}"#).await?;
        let client = AdminClient::new(&url, "tok".into())?;
        match client.drain("x/y").await {
            Err(ControlError::Admin { status, message }) => {
                assert_eq!(status, Some(404));
                assert_eq!(message, r#"no relay named "x/y""#);
            }
            other => panic!("expected a 404, got {other:?}"),
        }
        assert_eq!(
            asked.recv().await.as_deref(),
            Some("POST /v1/relays/x%2Fy/drain Bearer tok")
        );
        Ok(())
    }

    #[tokio::test]
    async fn unauthorized_says_where_the_token_lives() -> Result<(), Box<dyn std::error::Error>> {
        let (url, _asked) = serve(401, r#"{"error":"invalid admin token"}"#).await?;
        let client = AdminClient::new(&url, "tok".into())?;
        match client.services().await {
            Err(ControlError::Admin { status, message }) => {
                assert_eq!(status, Some(401));
                assert!(message.contains("invalid admin token"), "{message}");
                assert!(message.contains("admin.token"), "{message}");
            }
            other => panic!("expected a 401, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn connection_refused_names_the_url_and_the_settings(
    ) -> Result<(), Box<dyn std::error::Error>> {
        // A port that was just free: bind, note it, close.
        let url = {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            format!("http://{}", l.local_addr()?)
        };
        let client = AdminClient::new(&url, "tok".into())?;
        match client.audit(10).await {
            Err(ControlError::Admin { status, message }) => {
                assert_eq!(status, None);
                assert!(message.contains("not reachable"), "{message}");
                assert!(message.contains(&url), "{message}");
                assert!(message.contains("[admin] listen"), "{message}");
                assert!(message.contains("SAT_ADMIN_URL"), "{message}");
            }
            other => panic!("expected no answer, got {other:?}"),
        }
        Ok(())
    }
}
