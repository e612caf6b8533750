//! Relay enrolment with the control plane's own CA: a one-time token, the identity a relay keeps
//! in its data dir, every way the control plane (or the relay itself) refuses, and certificate
//! renewal while a tunnel carries a bulk transfer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use sat_control::pki::{Ca, Usage};
use sat_proto::clock;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A relay's toml for a relay started by hand rather than by [`Net::relay`]: one `[[tcp]]` port
/// for `echo` and no HTTPS listener, so it needs no certificate from the test web CA. Its data
/// dir is `<name>-data` beside the config.
fn hand_config(net: &Net, name: &str) -> Result<PathBuf> {
    let opts = RelayOpts {
        https: false,
        quic: false,
        tcp: vec!["echo".into()],
        ..Default::default()
    };
    let path = net.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, relay_toml(name, &[net.control_addr], &opts))?;
    Ok(path)
}

/// `sat relay --config CONFIG`, with `token` in SAT_RELAY_TOKEN if given.
fn spawn_relay(config: &Path, token: Option<&str>, label: &str) -> Result<Proc> {
    let mut cmd = sat_cmd(["relay", "--config"]);
    cmd.arg(config).env_remove("SAT_RELAY_TOKEN");
    if let Some(token) = token {
        cmd.env("SAT_RELAY_TOKEN", token);
    }
    Proc::spawn(label, cmd)
}

/// A relay that enrolment refused must exit non-zero within [`SHORT`], having said every one of
/// `needles` on stderr. Returns what it said.
async fn exits_refused(relay: &mut Proc, needles: &[&str]) -> Result<String> {
    let status = relay.wait_exit(SHORT).await?;
    let said = relay.log.lines().join("\n");
    ensure!(
        !status.success(),
        "{} exited 0 after a refusal; it said:\n{said}",
        relay.name
    );
    for needle in needles {
        ensure!(
            said.contains(needle),
            "{} should have said {needle:?}; it said:\n{said}",
            relay.name
        );
    }
    ensure!(
        !said.contains("relay ready"),
        "{} got ready despite the refusal",
        relay.name
    );
    Ok(said)
}

/// A relay whose uplinks the control plane refuses: the reason must reach its log, it must
/// never get ready, and (a refusal for good) it must then exit non-zero rather than retry for
/// ever.
async fn uplink_refused(relay: &mut Proc, reason: &str) -> Result<()> {
    let line = relay
        .log
        .wait_for(reason, SHORT)
        .await
        .with_context(|| format!("the refusal ({reason:?}) never reached the relay's log"))?;
    ensure!(
        line.contains("refuses this relay") && line.contains("relay-token create"),
        "the refusal should say the control plane refuses the relay, and how to fix it: {line}"
    );
    ensure!(
        !relay.log.contains("relay ready"),
        "{} got ready although the control plane refuses it",
        relay.name
    );
    // A refusal for good is retried slowly (every 15-30 s), not in a storm: over the next
    // two seconds no uplink tries again.
    let before = relay
        .log
        .lines()
        .iter()
        .filter(|l| l.contains(reason))
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = relay
        .log
        .lines()
        .iter()
        .filter(|l| l.contains(reason))
        .count();
    ensure!(
        after == before,
        "{} retried a refused uplink within 2 s ({before} -> {after} refusals)",
        relay.name
    );
    ensure!(
        relay.log.lines().len() < 200,
        "{} logs too much while refused",
        relay.name
    );
    Ok(())
}

/// `sat admin --json relays`.
async fn relays(net: &Net) -> Result<Vec<Value>> {
    let out = net.admin_ok(["--json", "relays"]).await?;
    serde_json::from_str(&out).with_context(|| format!("`sat admin --json relays` said: {out}"))
}

