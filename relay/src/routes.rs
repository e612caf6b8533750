//! The relay's view of the services, rebuilt from each config push: how to route, and who may
//! use what. Access tokens are checked here against the pushed keys and revocations, so a
//! refused user costs no round trip to the control plane.

use std::collections::{HashMap, HashSet};

use sat_proto::access::{self, AccessError, VerifyKey};
use sat_proto::control::{Access, ConfigPush, RelayInfo, RelayState, RoutingTable};
use sat_proto::stream::StreamKind;

#[derive(Debug, Default)]
pub struct Routes {
    pub generation: u64,
    kinds: HashMap<String, StreamKind>,
    hosts: HashMap<String, String>,
    access: HashMap<String, Access>,
    access_keys: Vec<VerifyKey>,
    /// Ids (`jti`) of revoked tokens that have not expired yet.
    revoked: HashSet<String>,
    /// The network's relays, as the control plane lists them.
    relays: Vec<RelayInfo>,
    /// Measured round trips between relays and from client networks, for geo DNS.
    pub routing: RoutingTable,
}

impl Routes {
    pub fn from_push(push: &ConfigPush) -> Self {
        let mut routes = Self {
            generation: push.generation,
            ..Self::default()
        };
        for s in &push.services {
            routes.kinds.insert(s.name.clone(), s.kind);
            routes.access.insert(s.name.clone(), s.access);
            if s.kind == StreamKind::Http {
                for h in &s.hostnames {
                    routes.hosts.insert(h.to_ascii_lowercase(), s.name.clone());
                }
            }
        }
        routes.access_keys.clone_from(&push.access_keys);
        routes.revoked = push.revoked_tokens.iter().cloned().collect();
        routes.relays.clone_from(&push.relays);
        routes.routing.clone_from(&push.routing);
        routes
    }

    pub fn relays(&self) -> &[RelayInfo] {
        &self.relays
    }

    /// Whether `other` differs from this in anything but the relays' round trips and loads,
    /// which are refreshed every few seconds and are not news.
    pub fn same_news(&self, other: &Self) -> bool {
        let states = |r: &Self| -> Vec<(String, RelayState, Vec<String>)> {
            r.relays
                .iter()
                .map(|i| (i.name.clone(), i.state, i.addresses.clone()))
                .collect()
        };
        self.kinds == other.kinds
            && self.hosts == other.hosts
            && self.access == other.access
            && self.access_keys == other.access_keys
            && self.revoked == other.revoked
            && states(self) == states(other)
    }

    pub fn kind(&self, service: &str) -> Option<StreamKind> {
        self.kinds.get(service).copied()
    }

