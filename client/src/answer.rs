//! Opening a tunnel and waiting for the relay's answer, with the local side's bytes going out
//! meanwhile (no round trip is added before the first byte).
//!
//! This is also where a dead relay is noticed: a live relay acknowledges what it receives within
//! its ack delay (25 ms) and a round trip. If nothing at all comes back within
//! [`ack_limit`], the connection is doubted (new tunnels go elsewhere
//! until it is heard from again) and the tunnel is opened again through the next relay, with a
//! copy of what was sent before the answer (at most [`sat_transport::ahead::LIMIT`]). Since
//! the relay sent nothing after the tunnel went out, it had not passed the tunnel on, short of
//! dying in the moment between receiving and acknowledging, so the replay delivers nothing
//! twice. A relay
//! that was heard from and then died (or reset the stream) may have passed the bytes on;
//! such a tunnel fails rather than risk delivering them twice.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use sat_transport::ahead::SentAhead;
use sat_transport::splice::{self, SpliceError, REFUSAL_GRACE};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::time::Instant;
use tracing::warn;

use crate::dial::ack_limit;
use crate::{ClientError, Route, Transport};

/// How often a tunnel awaiting its answer looks at whether its relay went silent.
const WATCH_EVERY: Duration = Duration::from_millis(25);
/// How many relays a tunnel tries before it gives up.
const MAX_ATTEMPTS: usize = 3;

/// A tunnel its relay has taken.
pub enum Answered {
    /// Over QUIC the answer has been read; `first` is what followed it.
    Quic {
        send: SendStream,
        recv: RecvStream,
        first: Bytes,
    },
    /// Over TLS the answer is read with the data (see
    /// [`sat_transport::io::Prefixed::awaiting_answer`]). A dead TCP peer is not noticed sooner
    /// than TCP's own timeouts, so there is nothing to replay.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// How waiting for an answer ended, short of an answer.
enum Unanswered {
    /// The end of this tunnel: the relay or the control plane refused it, or the local side
    /// failed.
    Final(ClientError),
    /// The relay went silent, or the stream failed, before it answered: worth another relay.
    Lost(String),
}

/// Opens a tunnel to `service`, passing on what `local` sends until the relay answers, and
/// replaying it through the next relay if the first one dies before it answers.
pub async fn open_answered<R>(
    route: &Route,
    service: &str,
    local: &mut R,
) -> Result<(Answered, String), ClientError>
where
    R: AsyncRead + Unpin,
{
    let mut sent = SentAhead::default();
    let mut attempt = 1;
    loop {
        let (transport, relay) = route.open(service).await?;
        let (mut send, mut recv, conn) = match transport {
            Transport::Quic { send, recv, conn } => (send, recv, conn),
            Transport::Tls(mut stream) => {
                for chunk in sent.chunks() {
                    stream
                        .write_all(chunk)
                        .await
                        .map_err(|e| ClientError::io(service, e))?;
                }
                return Ok((Answered::Tls(stream), relay));
            }
        };
        // Datagrams from the relay so far. If none come before it is lost, it died before it
        // could act on this tunnel, and a replay cannot repeat anything.
        let heard = conn.stats().udp_rx.datagrams;
        let lost = match replay(&mut send, &sent).await {
            Ok(()) => {
                let tunnel = Tunnel {
                    service,
                    relay: &relay,
                    route,
                    conn: &conn,
                    heard,
                    sent_at: Instant::now(),
                };
                tunnel
                    .await_answer(&mut send, &mut recv, local, &mut sent)
                    .await
            }
            Err(e) => Err(Unanswered::Lost(e.to_string())),
        };
        match lost {
            Ok(first) => return Ok((Answered::Quic { send, recv, first }, relay)),
            Err(Unanswered::Final(e)) => return Err(e),
            Err(Unanswered::Lost(why))
                if attempt < MAX_ATTEMPTS && conn.stats().udp_rx.datagrams == heard =>
            {
                warn!(%relay, bytes = sent.len(), "the relay did not answer ({why}); opening the tunnel again through the next relay");
                let _ = send.reset(splice::ABORTED);
                attempt += 1;
            }
            Err(Unanswered::Lost(why)) => {
                let _ = send.reset(splice::ABORTED);
                let why = match attempt < MAX_ATTEMPTS {
                    // It may have passed the tunnel on; a replay could deliver its bytes twice.
                    true => format!("{why}, after it had the tunnel (not replayed: the service may have seen its bytes)"),
                    false => format!("{why}, and {MAX_ATTEMPTS} relays were tried"),
                };
                return Err(ClientError::io(
                    service,
                    std::io::Error::other(format!("relay {relay} did not answer: {why}")),
                ));
            }
        }
    }
}

async fn replay(send: &mut SendStream, sent: &SentAhead) -> Result<(), quinn::WriteError> {
    for chunk in sent.chunks() {
        send.write_chunk(chunk.clone()).await?;
    }
    Ok(())
}

/// One attempt at a tunnel: which service, through which relay of which route, and on which
/// connection, with its receive counter when the tunnel went out.
struct Tunnel<'a> {
    service: &'a str,
    relay: &'a str,
    route: &'a Route,
    conn: &'a quinn::Connection,
    heard: u64,
    sent_at: Instant,
}

