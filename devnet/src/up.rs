//! `sat up`: lay out the data directory, start every piece, and stop them in order.
//!
//! # Distances
//!
//! The relays run at simulated distances ([`crate::regions`]). The primary (the control plane,
//! next to the apps) stands in Ashburn, Virginia, beside us-east; this machine plays a user in
//! north-east Asia (say Changchun, China). One way:
//!
//! | region   | relay stands in | relay → primary | this machine → relay |
//! |----------|-----------------|-----------------|----------------------|
//! | us-east  | Ashburn, VA     |  1 ms           | 80 ms                |
//! | eu-west  | London          | 30 ms           | 70 ms                |
//! | ap-south | Singapore       | 90 ms           | 40 ms                |
//!
//! The uplinks are somewhat faster than the public Internet would be (a relay operator buys
//! good transit); the legs from here are about what the distances give. ap-south is the relay
//! nearest this machine (80 ms round trip), but the whole path through it is
//! 2 × (40 + 90) = 260 ms, through eu-west 2 × (70 + 30) = 200 ms, and through us-east
//! 2 × (80 + 1) = 162 ms. So `sat relays` chooses us-east: the farthest relay, on the shortest
//! path. (Each proxy adds about 1.3 ms each way: tokio's timer rounds up.)
//!
//! # Geo DNS
//!
//! Every relay serves geo DNS for `sat.test` (`demo.sat.test`, `echo.sat.test`) on port 8053
//! of its address, UDP and TCP, and places resolvers by the EDNS Client Subnet with MaxMind's
//! test database (embedded in the binary, written to the data directory at each start). It
//! estimates each relay's distance from its location and adds the relay's measured round trip
//! to the primary: a London subnet gets eu-west, Milton (WA) us-east, Singapore ap-south, and
//! Changchun us-east too: ap-south is nearer, but its way to the primary is long. The control
//! plane serves the same zone on 127.0.0.1:8053, from its own relay map, and gives the same
//! answers.
//!
//! # Layout
//!
//! A relay's public ports (HTTPS and QUIC 8443, HTTP 8080, echo 7000) are delay proxies on its
//! address, in front of the relay itself at 18443, 18080 and 17000; its uplink goes through a
//! proxy on its own address at 4433 to the control plane on 127.0.0.1:4433. The relays
//! announce the public addresses, so the relay map, the latency checks and the DNS answers
//! lead through the proxies. The relay configs in the data directory describe the relays
//! without the proxies (public ports, the control plane direct), so that `sat relay --config`
//! runs one alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sat_control::admin::api::{CreateRelayToken, ServiceView};
use sat_control::admin::client::AdminClient;
use sat_control::pki::{Ca, Usage};
use sat_control::ControlConfig;
use sat_proto::control::{RelayInfo, RelayState};
use sat_relay::config::Secret;
use sat_relay::{RelayConfig, Sockets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::regions::{Links, Region, DIG_SUBNETS, GEOIP_FILE, GEOIP_TEST_DB, INNER_OFFSET};
use crate::DevnetError;

pub use crate::regions::REGIONS;

const CONTROL_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 4433));
const ADMIN_ADDR: &str = "127.0.0.1:4434";
const HTTPS_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 7000;
const DNS_PORT: u16 = 8053;
/// Each relay's health listener: `/healthz`, `/readyz` and `/metrics`, not behind a delay proxy.
const METRICS_PORT: u16 = 9180;
/// The control plane's geo DNS: port 8053 like the relays', on the control plane's address,
/// which no relay uses (theirs start at 127.0.0.2).
const CONTROL_DNS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), DNS_PORT));
const DEMO_HOST: &str = "demo.localhost";
/// The zone the relays' and the control plane's geo DNS answer for.
const DNS_ZONE: &str = "sat.test";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Ctrl-C drains; `sat up` is interactive, so the grace is short.
const GRACE: &str = "3s";

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub relays: usize,
    /// The `sat` binary, for the commands printed for the user to paste.
    pub sat_exe: String,
}

