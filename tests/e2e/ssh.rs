//! Real OpenSSH through Satellite: `ssh -o ProxyCommand="sat connect ssh ..."`, and plain
//! `ssh -p <relay's TCP port>`, to an `sshd` the test runs in its own temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const SSHD: &str = "/usr/sbin/sshd";
const BULK: usize = 64 << 20;

/// An `sshd` that lets the current user in with a key made for this test only.
struct Sshd {
    _proc: Proc,
    addr: SocketAddr,
    /// The client's private key.
    key: PathBuf,
    _dir: tempfile::TempDir,
}

async fn keygen(path: &Path) -> Result<()> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path);
    let (status, _, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "ssh-keygen failed: {err}");
    Ok(())
}

async fn start_sshd() -> Result<Sshd> {
    // Debian's sshd refuses to start without its privilege-separation directory, which lives on
    // a tmpfs and may be missing in a fresh container. Only root can (and needs to) create it.
    if !Path::new("/run/sshd").exists() && is_root() {
        std::fs::create_dir_all("/run/sshd")?;
    }
    let dir = tempfile::tempdir()?;
    let host_key = dir.path().join("host_key");
    let key = dir.path().join("user_key");
    keygen(&host_key).await?;
    keygen(&key).await?;
    let authorized = dir.path().join("authorized_keys");
    std::fs::copy(dir.path().join("user_key.pub"), &authorized)?;

    // sshd cannot bind port 0 and report it, so take a free port; if another process grabs it
    // first, sshd exits and we try another.
    for _ in 0..3 {
        let port = refused_addr()?.port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n",
                host_key.display(),
                authorized.display()
            ),
        )?;
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let proc = Proc::spawn("sshd", cmd)?;
        let listening = format!("Server listening on 127.0.0.1 port {port}");
        match proc.log.wait_for(&listening, STARTUP).await {
            Ok(_) => {
                return Ok(Sshd {
                    _proc: proc,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    key,
                    _dir: dir,
                })
            }
            Err(e) if proc.log.contains("Bind to port") => eprintln!("retrying: {e}"),
            Err(e) => return Err(e),
        }
    }
    bail!("sshd could not bind a free port in 3 attempts")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// POSIX shell quoting, for the ProxyCommand that ssh hands to a shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Options that keep ssh from the user's known hosts and from asking anything.
const QUIET_SSH: [&str; 8] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
];

/// `ssh` with nothing from the user's own config, keys or known hosts.
fn ssh(key: &Path, route: &[String], remote: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(QUIET_SSH)
        .args(["-o", "ConnectTimeout=20"])
        .args(route)
        .arg(remote);
    cmd
}

/// `echo hello`, then 64 MiB into `sha256sum` on the far side, over `route`.
async fn hello_and_bulk(key: &Path, route: &[String]) -> Result<()> {
    let (status, out, err) = run(ssh(key, route, "echo hello"), Duration::from_secs(60)).await?;
    ensure!(status.success(), "ssh echo hello: {status}; stderr:\n{err}");
    ensure!(
        out == "hello\n",
        "ssh echo hello printed {out:?}; stderr:\n{err}"
    );

    let data = random_bytes(7, BULK);
    let mut cmd = ssh(key, route, "sha256sum");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let write = async {
        stdin.write_all(&data).await?;
        drop(stdin);
        anyhow::Ok(())
    };
    let (written, output) = tokio::time::timeout(Duration::from_secs(180), async {
        tokio::join!(write, child.wait_with_output())
    })
    .await
    .context("64 MiB through ssh took over 180 s")?;
    let output = output?;
    let err = String::from_utf8_lossy(&output.stderr);
    written.with_context(|| format!("writing to ssh; stderr:\n{err}"))?;
    ensure!(
        output.status.success(),
        "ssh sha256sum: {}; stderr:\n{err}",
        output.status
    );
    let remote = String::from_utf8_lossy(&output.stdout);
    let remote = remote.split_whitespace().next().unwrap_or_default();
    ensure!(
        remote == sha256_hex(&data),
        "sshd side hashed {remote}, sent {}",
        sha256_hex(&data)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_through_sat_connect_as_proxy_command() -> Result<()> {
    let sshd = start_sshd().await?;
    let mut net = Net::start(vec![Service::tcp("ssh", sshd.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let proxy = format!(
        "ProxyCommand={} connect ssh --relay {} --ca {}",
        sh_quote(SAT),
        relay.https()?,
        sh_quote(&net.ca().display().to_string())
    );
    // With a ProxyCommand the host name is never resolved or dialled; it is only a label.
    let route = vec!["-o".into(), proxy, "127.0.0.1".into()];
    hello_and_bulk(&sshd.key, &route).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_through_a_relay_tcp_port() -> Result<()> {
    let sshd = start_sshd().await?;
    let mut net = Net::start(vec![Service::tcp("ssh", sshd.addr)]).await?;
    let relay = net
        .relay(RelayOpts {
            tcp: vec!["ssh".into()],
            ..Default::default()
        })
        .await?;

    let port = relay.tcp_port("ssh")?;
    let route = vec!["-p".into(), port.port().to_string(), port.ip().to_string()];
    hello_and_bulk(&sshd.key, &route).await?;
    Ok(())
}

/// `sat ssh [user@]SERVICE -- OPTIONS COMMAND`: OpenSSH's own client, through the relay the
/// client chooses, with options and a remote command passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sat_ssh_runs_openssh_through_the_chosen_relay() -> Result<()> {
    let sshd = start_sshd().await?;
    let mut net = Net::start(vec![Service::tcp("ssh", sshd.addr)]).await?;
    let relay = net.relay(RelayOpts::default()).await?;

    let target = if is_root() { "root@ssh" } else { "ssh" };
    let mut cmd = sat_cmd([
        "ssh",
        target,
        "--relay",
        &relay.https()?.to_string(),
        "--ca",
    ]);
    cmd.arg(net.ca())
        .args(["--", "-F", "/dev/null", "-i"])
        .arg(&sshd.key)
        .args(QUIET_SSH)
        .args(["echo", "hello from", "sat ssh"]);
    let (status, out, err) = run(cmd, Duration::from_secs(60)).await?;
    ensure!(status.success(), "sat ssh: {status}; stderr:\n{err}");
    ensure!(
        out == "hello from sat ssh\n",
        "printed {out:?}; stderr:\n{err}"
    );

    // A service that is not there: ssh reports the tunnel's refusal and fails.
    let mut cmd = sat_cmd([
        "ssh",
        "nope",
        "--relay",
        &relay.https()?.to_string(),
        "--ca",
    ]);
    cmd.arg(net.ca())
        .args(["--", "-F", "/dev/null", "-o", "BatchMode=yes", "true"]);
    let (status, _, err) = run(cmd, Duration::from_secs(30)).await?;
    ensure!(!status.success(), "sat ssh to a missing service succeeded");
    ensure!(err.contains("unknown service"), "stderr:\n{err}");
    Ok(())
}