/// The serial (lowercase hex) of the first certificate in a PEM file.
fn serial_of(pem: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(pem).with_context(|| format!("reading {}", pem.display()))?;
    let certs = sat_transport::identity::certs_from_pem(&text);
    let leaf = certs
        .first()
        .with_context(|| format!("{} holds no certificate", pem.display()))?;
    let (serial, _) = sat_transport::tls::serial_and_expiry(leaf)
        .with_context(|| format!("{}: unreadable certificate", pem.display()))?;
    Ok(serial)
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    line[at..]
        .split_whitespace()
        .next()
        .map(|v| v.trim_matches('"'))
}

/// Control log lines containing `message` for relay `name`.
fn control_lines(net: &Net, message: &str, name: &str) -> Vec<String> {
    net.control
        .log
        .lines()
        .into_iter()
        .filter(|l| l.contains(message) && field(l, "relay") == Some(name))
        .collect()
}

/// Waits for lines containing each of `needles`, in this order, after `mark`.
async fn wait_in_order(log: &Log, mark: usize, needles: &[&str], timeout: Duration) -> Result<()> {
    let mut next = 0;
    let what = format!("{needles:?} in this order");
    log.wait_line(mark, timeout, &what, |l| {
        if l.contains(needles[next]) {
            next += 1;
        }
        (next == needles.len()).then_some(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Enrolment

/// A relay enrols with its token, serves a service, keeps its identity in its data dir, and
/// restarts from that identity without enrolling again, with or without the (used) token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_enrols_once_and_restarts_from_its_stored_identity() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let mut relay = net
        .relay(RelayOpts {
            tcp: vec!["echo".into()],
            ..Default::default()
        })
        .await?;
    let mut tunnel = connect(relay.tcp_port("echo")?).await?;
    round_trip(&mut tunnel, b"through a freshly enrolled relay", SHORT).await?;
    drop(tunnel);

    relay.proc.log.wait_for("enrolled", SHORT).await?;
    let enrolled = control_lines(&net, "relay enrolled", "relay-1");
    ensure!(
        enrolled.len() == 1,
        "the control plane should log one \"relay enrolled\" for relay-1: {enrolled:?}"
    );

    // The data dir: identity, certificate, private key (owner only) and the control plane's CA.
    let data = net.dir.path().join("relay-1-data");
    for file in ["identity.json", "relay.pem", "relay-key.pem", "ca.pem"] {
        ensure!(
            data.join(file).is_file(),
            "{file} missing from the data dir"
        );
    }
    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("identity.json"))?)?;
    ensure!(
        identity["name"] == "relay-1" && identity["region"] == "region-1",
        "identity.json names the wrong relay: {identity}"
    );
    let (issued, expires) = (
        identity["issued_at"].as_u64().context("issued_at")?,
        identity["not_after"].as_u64().context("not_after")?,
    );
    ensure!(
        expires > issued + 23 * 3600 && expires <= issued + 24 * 3600 + 60,
        "identity.json: a 24h certificate from {issued} should expire about a day later, not at {expires}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("relay-key.pem"))?
            .permissions()
            .mode();
        ensure!(
            mode & 0o777 == 0o600,
            "relay-key.pem has mode {:o}, expected 600",
            mode & 0o777
        );
    }
    let ca = std::fs::read(data.join("ca.pem"))?;
    let control_ca = std::fs::read(net.dir.path().join("control-data/ca.pem"))?;
    ensure!(
        ca == control_ca,
        "the relay's ca.pem differs from the control plane's"
    );
    // The control plane knows the certificate by the serial the certificate carries.
    let serial = serial_of(&data.join("relay.pem"))?;
    ensure!(
        field(&enrolled[0], "serial") == Some(serial.as_str()),
        "relay.pem has serial {serial}; the control plane recorded: {}",
        enrolled[0]
    );

    // The token it enrolled with, now used, as a service unit would keep it in its environment.
    let environ = std::fs::read(format!("/proc/{}/environ", relay.proc.pid()?))?;
    let token = environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SAT_RELAY_TOKEN="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .context("relay-1 has no SAT_RELAY_TOKEN")?;

    // Restart without a token: the stored identity is used as is.
    relay.proc.signal(libc::SIGTERM)?;
    let status = relay.proc.wait_exit(SHORT).await?;
    ensure!(status.success(), "relay-1 exited with {status} on SIGTERM");
    let pem = std::fs::read(data.join("relay.pem"))?;
    let mut again = spawn_relay(&relay.config, None, "relay-1 again")?;
    again.log.wait_for("relay ready", STARTUP).await?;
    let port = again.log.wait_listening("tcp", Some("echo"), SHORT).await?;
    let mut tunnel = connect(port).await?;
    round_trip(&mut tunnel, b"through the restarted relay", SHORT).await?;
    drop(tunnel);
    ensure!(
        !again.log.contains("enrolling"),
        "the restarted relay enrolled again:\n{}",
        again.log.tail()
    );
    ensure!(
        std::fs::read(data.join("relay.pem"))? == pem,
        "relay.pem changed on a restart"
    );

    // Restart with the used token still in the environment: it is ignored, not refused.
    again.signal(libc::SIGTERM)?;
    again.wait_exit(SHORT).await?;
    let mut third = spawn_relay(&relay.config, Some(&token), "relay-1 third")?;
    third.log.wait_for("already enrolled", STARTUP).await?;
    third.log.wait_for("relay ready", STARTUP).await?;
    ensure!(!third.log.contains("enrolling"), "the relay enrolled again");

    let listed = relays(&net).await?;
    let named: Vec<&Value> = listed.iter().filter(|r| r["name"] == "relay-1").collect();
    ensure!(
        listed.len() == 1 && named.len() == 1,
        "`sat admin relays` should list relay-1 once and nothing else: {listed:?}"
    );
    let enrolled = control_lines(&net, "relay enrolled", "relay-1");
    ensure!(
        enrolled.len() == 1,
        "relay-1 enrolled {} times at the control plane: {enrolled:?}",
        enrolled.len()
    );
    third.kill().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Refusals at enrolment: the relay exits with the reason

/// A token works once: a second relay presenting it is refused, and says by whom it was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_token_is_refused() -> Result<()> {
    let echo = echo_backend().await?;
    let net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let token = net.relay_token("eu", "hand-a").await?;
    let first = spawn_relay(&hand_config(&net, "hand-a")?, Some(&token), "hand-a")?;
    first.log.wait_for("relay ready", STARTUP).await?;

    let mut second = spawn_relay(&hand_config(&net, "hand-b")?, Some(&token), "hand-b")?;
    exits_refused(
        &mut second,
        &[
            "the control plane refused enrolment",
            "already used",
            "\"hand-a\"",
        ],
    )
    .await?;
    net.control
        .log
        .wait_for("refused: the enrolment token was already used", SHORT)
        .await?;
    ensure!(
        !net.dir.path().join("hand-b-data/identity.json").exists(),
        "the refused relay stored an identity"
    );
    let listed = relays(&net).await?;
    ensure!(
        listed.len() == 1,
        "only hand-a should be enrolled: {listed:?}"
    );
    Ok(())
}

/// A token past its TTL is refused, and says when it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() -> Result<()> {
    let echo = echo_backend().await?;
    let net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let out = net
        .admin_ok([
            "--json",
            "relay-token",
            "create",
            "--region",
            "eu",
            "--name",
            "late",
            "--ttl",
            "1s",
        ])
        .await?;
    let created: Value = serde_json::from_str(&out)?;
    let token = created["token"].as_str().context("no token")?.to_owned();
    let expires_at = created["expires_at"].as_i64().context("no expires_at")?;
    ensure!(
        expires_at <= clock::unix_millis() + 1500,
        "a 1s token expires at {expires_at}, more than 1s from now"
    );
    // Nothing announces that a wall-clock time has passed.
    while clock::unix_millis() <= expires_at + 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut relay = spawn_relay(&hand_config(&net, "late")?, Some(&token), "late")?;
    exits_refused(
        &mut relay,
        &["the control plane refused enrolment", "token expired at"],
    )
    .await?;
    net.control
        .log
        .wait_for("refused: the enrolment token expired", SHORT)
        .await?;
    ensure!(
        relays(&net).await?.is_empty(),
        "a relay enrolled with an expired token"
    );
    Ok(())
}

