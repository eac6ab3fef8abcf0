//! uTP for warren peers: the node's uTP listener. Each connection is a [`UtpStream`] of its
//! own uTP socket ([`super::utp`], LEDBAT's background congestion control), authenticated by
//! Noise and multiplexed exactly as TCP is ([`super::secured`]): the same identity checks,
//! admission and limits. A connection over it yields to the user's other traffic: an
//! application asks for one with [`P2P::dial_via`](crate::P2P::dial_via)`("utp", …)`.

use std::net::SocketAddr;
use std::sync::Arc;

use super::connection::{Accept, Listener, TransportConnection};
use super::gate::ContactGate;
use super::secured::{StreamAcceptor, StreamTransport};
use super::utp::{UtpSocket, UtpStream};
use crate::error::TransportError;
use crate::hook::{BoxFuture, Hook};
use crate::{Identity, RemoteIdentity};

/// The hook's (and the transport's) name.
pub const HOOK_NAME: &str = "utp";

/// Why a uTP listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (uTP): {source}")]
pub struct UtpListenError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The uTP transport. Cheap to clone. A node makes one with
/// [`P2P::listen_utp`](crate::P2P::listen_utp).
#[derive(Clone)]
pub struct UtpTransport {
    secured: Arc<StreamTransport>,
    socket: UtpSocket,
    local_addr: SocketAddr,
}

impl UtpTransport {
    /// Binds a uTP socket on `addr` (port 0 picks a free port) for `identity`.
    pub(crate) async fn bind(
        identity: &Identity,
        gate: Arc<ContactGate>,
        addr: SocketAddr,
    ) -> Result<Self, UtpListenError> {
        let bind_err = |source| UtpListenError { addr, source };
        let socket = UtpSocket::bind(addr, Default::default()).await.map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        Ok(Self { secured: StreamTransport::new(HOOK_NAME, identity, gate), socket, local_addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The raw uTP socket (its counters: SYNs answered and refused).
    pub fn socket(&self) -> &UtpSocket {
        &self.socket
    }

    /// Its admission of incoming connections (counts, limits), shared with the other
    /// byte-stream transport.
    pub fn secured(&self) -> &StreamTransport {
        &self.secured
    }
}

struct Acceptor(UtpSocket);

impl StreamAcceptor for Acceptor {
    type Stream = UtpStream;
    async fn next(&mut self) -> std::io::Result<(UtpStream, SocketAddr)> {
        let stream = self.0.accept().await?;
        let addr = stream.peer_addr();
        Ok((stream, addr))
    }
}

impl Hook for UtpTransport {
    fn name(&self) -> &str {
        HOOK_NAME
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.secured.shutdown().await;
            self.socket.shutdown().await;
        })
    }
}

impl Listener for UtpTransport {
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.local_addr]
    }

    fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
    ) -> BoxFuture<'_, Result<Arc<dyn TransportConnection>, TransportError>> {
        Box::pin(self.secured.dial(
            expected,
            "uTP connect",
            async move { Ok((self.socket.connect(addr).await?, addr)) },
        ))
    }

    fn start(&self, accept: Accept) {
        self.socket.listen();
        self.secured.run_accept_loop(Acceptor(self.socket.clone()), accept);
    }
}
