//! Errors of the node's operations, one enum per operation.

use std::io;
use std::net::SocketAddr;

use crate::RemoteIdentity;
use crate::wire::WireError;

/// Why [`P2P::connect`](crate::P2P::connect), [`P2P::connection`](crate::P2P::connection) or
/// [`P2P::dial`](crate::P2P::dial) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A node answered, but with another identity than the one dialled.
    #[error("wrong identity: dialled {expected} but {got} answered")]
    WrongIdentity {
        /// The identity that was dialled.
        expected: RemoteIdentity,
        /// The identity that answered.
        got: RemoteIdentity,
    },
    /// Nothing is known about where the peer is.
    #[error("no known address for {remote}")]
    NoAddress {
        /// The peer.
        remote: RemoteIdentity,
    },
    /// Every known address was tried and failed.
    #[error("could not reach {remote}: {}", attempts.iter().map(|(a, e)| format!("{}: {e}", where_to(a))).collect::<Vec<_>>().join("; "))]
    Unreachable {
        /// The peer.
        remote: RemoteIdentity,
        /// Each address tried and why it failed.
        attempts: Vec<(SocketAddr, ConnectError)>,
    },
    /// The transport could not connect or the handshake failed.
    #[error("connecting {} failed: {error}", towards(addr))]
    Transport {
        /// The address dialled.
        addr: SocketAddr,
        /// What went wrong.
        error: TransportError,
    },
    /// The peer speaks another major wire version.
    #[error("incompatible wire version: we speak {ours}.x, the peer speaks {theirs}.x")]
    IncompatibleVersion {
        /// Our major version.
        ours: u16,
        /// The peer's major version.
        theirs: u16,
    },
    /// The hello exchange failed.
    #[error("hello failed: {0}")]
    Hello(HelloError),
    /// The peer has no handler for the protocol.
    #[error("the peer does not speak protocol {protocol:?}")]
    UnknownProtocol {
        /// The protocol asked for.
        protocol: String,
    },
    /// The protocol name is not valid on the wire.
    #[error("invalid protocol name: {0}")]
    InvalidProtocol(WireError),
    /// Opening the stream failed (the connection closed meanwhile).
    #[error("opening a stream failed: {0}")]
    Stream(ConnectionError),
    /// The node has no listener to dial with.
    #[error("no transport to dial with: spawn a listener first")]
    NoTransport,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Why a protocol handler could not be registered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The name is not valid on the wire.
    #[error("invalid protocol name: {0}")]
    InvalidName(WireError),
    /// A handler for the name already exists.
    #[error("a handler for {0:?} is already registered")]
    Duplicate(String),
}

/// Why a transport could not connect.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No handshake within the time given.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The transport cannot dial that address (say, an IPv6 address from an IPv4 socket).
    #[error("cannot dial {0} from this transport")]
    InvalidAddress(SocketAddr),
    /// The connection could not be started for another reason of the transport's.
    #[error("the connection could not be started: {0}")]
    Start(String),
    /// The handshake failed or the connection closed during it (refused, wrong key, reset).
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The transport was shut down.
    #[error("the transport is shut down")]
    ShutDown,
    /// Another identity answered; the handshake was aborted before this side's identity went
    /// out.
    #[error("expected identity {expected}, the peer is {got}")]
    WrongIdentity {
        /// The identity dialled.
        expected: RemoteIdentity,
        /// The identity that answered.
        got: RemoteIdentity,
    },
    /// The rendezvous point (the relay) could not help: it does not know the peer, or could
    /// not be asked.
    #[error("rendezvous: {0}")]
    Rendezvous(String),
}

/// Why the hello exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The peer presented no identity in the handshake.
    #[error("the peer presented no identity")]
    NoIdentity,
    /// This node is in ContactsOnly mode and the peer is not a contact.
    #[error("the peer is not a contact (contacts only)")]
    NotAContact,
    /// No hello within the time given.
    #[error("no hello within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection failed during the exchange.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A hello stream could not be written.
    #[error("sending the hello: {0}")]
    Write(String),
    /// The peer's hello broke the wire format (or ours could not be encoded).
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Why a connection closed (or could not carry on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// This side closed it.
    #[error("closed by this side")]
    LocallyClosed,
    /// The peer closed it, with an application code (see [`crate::connection::codes`]).
    #[error("closed by the peer (code {code}): {reason}")]
    Closed {
        /// The peer's code.
        code: u64,
        /// The peer's reason, lossily decoded.
        reason: String,
    },
    /// Nothing was heard from the peer for the idle timeout.
    #[error("timed out")]
    TimedOut,
    /// The peer lost the connection's state (it restarted) and reset it.
    #[error("reset by the peer")]
    Reset,
    /// The transport failed: a handshake refused, a protocol violation, an incompatible
    /// version of the transport itself.
    #[error("{0}")]
    Transport(String),
}

impl ConnectionError {
    /// The peer's application code, if the peer closed the connection.
    pub fn peer_code(&self) -> Option<u64> {
        match self {
            ConnectionError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Why a stream's read or write failed; carried inside the [`io::Error`]s of [`SendStream`](crate::transport::SendStream)
/// and [`RecvStream`](crate::transport::RecvStream) (`error.get_ref()` and downcast, or [`StreamError::of`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer reset the stream: it will send nothing more.
    #[error("the peer reset the stream (code {0})")]
    Reset(u64),
    /// The peer stopped reading: nothing more written will be read.
    #[error("the peer stopped reading the stream (code {0})")]
    Stopped(u64),
    /// The stream was already finished or reset on this side.
    #[error("the stream is closed on this side")]
    ClosedLocally,
    /// The connection closed.
    #[error(transparent)]
    Connection(ConnectionError),
}

impl StreamError {
    /// The stream error inside `error`, if it carries one.
    pub fn of(error: &io::Error) -> Option<&StreamError> {
        error.get_ref()?.downcast_ref::<StreamError>()
    }

    /// This error as an [`io::Error`] of the matching kind.
    pub fn into_io(self) -> io::Error {
        let kind = match self {
            StreamError::Reset(_) => io::ErrorKind::ConnectionReset,
            StreamError::Stopped(_) | StreamError::ClosedLocally => io::ErrorKind::BrokenPipe,
            StreamError::Connection(ConnectionError::TimedOut) => io::ErrorKind::TimedOut,
            StreamError::Connection(_) => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, self)
    }
}

/// How an address dialled reads in an error: a relay placeholder is "through the relay", not
/// the reserved address that stands for it.
fn towards(addr: &SocketAddr) -> String {
    if crate::state::path_table::is_placeholder(*addr) { "through the relay".into() } else { format!("to {addr}") }
}

fn where_to(addr: &SocketAddr) -> String {
    if crate::state::path_table::is_placeholder(*addr) { "through the relay".into() } else { addr.to_string() }
}
