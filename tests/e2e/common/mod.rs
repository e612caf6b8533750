//! The end-to-end harness: real `sat` processes on loopback, each with its own temp dir and PKI.
//!
//! - [`Proc`]: a child process whose stderr is recorded line by line, so that a test can await a
//!   log line with a deadline instead of sleeping. Killed on drop.
//! - [`Net`]: a control plane plus any number of relays, configured from [`ControlOpts`] and
//!   [`RelayOpts`]. Every socket binds port 0; the real ports come from the `listening on` lines.
//! - Backends (echo, sha, silent, reset, refused) that run as tasks of the test's own runtime.
//! - [`udp_proxy::UdpProxy`]: a UDP forwarder for QUIC that a test can cut and restore.
//!
//! Each test binary uses part of this module only.
#![allow(dead_code)]

pub mod udp_proxy;

/// The delay proxy lives in the product now (`sat up` runs its regions through it).
#[allow(unused_imports)] // like the rest of this module, some test binaries do without it
pub use sat_devnet::delay;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rand::{RngCore, SeedableRng};
use sat_control::pki::{Ca, Usage};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The binary under test.
pub const SAT: &str = env!("CARGO_BIN_EXE_sat");
/// The system Python: `python3-websockets` from apt installs for this one, not for a pyenv.
pub const PYTHON: &str = "/usr/bin/python3";
/// HTTP and WebSocket peers written in Python (see the file for its subcommands).
pub const PEERS_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/common/peers.py");

/// How long a process may take to come up. Generous: the binary is a debug build, and on a
/// 2-core machine nextest runs two tests at once, each with several processes.
pub const STARTUP: Duration = Duration::from_secs(30);
/// How long one small exchange (a round trip, a rejection, an exit) may take.
pub const SHORT: Duration = Duration::from_secs(10);

/// Names on every relay's HTTPS certificate. A relay's certificate also names the host names of
/// the net's HTTP services: curl matches no wildcard directly under a single label such as
/// `*.localhost`, so `web.localhost` must be named in full.
pub const HTTPS_NAMES: &[&str] = &[
    "localhost",
    "*.localhost",
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.1",
];
/// Lifetime of test certificates; a test never runs for a day.
const CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------------------------
// Recorded output

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    closed: bool,
}

/// The lines a child wrote to one of its pipes, in order, shared with the task reading them.
#[derive(Clone)]
pub struct Log {
    name: Arc<str>,
    tx: Arc<watch::Sender<Lines>>,
}

impl Log {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            tx: Arc::new(watch::Sender::new(Lines::default())),
        }
    }

    /// Records every line of `pipe` until it closes, and echoes it to the test's stderr so that a
    /// failing test shows what its processes said.
    fn follow(&self, pipe: impl AsyncRead + Unpin + Send + 'static) {
        let log = self.clone();
        tokio::spawn(async move {
            let mut pipe = BufReader::new(pipe);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match pipe.read_until(b'\n', &mut raw).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end());
                        eprintln!("[{}] {line}", log.name);
                        log.tx.send_modify(|l| l.lines.push(line));
                    }
                }
            }
            log.tx.send_modify(|l| l.closed = true);
        });
    }

    /// Waits until the pipe has closed and every line before that is recorded.
    async fn wait_closed(&self, timeout: Duration) {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|l| l.closed)).await;
    }

    /// A position in the log: `wait_*_since(mark, ..)` looks only at lines written after it.
    pub fn mark(&self) -> usize {
        self.tx.borrow().lines.len()
    }

    pub fn lines(&self) -> Vec<String> {
        self.tx.borrow().lines.clone()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.tx.borrow().lines.iter().any(|l| l.contains(needle))
    }

    /// The last lines, for error messages.
    pub fn tail(&self) -> String {
        let lines = &self.tx.borrow().lines;
        let from = lines.len().saturating_sub(40);
        lines[from..].join("\n")
    }

    /// Waits for a line containing `needle`, anywhere in the log; returns the line.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_since(0, needle, timeout).await
    }

    /// Waits for a line containing `needle` written after `mark`; returns the line.
    pub async fn wait_for_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_line(mark, timeout, &format!("{needle:?}"), |l| {
            l.contains(needle).then(|| l.to_owned())
        })
        .await
    }

    /// Waits for the `listening on <proto> <addr> [service=<name>]` line of one socket.
    pub async fn wait_listening(
        &self,
        proto: &str,
        service: Option<&str>,
        timeout: Duration,
    ) -> Result<SocketAddr> {
        let what = format!("listening on {proto} (service {service:?})");
        self.wait_line(0, timeout, &what, |l| {
            let found = parse_listening(l)?;
            let wanted = match service {
                Some(name) => found.service.as_deref() == Some(name),
                None => true,
            };
            (found.proto == proto && wanted).then_some(found.addr)
        })
        .await
    }

    /// Waits until `f` accepts a line written after `mark`, the deadline passes, or the pipe
    /// closes (the process exited): the last two are errors that carry the log's tail.
    pub async fn wait_line<T>(
        &self,
        mark: usize,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.tx.subscribe();
        let mut next = mark;
        loop {
            {
                let seen = rx.borrow_and_update();
                for line in seen.lines.iter().skip(next) {
                    if let Some(v) = f(line) {
                        return Ok(v);
                    }
                }
                next = next.max(seen.lines.len());
                if seen.closed {
                    drop(seen);
                    bail!(
                        "{} closed its output before {what}; last lines:\n{}",
                        self.name,
                        self.tail()
                    );
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("{}: log reader gone before {what}", self.name),
                Err(_) => bail!(
                    "{}: no {what} within {timeout:?}; last lines:\n{}",
                    self.name,
                    self.tail()
                ),
            }
        }
    }
}

