//! The fleet status page: one HTML document, rendered from the [`StatusView`] that
//! `GET /api/status` answers as JSON, so the page and the API never disagree. Pure functions:
//! the view carries its own "now", and nothing here does IO.
//!
//! The page needs no external asset and no JavaScript. A small inline script refreshes it every
//! 2 s by fetching the page's own URL (which carries the `?token=` it was opened with) and
//! swapping in the new document's content; without JavaScript a `<noscript>` meta refresh
//! reloads it instead. Every string from outside this file (relay, region, service and host
//! names, backends, actors, audit targets, error texts) is escaped on its way in.

use std::fmt::{self, Display, Write as _};
use std::sync::OnceLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::api::{RankedRelay, RouteSample, StatusRelay, StatusView};
use super::table;

/// How often the script fetches the page again.
const REFRESH_MS: u32 = 2000;
/// How often the page reloads itself when scripts are off.
const NOSCRIPT_REFRESH_S: u32 = 10;

const STYLE: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330; background: #f3f5f8; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 18px; padding: 12px 20px; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 19px; font-weight: 600; }
header .summary { font-size: 14px; }
header .meta { margin-left: auto; font-size: 12px; color: #b9c1d0; }
main { padding: 8px 20px 24px; }
section { margin-top: 14px; background: #fff; border: 1px solid #dde2ea; border-radius: 6px; padding: 10px 14px; }
h2 { margin: 0 0 8px; font-size: 15px; }
h3 { margin: 10px 0 6px; font-size: 13px; }
p.note { margin: 0 0 8px; color: #4a5468; }
.columns { display: grid; grid-template-columns: 1fr 1fr; gap: 0 14px; }
.control { display: grid; grid-template-columns: 3fr 2fr; gap: 0 24px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceff4; vertical-align: top; }
th { font-size: 12px; font-weight: 600; color: #4a5468; background: #f7f8fa; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.name { font-weight: 600; }
td.name, td.chosen, td.when, td.what, span.rank { white-space: nowrap; }
tr[data-state="down"] td.num, tr[data-state="revoked"] td.num { color: #9aa2b1; }
td.muted, span.muted { color: #6b7486; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
.badge { display: inline-block; min-width: 64px; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; text-align: center; }
.state-up, .state-serving, .mode-read-write { background: #d9f2e1; color: #14602f; }
.state-draining, .state-drained { background: #fdebc8; color: #7a4b00; }
.state-down, .mode-unavailable { background: #fbd9d7; color: #8e1b13; }
.state-revoked { background: #e4e6eb; color: #4a5468; }
.problems { background: #fbd9d7; border-color: #e9a9a4; color: #8e1b13; }
.stale { color: #ffb4ad; }
dl.store { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
dl.store dt { color: #4a5468; }
dl.store dd { margin: 0; }
"#;

const SCRIPT: &str = r#"
(function () {
  document.documentElement.setAttribute("data-script", "on");
  var busy = false, refreshes = 0;
  function refresh() {
    if (busy) return;
    busy = true;
    fetch(location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html");
        var fresh = next.getElementById("status");
        var old = document.getElementById("status");
        if (!fresh || !old) throw new Error("not a status page");
        old.replaceWith(document.adoptNode(fresh));
        document.title = next.title;
        document.documentElement.setAttribute("data-refreshes", String(++refreshes));
      })
      .catch(function (e) {
        var s = document.getElementById("refreshed");
        if (s) { s.textContent = "refresh failed (" + e.message + "); retrying"; s.className = "meta stale"; }
      })
      .then(function () { busy = false; });
  }
  setInterval(refresh, REFRESH_MS);
})();
"#;

/// The `Content-Security-Policy` the page is served with: its own inline style and script (by
/// hash) and requests to its own origin, nothing else.
pub(crate) fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; style-src '{}'; script-src '{}'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(STYLE),
            csp_hash(&script())
        )
    })
}

fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn script() -> String {
    SCRIPT.replace("REFRESH_MS", &REFRESH_MS.to_string())
}

/// Text escaped for HTML element content and quoted attribute values.
struct Esc<'a>(&'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// The whole page for `view`.
pub(crate) fn render(view: &StatusView) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; `let _` keeps the many writes below readable.
    let _ = write_page(&mut out, view);
    out
}

fn write_page(out: &mut String, view: &StatusView) -> fmt::Result {
    let title = format!("Satellite status: {}", summary(&view.relays));
    writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <noscript><meta http-equiv=\"refresh\" content=\"{NOSCRIPT_REFRESH_S}\"></noscript>\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<div id=\"status\">",
        Esc(&title)
    )?;
    write_header(out, view)?;
    out.push_str("<main>\n");
    if !view.problems.is_empty() {
        out.push_str("<section class=\"problems\" id=\"problems\"><h2>Problems</h2><ul>");
        for p in &view.problems {
            write!(out, "<li>{}</li>", Esc(p))?;
        }
        out.push_str("</ul></section>\n");
    }
    write_relays(out, view)?;
    write_routing(out, view)?;
    write_control(out, view)?;
    out.push_str("<div class=\"columns\">\n");
    write_services(out, view)?;
    write_audit(out, view)?;
    out.push_str("</div>\n");
    out.push_str("</main>\n</div>\n");
    writeln!(out, "<script>{}</script>\n</body>\n</html>", script())
}

/// "3 relays: 2 up, 1 down".
fn summary(relays: &[StatusRelay]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in relays {
        match counts.iter_mut().find(|(s, _)| *s == r.relay.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((&r.relay.state, 1)),
        }
    }
    let order = ["up", "draining", "drained", "down", "revoked"];
    counts.sort_by_key(|(s, _)| order.iter().position(|o| o == s).unwrap_or(order.len()));
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let noun = if relays.len() == 1 { "relay" } else { "relays" };
    if parts.is_empty() {
        format!("no {noun}")
    } else {
        format!("{} {noun}: {}", relays.len(), parts.join(", "))
    }
}

fn write_header(out: &mut String, view: &StatusView) -> fmt::Result {
    writeln!(
        out,
        "<header><h1>Satellite fleet status</h1><span class=\"summary\" id=\"summary\">{}</span>\
         <span class=\"meta\" id=\"refreshed\">config generation {} &middot; as of {} \
         &middot; refreshes every {} s</span></header>",
        Esc(&summary(&view.relays)),
        view.generation,
        Esc(&table::timestamp(view.generated_at)),
        REFRESH_MS / 1000
    )
}

/// A state as a coloured badge; the class is derived from a fixed set, never from the text.
fn badge(prefix: &str, state: &str) -> String {
    let known = [
        "up",
        "draining",
        "drained",
        "down",
        "revoked",
        "serving",
        "read-write",
    ];
    let class = if known.contains(&state) {
        state
    } else {
        "unavailable"
    };
    format!(
        "<span class=\"badge {prefix}-{class}\">{}</span>",
        Esc(state)
    )
}

/// Opens a section (`id`, title) holding a table: an optional note above it, the column
/// headers (a leading `#` marks a right-aligned number column), and, if `empty` is given, one
/// row across all columns with that markup (a constant of this file). The caller writes the
/// rows and closes with `</tbody></table></section>`.
fn open_table(
    out: &mut String,
    (id, title): (&str, &str),
    note: Option<&str>,
    headers: &[&str],
    empty: Option<&str>,
) -> fmt::Result {
    writeln!(out, "<section id=\"{id}\"><h2>{title}</h2>")?;
    if let Some(note) = note {
        writeln!(out, "<p class=\"note\">{}</p>", Esc(note))?;
    }
    out.push_str("<table>\n<thead><tr>");
    for h in headers {
        match h.strip_prefix('#') {
            Some(h) => write!(out, "<th class=\"num\">{h}</th>")?,
            None => write!(out, "<th>{h}</th>")?,
        }
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    if let Some(empty) = empty {
        writeln!(
            out,
            "<tr><td colspan=\"{}\" class=\"muted\">{empty}</td></tr>",
            headers.len()
        )?;
    }
    Ok(())
}

fn write_relays(out: &mut String, view: &StatusView) -> fmt::Result {
    open_table(
        out,
        ("relays", "Relays"),
        None,
        &[
            "Relay",
            "Region",
            "State",
            "#Uplinks",
            "#RTT to primary",
            "#Streams",
            "#Users",
            "#Load",
            "Version",
            "Certificate expires",
            "Last heartbeat",
        ],
        view.relays.is_empty().then_some(
            "No relay is enrolled yet (<code>sat admin relay-token create --region R</code>).",
        ),
    )?;
    for StatusRelay {
        relay: r,
        cert_expires_at,
    } in &view.relays
    {
        let cert = match cert_expires_at {
            Some(at) => format!(
                "<span title=\"{}\">{}</span>",
                Esc(&table::timestamp(*at)),
                Esc(&table::relative(*at, view.generated_at))
            ),
            None => "<span class=\"muted\">none</span>".to_owned(),
        };
        let load = r
            .load
            .map_or_else(|| "-".to_owned(), |l| format!("{:.0}%", l * 100.0));
        let version = if r.version.is_empty() {
            "-"
        } else {
            &r.version
        };
        writeln!(
            out,
            "<tr class=\"relay\" data-relay=\"{name}\" data-state=\"{state}\">\
             <td class=\"name\">{name}</td><td>{region}</td><td class=\"state\">{badge}</td>\
             <td class=\"num\">{uplinks}</td><td class=\"num\">{rtt}</td>\
             <td class=\"num\">{streams}</td><td class=\"num\">{users}</td>\
             <td class=\"num\">{load}</td><td>{version}</td><td>{cert}</td>\
             <td class=\"muted\">{heartbeat}</td></tr>",
            name = Esc(&r.name),
            state = Esc(&r.state),
            region = Esc(&r.region),
            badge = badge("state", &r.state),
            uplinks = r.uplinks,
            rtt = Esc(&table::rtt(r.rtt_us)),
            streams = r.streams,
            users = r.connections,
            version = Esc(version),
            heartbeat = Esc(&table::ago(r.last_heartbeat_ms_ago)),
        )?;
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn write_routing(out: &mut String, view: &StatusView) -> fmt::Result {
    let routing = &view.routing;
    open_table(
        out,
        ("routing", "Routing"),
        Some(&routing.basis),
        &[
            "Client network",
            "Place",
            "Sent to",
            "Why",
            "Ranking (whole path)",
        ],
        None,
    )?;
    for sample in &routing.samples {
        write_sample(out, sample)?;
    }
    out.push_str("</tbody>\n</table>\n");
    if !routing.left_out.is_empty() {
        let names: Vec<String> = routing
            .left_out
            .iter()
            .map(|l| format!("{} ({})", Esc(&l.name), Esc(&l.state)))
            .collect();
        writeln!(
            out,
            "<p class=\"note\" id=\"left-out\">Taking no new users: {}.</p>",
            names.join(", ")
        )?;
    }
    out.push_str("</section>\n");
    Ok(())
}

fn write_sample(out: &mut String, s: &RouteSample) -> fmt::Result {
    let chosen = match &s.chosen {
        Some(name) => format!("<strong>{}</strong>", Esc(name)),
        None => "<span class=\"muted\">none</span>".to_owned(),
    };
    let ranking: Vec<String> = s.ranking.iter().map(ranked).collect();
    let place = if s.measured {
        format!("{} <span class=\"muted\">(measured)</span>", Esc(&s.place))
    } else {
        Esc(&s.place).to_string()
    };
    writeln!(
        out,
        "<tr class=\"route\" data-network=\"{network}\"><td><code>{network}</code></td>\
         <td>{place}</td><td class=\"chosen\">{chosen}</td><td>{reason}</td>\
         <td class=\"muted\">{ranking}</td></tr>",
        network = Esc(&s.network),
        reason = Esc(&s.reason),
        ranking = ranking.join("<br>"),
    )
}

/// "relay-eu 70.1 ms (5.0 ms est. + 65.1 ms)", on one line.
fn ranked(r: &RankedRelay) -> String {
    let total = r
        .end_to_end_us
        .map_or_else(|| "?".to_owned(), |us| table::rtt(Some(us)));
    let leg = match r.client_rtt_source.as_str() {
        "measured" => "meas.",
        "estimated" => "est.",
        _ => "unknown",
    };
    let overloaded = if r.overloaded { ", overloaded" } else { "" };
    format!(
        "<span class=\"rank\">{} {} ({} {} + {}{overloaded})</span>",
        Esc(&r.name),
        Esc(&total),
        Esc(&table::rtt(r.client_rtt_us)),
        leg,
        Esc(&table::rtt(r.primary_rtt_us)),
    )
}

fn write_services(out: &mut String, view: &StatusView) -> fmt::Result {
    open_table(
        out,
        ("services", "Services"),
        None,
        &["Service", "Kind", "Backend", "Host names", "Access"],
        view.services.is_empty().then_some("No services."),
    )?;
    for s in &view.services {
        writeln!(
            out,
            "<tr class=\"service\"><td class=\"name\">{}</td><td>{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td></tr>",
            Esc(&s.name),
            Esc(&s.kind),
            Esc(&s.backend),
            Esc(&s.hostnames.join(", ")),
            Esc(&s.access),
        )?;
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn write_audit(out: &mut String, view: &StatusView) -> fmt::Result {
    open_table(
        out,
        ("audit", "Last admin changes"),
        None,
        &["When", "Who", "What", "Target"],
        view.audit.is_empty().then_some("None yet."),
    )?;
    for a in &view.audit {
        let ago = view.generated_at.saturating_sub(a.at).max(0).unsigned_abs();
        writeln!(
            out,
            "<tr class=\"change\"><td class=\"when\" title=\"{}\">{}</td><td>{}</td>\
             <td class=\"what\">{}</td><td>{}</td></tr>",
            Esc(&table::timestamp(a.at)),
            Esc(&table::ago(Some(ago))),
            Esc(&a.actor),
            Esc(&a.action),
            Esc(&a.target),
        )?;
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn write_control(out: &mut String, view: &StatusView) -> fmt::Result {
    out.push_str(
        "<section id=\"control\"><h2>Control plane</h2>\n<div class=\"control\"><div>\
         <h3>Replicas</h3>\n<table>\n<thead><tr>\
         <th>Replica</th><th>Uplinks (QUIC)</th><th>Admin</th><th>Version</th><th>State</th>\
         <th>Leader</th></tr></thead>\n<tbody>\n",
    );
    for r in &view.replicas {
        let this = if r.this {
            " <span class=\"muted\">(this one)</span>"
        } else {
            ""
        };
        writeln!(
            out,
            "<tr class=\"replica\"><td class=\"name\">{}{this}</td><td><code>{}</code></td>\
             <td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Esc(&r.name),
            Esc(&r.uplink_address),
            Esc(&r.admin_address),
            Esc(&r.version),
            badge("state", &r.state),
            if r.leader { "yes" } else { "no" },
        )?;
    }
    let store = &view.store;
    let schema = store
        .schema_version
        .map_or_else(|| "-".to_owned(), |v| v.to_string());
    write!(
        out,
        "</tbody>\n</table>\n</div><div><h3>Store</h3>\n<dl class=\"store\" id=\"store\"><dt>Kind</dt>\
         <dd>{}</dd><dt>Location</dt><dd><code>{}</code></dd><dt>Mode</dt><dd>{}</dd>\
         <dt>Schema version</dt><dd>{}</dd>",
        Esc(&store.kind),
        Esc(&store.location),
        badge("mode", &store.mode),
        Esc(&schema),
    )?;
    if let Some(e) = &store.error {
        write!(out, "<dt>Error</dt><dd>{}</dd>", Esc(e))?;
    }
    out.push_str("</dl>\n</div></div>\n</section>\n");
    Ok(())
}

/// The page a request without a valid token gets (401): which token it needs and where that
/// token is.
pub(crate) fn refused(message: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>Satellite status: token \
         needed</title></head>\n<body>\n<h1>Token needed</h1>\n<p>{}</p>\n</body>\n</html>\n",
        Esc(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::{
        AuditView, LeftOut, RelayView, ReplicaView, RoutingView, ServiceView, StoreView,
    };

    fn relay(name: &str, state: &str) -> StatusRelay {
        StatusRelay {
            relay: RelayView {
                name: name.into(),
                region: "eu-west".into(),
                state: state.into(),
                last_heartbeat_ms_ago: Some(400),
                rtt_us: Some(65_100),
                streams: 3,
                connections: 2,
                load: Some(0.25),
                uplinks: 2,
                version: "0.1.0".into(),
                addresses: vec![],
                enrolled_at: 0,
            },
            cert_expires_at: Some(1_000 + 16 * 3_600_000),
        }
    }

    fn view() -> StatusView {
        StatusView {
            generated_at: 1_000,
            generation: 7,
            replicas: vec![ReplicaView {
                name: "control-1".into(),
                uplink_address: "0.0.0.0:4433".into(),
                admin_address: "127.0.0.1:4434".into(),
                version: "0.1.0".into(),
                state: "serving".into(),
                leader: true,
                this: true,
            }],
            store: StoreView {
                kind: "sqlite".into(),
                location: "/var/lib/sat/control/sat.db".into(),
                mode: "read-write".into(),
                schema_version: Some(1),
                error: None,
            },
            relays: vec![relay("relay-eu", "up"), relay("relay-us", "down")],
            routing: RoutingView {
                geoip: true,
                basis: "by GeoIP".into(),
                samples: vec![RouteSample {
                    network: "81.2.69.142".into(),
                    place: "London, GB".into(),
                    measured: false,
                    chosen: Some("relay-eu".into()),
                    reason: "shortest".into(),
                    ranking: vec![RankedRelay {
                        name: "relay-eu".into(),
                        region: "eu-west".into(),
                        client_rtt_source: "estimated".into(),
                        client_rtt_us: Some(5_000),
                        primary_rtt_us: Some(65_100),
                        end_to_end_us: Some(70_100),
                        overloaded: false,
                    }],
                }],
                left_out: vec![LeftOut {
                    name: "relay-us".into(),
                    state: "down".into(),
                }],
            },
            services: vec![ServiceView {
                name: "demo".into(),
                kind: "http".into(),
                backend: "127.0.0.1:8000".into(),
                hostnames: vec!["demo.localhost".into()],
                access: "public".into(),
                created_at: 0,
            }],
            audit: vec![AuditView {
                at: 500,
                actor: "admin:ab12".into(),
                action: "relay.drain".into(),
                target: "relay-us".into(),
                detail: serde_json::Value::Null,
            }],
            problems: vec![],
        }
    }

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            Esc(r#"<a href="x">'&'</a>"#).to_string(),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(Esc("plain").to_string(), "plain");
        assert_eq!(Esc("").to_string(), "");
        assert_eq!(Esc("é<").to_string(), "é&lt;");
    }

    #[test]
    fn the_page_shows_each_section_and_a_row_per_relay() {
        let html = render(&view());
        for needle in [
            "<tr class=\"relay\" data-relay=\"relay-eu\" data-state=\"up\">",
            "<tr class=\"relay\" data-relay=\"relay-us\" data-state=\"down\">",
            "<span class=\"badge state-up\">up</span>",
            "65.1 ms",
            "in 16h",
            "25%",
            "<strong>relay-eu</strong>",
            "relay-eu 70.1 ms (5.0 ms est. + 65.1 ms)",
            "Taking no new users: relay-us (down).",
            "demo.localhost",
            "relay.drain",
            "/var/lib/sat/control/sat.db",
            "<span class=\"badge mode-read-write\">read-write</span>",
            "<title>Satellite status: 2 relays: 1 up, 1 down</title>",
            "config generation 7",
        ] {
            assert!(html.contains(needle), "no {needle:?} in\n{html}");
        }
        assert!(!html.contains("id=\"problems\""));
    }

    #[test]
    fn operator_strings_cannot_inject_markup() {
        let mut v = view();
        v.relays[0].relay.name = "<script>alert(1)</script>".into();
        v.relays[0].relay.state = "\"><img src=x>".into();
        v.services[0].name = "<b>svc</b>".into();
        v.services[0].hostnames = vec!["a'b".into()];
        v.audit[0].target = "</td><td>".into();
        v.routing.samples[0].reason = "<i>why</i>".into();
        v.problems = vec!["<blink>".into()];
        let html = render(&v);
        let script_tags = html.matches("<script>").count();
        assert_eq!(script_tags, 1, "only the page's own script:\n{html}");
        for bad in [
            "<img",
            "<b>svc",
            "<i>why",
            "<blink>",
            "a'b",
            "</td><td></td>",
        ] {
            assert!(!html.contains(bad), "{bad:?} got through:\n{html}");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // An unknown state gets the neutral class, never a class made of its text.
        assert!(html.contains("badge state-unavailable"));
        assert!(html.contains("<section class=\"problems\""));
    }

    #[test]
    fn an_empty_fleet_says_so() {
        let mut v = view();
        v.relays.clear();
        v.services.clear();
        v.audit.clear();
        let html = render(&v);
        assert!(html.contains("No relay is enrolled yet"));
        assert!(html.contains("No services."));
        assert!(html.contains("<title>Satellite status: no relays</title>"));
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_script() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains(&csp_hash(STYLE)));
        assert!(csp.contains(&csp_hash(&script())));
        assert!(!csp.contains("unsafe-inline"));
        assert!(script().contains("setInterval(refresh, 2000)"));
    }

    #[test]
    fn the_refusal_escapes_its_message() {
        let page = refused("needs <the> token in /x/status.token");
        assert!(page.contains("needs &lt;the&gt; token in /x/status.token"));
    }
}
