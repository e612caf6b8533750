//! What a relay counts, served at `/metrics` on its health listener. A leaf module: stream
//! handlers, uplinks and the health server all count here, and it imports none of them.
//!
//! Counters are bumped where things happen; gauges that mirror state the relay already keeps
//! (uplinks, config generation, certificate expiry, QUIC figures) are read at scrape time by
//! [`Metrics::refresh`] instead, so the data path pays nothing for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use prometheus::{Gauge, Histogram, IntCounter, IntGauge};
use sat_geo::dns::DnsMetrics;
use sat_transport::metrics::{self as m, QuicCounters, Refusals, Registry};
use sat_transport::metrics::{StatusClasses, Streams};

pub struct Metrics {
    pub registry: Registry,
    pub streams: Streams,
    /// Tunnel payload: to the service (0) and to the user (1).
    tunnel_bytes: [IntCounter; 2],
    /// HTTP responses to users by status class, 1xx (0) to 5xx (4).
    pub http_responses: StatusClasses,
    pub refusals: Refusals,
    /// Streams sent again on another uplink after theirs went silent unanswered.
    pub resent: IntCounter,
    /// Streams whose uplink went silent after the control plane may have acted on them: not
    /// sent again, the user told so.
    pub not_resent: IntCounter,
    request_seconds: Histogram,
    tunnel_setup_seconds: Histogram,
    /// Per uplink slot: connected and heard from (1) or not (0), and its round trip.
    uplink_up: Vec<IntGauge>,
    uplink_rtt: Vec<Gauge>,
    config_generation: IntGauge,
    cert_expiry: Gauge,
    /// Unix seconds when the relay's certificate expires; 0 until it has one.
    cert_not_after: AtomicU64,
    pub quic: QuicCounters,
    pub dns: DnsMetrics,
}

impl Metrics {
    /// The families of a relay with `uplinks` uplink slots, every series at 0.
    pub fn new(uplinks: usize) -> Self {
        let r = Registry::new();
        m::build_info(&r, "relay");
        let per_uplink = m::gauge_family(
            &r,
            "sat_relay_uplink_up",
            "1 while the uplink is connected to the control plane and recently heard from.",
            &["uplink"],
        );
        let rtt = m::float_gauge_family(
            &r,
            "sat_relay_uplink_rtt_seconds",
            "The uplink's smoothed round trip to the control plane, as QUIC measures it; 0 \
             while it is down.",
            &["uplink"],
        );
        let labels: Vec<String> = (0..uplinks).map(|i| i.to_string()).collect();
        Self {
            streams: Streams::new(&r, "relay"),
            tunnel_bytes: m::counters(
                &r,
                "sat_relay_tunnel_bytes_total",
                "Payload bytes of ended TCP tunnels, towards the service and towards the user.",
                "direction",
                ["to_service", "to_user"],
            ),
            http_responses: StatusClasses::new(
                &r,
                "sat_relay_http_responses_total",
                "HTTP responses to users (the relay's own and the services'), by status class.",
            ),
            refusals: Refusals::new(
                &r,
                "sat_relay_refusals_total",
                "Tunnels and requests refused, by reason: the relay's own refusals and the \
                 control plane's passed on.",
            ),
            resent: m::counter(
                &r,
                "sat_relay_streams_resent_total",
                "Streams sent again on another uplink because theirs went silent before the \
                 answer, when nothing could arrive twice.",
            ),
            not_resent: m::counter(
                &r,
                "sat_relay_streams_not_resent_total",
                "Streams whose uplink went silent after the control plane may have passed them \
                 on: not sent again, and the user told so.",
            ),
            request_seconds: m::latency_histogram(
                &r,
                "sat_relay_http_request_duration_seconds",
                "From an HTTP request's arrival to its response head, through the control \
                 plane and the service.",
            ),
            tunnel_setup_seconds: m::latency_histogram(
                &r,
                "sat_relay_tunnel_setup_seconds",
                "From a tunnel's header to the control plane's answer (the service connected).",
            ),
            uplink_up: labels
                .iter()
                .filter_map(|l| per_uplink.as_ref().map(|f| f.with_label_values(&[l])))
                .collect(),
            uplink_rtt: labels
                .iter()
                .filter_map(|l| rtt.as_ref().map(|f| f.with_label_values(&[l])))
                .collect(),
            config_generation: m::int_gauge(
                &r,
                "sat_relay_config_generation",
                "The generation of the config the relay runs; 0 before the first push.",
            ),
            cert_expiry: m::gauge(
                &r,
                "sat_relay_certificate_expiry_seconds",
                "Seconds until the relay's uplink certificate expires (negative once expired). \
                 The relay renews it at two thirds of its life.",
            ),
            cert_not_after: AtomicU64::new(0),
            quic: QuicCounters::new(&r),
            dns: DnsMetrics::new(&r),
            registry: r,
        }
    }

