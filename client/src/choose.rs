//! Which relays a tunnel goes through: the best by the whole path, kept until another is
//! clearly better, remembered between runs.
//!
//! A run starts from the cache file if it is recent ([`FRESH_FOR`]): the relay chosen last
//! time is dialed at once, with the runner-up as warm standby, and the relays are probed again
//! in the background. Without a recent cache, the relays are probed first: the relay map from
//! `--relay` (or any relay the cache knows), then every relay that is up, timed in parallel.
//! Each probe round feeds [`Hysteresis`], which moves to another relay only when it is clearly
//! faster over several rounds (the Tailscale rule; see `sat_geo::hysteresis`); its samples are
//! saved, so that a restart is not a chance to flap.
//!
//! `--via` pins: an address (`host:port`) is dialed as given, with no probing; a region or a
//! relay name limits the choice to those relays, ranked as usual, and leaves the cache alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sat_geo::hysteresis::{History, Hysteresis, Reason, Switch};
use sat_geo::rank::{self, PeerRtts};
use sat_proto::clock;
use sat_proto::control::RelayInfo;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::probe::{dial_address, Prober};
use crate::{ClientError, Dialer, Hop, Route, Trust};

/// A cache younger than this is trusted to start with; the relays are probed again behind it.
pub const FRESH_FOR: Duration = Duration::from_secs(600);
/// How many relays a route keeps: the chosen one, the warm standby, and one more.
const ROUTE_LEN: usize = 3;

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Any relay's host:port: where the relay map comes from.
    pub relay: Option<String>,
    /// What the relays' certificates are checked against.
    pub trust: Trust,
    /// The service access token, if the service needs one.
    pub token: Option<String>,
    /// `--via`: an address, a region or a relay name.
    pub via: Option<String>,
    /// Where the choice is remembered; `None` keeps nothing.
    pub cache: Option<PathBuf>,
}

/// Chooses relays and keeps the choice up to date. Shared by a route's users.
pub struct Chooser {
    options: Options,
    prober: Prober,
    state: Mutex<State>,
}

struct State {
    hysteresis: Hysteresis,
    /// Every relay seen in a relay map, by name.
    relays: BTreeMap<String, Known>,
    /// When the relays were last probed (unix ms); 0 if never.
    probed_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Known {
    region: String,
    dial: String,
    /// The last measured round trip, for the route's stagger.
    rtt_us: Option<u64>,
}

/// The cache file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    probed_ms: u64,
    current: Option<String>,
    relays: BTreeMap<String, Known>,
    /// End-to-end samples per relay: (unix ms, microseconds).
    samples: BTreeMap<String, Vec<(u64, u64)>>,
}

impl Chooser {
    /// Chooses the relays for a first tunnel, and returns them as a route with the chooser
    /// that keeps it up to date.
    pub async fn start(options: Options) -> Result<(Arc<Self>, Arc<Route>), ClientError> {
        let prober = Prober::new(&options.trust)?;
        if let Some(addr) = options.via.as_deref().filter(|v| is_address(v)) {
            let hop = hop(&options, addr, addr, None).await?;
            let chooser = Self::new(options.clone(), prober, CacheFile::default());
            return Ok((Arc::new(chooser), Arc::new(Route::new(vec![hop]))));
        }
        let cache = options.cache.as_deref().map(load).unwrap_or_default();
        let fresh = options.via.is_none()
            && cache.current.is_some()
            && clock::unix_now().saturating_sub(Duration::from_millis(cache.probed_ms)) < FRESH_FOR;
        let chooser = Arc::new(Self::new(options, prober, cache));
        let route = if fresh {
            debug!("starting from the cached choice");
            let route = Arc::new(Route::new(chooser.hops(&chooser.order()).await));
            let (c, r) = (chooser.clone(), route.clone());
            tokio::spawn(async move { c.refresh(&r).await });
            route
        } else {
            match chooser.probe().await {
                Ok(order) => Arc::new(Route::new(chooser.hops(&order).await)),
                // A relay that serves no relay map (no HTTPS listener) can still carry
                // tunnels: use it as given. One whose certificate does not verify cannot.
                Err(e)
                    if chooser.options.via.is_none()
                        && chooser.options.relay.is_some()
                        && !matches!(e, ClientError::Untrusted { .. }) =>
                {
                    info!("{e}; using --relay as given");
                    Arc::new(Route::new(Vec::new()))
                }
                Err(e) => return Err(e),
            }
        };
        if route.names().is_empty() {
            // Nothing in the map could be timed (the latency checks may be filtered where
            // QUIC is not): the relay the user named is still worth a try.
            let Some(seed) = chooser.options.relay.clone() else {
                return Err(ClientError::Probe("no relay is up".into()));
            };
            warn!("no relay could be measured; using --relay {seed} as given");
            let hop = hop(&chooser.options, &seed, &seed, None).await?;
            route.reorder(std::slice::from_ref(&seed), vec![hop]);
        }
        route.warm_standby();
        Ok((chooser, route))
    }

