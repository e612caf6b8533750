use std::path::PathBuf;

use thiserror::Error;

/// Why something in this crate cannot run.
///
/// - [`GeoError::Read`], [`GeoError::Format`] and [`GeoError::DnsConfig`] are the operator's to
///   fix (a wrong path, a file that is not a MaxMind DB, a bad `[dns]` setting); retrying with
///   the same input cannot help.
/// - [`GeoError::DnsBind`] is the operator's or the host's: the DNS port is taken, or
///   privileged. Retrying after the other server stops can help.
/// - [`GeoError::DnsSocket`] is the host's: the socket the caller bound cannot be handed to the
///   runtime (out of file descriptors, say). A retry after the cause is fixed can help.
/// - [`GeoError::DnsStopped`] is internal: the DNS server's socket closed under it while it was
///   running. Restarting the component can help.
/// - [`GeoError::Network`] is the caller's: a client network written as something other than
///   an IPv4 /24 or an IPv6 /48 (see [`crate::dns::Network`]). The same text fails again.
///
/// Lookups do not fail: an address the database does not place is simply unknown, and the
/// ranking falls back to what was measured (see [`crate::geoip::GeoIp::lookup`]). Bad DNS
/// queries are not errors either: they are answered with FORMERR or REFUSED.
#[derive(Debug, Error)]
pub enum GeoError {
    #[error(
        "cannot read GeoIP database {path}: {source}; check the path and that the file is readable"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable MaxMind DB file ({source}); use a GeoIP2 or GeoLite2 City database (.mmdb)")]
    Format {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    /// `key` is the setting's path inside the DNS section, such as `hosts."app"`.
    #[error("geo DNS setting `{key}`: {problem}")]
    DnsConfig { key: String, problem: String },
    #[error("cannot bind geo DNS {proto} on {addr}: {source}; stop whatever else serves that port, or set another `dns.listen` (ports below 1024 need root or CAP_NET_BIND_SERVICE)")]
    DnsBind {
        proto: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("geo DNS cannot use its {proto} socket: {source}")]
    DnsSocket {
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("geo DNS server stopped: {reason}; restart the process to serve DNS again")]
    DnsStopped { reason: String },
    #[error("`{input}` is not a client network: {problem} (an IPv4 /24 or an IPv6 /48, such as 192.0.2.0/24 or 2001:db8:1::/48)")]
    Network { input: String, problem: String },
}
