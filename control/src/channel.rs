//! The control channel of one uplink: Hello in, ConfigPush out, heartbeats both ways.

use std::mem::take;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use sat_proto::control::{Drain, Frame, FrameDecoder, Heartbeat, Hello};
use sat_proto::liveness::{Liveness, HEARTBEAT_TIMEOUT};
use sat_transport::header::next_frame;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::state::Shared;

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the channel until the relay says goodbye (`Ok`) or breaks the protocol (`Err` with the
/// reason to close the connection with).
pub(crate) async fn run(
    mut send: SendStream,
    mut recv: RecvStream,
    conn: &Connection,
    cert_name: &str,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    let mut decoder = FrameDecoder::new();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut recv, &mut decoder)).await
    {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        Ok(Ok(Some(other))) => return Err(format!("expected Hello, got {other:?}")),
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(format!("no Hello within {HELLO_TIMEOUT:?}")),
    };
    if let Err(reason) = check_hello(&hello, cert_name) {
        // Refused for good: say so with the code a relay does not retry quickly on.
        warn!("refusing uplink: {reason}");
        conn.close(sat_proto::close::REFUSED.into(), reason.as_bytes());
        return Err(reason);
    }
    shared.registry.connected(&hello, conn);
    let location = hello.location.map(|l| (l.lat, l.lon));
    let now = sat_proto::clock::unix_millis();
    if let Err(e) = shared
        .store
        .touch_relay(cert_name, &hello.version, &hello.addresses, location, now)
        .await
    {
        warn!("cannot record the relay's Hello: {e}");
    }
    info!(
        region = %hello.region,
        uplink = hello.uplink,
        version = %hello.version,
        rtt_us = conn.rtt().as_micros() as u64,
        "relay connected"
    );

    let mut snapshot = shared.snapshot.clone();
    let push = Frame::ConfigPush(snapshot.borrow_and_update().push.clone());
    write(&mut send, &push).await?;

    let mut liveness = Liveness::new(Instant::now().into_std(), HEARTBEAT_TIMEOUT);
    let mut missed = false;
    let mut told_to_drain = false;
    loop {
        tokio::select! {
            frame = next_frame(&mut recv, &mut decoder) => match frame? {
                Some(Frame::Heartbeat(mut hb)) => {
                    liveness.heard(Instant::now().into_std());
                    if take(&mut missed) {
                        info!("heartbeats resumed");
                    }
                    // Echo it, so the relay knows this uplink is alive end to end. The
                    // measurements stay here, and are not copied for the echo.
                    let measured = (take(&mut hb.peer_rtts), take(&mut hb.client_rtts));
                    let echo = Heartbeat { rtt_us: conn.rtt().as_micros() as u64, ..hb.clone() };
                    (hb.peer_rtts, hb.client_rtts) = measured;
                    shared.registry.heartbeat(cert_name, conn, hb);
                    write(&mut send, &Frame::Heartbeat(echo)).await?;
                }
                Some(Frame::Drain(d)) => info!(reason = %d.reason, "relay is draining"),
                Some(Frame::Goodbye(g)) => {
                    info!(reason = %g.reason, "relay said goodbye");
                    return Ok(());
                }
                Some(Frame::Hello(_)) => return Err("second Hello on one control channel".into()),
                Some(Frame::ConfigPush(_)) => return Err("relays do not push config".into()),
                Some(f @ (Frame::Renew(_) | Frame::Renewed(_) | Frame::Refused(_) | Frame::Enrol(_) | Frame::Enrolled(_))) => {
                    return Err(format!("unexpected {} frame from a relay", f.name()))
                }
                Some(Frame::Unknown(t)) => debug!(frame_type = t, "skipping unknown control frame"),
                None => return Ok(()),
            },
            changed = snapshot.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let push = Frame::ConfigPush(snapshot.borrow_and_update().push.clone());
                write(&mut send, &push).await?;
            }
            () = tokio::time::sleep_until(liveness.deadline().into()), if !missed => {
                if !liveness.is_alive(Instant::now().into_std()) {
                    missed = true;
                    warn!("no heartbeat on this uplink for {HEARTBEAT_TIMEOUT:?}");
                }
            }
            () = shared.draining.cancelled(), if !told_to_drain => {
                told_to_drain = true;
                let drain = Drain { reason: "control plane is shutting down".into() };
                write(&mut send, &Frame::Drain(drain)).await?;
            }
        }
    }
}

fn check_hello(hello: &Hello, cert_name: &str) -> Result<(), String> {
    if hello.relay != cert_name {
        return Err(format!(
            "relay says it is \"{}\" but its certificate names \"{cert_name}\"",
            hello.relay
        ));
    }
    Ok(())
}

async fn write(send: &mut SendStream, frame: &Frame) -> Result<(), String> {
    send.write_all(&frame.to_bytes())
        .await
        .map_err(|e| format!("control channel: {e}"))
}
