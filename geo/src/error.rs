use std::path::PathBuf;

use thiserror::Error;

/// Why the GeoIP database cannot be used. Both variants are the operator's to fix (a wrong
/// path, or a file that is not a MaxMind DB); retrying with the same file cannot help.
///
/// Lookups do not fail: an address the database does not place is simply unknown, and the
/// ranking falls back to what was measured (see [`crate::geoip::GeoIp::lookup`]).
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
}
