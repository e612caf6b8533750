//! The `[dns]` section of a relay's or a control plane's config: both serve the same geo DNS,
//! so they read, check and bind it the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tracing::info;

use super::config::DnsConfig;
use super::sockets::DnsSockets;
use crate::geoip::GeoIp;
use crate::GeoError;

/// `[dns]`: where geo DNS is served, the GeoIP database that places clients, and
/// `[dns.authority]`, the zone it is authoritative for.
///
/// ```toml
/// [dns]
/// listen = "0.0.0.0:53"
/// geoip = "GeoLite2-City.mmdb"     # relative to the config file's folder
///
/// [dns.authority]
/// zone = "sat.example.com"
/// hosts = { app = "app" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// UDP and TCP, same port (53 in production).
    pub listen: SocketAddr,
    /// A GeoIP2 or GeoLite2 City database (.mmdb).
    pub geoip: PathBuf,
    pub authority: DnsConfig,
}

impl DnsSection {
    /// Checks `[dns.authority]` (see [`DnsConfig::validate`]). The error starts with the key
    /// at fault (`dns.authority.zone: ...`), for the caller to put after the file's name.
    pub fn validate(&self) -> Result<(), String> {
        self.authority.validate().map_err(|e| match e {
            GeoError::DnsConfig { key, problem } => format!("dns.authority.{key}: {problem}"),
            other => format!("dns.authority: {other}"),
        })
    }

    /// Makes a relative `geoip` path relative to `base`, the config file's folder, so that a
    /// config means the same whatever the working directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.geoip.is_relative() {
            self.geoip = base.join(&self.geoip);
        }
    }

    /// Opens the `geoip` database, before anything is bound or written: a wrong path is the
    /// operator's to fix, and should stop a server at once.
    ///
    /// Errors: [`GeoError::Read`] or [`GeoError::Format`], naming the file.
    pub fn open_geoip(&self) -> Result<Arc<GeoIp>, GeoError> {
        GeoIp::open(&self.geoip).map(Arc::new)
    }

    /// Binds UDP and TCP on `listen` and announces them with `listening on dns-udp ADDR` and
    /// `listening on dns-tcp ADDR`.
    ///
    /// Errors: [`GeoError::DnsBind`], naming the protocol, the address and the fix.
    pub fn bind(&self) -> Result<DnsSockets, GeoError> {
        let sockets = DnsSockets::bind(self.listen)?;
        if let Ok(addr) = sockets.local_addr() {
            info!("listening on dns-udp {addr}");
            info!("listening on dns-tcp {addr}");
        }
        Ok(sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        listen = "127.0.0.1:0"
        geoip = "geo/City.mmdb"
        [authority]
        zone = "sat.example.com"
        hosts = { app = "app" }
    "#;

    fn parse(text: &str) -> Result<DnsSection, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_relative_geoip_path_resolves_against_the_config_folder() {
        let mut dns = parse(GOOD).unwrap();
        dns.resolve_paths(Path::new("/etc/sat"));
        assert_eq!(dns.geoip, PathBuf::from("/etc/sat/geo/City.mmdb"));
        let mut absolute = parse(&GOOD.replace("geo/City.mmdb", "/srv/City.mmdb")).unwrap();
        absolute.resolve_paths(Path::new("/etc/sat"));
        assert_eq!(absolute.geoip, PathBuf::from("/srv/City.mmdb"));
    }

    #[test]
    fn an_unknown_key_is_rejected_by_name() {
        let e = parse(&GOOD.replace("geoip =", "geo_ip =")).unwrap_err();
        assert!(e.contains("geo_ip"), "{e}");
        let e = parse(&GOOD.replace("zone =", "zones =")).unwrap_err();
        assert!(e.contains("zones"), "{e}");
    }

    #[test]
    fn a_bad_authority_setting_names_its_full_key() {
        let dns = parse(&GOOD.replace("\"sat.example.com\"", "\"*.example.com\"")).unwrap();
        let e = dns.validate().unwrap_err();
        assert!(e.starts_with("dns.authority.zone: "), "{e}");
        parse(GOOD).unwrap().validate().unwrap();
    }
}
