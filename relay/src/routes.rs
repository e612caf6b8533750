//! The relay's view of the services, rebuilt from each config push.

use std::collections::HashMap;

use sat_proto::control::ConfigPush;
use sat_proto::stream::StreamKind;

#[derive(Debug, Default)]
pub struct Routes {
    pub generation: u64,
    kinds: HashMap<String, StreamKind>,
    hosts: HashMap<String, String>,
}

impl Routes {
    pub fn from_push(push: &ConfigPush) -> Self {
        let mut routes = Self {
            generation: push.generation,
            ..Self::default()
        };
        for s in &push.services {
            routes.kinds.insert(s.name.clone(), s.kind);
            if s.kind == StreamKind::Http {
                for h in &s.hostnames {
                    routes.hosts.insert(h.to_ascii_lowercase(), s.name.clone());
                }
            }
        }
        routes
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
                },
                ServiceInfo {
                    name: "ssh".into(),
                    kind: StreamKind::Tcp,
                    hostnames: vec![],
                },
            ],
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
}
