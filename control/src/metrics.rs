//! What a control plane counts, served at `/metrics` on its admin listener without a token.
//! A leaf module: stream handlers, enrolment and the admin server count here, and it imports
//! none of them.
//!
//! Gauges that mirror state the control plane keeps anyway (relays and their states, the
//! config generation, QUIC figures) are set at scrape time by [`Metrics::refresh`].

use tokio::time::Instant;

use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec};
use sat_geo::dns::DnsMetrics;
use sat_proto::control::{RelayInfo, RelayState};
use sat_transport::metrics::{self as m, QuicCounters, Refusals, Registry, StatusClasses, Streams};

/// Why an enrolment or renewal was refused, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolRefusal {
    /// Not an Enrol or Renew frame, or none in time.
    BadRequest = 0,
    UnknownToken = 1,
    WrongSecret = 2,
    UsedToken = 3,
    ExpiredToken = 4,
    /// No name, a bad name, or one already enrolled.
    BadName = 5,
    /// The CSR could not be signed.
    BadCsr = 6,
    /// A renewal from a certificate the control plane no longer accepts.
    NotAuthorized = 7,
    /// The store could not be reached: the relay may retry.
    StoreUnavailable = 8,
}

const ENROL_REFUSALS: [&str; 9] = [
    "bad_request",
    "unknown_token",
    "wrong_secret",
    "used_token",
    "expired_token",
    "bad_name",
    "bad_csr",
    "not_authorized",
    "store_unavailable",
];

const RELAY_STATES: [(RelayState, &str); 3] = [
    (RelayState::Up, "up"),
    (RelayState::Draining, "draining"),
    (RelayState::Down, "down"),
];

