//! The fleet status page in a real browser: headless Chromium (the Debian package) loads
//! `/status` with the read-only status token, and the DOM it rendered shows a row per relay with
//! its state, through an operator's drain and a SIGKILL. curl checks the token rules and
//! `/api/status`. The screenshot is kept at `target/status-page.png` for a person to look at.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::process::Command;
use tokio::time::Instant;

use crate::common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// One browser run: start, load, render, dump. Well under a second on an idle machine; a loaded
/// 2-core machine running two tests may take several.
const BROWSER: Duration = Duration::from_secs(60);
/// How long the page may take to show a change: a dead relay is down after 2 s without a
/// heartbeat, plus the health check's quarter second, plus a browser run.
const CHANGE: Duration = Duration::from_secs(12);

/// Chromium, headless, with a profile of its own that is deleted afterwards. Returns stdout.
async fn chromium(args: &[String]) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group: the browser's helpers go with it if it hangs.
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {CHROMIUM}"))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let out = tokio::time::timeout(BROWSER, child.wait_with_output()).await;
    if let Some(pid) = pid {
        // Whatever of the browser is left (nothing, normally).
        let _ = signal(-pid, libc::SIGKILL);
    }
    let out =
        out.with_context(|| format!("chromium {args:?} did not finish within {BROWSER:?}"))??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "chromium {args:?}: {}; stderr:\n{stderr}",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DOM of `url` after its scripts ran at load.
async fn dump_dom(url: &str) -> Result<String> {
    chromium(&["--dump-dom".to_owned(), url.to_owned()]).await
}

/// A relay's row on the page: `data-state`, and the text of its state badge.
#[derive(Debug, PartialEq)]
struct Row {
    state: String,
    badge: String,
}

/// The relay rows of a rendered page, by relay name. Parses the markup the page renders (see
/// control/src/admin/status_page.rs), as Chromium serialises it.
fn relay_rows(dom: &str) -> Result<BTreeMap<String, Row>> {
    let mut rows = BTreeMap::new();
    for chunk in dom.split("<tr class=\"relay\"").skip(1) {
        let row = chunk.split("</tr>").next().unwrap_or(chunk);
        let attr = |name: &str| -> Result<String> {
            let start = format!("{name}=\"");
            let from = row
                .find(&start)
                .with_context(|| format!("no {name} in row {row:?}"))?
                + start.len();
            let len = row[from..].find('"').context("unterminated attribute")?;
            Ok(row[from..from + len].to_owned())
        };
        let badge_at = row
            .find("class=\"badge")
            .with_context(|| format!("no state badge in row {row:?}"))?;
        let badge = &row[badge_at..];
        let text_from = badge.find('>').context("badge tag")? + 1;
        let text_len = badge[text_from..].find('<').context("badge text")?;
        rows.insert(
            attr("data-relay")?,
            Row {
                state: attr("data-state")?,
                badge: badge[text_from..text_from + text_len].to_owned(),
            },
        );
    }
    Ok(rows)
}

fn states(rows: &BTreeMap<String, Row>) -> BTreeMap<&str, &str> {
    rows.iter()
        .map(|(name, row)| (name.as_str(), row.state.as_str()))
        .collect()
}

