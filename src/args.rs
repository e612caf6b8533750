//! The arguments that `sat relays`, `connect`, `forward` and `ssh` share: where to find a relay,
//! which CA to trust, the access token, and `--via`.

use std::path::PathBuf;

use sat_client::Trust;

#[derive(clap::Args)]
pub struct RelayArgs {
    /// Any relay, as host:port (its HTTPS port, which also serves QUIC): it lists the others.
    /// May be left out once a relay has been chosen (the choice is cached).
    #[arg(long, env = "SAT_RELAY")]
    pub(crate) relay: Option<String>,
    /// A CA bundle (PEM) to check the relays' certificates against, for relays whose
    /// certificates come from a private CA. Without it, the system's root store is used, as a
    /// browser would (SSL_CERT_FILE and SSL_CERT_DIR replace it when set); for the relays that
    /// `sat up` runs (127.0.0.2-4:8443), `sat up`'s own CA.
    #[arg(long, env = "SAT_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Access token for a service that requires one (from `sat admin token create`).
    #[arg(long, env = "SAT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

#[derive(clap::Args)]
pub struct TunnelArgs {
    #[command(flatten)]
    pub(crate) relay: RelayArgs,
    /// Pin the relay: a region (eu-west), a relay's name, or an address (host:port, used as
    /// given, without probing).
    #[arg(long, env = "SAT_VIA")]
    pub(crate) via: Option<String>,
}

/// What to check the relays' certificates against: `--ca`; else `sat up`'s CA for the relays
/// `sat up` runs, which are the addresses given (`--relay`, and `--via` if it is an address),
/// or, with none given, the relays remembered from earlier runs if only `sat up`'s are; else
/// the system's root store.
pub(crate) fn trust(args: &RelayArgs, via: Option<&str>) -> Trust {
    if let Some(ca) = &args.ca {
        return Trust::Ca(ca.clone());
    }
    let up_ca = sat_devnet::web_ca(&sat_devnet::default_data_dir());
    if !up_ca.exists() {
        return Trust::System;
    }
    let up = Trust::Ca(up_ca);
    let named: Vec<&str> = args
        .relay
        .as_deref()
        .into_iter()
        .chain(via.filter(|v| sat_client::is_address(v)))
        .collect();
    let is_up = if named.is_empty() {
        let remembered = |trust: &Trust| {
            cache_dir()
                .map(|dir| sat_client::cached_relays(&sat_client::cache_path(&dir, trust)))
                .unwrap_or_default()
        };
        remembered(&Trust::System).is_empty() && !remembered(&up).is_empty()
    } else {
        named.iter().all(|addr| sat_devnet::serves_relay_at(addr))
    };
    if is_up {
        up
    } else {
        Trust::System
    }
}

/// Where clients remember their choice of relay: SAT_CACHE_DIR, or the XDG cache directory.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SAT_CACHE_DIR") {
        return Some(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("sat"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/sat"))
}