pub(crate) struct Metrics {
    pub registry: Registry,
    pub streams: Streams,
    pub refusals: Refusals,
    /// Responses to the relays' HTTP streams, the backends' and our own, by status class.
    pub http_responses: StatusClasses,
    /// Tunnel payload: to the service (0) and to the user (1).
    tunnel_bytes: [IntCounter; 2],
    request_seconds: Histogram,
    tunnel_setup_seconds: Histogram,
    /// Enrolments (0) and renewals (1) granted.
    enrolments: [IntCounter; 2],
    enrol_refusals: [IntCounter; 9],
    relays: [IntGauge; 3],
    relay_state: Option<IntGaugeVec>,
    config_generation: IntGauge,
    uplinks: IntGauge,
    pub quic: QuicCounters,
    pub dns: DnsMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        m::build_info(&r, "control");
        Self {
            streams: Streams::new(&r, "control"),
            refusals: Refusals::new(
                &r,
                "sat_control_refusals_total",
                "Streams from relays refused, by reason.",
            ),
            http_responses: StatusClasses::new(
                &r,
                "sat_control_http_responses_total",
                "Responses to HTTP streams (the backends' and the control plane's own), by \
                 status class.",
            ),
            tunnel_bytes: m::counters(
                &r,
                "sat_control_tunnel_bytes_total",
                "Payload bytes of ended TCP tunnels, towards the service and towards the user.",
                "direction",
                ["to_service", "to_user"],
            ),
            request_seconds: m::latency_histogram(
                &r,
                "sat_control_http_request_duration_seconds",
                "From an HTTP stream's request to the backend's response head.",
            ),
            tunnel_setup_seconds: m::latency_histogram(
                &r,
                "sat_control_tunnel_setup_seconds",
                "How long a tunnel's backend took to accept the connection.",
            ),
            enrolments: m::counters(
                &r,
                "sat_control_enrolments_total",
                "Relay certificates issued: first enrolments and renewals.",
                "kind",
                ["enrol", "renew"],
            ),
            enrol_refusals: m::counters(
                &r,
                "sat_control_enrolment_refusals_total",
                "Enrolments and renewals refused, by reason.",
                "reason",
                ENROL_REFUSALS,
            ),
            relays: m::gauges(
                &r,
                "sat_control_relays",
                "Relays not revoked, by state in the relay map this control plane publishes.",
                "state",
                RELAY_STATES.map(|s| s.1),
            ),
            relay_state: m::gauge_family(
                &r,
                "sat_control_relay_state",
                "1 for each relay's state in the published relay map (relay names are the \
                 operator's, set at enrolment).",
                &["relay", "region", "state"],
            ),
            config_generation: m::int_gauge(
                &r,
                "sat_control_config_generation",
                "The generation of the config last published to relays.",
            ),
            uplinks: m::int_gauge(
                &r,
                "sat_control_uplinks",
                "Relay uplinks connected to this control plane.",
            ),
            quic: QuicCounters::new(&r),
            dns: DnsMetrics::new(&r),
            registry: r,
        }
    }

    pub fn enrolled(&self, renewal: bool) {
        self.enrolments[usize::from(renewal)].inc();
    }

    pub fn enrol_refused(&self, reason: EnrolRefusal) {
        self.enrol_refusals[reason as usize].inc();
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

    /// Sets the gauges that mirror state, just before a scrape: the published relay map and
    /// its generation, and how many uplinks are connected.
    pub fn refresh(&self, relays: &[RelayInfo], generation: u64, uplinks: usize) {
        for (gauge, (state, _)) in self.relays.iter().zip(RELAY_STATES) {
            let n = relays.iter().filter(|r| r.state == state).count();
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(family) = &self.relay_state {
            // Rebuilt each time, so that a revoked or renamed relay leaves the page.
            family.reset();
            for relay in relays {
                let state = RELAY_STATES
                    .iter()
                    .find(|s| s.0 == relay.state)
                    .map_or("down", |s| s.1);
                family
                    .with_label_values(&[&relay.name, &relay.region, state])
                    .set(1);
            }
        }
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.uplinks.set(i64::try_from(uplinks).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(metrics: &Metrics) -> String {
        let mut out = String::new();
        for family in metrics.registry.gather() {
            for metric in family.get_metric() {
                let labels: Vec<String> = metric
                    .get_label()
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect();
                let value = match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
                    _ => continue,
                };
                out += &format!("{}{{{}}} {value}\n", family.name(), labels.join(","));
            }
        }
        out
    }

    fn relay(name: &str, state: RelayState) -> RelayInfo {
        RelayInfo {
            name: name.into(),
            region: "eu".into(),
            state,
            addresses: Vec::new(),
            location: None,
            rtt_us: 0,
            load: 0.0,
            latency_url: None,
        }
    }

    #[test]
    fn relay_states_follow_the_map() {
        let metrics = Metrics::new();
        let map = [relay("a", RelayState::Up), relay("b", RelayState::Down)];
        metrics.refresh(&map, 4, 3);
        let text = page(&metrics);
        assert!(text.contains("sat_control_relays{state=up} 1"), "{text}");
        assert!(
            text.contains("sat_control_relays{state=draining} 0"),
            "{text}"
        );
        assert!(
            text.contains("sat_control_relay_state{region=eu,relay=b,state=down} 1"),
            "{text}"
        );
        assert!(text.contains("sat_control_config_generation{} 4"), "{text}");
        // b is gone from the next map, and leaves the page.
        metrics.refresh(&map[..1], 5, 2);
        let text = page(&metrics);
        assert!(!text.contains("relay=b"), "{text}");
    }

    #[test]
    fn enrolment_outcomes_are_counted_by_reason() {
        let metrics = Metrics::new();
        metrics.enrolled(false);
        metrics.enrol_refused(EnrolRefusal::UsedToken);
        metrics.enrol_refused(EnrolRefusal::StoreUnavailable);
        let text = page(&metrics);
        assert!(
            text.contains("sat_control_enrolments_total{kind=enrol} 1"),
            "{text}"
        );
        assert!(
            text.contains("sat_control_enrolments_total{kind=renew} 0"),
            "{text}"
        );
        for reason in ["used_token", "store_unavailable"] {
            let line = format!("sat_control_enrolment_refusals_total{{reason={reason}}} 1");
            assert!(text.contains(&line), "{text}");
        }
    }
}
