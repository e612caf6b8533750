//! The command line: what each subcommand takes, and how its outcome becomes an exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sat_client::{Chooser, ClientError, Options, Route};
use sat_control::ControlConfig;
use sat_geo::dns::DnsSection;
use sat_relay::RelayConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::args::{cache_dir, trust, RelayArgs, TunnelArgs};
use crate::exit::{client_exit, EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE};

/// How often `sat forward` probes the relays again.
const REPROBE_EVERY: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "sat",
    version,
    about = "Satellite: a geo-distributed edge relay network",
    long_about = "Satellite puts relays (\"satellites\") in each region in front of your web \
apps and SSH/TCP services. Users reach the nearest relay; the relay carries each connection \
over QUIC to the control plane at your primary site, which hands it to the backend.\n\n\
Start with `sat up`: the whole network on this machine, with a demo app to try.",
    after_help = "Logs go to stderr; set SAT_LOG=debug (or any tracing filter) for more, and \
SAT_LOG_FORMAT=json for one JSON object per line."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the whole network on this machine: a control plane, relays on 127.0.0.2-4 as the
    /// regions us-east, eu-west and ap-south at simulated distances (delay proxies on their
    /// ports and uplinks), each serving geo DNS for sat.test on port 8053, a demo web app and
    /// a TCP echo service.
    ///
    /// It creates a development CA and certificates in the data directory, writes the configs
    /// it runs from (and MaxMind's GeoIP test database) there too, and prints the distances
    /// and commands to paste: curl, sat connect, sat relays and dig. Ctrl-C drains and stops
    /// everything.
    Up {
        /// Where the CA, certificates and configs live [default: ~/.local/share/sat/up]
        #[arg(long, env = "SAT_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// How many relays (regions) to run, 1 to 3.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
        relays: u8,
    },
    /// Run a control-plane replica from a TOML config (see docs/configuration.md).
    ///
    /// SIGTERM drains: relays are told to send new work elsewhere and streams in flight get
    /// `drain_grace` to finish. SIGINT stops at once.
    Control {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a relay from a TOML config (see docs/configuration.md).
    ///
    /// SIGTERM drains: listeners close, connections in flight get `drain_grace` to finish.
    /// SIGINT stops at once.
    ///
    /// A new relay enrols first: create a token on the control plane with
    /// `sat admin relay-token create --region eu-west --name relay-eu-1`, then start the relay
    /// once with `--token`. Its certificate is kept in `[relay] data_dir` and renewed by itself.
    Relay {
        #[arg(long, short)]
        config: PathBuf,
        /// One-time enrolment token; ignored once the relay is enrolled.
        #[arg(long, env = "SAT_RELAY_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List the relays with their health and your measured round trip to each, ranked by the
    /// estimated whole path (you to the relay, plus the relay to the primary site):
    ///
    ///   sat relays --relay relay.example.com:443
    ///
    /// The relay map comes from the relay given; every relay that is up is then timed in
    /// parallel (its /api/latency, on a kept-alive connection, best of four).
    Relays {
        #[command(flatten)]
        relay: RelayArgs,
        /// Print JSON instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Tunnel stdin/stdout to a TCP service through the best relay, for OpenSSH's
    /// ProxyCommand:
    ///
    ///   ssh -o ProxyCommand='sat connect ssh --relay relay.example.com:443' user@host
    ///
    /// The relay is chosen as `sat relays` shows (whole-path round trip), remembered between
    /// runs (SAT_CACHE_DIR, default ~/.cache/sat), and kept until another is clearly faster.
    /// If it does not answer, the runner-up takes the tunnel within a fraction of a second.
    /// Uses QUIC, or TLS over TCP on the same port when UDP is blocked.
    ///
    /// The end of stdin is passed on as a half-close. When the service ends its side, stdout
    /// closes at once, and sat connect exits when stdin ends or has been quiet for a second.
    Connect {
        /// The service's name, as configured on the control plane.
        service: String,
        #[command(flatten)]
        tunnel: TunnelArgs,
    },
    /// Listen on a local address and tunnel each connection to a TCP service through the
    /// best relay:
    ///
    ///   sat forward 127.0.0.1:5432 postgres --relay relay.example.com:443
    ///
    /// The relays are probed again every 30 s; new connections move only when another relay
    /// is clearly faster (10 ms and a third), or at once when the chosen one stops answering.
    /// The runner-up is kept connected as a warm standby.
    Forward {
        /// Local address to listen on, such as 127.0.0.1:2222.
        local_addr: String,
        /// The service's name, as configured on the control plane.
        service: String,
        #[command(flatten)]
        tunnel: TunnelArgs,
    },
    /// Run OpenSSH's ssh to an SSH service through the best relay:
    ///
    ///   sat ssh alice@ssh --relay relay.example.com:443
    ///   sat ssh ssh --via eu-west -- -L 8080:localhost:80 uptime
    ///
    /// This is `ssh -o ProxyCommand='sat connect SERVICE ...' [user@]SERVICE`, with the
    /// service name as the host key alias in known_hosts. Arguments after `--` go to ssh.
    Ssh {
        /// [user@]SERVICE: the SSH service's name, as configured on the control plane.
        target: String,
        #[command(flatten)]
        tunnel: TunnelArgs,
        /// Options and a command for ssh.
        #[arg(last = true)]
        ssh_args: Vec<String>,
    },
    /// Check a control or relay config without starting anything: syntax, unknown keys,
    /// values, and that the certificate files load. Exits 0 if good, 64 if not.
    CheckConfig {
        /// The file to check; [control] or [relay] at the top tells which kind it is.
        file: PathBuf,
    },
    /// Manage a running control plane through its admin API: enrol, drain and revoke relays,
    /// add and remove services, issue and revoke access tokens, read the audit log.
    Admin(crate::admin::AdminArgs),
}

impl Command {
    /// `sat connect` runs under ssh, whose terminal must not fill with our info lines.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Self::Connect { .. }
            | Self::Ssh { .. }
            | Self::CheckConfig { .. }
            | Self::Admin(_)
            | Self::Relays { .. } => "warn",
            // hickory logs every DNS query at info.
            _ => "info,hickory_server=warn,hickory_proto=warn",
        }
    }

    pub async fn run(self) -> u8 {
        match self {
            Self::Up { data_dir, relays } => up(data_dir, relays).await,
            Self::Control { config } => control(&config).await,
            Self::Relay { config, token } => relay(&config, token).await,
            Self::Relays { relay, json } => relays(&relay, json).await,
            Self::Connect { service, tunnel } => connect(&service, &tunnel).await,
            Self::Forward {
                local_addr,
                service,
                tunnel,
            } => forward(&local_addr, service, &tunnel).await,
            Self::Ssh {
                target,
                tunnel,
                ssh_args,
            } => crate::ssh::run(&target, &tunnel, &ssh_args),
            Self::CheckConfig { file } => check_config(&file),
            Self::Admin(args) => args.run().await,
        }
    }
}

