//! What a [`P2P`](crate::P2P) tells its subscribers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::RemoteIdentity;
pub use crate::connection::Direction;
use crate::transport::paths::Path;

/// Something that happened on a node. Serialises to JSON with an `event` tag, one object per
/// event (`warren node --json` prints them).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event")]
#[non_exhaustive]
pub enum Event {
    /// A listener hook is accepting connections on these addresses.
    ListenerStarted {
        /// The hook's name.
        hook: String,
        /// Addresses it listens on.
        addrs: Vec<SocketAddr>,
    },
    /// A listener hook stopped.
    ListenerStopped {
        /// The hook's name.
        hook: String,
    },
    /// A discovery source learned of a peer or of something new about it.
    PeerDiscovered {
        /// The peer.
        remote: RemoteIdentity,
        /// The source (hook name) that reported it.
        source: String,
        /// Every address now known for the peer, from all sources.
        addrs: Vec<SocketAddr>,
        /// The metadata the source reported.
        metadata: BTreeMap<String, String>,
    },
    /// A discovery source no longer vouches for a peer. Addresses other sources still vouch
    /// for are kept.
    PeerExpired {
        /// The peer.
        remote: RemoteIdentity,
        /// The source that dropped it.
        source: String,
        /// Addresses still known from other sources.
        remaining_addrs: Vec<SocketAddr>,
    },
    /// The first connection to a peer was established (identity verified, hello exchanged).
    PeerConnected {
        /// The peer.
        remote: RemoteIdentity,
        /// The peer's address on this connection (a placeholder in `240.0.0.0/8` for a
        /// connection through a relay; `path` says where packets really go).
        addr: SocketAddr,
        /// The path the connection's packets take now.
        path: Path,
        /// The transport that carries it (`"quic"`, `"tcp"`, `"utp"`).
        transport: &'static str,
        /// Who dialled.
        direction: Direction,
        /// The metadata the peer sent in its hello.
        metadata: BTreeMap<String, String>,
    },
    /// A connection's packets to a peer took another path (a hole punch succeeded, or a
    /// silent direct path was given up for the relay, or it answered again).
    PathChanged {
        /// The peer.
        remote: RemoteIdentity,
        /// The connection ([`Connection::id`](crate::Connection::id)).
        connection: u64,
        /// The path now.
        path: Path,
    },
    /// A hole-punching attempt with a peer ended.
    HolePunch {
        /// The peer.
        remote: RemoteIdentity,
        /// The address that answered, or `None` if none did (the connection stays relayed).
        direct: Option<SocketAddr>,
        /// Rounds of punches sent (see `warren::node::punch::SCHEDULE`).
        rounds: u32,
        /// Milliseconds from the start of signalling to the end of the attempt.
        elapsed_ms: u64,
        /// How this side found the path (`punched`, `predicted`, `birthday`, `port-mapping`);
        /// `None` if it did not (or the peer found it first).
        method: Option<crate::state::punch::Method>,
        /// Datagrams this side sent for the attempt.
        packets: u32,
        /// The plan the attempt followed (from both sides' NATs).
        plan: String,
    },
    /// A TCP hole punch this node offered ([`P2P::punch_tcp`](crate::P2P::punch_tcp), or the
    /// automatic one after a failed UDP punch) ended.
    TcpHolePunch {
        /// The peer.
        remote: RemoteIdentity,
        /// The peer's address on the direct TCP connection, or `None` if there is none.
        direct: Option<SocketAddr>,
        /// Milliseconds from the offer to the end.
        elapsed_ms: u64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// This node registered with a relay.
    RelayConnected {
        /// The relay.
        relay: RemoteIdentity,
        /// Its address.
        addr: SocketAddr,
        /// This node's address as the relay sees it (its reflexive address).
        observed: SocketAddr,
    },
    /// The relay's two ports told what kind of NAT this node is behind (RFC 5780's mapping
    /// test; see [`crate::state::nat`]); hole punching picks its method from both sides' kinds.
    NatClassified {
        /// `open`, `easy`, `hard-sequential`, `hard-random` or `unknown`.
        nat: crate::state::nat::NatType,
        /// Where the relay's main port and its second port saw this node.
        observed: Vec<SocketAddr>,
    },
    /// This node lost (or was refused by) its relay; it reconnects with backoff unless refused.
    RelayDisconnected {
        /// The relay.
        relay: RemoteIdentity,
        /// Why.
        reason: String,
    },
    /// The gateway forwards an external port to this node's socket (PCP, NAT-PMP or UPnP IGD;
    /// see [`crate::portmap`]); peers get the address as a hole-punching candidate.
    PortMapped {
        /// `PCP`, `NAT-PMP` or `UPnP`.
        protocol: String,
        /// The external address and port.
        external: SocketAddr,
        /// Seconds it lasts (renewed at half; 0: until removed).
        lifetime_s: u64,
    },
    /// No port mapping (no gateway answered, it refused, or a renewal failed).
    PortMapUnavailable {
        /// Why.
        reason: String,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        remote: RemoteIdentity,
        /// Why the connection closed.
        reason: String,
    },
    /// An incoming connection was refused (failed handshake, bad hello, wrong version).
    IncomingRejected {
        /// Where it came from.
        addr: SocketAddr,
        /// Why it was refused.
        reason: String,
    },
    /// This node's own metadata changed.
    MetadataModified {
        /// The metadata as it is now.
        metadata: BTreeMap<String, String>,
    },
    /// This node's set of active libraries changed (`P2P::add_library`, `remove_library`).
    LibrariesModified {
        /// The libraries as they are now.
        libraries: Vec<uuid::Uuid>,
    },
    /// The node shut down; no event follows.
    Shutdown,
}
