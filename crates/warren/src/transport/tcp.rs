//! The TCP transport: a TCP listener whose connections are authenticated by the Noise handshake
//! of [`super::noise`] and multiplexed by [`crate::state::mux`], with admission, limits and
//! shutdown shared with uTP ([`super::secured`]). The node uses it like QUIC: same hello, same
//! streams, same codes, same admission limits.
//!
//! From the SYN, the dialler's first application byte leaves after two round trips (TCP's
//! handshake, then Noise's first two messages) and arrives half a round trip later, right
//! behind Noise's third message; the node's hello exchange then costs what it costs on QUIC.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

use super::connection::{Accept, Listener, TransportConnection};
use super::gate::ContactGate;
use super::secured::{StreamAcceptor, StreamTransport};
use crate::error::TransportError;
use crate::hook::{BoxFuture, Hook};
use crate::{Identity, RemoteIdentity};

pub use super::secured::HANDSHAKE_TIMEOUT;

/// The hook's (and the transport's) name.
pub const HOOK_NAME: &str = "tcp";

/// Why a TCP listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (TCP): {source}")]
pub struct TcpListenError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The TCP transport. Cheap to clone. A node makes one with
/// [`P2P::listen_tcp`](crate::P2P::listen_tcp).
#[derive(Clone)]
pub struct TcpTransport {
    secured: Arc<StreamTransport>,
    local_addr: SocketAddr,
    listener: Arc<Mutex<Option<std::net::TcpListener>>>,
}

/// A socket bound with address and port reuse: a simultaneous open (hole punching) dials from
/// the listener's port.
fn reusable_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    Ok(socket)
}

impl TcpTransport {
    /// Binds a TCP listener on `addr` (port 0 picks a free port) for `identity`.
    pub(crate) fn bind(identity: &Identity, gate: Arc<ContactGate>, addr: SocketAddr) -> Result<Self, TcpListenError> {
        let bind_err = |source| TcpListenError { addr, source };
        let socket = reusable_socket(addr).map_err(bind_err)?;
        socket.bind(&addr.into()).map_err(bind_err)?;
        socket.listen(1024).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let listener: std::net::TcpListener = socket.into();
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            secured: StreamTransport::new(HOOK_NAME, identity, gate),
            local_addr,
            listener: Arc::new(Mutex::new(Some(listener))),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its admission of incoming connections (counts, limits), shared with the other
    /// byte-stream transport.
    pub fn secured(&self) -> &StreamTransport {
        &self.secured
    }
}

struct Acceptor(TcpListener);

impl StreamAcceptor for Acceptor {
    type Stream = TcpStream;
    async fn next(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }
}

impl Hook for TcpTransport {
    fn name(&self) -> &str {
        HOOK_NAME
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.secured.shutdown())
    }
}

impl Listener for TcpTransport {
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.local_addr]
    }

    fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
    ) -> BoxFuture<'_, Result<Arc<dyn TransportConnection>, TransportError>> {
        Box::pin(self.secured.dial(addr, expected, "TCP connect", async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }))
    }

    fn start(&self, accept: Accept) {
        let Some(listener) = self.listener.lock().expect("listener lock poisoned").take() else { return };
        match TcpListener::from_std(listener) {
            Ok(listener) => self.secured.run_accept_loop(Acceptor(listener), accept),
            Err(error) => tracing::warn!(%error, "TCP listener could not start"),
        }
    }
}
