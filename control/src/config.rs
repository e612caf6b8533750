//! `control.toml`. See `docs/configuration.md` for the annotated format.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sat_proto::stream::{validate_service_name, StreamKind};
use sat_transport::tls::TlsFiles;
use serde::Deserialize;

use crate::ControlError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub control: ControlSection,
    pub tls: TlsFiles,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
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
        config.tls.resolve(&base);
        Ok(config)
    }

    fn validate(&mut self) -> Result<(), String> {
        let mut names = HashMap::new();
        let mut hosts: HashMap<String, String> = HashMap::new();
        for (i, s) in self.services.iter_mut().enumerate() {
            let at = format!("service[{i}]");
            validate_service_name(&s.name).map_err(|e| format!("{at}.name: {e}"))?;
            if let Some(prev) = names.insert(s.name.clone(), i) {
                return Err(format!(
                    "{at}.name: \"{}\" is already the name of service[{prev}]; names must be unique",
                    s.name
                ));
            }
            validate_backend(&s.backend).map_err(|e| format!("{at}.backend: {e}"))?;
            match s.kind {
                StreamKind::Tcp if !s.hostnames.is_empty() => {
                    return Err(format!(
                        "{at}.hostnames: only http services are routed by host name; remove it or set kind = \"http\""
                    ));
                }
                StreamKind::Http if s.hostnames.is_empty() => {
                    return Err(format!(
                        "{at}.hostnames: an http service needs at least one host name to be reachable"
                    ));
                }
                _ => {}
            }
            for h in &mut s.hostnames {
                *h = h.trim_end_matches('.').to_ascii_lowercase();
                validate_hostname(h).map_err(|e| format!("{at}.hostnames: {e}"))?;
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
        [tls]
        ca = "ca.pem"
        cert = "c.pem"
        key = "k.pem"
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
        assert_eq!(c.tls.ca, PathBuf::from("/etc/sat/ca.pem"));
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
}
