//! What the relay's and the control plane's `/metrics` pages share: building metric families
//! whose label values are fixed up front, rendering a registry in Prometheus's text format,
//! `sat_build_info`, and QUIC connection counters folded into counters that never go back.
//!
//! Every labelled family is created with all its label values at once ([`counters`],
//! [`gauges`]), from a fixed list in the code, so no label value ever comes from a peer, and
//! every series exists (at 0) from the first scrape: `rate()` and `absent()` then work.

use std::sync::Mutex;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use prometheus::core::Collector;
use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge};
use prometheus::{GaugeVec, IntGaugeVec, Opts, TextEncoder};
use quinn::Connection;
use sat_proto::stream::RejectCode;
use tracing::error;

pub use prometheus::Registry;

use crate::http::Body;

/// Latency buckets, in seconds, for request and stream set-up histograms: from half a
/// millisecond (a loopback round trip through both hops) to ten seconds (a backend timing out).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers `metric`. A failure is a bug in the families' names (an invalid or repeated
/// name), which the tests that scrape every page catch; the metric still counts, unseen.
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        error!("metric not registered (a bug): {e}");
    }
    metric
}

/// A counter family `name{label=...}` with one series per value of `values`, returned in the
/// same order.
pub fn counters<const N: usize>(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: [&str; N],
) -> [IntCounter; N] {
    let family = match IntCounterVec::new(Opts::new(name, help), &[label]) {
        Ok(family) => register(registry, family),
        Err(e) => {
            error!("metric family {name} is invalid (a bug): {e}");
            return values.map(|_| IntCounter::new("invalid", "invalid").unwrap_or_else(never));
        }
    };
    values.map(|value| family.with_label_values(&[value]))
}

/// A gauge family `name{label=...}` with one series per value of `values`.
pub fn gauges<const N: usize>(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: [&str; N],
) -> [IntGauge; N] {
    gauge_family(registry, name, help, &[label]).map_or_else(
        || values.map(|_| IntGauge::new("invalid", "invalid").unwrap_or_else(never)),
        |family| values.map(|value| family.with_label_values(&[value])),
    )
}

/// A gauge family with labels whose values are only known at run time (but still from a set
/// the operator controls, such as enrolled relays' names); see [`Registry`] users.
pub fn gauge_family(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Option<IntGaugeVec> {
    match IntGaugeVec::new(Opts::new(name, help), labels) {
        Ok(family) => Some(register(registry, family)),
        Err(e) => {
            error!("metric family {name} is invalid (a bug): {e}");
            None
        }
    }
}

/// [`gauge_family`] for floating-point values, such as round trips in seconds.
pub fn float_gauge_family(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Option<GaugeVec> {
    match GaugeVec::new(Opts::new(name, help), labels) {
        Ok(family) => Some(register(registry, family)),
        Err(e) => {
            error!("metric family {name} is invalid (a bug): {e}");
            None
        }
    }
}

/// A plain counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    match IntCounter::new(name, help) {
        Ok(c) => register(registry, c),
        Err(e) => {
            error!("metric {name} is invalid (a bug): {e}");
            IntCounter::new("invalid", "invalid").unwrap_or_else(never)
        }
    }
}

/// A plain integer gauge.
pub fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    match IntGauge::new(name, help) {
        Ok(g) => register(registry, g),
        Err(e) => {
            error!("metric {name} is invalid (a bug): {e}");
            IntGauge::new("invalid", "invalid").unwrap_or_else(never)
        }
    }
}

/// A plain floating-point gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    match Gauge::new(name, help) {
        Ok(g) => register(registry, g),
        Err(e) => {
            error!("metric {name} is invalid (a bug): {e}");
            Gauge::new("invalid", "invalid").unwrap_or_else(never)
        }
    }
}

