//! Prometheus metrics, as a real Prometheus server sees them: it scrapes a relay's health
//! listener and the control plane's admin listener every second, and the counters it stores
//! move after real curl, `sat connect` and dig traffic. Every page passes `promtool check
//! metrics`, and no label value comes from what a user sent.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use tokio::process::Command;
use tokio::time::Instant;

/// How long Prometheus gets to see a change: a 1 s scrape interval, and some slack.
const SEEN_WITHIN: Duration = Duration::from_secs(20);

/// `GET http://addr/path` with curl: the body, or an error with the status.
async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail-with-body", "--max-time", "5"])
        .arg(format!("http://{addr}{path}"));
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "GET {addr}{path}: {status}: {err}{out}");
    Ok(out)
}

/// Runs `promtool check metrics` on a scraped page.
async fn promtool_check(page: &str, what: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("page.txt");
    std::fs::write(&file, page)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()));
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(
        status.success(),
        "promtool check metrics on the {what} page: {status}\n{out}{err}"
    );
    Ok(())
}

/// A Prometheus server in a temp dir, scraping `targets` (job name, address) every second.
struct Prometheus {
    _proc: Proc,
    api: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[(&str, SocketAddr)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config +=
                &format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n");
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let api = free_port_pair()?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .arg("--log.level=warn");
        let proc = Proc::spawn("prometheus", cmd)?;
        let prometheus = Self {
            _proc: proc,
            api,
            _dir: dir,
        };
        // Ready, and every target scraped and up.
        let deadline = Instant::now() + STARTUP;
        loop {
            let up = prometheus.query("sum(up)").await.unwrap_or(None);
            if up == Some(targets.len() as f64) {
                return Ok(prometheus);
            }
            if Instant::now() > deadline {
                bail!(
                    "Prometheus did not scrape all {} targets (sum(up) = {up:?})",
                    targets.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The value of an instant query that yields one series, `None` if it yields none.
    async fn query(&self, promql: &str) -> Result<Option<f64>> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "5", "-G"])
            .arg(format!("http://{}/api/v1/query", self.api))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"));
        let (status, out, err) = run(cmd, SHORT).await?;
        ensure!(status.success(), "query {promql}: {status}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).context("query answer")?;
        ensure!(v["status"] == "success", "query {promql}: {out}");
        let result = v["data"]["result"].as_array().context("result")?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => {
                let value = one["value"][1].as_str().context("value")?;
                Ok(Some(value.parse()?))
            }
            many => bail!("query {promql} gave {} series: {out}", many.len()),
        }
    }

    /// Waits until `promql` is at least `want`; returns the value.
    async fn wait_at_least(&self, promql: &str, want: f64) -> Result<f64> {
        let deadline = Instant::now() + SEEN_WITHIN;
        loop {
            let got = self.query(promql).await?;
            if got.is_some_and(|v| v >= want) {
                return Ok(got.unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("{promql} = {got:?}, wanted at least {want} within {SEEN_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `dig @dns -p PORT app.sat.test A +subnet=SUBNET`, which must answer.
async fn dig(dns: SocketAddr, subnet: &str) -> Result<()> {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "app.sat.test", "A"])
        .arg(format!("+subnet={subnet}"))
        .args(["+tries=1", "+time=2"]);
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(
        status.success() && out.contains("status: NOERROR"),
        "dig: {status}: {err}\n{out}"
    );
    Ok(())
}

async fn curl_web(https: SocketAddr, ca: &Path) -> Result<()> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("web.localhost:{}:{}", https.port(), https.ip()))
        .arg(format!("https://web.localhost:{}/headers", https.port()));
    let (status, _, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "curl through the relay: {status}: {err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_counters_move_after_real_traffic() -> Result<()> {
    let web = Proc::spawn("http backend", python_peer(["http"]))?;
    let web_addr = web.log.wait_listening("http", None, STARTUP).await?;
    let echo = echo_backend().await?;
    let mut net = Net::start_with(ControlOpts {
        services: vec![
            Service::http("web", web_addr, &["web.localhost"]),
            Service::tcp("echo", echo.addr),
        ],
        ..Default::default()
    })
    .await?;
    let relay = net
        .relay(RelayOpts {
            health: true,
            dns: Some(dns_section("web")),
            ..Default::default()
        })
        .await?;
    let health = relay.health.context("relay health listener")?;
    let dns = relay.dns.context("relay DNS listener")?;
    let https = relay.https()?;

    // The pages themselves: no token needed, and promtool finds nothing to fault.
    let relay_page = get(health, "/metrics").await?;
    let control_page = get(net.admin_addr, "/metrics").await?;
    promtool_check(&relay_page, "relay").await?;
    promtool_check(&control_page, "control plane").await?;
    ensure!(
        !control_page.contains(&net.admin_token),
        "the page shows the admin token"
    );

    let prom = Prometheus::start(&[("relay", health), ("control", net.admin_addr)]).await?;
    let job = |job: &str, metric: &str| format!("sum({metric}{{job=\"{job}\"}})");

    let relay_2xx = "sum(sat_relay_http_responses_total{class=\"2xx\"})";
    let control_2xx = "sum(sat_control_http_responses_total{class=\"2xx\"})";
    let relay_tunnels = "sum(sat_relay_streams_opened_total{kind=\"tunnel\"})";
    let control_tunnels = "sum(sat_control_streams_opened_total{kind=\"tunnel\"})";
    let to_service = "sum(sat_relay_tunnel_bytes_total{direction=\"to_service\"})";
    let dns_ecs = "sum(sat_dns_answers_total{rcode=\"NOERROR\",ecs=\"present\"})";
    let unknown = "sum(sat_relay_refusals_total{reason=\"unknown_service\"})";
    let requests = "sum(sat_relay_http_request_duration_seconds_count)";
    let setups = "sum(sat_relay_tunnel_setup_seconds_count)";
    let queries = [
        relay_2xx,
        control_2xx,
        relay_tunnels,
        control_tunnels,
        to_service,
        dns_ecs,
        unknown,
        requests,
        setups,
    ];
    let mut base = Vec::new();
    for q in queries {
        base.push(prom_value(&prom, q).await);
    }

    // Traffic: five requests through the relay, three tunnels and a refused one, four
    // geo DNS queries with an ECS subnet.
    for _ in 0..5 {
        curl_web(https, net.ca()).await?;
    }
    let payload = b"sixteen bytes!!\n";
    for _ in 0..3 {
        let mut conn = sat_connect("echo", https, net.ca())?;
        let mut stdin = conn.stdin()?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, payload).await?;
        drop(stdin);
        let status = conn.wait_exit(SHORT).await?;
        ensure!(
            status.success(),
            "sat connect echo: {status}\n{}",
            conn.log.tail()
        );
    }
    let mut refused = sat_connect("nope", https, net.ca())?;
    drop(refused.stdin()?);
    let status = refused.wait_exit(SHORT).await?;
    ensure!(!status.success(), "sat connect nope succeeded");
    for subnet in [
        "81.2.69.142/32",
        "175.16.199.0/24",
        "216.160.83.56/32",
        "81.2.69.142/32",
    ] {
        dig(dns, subnet).await?;
    }

    let want = [
        5.0,
        5.0,
        3.0,
        3.0,
        3.0 * payload.len() as f64,
        4.0,
        1.0,
        5.0,
        3.0,
    ];
    for ((q, base), more) in queries.iter().zip(&base).zip(want) {
        if let Err(e) = prom.wait_at_least(q, base + more).await {
            let page = get(health, "/metrics").await.unwrap_or_default();
            let lines: Vec<&str> = page
                .lines()
                .filter(|l| l.starts_with("sat_relay_"))
                .collect();
            bail!(
                "{e}\nthe relay's page now:\n{}\nrelay log:\n{}",
                lines.join("\n"),
                relay.proc.log.tail()
            );
        }
    }

    // State, as gauges.
    let uplinks = prom.query(&job("relay", "sat_relay_uplink_up")).await?;
    let slots = prom.query("count(sat_relay_uplink_up)").await?;
    ensure!(
        uplinks.is_some_and(|n| n >= 1.0) && uplinks == slots,
        "uplinks up: {uplinks:?} of {slots:?}"
    );
    let rtt = prom
        .query("max(sat_relay_uplink_rtt_seconds)")
        .await?
        .unwrap_or(0.0);
    ensure!(rtt > 0.0 && rtt < 1.0, "uplink RTT {rtt} s");
    let up = "sum(sat_control_relay_state{job=\"control\",state=\"up\"})";
    ensure!(prom.query(up).await? == Some(1.0), "relay up at control");
    let expiry = prom
        .query("min(sat_relay_certificate_expiry_seconds)")
        .await?
        .unwrap_or(0.0);
    ensure!(expiry > 3600.0, "certificate expires in {expiry} s");
    let generation = prom
        .query("max(sat_relay_config_generation)")
        .await?
        .unwrap_or(0.0);
    ensure!(generation >= 1.0, "config generation {generation}");
    for j in ["relay", "control"] {
        ensure!(
            prom.query(&job(j, "sat_build_info")).await? == Some(1.0),
            "build info of {j}"
        );
    }
    ensure!(
        prom.query("sum(sat_quic_datagrams_total{direction=\"received\"})")
            .await?
            .unwrap_or(0.0)
            > 0.0,
        "QUIC datagrams counted"
    );
    // Within a process, no counter went back.
    for counter in [
        "sat_relay_streams_opened_total",
        "sat_relay_http_responses_total",
        "sat_control_streams_opened_total",
        "sat_quic_datagrams_total",
        "sat_dns_answers_total",
    ] {
        let resets = prom.query(&format!("sum(resets({counter}[1m]))")).await?;
        ensure!(resets == Some(0.0), "{counter} went backwards: {resets:?}");
    }

    // Label values are fixed: nothing a user typed (a service name, a Host) is one.
    for page in [
        get(health, "/metrics").await?,
        get(net.admin_addr, "/metrics").await?,
    ] {
        ensure!(
            !page.contains("nope"),
            "a user's service name became a label:\n{page}"
        );
        ensure!(
            !page.contains("web.localhost"),
            "a Host header became a label"
        );
    }
    Ok(())
}

/// The current value of `q`, 0 when it has no series yet.
async fn prom_value(prom: &Prometheus, q: &str) -> f64 {
    prom.query(q).await.ok().flatten().unwrap_or(0.0)
}

/// The alert rules shipped in deploy/prometheus are valid, and say what they claim on a
/// synthetic series (`promtool test rules`).
#[tokio::test]
async fn shipped_alert_rules_pass_promtool() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let mut cmd = Command::new("promtool");
    cmd.arg("check")
        .arg("rules")
        .arg(dir.join("sat-alerts.yml"));
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(
        status.success(),
        "promtool check rules: {status}\n{out}{err}"
    );
    let mut cmd = Command::new("promtool");
    cmd.current_dir(&dir)
        .arg("test")
        .arg("rules")
        .arg("sat-alerts.test.yml");
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(
        status.success(),
        "promtool test rules: {status}\n{out}{err}"
    );
    Ok(())
}
