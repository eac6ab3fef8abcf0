//! The interfaces between the node and what plugs into it: hooks (actors the node shuts down in
//! order) and rendezvous points (ways to reach a peer with no known address). Transports are
//! hooks too ([`Listener`](crate::transport::Listener)). They name no node type, so transports
//! and the relay client implement them without importing the node.

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

/// Finds a path to a peer through a rendezvous point (today: the relay this node is registered
/// with), for peers with no known address or none that answers.
pub trait Rendezvous: Send + Sync + 'static {
    /// The address to dial to reach `remote` through the rendezvous point: `Ok(None)` if there is
    /// none right now, `Err` with the reason if it does not know `remote`.
    fn resolve(&self, remote: crate::RemoteIdentity) -> BoxFuture<'_, Result<Option<SocketAddr>, String>>;
}