/// Where `sat up` keeps its CA and configs unless told otherwise.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("sat/up");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/sat/up"),
        None => PathBuf::from("sat-up"),
    }
}

/// The address of the relay of region `i` (in [`REGIONS`]' order): 127.0.0.2 and up.
fn relay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + i as u8)
}

/// The CA that signed `sat up`'s relays' HTTPS certificate, in `data_dir`.
pub fn web_ca(data_dir: &Path) -> PathBuf {
    data_dir.join("ca.pem")
}

/// Whether `addr` (host:port) is where `sat up` serves a relay's HTTPS and QUIC: a client
/// trusts `sat up`'s CA ([`web_ca`]) for these addresses only, and the system's roots for the
/// rest.
pub fn serves_relay_at(addr: &str) -> bool {
    addr.parse::<SocketAddr>().is_ok_and(|addr| {
        addr.port() == HTTPS_PORT && (0..REGIONS.len()).any(|i| addr.ip() == relay_ip(i))
    })
}

struct RelayPlan {
    region: &'static Region,
    name: String,
    ip: Ipv4Addr,
}

/// Runs the network until `shutdown`, then drains relays, then the control plane, then the
/// backends.
pub async fn run(opts: UpOptions, shutdown: CancellationToken) -> Result<(), DevnetError> {
    let started = Instant::now();
    let dir = &opts.data_dir;
    mkdir(dir)?;
    let plans: Vec<RelayPlan> = REGIONS
        .iter()
        .take(opts.relays.clamp(1, REGIONS.len()))
        .enumerate()
        .map(|(i, region)| RelayPlan {
            region,
            name: format!("relay-{}", region.name),
            ip: relay_ip(i),
        })
        .collect();
    write_pki(dir, &plans)?;
    write_bytes(&dir.join(GEOIP_FILE), GEOIP_TEST_DB)?;

    let backends = TaskTracker::new();
    let backend_stop = CancellationToken::new();
    let demo = bind_tcp("demo web app", "127.0.0.1:0").await?;
    let echo = bind_tcp("echo service", "127.0.0.1:0").await?;
    let demo_addr = local(&demo);
    let echo_addr = local(&echo);
    backends.spawn(crate::demo::run(demo, backend_stop.clone()));
    backends.spawn(crate::echo::run(echo, backend_stop.clone()));

    let control_path = dir.join("control.toml");
    write(&control_path, &control_toml(demo_addr, echo_addr))?;
    let control_config = ControlConfig::load(&control_path)?;
    let admin_token_path = control_config.control.data_dir.join("admin.token");
    let status_token_path = control_config.control.data_dir.join("status.token");
    let control_sockets = sat_control::Sockets::bind(&control_config)?;
    let control_stop = CancellationToken::new();
    let control = tokio::spawn(sat_control::run(
        control_config,
        control_sockets,
        control_stop.clone(),
    ));
    let admin = admin_client(&admin_token_path).await?;
    // Written by the control plane before its admin API answers.
    let status_token = std::fs::read_to_string(&status_token_path)
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    // The demo and echo apps listen on new ports at every start; the store seeded on the
    // first start still has the old ones.
    for (name, backend) in [("demo", demo_addr), ("echo", echo_addr)] {
        repoint(&admin, name, backend).await?;
    }

    let relay_stop = CancellationToken::new();
    let relays = TaskTracker::new();
    // Every link of every relay; dropped once the relays have drained through them.
    let mut links = Vec::new();
    for plan in &plans {
        let path = dir.join(format!("relay-{}.toml", plan.region.name));
        write(&path, &relay_toml(plan))?;
        let mut config = RelayConfig::load(&path)?;
        behind_links(&mut config, plan.ip);
        links.push(
            Links::start(
                plan.region,
                plan.ip,
                &[HTTPS_PORT, HTTP_PORT, ECHO_PORT],
                &[HTTPS_PORT],
                CONTROL_ADDR,
            )
            .await?,
        );
        // Every start brings a fresh one-time token, and the relay enrols again with it: a
        // development network should come up whatever happened to it since the last run.
        let token = admin
            .create_relay_token(&CreateRelayToken {
                region: plan.region.name.into(),
                name: Some(plan.name.clone()),
                ttl: Some("10m".into()),
            })
            .await?;
        config.relay.token = Some(Secret::new(token.token));
        let sockets = Sockets::bind(&config)?;
        let stop = relay_stop.clone();
        // One process runs every relay: a span per relay keeps their log lines apart.
        let span = tracing::info_span!("relay", name = %plan.name);
        relays.spawn(sat_relay::run(config, sockets, stop).instrument(span));
    }

    let waited = tokio::select! {
        r = wait_ready(&plans) => r,
        () = shutdown.cancelled() => Ok(()),
    };
    if waited.is_ok() && !shutdown.is_cancelled() {
        println!(
            "{}",
            banner(&opts, &plans, &status_token, started.elapsed())
        );
    }

    if waited.is_ok() {
        shutdown.cancelled().await;
    }
    info!("stopping: draining relays, then the control plane");
    relay_stop.cancel();
    relays.close();
    relays.wait().await;
    drop(links);
    control_stop.cancel();
    if let Ok(Err(e)) = control.await {
        tracing::warn!("control plane: {e}");
    }
    backend_stop.cancel();
    backends.close();
    backends.wait().await;
    waited
}

