//! What every transport gives the node: an authenticated, encrypted, multiplexed connection to
//! a verified identity ([`TransportConnection`]), its streams ([`SendStream`], [`RecvStream`])
//! and the errors they end with. QUIC ([`super::quic`]) is the first implementation; TCP and uTP
//! implement the same traits, and the node above never learns which one carries a connection.

use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::RemoteIdentity;
use crate::error::TransportError;
pub use crate::error::{ConnectionError, StreamError};
use crate::hook::{BoxFuture, Hook};
use crate::state::path_table::Path;

/// Application error codes warren closes connections and resets streams with (on any
/// transport; QUIC carries them as its application error codes).
pub mod codes {
    /// Closed normally (shutdown, or the application closed it).
    pub const CLOSED: u32 = 0;
    /// The dialler expected another identity.
    pub const WRONG_IDENTITY: u32 = 1;
    /// The peers speak different major wire versions.
    pub const INCOMPATIBLE_VERSION: u32 = 2;
    /// The hello was malformed or did not arrive in time.
    pub const BAD_HELLO: u32 = 3;
    /// The peer broke the protocol (e.g. a second unidirectional stream).
    pub const PROTOCOL_VIOLATION: u32 = 4;
    /// Closed to make room: the node was full and the peer's address held the most
    /// connections (see `state::admission`).
    pub const EVICTED: u32 = 5;
    /// A stream header was malformed.
    pub const BAD_STREAM_HEADER: u32 = 16;
    /// A stream header did not arrive in time.
    pub const STREAM_HEADER_TIMEOUT: u32 = 17;
    /// No handler for the stream's protocol.
    pub const UNKNOWN_PROTOCOL: u32 = 18;
}

/// One connection as a transport carries it: authenticated (the peer's key was verified in the
/// handshake), encrypted, with streams multiplexed on it. The node wraps it in a
/// [`Connection`](crate::Connection) after the hello.
pub trait TransportConnection: Send + Sync + fmt::Debug + 'static {
    /// The transport's name, as its listener hook has it (`"quic"`).
    fn transport(&self) -> &'static str;

    /// Unique among the transport's live connections.
    fn id(&self) -> u64;

    /// The peer's identity, once the handshake verified it.
    fn peer_identity(&self) -> Option<RemoteIdentity>;

    /// The address the connection was dialled to or accepted from (for a relayed connection, its
    /// placeholder).
    fn remote_address(&self) -> SocketAddr;

    /// Where the connection's packets go now.
    fn path(&self) -> Path;

    /// The current round-trip time estimate.
    fn rtt(&self) -> Duration;

    /// Opens a bidirectional stream. The peer learns of it with the first data written.
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>>;

    /// The peer's next bidirectional stream.
    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>>;

    /// Opens a unidirectional stream (the hello goes on one).
    fn open_uni(&self) -> BoxFuture<'_, Result<SendStream, ConnectionError>>;

    /// The peer's next unidirectional stream.
    fn accept_uni(&self) -> BoxFuture<'_, Result<RecvStream, ConnectionError>>;

    /// The node has checked the peer's identity and hello: lift the limits an unadmitted
    /// connection has (QUIC: a few bidirectional streams, a small receive window). The default
    /// does nothing, for transports without such limits.
    fn admit(&self) {}

    /// Closes the connection with an application `code` (see [`codes`]).
    fn close(&self, code: u32, reason: &[u8]);

    /// Why it closed, or `None` while open.
    fn close_reason(&self) -> Option<ConnectionError>;

    /// Completes when the connection closes, with the reason.
    fn closed(&self) -> BoxFuture<'_, ConnectionError>;

    /// The transport's own type, for what warren does not wrap (for QUIC: `quinn::Connection`'s
    /// statistics and datagrams).
    fn as_any(&self) -> &dyn Any;
}

/// The sending half of a stream, as a transport implements it.
pub trait SendHalf: AsyncWrite + Send + Sync + Unpin + fmt::Debug + 'static {
    /// Writes from the front of `chunk` (advancing it) without copying where the transport can;
    /// ready when some of it was taken. The default copies through `poll_write`.
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        let written = ready!(Pin::new(&mut *self).poll_write(cx, chunk))?;
        let _ = chunk.split_to(written);
        Poll::Ready(Ok(()))
    }

    /// No more data: the peer reads to the end of what was written.
    fn finish(&mut self) -> Result<(), StreamError>;

    /// Abandons the stream: unsent data is dropped and the peer's reads fail with `code`.
    fn reset(&mut self, code: u32);

    /// Completes when the peer has everything or stopped reading: `Some(code)` if it stopped.
    fn stopped(&self) -> BoxFuture<'static, Option<u64>>;

    /// The transport's own type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The receiving half of a stream, as a transport implements it.