/// Drops terminal colour codes, in case a process decides its stderr is a terminal after all.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One `listening on <proto> <addr> [service=<name>]` line (docs/configuration.md), in text or,
/// from a process run with `SAT_LOG_FORMAT=json`, as the message of a JSON line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub proto: String,
    pub addr: SocketAddr,
    pub service: Option<String>,
}

pub fn parse_listening(line: &str) -> Option<Listening> {
    const KEY: &str = "listening on ";
    let message;
    let line = if line.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        message = json.get("fields")?.get("message")?.as_str()?.to_owned();
        &message
    } else {
        line
    };
    let rest = &line[line.find(KEY)? + KEY.len()..];
    let mut words = rest.split_whitespace();
    let proto = words.next()?.to_owned();
    let addr = words.next()?.parse().ok()?;
    let service = words
        .find_map(|w| w.strip_prefix("service="))
        .map(|s| s.trim_matches('"').to_owned());
    Some(Listening {
        proto,
        addr,
        service,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process with its stderr (and, if asked, stdout) recorded. Killed on drop; one started
/// in its own process group takes the whole group down with it.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Its stderr.
    pub log: Log,
    /// Its stdout, when started with [`Proc::spawn_logged`].
    pub out: Option<Log>,
    own_group: bool,
}

impl Proc {
    /// stdin and stdout closed, stderr recorded.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        Self::start(name, cmd, false, false)
    }

    /// stdin and stdout piped for the test to use ([`Proc::stdin`], [`Proc::stdout`]).
    pub fn spawn_piped(name: &str, mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        Self::start(name, cmd, false, false)
    }

    /// stdout and stderr both recorded. With `own_group`, the child leads a new process group,
    /// which [`Proc::signal_group`] signals as a terminal's Ctrl-C would, and which is killed
    /// whole on drop so that no grandchild outlives the test.
    pub fn spawn_logged(name: &str, mut cmd: Command, own_group: bool) -> Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if own_group {
            cmd.process_group(0);
        }
        Self::start(name, cmd, true, own_group)
    }

    fn start(name: &str, mut cmd: Command, log_stdout: bool, own_group: bool) -> Result<Self> {
        cmd.stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let log = Log::new(name);
        log.follow(child.stderr.take().context("stderr not piped")?);
        let out = if log_stdout {
            let out = Log::new(&format!("{name} stdout"));
            out.follow(child.stdout.take().context("stdout not piped")?);
            Some(out)
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            out,
            own_group,
        })
    }

    pub fn pid(&self) -> Result<i32> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} has already exited", self.name))?;
        Ok(i32::try_from(pid)?)
    }

    pub fn stdin(&mut self) -> Result<ChildStdin> {
        self.child
            .stdin
            .take()
            .context("stdin not piped, or already taken")
    }

    pub fn stdout(&mut self) -> Result<ChildStdout> {
        self.child
            .stdout
            .take()
            .context("stdout not piped, or already taken")
    }

    pub fn signal(&self, sig: i32) -> Result<()> {
        signal(self.pid()?, sig)
    }

    /// Signals the process group this process leads (see [`Proc::spawn_logged`]).
    pub fn signal_group(&self, sig: i32) -> Result<()> {
        anyhow::ensure!(
            self.own_group,
            "{} does not lead its own process group",
            self.name
        );
        signal(-self.pid()?, sig)
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                // The process is gone, but the reader task may not have seen its last lines.
                self.log.wait_closed(SHORT).await;
                if let Some(out) = &self.out {
                    out.wait_closed(SHORT).await;
                }
                Ok(status?)
            }
            Err(_) => bail!(
                "{} still running after {timeout:?}; last lines:\n{}",
                self.name,
                self.log.tail()
            ),
        }
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // `kill_on_drop` ends the child itself; a group leader's descendants need the group.
        if self.own_group {
            if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = signal(-pid, libc::SIGKILL);
            }
        }
    }
}

