//! An authenticated connection to a peer, and the protocol streams opened on it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::RemoteIdentity;
use crate::error::{ConnectError, ConnectionError, StreamError};
use crate::transport::paths::Path;
use crate::transport::quic::QuicConnection;
use crate::transport::{RecvStream, SendStream, TransportConnection};
use crate::wire::{self, Hello};

pub use crate::transport::connection::codes;

/// How long a new stream may take to send its header before it is reset: long enough for a slow
/// link, short enough that a peer opening idle streams cannot hold slots for long.
pub const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The remote dialled us.
    Inbound,
    /// We dialled the remote.
    Outbound,
}

/// A live, mutually authenticated connection to a peer, after the hello, on whichever transport
/// carries it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    pub(crate) inner: Arc<dyn TransportConnection>,
    pub(crate) remote: RemoteIdentity,
    pub(crate) direction: Direction,
    pub(crate) hello: Arc<Hello>,
    /// The path now, and each change (updated by the node as the transport reports them).
    pub(crate) path: Arc<tokio::sync::watch::Sender<Path>>,
}

impl Connection {
    /// The peer's verified identity.
    pub fn remote(&self) -> RemoteIdentity {
        self.remote
    }

    /// The peer's address on this connection: for a connection through a relay, a placeholder
    /// in `240.0.0.0/8` that stays the same when the path changes (see [`Connection::path`]).
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Where the connection's packets go now: straight to the peer, or through a relay.
    pub fn path(&self) -> Path {
        self.inner.path()
    }

    /// The path now and each change after it: `borrow()` for the current value,
    /// `changed().await` for the next (a relayed connection turning direct after a hole punch,
    /// or handed back to the relay when its direct path went silent).
    pub fn watch_path(&self) -> tokio::sync::watch::Receiver<Path> {
        self.path.subscribe()
    }

    /// This connection's id, unique among the node's connections while it lives (events such as
    /// `PathChanged` name it).
    pub fn id(&self) -> u64 {
        self.inner.id()
    }

    /// The transport that carries it (`"quic"`).
    pub fn transport_name(&self) -> &'static str {
        self.inner.transport()
    }

    /// Who dialled.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The metadata the peer sent in its hello.
    pub fn remote_metadata(&self) -> &BTreeMap<String, String> {
        &self.hello.metadata
    }

    /// The protocols the peer had handlers for when it sent its hello.
    pub fn remote_protocols(&self) -> &[String] {
        &self.hello.protocols
    }

    /// The peer's wire version, as `(major, minor)`.
    pub fn remote_wire_version(&self) -> (u16, u16) {
        (self.hello.major, self.hello.minor)
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.inner.rtt()
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.inner.close_reason()
    }

    /// Completes when the connection closes, with the reason.
    pub async fn closed(&self) -> ConnectionError {
        self.inner.closed().await
    }

    /// Closes the connection; open streams fail.
    pub fn close(&self) {
        self.inner.close(codes::CLOSED, b"closed");
    }

    /// The transport's connection underneath.
    pub fn transport(&self) -> &dyn TransportConnection {
        &*self.inner
    }

    /// The QUIC connection underneath, if QUIC carries this one, for what warren does not wrap
    /// (datagrams, statistics). Streams opened on it directly bypass protocol routing: the peer
    /// will treat their first bytes as a stream header.
    pub fn quic(&self) -> Option<&quinn::Connection> {
        self.inner.as_any().downcast_ref::<QuicConnection>().map(QuicConnection::quinn)
    }

    /// Opens a stream for `protocol`. No round trip: the header goes out with the first data.
    /// If the peer has no handler for `protocol`, the stream's first read or write fails with an
    /// [`io::Error`] wrapping [`ConnectError::UnknownProtocol`] (on the raw halves of
    /// [`Stream::into_split`], with [`StreamError::Reset`] or [`StreamError::Stopped`] of
    /// [`codes::UNKNOWN_PROTOCOL`]).
    pub async fn open_stream(&self, protocol: &str) -> Result<Stream, ConnectError> {
        let header = wire::encode_stream_header(protocol).map_err(ConnectError::InvalidProtocol)?;
        let (mut send, recv) = self.inner.open_bi().await.map_err(ConnectError::Stream)?;
        send.write_all(&header).await.map_err(|e| match StreamError::of(&e) {
            Some(StreamError::Connection(lost)) => ConnectError::Stream(lost.clone()),
            _ => ConnectError::Stream(ConnectionError::LocallyClosed),
        })?;
        Ok(Stream::new(self.remote, protocol.into(), send, recv))
    }
}

/// A bi-directional stream of one protocol with a peer. Reads and writes go straight to the
/// transport; use [`Stream::into_split`] to read and write from different tasks. A peer that
/// does not speak the protocol makes reads and writes fail with an [`io::Error`] of kind
/// [`io::ErrorKind::Unsupported`] wrapping [`ConnectError::UnknownProtocol`].
#[derive(Debug)]
pub struct Stream {
    remote: RemoteIdentity,
    protocol: Arc<str>,
    send: SendStream,
    recv: RecvStream,
    /// The peer's refusal was seen on one half: both fail with it from then on (the reset of
    /// one half and the stop of the other may arrive apart).
    refused: bool,
}

impl Stream {
    pub(crate) fn new(remote: RemoteIdentity, protocol: Arc<str>, send: SendStream, recv: RecvStream) -> Self {
        Self { remote, protocol, send, recv, refused: false }
    }

    /// The peer at the other end (verified).
    pub fn remote(&self) -> RemoteIdentity {
        self.remote
    }

    /// The protocol this stream speaks.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Signals that nothing more will be written. Data already written is still delivered.
    pub fn finish(&mut self) -> io::Result<()> {
        self.send.finish().map_err(StreamError::into_io)
    }

    /// Splits into the send and receive halves.
    pub fn into_split(self) -> (SendStream, RecvStream) {
        (self.send, self.recv)
    }

    /// The send half, for zero-copy writes of `Bytes` chunks ([`SendStream::write_chunk`]).
    pub fn send_mut(&mut self) -> &mut SendStream {
        &mut self.send
    }

    /// The receive half, for zero-copy chunk reads ([`RecvStream::read_chunk`]).
    pub fn recv_mut(&mut self) -> &mut RecvStream {
        &mut self.recv
    }
}

impl Stream {
    /// Turns "reset/stopped with UNKNOWN_PROTOCOL" into an error that says so, and remembers it.
    fn explain(&mut self, error: io::Error) -> io::Error {
        let unknown = u64::from(codes::UNKNOWN_PROTOCOL);
        if matches!(StreamError::of(&error), Some(StreamError::Reset(c) | StreamError::Stopped(c)) if *c == unknown) {
            self.refused = true;
            return self.refusal();
        }
        error
    }

    fn refusal(&self) -> io::Error {
        let refused = ConnectError::UnknownProtocol { protocol: self.protocol.to_string() };
        io::Error::new(io::ErrorKind::Unsupported, refused)
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.refused {
            return Poll::Ready(Err(self.refusal()));
        }
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf).map_err(|e| self.explain(e))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.refused {
            return Poll::Ready(Err(self.refusal()));
        }
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf).map_err(|e| self.explain(e))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx).map_err(|e| self.explain(e))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx).map_err(|e| self.explain(e))
    }
}