/// A token that pins another CA: the relay refuses the control plane during the handshake,
/// before sending the token, so the token is still good afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fingerprint_is_refused_before_the_token_is_sent() -> Result<()> {
    let echo = echo_backend().await?;
    let net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let token = net.relay_token("eu", "pinned").await?;
    let (head, real) = token.rsplit_once('.').context("token has no dots")?;
    let other = sha256_hex(b"some other control plane's CA");
    ensure!(other != real, "the replacement fingerprint is the real one");
    let forged = format!("{head}.{other}");

    let config = hand_config(&net, "pinned")?;
    let mut relay = spawn_relay(&config, Some(&forged), "pinned (wrong CA)")?;
    exits_refused(
        &mut relay,
        &[
            "the control plane's CA does not match the token",
            &format!("the token pins {other}"),
        ],
    )
    .await?;
    ensure!(
        !net.control.log.contains("refused:") && !net.control.log.contains("relay enrolled"),
        "the control plane saw an enrolment request:\n{}",
        net.control.log.tail()
    );
    ensure!(
        !net.dir.path().join("pinned-data/identity.json").exists(),
        "the refused relay stored an identity"
    );

    // The secret never left the relay: the genuine token still enrols.
    let relay = spawn_relay(&config, Some(&token), "pinned (right CA)")?;
    relay.log.wait_for("relay ready", STARTUP).await?;
    Ok(())
}

