//! The geo DNS server's settings, and their check: everything is validated, and turned into
//! the DNS names and records the server answers with, before a socket is bound.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use serde::Deserialize;

use crate::GeoError;

/// The most UDP threads a config may ask for.
const UDP_THREADS_LIMIT: usize = 64;

/// The `[dns]` section: the zone the server is authoritative for, and how it answers.
///
/// ```toml
/// [dns]
/// zone = "sat.example.com"
/// name_servers = ["ns1.sat.example.com", "ns2.sat.example.com"]
/// ttl = "30s"
/// relays_per_answer = 2
///
/// [dns.hosts]
/// app = "app"                      # app.sat.example.com -> service "app"
/// "api.sat.example.com." = "api"
///
/// [dns.soa]
/// rname = "hostmaster@example.com"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone, such as `sat.example.com` (a trailing dot is optional). Names outside it are
    /// REFUSED.
    pub zone: String,
    /// The zone's NS records: the names its parent delegates it to. Absolute names (a trailing
    /// dot is optional). Names inside the zone are answered with the best relays' addresses,
    /// like the service hosts, since every relay serves this zone. Default: `ns1.<zone>`.
    #[serde(default)]
    pub name_servers: Vec<String>,
    /// Host name -> service. A name is relative to the zone (`app`), unless it ends with a dot
    /// or with the zone itself; `@` is the zone's apex. Every relay serves every service, so
    /// the service only names the host in logs.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// TTL of the A/AAAA answers. Short, so that a relay taken out of rotation leaves resolvers'
    /// caches soon.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// TTL of the SOA and NS records, which change only with this configuration.
    #[serde(default = "default_zone_ttl", with = "humantime_serde")]
    pub zone_ttl: Duration,
    /// How many relays an A/AAAA answer lists, best first: 1 or 2. A second one lets a client
    /// that cannot reach the first try another without a new query.
    #[serde(default = "default_relays_per_answer")]
    pub relays_per_answer: u8,
    /// The largest UDP answer this server sends, in bytes, whatever a client's EDNS buffer
    /// size: 1232 avoids IP fragmentation on any path (DNS flag day 2020). From 512 to 4096.
    #[serde(default = "default_max_udp_payload")]
    pub max_udp_payload: u16,
    /// How long a TCP connection may stay idle before the server closes it.
    #[serde(default = "default_tcp_timeout", with = "humantime_serde")]
    pub tcp_timeout: Duration,
    /// Threads answering UDP, from 1 to 64. Default: half the cores, from 1 to 4, which leaves
    /// a relay room for its proxying; a server that only answers DNS may want more.
    #[serde(default)]
    pub udp_threads: Option<usize>,
    #[serde(default)]
    pub soa: SoaConfig,
}

/// The SOA record's fields. The zone's content is made up per query, so no secondary ever
/// transfers it, and refresh, retry and expire matter little; `minimum` is what resolvers use:
/// how long they cache "no such name" (RFC 2308). The serial is not set here: it is the config
/// generation of the relay map the answers come from (see [`super::DnsTable::serial`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoaConfig {
    /// The primary name server. Default: the first of `name_servers`.
    #[serde(default)]
    pub mname: Option<String>,
    /// The zone administrator's mailbox, as `hostmaster@example.com` or in DNS form
    /// (`hostmaster.example.com`). Default: `hostmaster.<zone>`.
    #[serde(default)]
    pub rname: Option<String>,
    /// No longer settable; kept to refuse it with the reason rather than as an unknown key.
    #[serde(default)]
    pub serial: Option<u32>,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    #[serde(default = "default_retry", with = "humantime_serde")]
    pub retry: Duration,
    #[serde(default = "default_expire", with = "humantime_serde")]
    pub expire: Duration,
    /// The negative-caching TTL (RFC 2308).
    #[serde(default = "default_minimum", with = "humantime_serde")]
    pub minimum: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_zone_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_relays_per_answer() -> u8 {
    2
}
fn default_max_udp_payload() -> u16 {
    1232
}
fn default_tcp_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}
fn default_retry() -> Duration {
    Duration::from_secs(600)
}
fn default_expire() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_minimum() -> Duration {
    Duration::from_secs(60)
}