    pub fn request_took(&self, since: Instant) {
        self.request_seconds.observe(since.elapsed().as_secs_f64());
    }

    pub fn tunnel_set_up(&self, since: Instant) {
        self.tunnel_setup_seconds
            .observe(since.elapsed().as_secs_f64());
    }

    /// A tunnel ended having moved these payload bytes.
    pub fn tunnel_moved(&self, to_service: u64, to_user: u64) {
        self.tunnel_bytes[0].inc_by(to_service);
        self.tunnel_bytes[1].inc_by(to_user);
    }

    /// The certificate now in use expires at `not_after` (Unix seconds).
    pub fn certificate(&self, not_after: u64) {
        self.cert_not_after.store(not_after, Ordering::Relaxed);
    }

    /// Sets the gauges that mirror state, just before a scrape: uplink `i`'s state and round
    /// trip (`None`: down), the config generation, and the certificate's time left.
    pub fn refresh(&self, uplinks: &[Option<Duration>], generation: u64, unix_now: u64) {
        for (i, rtt) in uplinks.iter().enumerate() {
            if let (Some(up), Some(gauge)) = (self.uplink_up.get(i), self.uplink_rtt.get(i)) {
                up.set(i64::from(rtt.is_some()));
                gauge.set(rtt.map_or(0.0, |d| d.as_secs_f64()));
            }
        }
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let not_after = self.cert_not_after.load(Ordering::Relaxed);
        if not_after > 0 {
            self.cert_expiry.set(not_after as f64 - unix_now as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_proto::stream::RejectCode;
    use sat_transport::metrics::StreamClass;

    fn value(metrics: &Metrics, name: &str, label: Option<(&str, &str)>) -> f64 {
        let families = metrics.registry.gather();
        let family = families.iter().find(|f| f.name() == name).expect(name);
        let metric = family
            .get_metric()
            .iter()
            .find(|m| {
                label.is_none_or(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == k && l.value() == v)
                })
            })
            .expect("series");
        match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
            _ => metric.get_gauge().get_value(),
        }
    }

    #[test]
    fn streams_count_opened_and_open() {
        let metrics = Metrics::new(2);
        let guard = metrics.streams.open(StreamClass::Upgrade);
        let kind = Some(("kind", "upgrade"));
        assert_eq!(value(&metrics, "sat_relay_streams_open", kind), 1.0);
        drop(guard);
        assert_eq!(value(&metrics, "sat_relay_streams_open", kind), 0.0);
        assert_eq!(value(&metrics, "sat_relay_streams_opened_total", kind), 1.0);
    }

    #[test]
    fn refusals_and_statuses_land_in_fixed_series() {
        let metrics = Metrics::new(1);
        metrics.refusals.count(RejectCode::Unauthorized);
        metrics.refusals.count(RejectCode::Other(200));
        metrics.http_responses.count(http::StatusCode::BAD_GATEWAY);
        metrics
            .http_responses
            .count(http::StatusCode::SWITCHING_PROTOCOLS);
        let reason = |r| value(&metrics, "sat_relay_refusals_total", Some(("reason", r)));
        assert_eq!(reason("unauthorized"), 1.0);
        assert_eq!(reason("other"), 1.0);
        assert_eq!(reason("no_uplink"), 0.0);
        let class = |c| {
            value(
                &metrics,
                "sat_relay_http_responses_total",
                Some(("class", c)),
            )
        };
        assert_eq!((class("5xx"), class("1xx"), class("2xx")), (1.0, 1.0, 0.0));
    }

    #[test]
    fn refresh_mirrors_uplinks_generation_and_expiry() {
        let metrics = Metrics::new(2);
        metrics.certificate(1_000_600);
        metrics.refresh(&[Some(Duration::from_millis(30)), None], 7, 1_000_000);
        let uplink = |name, i| value(&metrics, name, Some(("uplink", i)));
        assert_eq!(uplink("sat_relay_uplink_up", "0"), 1.0);
        assert_eq!(uplink("sat_relay_uplink_up", "1"), 0.0);
        assert!((uplink("sat_relay_uplink_rtt_seconds", "0") - 0.03).abs() < 1e-9);
        assert_eq!(value(&metrics, "sat_relay_config_generation", None), 7.0);
        assert_eq!(
            value(&metrics, "sat_relay_certificate_expiry_seconds", None),
            600.0
        );
    }
}
