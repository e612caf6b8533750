//! Logs for machines: `SAT_LOG_FORMAT=json` gives one JSON object per line, with the fields of
//! the text format: `timestamp`, `level`, `target`, `fields` (the message and the event's own
//! fields) and `spans` (each span the event is in, with its fields).

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::common::*;

const JSON_LOGS: (&str, &str) = ("SAT_LOG_FORMAT", "json");
const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/// Every line a real control plane and relay write is a JSON object with the text format's
/// fields; the `listening on` lines that tests and scripts use keep their form in the message;
/// an event inside a span carries the span's fields; an event field named like a top-level key
/// (the admin log's `target`) does not clash with it.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_text_fields() -> Result<()> {
    let echo = echo_backend().await?;
    // The harness finds every port through `listening on` lines, here from JSON ones.
    let mut net = Net::start_with(ControlOpts {
        services: vec![Service::tcp("echo", echo.addr)],
        env: vec![JSON_LOGS],
        ..Default::default()
    })
    .await?;
    let relay = net
        .relay(RelayOpts {
            health: true,
            env: vec![JSON_LOGS],
            ..Default::default()
        })
        .await?;
    // Logged by the control plane inside the uplink's span.
    let connected = net.control.log.wait_for("relay connected", STARTUP).await?;

    let expected: [(&Proc, &[&str]); 2] = [
        (&net.control, &["quic", "admin"]),
        (&relay.proc, &["https", "quic", "health"]),
    ];
    for (proc, listeners) in expected {
        let lines = proc.log.lines();
        let mut announced = Vec::new();
        for line in &lines {
            let event = json_event(line).with_context(|| format!("{}: {line}", proc.name))?;
            if let Some(found) = event["fields"]["message"]
                .as_str()
                .and_then(parse_listening)
            {
                announced.push(found.proto);
            }
        }
        for proto in listeners {
            ensure!(
                announced.iter().any(|p| p == proto),
                "{}: no JSON `listening on {proto}` line among:\n{}",
                proc.name,
                lines.join("\n")
            );
        }
    }

    let event = json_event(&connected)?;
    ensure!(
        event["fields"]["region"] == relay.region.as_str(),
        "the event's own fields sit beside the message: {connected}"
    );
    let spans = event["spans"]
        .as_array()
        .with_context(|| format!("no span list: {connected}"))?;
    ensure!(
        spans.iter().any(|span| span["name"] == "uplink"
            && span["relay"] == relay.name.as_str()
            && span["peer"].is_string()),
        "the uplink span and its fields (relay, peer) are missing: {connected}"
    );

    // The relay's enrolment token was made through the admin API, whose audit line names what
    // it changed in a field called `target`.
    let change = net.control.log.wait_for("admin change", SHORT).await?;
    let event = json_event(&change)?;
    ensure!(
        event["target"] == "sat_control::admin::server"
            && event["fields"]["action"] == "relay-token.create"
            && event["fields"]["target"].is_string(),
        "the event's `target` field and the line's target must both be there: {change}"
    );
    Ok(())
}

/// An unknown format is refused before anything runs, naming the variable and the accepted
/// values.
#[tokio::test]
async fn an_unknown_log_format_names_the_variable_and_the_choices() -> Result<()> {
    let mut cmd = sat_cmd(["check-config", "/nonexistent/sat.toml"]);
    cmd.env("SAT_LOG_FORMAT", "xml");
    let (status, _, stderr) = run(cmd, SHORT).await?;
    ensure!(status.code() == Some(64), "exit {status}: {stderr}");
    ensure!(
        stderr.contains("SAT_LOG_FORMAT=\"xml\"")
            && stderr.contains("text")
            && stderr.contains("json"),
        "{stderr}"
    );
    Ok(())
}

/// One log line as JSON, with the fields every line must have.
fn json_event(line: &str) -> Result<Value> {
    let event: Value = serde_json::from_str(line).context("not JSON")?;
    let fields = event.as_object().context("not a JSON object")?;
    let text = |key: &str| fields.get(key).and_then(Value::as_str);
    let timestamp = text("timestamp").context("no timestamp")?;
    // RFC 3339 in UTC, as the text format writes it.
    ensure!(
        timestamp.len() >= 20 && timestamp.as_bytes()[10] == b'T' && timestamp.ends_with('Z'),
        "timestamp {timestamp:?} is not RFC 3339 UTC"
    );
    let level = text("level").context("no level")?;
    ensure!(LEVELS.contains(&level), "level {level:?}");
    ensure!(text("target").is_some_and(|t| !t.is_empty()), "no target");
    ensure!(
        fields
            .get("fields")
            .and_then(|f| f.get("message"))
            .is_some_and(Value::is_string),
        "no fields.message"
    );
    Ok(event)
}