/// A latency histogram in seconds, with [`LATENCY_BUCKETS`].
pub fn latency_histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    match Histogram::with_opts(opts) {
        Ok(h) => register(registry, h),
        Err(e) => {
            error!("metric {name} is invalid (a bug): {e}");
            Histogram::with_opts(HistogramOpts::new("invalid", "invalid")).unwrap_or_else(never)
        }
    }
}

/// A constant name is valid; this is never called.
fn never<T>(e: prometheus::Error) -> T {
    panic!("a constant metric name was refused: {e}")
}

/// `sat_build_info{component, version} 1`, so that a dashboard can tell a mixed fleet.
pub fn build_info(registry: &Registry, component: &str) {
    if let Some(family) = gauge_family(
        registry,
        "sat_build_info",
        "Always 1; the labels say which build of which component this is.",
        &["component", "version"],
    ) {
        family
            .with_label_values(&[component, env!("CARGO_PKG_VERSION")])
            .set(1);
    }
}

/// The content type of [`encode`]'s output: Prometheus's text exposition format, 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry's families in Prometheus's text exposition format ([`CONTENT_TYPE`]). An error
/// is a bug (a family that cannot be written), described for the scraper.
pub fn encode(registry: &Registry) -> Result<Bytes, String> {
    let mut buf = Vec::with_capacity(16 * 1024);
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .map_err(|e| format!("metrics do not encode (a bug): {e}"))?;
    Ok(Bytes::from(buf))
}

