//! Where an address is: GeoIP City lookups, and the width of the network each answer holds
//! for, which a DNS answer carries as its ECS scope (RFC 7871).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use maxminddb::{MaxMindDbError, Reader};
use serde::Deserialize;
use tracing::warn;

use crate::{GeoError, Location};

/// A MaxMind DB with the City layout (GeoIP2 or GeoLite2 City, or DB-IP's City databases),
/// held in memory. Lookups take `&self` and do no IO, so one `GeoIp` can serve every task.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    /// Set by the first record that does not decode, so that a damaged file is reported once
    /// rather than on every DNS query that lands on it.
    reported_damage: AtomicBool,
}

/// Where an address is, and the database network that holds it: what routing needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub location: Location,
    /// Prefix length of the database network that holds the address. Every address in that
    /// network gets this same place, so it is the widest ECS scope an answer built from it may
    /// claim. It can be longer than the client subnet a resolver sent (RFC 7871 allows that).
    pub network_prefix_len: u8,
}

/// What the database says about one address.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoHit {
    pub location: Location,
    /// As in [`Place`].
    pub network_prefix_len: u8,
    /// ISO 3166-1 alpha-2 code, such as `GB`.
    pub country: Option<String>,
    /// The city's English name.
    pub city: Option<String>,
}

impl GeoIp {
    /// Reads the whole file into memory: a City database is tens of MB, and lookups then cost
    /// no IO and cannot fail halfway because the file changed underneath.
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::Read {
            path: path.to_owned(),
            source,
        })?;
        let reader = Reader::from_source(bytes).map_err(|source| GeoError::Format {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            reader,
            reported_damage: AtomicBool::new(false),
        })
    }

    /// The database's own name for its kind, such as `GeoIP2-City`, for logs.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Where `ip` is, or `None` if the database does not place it (no record, or a record
    /// without coordinates, such as private and reserved addresses).
    ///
    /// A record that does not decode also answers `None`, after one warning: for routing, an
    /// unplaced client is an ordinary case (it is ranked by measurements alone), and failing
    /// the query instead would give the user nothing better.
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoHit> {
        let (record, place) = self.find::<CityRecord>(ip)?;
        Some(GeoHit {
            location: place.location,
            network_prefix_len: place.network_prefix_len,
            country: record.country.iso_code.map(str::to_owned),
            city: record.city.names.en.map(str::to_owned),
        })
    }

    /// [`GeoIp::lookup`] without the names: only what routing uses, for the DNS server, which
    /// places a client on every query and has no use for the city's name.
    pub fn place(&self, ip: IpAddr) -> Option<Place> {
        self.find::<PlaceRecord>(ip).map(|(_, place)| place)
    }

    fn find<'a, R: Deserialize<'a> + HasCoordinates>(&'a self, ip: IpAddr) -> Option<(R, Place)> {
        // Dual-stack sockets show IPv4 clients as ::ffff:a.b.c.d. The database maps that range
        // onto its IPv4 records, but reports the network as an IPv6 /12x, which is the wrong
        // family for an ECS scope; looking up the IPv4 address gives the IPv4 network.
        let ip = ip.to_canonical();
        match self.try_find(ip) {
            Ok(found) => found,
            Err(error) => {
                if !self.reported_damage.swap(true, Ordering::Relaxed) {
                    warn!(
                        %ip, %error,
                        "GeoIP database record does not decode; addresses like this are treated \
                         as unplaced (replace the database file to fix)"
                    );
                }
                None
            }
        }
    }

    fn try_find<'a, R: Deserialize<'a> + HasCoordinates>(
        &'a self,
        ip: IpAddr,
    ) -> Result<Option<(R, Place)>, MaxMindDbError> {
        let found = self.reader.lookup(ip)?;
        let Some(record) = found.decode::<R>()? else {
            return Ok(None);
        };
        let coordinates = record.coordinates();
        let (Some(lat), Some(lon)) = (coordinates.latitude, coordinates.longitude) else {
            return Ok(None);
        };
        if !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)) {
            return Ok(None);
        }
        let network = found.network()?;
        // An IPv4 address in an IPv6 database without an IPv4 subtree matches above where one
        // would start, and the network comes back as IPv6. Its length means nothing to an
        // IPv4 client subnet, so claim only the address itself.
        let network_prefix_len = if network.is_ipv4() == ip.is_ipv4() {
            network.prefix()
        } else if ip.is_ipv4() {
            32
        } else {
            128
        };
        let place = Place {
            location: Location { lat, lon },
            network_prefix_len,
        };
        Ok(Some((record, place)))
    }
}

/// The parts of a City record that routing uses. Decoding only these, rather than the whole
/// `geoip2::City` with its names in every language, makes a lookup 2.5 times faster (see
/// `benches/ranking.rs`): the decoder skips the fields a type does not ask for.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(default)]
    location: Coordinates,
    #[serde(borrow, default)]
    country: Country<'a>,
    #[serde(borrow, default)]
    city: City<'a>,
}

/// A City record's `location`, which is all of it that [`GeoIp::place`] decodes.
#[derive(Default, Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// Records that carry coordinates: the whole City record as routing reads it, or just the
/// coordinates.
trait HasCoordinates {
    fn coordinates(&self) -> &Coordinates;
}

