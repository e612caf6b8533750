//! How `sat relays` shows what it measured: a table for people, JSON for scripts.

use std::time::Duration;

use sat_client::Probed;
use sat_control::admin::table::render as table;

pub fn render(probed: &[Probed], json: bool) -> String {
    if json {
        let rows: Vec<serde_json::Value> = probed.iter().map(as_json).collect();
        return serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n";
    }
    let rows = probed
        .iter()
        .map(|p| {
            vec![
                p.info.region.clone(),
                p.info.name.clone(),
                p.info
                    .addresses
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                format!("{:?}", p.info.state).to_lowercase(),
                match (&p.rtt, &p.error) {
                    (Some(d), _) => ms(*d),
                    (None, Some(e)) => format!("- ({e})"),
                    (None, None) => "-".into(),
                },
                p.end_to_end.map_or_else(|| "-".into(), ms),
                if p.rank == Some(0) { "chosen" } else { "" }.into(),
            ]
        })
        .collect();
    table(
        &[
            "REGION",
            "RELAY",
            "ADDRESS",
            "HEALTH",
            "RTT",
            "END TO END",
            "",
        ],
        rows,
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn as_json(p: &Probed) -> serde_json::Value {
    serde_json::json!({
        "name": p.info.name,
        "region": p.info.region,
        "addresses": p.info.addresses,
        "state": p.info.state,
        "rtt_us": p.rtt.map(|d| d.as_micros() as u64),
        "primary_rtt_us": p.info.rtt_us,
        "end_to_end_us": p.end_to_end.map(|d| d.as_micros() as u64),
        "rank": p.rank,
        "chosen": p.rank == Some(0),
        "error": p.error,
    })
}
