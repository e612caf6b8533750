//! Clients trust the system's root store by default, as production relays carry certificates
//! from a public CA. The test stands in for the system store with a temp copy of it that holds
//! the test CA too, named by `SSL_CERT_FILE` or `SSL_CERT_DIR` (which replace the platform's
//! store when set), and runs `sat connect`, `sat relays` and `sat forward` without `--ca`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use tokio::process::Command;

use crate::common::*;

/// Debian's bundle of the system's roots, when ca-certificates is installed.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A stand-in for the system store: the system's bundle (if there is one) and `extra`.
fn store_with(dir: &Path, name: &str, extra: &Path) -> Result<PathBuf> {
    let mut bundle = std::fs::read(SYSTEM_BUNDLE).unwrap_or_default();
    bundle.push(b'\n');
    bundle.extend(std::fs::read(extra)?);
    let path = dir.join(name);
    std::fs::write(&path, bundle)?;
    Ok(path)
}

/// `cmd` with the system store replaced: `file` as SSL_CERT_FILE and `dir` as SSL_CERT_DIR,
/// each unset when `None`; and no `sat up` data dir, whose CA a client may otherwise pick.
fn with_store(mut cmd: Command, file: Option<&Path>, dir: Option<&Path>, home: &Path) -> Command {
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("XDG_DATA_HOME", home);
    if let Some(file) = file {
        cmd.env("SSL_CERT_FILE", file);
    }
    if let Some(dir) = dir {
        cmd.env("SSL_CERT_DIR", dir);
    }
    cmd
}

/// `sat connect echo --relay ADDR` with no `--ca`; "hello" through it must come back.
async fn connect_echoes(cmd: Command) -> Result<()> {
    let mut tunnel = Proc::spawn_piped("connect (system roots)", cmd)?;
    let (stdin, stdout) = (tunnel.stdin()?, tunnel.stdout()?);
    let back = tokio::time::timeout(SHORT, exchange(stdin, stdout, b"hello\n"))
        .await
        .context("no echo within 10 s")??;
    ensure!(
        back == b"hello\n",
        "echoed {:?}",
        String::from_utf8_lossy(&back)
    );
    let status = tunnel.wait_exit(SHORT).await?;
    ensure!(status.success(), "sat connect exited with {status}");
    Ok(())
}

/// An echo service behind one relay, and a temp dir for stand-in stores.
struct Setup {
    net: Net,
    relay: Relay,
    /// The relay's HTTPS (and QUIC) address, for `--relay`.
    https: String,
    store: tempfile::TempDir,
    /// An XDG_DATA_HOME with no `sat up` in it.
    home: PathBuf,
    _echo: Backend,
}

async fn setup() -> Result<Setup> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;
    let https = relay.https()?.to_string();
    let store = tempfile::tempdir()?;
    let home = store.path().join("home");
    Ok(Setup {
        net,
        relay,
        https,
        store,
        home,
        _echo: echo,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trust_the_system_roots_without_ca() -> Result<()> {
    let Setup {
        net,
        relay,
        https,
        store,
        home,
        _echo,
    } = setup().await?;

    // SSL_CERT_FILE: a copy of the system's bundle with the test CA added.
    let bundle = store_with(store.path(), "bundle.pem", net.ca())?;
    let sat_connect = || sat_cmd(["connect", "echo", "--relay", &https]);
    connect_echoes(with_store(sat_connect(), Some(&bundle), None, &home))
        .await
        .context("SSL_CERT_FILE holding the test CA")?;

    // SSL_CERT_DIR: a directory of CA files, the test CA among them.
    let certs = store.path().join("certs");
    std::fs::create_dir(&certs)?;
    std::fs::copy(net.ca(), certs.join("test-ca.pem"))?;
    connect_echoes(with_store(sat_connect(), None, Some(&certs), &home))
        .await
        .context("SSL_CERT_DIR holding the test CA")?;

    // `sat relays` reads the map and times the relay the same way.
    let relays = sat_cmd(["relays", "--json", "--relay", &https]);
    let (status, out, err) = run(with_store(relays, Some(&bundle), None, &home), SHORT).await?;
    ensure!(status.success(), "sat relays: {status}: {err}");
    ensure!(
        out.contains(&relay.name),
        "sat relays did not list the relay: {out}"
    );

    // `sat forward`, the same way.
    let mut forward = sat_cmd(["forward", "127.0.0.1:0", "echo", "--relay", &https]);
    forward = with_store(forward, Some(&bundle), None, &home);
    let forward = Proc::spawn("forward (system roots)", forward)?;
    let local = forward
        .log
        .wait_listening("tcp", Some("echo"), STARTUP)
        .await?;
    let mut stream = connect(local).await?;
    round_trip(&mut stream, b"through forward", SHORT).await?;
    Ok(())
}

/// Without the test CA in the store, the relay's certificate is refused, and the error says
/// so, what it was checked against, and that `--ca` is the way for a private CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_the_system_does_not_trust_is_a_certificate_error() -> Result<()> {
    // Bound, not `..`: the relay and the backend must live to the end.
    let Setup {
        net,
        relay: _relay,
        https,
        store,
        home,
        _echo,
    } = setup().await?;
    // Another CA (of the same name, so the relay's certificate fails on its signature), so that
    // the store is never empty, whatever this machine has installed.
    let other = tempfile::tempdir()?;
    let other_ca = Pki::new(other.path())?;
    let bundle = store_with(store.path(), "bundle.pem", &other_ca.ca_path)?;

    for args in [
        vec!["connect", "echo", "--relay", &https],
        vec!["relays", "--relay", &https],
    ] {
        let cmd = with_store(sat_cmd(&args), Some(&bundle), None, &home);
        let (status, _, err) = run(cmd, SHORT).await?;
        let what = args[0];
        ensure!(
            status.code() == Some(64),
            "sat {what} exited with {status}: {err}"
        );
        ensure!(
            err.contains("certificate is not trusted")
                && err.contains("invalid peer certificate")
                && err.contains("SSL_CERT_FILE")
                && err.contains("--ca"),
            "sat {what} should name the certificate problem, the store and --ca: {err}"
        );
    }

    // `--ca` still trusts a private CA, the system store notwithstanding.
    let mut cmd = sat_cmd(["connect", "echo", "--relay", &https, "--ca"]);
    cmd.arg(net.ca());
    connect_echoes(with_store(cmd, Some(&bundle), None, &home)).await
}
