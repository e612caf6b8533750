//! `relay.toml`. See `docs/configuration.md` for the annotated format.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sat_geo::dns::DnsSection;
use sat_proto::control::Location;
use sat_proto::stream::validate_service_name;
use serde::Deserialize;

use crate::RelayError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub relay: RelaySection,
    pub uplink: UplinkSection,
    pub https: Option<HttpsSection>,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub tcp: Vec<TcpPort>,
    /// Geo DNS: this relay answers for the zone with the best relays for each client.
    pub dns: Option<DnsSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// The name to enrol under, if the enrolment token does not fix one. After enrolment the
    /// name in the certificate is the relay's name.
    pub name: Option<String>,
    /// Where the relay stands, announced for geo routing.
    pub location: Option<Location>,
    /// Where users reach this relay (host:port or IP), announced to the control plane.
    #[serde(default)]
    pub public_addresses: Vec<String>,
    /// The relay's certificate, key and CA from enrolment, renewed in place.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A one-time enrolment token; used only while the data dir holds no identity. Usually
    /// given as `--token` or `SAT_RELAY_TOKEN` rather than written here.
    pub token: Option<Secret>,
    /// `/healthz` and `/readyz` over plain HTTP, for load balancers and orchestrators.
    pub health_listen: Option<SocketAddr>,
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub drain_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// `host:port` of each control replica; names are resolved again at every reconnect.
    pub control: Vec<String>,
    #[serde(default = "default_server_name")]
    pub server_name: String,
    #[serde(default = "default_connections")]
    pub connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsSection {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "yes")]
    pub quic: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: Option<SocketAddr>,
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(default = "default_max_header_size")]
    pub max_header_size: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: None,
            header_timeout: default_header_timeout(),
            max_header_size: default_max_header_size(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpPort {
    pub service: String,
    pub listen: SocketAddr,
}

/// A value that must not show up in logs or debug output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn default_data_dir() -> PathBuf {
    "/var/lib/sat/relay".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_server_name() -> String {
    "sat-control".into()
}
fn default_connections() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_size() -> usize {
    16 * 1024
}

impl RelayConfig {
    pub fn load(path: &Path) -> Result<Self, RelayError> {
        let text = std::fs::read_to_string(path).map_err(|source| RelayError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, RelayError> {
        let err = |message: String| RelayError::Config {
            path: path.to_owned(),
            message,
        };
        let mut config: Self = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        config.validate().map_err(err)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if config.relay.data_dir.is_relative() {
            config.relay.data_dir = base.join(&config.relay.data_dir);
        }
        if let Some(dns) = &mut config.dns {
            dns.resolve_paths(&base);
        }
        if let Some(https) = &mut config.https {
            for p in [&mut https.cert, &mut https.key] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.relay.name {
            validate_service_name(name).map_err(|e| format!("relay.name: {e}"))?;
        }
        if let Some(l) = &self.relay.location {
            if !(-90.0..=90.0).contains(&l.lat) || !(-180.0..=180.0).contains(&l.lon) {
                return Err(format!(
                    "relay.location: lat {} / lon {} is not on Earth; use degrees, lat -90..90 and lon -180..180",
                    l.lat, l.lon
                ));
            }
        }
        if self.uplink.control.is_empty() {
            return Err("uplink.control: list at least one control plane address".into());
        }
        for (i, c) in self.uplink.control.iter().enumerate() {
            let ok = c.parse::<SocketAddr>().is_ok()
                || c.rsplit_once(':').is_some_and(|(h, p)| {
                    !h.is_empty() && !h.contains(':') && p.parse::<u16>().is_ok_and(|p| p > 0)
                });
            if !ok {
                return Err(format!(
                    "uplink.control[{i}]: \"{c}\" is not host:port (for example \"control.example.com:4433\")"
                ));
            }
        }
        if !(1..=16).contains(&self.uplink.connections) {
            return Err(format!(
                "uplink.connections: {} is out of range; use 1 to 16 (2 is the default)",
                self.uplink.connections
            ));
        }
        if !(8192..=1024 * 1024).contains(&self.http.max_header_size) {
            return Err(format!(
                "http.max_header_size: {} is out of range; use 8192 to 1048576 bytes",
                self.http.max_header_size
            ));
        }
        if let Some(dns) = &self.dns {
            dns.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tcp.iter().enumerate() {
            validate_service_name(&t.service).map_err(|e| format!("tcp[{i}].service: {e}"))?;
            // Port 0 asks for a fresh port each time, so it may repeat.
            if t.listen.port() != 0 && !seen.insert(t.listen) {
                return Err(format!("tcp[{i}].listen: {} is used twice", t.listen));
            }
        }
        if self.https.is_none() && self.http.listen.is_none() && self.tcp.is_empty() {
            return Err(
                "nothing to serve: configure [https], http.listen, or a [[tcp]] port".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [relay]
        name = "relay-eu-1"
        data_dir = "state"
        location = { lat = 51.5, lon = -0.1 }
        [uplink]
        control = ["127.0.0.1:4433"]
        [https]
        listen = "127.0.0.2:8443"
        cert = "https.pem"
        key = "https-key.pem"
        [http]
        header_timeout = "1s"
        [[tcp]]
        service = "ssh"
        listen = "127.0.0.2:2222"
    "#;

    fn parse(text: &str) -> Result<RelayConfig, String> {
        RelayConfig::parse(text, Path::new("/etc/sat/relay.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.uplink.connections, 2);
        assert_eq!(c.relay.drain_grace, Duration::from_secs(30));
        assert_eq!(c.http.header_timeout, Duration::from_secs(1));
        let https = c.https.unwrap();
        assert!(https.quic);
        assert_eq!(https.cert, PathBuf::from("/etc/sat/https.pem"));
        assert_eq!(c.relay.data_dir, PathBuf::from("/etc/sat/state"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&GOOD.replace("data_dir =", "datadir =")).unwrap_err();
        assert!(e.contains("datadir") && e.contains("relay.toml"), "{e}");
        let e = parse(&GOOD.replace("lat = 51.5", "lat = 151.5")).unwrap_err();
        assert!(e.contains("relay.location"), "{e}");
        let e = parse(&GOOD.replace("[uplink]", "[uplink]\nconnections = 0")).unwrap_err();
        assert!(e.contains("uplink.connections"), "{e}");
        let e = parse(&GOOD.replace("127.0.0.1:4433", "control.example.com")).unwrap_err();
        assert!(e.contains("uplink.control[0]"), "{e}");
        let e = parse(&GOOD.replace("\"ssh\"", "\"SSH\"")).unwrap_err();
        assert!(e.contains("tcp[0].service"), "{e}");
    }
}
