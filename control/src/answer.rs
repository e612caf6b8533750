//! The control plane's answer to a data stream: accepted, or refused with a code and a reason.

use quinn::SendStream;
use sat_proto::stream::{RejectCode, Response};
use sat_transport::metrics::Refusals;

/// Answers a stream with a refusal, counted in `refusals`, and closes our side of it.
pub(crate) async fn reject(
    send: &mut SendStream,
    refusals: &Refusals,
    code: RejectCode,
    message: impl Into<String>,
) {
    refusals.count(code);
    let response = Response::reject(code, message);
    let mut buf = bytes::BytesMut::new();
    response.encode(&mut buf);
    let _ = send.write_all(&buf).await;
    let _ = send.finish();
}

/// Tells the relay its stream is accepted.
pub(crate) async fn accept(send: &mut SendStream) -> Result<(), quinn::WriteError> {
    let mut buf = bytes::BytesMut::with_capacity(3);
    Response::Accepted.encode(&mut buf);
    send.write_all(&buf).await
}
