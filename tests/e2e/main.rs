//! The end-to-end tests, as one test binary: real `sat` processes on loopback with real peers
//! (OpenSSH, curl, dig, Python's websockets, headless Chromium), one module per area. One
//! binary instead of one per area, because each links the whole workspace; nextest still runs
//! every test in its own process, so tests share no state.

mod common;

mod access;
mod delay_proxy;
mod enrol;
mod geo_dns;
mod http;
mod lifecycle;
mod logs;
mod metrics;
mod registry;
mod relays_cmd;
mod routing;
mod ssh;
mod status_page;
mod trust;
mod tunnel;
mod uplinks;
