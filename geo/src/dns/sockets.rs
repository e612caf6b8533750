//! The geo DNS server's sockets: UDP and TCP on one port, bound before the server starts so
//! that a caller can log the address, and fail early, before anything else runs.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use crate::GeoError;

/// How often a port picked for UDP (port 0) may already be taken for TCP before we give up.
const PORT_TRIES: usize = 16;

/// UDP and TCP sockets on the same address and port, as resolvers expect (they retry a
/// truncated UDP answer over TCP on the same port). [`super::serve`] answers on them.
#[derive(Debug)]
pub struct DnsSockets {
    pub(crate) udp: UdpSocket,
    pub(crate) tcp: TcpListener,
}

impl DnsSockets {
    /// Binds UDP, then TCP on the port UDP got. With port 0 the kernel picks a UDP port,
    /// and we try again if TCP cannot have the same one.
    ///
    /// Errors: [`GeoError::DnsBind`], naming the protocol and address (the port is in use,
    /// or it is below 1024 and the process may not bind such ports).
    pub fn bind(addr: SocketAddr) -> Result<Self, GeoError> {
        let mut tries = 0;
        loop {
            let udp = UdpSocket::bind(addr).map_err(|e| bind_error("dns-udp", addr, e))?;
            let bound = udp
                .local_addr()
                .map_err(|e| bind_error("dns-udp", addr, e))?;
            match TcpListener::bind(bound) {
                Ok(tcp) => {
                    tcp.set_nonblocking(true)
                        .map_err(|e| bind_error("dns-tcp", bound, e))?;
                    return Ok(Self { udp, tcp });
                }
                Err(e) if addr.port() == 0 && tries < PORT_TRIES => {
                    tries += 1;
                    tracing::debug!(%bound, error = %e, "TCP port taken; picking another");
                }
                Err(e) => return Err(bind_error("dns-tcp", bound, e)),
            }
        }
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

fn bind_error(proto: &'static str, addr: SocketAddr, source: io::Error) -> GeoError {
    GeoError::DnsBind {
        proto,
        addr,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_tcp_share_the_port_the_kernel_picked() {
        let sockets = DnsSockets::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sockets.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(sockets.tcp.local_addr().unwrap(), addr);
    }

    #[test]
    fn a_port_in_use_is_an_error_that_names_it() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = DnsSockets::bind(addr).unwrap_err().to_string();
        assert!(
            error.contains("dns-udp") && error.contains(&addr.to_string()),
            "{error}"
        );
    }
}
