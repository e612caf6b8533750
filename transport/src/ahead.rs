//! Bytes a stream sends ahead of its answer. Both hops that wait for an answer (the client for
//! its relay's, the relay for the control plane's) pass the user's bytes on at once instead of
//! holding them, so a client-first protocol's first request costs no extra round trip. They
//! keep a copy, bounded, to send again elsewhere if the answer never comes.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most sent ahead of an answer. Past it the user's reads wait for the answer, so a stream
/// sent again never holds more than this.
pub const LIMIT: usize = 64 * 1024;

/// What a stream sent ahead of its answer, kept to send again.
#[derive(Default)]
pub struct SentAhead {
    chunks: Vec<Bytes>,
    len: usize,
    /// The user ended its input.
    ended: bool,
}

impl SentAhead {
    /// Starts with `first`, what came with the stream's header.
    pub fn new(first: Bytes) -> Self {
        Self {
            len: first.len(),
            chunks: vec![first],
            ended: false,
        }
    }

    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether there is room for more and the user may still send it.
    pub fn wants_more(&self) -> bool {
        !self.ended && self.len < LIMIT
    }

    /// Reads the user's next bytes and keeps a copy; `None` once the user ended its input.
    pub async fn read_from<R>(
        &mut self,
        user: &mut R,
        buf: &mut BytesMut,
    ) -> std::io::Result<Option<Bytes>>
    where
        R: AsyncRead + Unpin,
    {
        buf.reserve(16 * 1024);
        if user.read_buf(buf).await? == 0 {
            self.ended = true;
            return Ok(None);
        }
        let chunk = buf.split().freeze();
        self.len += chunk.len();
        self.chunks.push(chunk.clone());
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_what_it_reads_until_the_limit() {
        let input = vec![7u8; LIMIT + 100];
        let mut user = &input[..];
        let mut ahead = SentAhead::new(Bytes::from_static(b"hi"));
        let mut buf = BytesMut::new();
        while ahead.wants_more() {
            ahead.read_from(&mut user, &mut buf).await.unwrap();
        }
        assert!(ahead.len() >= LIMIT);
        let kept: usize = ahead.chunks().iter().map(Bytes::len).sum();
        assert_eq!(kept, ahead.len());
        assert_eq!(&ahead.chunks()[0][..], b"hi");
        assert!(!user.is_empty(), "it read past its limit");
    }

    #[tokio::test]
    async fn the_end_of_input_stops_the_reads() {
        let mut user: &[u8] = b"abc";
        let mut ahead = SentAhead::default();
        let mut buf = BytesMut::new();
        let chunk = ahead.read_from(&mut user, &mut buf).await.unwrap();
        assert_eq!(chunk.as_deref(), Some(&b"abc"[..]));
        assert!(ahead.wants_more());
        assert_eq!(ahead.read_from(&mut user, &mut buf).await.unwrap(), None);
        assert!(!ahead.wants_more());
        assert_eq!(ahead.len(), 3);
    }
}
