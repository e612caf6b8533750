//! What the geo DNS server counts: answers by response code, transport, and whether the query
//! carried an EDNS Client Subnet. The owner of the server registers these in its `/metrics`.

use hickory_proto::op::ResponseCode;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Response codes with a series of their own; any other counts as `other`.
const RCODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::BADVERS, "BADVERS"),
    (ResponseCode::ServFail, "SERVFAIL"),
];
const OTHER: usize = RCODES.len();

/// The transport an answer went out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp = 0,
    Tcp = 1,
}

/// `sat_dns_answers_total{rcode, transport, ecs}`. Clones count into the same series.
#[derive(Clone)]
pub struct DnsMetrics {
    /// Indexed by rcode (then `other`), transport, and ECS absent (0) or present (1).
    answers: std::sync::Arc<[[[IntCounter; 2]; 2]; OTHER + 1]>,
}

impl DnsMetrics {
    /// Creates the family in `registry`, every series at 0.
    pub fn new(registry: &Registry) -> Self {
        // Constant, valid names: this fails only if they are edited wrongly, which the tests
        // catch.
        let family = IntCounterVec::new(
            Opts::new(
                "sat_dns_answers_total",
                "Geo DNS answers sent, by response code, transport, and whether the query \
                 carried an EDNS Client Subnet.",
            ),
            &["rcode", "transport", "ecs"],
        )
        .expect("valid metric family");
        if let Err(e) = registry.register(Box::new(family.clone())) {
            tracing::error!("sat_dns_answers_total not registered (a bug): {e}");
        }
        let answers = std::array::from_fn(|i| {
            let rcode = RCODES.get(i).map_or("other", |r| r.1);
            ["udp", "tcp"].map(|transport| {
                ["absent", "present"].map(|ecs| family.with_label_values(&[rcode, transport, ecs]))
            })
        });
        Self {
            answers: std::sync::Arc::new(answers),
        }
    }

    /// Counters that no page shows, for a server whose owner keeps no metrics.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new())
    }

    /// Counts one answer.
    pub fn answered(&self, rcode: ResponseCode, transport: Transport, ecs: bool) {
        let i = RCODES.iter().position(|r| r.0 == rcode).unwrap_or(OTHER);
        self.answers[i][transport as usize][usize::from(ecs)].inc();
    }
}

impl std::fmt::Debug for DnsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsMetrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_their_series() {
        let registry = Registry::new();
        let m = DnsMetrics::new(&registry);
        m.answered(ResponseCode::NoError, Transport::Udp, true);
        m.answered(ResponseCode::NoError, Transport::Udp, true);
        m.answered(ResponseCode::Refused, Transport::Tcp, false);
        m.answered(ResponseCode::YXDomain, Transport::Udp, false);
        let mut text = String::new();
        for family in registry.gather() {
            for metric in family.get_metric() {
                let labels: Vec<_> = metric
                    .get_label()
                    .iter()
                    .map(|l| l.value().to_owned())
                    .collect();
                let v = metric.get_counter().get_value();
                if v > 0.0 {
                    text += &format!("{} {v}\n", labels.join(","));
                }
            }
        }
        // Labels in name order: ecs, rcode, transport.
        assert_eq!(
            text,
            "absent,REFUSED,tcp 1\nabsent,other,udp 1\npresent,NOERROR,udp 2\n"
        );
    }
}
