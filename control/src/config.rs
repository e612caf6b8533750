//! `control.toml`. See `docs/configuration.md` for the annotated format.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sat_geo::dns::DnsSection;
use sat_proto::control::Access;
use sat_proto::stream::{validate_service_name, StreamKind};
use serde::Deserialize;

use crate::ControlError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub control: ControlSection,
    /// The operator's own CA; without it the control plane makes one in its data dir.
    pub ca: Option<CaFiles>,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Geo DNS from the control plane's own relay map, as relays serve it from theirs.
    pub dns: Option<DnsSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    #[serde(default = "default_name")]
    pub name: String,
    /// UDP address for relay uplinks.
    pub listen: SocketAddr,
    /// On SIGTERM, how long in-flight streams may run before they are cut.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub drain_grace: Duration,
    /// The store (`sat.db`), the CA if the control plane made it, and `admin.token`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Names in the uplink certificate; relays dial with one of them as `uplink.server_name`.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
    /// How long a relay certificate is valid. Relays renew after two thirds of it.
    #[serde(default = "default_cert_lifetime", with = "humantime_serde")]
    pub relay_cert_lifetime: Duration,
}

/// `[ca]`: a CA the operator provides instead of the one the control plane would make.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[admin]`: the admin API's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// HTTP (no TLS): keep it on loopback or behind a TLS-terminating proxy.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(default = "default_pool_idle", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            pool_idle_timeout: default_pool_idle(),
            pool_max_idle: default_pool_max_idle(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub kind: StreamKind,
    /// `host:port`; the only address this service can reach.
    pub backend: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// `token`: users need a service access token.
    #[serde(default)]
    pub access: Access,
}

fn default_data_dir() -> PathBuf {
    "/var/lib/sat/control".into()
}
fn default_server_names() -> Vec<String> {
    vec!["sat-control".into()]
}
fn default_cert_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4434))
}

fn default_name() -> String {
    "control".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_idle() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    64
}

impl ControlConfig {
    /// Reads, parses and validates a config file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ControlError> {
        let text = std::fs::read_to_string(path).map_err(|source| ControlError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ControlError> {
        let err = |message: String| ControlError::Config {
            path: path.to_owned(),
            message,
        };
        let mut config: Self = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        config.validate().map_err(err)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.control.data_dir);
        if let Some(ca) = &mut config.ca {
            resolve(&mut ca.cert);
            resolve(&mut ca.key);
        }
        if let Some(dns) = &mut config.dns {
            dns.resolve_paths(&base);
        }
        Ok(config)
    }