/// [`encode`] as an HTTP response: 200 with the page, or 500 saying what failed.
pub fn render(registry: &Registry) -> Response<Body> {
    match encode(registry) {
        Ok(page) => {
            let body = Full::new(page)
                .map_err(|never: std::convert::Infallible| match never {})
                .boxed();
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
            resp
        }
        Err(e) => crate::http::text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// What a stream carries, as the `kind` label of the streams families says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamClass {
    /// A TCP tunnel: `sat connect`/`sat forward`, or a relay TCP port.
    Tunnel = 0,
    /// One HTTP request and its response.
    Http = 1,
    /// An HTTP connection upgraded (WebSocket and the like), for as long as it lasts.
    Upgrade = 2,
}

/// `sat_<component>_streams_opened_total{kind}` and `sat_<component>_streams_open{kind}`.
pub struct Streams {
    opened: [IntCounter; 3],
    open: [IntGauge; 3],
}

impl Streams {
    pub fn new(registry: &Registry, component: &str) -> Self {
        let kinds = ["tunnel", "http", "upgrade"];
        Self {
            opened: counters(
                registry,
                &format!("sat_{component}_streams_opened_total"),
                "Streams between relay and control plane opened, by what they carry.",
                "kind",
                kinds,
            ),
            open: gauges(
                registry,
                &format!("sat_{component}_streams_open"),
                "Streams between relay and control plane open now, by what they carry.",
                "kind",
                kinds,
            ),
        }
    }

    /// Counts a stream of `class` as opened, and as open until the guard drops.
    pub fn open(&self, class: StreamClass) -> OpenStream {
        self.opened[class as usize].inc();
        let gauge = self.open[class as usize].clone();
        gauge.inc();
        OpenStream(gauge)
    }
}

/// Keeps a stream counted as open.
pub struct OpenStream(IntGauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `sat_<component>_refusals_total{reason}`: one series per [`RejectCode`] name.
pub struct Refusals([IntCounter; RejectCode::KNOWN + 1]);

impl Refusals {
    pub fn new(registry: &Registry, name: &str, help: &str) -> Self {
        let reasons = std::array::from_fn(|i| RejectCode::at(i).name());
        Self(counters(registry, name, help, "reason", reasons))
    }

    pub fn count(&self, code: RejectCode) {
        self.0[code.index()].inc();
    }
}

/// An HTTP responses family by status class, `1xx` to `5xx`.
pub struct StatusClasses([IntCounter; 5]);

impl StatusClasses {
    pub fn new(registry: &Registry, name: &str, help: &str) -> Self {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        Self(counters(registry, name, help, "class", classes))
    }

    pub fn count(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.0[class].inc();
    }
}

/// What QUIC connections sent and received, over every connection this process has had:
/// `sat_quic_datagrams_total`, `sat_quic_bytes_total` and `sat_quic_sendmsg_calls_total`.
/// quinn counts per connection and from zero on each new one; [`QuicTally`] carries each
/// connection's figures into these counters as deltas, so they never go back.
#[derive(Clone)]
pub struct QuicCounters {
    datagrams: [IntCounter; 2],
    bytes: [IntCounter; 2],
    /// `sendmsg`/`recvmsg` calls; fewer than datagrams when GSO/GRO batch them.
    io_calls: [IntCounter; 2],
}

impl QuicCounters {
    pub fn new(registry: &Registry) -> Self {
        let dir = ["sent", "received"];
        Self {
            datagrams: counters(
                registry,
                "sat_quic_datagrams_total",
                "UDP datagrams sent and received on QUIC connections.",
                "direction",
                dir,
            ),
            bytes: counters(
                registry,
                "sat_quic_bytes_total",
                "Bytes in UDP datagrams sent and received on QUIC connections, headers and \
                 encryption included.",
                "direction",
                dir,
            ),
            io_calls: counters(
                registry,
                "sat_quic_io_calls_total",
                "Socket calls (sendmsg, recvmsg) that carried those datagrams; fewer than \
                 datagrams when GSO and GRO batch them.",
                "direction",
                dir,
            ),
        }
    }
}

/// The part of one connection's statistics already added to [`QuicCounters`].
#[derive(Default)]
pub struct QuicTally {
    seen: Mutex<[u64; 6]>,
}

impl QuicTally {
    /// Starts over, for a new connection.
    pub fn reset(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = [0; 6];
        }
    }

    /// Adds what `conn` did since the last call. Call it when scraping, and once more when the
    /// connection ends, so that its last figures count too.
    pub fn fold(&self, conn: &Connection, into: &QuicCounters) {
        let s = conn.stats();
        let now = [
            s.udp_tx.datagrams,
            s.udp_rx.datagrams,
            s.udp_tx.bytes,
            s.udp_rx.bytes,
            s.udp_tx.ios,
            s.udp_rx.ios,
        ];
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let targets = [
            &into.datagrams[0],
            &into.datagrams[1],
            &into.bytes[0],
            &into.bytes[1],
            &into.io_calls[0],
            &into.io_calls[1],
        ];
        for ((seen, now), counter) in seen.iter_mut().zip(now).zip(targets) {
            counter.inc_by(now.saturating_sub(*seen));
            *seen = now.max(*seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn page(registry: &Registry) -> String {
        let body = render(registry).into_body().collect().await.unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn families_render_with_every_label_value() {
        let registry = Registry::new();
        let [a, _b] = counters(&registry, "sat_test_total", "Test.", "kind", ["a", "b"]);
        a.inc_by(3);
        let h = latency_histogram(&registry, "sat_test_seconds", "Test.");
        h.observe(0.002);
        build_info(&registry, "test");
        let text = page(&registry).await;
        assert!(text.contains("# TYPE sat_test_total counter"), "{text}");
        assert!(text.contains("sat_test_total{kind=\"a\"} 3"), "{text}");
        assert!(text.contains("sat_test_total{kind=\"b\"} 0"), "{text}");
        assert!(
            text.contains("sat_test_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sat_build_info{component=\"test\",version=\""),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_repeated_name_is_reported_not_fatal() {
        let registry = Registry::new();
        let first = counter(&registry, "sat_twice_total", "Test.");
        let second = counter(&registry, "sat_twice_total", "Test.");
        first.inc();
        second.inc_by(5);
        // The first one registered is the one shown; the second counts unseen.
        assert!(page(&registry).await.contains("sat_twice_total 1"));
    }
}
