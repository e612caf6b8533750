//! The geo DNS server: authoritative for one zone, it answers A/AAAA queries for service host
//! names with the best one or two relays for the client, ranked by [`crate::rank::rank`] from
//! where GeoIP places the client (the EDNS Client Subnet if the query has one, else the
//! resolver's address). It speaks UDP (batched, on threads of its own: see `udp.rs`) and TCP
//! (through hickory-server), honours ECS with the scope RFC 7871 asks for, and answers bad
//! queries with FORMERR or REFUSED.
//!
//! Where clients of the query's network have reported round trips to relays (the table's
//! measurements per [`Network`], an IPv4 /24 or an IPv6 /48), they rank the answer as the
//! client's own measurements would, and the relays' round trips to each other place the relays
//! they do not cover. They are used when the ECS source prefix is at least the network's (24 or
//! 48), or for the resolver's own network when the query has no ECS. A shorter subnet, or a
//! source prefix of 0, may span many networks, so it is answered by GeoIP alone. An answer that
//! such measurements decided holds for that one network only, so its ECS scope is at least 24
//! (or 48), even where the GeoIP network is wider.
//!
//! Relays and the control plane configure it with the same `[dns]` section ([`DnsSection`]).
//!
//! It is not a general DNS server: no zone files, no transfers, no DNSSEC, no recursion. Its
//! zone holds the SOA and NS records at the apex, and the configured host names.
//!
//! What the answers say, by query:
//!
//! | Query                                  | Answer                                        |
//! |----------------------------------------|-----------------------------------------------|
//! | host name, A or AAAA (or ANY)          | the best relays' addresses, ECS scope set     |
//! | host name, another type                | NOERROR, no records, SOA in authority (NODATA)|
//! | host name, no relay up with that family| NODATA, negative TTL at most the answer TTL   |
//! | apex, SOA or NS                        | the configured records                        |
//! | a name in the zone that is not there   | NXDOMAIN, SOA in authority                    |
//! | a name outside the zone, class not IN  | REFUSED                                       |
//! | not exactly one question, malformed ECS, unparsable message | FORMERR          |
//! | EDNS version above 0                   | BADVERS                                       |
//! | opcode other than QUERY                | NOTIMP                                        |
//! | fewer than 12 bytes, or a response     | dropped                                       |
//!
//! A UDP answer larger than the client's EDNS buffer (512 bytes without EDNS, and never more
//! than [`DnsConfig::max_udp_payload`]) goes out with no records and TC set, so the resolver
//! asks again over TCP.

mod answer;
mod config;
mod fast;
mod handler;
mod memo;
mod metrics;
mod network;
mod section;
mod sockets;
mod table;
mod tcp;
mod udp;
mod wire;

use std::sync::Arc;

use hickory_server::ServerFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{DnsConfig, SoaConfig};
pub use handler::GeoDns;
pub use metrics::{DnsMetrics, Transport};
pub use network::Network;
pub use section::DnsSection;
pub use sockets::DnsSockets;
pub use table::{DnsRelay, DnsTable};

use crate::geoip::GeoIp;
use crate::GeoError;
use udp::UdpThreads;

/// UDP threads at most by default, however many cores: past a few, the socket's queue is the
/// limit.
const DEFAULT_UDP_THREADS_MAX: usize = 4;

/// UDP threads for this machine: half its cores, at least one. An answer takes about a
/// microsecond of our time and several of the kernel's (receiving, routing and sending the
/// datagrams, on whichever core the packets land), and a relay has its proxying to do too;
/// threads that take every core only wake each other on the shared socket. On the 2-core test
/// machine, one thread answered 345-364k queries/s under dnsperf, two 311-322k, three 271-293k.
fn default_udp_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (cores / 2).clamp(1, DEFAULT_UDP_THREADS_MAX)
}