impl Default for SoaConfig {
    fn default() -> Self {
        Self {
            mname: None,
            rname: None,
            serial: None,
            refresh: default_refresh(),
            retry: default_retry(),
            expire: default_expire(),
            minimum: default_minimum(),
        }
    }
}

impl DnsConfig {
    /// The defaults for `zone`, with no hosts.
    pub fn for_zone(zone: &str) -> Self {
        Self {
            zone: zone.to_owned(),
            name_servers: Vec::new(),
            hosts: BTreeMap::new(),
            ttl: default_ttl(),
            zone_ttl: default_zone_ttl(),
            relays_per_answer: default_relays_per_answer(),
            max_udp_payload: default_max_udp_payload(),
            tcp_timeout: default_tcp_timeout(),
            udp_threads: None,
            soa: SoaConfig::default(),
        }
    }

    /// Checks every setting, as [`crate::dns::serve`] does before it starts; for `sat
    /// check-config` and for callers that validate before they bind.
    pub fn validate(&self) -> Result<(), GeoError> {
        Zone::from_config(self).map(drop)
    }
}

/// What a name in the zone holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A service's host name: A/AAAA with the best relays.
    Service(String),
    /// A name server's name inside the zone: answered like a service host, since every relay
    /// serves the zone.
    NameServer,
    /// A name with nothing of its own but names below it (an "empty non-terminal"): it exists,
    /// so its queries get NODATA rather than NXDOMAIN (RFC 8020).
    Empty,
}

/// The configuration, checked and turned into DNS names and records.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    pub origin: LowerName,
    /// Every name in the zone but the apex. The apex answers A/AAAA only if it is here too.
    pub names: HashMap<LowerName, Node>,
    pub apex_hosts: Option<String>,
    /// At the apex, with `zone_ttl`.
    pub soa: Record,
    /// In the authority section of negative answers, with the TTL RFC 2308 asks for: the lesser
    /// of the SOA's own TTL and its minimum.
    pub negative_soa: Record,
    /// The same, for "this host has no relay of that family right now", which can change as
    /// soon as a relay comes back: cached no longer than a positive answer.
    pub nodata_soa: Record,
    pub ns: Vec<Record>,
    pub ttl: u32,
    pub relays_per_answer: usize,
    pub max_udp_payload: u16,
    /// The names whose A and AAAA queries get relays (hosts, in-zone name servers, and the
    /// apex if it is a host), in lowercase wire form, for the UDP fast path.
    pub relay_names: HashSet<Box<[u8]>>,
}

fn bad(key: impl Into<String>, problem: impl Into<String>) -> GeoError {
    GeoError::DnsConfig {
        key: key.into(),
        problem: problem.into(),
    }
}

fn parse_name(key: &str, text: &str) -> Result<Name, GeoError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad(
            key,
            "is empty; give a DNS name such as `sat.example.com`",
        ));
    }
    let mut name = Name::from_utf8(trimmed)
        .map_err(|e| bad(key, format!("`{text}` is not a DNS name ({e})")))?;
    if name.iter().any(|label| label == b"*") {
        return Err(bad(
            key,
            format!("`{text}`: wildcards are not supported; list each host"),
        ));
    }
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Seconds in a TTL or an SOA timer: at most 2^31 - 1 (RFC 2181, section 8).
fn seconds(key: &str, value: Duration) -> Result<u32, GeoError> {
    let secs = value.as_secs();
    if secs > i32::MAX as u64 {
        return Err(bad(
            key,
            format!("{secs}s is too long; the most DNS allows is 2147483647s"),
        ));
    }
    Ok(secs as u32)
}