/// Loads the page until every relay in `want` shows the state given, at most `within`; returns
/// the last DOM.
async fn wait_page(url: &str, want: &[(&str, &str)], within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let dom = dump_dom(url).await?;
        let rows = relay_rows(&dom)?;
        let ok = want.iter().all(|(name, state)| {
            rows.get(*name)
                .is_some_and(|r| r.state == *state && r.badge == *state)
        });
        if ok {
            return Ok(dom);
        }
        ensure!(
            Instant::now() < deadline,
            "the page did not show {want:?} within {within:?}; it shows {:?}",
            states(&rows)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// curl: (status, content type, body).
async fn curl(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", method])
        .args(["-w", "\n%{http_code} %{content_type}"]);
    if let Some(t) = bearer {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(url);
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "curl {method} {url}: {status}: {err}");
    let (body, trailer) = out.rsplit_once('\n').context("curl -w output")?;
    let (code, ctype) = trailer.split_once(' ').unwrap_or((trailer, ""));
    Ok((code.trim().parse()?, ctype.to_owned(), body.to_owned()))
}

/// `target/`, the workspace's: the parent of cargo's `target/tmp`.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_owned()
}

/// A control plane with geo DNS (so the routing picture places the GeoIP samples), three
/// relays at known places; the page shows them up, then drained and down after a drain and a
/// SIGKILL. The status token reads the page and its JSON and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_fleet_in_a_real_browser() -> Result<()> {
    ensure!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: tests/run installs it (apt-get install chromium)"
    );
    let echo = echo_backend().await?;
    let mut net = Net::start_with(ControlOpts {
        services: vec![Service::tcp("echo", echo.addr)],
        dns: Some(dns_section("echo")),
        ..Default::default()
    })
    .await?;
    let places = [
        ("us-east", (39.04, -77.49)),
        ("eu-west", (51.51, -0.13)),
        ("ap-south", (1.35, 103.82)),
    ];
    let mut relays = Vec::new();
    for (region, location) in places {
        relays.push(
            net.relay(RelayOpts {
                region: Some(region.into()),
                location: Some(location),
                ..Default::default()
            })
            .await?,
        );
    }
    let names: Vec<String> = relays.iter().map(|r| r.name.clone()).collect();

    let token_path = net.dir.path().join("control-data/status.token");
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?
        .trim()
        .to_owned();
    let mode = std::fs::metadata(&token_path)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "status.token has mode {mode:o}; want 600");
    ensure!(
        token != net.admin_token,
        "the status token is the admin token"
    );

    let base = format!("http://{}", net.admin_addr);
    let page = format!("{base}/status?token={token}");

    // Every relay up, in the browser's DOM; the page's script ran (the policy let it).
    let all_up: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "up")).collect();
    let dom = wait_page(&page, &all_up, CHANGE).await?;
    let rows = relay_rows(&dom)?;
    ensure!(
        rows.len() == 3,
        "want a row per relay, got {:?}",
        states(&rows)
    );
    for needle in [
        "data-script=\"on\"",
        "id=\"routing\"",
        "81.2.69.142",
        "London, GB",
        "<td class=\"name\">echo</td>",
        "relay-token.create",
        "control-1",
        "sqlite",
        "read-write",
        "us-east",
    ] {
        ensure!(dom.contains(needle), "no {needle:?} in the page:\n{dom}");
    }

    // The script refreshes the page in place every 2 s, keeping the token: on virtual time,
    // Chromium runs a few refreshes before it dumps the DOM.
    let refreshed = chromium(&[
        "--virtual-time-budget=5000".to_owned(),
        "--dump-dom".to_owned(),
        page.clone(),
    ])
    .await?;
    ensure!(
        refreshed.contains("data-refreshes=\""),
        "the page's script did not refresh it:\n{refreshed}"
    );
    ensure!(
        relay_rows(&refreshed)?.len() == 3 && !refreshed.contains("class=\"meta stale\""),
        "the refreshed page:\n{refreshed}"
    );

    // JSON with the status token, over the header.
    let api = format!("{base}/api/status");
    let (code, ctype, body) = curl("GET", &api, Some(&token), None).await?;
    ensure!(
        code == 200,
        "GET /api/status with the status token: {code} {body}"
    );
    ensure!(
        ctype.starts_with("application/json"),
        "content type {ctype}"
    );
    let view: Value = serde_json::from_str(&body)?;
    let json_states: Vec<(&str, &str)> = view["relays"]
        .as_array()
        .context("relays")?
        .iter()
        .filter_map(|r| Some((r["name"].as_str()?, r["state"].as_str()?)))
        .collect();
    ensure!(
        json_states.len() == 3 && json_states.iter().all(|(_, s)| *s == "up"),
        "/api/status relays: {json_states:?}"
    );
    ensure!(
        view["relays"][0]["cert_expires_at"].as_i64().is_some(),
        "no certificate expiry: {body}"
    );
    ensure!(view["replicas"][0]["leader"] == true, "{body}");
    ensure!(view["store"]["kind"] == "sqlite", "{body}");
    ensure!(view["store"]["mode"] == "read-write", "{body}");
    ensure!(view["routing"]["geoip"] == true, "{body}");
    let london = &view["routing"]["samples"][0];
    ensure!(
        london["network"] == "81.2.69.142" && london["chosen"].is_string(),
        "the London sample: {london}"
    );
    // The admin token reads it too, in the header or in the page's query.
    let (code, _, _) = curl("GET", &api, Some(&net.admin_token), None).await?;
    ensure!(code == 200, "GET /api/status with the admin token: {code}");
    let with_admin = format!("{base}/status?token={}", net.admin_token);
    let (code, ctype, _) = curl("GET", &with_admin, None, None).await?;
    ensure!(
        code == 200 && ctype.starts_with("text/html"),
        "GET /status?token=<admin token>: {code} {ctype}"
    );

    // No token, or a wrong one: 401, saying which token and where it is.
    for url in [
        format!("{base}/status"),
        format!("{base}/status?token=sat_status_wrong"),
    ] {
        let (code, ctype, body) = curl("GET", &url, None, None).await?;
        ensure!(code == 401, "GET {url}: {code} {body}");
        ensure!(
            ctype.starts_with("text/html"),
            "GET {url}: content type {ctype}"
        );
        ensure!(
            body.contains(&token_path.display().to_string()),
            "the refusal does not say where the status token is: {body}"
        );
    }
    let (code, _, body) = curl("GET", &api, Some("sat_status_wrong"), None).await?;
    ensure!(
        code == 401,
        "GET /api/status with a wrong token: {code} {body}"
    );

    // The status token opens nothing else.
    let service = r#"{"name":"sneaky","kind":"tcp","backend":"127.0.0.1:9"}"#;
    for (method, path, body) in [
        ("POST", "/v1/services", Some(service)),
        ("GET", "/v1/relays", None),
        ("POST", "/v1/relays/relay-1/drain", None),
    ] {
        let (code, _, answer) = curl(method, &format!("{base}{path}"), Some(&token), body).await?;
        ensure!(
            code == 401 || code == 403,
            "{method} {path} with the status token: {code} {answer}"
        );
    }
    let services = net.admin_ok(["--json", "services", "list"]).await?;
    ensure!(!services.contains("sneaky"), "services: {services}");

    // An operator drains one relay; another dies without a word.
    let drained = names[0].clone();
    let killed = names[2].clone();
    net.admin_ok(["relays", "drain", &drained]).await?;
    relays[2].proc.kill().await?;
    let want = [
        (drained.as_str(), "drained"),
        (names[1].as_str(), "up"),
        (killed.as_str(), "down"),
    ];
    let started = Instant::now();
    let dom = wait_page(&page, &want, CHANGE).await?;
    eprintln!(
        "the page showed the drain and the kill {} ms after the kill",
        started.elapsed().as_millis()
    );
    ensure!(
        dom.contains("relay.drain"),
        "the drain is not among the last admin changes"
    );
    ensure!(
        dom.contains("Taking no new users"),
        "the routing picture does not say which relays are left out"
    );

    // A screenshot for people, kept under target/.
    let shot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,1000".to_owned(),
        page.clone(),
    ])
    .await?;
    let png = std::fs::read(&shot).with_context(|| format!("reading {}", shot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} is not a plausible screenshot ({} bytes)",
        shot.display(),
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    Ok(())
}