/// Turns SIGTERM into `drain` and SIGINT into `drain` plus, on a second SIGINT or for
/// components that stop fast, an immediate exit.
fn signals(fast_on_sigint: bool) -> CancellationToken {
    let drain = CancellationToken::new();
    let token = drain.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return error!("cannot install signal handlers");
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining"),
            _ = int.recv() => {
                if fast_on_sigint {
                    info!("SIGINT: stopping now");
                    std::process::exit(0);
                }
                info!("SIGINT: draining (Ctrl-C again to stop at once)");
            }
        }
        token.cancel();
        if int.recv().await.is_some() {
            warn!("second SIGINT: stopping now");
            std::process::exit(130);
        }
    });
    drain
}

async fn up(data_dir: Option<PathBuf>, relays: u8) -> u8 {
    let opts = sat_devnet::UpOptions {
        data_dir: data_dir.unwrap_or_else(sat_devnet::default_data_dir),
        relays: relays.into(),
        sat_exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "sat".into()),
    };
    match sat_devnet::run(opts, signals(false)).await {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            eprintln!("sat up: {e}");
            EXIT_UNAVAILABLE
        }
    }
}

async fn control(path: &Path) -> u8 {
    let config = match ControlConfig::load(path) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let sockets = match sat_control::Sockets::bind(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sat control: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    report(
        sat_control::run(config, sockets, signals(true)).await,
        "control",
    )
}

async fn relay(path: &Path, token: Option<String>) -> u8 {
    let mut config = match RelayConfig::load(path) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    if let Some(token) = token {
        config.relay.token = Some(sat_relay::config::Secret::new(token));
    }
    let sockets = match sat_relay::Sockets::bind(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sat relay: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    report(
        sat_relay::run(config, sockets, signals(true)).await,
        "relay",
    )
}

fn report<E: std::fmt::Display>(result: Result<(), E>, what: &str) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sat {what}: {e}");
            EXIT_FAILURE
        }
    }
}

