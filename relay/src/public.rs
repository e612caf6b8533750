//! The relay's own HTTP endpoints, answered for requests whose Host is no service's (the
//! relay's address or name): the public relay map and the latency check. Clients and
//! browsers use them to find relays and time round trips to each.
//!
//! - `GET /api/relays`: every relay the control plane lists (name, region, state, addresses,
//!   location, round trip to the primary, load, latency-check URL), as JSON.
//! - `GET /api/latency`: an empty 204 at once, with CORS and `Timing-Allow-Origin` so that a
//!   page on any origin can time it with the Resource Timing API.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use sat_transport::http::Body;

use crate::routes::Routes;

pub const RELAYS_PATH: &str = "/api/relays";
pub const LATENCY_PATH: &str = "/api/latency";

/// The answer to `req` if it is for one of the relay's own endpoints.
pub fn answer<B>(req: &Request<B>, routes: &Routes) -> Option<Response<Body>> {
    let path = req.uri().path();
    if path != RELAYS_PATH && path != LATENCY_PATH {
        return None;
    }
    let mut resp = match (req.method(), path) {
        (&Method::OPTIONS, _) => empty(StatusCode::NO_CONTENT),
        (&Method::GET | &Method::HEAD, LATENCY_PATH) => empty(StatusCode::NO_CONTENT),
        (&Method::GET | &Method::HEAD, _) => relay_map(routes),
        _ => {
            let mut resp = empty(StatusCode::METHOD_NOT_ALLOWED);
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            resp
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert("timing-allow-origin", HeaderValue::from_static("*"));
    // A cached answer would time the cache, not the relay.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(resp)
}

fn relay_map(routes: &Routes) -> Response<Body> {
    let map = serde_json::json!({
        "generation": routes.generation,
        "relays": routes.relays(),
    });
    let body = serde_json::to_vec_pretty(&map).unwrap_or_default();
    let mut resp = Response::new(boxed(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(boxed(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn boxed(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_proto::control::{ConfigPush, RelayInfo, RelayState};

    fn routes() -> Routes {
        Routes::from_push(&ConfigPush {
            generation: 7,
            relays: vec![RelayInfo {
                name: "relay-eu".into(),
                region: "eu-west".into(),
                state: RelayState::Up,
                addresses: vec!["192.0.2.1:443".into()],
                location: None,
                rtt_us: 1500,
                load: 0.25,
                latency_url: Some("https://192.0.2.1:443/api/latency".into()),
            }],
            ..ConfigPush::default()
        })
    }

    fn get(method: Method, path: &str) -> Option<Response<Body>> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        answer(&req, &routes())
    }

    #[tokio::test]
    async fn relay_map_lists_the_pushed_relays() {
        let resp = get(Method::GET, RELAYS_PATH).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let map: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(map["generation"], 7);
        assert_eq!(map["relays"][0]["name"], "relay-eu");
        assert_eq!(map["relays"][0]["state"], "up");
        assert_eq!(map["relays"][0]["rtt_us"], 1500);
    }

    #[test]
    fn latency_check_is_empty_uncached_and_timeable_from_any_origin() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            let resp = get(method.clone(), LATENCY_PATH).unwrap();
            assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{method}");
            assert_eq!(resp.headers()["timing-allow-origin"], "*");
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        }
        let resp = get(Method::POST, LATENCY_PATH).unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(get(Method::GET, "/api/other").is_none());
    }
}