/// kill(2). A negative pid names a process group.
#[allow(unsafe_code)] // kill(2) has no memory-safety preconditions; libc marks every call unsafe.
pub fn signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain system call on integers.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()).with_context(|| format!("kill({pid}, {sig})"))
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 (a relay's HTTPS and QUIC share one), found
/// by binding and letting go: another process could take it in between, which on a test
/// machine does not happen in practice.
pub fn free_port_pair() -> Result<SocketAddr> {
    for _ in 0..20 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        if std::net::UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    anyhow::bail!("no port free for both TCP and UDP")
}

/// Where `sat` remembers its choice of relay during this test process: under cargo's
/// `target/tmp`, so that neither the user's cache nor /tmp collects the tests' choices.
pub fn test_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sat-cache-{}", std::process::id()))
}

/// A `sat` command with a clean environment: no ambient `SAT_*` defaults, plain log lines.
pub fn sat_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(SAT);
    cmd.args(args)
        .env_remove("SAT_TOKEN")
        .env_remove("SAT_RELAY")
        .env_remove("SAT_CA")
        .env_remove("SAT_VIA")
        // Each test process remembers its relay choices apart from the user's and the others'.
        .env("SAT_CACHE_DIR", test_cache_dir())
        .env("NO_COLOR", "1");
    // Someone debugging a test may set SAT_LOG=debug; otherwise the documented default.
    if std::env::var_os("SAT_LOG").is_none() {
        cmd.env("SAT_LOG", "info");
    }
    cmd
}

/// `sat forward 127.0.0.1:0 SERVICE` through the relay at `relay`; returns the process and the
/// local address it listens on.
pub async fn sat_forward(
    relay: SocketAddr,
    ca: &Path,
    service: &str,
) -> Result<(Proc, SocketAddr)> {
    let mut cmd = sat_cmd(["forward", "127.0.0.1:0", service, "--via"]);
    cmd.arg(relay.to_string()).arg("--ca").arg(ca);
    let forward = Proc::spawn("forward", cmd)?;
    let local = forward
        .log
        .wait_listening("tcp", Some(service), STARTUP)
        .await?;
    Ok((forward, local))
}

/// `sat connect SERVICE --relay ADDR --ca CA`, stdin and stdout piped: the tunnel's two ends.
pub fn sat_connect(service: &str, relay: SocketAddr, ca: &Path) -> Result<Proc> {
    let mut cmd = sat_cmd(["connect", service, "--via", &relay.to_string(), "--ca"]);
    cmd.arg(ca);
    Proc::spawn_piped(&format!("connect {service}"), cmd)
}

/// A Python peer from `tests/e2e/common/peers.py`.
pub fn python_peer<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-u").arg(PEERS_PY).args(args);
    cmd
}

/// Peak resident memory of a process (VmHWM), in MiB.
pub fn peak_rss_mib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/pid/status")?;
    Ok(kb / 1024)
}

// ---------------------------------------------------------------------------------------------
// PKI and config files

/// A test web CA in a directory, for the relays' public HTTPS certificates (what users' curl
/// and `sat connect --ca` trust). The control plane's own CA, which enrols relays, is separate.
pub struct Pki {
    ca: Ca,
    dir: PathBuf,
    pub ca_path: PathBuf,
}

fn pki_err(e: impl Display) -> anyhow::Error {
    anyhow!("pki: {e}")
}