fn usage<E: std::fmt::Display>(e: E) -> u8 {
    eprintln!("sat: {e}");
    EXIT_USAGE
}

async fn relays(args: &RelayArgs, json: bool) -> u8 {
    let trust = trust(args, None);
    let sources = match &args.relay {
        Some(relay) => vec![relay.clone()],
        None => cache_dir()
            .map(|dir| sat_client::cached_relays(&sat_client::cache_path(&dir, &trust)))
            .unwrap_or_default(),
    };
    match sat_client::probe_relays(&sources, &trust).await {
        Ok(probed) => {
            print!("{}", crate::relays::render(&probed, json));
            0
        }
        Err(e) => {
            eprintln!("sat relays: {e}");
            match e {
                ClientError::Probe(_) => EXIT_UNAVAILABLE,
                other => client_exit(&other),
            }
        }
    }
}

/// Chooses the relays for a tunnel: see `sat_client::Chooser`.
async fn route(args: &TunnelArgs) -> Result<Arc<Route>, ClientError> {
    Ok(chooser(args).await?.1)
}

async fn chooser(args: &TunnelArgs) -> Result<(Arc<Chooser>, Arc<Route>), ClientError> {
    let trust = trust(&args.relay, args.via.as_deref());
    let options = Options {
        relay: args.relay.relay.clone(),
        cache: cache_dir().map(|dir| sat_client::cache_path(&dir, &trust)),
        trust,
        token: args.relay.token.as_ref().map(|t| t.trim().to_owned()),
        via: args.via.clone(),
    };
    Chooser::start(options).await
}

async fn connect(service: &str, args: &TunnelArgs) -> u8 {
    let result = match route(args).await {
        Ok(route) => sat_client::connect(&route, service).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sat connect: {e}");
            client_exit(&e)
        }
    }
}

async fn forward(local: &str, service: String, args: &TunnelArgs) -> u8 {
    let (chooser, route) = match chooser(args).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("sat forward: {e}");
            return client_exit(&e);
        }
    };
    let listener = match tokio::net::TcpListener::bind(local).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sat forward: cannot listen on {local}: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        info!("listening on tcp {addr} service={service}");
    }
    info!(relays = ?route.names(), "relays chosen, best first");
    let stop = signals(false);
    chooser.refresh_every(route.clone(), REPROBE_EVERY, stop.clone());
    let result = sat_client::forward(route, listener, service, stop).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sat forward: {e}");
            client_exit(&e)
        }
    }
}

fn check_config(path: &Path) -> u8 {
    match check(path) {
        Ok(kind) => {
            println!("{}: a valid {kind} config", path.display());
            0
        }
        Err(msg) => {
            eprintln!("sat check-config: {msg}");
            EXIT_USAGE
        }
    }
}

fn check(path: &Path) -> Result<&'static str, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if table.contains_key("control") {
        let c = ControlConfig::parse(&text, path).map_err(|e| e.to_string())?;
        if let Some(ca) = &c.ca {
            sat_control::pki::Ca::load_files(&ca.cert, &ca.key)
                .map_err(|e| format!("{}: [ca]: {e}", path.display()))?;
        }
        check_geoip(path, c.dns.as_ref())?;
        Ok("control")
    } else if table.contains_key("relay") {
        let c = RelayConfig::parse(&text, path).map_err(|e| e.to_string())?;
        if let Some(h) = &c.https {
            sat_transport::identity::Identity::load(&h.cert, &h.key)
                .map_err(|e| format!("{}: [https]: {e}", path.display()))?;
        }
        check_geoip(path, c.dns.as_ref())?;
        Ok("relay")
    } else {
        Err(format!(
            "{}: cannot tell what this config is for: it needs a [control] or a [relay] table",
            path.display()
        ))
    }
}

/// `[dns]`'s GeoIP database must open, as it must when geo DNS starts.
fn check_geoip(path: &Path, dns: Option<&DnsSection>) -> Result<(), String> {
    match dns {
        Some(dns) => dns
            .open_geoip()
            .map(drop)
            .map_err(|e| format!("{}: [dns]: {e}", path.display())),
        None => Ok(()),
    }
}