pub trait RecvHalf: AsyncRead + Send + Sync + Unpin + fmt::Debug + 'static {
    /// Reads up to `max` bytes without copying where the transport can; `None` at the end. The
    /// default copies through `poll_read`.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        let mut buf = BytesMut::zeroed(max.min(64 * 1024));
        let mut read = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut *self).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        buf.truncate(n);
        Poll::Ready(Ok(Some(buf.freeze())))
    }

    /// Tells the peer to stop sending, with `code`; what is still buffered is dropped.
    fn stop(&mut self, code: u32);

    /// The transport's own type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The sending half of a stream on any transport. `AsyncWrite`, plus chunk writes, `finish`
/// and `reset`.
#[derive(Debug)]
pub struct SendStream(Box<dyn SendHalf>);

impl SendStream {
    /// Wraps a transport's half.
    pub fn new(half: impl SendHalf) -> Self {
        Self(Box::new(half))
    }

    /// Writes all of `chunk`, without copying where the transport can (QUIC).
    pub async fn write_chunk(&mut self, mut chunk: Bytes) -> io::Result<()> {
        while !chunk.is_empty() {
            std::future::poll_fn(|cx| self.0.poll_write_chunk(cx, &mut chunk)).await?;
        }
        Ok(())
    }

    /// No more data: the peer reads to the end of what was written.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.0.finish()
    }

    /// Abandons the stream; the peer's reads fail with `code`.
    pub fn reset(&mut self, code: u32) {
        self.0.reset(code)
    }

    /// Completes when the peer has everything or stopped reading: `Some(code)` if it stopped.
    pub fn stopped(&self) -> BoxFuture<'static, Option<u64>> {
        self.0.stopped()
    }

    /// The transport's own stream (for QUIC, a `quinn::SendStream`).
    pub fn downcast_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut()
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// The receiving half of a stream on any transport. `AsyncRead`, plus chunk reads and `stop`.
#[derive(Debug)]
pub struct RecvStream(Box<dyn RecvHalf>);

impl RecvStream {
    /// Wraps a transport's half.
    pub fn new(half: impl RecvHalf) -> Self {
        Self(Box::new(half))
    }

    /// The next bytes, up to `max`, without copying where the transport can; `None` at the end.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.0.poll_read_chunk(cx, max)).await
    }

    /// Tells the peer to stop sending, with `code`.
    pub fn stop(&mut self, code: u32) {
        self.0.stop(code)
    }

    /// The transport's own stream (for QUIC, a `quinn::RecvStream`).
    pub fn downcast_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut()
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

/// A connection a transport brings in, before the node has it: what the node awaits to get the
/// connection, and then the rest of the handshake.
pub struct Incoming {
    /// Where it comes from.
    pub addr: SocketAddr,
    /// Resolves to the connection as soon as the transport can carry data on it (QUIC: 0.5-RTT,
    /// before the dialler is verified), or to why it failed.
    pub connecting: BoxFuture<'static, Result<Accepted, TransportError>>,
}

/// An incoming connection that can carry data, and the rest of its handshake.
pub struct Accepted {
    /// The connection.
    pub connection: Arc<dyn TransportConnection>,
    /// Completes when the handshake has (the peer's identity is verified then), if it has not
    /// yet.
    pub handshake: Option<BoxFuture<'static, Result<(), TransportError>>>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Where a listener hands the connections it accepts: the node's, given to
/// [`Listener::start`].
pub type Accept = Arc<dyn Fn(Incoming) + Send + Sync>;

/// A transport as the node uses it: a hook that dials when asked and hands the node what it
/// accepts.
pub trait Listener: Hook {
    /// The addresses it accepts on.
    fn local_addrs(&self) -> Vec<SocketAddr>;

    /// Dials `addr` and completes the transport's handshake. With `expected`, the handshake must
    /// check that the peer is that identity before this side reveals its own, and fail with
    /// [`TransportError::WrongIdentity`] otherwise. The node then checks the identity again and
    /// exchanges hellos.
    fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
    ) -> BoxFuture<'_, Result<Arc<dyn TransportConnection>, TransportError>>;

    /// Starts accepting: each incoming connection goes to `accept`. The node calls it once, when
    /// it registers the listener.
    fn start(&self, accept: Accept);
}