/// Text that is not an enrolment token: the relay says what is wrong with it and exits, without
/// contacting the control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_token_is_refused_with_the_part_at_fault() -> Result<()> {
    let echo = echo_backend().await?;
    let net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let token = net.relay_token("eu", "typo").await?;
    let config = hand_config(&net, "typo")?;
    let short_secret = {
        let parts: Vec<&str> = token.split('.').collect();
        ensure!(
            parts.len() == 4,
            "token {token:?} is not satr1.id.secret.ca"
        );
        format!(
            "{}.{}.{}.{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() - 1],
            parts[3]
        )
    };
    let cases = [
        ("satr1.0123abcd", "expected 4"),
        (
            "sat_at1.eyJraWQiOiJrIn0.c2ln",
            "does not start with \"satr1.\"",
        ),
        (short_secret.as_str(), "the secret is 42 characters"),
    ];
    for (text, why) in cases {
        let mut relay = spawn_relay(&config, Some(text), "typo")?;
        exits_refused(&mut relay, &["the enrolment token is malformed", why]).await?;
    }
    ensure!(
        !net.control.log.contains("refused:") && !net.control.log.contains("relay enrolled"),
        "the control plane heard from a relay with a malformed token:\n{}",
        net.control.log.tail()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Refusals of an uplink: an identity the control plane does not accept

/// A certificate from the right CA that the control plane never issued to a relay (no serial in
/// its store): the uplink is refused as unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_unknown_to_the_control_plane_is_refused() -> Result<()> {
    let echo = echo_backend().await?;
    let net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let control_data = net.dir.path().join("control-data");
    let ca = Ca::load_files(
        &control_data.join("ca.pem"),
        &control_data.join("ca-key.pem"),
    )
    .map_err(|e| anyhow::anyhow!("loading the control plane's CA: {e}"))?;
    let cert = ca
        .issue(&["forged".into()], Usage::Client, Duration::from_secs(3600))
        .map_err(|e| anyhow::anyhow!("issuing: {e}"))?;
    let config = hand_config(&net, "forged")?;
    let data = net.dir.path().join("forged-data");
    std::fs::create_dir_all(&data)?;
    cert.write(&data, "relay")
        .map_err(|e| anyhow::anyhow!("writing the certificate: {e}"))?;
    std::fs::copy(control_data.join("ca.pem"), data.join("ca.pem"))?;
    let now = clock::unix_seconds();
    let identity = serde_json::json!({
        "name": "forged", "region": "eu", "issued_at": now, "not_after": now + 3600,
    });
    std::fs::write(data.join("identity.json"), identity.to_string())?;

    let mut relay = spawn_relay(&config, None, "forged")?;
    let serial = serial_of(&data.join("relay.pem"))?;
    net.control
        .log
        .wait_for(
            &format!("refusing uplink: certificate {serial} for \"forged\" is unknown to this control plane"),
            SHORT,
        )
        .await?;
    uplink_refused(&mut relay, "unknown to this control plane").await?;
    Ok(())
}