    fn new(options: Options, prober: Prober, cache: CacheFile) -> Self {
        let (now, wall) = (Instant::now(), clock::unix_now());
        let at = |ms: u64| {
            let age = wall.saturating_sub(Duration::from_millis(ms));
            now.checked_sub(age).unwrap_or(now).into_std()
        };
        let history = cache.samples.into_iter().map(|(name, samples)| {
            let samples = samples
                .into_iter()
                .map(|(ms, us)| (at(ms), Duration::from_micros(us)))
                .collect();
            (name, samples)
        });
        let hysteresis =
            Hysteresis::restore(History::default(), cache.current, history, now.into_std());
        Self {
            options,
            prober,
            state: Mutex::new(State {
                hysteresis,
                relays: cache.relays,
                probed_ms: cache.probed_ms,
            }),
        }
    }

    /// Probes again and moves the route if the hysteresis says so. Failures are logged: the
    /// route keeps what it has.
    pub async fn refresh(&self, route: &Route) {
        match self.probe().await {
            Ok(order) => {
                let missing: Vec<String> = {
                    let have = route.names();
                    order
                        .iter()
                        .filter(|n| !have.contains(n))
                        .cloned()
                        .collect()
                };
                let new = self.hops(&missing).await;
                route.reorder(&order, new);
            }
            Err(e) => info!("cannot probe the relays; keeping the current choice: {e}"),
        }
    }

