//! TCP listeners with room for a burst of connections.
//!
//! `std` and tokio listen with a backlog of 128. A burst of new users beyond that (a page that
//! opens dozens of connections, a reconnect storm after a restart) overflows the accept queue
//! while the process is busy: the kernel then falls back to SYN cookies and drops handshakes,
//! and a connection whose cookie fails is reset. nginx listens with 511; we ask for 4096, which
//! the kernel caps at `net.core.somaxconn`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// The accept queue asked for.
pub const BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr` with [`BACKLOG`], otherwise as `std` binds one: address
/// reuse on, and `[::]` dual-stack or not as the system's default has it.
pub fn tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_where_asked_and_takes_connections() {
        let l = tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        let _client = std::net::TcpStream::connect(addr).unwrap();
        l.set_nonblocking(false).unwrap();
        l.accept().unwrap();
    }

    #[test]
    fn a_taken_port_is_an_error() {
        let l = tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = tcp(l.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
