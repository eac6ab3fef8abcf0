//! The interfaces between the node and what plugs into it: hooks (actors the node shuts down in
//! order) and discovery sources ([`Discovery`]: publish this node, resolve a peer). Transports
//! are hooks too ([`Listener`](crate::transport::Listener)). They name no node type, so
//! transports and the relay client implement them without importing the node.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A boxed, sendable future, as hooks and handlers return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identifies a registered hook; hooks are shut down in reverse order of registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookId(pub(crate) u64);

/// An actor registered with a node: discovery (mDNS, manual addresses, the bootstrap cache),
/// a relay client, or a transport.
///
/// The node calls [`Hook::shutdown`] once, when it shuts down or the hook is unregistered; the
/// returned future must finish only when every task of the hook has ended.
pub trait Hook: Send + Sync + 'static {
    /// A short name, used as the source of the peers the hook reports (`"manual"`, `"mdns"`).
    fn name(&self) -> &str;

    /// Stops the hook and waits for its tasks to end.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// This node as discovery sources publish it: its identity, the addresses it accepts on, its
/// metadata and libraries. Each source decides how much of it goes out (mDNS in ContactsOnly
/// mode, say, publishes a salted tag and nothing else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The node's identity.
    pub id: crate::RemoteIdentity,
    /// Where its listeners accept: its QUIC ones, when it has any.
    pub addrs: Vec<SocketAddr>,
    /// Its other listeners, by transport name (`"tcp"`, `"utp"`), when it also has QUIC:
    /// candidates that name their transport.
    pub transports: Vec<(&'static str, SocketAddr)>,
    /// Its metadata (name, version, ...).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The libraries it announces.
    pub libraries: Vec<uuid::Uuid>,
}

/// A discovery source: one interface for every way a node learns where its peers are and tells
/// them where it is (mDNS, manual addresses, the bootstrap cache, the relay's lookup, later a
/// DHT).
///
/// Three flows, all optional:
/// - *publish*: the node hands the source its [`Record`] when the source is registered and again
///   whenever it changes (metadata, libraries, listeners); sources that announce (mDNS, a DHT)
///   put it out, the others ignore it.
/// - *resolve*: when a peer's known addresses fail (or there are none), the node asks every
///   source for addresses to dial; sources that look up on demand (the relay, a DHT) answer,
///   the others return nothing.
/// - *push*: a source that hears of peers by itself (mDNS answers, a manual address, the cache at
///   start) tells the node with `P2P::discovered` and `P2P::expired`.
pub trait Discovery: Hook {
    /// Puts this node's record out (again); the default does nothing.
    fn publish(&self, record: &Record) {
        let _ = record;
    }

    /// Addresses to dial `remote` at, found now; empty if the source knows none. An error says
    /// why the source could not help (it is reported with the other failed attempts).
    fn resolve(&self, remote: crate::RemoteIdentity) -> BoxFuture<'_, Result<Vec<SocketAddr>, String>> {
        let _ = remote;
        Box::pin(async { Ok(Vec::new()) })
    }
}