impl Pki {
    pub fn new(dir: &Path) -> Result<Self> {
        let ca = Ca::generate("test CA").map_err(pki_err)?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem())?;
        Ok(Self {
            ca,
            dir: dir.to_owned(),
            ca_path,
        })
    }

    /// Writes `<stem>.pem` and `<stem>-key.pem`.
    pub fn issue(&self, names: &[&str], usage: Usage, stem: &str) -> Result<()> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = self
            .ca
            .issue(&names, usage, CERT_LIFETIME)
            .map_err(pki_err)?;
        cert.write(&self.dir, stem).map_err(pki_err)
    }

    /// A relay's HTTPS certificate (`<name>-https.pem`) for [`HTTPS_NAMES`] and `hostnames`.
    pub fn relay_certs(&self, name: &str, hostnames: &[String]) -> Result<()> {
        let mut names = HTTPS_NAMES.to_vec();
        names.extend(hostnames.iter().map(String::as_str));
        self.issue(&names, Usage::Server, &format!("{name}-https"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Http,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub kind: Kind,
    pub backend: SocketAddr,
    pub hostnames: Vec<String>,
    /// `access = "token"`.
    pub token: bool,
}

impl Service {
    /// The same service, gated by access tokens.
    pub fn with_token(mut self) -> Self {
        self.token = true;
        self
    }

    pub fn tcp(name: &str, backend: SocketAddr) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Tcp,
            backend,
            hostnames: vec![],
            token: false,
        }
    }

    pub fn http(name: &str, backend: SocketAddr, hostnames: &[&str]) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Http,
            backend,
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            token: false,
        }
    }
}