impl HasCoordinates for CityRecord<'_> {
    fn coordinates(&self) -> &Coordinates {
        &self.location
    }
}

/// A record decoded as [`PlaceRecord`] skips every field but `location`.
#[derive(Deserialize)]
struct PlaceRecord {
    #[serde(default)]
    location: Coordinates,
}

impl HasCoordinates for PlaceRecord {
    fn coordinates(&self) -> &Coordinates {
        &self.location
    }
}

#[derive(Default, Deserialize)]
struct Country<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Default, Deserialize)]
struct City<'a> {
    #[serde(borrow, default)]
    names: Names<'a>,
}

#[derive(Default, Deserialize)]
struct Names<'a> {
    en: Option<&'a str>,
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = self.reader.metadata();
        f.debug_struct("GeoIp")
            .field("database_type", &meta.database_type)
            .field("build_epoch", &meta.build_epoch)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn test_db() -> GeoIp {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/GeoIP2-City-Test.mmdb");
        GeoIp::open(&path).expect("test database")
    }

    fn hit(db: &GeoIp, ip: &str) -> GeoHit {
        db.lookup(ip.parse().unwrap())
            .unwrap_or_else(|| panic!("{ip} should be in the test database"))
    }

    /// The entries DESIGN.md names, with the network the database holds each in. The prefix
    /// length is the ECS scope the geo DNS will answer with, so it is pinned exactly.
    #[test]
    fn known_entries_with_their_networks() {
        let db = test_db();
        let cases = [
            ("81.2.69.142", 31, "GB", Some("London"), 51.5142, -0.0931),
            (
                "216.160.83.56",
                29,
                "US",
                Some("Milton"),
                47.2513,
                -122.3149,
            ),
            ("175.16.199.0", 24, "CN", Some("Changchun"), 43.88, 125.3228),
            (
                "175.16.199.255",
                24,
                "CN",
                Some("Changchun"),
                43.88,
                125.3228,
            ),
            (
                "89.160.20.112",
                28,
                "SE",
                Some("Linköping"),
                58.4167,
                15.6167,
            ),
            (
                "89.160.20.127",
                28,
                "SE",
                Some("Linköping"),
                58.4167,
                15.6167,
            ),
            (
                "2001:480:10::1",
                48,
                "US",
                Some("San Diego"),
                32.7203,
                -117.1552,
            ),
            (
                "2001:480:10:ffff::1",
                48,
                "US",
                Some("San Diego"),
                32.7203,
                -117.1552,
            ),
            // A record with a country and coordinates but no city.
            ("67.43.156.1", 24, "BT", None, 27.5, 90.5),
        ];
        for (ip, prefix, country, city, lat, lon) in cases {
            let got = hit(&db, ip);
            assert_eq!(got.network_prefix_len, prefix, "{ip}");
            assert_eq!(got.country.as_deref(), Some(country), "{ip}");
            assert_eq!(got.city.as_deref(), city, "{ip}");
            assert!((got.location.lat - lat).abs() < 1e-9, "{ip}");
            assert!((got.location.lon - lon).abs() < 1e-9, "{ip}");
        }
    }

    #[test]
    fn place_is_the_lookup_without_the_names() {
        let db = test_db();
        for ip in [
            "81.2.69.142",
            "216.160.83.56",
            "2001:480:10::1",
            "::ffff:81.2.69.142",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let hit = hit(&db, &ip.to_string());
            let place = db.place(ip).unwrap_or_else(|| panic!("{ip} has a place"));
            assert_eq!(place.location, hit.location, "{ip}");
            assert_eq!(place.network_prefix_len, hit.network_prefix_len, "{ip}");
        }
        assert_eq!(db.place("10.1.2.3".parse().unwrap()), None);
    }

    #[test]
    fn neighbouring_network_has_its_own_prefix() {
        // 89.160.20.112/28 sits inside Linköping's wider records; the next block is a /25.
        let db = test_db();
        assert_eq!(hit(&db, "89.160.20.128").network_prefix_len, 25);
        assert_eq!(hit(&db, "89.160.20.128").city.as_deref(), Some("Linköping"));
    }

    #[test]
    fn ipv4_mapped_ipv6_answers_as_ipv4() {
        let db = test_db();
        let mapped = hit(&db, "::ffff:81.2.69.142");
        assert_eq!(mapped, hit(&db, "81.2.69.142"));
        assert_eq!(mapped.network_prefix_len, 31);
    }

    #[test]
    fn unplaced_addresses_are_none() {
        let db = test_db();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "::1",
            "2001:db8::1",
            "81.2.69.0",
        ] {
            assert_eq!(db.lookup(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn open_errors_name_the_file_and_the_fix() {
        let missing = GeoIp::open(Path::new("/nonexistent/City.mmdb")).unwrap_err();
        assert!(matches!(missing, GeoError::Read { .. }));
        assert!(missing.to_string().contains("/nonexistent/City.mmdb"));

        let not_mmdb = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = GeoIp::open(&not_mmdb).unwrap_err();
        assert!(matches!(err, GeoError::Format { .. }), "{err}");
        assert!(err.to_string().contains("City database"), "{err}");
    }

    #[test]
    fn reports_its_type() {
        let db = test_db();
        assert_eq!(db.database_type(), "GeoIP2-City");
        assert!(format!("{db:?}").contains("GeoIP2-City"));
    }
}
