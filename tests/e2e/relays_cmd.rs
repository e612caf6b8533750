//! `sat relays`: the relay map, a measured round trip to each relay, and the choice by the
//! whole path. A relay far from the primary (its uplink behind a 30 ms delay each way) loses to
//! one next to it, though the client reaches both equally fast.

use std::time::Duration;

use crate::common::delay::{DelayProxy, Props};
use crate::common::*;
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::time::Instant;

async fn sat_relays(relay: &Relay, ca: &std::path::Path) -> Result<Vec<Value>> {
    let mut cmd = sat_cmd(["relays", "--json", "--relay"]);
    cmd.arg(relay.https()?.to_string()).arg("--ca").arg(ca);
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "sat relays: {status}: {err}");
    serde_json::from_str(&out).with_context(|| format!("sat relays printed {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sat_relays_chooses_the_shortest_whole_path() -> Result<()> {
    let mut net = Net::start(vec![]).await?;
    let far_uplink = DelayProxy::udp(
        "127.0.0.1:0".parse()?,
        net.control_addr,
        Props::delay(Duration::from_millis(30)),
    )
    .await?;
    let near = net.relay(RelayOpts::default()).await?;
    let far = net
        .relay(RelayOpts {
            control: vec![far_uplink.addr()],
            ..Default::default()
        })
        .await?;

    // Both up in the map, with the far relay's round trip to the primary known.
    let deadline = Instant::now() + SHORT;
    let rows = loop {
        let rows = sat_relays(&near, net.ca()).await?;
        let far_row = rows.iter().find(|r| r["name"] == far.name.as_str());
        let ready = rows.len() == 2
            && rows.iter().all(|r| r["state"] == "up")
            && far_row.is_some_and(|r| r["primary_rtt_us"].as_u64() > Some(40_000));
        if ready {
            break rows;
        }
        ensure!(
            Instant::now() < deadline,
            "relay map never settled: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let chosen: Vec<&Value> = rows.iter().filter(|r| r["chosen"] == true).collect();
    ensure!(
        chosen.len() == 1 && chosen[0]["name"] == near.name.as_str(),
        "the relay next to the primary should be chosen: {rows:#?}"
    );
    for r in &rows {
        let rtt = r["rtt_us"].as_u64().context("every relay is measured")?;
        ensure!(
            rtt < 20_000,
            "loopback round trip of {}: {rtt} µs",
            r["name"]
        );
    }
    let far_total = rows
        .iter()
        .find(|r| r["name"] == far.name.as_str())
        .and_then(|r| r["end_to_end_us"].as_u64())
        .context("far relay has an end-to-end estimate")?;
    ensure!(far_total > 40_000, "far relay end to end: {far_total} µs");

    // The table for people says the same.
    let mut cmd = sat_cmd(["relays", "--relay"]);
    cmd.arg(far.https()?.to_string()).arg("--ca").arg(net.ca());
    let (status, out, err) = run(cmd, SHORT).await?;
    ensure!(status.success(), "sat relays: {err}");
    let chosen_line = out
        .lines()
        .find(|l| l.ends_with("chosen"))
        .with_context(|| format!("no chosen relay in\n{out}"))?;
    ensure!(chosen_line.contains(&near.name), "table:\n{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sat_relays_says_why_when_the_relay_is_unreachable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    let mut cmd = sat_cmd(["relays", "--relay"]);
    cmd.arg(refused_addr()?.to_string())
        .arg("--ca")
        .arg(&pki.ca_path);
    let (status, _, err) = run(cmd, SHORT).await?;
    ensure!(status.code() == Some(69), "exit {status}: {err}");
    ensure!(
        err.contains("relay map from") && err.contains("connect"),
        "{err}"
    );
    Ok(())
}