    /// Probes every `every` until `stop`, for long-running clients (`sat forward`).
    pub fn refresh_every(
        self: Arc<Self>,
        route: Arc<Route>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => self.refresh(&route).await,
                    () = stop.cancelled() => return,
                }
            }
        });
    }

    /// One probe round: the relay map, a timing of each relay, the ranking, the hysteresis.
    /// Returns the relays to use, best first.
    async fn probe(&self) -> Result<Vec<String>, ClientError> {
        let mut infos = self.prober.relay_map(&self.sources()).await?;
        if let Some(via) = &self.options.via {
            infos.retain(|i| &i.region == via || &i.name == via);
            if infos.is_empty() {
                return Err(ClientError::Probe(format!(
                    "--via {via}: no relay has that name or region (see `sat relays`)"
                )));
            }
        }
        let results = self.prober.time_all(&infos).await;
        for (info, result) in infos.iter().zip(&results) {
            if let Err(e) = result {
                debug!(relay = %info.name, "no round trip: {e}");
            }
        }
        let order = self.decide(&infos, &results);
        self.save();
        if let Some(first) = order.first() {
            self.report(first, &infos, &results);
        }
        Ok(order)
    }

    fn decide(&self, infos: &[RelayInfo], results: &[Result<Duration, String>]) -> Vec<String> {
        let (client, relays) = crate::probe::measured(infos, results);
        let measured = &client.measured;
        let ranked = rank::rank(&client, &relays, &PeerRtts::default());
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        state.probed_ms = clock::unix_now().as_millis() as u64;
        for info in infos {
            if let Some(dial) = dial_address(info) {
                let rtt_us = measured.get(&info.name).map(|d| d.as_micros() as u64);
                let known = Known {
                    region: info.region.clone(),
                    dial,
                    rtt_us,
                };
                state.relays.insert(info.name.clone(), known);
            }
        }
        if self.options.via.is_some() {
            // Pinned to a region: the best of it, with no memory of the choice.
            return ranked.iter().map(|r| r.relay.name.clone()).collect();
        }
        if let Some(switch) = state.hysteresis.update(Instant::now().into_std(), &ranked) {
            log_switch(&switch, &state.relays);
        }
        let mut order: Vec<String> = state
            .hysteresis
            .current()
            .map(str::to_owned)
            .into_iter()
            .collect();
        for r in &ranked {
            if !order.contains(&r.relay.name) {
                order.push(r.relay.name.clone());
            }
        }
        order.truncate(ROUTE_LEN);
        order
    }

    /// Tells `relay` what this probe round measured, for the control plane's routing table
    /// (geo DNS answers for this network then use it). Best effort: a failure is logged only.
    fn report(&self, relay: &str, infos: &[RelayInfo], results: &[Result<Duration, String>]) {
        let rtts: BTreeMap<&str, u64> = infos
            .iter()
            .zip(results)
            .filter_map(|(i, r)| Some((i.name.as_str(), r.as_ref().ok()?.as_micros() as u64)))
            .collect();
        let Some(known) = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.relays.get(relay).cloned())
        else {
            return;
        };
        if rtts.is_empty() {
            return;
        }
        let body = serde_json::json!({ "rtts": rtts }).to_string();
        let url = format!("https://{}/api/rtt-report", known.dial);
        let (prober, relay) = (self.prober.clone(), relay.to_owned());
        tokio::spawn(async move {
            match prober.post(&url, body.as_bytes()).await {
                Ok(()) => debug!(%relay, "round trips reported"),
                Err(e) => debug!(%relay, "cannot report round trips: {e}"),
            }
        });
    }

    /// The order the cache (or the last probe) gives: the current relay, then the others by
    /// their typical round trip.
    fn order(&self) -> Vec<String> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let current = state.hysteresis.current().map(str::to_owned);
        let mut others: Vec<(Duration, String)> = state
            .relays
            .keys()
            .filter(|n| Some(*n) != current.as_ref())
            .filter_map(|n| Some((state.hysteresis.typical_rtt(n)?, n.clone())))
            .collect();
        others.sort();
        current
            .into_iter()
            .chain(others.into_iter().map(|(_, n)| n))
            .take(ROUTE_LEN)
            .collect()
    }

    /// Dialers for `names`, from what the relay map said about them.
    async fn hops(&self, names: &[String]) -> Vec<Hop> {
        let known: Vec<(String, Known)> = {
            let Ok(state) = self.state.lock() else {
                return Vec::new();
            };
            names
                .iter()
                .filter_map(|n| Some((n.clone(), state.relays.get(n)?.clone())))
                .collect()
        };
        let mut hops = Vec::new();
        for (name, k) in known {
            let rtt = k.rtt_us.map(Duration::from_micros);
            match hop(&self.options, &name, &k.dial, rtt).await {
                Ok(hop) => hops.push(hop),
                Err(e) => warn!(relay = %name, "cannot use relay: {e}"),
            }
        }
        hops
    }

    /// Where to fetch the relay map: `--relay`, then the relays the cache knows, the current
    /// one first.
    fn sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self.options.relay.iter().cloned().collect();
        if let Ok(state) = self.state.lock() {
            for dial in known_dials(&state.relays, state.hysteresis.current()) {
                if !sources.contains(&dial) {
                    sources.push(dial);
                }
            }
        }
        sources
    }

    fn save(&self) {
        let Some(path) = &self.options.cache else {
            return;
        };
        if self.options.via.is_some() {
            return;
        }
        let file = {
            let Ok(state) = self.state.lock() else { return };
            let (now, wall) = (Instant::now().into_std(), clock::unix_now());
            let samples = state
                .hysteresis
                .history()
                .map(|(name, samples)| {
                    let samples = samples
                        .into_iter()
                        .map(|(at, rtt)| {
                            let at = wall.saturating_sub(now.saturating_duration_since(at));
                            (at.as_millis() as u64, rtt.as_micros() as u64)
                        })
                        .collect();
                    (name.to_owned(), samples)
                })
                .collect();
            CacheFile {
                probed_ms: state.probed_ms,
                current: state.hysteresis.current().map(str::to_owned),
                relays: state.relays.clone(),
                samples,
            }
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
            sat_transport::files::write_atomic(path, &json, 0o600)
        };
        if let Err(e) = write() {
            warn!("cannot save the relay choice to {}: {e}", path.display());
        }
    }
}

