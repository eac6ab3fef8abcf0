//! Errors of the node's operations, one enum per operation.

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
    #[error("could not reach {remote}: {}", attempts.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable {
        /// The peer.
        remote: RemoteIdentity,
        /// Each address tried and why it failed.
        attempts: Vec<(SocketAddr, String)>,
    },
    /// The transport could not connect or the handshake failed.
    #[error("connecting to {addr} failed: {reason}")]
    Transport {
        /// The address dialled.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The peer speaks another major wire version.
    #[error("incompatible wire version: we speak {ours}.x, the peer speaks {theirs}.x")]
    IncompatibleVersion {
        /// Our major version.
        ours: u16,
        /// The peer's major version.
        theirs: u16,
    },
    /// The peer's hello could not be read.
    #[error("hello failed: {0}")]
    Hello(String),
    /// The peer has no handler for the protocol.
    #[error("the peer does not speak protocol {protocol:?}")]
    UnknownProtocol {
        /// The protocol asked for.
        protocol: String,
    },
    /// The protocol name is not valid on the wire.
    #[error("invalid protocol name: {0}")]
    InvalidProtocol(WireError),
    /// Opening the stream failed (the connection closed meanwhile, or the peer answered
    /// nonsense).
    #[error("opening a stream failed: {0}")]
    Stream(String),
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
