//! Reading what opens a stream (a header, bounded in size and in time, with the bytes that
//! arrived behind it: the opener does not wait for an answer before sending data) and the
//! frames of a control channel.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sat_proto::stream::MAX_HEADER_LEN;
use sat_proto::DecodeError;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("stream ended before its header was complete")]
    Eof,
    #[error("no header within {0:?}")]
    Timeout(Duration),
    #[error("bad header: {0}")]
    Decode(#[from] DecodeError),
    #[error("reading header: {0}")]
    Io(#[from] std::io::Error),
}

/// A decoder in the shape `sat_proto` uses: `Ok(None)` asks for more bytes.
pub type Decode<T> = fn(&[u8]) -> Result<Option<(T, usize)>, DecodeError>;

/// Reads until `decode` yields a value. Returns it with whatever followed it in the buffer.
pub async fn read<R, T>(
    r: &mut R,
    decode: Decode<T>,
    limit: Duration,
) -> Result<(T, Bytes), HeaderError>
where
    R: AsyncRead + Unpin,
{
    tokio::time::timeout(limit, read_unbounded(r, decode))
        .await
        .map_err(|_| HeaderError::Timeout(limit))?
}

async fn read_unbounded<R, T>(r: &mut R, decode: Decode<T>) -> Result<(T, Bytes), HeaderError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(512);
    loop {
        if let Some((value, used)) = decode(&buf)? {
            let _ = buf.split_to(used);
            return Ok((value, buf.freeze()));
        }
        if buf.len() >= MAX_HEADER_LEN {
            // Decoders refuse over-long headers themselves; this is the backstop.
            return Err(HeaderError::Decode(DecodeError::Malformed(
                "header too long",
            )));
        }
        buf.reserve(512);
        if r.read_buf(&mut buf).await? == 0 {
            return Err(HeaderError::Eof);
        }
    }
}

/// The next control-channel frame off `recv`, `Ok(None)` when the peer finished the stream.
/// The error is a sentence for the log; after it the channel must be closed.
pub async fn next_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut sat_proto::control::FrameDecoder,
) -> Result<Option<sat_proto::control::Frame>, String> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes),
            Ok(None) => return Ok(None),
            // quinn's own text is only "connection lost"; the peer's close reason is the news.
            Err(quinn::ReadError::ConnectionLost(e)) => {
                return Err(format!("control channel: {e}"))
            }
            Err(e) => return Err(format!("control channel: {e}")),
        }
    }
}