    fn validate(&mut self) -> Result<(), String> {
        let c = &self.control;
        if c.server_names.is_empty() {
            return Err(
                "control.server_names: give at least one name for the uplink certificate".into(),
            );
        }
        if c.relay_cert_lifetime < Duration::from_secs(10) {
            return Err(format!(
                "control.relay_cert_lifetime: {:?} is too short; relays need at least 10s to renew",
                c.relay_cert_lifetime
            ));
        }
        if let Some(dns) = &self.dns {
            dns.validate()?;
        }
        let mut names = HashMap::new();
        let mut hosts: HashMap<String, String> = HashMap::new();
        for (i, s) in self.services.iter_mut().enumerate() {
            let at = format!("service[{i}]");
            s.normalise().map_err(|e| format!("{at}.{e}"))?;
            if let Some(prev) = names.insert(s.name.clone(), i) {
                return Err(format!(
                    "{at}.name: \"{}\" is already the name of service[{prev}]; names must be unique",
                    s.name
                ));
            }
            for h in &s.hostnames {
                if let Some(other) = hosts.insert(h.clone(), s.name.clone()) {
                    return Err(format!(
                        "{at}.hostnames: \"{h}\" is already routed to service \"{other}\""
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// Checks one service on its own and lower-cases its host names. The error starts with the
    /// key at fault (`backend: ...`), for the caller to prefix with where the service came from.
    pub fn normalise(&mut self) -> Result<(), String> {
        validate_service_name(&self.name).map_err(|e| format!("name: {e}"))?;
        validate_backend(&self.backend).map_err(|e| format!("backend: {e}"))?;
        match self.kind {
            StreamKind::Tcp if !self.hostnames.is_empty() => {
                return Err(
                    "hostnames: only http services are routed by host name; remove it or set kind = \"http\"".into(),
                );
            }
            StreamKind::Http if self.hostnames.is_empty() => {
                return Err(
                    "hostnames: an http service needs at least one host name to be reachable"
                        .into(),
                );
            }
            _ => {}
        }
        for h in &mut self.hostnames {
            *h = h.trim_end_matches('.').to_ascii_lowercase();
            validate_hostname(h).map_err(|e| format!("hostnames: {e}"))?;
        }
        Ok(())
    }
}

fn validate_backend(backend: &str) -> Result<(), String> {
    if backend.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match backend.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            validate_hostname(host)
        }
        _ => Err(format!(
            "\"{backend}\" is not host:port (for example \"127.0.0.1:8080\" or \"app.internal:80\")"
        )),
    }
}

fn validate_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("\"{h}\" is not a valid host name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const GOOD: &str = r#"
        [control]
        listen = "127.0.0.1:4433"
        data_dir = "state"
        [backend]
        connect_timeout = "2s"
        [[service]]
        name = "web"
        kind = "http"
        backend = "127.0.0.1:8080"
        hostnames = ["Web.Example.com."]
        [[service]]
        name = "ssh"
        kind = "tcp"
        backend = "db.internal:22"
    "#;

    fn parse(text: &str) -> Result<ControlConfig, String> {
        ControlConfig::parse(text, Path::new("/etc/sat/control.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn good_config_parses_with_defaults_and_resolved_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.backend.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.backend.response_timeout, Duration::from_secs(30));
        assert_eq!(c.control.drain_grace, Duration::from_secs(30));
        assert_eq!(c.services[0].hostnames, vec!["web.example.com"]);
        assert_eq!(c.control.data_dir, PathBuf::from("/etc/sat/state"));
        assert_eq!(c.control.relay_cert_lifetime, Duration::from_secs(86400));
        assert_eq!(c.admin.listen.port(), 4434);
    }

    #[test]
    fn typo_names_the_key_and_the_file() {
        let e = parse(&GOOD.replace("listen =", "lisen =")).unwrap_err();
        assert!(e.contains("/etc/sat/control.toml"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_service_key() {
        let e = parse(&GOOD.replace("db.internal:22", "db.internal")).unwrap_err();
        assert!(e.contains("service[1].backend"), "{e}");
        let e = parse(&GOOD.replace("name = \"ssh\"", "name = \"web\"")).unwrap_err();
        assert!(e.contains("service[1].name"), "{e}");
        let e = parse(&GOOD.replace("hostnames = [\"Web.Example.com.\"]", "")).unwrap_err();
        assert!(e.contains("service[0].hostnames"), "{e}");
        let e = parse(&GOOD.replace("\"2s\"", "\"two seconds\"")).unwrap_err();
        assert!(e.contains("connect_timeout"), "{e}");
    }

    const DNS: &str = r#"
        [dns]
        listen = "127.0.0.1:8053"
        geoip = "GeoIP2-City-Test.mmdb"
        [dns.authority]
        zone = "sat.example.com"
        hosts = { app = "web" }
    "#;

    #[test]
    fn dns_geoip_path_resolves_against_the_config_folder() {
        let c = parse(&format!("{GOOD}{DNS}")).unwrap();
        let dns = c.dns.unwrap();
        assert_eq!(dns.geoip, PathBuf::from("/etc/sat/GeoIP2-City-Test.mmdb"));
        assert_eq!(dns.listen.port(), 8053);
        assert!(parse(GOOD).unwrap().dns.is_none());
    }

    #[test]
    fn dns_errors_name_the_file_and_the_key() {
        let e = parse(&format!("{GOOD}{}", DNS.replace("geoip =", "geo_ip ="))).unwrap_err();
        assert!(
            e.contains("/etc/sat/control.toml") && e.contains("geo_ip"),
            "{e}"
        );
        let e = parse(&format!("{GOOD}{}", DNS.replace("zone =", "zone_name ="))).unwrap_err();
        assert!(e.contains("zone_name"), "{e}");
        let e = parse(&format!(
            "{GOOD}{}",
            DNS.replace("sat.example.com", "*.example.com")
        ))
        .unwrap_err();
        assert!(e.contains("dns.authority.zone: "), "{e}");
    }
}