impl Tunnel<'_> {
    /// Waits for the relay's answer while passing on what `local` sends (and keeping a copy).
    async fn await_answer<R>(
        &self,
        send: &mut SendStream,
        recv: &mut RecvStream,
        local: &mut R,
        sent: &mut SentAhead,
    ) -> Result<Bytes, Unanswered>
    where
        R: AsyncRead + Unpin,
    {
        let answer = splice::read_answer(recv);
        tokio::pin!(answer);
        let mut tick = tokio::time::interval(WATCH_EVERY);
        let mut buf = BytesMut::new();
        let mut write_failed: Option<(Instant, String)> = None;
        let service = self.service;
        loop {
            let reading = write_failed.is_none() && sent.wants_more();
            tokio::select! {
                answered = &mut answer => return match answered {
                    Ok(first) => Ok(first),
                    Err(SpliceError::Rejected(r)) => Err(Unanswered::Final(ClientError::Refused {
                        service: service.into(),
                        code: r.code,
                        message: r.message,
                    })),
                    // The relay reset the stream on purpose: the service aborted the connection
                    // at once, and the reset overtook the answer.
                    Err(SpliceError::QuicReset(_)) => Err(Unanswered::Final(ClientError::io(
                        service,
                        std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "the service reset the connection",
                        ),
                    ))),
                    Err(e) => Err(Unanswered::Lost(e.to_string())),
                },
                read = sent.read_from(local, &mut buf), if reading => match read {
                    Ok(None) => {}
                    Ok(Some(chunk)) => {
                        // Within the stream's flow-control window (far above the limit), so
                        // this does not wait on the relay.
                        if let Err(e) = send.write_chunk(chunk).await {
                            write_failed = Some((Instant::now(), e.to_string()));
                        }
                    }
                    // The local side is gone; nobody is left to answer.
                    Err(e) => return Err(Unanswered::Final(ClientError::io(service, e))),
                },
                _ = tick.tick() => {
                    let limit = ack_limit(self.conn.rtt());
                    if self.conn.stats().udp_rx.datagrams == self.heard && self.sent_at.elapsed() >= limit {
                        self.route.doubt(self.relay, self.conn, self.heard);
                        return Err(Unanswered::Lost(format!("nothing came back within {limit:?}")));
                    }
                    if self.route.is_gone(self.relay) {
                        return Err(Unanswered::Lost("it went silent".into()));
                    }
                    if let Some((at, why)) = &write_failed {
                        if at.elapsed() > REFUSAL_GRACE {
                            return Err(Unanswered::Lost(why.clone()));
                        }
                    }
                }
            }
        }
    }
}
