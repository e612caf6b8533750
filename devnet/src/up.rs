//! `sat up`: lay out the data directory, start every piece, and stop them in order.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sat_control::admin::api::{CreateRelayToken, ServiceView};
use sat_control::admin::client::AdminClient;
use sat_control::pki::{Ca, Usage};
use sat_control::ControlConfig;
use sat_relay::config::Secret;
use sat_relay::{RelayConfig, Sockets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::DevnetError;

/// The simulated regions, in the order relays get them, each on its own loopback address.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const CONTROL_ADDR: &str = "127.0.0.1:4433";
const ADMIN_ADDR: &str = "127.0.0.1:4434";
const HTTPS_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 7000;
const DEMO_HOST: &str = "demo.localhost";
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

struct RelayPlan {
    region: &'static str,
    name: String,
    ip: Ipv4Addr,
}

/// Runs the network until `shutdown`, then drains relays, then the control plane, then the
/// backends.
pub async fn run(opts: UpOptions, shutdown: CancellationToken) -> Result<(), DevnetError> {
    let dir = &opts.data_dir;
    mkdir(dir)?;
    let plans: Vec<RelayPlan> = REGIONS
        .iter()
        .take(opts.relays.clamp(1, REGIONS.len()))
        .enumerate()
        .map(|(i, region)| RelayPlan {
            region,
            name: format!("relay-{region}"),
            ip: Ipv4Addr::new(127, 0, 0, 2 + i as u8),
        })
        .collect();
    write_pki(dir, &plans)?;

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
    let control_sockets = sat_control::Sockets::bind(&control_config)?;
    let control_stop = CancellationToken::new();
    let control = tokio::spawn(sat_control::run(
        control_config,
        control_sockets,
        control_stop.clone(),
    ));
    let admin = admin_client(&admin_token_path).await?;
    // The demo and echo apps listen on new ports at every start; the store seeded on the
    // first start still has the old ones.
    for (name, backend) in [("demo", demo_addr), ("echo", echo_addr)] {
        repoint(&admin, name, backend).await?;
    }

    let relay_stop = CancellationToken::new();
    let relays = TaskTracker::new();
    for plan in &plans {
        let path = dir.join(format!("relay-{}.toml", plan.region));
        write(&path, &relay_toml(plan))?;
        let mut config = RelayConfig::load(&path)?;
        // Every start brings a fresh one-time token, and the relay enrols again with it: a
        // development network should come up whatever happened to it since the last run.
        let token = admin
            .create_relay_token(&CreateRelayToken {
                region: plan.region.into(),
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
        println!("{}", banner(&opts, &plans));
    }

    if waited.is_ok() {
        shutdown.cancelled().await;
    }
    info!("stopping: draining relays, then the control plane");
    relay_stop.cancel();
    relays.close();
    relays.wait().await;
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

/// Waits until every relay serves the demo app end to end: relay → QUIC → control → backend.
async fn wait_ready(plans: &[RelayPlan]) -> Result<(), DevnetError> {
    eprintln!(
        "waiting for {} relays to connect to the control plane ...",
        plans.len()
    );
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for plan in plans {
        let addr = SocketAddr::new(IpAddr::V4(plan.ip), HTTP_PORT);
        loop {
            if probe(addr).await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DevnetError::NotReady(READY_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req =
            format!("GET /api/whoami HTTP/1.1\r\nHost: {DEMO_HOST}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b"200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn banner(opts: &UpOptions, plans: &[RelayPlan]) -> String {
    let dir = opts.data_dir.display();
    let sat = &opts.sat_exe;
    let first = plans.first().map_or(Ipv4Addr::new(127, 0, 0, 2), |p| p.ip);
    let last = plans.last().map_or(first, |p| p.ip);
    let mut s = format!(
        "\nSatellite is ready: a control plane on {CONTROL_ADDR} (udp) and {} relays.\n\n",
        plans.len()
    );
    s += "  region     relay             https + quic      http              echo (tcp)\n";
    for p in plans {
        let https = format!("{}:{HTTPS_PORT}", p.ip);
        let http = format!("{}:{HTTP_PORT}", p.ip);
        let echo = format!("{}:{ECHO_PORT}", p.ip);
        s += &format!(
            "  {:<10} {:<17} {https:<17} {http:<17} {echo}\n",
            p.region, p.name
        );
    }
    s += &format!(
        "
Services: demo (http, host {DEMO_HOST}), echo (tcp), ssh (tcp, this machine's port 22).
Admin: {sat} admin relays   (token in {dir}/control/admin.token)
Web CA and configs: {dir}

Try these:
  curl --cacert {dir}/ca.pem --resolve {DEMO_HOST}:{HTTPS_PORT}:{first} https://{DEMO_HOST}:{HTTPS_PORT}/api/whoami
  curl -H 'Host: {DEMO_HOST}' http://{last}:{HTTP_PORT}/api/whoami
  echo hello | {sat} connect echo --relay {first}:{HTTPS_PORT} --ca {dir}/ca.pem
  ssh -o ProxyCommand='{sat} connect ssh --relay {first}:{HTTPS_PORT} --ca {dir}/ca.pem' $USER@localhost
  open https://{DEMO_HOST}:{HTTPS_PORT}/ (trust {dir}/ca.pem) for the page and its WebSocket echo

Ctrl-C drains and stops everything.
"
    );
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
"#
    )
}

fn relay_toml(p: &RelayPlan) -> String {
    format!(
        r#"# Written by `sat up`; rewritten at every start. Run it alone with:
#   sat relay --config relay-{region}.toml
# Enrolled as region {region} with a one-time token from the control plane.
[relay]
name = "{name}"
drain_grace = "{GRACE}"
data_dir = "relay-{region}"

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
"#,
        name = p.name,
        region = p.region,
        ip = p.ip,
    )
}

/// The relays' public HTTPS certificate, from a development CA (`ca.pem`) kept across runs so
/// that a browser or curl that trusts it keeps working. This stands in for a public web CA;
/// the control plane's own CA, which enrols relays, is separate (`control/ca.pem`).
fn write_pki(dir: &Path, plans: &[RelayPlan]) -> Result<(), DevnetError> {
    let ca_cert = dir.join("ca.pem");
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
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DevnetError::Bind {
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
    std::fs::write(path, text).map_err(|source| DevnetError::Io {
        path: path.to_owned(),
        source,
    })
}