/// A revoked relay: its running uplinks are closed, and once restarted it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_relay_is_refused() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let mut relay = net
        .relay(RelayOpts {
            https: false,
            tcp: vec!["echo".into()],
            ..Default::default()
        })
        .await?;
    let mark = relay.proc.log.mark();
    net.admin_ok(["relays", "revoke", "relay-1"]).await?;
    relay
        .proc
        .log
        .wait_for_since(mark, "relay \"relay-1\" revoked by an operator", SHORT)
        .await
        .context("the running relay's uplink was not closed with the reason")?;
    let listed = relays(&net).await?;
    ensure!(
        listed.len() == 1 && listed[0]["state"] == "revoked",
        "relay-1 should be listed as revoked: {listed:?}"
    );
    relay.proc.kill().await?;

    let mut again = spawn_relay(&relay.config, None, "relay-1 revoked")?;
    net.control
        .log
        .wait_for(
            "refusing uplink: relay \"relay-1\" has been revoked by an operator",
            SHORT,
        )
        .await?;
    uplink_refused(&mut again, "has been revoked").await?;
    Ok(())
}

/// What the refusal and `sat admin relays revoke --help` tell the operator: a revoked relay comes
/// back by enrolling again with a new token. The machine keeps its data dir, as it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_relay_comes_back_with_a_new_token() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let mut relay = net
        .relay(RelayOpts {
            https: false,
            tcp: vec!["echo".into()],
            ..Default::default()
        })
        .await?;
    net.admin_ok(["relays", "revoke", "relay-1"]).await?;
    relay.proc.kill().await?;

    let token = net.relay_token(&relay.region, "relay-1").await?;
    let again = spawn_relay(&relay.config, Some(&token), "relay-1 re-enrolled")?;
    again
        .log
        .wait_for("relay ready", SHORT)
        .await
        .context("a revoked relay given a new token did not come back")?;
    let enrolled = control_lines(&net, "relay enrolled", "relay-1");
    ensure!(
        enrolled.len() == 2,
        "relay-1 should have enrolled twice: {enrolled:?}"
    );
    let listed = relays(&net).await?;
    ensure!(
        listed.len() == 1 && listed[0]["state"] != "revoked",
        "relay-1 should be listed once, not revoked: {listed:?}"
    );
    Ok(())
}