    /// The HTTP service for a Host value (port and trailing dot ignored, case-insensitive).
    pub fn by_host(&self, host: &str) -> Option<&str> {
        let host = strip_port(host).trim_end_matches('.');
        if let Some(s) = self.hosts.get(host) {
            return Some(s);
        }
        self.hosts
            .get(&host.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Whether using `service` takes an access token. A service missing from the config counts
    /// as needing one, so that a caller that forgot to check existence first fails closed.
    pub fn needs_token(&self, service: &str) -> bool {
        self.access.get(service) != Some(&Access::Public)
    }

    /// Whether a user who shows `token` (`None` or empty: no token) may use `service` at
    /// `now_unix` (wall-clock seconds, [`sat_proto::clock::unix_seconds`]: tokens carry
    /// times set by the control plane). Public services take anyone.
    pub fn authorize(
        &self,
        service: &str,
        token: Option<&str>,
        now_unix: u64,
    ) -> Result<(), AccessError> {
        if !self.needs_token(service) {
            return Ok(());
        }
        let token = token.ok_or(AccessError::Missing)?;
        access::verify(token, &self.access_keys, &self.revoked, service, now_unix).map(drop)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_proto::access::{AccessClaims, SigningKey};
    use sat_proto::control::ServiceInfo;

    #[test]
    fn host_lookup_ignores_port_case_and_dot() {
        let routes = Routes::from_push(&ConfigPush {
            generation: 3,
            services: vec![
                ServiceInfo {
                    name: "web".into(),
                    kind: StreamKind::Http,
                    hostnames: vec!["web.example.com".into()],
                    access: Access::Public,
                },
                ServiceInfo {
                    name: "ssh".into(),
                    kind: StreamKind::Tcp,
                    hostnames: vec![],
                    access: Access::Public,
                },
            ],
            ..ConfigPush::default()
        });
        for h in [
            "web.example.com",
            "WEB.example.com:8443",
            "web.example.com.",
        ] {
            assert_eq!(routes.by_host(h), Some("web"), "{h}");
        }
        assert_eq!(routes.by_host("ssh"), None);
        assert_eq!(routes.by_host("[::1]:80"), None);
        assert_eq!(routes.kind("ssh"), Some(StreamKind::Tcp));
    }

    const NOW: u64 = 1_700_000_000;

    fn signing_key(kid: &str) -> SigningKey {
        SigningKey::from_pkcs8(kid, &SigningKey::generate_pkcs8()).unwrap()
    }

    fn service(name: &str, access: Access) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            kind: StreamKind::Tcp,
            hostnames: vec![],
            access,
        }
    }

    /// Services `open` (public), `db` and `cache` (token); keys of `key`; `revoked` jtis.
    fn token_routes(key: &SigningKey, revoked: &[&str]) -> Routes {
        Routes::from_push(&ConfigPush {
            generation: 1,
            services: vec![
                service("open", Access::Public),
                service("db", Access::Token),
                service("cache", Access::Token),
            ],
            access_keys: vec![key.public_key()],
            revoked_tokens: revoked.iter().map(|s| s.to_string()).collect(),
            ..ConfigPush::default()
        })
    }

    fn token(key: &SigningKey, jti: &str, services: &[&str], expires_at: u64) -> String {
        key.sign(&AccessClaims {
            kid: key.kid().into(),
            jti: jti.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            issued_at: NOW - 60,
            expires_at,
        })
    }

    #[test]
    fn public_services_need_no_token() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &[]);
        assert!(!routes.needs_token("open"));
        assert_eq!(routes.authorize("open", None, NOW), Ok(()));
        // Even a bad token does not keep anyone out of a public service.
        assert_eq!(routes.authorize("open", Some("junk"), NOW), Ok(()));
    }

    #[test]
    fn valid_token_opens_its_services() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &[]);
        let t = token(&key, "00000000000000aa", &["db", "cache"], NOW + 60);
        assert!(routes.needs_token("db"));
        assert_eq!(routes.authorize("db", Some(&t), NOW), Ok(()));
        assert_eq!(routes.authorize("cache", Some(&t), NOW), Ok(()));
    }

    #[test]
    fn missing_token_is_refused() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &[]);
        assert_eq!(routes.authorize("db", None, NOW), Err(AccessError::Missing));
        assert_eq!(
            routes.authorize("db", Some(""), NOW),
            Err(AccessError::Missing)
        );
    }

    #[test]
    fn forged_token_is_refused() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &[]);
        // Same kid, other private key: the signature does not verify.
        let forger = signing_key("k1");
        let t = token(&forger, "00000000000000aa", &["db"], NOW + 60);
        assert_eq!(
            routes.authorize("db", Some(&t), NOW),
            Err(AccessError::BadSignature)
        );
        // A kid the network does not know.
        let stranger = signing_key("k9");
        let t = token(&stranger, "00000000000000aa", &["db"], NOW + 60);
        assert_eq!(
            routes.authorize("db", Some(&t), NOW),
            Err(AccessError::UnknownKey("k9".into()))
        );
        assert!(matches!(
            routes.authorize("db", Some("sat_at1.nonsense"), NOW),
            Err(AccessError::Malformed(_))
        ));
    }

    #[test]
    fn expired_token_is_refused() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &[]);
        let t = token(&key, "00000000000000aa", &["db"], NOW);
        assert_eq!(
            routes.authorize("db", Some(&t), NOW),
            Err(AccessError::Expired { at: NOW })
        );
        assert_eq!(routes.authorize("db", Some(&t), NOW - 1), Ok(()));
    }

    #[test]
    fn revoked_token_is_refused() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &["00000000000000aa"]);
        let revoked = token(&key, "00000000000000aa", &["db"], NOW + 60);
        assert_eq!(
            routes.authorize("db", Some(&revoked), NOW),
            Err(AccessError::Revoked("00000000000000aa".into()))
        );
        let other = token(&key, "00000000000000bb", &["db"], NOW + 60);
        assert_eq!(routes.authorize("db", Some(&other), NOW), Ok(()));
    }

    #[test]
    fn token_for_another_service_is_refused() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &[]);
        let t = token(&key, "00000000000000aa", &["cache"], NOW + 60);
        assert_eq!(
            routes.authorize("db", Some(&t), NOW),
            Err(AccessError::WrongService {
                service: "db".into()
            })
        );
    }

    #[test]
    fn unknown_service_fails_closed() {
        let key = signing_key("k1");
        let routes = token_routes(&key, &[]);
        assert!(routes.needs_token("nope"));
        assert_eq!(
            routes.authorize("nope", None, NOW),
            Err(AccessError::Missing)
        );
        let t = token(&key, "00000000000000aa", &["db"], NOW + 60);
        assert!(matches!(
            routes.authorize("nope", Some(&t), NOW),
            Err(AccessError::WrongService { .. })
        ));
    }

    #[test]
    fn push_without_keys_refuses_every_token() {
        let key = signing_key("k1");
        let routes = Routes::from_push(&ConfigPush {
            generation: 1,
            services: vec![service("db", Access::Token)],
            ..ConfigPush::default()
        });
        let t = token(&key, "00000000000000aa", &["db"], NOW + 60);
        assert_eq!(
            routes.authorize("db", Some(&t), NOW),
            Err(AccessError::UnknownKey("k1".into()))
        );
    }
}