/// Points service `name` at `backend` if the store has it elsewhere.
async fn repoint(admin: &AdminClient, name: &str, backend: SocketAddr) -> Result<(), DevnetError> {
    let services = admin.services().await?;
    let Some(current) = services.into_iter().find(|s| s.name == name) else {
        return Ok(());
    };
    if current.backend == backend.to_string() {
        return Ok(());
    }
    admin.remove_service(name).await?;
    let moved = ServiceView {
        backend: backend.to_string(),
        ..current
    };
    admin.add_service(&moved).await?;
    Ok(())
}

/// A client of the control plane's admin API, once it answers.
async fn admin_client(token_file: &Path) -> Result<AdminClient, DevnetError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(token) = std::fs::read_to_string(token_file) {
            let client =
                AdminClient::new(&format!("http://{ADMIN_ADDR}"), token.trim().to_owned())?;
            match client.relays().await {
                Ok(_) => return Ok(client),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e.into()),
                Err(_) => {}
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DevnetError::NotReady(READY_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every relay serves the demo app end to end (relay → QUIC → control → backend),
/// and its relay map lists every relay up with its round trip to the primary, so that the
/// banner's `sat relays` and `dig` lines show the routing at once.
async fn wait_ready(plans: &[RelayPlan]) -> Result<(), DevnetError> {
    eprintln!(
        "waiting for {} relays to connect to the control plane ...",
        plans.len()
    );
    let ready = |plan: &RelayPlan| {
        let addr = SocketAddr::new(IpAddr::V4(plan.ip), HTTP_PORT);
        async move {
            loop {
                if serves_demo(addr).await && lists_every_relay(addr, plans).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // In parallel: each check crosses the relay's simulated distances.
    let all = futures_util::future::join_all(plans.iter().map(ready));
    tokio::time::timeout(READY_TIMEOUT, all)
        .await
        .map(drop)
        .map_err(|_| DevnetError::NotReady(READY_TIMEOUT))
}

async fn serves_demo(addr: SocketAddr) -> bool {
    get(addr, DEMO_HOST, "/api/whoami")
        .await
        .is_some_and(|(status, _)| status == 200)
}

/// Whether the relay map the relay at `addr` serves lists every planned relay up, with its
/// round trip to the primary measured. Others may be listed too: relays of an earlier run with
/// more regions stay in the store (down), and so do any enrolled by hand.
async fn lists_every_relay(addr: SocketAddr, plans: &[RelayPlan]) -> bool {
    let Some((200, body)) = get(addr, &addr.to_string(), "/api/relays").await else {
        return false;
    };
    #[derive(serde::Deserialize)]
    struct Map {
        relays: Vec<RelayInfo>,
    }
    serde_json::from_slice::<Map>(&body).is_ok_and(|map| {
        plans.iter().all(|p| {
            map.relays
                .iter()
                .any(|r| r.name == p.name && r.state == RelayState::Up && r.rtt_us > 0)
        })
    })
}

/// `GET path` over plain HTTP: the status and the body, if the answer comes within 2 s.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut resp = Vec::new();
        tcp.read_to_end(&mut resp).await.ok()?;
        let status = std::str::from_utf8(resp.get(9..12)?).ok()?.parse().ok()?;
        let body = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        Some((status, resp.split_off(body)))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

fn banner(opts: &UpOptions, plans: &[RelayPlan], status_token: &str, took: Duration) -> String {
    let dir = opts.data_dir.display();
    let sat = &opts.sat_exe;
    let first = plans.first().map_or(relay_ip(0), |p| p.ip);
    let last = plans.last().map_or(first, |p| p.ip);
    let mut s = format!(
        "\nSatellite is ready (in {:.1} s): a control plane on {CONTROL_ADDR} (udp; geo DNS on {CONTROL_DNS_ADDR}) and {} relays.\n\n",
        took.as_secs_f64(),
        plans.len()
    );
    s += "  region     relay             https + quic      http              echo (tcp)        dns (udp, tcp)\n";
    for p in plans {
        let [https, http, echo, dns] =
            [HTTPS_PORT, HTTP_PORT, ECHO_PORT, DNS_PORT].map(|port| format!("{}:{port}", p.ip));
        s += &format!(
            "  {:<10} {:<17} {https:<17} {http:<17} {echo:<17} {dns}\n",
            p.region.name, p.name
        );
    }
    s += "
Simulated distances, one way. The primary (this control plane and the apps) stands next to
us-east; this machine plays a user in north-east Asia. Delay proxies on the ports above and on
each relay's uplink make them.
  region     stands in      relay -> primary   this machine -> relay
";
    for p in plans {
        let [up, here] =
            [p.region.to_primary, p.region.from_here].map(|d| format!("{} ms", d.as_millis()));
        s += &format!(
            "  {:<10} {:<14} {up:<18} {here}\n",
            p.region.name, p.region.city
        );
    }
    s += "\nMetrics (Prometheus text format, no token):\n";
    s += &format!("  control    http://{ADMIN_ADDR}/metrics\n");
    for p in plans {
        s += &format!(
            "  {:<10} http://{}:{METRICS_PORT}/metrics\n",
            p.region.name, p.ip
        );
    }
    s += &format!(
        "
Services: demo (http, host {DEMO_HOST}), echo (tcp), ssh (tcp, this machine's port 22).
Admin: {sat} admin relays   (token in {dir}/control/admin.token)
Status page: http://{ADMIN_ADDR}/status?token={status_token}
  (read-only token in {dir}/control/status.token; JSON at /api/status)
Web CA and configs: {dir}

Try these:
  curl --cacert {dir}/ca.pem --resolve {DEMO_HOST}:{HTTPS_PORT}:{first} https://{DEMO_HOST}:{HTTPS_PORT}/api/whoami
  curl -H 'Host: {DEMO_HOST}' http://{last}:{HTTP_PORT}/api/whoami
  echo hello | {sat} connect echo --relay {first}:{HTTPS_PORT} --ca {dir}/ca.pem
  {sat} ssh $USER@ssh --relay {first}:{HTTPS_PORT} --ca {dir}/ca.pem
  open https://{DEMO_HOST}:{HTTPS_PORT}/ (trust {dir}/ca.pem) for the page and its WebSocket echo

Which relay, by the whole path (you -> relay -> primary), measured from here and by geo DNS:
  {sat} relays --relay {first}:{HTTPS_PORT} --ca {dir}/ca.pem
"
    );
    let dig = |server: SocketAddr, subnet: &str| {
        let (ip, port) = (server.ip(), server.port());
        format!("dig @{ip} -p {port} demo.{DNS_ZONE} +subnet={subnet}")
    };
    let mut digs = DIG_SUBNETS
        .map(|(subnet, place)| {
            let server = SocketAddr::from((first, DNS_PORT));
            (dig(server, subnet), format!("a resolver in {place}"))
        })
        .to_vec();
    let (london, _) = DIG_SUBNETS[0];
    digs.push((
        dig(CONTROL_DNS_ADDR, london),
        "the same, asking the control plane".to_owned(),
    ));
    let width = digs.iter().map(|(dig, _)| dig.len()).max().unwrap_or(0);
    for (dig, comment) in digs {
        s += &format!("  {dig:<width$}  # {comment}\n");
    }
    s += "\nCtrl-C drains and stops everything.\n";
    s
}

fn control_toml(demo: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"# Written by `sat up`; rewritten at every start. Run it alone with:
#   sat control --config control.toml
# Services below seed the store on the first start only; after that, manage them with
# `sat admin services` (the store in control/sat.db is the source of truth).
[control]
name = "control-up"
listen = "{CONTROL_ADDR}"
drain_grace = "{GRACE}"
data_dir = "control"

[admin]
listen = "{ADMIN_ADDR}"

[[service]]
name = "demo"
kind = "http"
backend = "{demo}"
hostnames = ["{DEMO_HOST}"]

[[service]]
name = "echo"
kind = "tcp"
backend = "{echo}"

[[service]]
name = "ssh"
kind = "tcp"
backend = "127.0.0.1:22"

{dns}"#,
        dns = dns_section(CONTROL_DNS_ADDR),
    )
}

/// The `[dns]` section of the control plane's and the relays' configs: one zone, the same
/// answers from each.
fn dns_section(listen: SocketAddr) -> String {
    format!(
        r#"# Geo DNS, placing resolvers with MaxMind's test database: fake networks in real cities,
# (c) MaxMind, Inc., Apache-2.0 or MIT; `sat up` writes it here from the sat binary.
[dns]
listen = "{listen}"
geoip = "{GEOIP_FILE}"

[dns.authority]
zone = "{DNS_ZONE}"
hosts = {{ demo = "demo", echo = "echo" }}
relays_per_answer = 1
"#
    )
}

fn relay_toml(p: &RelayPlan) -> String {
    let r = p.region;
    let ip = p.ip;
    let [https_in, http_in, echo_in] =
        [HTTPS_PORT, HTTP_PORT, ECHO_PORT].map(|port| port + INNER_OFFSET);
    let uplink_proxy = SocketAddr::from((ip, CONTROL_ADDR.port()));
    format!(
        r#"# Written by `sat up`; rewritten at every start. Run it alone with:
#   sat relay --config relay-{region}.toml
# Enrolled as region {region} with a one-time token from the control plane.
#
# `sat up` runs this relay at its region's simulated distances: the relay listens on
# {ip}:{https_in}, {http_in} and {echo_in}, behind delay proxies on the ports below that add
# {here} ms each way from this machine, and its uplink goes through a proxy on {uplink_proxy}
# that adds {up} ms each way to the control plane. Run alone, it serves the ports below itself.
[relay]
name = "{name}"
drain_grace = "{GRACE}"
data_dir = "relay-{region}"
location = {{ lat = {lat}, lon = {lon} }}   # {city}
public_addresses = ["{ip}:{HTTPS_PORT}"]
health_listen = "{ip}:{METRICS_PORT}"   # /healthz, /readyz, /metrics

[uplink]
control = ["{CONTROL_ADDR}"]
server_name = "sat-control"
connections = 2

[https]
listen = "{ip}:{HTTPS_PORT}"
cert = "relay-https.pem"
key = "relay-https-key.pem"

[http]
listen = "{ip}:{HTTP_PORT}"

[[tcp]]
service = "echo"
listen = "{ip}:{ECHO_PORT}"

{dns}"#,
        dns = dns_section(SocketAddr::from((ip, DNS_PORT))),
        name = p.name,
        region = r.name,
        city = r.city,
        lat = r.location.lat,
        lon = r.location.lon,
        here = r.from_here.as_millis(),
        up = r.to_primary.as_millis(),
    )
}

/// Moves a relay loaded from [`relay_toml`] behind its region's [`Links`]: it listens
/// [`INNER_OFFSET`] ports up, and its uplink goes through the proxy on its own address.
fn behind_links(config: &mut RelayConfig, ip: Ipv4Addr) {
    let inner = |addr: &mut SocketAddr| addr.set_port(addr.port() + INNER_OFFSET);
    if let Some(https) = &mut config.https {
        inner(&mut https.listen);
    }
    if let Some(http) = &mut config.http.listen {
        inner(http);
    }
    for tcp in &mut config.tcp {
        inner(&mut tcp.listen);
    }
    config.uplink.control = vec![SocketAddr::from((ip, CONTROL_ADDR.port())).to_string()];
}

/// The relays' public HTTPS certificate, from a development CA (`ca.pem`) kept across runs so
/// that a browser or curl that trusts it keeps working. This stands in for a public web CA;
/// the control plane's own CA, which enrols relays, is separate (`control/ca.pem`).
fn write_pki(dir: &Path, plans: &[RelayPlan]) -> Result<(), DevnetError> {
    let ca_cert = web_ca(dir);
    let ca_key = dir.join("ca-key.pem");
    let ca = match (
        std::fs::read_to_string(&ca_cert),
        std::fs::read_to_string(&ca_key),
    ) {
        (Ok(cert), Ok(key)) => Ca::load(&cert, &key)?,
        _ => {
            let ca = Ca::generate("Satellite sat-up development CA")?;
            ca.write(dir, "ca")?;
            info!(path = %ca_cert.display(), "created development CA");
            ca
        }
    };
    let year = Duration::from_secs(365 * 24 * 3600);
    let mut https_names: Vec<String> = ["localhost", DEMO_HOST, "*.localhost"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    https_names.extend(plans.iter().map(|p| p.ip.to_string()));
    ca.issue(&https_names, Usage::Server, year)?
        .write(dir, "relay-https")?;
    Ok(())
}

async fn bind_tcp(what: &str, addr: &str) -> Result<tokio::net::TcpListener, DevnetError> {
    let bound = addr
        .parse()
        .map_err(std::io::Error::other)
        .and_then(sat_transport::listen::tcp)
        .and_then(tokio::net::TcpListener::from_std);
    bound.map_err(|source| DevnetError::Bind {
        what: what.into(),
        addr: addr.into(),
        source,
    })
}

fn local(l: &tokio::net::TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

fn mkdir(dir: &Path) -> Result<(), DevnetError> {
    std::fs::create_dir_all(dir).map_err(|source| DevnetError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), DevnetError> {
    write_bytes(path, text.as_bytes())
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), DevnetError> {
    std::fs::write(path, bytes).map_err(|source| DevnetError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_relays_sat_up_runs_are_its_own() {
        assert!(serves_relay_at("127.0.0.2:8443"));
        assert!(serves_relay_at("127.0.0.4:8443"));
        assert!(!serves_relay_at("127.0.0.5:8443"));
        assert!(
            !serves_relay_at("127.0.0.1:8443"),
            "the control plane's address"
        );
        assert!(!serves_relay_at("127.0.0.2:443"));
        assert!(!serves_relay_at("relay.example.com:8443"));
        assert!(!serves_relay_at("eu-west"));
    }
}