/// A relay that presents another relay's name in its Hello (a copied data dir with the name
/// edited): its certificate names the original, so the control plane closes the uplink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_claiming_another_relays_name_is_refused() -> Result<()> {
    let echo = echo_backend().await?;
    let mut net = Net::start(vec![Service::tcp("echo", echo.addr)]).await?;
    let opts = || RelayOpts {
        https: false,
        tcp: vec!["echo".into()],
        ..Default::default()
    };
    let _relay1 = net.relay(opts()).await?;
    let _relay2 = net.relay(opts()).await?;

    let (from, to) = (
        net.dir.path().join("relay-1-data"),
        net.dir.path().join("impostor-data"),
    );
    std::fs::create_dir_all(&to)?;
    for file in ["identity.json", "relay.pem", "relay-key.pem", "ca.pem"] {
        std::fs::copy(from.join(file), to.join(file))?;
    }
    let mut identity: Value =
        serde_json::from_str(&std::fs::read_to_string(to.join("identity.json"))?)?;
    identity["name"] = "relay-2".into();
    std::fs::write(to.join("identity.json"), identity.to_string())?;

    let mut impostor = spawn_relay(&hand_config(&net, "impostor")?, None, "impostor")?;
    let reason = "relay says it is \"relay-2\" but its certificate names \"relay-1\"";
    net.control.log.wait_for(reason, SHORT).await?;
    let listed = relays(&net).await?;
    ensure!(
        listed.len() == 2 && listed.iter().all(|r| r["state"] == "up"),
        "the genuine relays should stay up: {listed:?}"
    );
    uplink_refused(&mut impostor, reason).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Renewal

const CHUNK: usize = 64 * 1024;
const POOL: usize = 1 << 20;
/// At most one chunk per period: about 6 MiB/s, so that the transfer lasts through a renewal.
const PERIOD: Duration = Duration::from_millis(10);
/// The most the backend sends before the test lets it finish.
const CAP: u64 = 96 << 20;
/// What the backend sends after the test lets it finish.
const TAIL: u64 = 8 << 20;