impl Zone {
    pub fn from_config(config: &DnsConfig) -> Result<Self, GeoError> {
        let origin = parse_name("zone", &config.zone)?;
        if origin.is_root() {
            return Err(bad(
                "zone",
                "the root zone cannot be served; give the geo zone, such as `sat.example.com`",
            ));
        }
        let ttl = seconds("ttl", config.ttl)?;
        let zone_ttl = seconds("zone_ttl", config.zone_ttl)?;
        if !(1..=2).contains(&config.relays_per_answer) {
            return Err(bad(
                "relays_per_answer",
                format!("is {}; it must be 1 or 2", config.relays_per_answer),
            ));
        }
        if !(512..=4096).contains(&config.max_udp_payload) {
            return Err(bad(
                "max_udp_payload",
                format!(
                    "is {}; it must be from 512 to 4096 (1232 is safe everywhere)",
                    config.max_udp_payload
                ),
            ));
        }
        if config.tcp_timeout.is_zero() {
            return Err(bad("tcp_timeout", "must be more than 0s, such as \"10s\""));
        }
        if let Some(n) = config
            .udp_threads
            .filter(|n| !(1..=UDP_THREADS_LIMIT).contains(n))
        {
            return Err(bad(
                "udp_threads",
                format!("is {n}; it must be from 1 to {UDP_THREADS_LIMIT} (or left out for half the cores)"),
            ));
        }

        let mut names: HashMap<LowerName, Node> = HashMap::new();
        let mut apex_hosts = None;
        for (host, service) in &config.hosts {
            let key = format!("hosts.\"{host}\"");
            if service.trim().is_empty() {
                return Err(bad(
                    key,
                    "names no service; give the service this host is for",
                ));
            }
            let name = if host.trim() == "@" {
                origin.clone()
            } else {
                let name = parse_name(&key, host)?;
                let absolute = host.trim().ends_with('.') || origin.zone_of(&name);
                let name = if absolute {
                    name
                } else {
                    name.append_domain(&origin).map_err(|e| {
                        bad(
                            &key,
                            format!("`{host}` under `{origin}` is not a DNS name ({e})"),
                        )
                    })?
                };
                if !origin.zone_of(&name) {
                    return Err(bad(
                        key,
                        format!("`{name}` is outside the zone `{origin}`; use a name inside it"),
                    ));
                }
                name
            };
            if name == origin {
                apex_hosts = Some(service.clone());
            } else if names
                .insert(LowerName::new(&name), Node::Service(service.clone()))
                .is_some()
            {
                return Err(bad(key, format!("`{name}` is listed twice")));
            }
        }

        let ns_names: Vec<Name> = if config.name_servers.is_empty() {
            vec![Name::from_ascii("ns1")
                .and_then(|n| n.append_domain(&origin))
                .map_err(|e| {
                    bad(
                        "name_servers",
                        format!("ns1.{origin} is not a DNS name ({e}); list the name servers"),
                    )
                })?]
        } else {
            config
                .name_servers
                .iter()
                .enumerate()
                .map(|(i, ns)| parse_name(&format!("name_servers[{i}]"), ns))
                .collect::<Result<_, _>>()?
        };
        for ns in &ns_names {
            if origin.zone_of(ns) && *ns != origin {
                names.entry(LowerName::new(ns)).or_insert(Node::NameServer);
            }
        }

        // Names between the apex and a host exist too, without records of their own.
        let hosts: Vec<Name> = names.keys().map(Name::from).collect();
        for host in hosts {
            let mut up = host.base_name();
            while up.num_labels() > origin.num_labels() {
                names.entry(LowerName::new(&up)).or_insert(Node::Empty);
                up = up.base_name();
            }
        }

        let mname = match &config.soa.mname {
            Some(m) => parse_name("soa.mname", m)?,
            None => ns_names[0].clone(),
        };
        let rname = match &config.soa.rname {
            Some(r) => parse_rname(r)?,
            None => Name::from_ascii("hostmaster")
                .and_then(|n| n.append_domain(&origin))
                .map_err(|e| {
                    bad(
                        "soa.rname",
                        format!("hostmaster.{origin} is not a DNS name ({e}); set soa.rname"),
                    )
                })?,
        };
        if config.soa.serial.is_some() {
            return Err(bad(
                "soa.serial",
                "cannot be set: the serial is the config generation, which grows with every \
                 change the control plane pushes; remove the key",
            ));
        }
        let minimum = seconds("soa.minimum", config.soa.minimum)?;
        let soa_rdata = SOA::new(
            mname,
            rname,
            // Replaced in each answer by the table's (`DnsTable::serial`).
            0,
            seconds("soa.refresh", config.soa.refresh)? as i32,
            seconds("soa.retry", config.soa.retry)? as i32,
            seconds("soa.expire", config.soa.expire)? as i32,
            minimum,
        );
        let soa = Record::from_rdata(origin.clone(), zone_ttl, RData::SOA(soa_rdata));
        let mut negative_soa = soa.clone();
        negative_soa.set_ttl(zone_ttl.min(minimum));
        let mut nodata_soa = soa.clone();
        nodata_soa.set_ttl(zone_ttl.min(minimum).min(ttl));
        let ns = ns_names
            .into_iter()
            .map(|n| Record::from_rdata(origin.clone(), zone_ttl, RData::NS(NS(n))))
            .collect();

        let mut relay_names: HashSet<Box<[u8]>> = names
            .iter()
            .filter(|(_, node)| matches!(node, Node::Service(_) | Node::NameServer))
            .map(|(name, _)| wire_form(&Name::from(name)))
            .collect();
        if apex_hosts.is_some() {
            relay_names.insert(wire_form(&origin));
        }

        Ok(Self {
            origin: LowerName::new(&origin),
            names,
            relay_names,
            apex_hosts,
            soa,
            negative_soa,
            nodata_soa,
            ns,
            ttl,
            relays_per_answer: usize::from(config.relays_per_answer),
            max_udp_payload: config.max_udp_payload,
        })
    }
}

