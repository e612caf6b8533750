//! Uplinks: the relay's QUIC connections to the control plane.
//!
//! Each uplink is one task that owns its connection: it connects, says Hello, applies config
//! pushes, sends heartbeats, and when the connection drops it reconnects with jittered
//! exponential backoff. The other uplinks keep carrying streams meanwhile. Stream handlers
//! reach the uplinks through [`crate::pool::Uplinks`].

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint};
use rand::Rng;
use sat_proto::control::{Drain, Frame, FrameDecoder, Goodbye, Hello};
use sat_proto::liveness::{HeartbeatSchedule, HEARTBEAT_INTERVAL};
use sat_transport::header::next_frame;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::relay::Relay;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_PUSH_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

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
    while !life.close.is_cancelled() {
        let attempt = connect(&endpoint, &control, &relay.server_name);
        let outcome = tokio::select! {
            r = attempt => r,
            () = life.close.cancelled() => return,
        };
        match outcome {
            Ok(conn) => {
                let reason = session(i, &control, &conn, &relay, &life).await;
                relay.uplinks.set(i, None);
                if life.close.is_cancelled() {
                    return;
                }
                warn!(uplink = i, "uplink {i} lost: {reason}");
                backoff = BACKOFF_MIN;
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
        backoff = (backoff * 2).min(BACKOFF_MAX);
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

/// One connected uplink, from Hello to loss or goodbye. Returns why it ended.
async fn session(
    i: usize,
    addr: &str,
    conn: &Connection,
    relay: &Arc<Relay>,
    life: &Lifecycle,
) -> String {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(pair) => pair,
        Err(e) => return e.to_string(),
    };
    let hello = Frame::Hello(Hello {
        relay: relay.name.clone(),
        region: relay.region.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uplink: i as u32,
        capabilities: vec!["tcp".into(), "http".into()],
    });
    if let Err(e) = send.write_all(&hello.to_bytes()).await {
        return e.to_string();
    }
    let mut decoder = FrameDecoder::new();
    match tokio::time::timeout(FIRST_PUSH_TIMEOUT, next_frame(&mut recv, &mut decoder)).await {
        Ok(Ok(Some(Frame::ConfigPush(push)))) => relay.apply(&push),
        Ok(Ok(Some(Frame::Goodbye(g)))) => return format!("control plane refused: {}", g.reason),
        Ok(Ok(other)) => return format!("expected ConfigPush, got {other:?}"),
        Ok(Err(e)) => return e,
        Err(_) => return format!("no config within {FIRST_PUSH_TIMEOUT:?}"),
    }
    relay.uplinks.set(i, Some(conn.clone()));
    info!(
        uplink = i,
        rtt_us = conn.rtt().as_micros() as u64,
        "uplink {i} connected to {addr}"
    );
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
                        return e.to_string();
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
                Ok(Some(Frame::Goodbye(g))) => return format!("control plane said goodbye: {}", g.reason),
                Ok(Some(Frame::Unknown(t))) => debug!(frame_type = t, "skipping unknown control frame"),
                Ok(Some(Frame::Hello(_))) => return "control plane sent Hello".into(),
                Ok(None) => return "control channel closed".into(),
                Err(e) => return e,
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
                return "closed".into();
            }
            reason = conn.closed() => return reason.to_string(),
        }
    }
}