async fn hop(
    options: &Options,
    name: &str,
    dial: &str,
    rtt: Option<Duration>,
) -> Result<Hop, ClientError> {
    let dialer = Dialer::new(dial, &options.trust).await?;
    let dialer = match &options.token {
        Some(token) => dialer.with_token(token.clone()),
        None => dialer,
    };
    Ok(Hop {
        name: name.to_owned(),
        dialer,
        rtt,
    })
}

fn log_switch(switch: &Switch, relays: &BTreeMap<String, Known>) {
    let region = |n: &Option<String>| {
        n.as_ref()
            .and_then(|n| relays.get(n))
            .map_or("", |k| k.region.as_str())
            .to_owned()
    };
    let to = switch.to.as_deref().unwrap_or("none");
    let from = switch.from.as_deref().unwrap_or("none");
    match switch.reason {
        Reason::First => info!(relay = to, region = %region(&switch.to), "relay chosen"),
        Reason::Unavailable => {
            warn!(relay = to, region = %region(&switch.to), was = from, "relay chosen: the previous one is not available")
        }
        Reason::Overloaded => {
            info!(relay = to, region = %region(&switch.to), was = from, "relay chosen: the previous one is overloaded")
        }
        Reason::Faster {
            from: before,
            to: after,
        } => info!(
            relay = to,
            region = %region(&switch.to),
            was = from,
            "relay chosen: {:.1} ms end to end instead of {:.1} ms",
            after.as_secs_f64() * 1e3,
            before.as_secs_f64() * 1e3
        ),
    }
}

/// Whether `--via` names an address (`host:port`, `[v6]:port`) rather than a region or relay.
pub fn is_address(via: &str) -> bool {
    via.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The cache file for the network that `trust` stands for: one file per CA (and one for the
/// system's roots), so that two networks' relays never mix. `dir` is the cache directory.
pub fn cache_path(dir: &Path, trust: &Trust) -> PathBuf {
    dir.join(format!("relays-{}.json", trust.cache_id()))
}

/// The relays a cache file knows, the current one first: where to ask for the relay map when
/// the user names no relay.
pub fn cached_relays(path: &Path) -> Vec<String> {
    let cache = load(path);
    known_dials(&cache.relays, cache.current.as_deref())
}

/// The relays' addresses, `current` first.
fn known_dials(relays: &BTreeMap<String, Known>, current: Option<&str>) -> Vec<String> {
    let mut known: Vec<(bool, &String)> = relays
        .iter()
        .map(|(name, k)| (Some(name.as_str()) != current, &k.dial))
        .collect();
    known.sort();
    known.into_iter().map(|(_, dial)| dial.clone()).collect()
}

fn load(path: &Path) -> CacheFile {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!("ignoring the relay cache {}: {e}", path.display());
            CacheFile::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheFile::default(),
        Err(e) => {
            warn!("ignoring the relay cache {}: {e}", path.display());
            CacheFile::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_tells_addresses_from_regions() {
        assert!(is_address("127.0.0.2:8443"));
        assert!(is_address("relay.example.com:443"));
        assert!(is_address("[::1]:8443"));
        assert!(!is_address("eu-west"));
        assert!(!is_address("relay-eu-1"));
        assert!(!is_address(":443"));
    }
}