/// A name as it is written in a message without compression: each label after its length,
/// then the root's zero.
fn wire_form(name: &Name) -> Box<[u8]> {
    let mut wire = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        // A label is at most 63 bytes (Name checks), so this never saturates.
        wire.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
        wire.extend_from_slice(label);
    }
    wire.push(0);
    wire.into()
}

/// `hostmaster@example.com` or `hostmaster.example.com` -> `hostmaster.example.com.`
fn parse_rname(text: &str) -> Result<Name, GeoError> {
    match text.trim().split_once('@') {
        Some((local, domain)) => {
            if local.is_empty() || local.contains('.') {
                return Err(bad(
                    "soa.rname",
                    format!("`{text}`: the part before @ must be one label without dots, such as hostmaster@example.com"),
                ));
            }
            parse_name("soa.rname", &format!("{local}.{domain}"))
        }
        None => parse_name("soa.rname", text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DnsConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn problem(config: &DnsConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let config = parse(r#"zone = "sat.example.com""#).unwrap();
        assert_eq!(config, DnsConfig::for_zone("sat.example.com"));
        assert_eq!(config.ttl, Duration::from_secs(30));
        assert_eq!(config.relays_per_answer, 2);
        let zone = Zone::from_config(&config).unwrap();
        assert_eq!(zone.ttl, 30);
        assert_eq!(zone.ns.len(), 1);
        let RData::NS(ns) = zone.ns[0].data() else {
            panic!("{:?}", zone.ns)
        };
        assert_eq!(ns.0.to_string(), "ns1.sat.example.com.");
        // ns1 is inside the zone, so it is answered with the relays.
        let ns1 = LowerName::from(Name::from_ascii("ns1.sat.example.com.").unwrap());
        assert_eq!(zone.names.get(&ns1), Some(&Node::NameServer));
        let RData::SOA(soa) = zone.soa.data() else {
            panic!()
        };
        assert_eq!(soa.rname().to_string(), "hostmaster.sat.example.com.");
        assert_eq!(zone.negative_soa.ttl(), 60);
        assert_eq!(zone.nodata_soa.ttl(), 30);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("zone = \"sat.example.com\"\nttls = \"30s\"").unwrap_err();
        assert!(err.to_string().contains("ttls"), "{err}");
        let err = parse("zone = \"sat.example.com\"\n[soa]\nserail = 3").unwrap_err();
        assert!(err.to_string().contains("serail"), "{err}");
        let err = parse("zone = \"sat.example.com\"\nttl = \"thirty\"").unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
        assert!(parse("ttl = \"30s\"").is_err(), "zone is required");
    }

    #[test]
    fn host_names_relative_absolute_and_apex() {
        let config = parse(
            r#"
            zone = "Sat.Example.com."
            [hosts]
            app = "app"
            "API.sat.example.com" = "api"
            "x.y.sat.example.com." = "xy"
            "@" = "apex"
            "#,
        )
        .unwrap();
        let zone = Zone::from_config(&config).unwrap();
        let get = |n: &str| {
            zone.names
                .get(&LowerName::from(Name::from_ascii(n).unwrap()))
                .cloned()
        };
        assert_eq!(
            get("app.sat.example.com."),
            Some(Node::Service("app".into()))
        );
        assert_eq!(
            get("api.sat.example.com."),
            Some(Node::Service("api".into()))
        );
        assert_eq!(
            get("x.y.sat.example.com."),
            Some(Node::Service("xy".into()))
        );
        assert_eq!(get("y.sat.example.com."), Some(Node::Empty));
        assert_eq!(get("api.sat.example.com.sat.example.com."), None);
        assert_eq!(zone.apex_hosts.as_deref(), Some("apex"));
        assert_eq!(zone.origin.to_string(), "sat.example.com.");
    }

    #[test]
    fn bad_settings_name_the_key_and_the_fix() {
        let mut config = DnsConfig::for_zone("sat.example.com");
        config.relays_per_answer = 3;
        assert!(problem(&config).contains("`relays_per_answer`"));
        assert!(problem(&config).contains("1 or 2"));
        config.relays_per_answer = 0;
        assert!(problem(&config).contains("1 or 2"));

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.hosts.insert("www.example.org.".into(), "www".into());
        let p = problem(&config);
        assert!(
            p.contains("hosts.\"www.example.org.\"") && p.contains("outside the zone"),
            "{p}"
        );

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.hosts.insert("*.app".into(), "app".into());
        assert!(problem(&config).contains("wildcards"));

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.hosts.insert("app".into(), " ".into());
        assert!(problem(&config).contains("service"));

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.hosts.insert("app".into(), "a".into());
        config
            .hosts
            .insert("app.sat.example.com.".into(), "b".into());
        assert!(problem(&config).contains("twice"));

        for zone in ["", ".", "bad..name"] {
            let p = problem(&DnsConfig::for_zone(zone));
            assert!(p.contains("`zone`"), "{zone}: {p}");
        }

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.max_udp_payload = 100;
        assert!(problem(&config).contains("512 to 4096"));

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.ttl = Duration::from_secs(1 << 31);
        assert!(problem(&config).contains("`ttl`"));

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.tcp_timeout = Duration::ZERO;
        assert!(problem(&config).contains("`tcp_timeout`"));

        for threads in [0, 65] {
            let mut config = DnsConfig::for_zone("sat.example.com");
            config.udp_threads = Some(threads);
            assert!(problem(&config).contains("`udp_threads`"), "{threads}");
        }
        let mut config = DnsConfig::for_zone("sat.example.com");
        config.udp_threads = Some(64);
        assert!(config.validate().is_ok());

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.soa.rname = Some("first.last@example.com".into());
        assert!(problem(&config).contains("`soa.rname`"));

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.name_servers = vec!["ns1.example.net".into(), "".into()];
        assert!(problem(&config).contains("`name_servers[1]`"));

        let mut config = DnsConfig::for_zone("sat.example.com");
        config.soa.serial = Some(2024010101);
        let p = problem(&config);
        assert!(
            p.contains("`soa.serial`") && p.contains("config generation"),
            "{p}"
        );
    }
}