/// MaxMind's GeoIP2 City test database (see tests/data/README.md for its entries).
pub fn geoip_db() -> String {
    format!(
        "{}/tests/data/GeoIP2-City-Test.mmdb",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The body of a `[dns]` section ([`ControlOpts::dns`], [`RelayOpts::dns`]): zone `sat.test`,
/// `app.sat.test` for service `service`, one relay per answer, the test GeoIP database.
pub fn dns_section(service: &str) -> String {
    format!(
        "geoip = \"{}\"\n\n[dns.authority]\nzone = \"sat.test\"\nhosts = {{ app = \"{service}\" }}\nrelays_per_answer = 1\n",
        geoip_db()
    )
}

/// What goes into control.toml besides the fixed `[control]` and `[admin]` tables.
#[derive(Debug, Clone, Default)]
pub struct ControlOpts {
    pub services: Vec<Service>,
    /// `[backend] response_timeout`; the product default when `None`.
    pub response_timeout: Option<&'static str>,
    /// `[backend] connect_timeout`; the product default when `None`.
    pub connect_timeout: Option<&'static str>,
    /// `[control] relay_cert_lifetime`; the product default (24h) when `None`.
    pub relay_cert_lifetime: Option<&'static str>,
    /// The body of a `[dns]` section (its `listen` is added: 127.0.0.1:0).
    pub dns: Option<String>,
    /// More environment for the `sat control` process, such as `SAT_LOG_FORMAT`.
    pub env: Vec<(&'static str, &'static str)>,
}

/// control.toml with its uplink listener on `listen` and the admin API on `admin`.
pub fn control_toml(opts: &ControlOpts, listen: &str, admin: &str) -> String {
    let mut s = format!(
        "[control]\nname = \"control-1\"\nlisten = \"{listen}\"\ndata_dir = \"control-data\"\n"
    );
    if let Some(t) = opts.relay_cert_lifetime {
        s.push_str(&format!("relay_cert_lifetime = \"{t}\"\n"));
    }
    s.push_str(&format!("\n[admin]\nlisten = \"{admin}\"\n"));
    if opts.response_timeout.is_some() || opts.connect_timeout.is_some() {
        s.push_str("\n[backend]\n");
        if let Some(t) = opts.response_timeout {
            s.push_str(&format!("response_timeout = \"{t}\"\n"));
        }
        if let Some(t) = opts.connect_timeout {
            s.push_str(&format!("connect_timeout = \"{t}\"\n"));
        }
    }
    for svc in &opts.services {
        let kind = match svc.kind {
            Kind::Tcp => "tcp",
            Kind::Http => "http",
        };
        s.push_str(&format!(
            "\n[[service]]\nname = \"{}\"\nkind = \"{kind}\"\nbackend = \"{}\"\n",
            svc.name, svc.backend
        ));
        if svc.kind == Kind::Http {
            let hosts: Vec<String> = svc.hostnames.iter().map(|h| format!("\"{h}\"")).collect();
            s.push_str(&format!("hostnames = [{}]\n", hosts.join(", ")));
        }
        if svc.token {
            s.push_str("access = \"token\"\n");
        }
    }
    if let Some(dns) = &opts.dns {
        s.push_str(&format!("\n[dns]\nlisten = \"127.0.0.1:0\"\n{dns}\n"));
    }
    s
}

/// What goes into a relay's toml. Every listener binds 127.0.0.1:0.
#[derive(Debug, Clone)]
pub struct RelayOpts {
    /// `[relay] region`; `region-<n>` when `None`.
    pub region: Option<String>,
    /// `[uplink] connections`.
    pub uplinks: usize,
    /// `[uplink] control`; the net's control plane when empty. Uplinks spread over it in order,
    /// so `[control, proxy]` puts uplink 1 behind a [`udp_proxy::UdpProxy`].
    pub control: Vec<SocketAddr>,
    /// An `[https]` listener (HTTPS, TLS fallback, and QUIC when `quic`).
    pub https: bool,
    pub quic: bool,
    /// `[http] listen`: a plain HTTP listener.
    pub plain_http: bool,
    pub header_timeout: Option<&'static str>,
    pub max_header_size: Option<usize>,
    /// Services that get a `[[tcp]]` port of their own.
    pub tcp: Vec<String>,
    pub drain_grace: &'static str,
    /// `[relay] health_listen` on 127.0.0.1:0.
    pub health: bool,
    /// `[relay] public_addresses`.
    pub public_addresses: Vec<String>,
    /// `[relay] location` (lat, lon).
    pub location: Option<(f64, f64)>,
    /// The body of a `[dns]` section (its `listen` is added: 127.0.0.1:0).
    pub dns: Option<String>,
    /// `[https] listen`; 127.0.0.1:0 when `None`.
    pub https_listen: Option<SocketAddr>,
    /// More environment for the `sat relay` process, such as `SAT_LOG_FORMAT`.
    pub env: Vec<(&'static str, &'static str)>,
}

impl Default for RelayOpts {
    fn default() -> Self {
        Self {
            region: None,
            uplinks: 1,
            control: vec![],
            https: true,
            quic: true,
            plain_http: false,
            header_timeout: None,
            max_header_size: None,
            tcp: vec![],
            drain_grace: "5s",
            health: false,
            public_addresses: vec![],
            location: None,
            dns: None,
            https_listen: None,
            env: vec![],
        }
    }
}

/// A relay's toml; its region comes from its enrolment token, its identity lives in
/// `<name>-data`.
pub fn relay_toml(name: &str, control: &[SocketAddr], opts: &RelayOpts) -> String {
    let control: Vec<String> = control.iter().map(|a| format!("\"{a}\"")).collect();
    let mut s = format!(
        "[relay]\nname = \"{name}\"\ndata_dir = \"{name}-data\"\ndrain_grace = \"{}\"\n",
        opts.drain_grace
    );
    if opts.health {
        s.push_str("health_listen = \"127.0.0.1:0\"\n");
    }
    if !opts.public_addresses.is_empty() {
        let list: Vec<String> = opts
            .public_addresses
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        s.push_str(&format!("public_addresses = [{}]\n", list.join(", ")));
    }
    if let Some((lat, lon)) = opts.location {
        s.push_str(&format!("location = {{ lat = {lat}, lon = {lon} }}\n"));
    }
    s.push_str(&format!(
        "\n[uplink]\ncontrol = [{}]\nserver_name = \"sat-control\"\nconnections = {}\n",
        control.join(", "),
        opts.uplinks,
    ));
    if opts.https {
        let listen = opts
            .https_listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        s.push_str(&format!(
            "\n[https]\nlisten = \"{listen}\"\ncert = \"{name}-https.pem\"\n\
             key = \"{name}-https-key.pem\"\nquic = {}\n",
            opts.quic
        ));
    }
    if opts.plain_http || opts.header_timeout.is_some() || opts.max_header_size.is_some() {
        s.push_str("\n[http]\n");
        if opts.plain_http {
            s.push_str("listen = \"127.0.0.1:0\"\n");
        }
        if let Some(t) = opts.header_timeout {
            s.push_str(&format!("header_timeout = \"{t}\"\n"));
        }
        if let Some(n) = opts.max_header_size {
            s.push_str(&format!("max_header_size = {n}\n"));
        }
    }
    for svc in &opts.tcp {
        s.push_str(&format!(
            "\n[[tcp]]\nservice = \"{svc}\"\nlisten = \"127.0.0.1:0\"\n"
        ));
    }
    if let Some(dns) = &opts.dns {
        s.push_str(&format!("\n[dns]\nlisten = \"127.0.0.1:0\"\n{dns}\n"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// A network

/// A control plane in a temp dir that also holds the PKI and every config file.
pub struct Net {
    // Processes first: fields drop in order, so they die before their directory goes.
    pub control: Proc,
    pub control_addr: SocketAddr,
    /// The admin API, `http://<admin_addr>`.
    pub admin_addr: SocketAddr,
    /// The control plane's geo DNS, if [`ControlOpts::dns`] asked for it.
    pub control_dns: Option<SocketAddr>,
    pub admin_token: String,
    opts: ControlOpts,
    pki: Pki,
    /// Host names of the HTTP services, for the relays' HTTPS certificates.
    hostnames: Vec<String>,
    relays: usize,
    pub dir: tempfile::TempDir,
}

/// A running relay and the addresses it announced.
pub struct Relay {
    pub proc: Proc,
    pub name: String,
    pub region: String,
    pub https: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub tcp: HashMap<String, SocketAddr>,
    pub health: Option<SocketAddr>,
    /// Geo DNS, UDP and TCP on this port.
    pub dns: Option<SocketAddr>,
    /// The relay's config file, to start it again.
    pub config: PathBuf,
}

impl Relay {
    pub fn https(&self) -> Result<SocketAddr> {
        self.https.context("relay has no https listener")
    }

    pub fn http(&self) -> Result<SocketAddr> {
        self.http.context("relay has no plain http listener")
    }

    pub fn tcp_port(&self, service: &str) -> Result<SocketAddr> {
        self.tcp
            .get(service)
            .copied()
            .with_context(|| format!("relay has no tcp port for {service}"))
    }
}

impl Net {
    pub async fn start(services: Vec<Service>) -> Result<Self> {
        Self::start_with(ControlOpts {
            services,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(opts: ControlOpts) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::new(dir.path())?;
        let (control, control_addr, admin_addr) =
            start_control(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0").await?;
        let control_dns = dns_listener(&control, &opts).await?;
        let token_file = dir.path().join("control-data/admin.token");
        let admin_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();
        Ok(Self {
            control,
            control_addr,
            admin_addr,
            control_dns,
            admin_token,
            pki,
            hostnames: opts
                .services
                .iter()
                .flat_map(|s| s.hostnames.clone())
                .collect(),
            opts,
            relays: 0,
            dir,
        })
    }

    /// Stops the control plane (SIGKILL: nothing gets to tidy up) and starts it again on the
    /// same addresses and data dir.
    pub async fn restart_control(&mut self) -> Result<()> {
        self.control.kill().await?;
        let (control, _, _) = start_control(
            self.dir.path(),
            &self.opts,
            &self.control_addr.to_string(),
            &self.admin_addr.to_string(),
        )
        .await?;
        self.control_dns = dns_listener(&control, &self.opts).await?;
        self.control = control;
        Ok(())
    }

    /// `sat admin --url .. --json ARGS`, with the admin token in the environment. Returns the
    /// exit status, stdout and stderr.
    pub async fn admin<I, S>(&self, args: I) -> Result<(ExitStatus, String, String)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = sat_cmd(["admin", "--url"]);
        cmd.arg(format!("http://{}", self.admin_addr))
            .args(args)
            .env("SAT_ADMIN_TOKEN", &self.admin_token);
        run(cmd, SHORT).await
    }

    /// Like [`Net::admin`] but fails unless the command succeeds; returns its stdout.
    pub async fn admin_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let (status, out, err) = self.admin(args).await?;
        if !status.success() {
            bail!("sat admin failed ({status}): {err}");
        }
        Ok(out)
    }

    /// A one-time enrolment token for a relay named `name` in `region`.
    pub async fn relay_token(&self, region: &str, name: &str) -> Result<String> {
        let out = self
            .admin_ok(["relay-token", "create", "--region", region, "--name", name])
            .await?;
        Ok(out.trim().to_owned())
    }

    pub fn ca(&self) -> &Path {
        &self.pki.ca_path
    }

    /// Starts a relay and waits until it is ready and has announced every listener it was given.
    pub async fn relay(&mut self, opts: RelayOpts) -> Result<Relay> {
        self.relays += 1;
        let name = format!("relay-{}", self.relays);
        let region = opts
            .region
            .clone()
            .unwrap_or_else(|| format!("region-{}", self.relays));
        self.pki.relay_certs(&name, &self.hostnames)?;
        let control = if opts.control.is_empty() {
            vec![self.control_addr]
        } else {
            opts.control.clone()
        };
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, relay_toml(&name, &control, &opts))?;
        let token = self.relay_token(&region, &name).await?;
        let mut cmd = sat_cmd(["relay", "--config"]);
        cmd.arg(&config)
            .env("SAT_RELAY_TOKEN", token)
            .envs(opts.env.iter().copied());
        let proc = Proc::spawn(&name, cmd)?;

        proc.log.wait_for("relay ready", STARTUP).await?;
        // Listeners may be announced before or after "relay ready"; wait for each.
        let log = &proc.log;
        let https = match opts.https {
            true => Some(log.wait_listening("https", None, SHORT).await?),
            false => None,
        };
        let quic = match opts.https && opts.quic {
            true => Some(log.wait_listening("quic", None, SHORT).await?),
            false => None,
        };
        let http = match opts.plain_http {
            true => Some(log.wait_listening("http", None, SHORT).await?),
            false => None,
        };
        let mut tcp = HashMap::new();
        for svc in &opts.tcp {
            tcp.insert(
                svc.clone(),
                log.wait_listening("tcp", Some(svc), SHORT).await?,
            );
        }
        let health = match opts.health {
            true => Some(log.wait_listening("health", None, SHORT).await?),
            false => None,
        };
        let dns = match opts.dns.is_some() {
            true => Some(log.wait_listening("dns-udp", None, SHORT).await?),
            false => None,
        };
        Ok(Relay {
            proc,
            name,
            region,
            https,
            quic,
            http,
            tcp,
            health,
            dns,
            config,
        })
    }
}

/// Writes control.toml into `dir` and starts `sat control`; returns it with its uplink and
/// admin addresses once it is up.
async fn start_control(
    dir: &Path,
    opts: &ControlOpts,
    listen: &str,
    admin: &str,
) -> Result<(Proc, SocketAddr, SocketAddr)> {
    let config = dir.join("control.toml");
    std::fs::write(&config, control_toml(opts, listen, admin))?;
    let mut cmd = sat_cmd(["control", "--config"]);
    cmd.arg(&config).envs(opts.env.iter().copied());
    let control = Proc::spawn("control", cmd)?;
    let control_addr = control.log.wait_listening("quic", None, STARTUP).await?;
    let admin_addr = control.log.wait_listening("admin", None, STARTUP).await?;
    control.log.wait_for("control plane up", STARTUP).await?;
    Ok((control, control_addr, admin_addr))
}

/// Where a control plane started with `opts` serves geo DNS, if it does.
async fn dns_listener(control: &Proc, opts: &ControlOpts) -> Result<Option<SocketAddr>> {
    match opts.dns.is_some() {
        true => Ok(Some(
            control.log.wait_listening("dns-udp", None, SHORT).await?,
        )),
        false => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// A TCP server run by the test's runtime; stops (with all its connections) on drop.
pub struct Backend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves each connection with `handler`. Connection tasks live in a JoinSet owned by the accept
/// loop, so aborting the loop ends them too.
pub async fn serve<F, Fut>(handler: F) -> Result<Backend>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // With room for bursts: tests open hundreds of tunnels at once.
    let listener = sat_transport::listen::tcp("127.0.0.1:0".parse()?)?;
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        conns.spawn(handler(stream));
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(Backend { addr, task })
}

/// Echoes every byte, and half-closes after the peer does.
pub async fn echo_backend() -> Result<Backend> {
    serve(|stream| async move {
        let (mut r, mut w) = stream.into_split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

/// First reads seen by a [`recording_echo`], one per connection.
pub type Firsts = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Echoes, and keeps the first read of every connection: to count how often a tunnel's bytes
/// reached the service.
pub async fn recording_echo() -> Result<(Backend, Firsts)> {
    let firsts = Firsts::default();
    let recorded = firsts.clone();
    let backend = serve(move |mut stream| {
        let recorded = recorded.clone();
        async move {
            let mut buf = vec![0u8; 64];
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buf[..n].to_vec());
            let _ = stream.write_all(&buf[..n]).await;
            let (mut r, mut w) = stream.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await?;
    Ok((backend, firsts))
}

/// How many connections to `firsts`' service began with `bytes`.
pub fn seen(firsts: &Firsts, bytes: &[u8]) -> usize {
    firsts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|first| first.as_slice() == bytes)
        .count()
}

/// Waits (10 s at most) for `tunnel` to end without echoing: a tunnel whose bytes must not
/// have been sent a second time.
pub async fn ends_unechoed(tunnel: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(SHORT, tunnel.read(&mut buf))
        .await
        .context("the tunnel neither echoed nor ended")?;
    anyhow::ensure!(
        matches!(ended, Ok(0) | Err(_)),
        "the tunnel echoed {ended:?}: its bytes were sent again"
    );
    Ok(())
}

/// Reads until EOF, then answers the hex sha256 of what it read and closes: an answer that can
/// only come after a half-close went through.
pub async fn sha_backend() -> Result<Backend> {
    serve(|mut stream| async move {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return,
            }
        }
        let _ = stream.write_all(hex(&hasher.finalize()).as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await
}

/// Accepts, reads and discards, never writes: a backend that hangs.
pub async fn silent_backend() -> Result<Backend> {
    serve(|mut stream| async move {
        let mut buf = vec![0u8; 16 * 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        // Keep the socket open after EOF too: it never answers, even to a half-close.
        std::future::pending::<()>().await;
    })
    .await
}

/// Reads the first bytes, then aborts the connection with a TCP RST.
pub async fn reset_backend() -> Result<Backend> {
    serve(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        // Linger 0 makes close() send RST instead of FIN. (Deprecated because a non-zero linger
        // blocks the thread in close(); a zero one never does.)
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    })
    .await
}

/// A loopback address where nothing listens: connecting is refused. (The port was free a moment
/// ago; another process taking it in between is possible but unlikely.)
pub fn refused_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

// ---------------------------------------------------------------------------------------------
// Data

/// `len` pseudo-random bytes, the same for the same seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Writes a file of `len` pseudo-random bytes; returns its hex sha256.
pub fn random_file(path: &Path, seed: u64, len: usize) -> Result<String> {
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill_bytes(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n;
    }
    file.flush()?;
    Ok(hex(&hasher.finalize()))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `data` and closes the writer while reading the other end to EOF; returns what was read.
/// Both at once, as a tunnel needs: an echo cannot take 64 MiB without giving some back.
pub async fn exchange(
    mut writer: impl AsyncWrite + Unpin,
    mut reader: impl AsyncRead + Unpin,
    data: &[u8],
) -> Result<Vec<u8>> {
    let write = async {
        writer.write_all(data).await?;
        writer.shutdown().await?;
        drop(writer);
        anyhow::Ok(())
    };
    let read = async {
        let mut got = Vec::with_capacity(data.len());
        reader.read_to_end(&mut got).await?;
        anyhow::Ok(got)
    };
    let (written, got) = tokio::join!(write, read);
    written.context("writing")?;
    got.context("reading")
}

/// TCP connect with a deadline: a listener that stopped accepting must fail a test, not hang it.
pub async fn connect(addr: impl tokio::net::ToSocketAddrs + std::fmt::Debug) -> Result<TcpStream> {
    let what = format!("{addr:?}");
    tokio::time::timeout(SHORT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {what}: no answer within {SHORT:?}"))?
        .with_context(|| format!("connecting to {what}"))
}

/// One round trip on a connected stream: write `msg`, read back exactly as many bytes.
pub async fn round_trip(stream: &mut TcpStream, msg: &[u8], timeout: Duration) -> Result<()> {
    tokio::time::timeout(timeout, async {
        stream.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await?;
        anyhow::ensure!(back == msg, "echo returned different bytes");
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("no echo within {timeout:?}"))?
}

/// Runs a command to completion within `timeout`; returns (status, stdout, stderr).
pub async fn run(mut cmd: Command, timeout: Duration) -> Result<(ExitStatus, String, String)> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("{cmd:?} did not finish within {timeout:?}"))??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
