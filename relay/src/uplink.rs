//! Uplinks: the relay's QUIC connections to the control plane.
//!
//! Each uplink is one task that owns its connection: it connects, says Hello, applies config
//! pushes, sends heartbeats, and when the connection drops it reconnects with jittered
//! exponential backoff. The other uplinks keep carrying streams meanwhile. Stream handlers
//! reach the uplinks through [`crate::pool::Uplinks`].

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, SendStream};
use rand::Rng;
use sat_proto::control::{Drain, Frame, FrameDecoder, Goodbye, Hello};
use sat_proto::liveness::{HeartbeatSchedule, HEARTBEAT_INTERVAL};
use sat_transport::header::next_frame;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::relay::Relay;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_PUSH_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const RENEW_STAGGER: Duration = Duration::from_millis(250);
/// How often a relay the control plane refused (revoked, unknown) tries again: in case the
/// refusal was a mistake being fixed, without filling the control plane's log.
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// Tokens that steer an uplink task through a shutdown.
#[derive(Clone)]
pub struct Lifecycle {
    /// The relay is draining: tell the control plane, keep carrying streams in flight.
    pub drain: CancellationToken,
    /// Streams are done or out of time: say goodbye and close.
    pub close: CancellationToken,
}

/// Keeps uplink `i` connected to `control` (host:port) until told to close.
pub async fn maintain(
    i: usize,
    control: String,
    endpoint: Endpoint,
    relay: Arc<Relay>,
    life: Lifecycle,
) {
    let mut backoff = BACKOFF_MIN;
    let mut epoch = relay.cert_epoch.subscribe();
    // The connection being replaced after a certificate renewal: it keeps carrying its
    // streams until the new one is up, then says goodbye.
    let mut retiring: Option<SendStream> = None;
    while !life.close.is_cancelled() {
        let attempt = connect(&endpoint, &control, &relay.server_name);
        let outcome = tokio::select! {
            r = attempt => r,
            () = life.close.cancelled() => return,
        };
        match outcome {
            Ok(conn) => {
                let s = Session {
                    i,
                    addr: &control,
                    conn: &conn,
                    relay: &relay,
                    life: &life,
                };
                match s.run(&mut epoch, retiring.take()).await {
                    Ended::Renewed(send) => {
                        info!(
                            uplink = i,
                            "reconnecting uplink {i} with the renewed certificate"
                        );
                        retiring = Some(send);
                        backoff = BACKOFF_MIN;
                        continue;
                    }
                    Ended::Lost {
                        reason,
                        established,
                    } => {
                        relay.uplinks.set(i, None, &relay.metrics.quic);
                        if life.close.is_cancelled() {
                            return;
                        }
                        if let Some(refusal) = refusal(&conn) {
                            relay.refused(Some(refusal.clone()));
                            error!(
                                uplink = i,
                                retry_in = ?REFUSED_RETRY,
                                "the control plane refuses this relay: {refusal}. To bring it \
                                 back, create a token (`sat admin relay-token create --region \
                                 {} --name {}`) and restart the relay with --token",
                                relay.region,
                                relay.name
                            );
                            backoff = REFUSED_RETRY;
                        } else {
                            warn!(uplink = i, "uplink {i} lost: {reason}");
                            // Only a session that got going earns a quick retry; one that
                            // fails every time backs off.
                            if established {
                                backoff = BACKOFF_MIN;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                warn!(uplink = i, retry_in = ?backoff, "uplink {i} cannot connect to {control}: {e}");
            }
        }
        // Full jitter in [backoff/2, backoff]: relays that lost the same replica do not all
        // come back in the same instant.
        let wait = rand::thread_rng().gen_range(backoff / 2..=backoff);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = life.close.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX).max(backoff);
    }
}

/// The reason the control plane gave if it closed the connection refusing this relay for good.
fn refusal(conn: &Connection) -> Option<String> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == sat_proto::close::REFUSED.into() =>
        {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ => None,
    }
}

async fn connect(
    endpoint: &Endpoint,
    control: &str,
    server_name: &str,
) -> Result<Connection, String> {
    let addr = tokio::net::lookup_host(control)
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("name has no address")?;
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// How a session ended.
enum Ended {
    /// The connection is gone, or we closed it; why, and whether it had got its config.
    Lost { reason: String, established: bool },
    /// The certificate was renewed: reconnect with it, then say goodbye on this control
    /// channel (whose connection carries on with its streams until then).
    Renewed(SendStream),
}

/// One connected uplink, from Hello to loss or goodbye.
struct Session<'a> {
    i: usize,
    addr: &'a str,
    conn: &'a Connection,
    relay: &'a Arc<Relay>,
    life: &'a Lifecycle,
}

impl Session<'_> {
    async fn run(&self, epoch: &mut watch::Receiver<u64>, retiring: Option<SendStream>) -> Ended {
        let result = self.serve(epoch, retiring).await;
        match result {
            Ok(send) => Ended::Renewed(send),
            Err(reason) => Ended::Lost {
                reason,
                established: self.relay.uplinks.was_set(self.i, self.conn),
            },
        }
    }

    async fn serve(
        &self,
        epoch: &mut watch::Receiver<u64>,
        retiring: Option<SendStream>,
    ) -> Result<SendStream, String> {
        let Self {
            i,
            addr,
            conn,
            relay,
            life,
        } = *self;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(pair) => pair,
            Err(e) => return Err(e.to_string()),
        };
        let hello = Frame::Hello(Hello {
            relay: relay.name.clone(),
            region: relay.region.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uplink: i as u32,
            capabilities: vec!["tcp".into(), "http".into()],
            location: relay.location,
            addresses: relay.addresses.clone(),
            latency_url: relay.latency_url.clone(),
        });
        if let Err(e) = send.write_all(&hello.to_bytes()).await {
            return Err(e.to_string());
        }
        let mut decoder = FrameDecoder::new();
        match tokio::time::timeout(FIRST_PUSH_TIMEOUT, next_frame(&mut recv, &mut decoder)).await {
            Ok(Ok(Some(Frame::ConfigPush(push)))) => relay.apply(&push),
            Ok(Ok(Some(Frame::Goodbye(g)))) => {
                return Err(format!("control plane refused: {}", g.reason))
            }
            Ok(Ok(None)) => {
                return Err(conn.close_reason().map_or_else(
                    || "closed before the first config".into(),
                    |r| r.to_string(),
                ))
            }
            Ok(Ok(other)) => return Err(format!("expected ConfigPush, got {other:?}")),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("no config within {FIRST_PUSH_TIMEOUT:?}")),
        }
        relay
            .uplinks
            .set(i, Some(conn.clone()), &relay.metrics.quic);
        if let Some(mut old) = retiring {
            // New streams now go to the new connection; the old one closes by itself once its
            // last stream ends and every handle to it is gone.
            let bye = Frame::Goodbye(Goodbye {
                reason: "certificate renewed".into(),
            });
            let _ = old.write_all(&bye.to_bytes()).await;
            let _ = old.finish();
        }
        info!(
            uplink = i,
            rtt_us = conn.rtt().as_micros() as u64,
            "uplink {i} connected to {addr}"
        );
        relay.refused(None);
        relay.note_ready();

        let mut schedule = HeartbeatSchedule::new(Instant::now().into_std(), HEARTBEAT_INTERVAL);
        let mut drained = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(schedule.deadline().into()) => {
                    if let Some(seq) = schedule.poll(Instant::now().into_std()) {
                        let path = conn.stats().path;
                        debug!(
                            uplink = i,
                            rtt_us = path.rtt.as_micros() as u64,
                            mtu = path.current_mtu,
                            cwnd = path.cwnd,
                            lost_packets = path.lost_packets,
                            black_holes = path.black_holes_detected,
                            "uplink path"
                        );
                        let hb = relay.heartbeat(seq, conn);
                        if let Err(e) = send.write_all(&Frame::Heartbeat(hb).to_bytes()).await {
                            return Err(e.to_string());
                        }
                    }
                }
                frame = next_frame(&mut recv, &mut decoder) => match frame {
                    Ok(Some(Frame::ConfigPush(push))) => {
                        relay.uplinks.heard(i);
                        relay.apply(&push);
                    }
                    Ok(Some(Frame::Heartbeat(_))) => relay.uplinks.heard(i),
                    Ok(Some(Frame::Drain(d))) => {
                        info!(uplink = i, reason = %d.reason, "control plane asks for no new streams on uplink {i}");
                        relay.uplinks.drain(i);
                    }
                    Ok(Some(Frame::Goodbye(g))) => return Err(format!("control plane said goodbye: {}", g.reason)),
                    Ok(Some(Frame::Unknown(t))) => debug!(frame_type = t, "skipping unknown control frame"),
                    Ok(Some(Frame::Hello(_))) => return Err("control plane sent Hello".into()),
                    Ok(Some(f @ (Frame::Renew(_) | Frame::Renewed(_) | Frame::Refused(_) | Frame::Enrol(_) | Frame::Enrolled(_)))) => {
                        return Err(format!("control plane sent an unexpected {} frame", f.name()))
                    }
                    Ok(None) => return Err("control channel closed".into()),
                    Err(e) => return Err(e),
                },
                () = life.drain.cancelled(), if !drained => {
                    drained = true;
                    let drain = Frame::Drain(Drain { reason: "relay is shutting down".into() });
                    let _ = send.write_all(&drain.to_bytes()).await;
                }
                () = life.close.cancelled() => {
                    let bye = Frame::Goodbye(Goodbye { reason: "relay is shutting down".into() });
                    let _ = send.write_all(&bye.to_bytes()).await;
                    let _ = send.finish();
                    conn.close(0u32.into(), b"relay shutting down");
                    return Err("closed".into());
                }
                changed = epoch.changed() => {
                    if changed.is_ok() {
                        // Uplinks reconnect one after another, not all in the same instant.
                        tokio::time::sleep(RENEW_STAGGER * i as u32).await;
                        return Ok(send);
                    }
                }
                reason = conn.closed() => return Err(reason.to_string()),
            }
        }
    }
}
