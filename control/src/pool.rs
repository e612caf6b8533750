//! Keep-alive connections to HTTP backends, shared by every HTTP stream of the process.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::BackendSection;

/// Keep-alive connections to HTTP backends, keyed by backend address.
#[derive(Clone)]
pub(crate) struct Pool {
    pub client: Client<HttpConnector, Incoming>,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Pool {
    pub fn new(config: &BackendSection) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            response_timeout: config.response_timeout,
            connect_timeout: config.connect_timeout,
        }
    }
}