/// Serves the geo DNS zone on `sockets` until `shutdown` is cancelled.
///
/// The caller binds the sockets ([`DnsSection::bind`], usually port 53, which logs
/// `listening on dns-udp ADDR` and `listening on dns-tcp ADDR`); this function logs nothing of
/// its own at `info`. `table` is the relay snapshot: send a new [`DnsTable`] into its
/// `watch::Sender` whenever the relay map changes, and the next query uses it (or let
/// [`serve_from`] do that). The config is checked before anything starts.
///
/// hickory-server logs every query at `info` under the `hickory_server` target; a binary that
/// does not want a line per query sets that target to `warn`.
///
/// Errors: [`GeoError::DnsConfig`] for a bad setting, [`GeoError::DnsSocket`] if a socket
/// cannot be registered with the runtime, [`GeoError::DnsStopped`] if a socket fails while
/// serving. Bad queries are answered, never returned as errors.
pub async fn serve(
    config: DnsConfig,
    sockets: DnsSockets,
    table: watch::Receiver<Arc<DnsTable>>,
    geoip: Arc<GeoIp>,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
) -> Result<(), GeoError> {
    let handler = GeoDns::new(&config, table, geoip)?.with_metrics(metrics);
    let threads = config.udp_threads.unwrap_or_else(default_udp_threads);
    // Its own token, so that an ended server stops its threads without cancelling the caller's.
    let stop_udp = shutdown.child_token();
    let mut udp =
        UdpThreads::start(sockets.udp, &handler, threads, &stop_udp).map_err(|source| {
            GeoError::DnsSocket {
                proto: "dns-udp",
                source,
            }
        })?;
    let mut server = ServerFuture::new(handler);
    server
        .register_listener_std(sockets.tcp, config.tcp_timeout)
        .map_err(|source| GeoError::DnsSocket {
            proto: "dns-tcp",
            source,
        })?;

    let stopped = tokio::select! {
        ended = server.block_until_done() => {
            // The listener's task ends only when told to, or when the socket fails.
            Some(match ended {
                Ok(()) => "its TCP listener closed".to_owned(),
                Err(error) => error.to_string(),
            })
        }
        ended = udp.next_ended() => Some(match ended {
            Some(Err(error)) => format!("its UDP socket failed: {error}"),
            _ => "a UDP thread stopped".to_owned(),
        }),
        () = shutdown.cancelled() => None,
    };
    // The UDP threads see the token within their poll interval.
    stop_udp.cancel();
    while udp.next_ended().await.is_some() {}
    if let Some(reason) = stopped {
        return Err(GeoError::DnsStopped { reason });
    }
    server
        .shutdown_gracefully()
        .await
        .map_err(|error| GeoError::DnsStopped {
            reason: error.to_string(),
        })
}

/// [`serve`], with the table kept in step with `source`, a relay map that changes: each new
/// value becomes the next table through `to_table` (`None` keeps the table as it is), so that
/// a relay the map marks down or draining stops being handed out with the next change. If the
/// map's sender goes away, the last table keeps being served until `shutdown`.
pub async fn serve_from<T>(
    config: DnsConfig,
    sockets: DnsSockets,
    geoip: Arc<GeoIp>,
    metrics: DnsMetrics,
    mut source: watch::Receiver<T>,
    to_table: impl Fn(&T) -> Option<DnsTable>,
    shutdown: CancellationToken,
) -> Result<(), GeoError> {
    let (tx, table) = watch::channel(Arc::new(DnsTable::default()));
    let follow = async move {
        loop {
            // Converted before the next await: the borrow locks the map against its writer.
            let next = to_table(&source.borrow_and_update());
            if let Some(next) = next {
                tx.send_replace(Arc::new(next));
            }
            if source.changed().await.is_err() {
                return tx;
            }
        }
    };
    let serving = serve(config, sockets, table, geoip, metrics, shutdown);
    tokio::pin!(serving);
    tokio::select! {
        ended = &mut serving => ended,
        // Held, so that the server's receiver still has a table to read.
        _tx = follow => serving.await,
    }
}