/// A backend that streams deterministic bytes at a bounded pace, until the test opens `gate`
/// and [`TAIL`] more bytes have gone; then it closes and reports (bytes sent, sha256).
async fn paced_backend() -> Result<(
    Backend,
    watch::Sender<bool>,
    mpsc::UnboundedReceiver<(u64, String)>,
)> {
    let pool = Arc::new(random_bytes(42, POOL + CHUNK));
    let (gate_tx, gate_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let backend = serve(move |mut stream| {
        let (pool, mut gate, done) = (pool.clone(), gate_rx.clone(), done_tx.clone());
        async move {
            let mut hasher = Sha256::new();
            let (start, mut sent, mut tail) = (Instant::now(), 0u64, None::<u64>);
            for i in 0u64.. {
                if tail.is_none() {
                    if sent >= CAP {
                        // Waits for the gate; the pace is irrelevant from here on.
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    if *gate.borrow() {
                        tail = Some(TAIL);
                    }
                }
                if tail == Some(0) {
                    break;
                }
                tokio::time::sleep_until(start + PERIOD * i as u32).await;
                let at = (i.wrapping_mul(2_654_435_761) % POOL as u64) as usize;
                let chunk = &pool[at..at + CHUNK];
                if stream.write_all(chunk).await.is_err() {
                    return;
                }
                hasher.update(chunk);
                sent += CHUNK as u64;
                if let Some(t) = tail.as_mut() {
                    *t -= CHUNK as u64;
                }
            }
            let _ = stream.shutdown().await;
            let _ = done.send((sent, hex(&hasher.finalize())));
        }
    })
    .await?;
    Ok((backend, gate_tx, done_rx))
}

/// With 12 s certificates the relay renews about 8 s after enrolling, while `sat connect`
/// downloads a stream that spans the renewal: the certificate changes on disk and at the
/// control plane, both uplinks reconnect with it, the download arrives intact, and a tunnel
/// opened after the renewal works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewal_under_load_keeps_tunnels_intact() -> Result<()> {
    let echo = echo_backend().await?;
    let (bulk, gate, mut done) = paced_backend().await?;
    let mut net = Net::start_with(ControlOpts {
        services: vec![
            Service::tcp("echo", echo.addr),
            Service::tcp("bulk", bulk.addr),
        ],
        relay_cert_lifetime: Some("12s"),
        ..Default::default()
    })
    .await?;
    let relay = net
        .relay(RelayOpts {
            uplinks: 2,
            ..Default::default()
        })
        .await?;
    let https = relay.https()?;
    let log = relay.proc.log.clone();
    let mark = log.mark();
    let pem = net.dir.path().join("relay-1-data/relay.pem");
    let enrolled_serial = serial_of(&pem)?;
    let enrolled = control_lines(&net, "relay enrolled", "relay-1");
    ensure!(
        enrolled.len() == 1 && field(&enrolled[0], "serial") == Some(enrolled_serial.as_str()),
        "the control plane should record relay.pem's serial {enrolled_serial}: {enrolled:?}"
    );

    // The download: stdout read to the end and hashed as it comes.
    let mut download = sat_connect("bulk", https, net.ca())?;
    let stdin = download.stdin()?;
    let mut stdout = download.stdout()?;
    let received = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            anyhow::Ok(hex(&hasher.finalize()))
        }
    });

    log.wait_for_since(mark, "certificate renewed", Duration::from_secs(20))
        .await?;
    let at_renewal = received.load(Ordering::Relaxed);
    ensure!(
        at_renewal > 0,
        "nothing of the download had arrived when the certificate was renewed"
    );
    let renewed_serial = serial_of(&pem)?;
    ensure!(
        renewed_serial != enrolled_serial,
        "relay.pem still has serial {enrolled_serial} after the renewal"
    );
    net.control
        .log
        .wait_for("renewed a relay certificate", SHORT)
        .await?;
    let renewed: Vec<String> = control_lines(&net, "renewed a relay certificate", "relay-1");
    ensure!(
        renewed
            .iter()
            .any(|l| field(l, "serial") == Some(renewed_serial.as_str())),
        "the control plane did not record relay.pem's new serial {renewed_serial}: {renewed:?}"
    );
    for i in 0..2 {
        wait_in_order(
            &log,
            mark,
            &[
                &format!("reconnecting uplink {i} with the renewed certificate"),
                &format!("uplink {i} connected"),
            ],
            SHORT,
        )
        .await?;
    }

    // A tunnel opened now rides the uplinks that present the new certificate.
    let mut tunnel = sat_connect("echo", https, net.ca())?;
    let data = random_bytes(7, 1 << 20);
    let (tx, rx) = (tunnel.stdin()?, tunnel.stdout()?);
    let back = tokio::time::timeout(SHORT, exchange(tx, rx, &data))
        .await
        .context("echo after the renewal did not finish")??;
    ensure!(back == data, "echo after the renewal returned other bytes");
    ensure!(
        tunnel.wait_exit(SHORT).await?.success(),
        "sat connect after the renewal failed"
    );

    // Let the download finish.
    let before_tail = received.load(Ordering::Relaxed);
    ensure!(
        before_tail > at_renewal,
        "the download stalled across the renewal ({at_renewal} bytes then, {before_tail} now)"
    );
    gate.send_replace(true);
    let (sent, sent_sha) = tokio::time::timeout(Duration::from_secs(60), done.recv())
        .await
        .context("the backend did not finish sending within 60 s")?
        .context("the backend ended without a report")?;
    // `sat connect` ends its stdout when both directions are done: end ours now.
    drop(stdin);
    let got_sha = match tokio::time::timeout(SHORT, reader).await {
        Ok(joined) => joined??,
        Err(_) => bail!(
            "the download did not end: the backend sent {sent} bytes, {} arrived",
            received.load(Ordering::Relaxed)
        ),
    };
    let got = received.load(Ordering::Relaxed);
    ensure!(
        got == sent && got_sha == sent_sha,
        "the download arrived damaged: sent {sent} bytes ({sent_sha}), got {got} ({got_sha})"
    );
    let status = download.wait_exit(SHORT).await?;
    ensure!(
        status.success(),
        "the download's sat connect exited with {status}"
    );

    let lost: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains(" lost: "))
        .collect();
    if !lost.is_empty() {
        bail!("an uplink broke during the renewal: {lost:?}");
    }
    eprintln!(
        "renewal under load: {} MiB downloaded, {} MiB of it before the renewal",
        got >> 20,
        at_renewal >> 20
    );
    Ok(())
}
