//! Queries over TCP: hickory-server's listener gives framing, idle timeouts and pipelining,
//! and hands each query to this handler, which answers it as `answer.rs` does.

use hickory_proto::op::ResponseCode;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tracing::debug;

use super::answer::has_ecs;
use super::handler::GeoDns;
use super::metrics::Transport;

#[async_trait::async_trait]
impl RequestHandler for GeoDns {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply(request, request.src(), request.protocol());
        self.metrics.answered(
            reply.header.response_code(),
            Transport::Tcp,
            has_ecs(request.edns()),
        );
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = reply.edns {
            builder.edns(edns);
        }
        let response = builder.build(
            reply.header,
            reply.answers.iter(),
            reply.authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                // The client went away (a TCP connection closed under us); nothing to tell it.
                debug!(peer = %request.src(), %error, "DNS answer not sent");
                let mut header = reply.header;
                header.set_response_code(ResponseCode::ServFail);
                header.into()
            }
        }
    }
}
