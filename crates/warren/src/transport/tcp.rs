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
use std::time::Duration;

use tokio::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use super::connection::{Accept, Incoming, Listener, TransportConnection};
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

/// How long the answerer of a punch waits for the offerer's first Noise message on a stream its
/// connect opened, before taking it that the offerer's listener accepted it (and dialling
/// itself).
const PUNCH_FIRST_BYTE: Duration = Duration::from_secs(2);

/// Wait after a refused connect (a RST from the peer's NAT) before the next.
const PUNCH_RETRY: Duration = Duration::from_millis(100);

/// The wait before connecting again: [`PUNCH_RETRY`] to three times it, at random. Two routers
/// that answer unsolicited SYNs with a RST let the punch through only when one side's SYN
/// arrives while the other side's own SYN is out; with a fixed period the two sides can stay
/// in step outside that window for the whole attempt (the NAT matrix's kernel pair failed so
/// once in CI), and jitter breaks the step.
fn punch_retry() -> Duration {
    let mut byte = [0u8; 1];
    // Jitter only: a failing random source means the fixed period.
    let _ = getrandom::fill(&mut byte);
    PUNCH_RETRY + PUNCH_RETRY * 2 * u32::from(byte[0]) / 255
}

/// What the answerer of a TCP hole punch makes of the stream it opened.
pub(crate) enum Punched {
    /// The offerer's Noise message came: an incoming connection, for the node to accept.
    Incoming(Incoming),
    /// Nothing came: the offerer's listener accepted the connect, so this side dialled.
    Dialled(Arc<dyn TransportConnection>),
}

impl TcpTransport {
    /// Connects to `peer` from the listener's own address and port: the NAT maps this
    /// connection as it mapped (or will map) the listener's, which is what a simultaneous open
    /// needs.
    async fn connect_from_listener(&self, peer: SocketAddr) -> std::io::Result<TcpStream> {
        let local = self.local_addr;
        let socket = reusable_socket(local)?;
        socket.bind(&local.into())?;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        let stream = socket.connect(peer).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Connects to any of `candidates` from the listener's port until `deadline` (a TCP hole
    /// punch): each candidate is tried again after a refusal or a timed-out SYN, all at once;
    /// the first to connect wins.
    pub(crate) async fn simultaneous_open(
        &self,
        candidates: &[SocketAddr],
        deadline: Instant,
    ) -> std::io::Result<(TcpStream, SocketAddr)> {
        let mut attempts = tokio::task::JoinSet::new();
        for &peer in candidates {
            let this = self.clone();
            attempts.spawn(async move {
                let mut last = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
                while Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, this.connect_from_listener(peer)).await {
                        Ok(Ok(stream)) => return Ok((stream, peer)),
                        Ok(Err(error)) => last = error,
                        Err(_) => break,
                    }
                    tokio::time::sleep(punch_retry()).await;
                }
                Err(last)
            });
        }
        let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no candidates");
        while let Some(joined) = attempts.join_next().await {
            match joined {
                Ok(Ok(connected)) => return Ok(connected),
                Ok(Err(error)) => last = error,
                Err(error) => last = std::io::Error::other(error),
            }
        }
        Err(last)
    }

    /// The offerer's side of a punch: a simultaneous open to the answerer's `candidates`, then
    /// Noise as the dialler.
    pub(crate) async fn dial_punched(
        &self,
        candidates: Vec<SocketAddr>,
        deadline: Instant,
        expected: RemoteIdentity,
    ) -> Result<Arc<dyn TransportConnection>, TransportError> {
        let opened = self.simultaneous_open(&candidates, deadline);
        self.secured.dial(Some(expected), "TCP simultaneous open", opened).await
    }

    /// The answerer's side, on the stream its simultaneous open gave, first step: did the
    /// offerer start its Noise handshake on it (its first message came within 2 s)? If not, the
    /// offerer's listener took our SYN as an ordinary connection, and this side must dial.
    pub(crate) async fn offerer_spoke(stream: &TcpStream) -> Result<bool, TransportError> {
        let mut byte = [0u8];
        match tokio::time::timeout(PUNCH_FIRST_BYTE, stream.peek(&mut byte)).await {
            Ok(Ok(1..)) => Ok(true),
            Ok(Ok(_)) | Ok(Err(_)) => Err(TransportError::Connection(crate::error::ConnectionError::Transport(
                "the punched TCP connection closed".into(),
            ))),
            Err(_) => Ok(false),
        }
    }

    /// The answerer's side, second step: accept the offerer's handshake (`spoke`) or dial over
    /// the stream.
    pub(crate) async fn answer_punched(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        expected: RemoteIdentity,
        spoke: bool,
    ) -> Result<Punched, TransportError> {
        if spoke {
            return self.secured.incoming(stream, addr).map(Punched::Incoming).ok_or_else(|| {
                TransportError::Connection(crate::error::ConnectionError::Transport("admission refused".into()))
            });
        }
        let dialled = self.secured.dial(Some(expected), "TCP simultaneous open", async { Ok((stream, addr)) });
        dialled.await.map(Punched::Dialled)
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
        Box::pin(self.secured.dial(expected, "TCP connect", async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok((stream, addr))
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
