//! The node: identity, peers, metadata, event bus, hooks, protocol routing and shutdown.
//!
//! [`P2P`] does no networking of its own: listener hooks (such as
//! [`QuicTransport`](crate::transport::quic::QuicTransport)) carry connections, discovery hooks
//! feed the peer table, and `P2P` checks identities, exchanges hellos, routes streams to
//! protocol handlers and tells subscribers what happened.

mod event;
mod metadata;
mod peer;
pub mod punch;
mod tcp_punch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::event::{Direction, Event};
pub use self::metadata::{DEVICE_MODEL, MetadataGuard, NAME, OS, VERSION, device_info};
use self::peer::PeerTable;
pub use self::peer::{ConnectionState, PeerInfo};
use crate::connection::{Connection, STREAM_HEADER_TIMEOUT, Stream, codes};
use crate::error::{ConnectError, HelloError, RegisterError, TransportError};
pub use crate::hook::{BoxFuture, Discovery, Hook, HookId, Record};
use crate::identity::{Identity, RemoteIdentity};
use crate::relay::client::{RelayClient, RelayConfig, RelayEvent};
use crate::transport::paths::{Path, PathEvent, Paths};
use crate::transport::quic::{ListenError, QuicTransport};
use crate::transport::tcp::{TcpListenError, TcpTransport};
use crate::transport::utp_listener::{UtpListenError, UtpTransport};
pub use crate::transport::{Incoming, Listener};
use crate::transport::{RecvStream, SendStream, TransportConnection};
use crate::wire::{self, Hello, WIRE_VERSION_MAJOR, WIRE_VERSION_MINOR, WireError};

/// Events kept for each subscriber. A subscriber that falls further behind loses the oldest
/// events (its next `recv` reports how many, as `RecvError::Lagged`) and never slows the node.
pub const EVENT_BUFFER: usize = 1024;

pub use crate::transport::quic::HANDSHAKE_TIMEOUT;

/// How long a known address may take to answer when a relay can carry the connection instead.
pub const DIRECT_TIMEOUT_WITH_RELAY: Duration = Duration::from_secs(2);

/// The error for failed attempts to reach `remote`: none (no address), the one error, or all.
fn unreachable(remote: RemoteIdentity, mut attempts: Vec<(SocketAddr, ConnectError)>) -> ConnectError {
    match attempts.len() {
        0 => ConnectError::NoAddress { remote },
        1 => attempts.pop().expect("one attempt").1,
        _ => ConnectError::Unreachable { remote, attempts },
    }
}

/// The static name of a transport a record may name (its candidates'), if it is one.
fn transport_name(name: &str) -> Option<&'static str> {
    [crate::transport::tcp::HOOK_NAME, crate::transport::utp_listener::HOOK_NAME].into_iter().find(|n| *n == name)
}

/// A candidate to race: a transport by name (None: the listener for the address, QUIC when
/// there is one) and the address.
type Target = (Option<&'static str>, SocketAddr);

/// When a peer has several known addresses, each dial starts this long after the previous one
/// (happy eyeballs, RFC 8305's 250 ms), all under one deadline.
pub const DIAL_STAGGER: Duration = Duration::from_millis(250);

/// How long the hello exchange may take after the handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one identity keeps with this node at once; a newer one closes the oldest.
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;

/// How long [`P2P::shutdown`] waits for each hook, and then for the node's own tasks. A hook
/// that takes longer is logged and left behind so that shutdown always returns.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Handles the incoming streams of one protocol.
///
/// Any `Fn(Stream) -> impl Future<Output = ()>` is a handler. Each stream runs in its own task;
/// the task is cancelled when the node shuts down.
pub trait ProtocolHandler: Send + Sync + 'static {
    /// Serves one stream.
    fn handle(&self, stream: Stream) -> BoxFuture<'static, ()>;
}

impl<F, Fut> ProtocolHandler for F
where
    F: Fn(Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, stream: Stream) -> BoxFuture<'static, ()> {
        Box::pin(self(stream))
    }
}

/// A warren node. Cheap to clone: every clone is the same node.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use warren::{Identity, P2P, transport::quic::QuicTransport};
/// let p2p = P2P::new("my-app", Identity::generate());
/// p2p.listen_quic("0.0.0.0:0".parse()?).await?;
/// println!("I am {}", p2p.id());
/// p2p.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct P2P {
    inner: Arc<Inner>,
}

/// A [`P2P`] handle that does not keep the node alive.
#[derive(Clone)]
pub struct WeakP2P(std::sync::Weak<Inner>);

impl WeakP2P {
    /// The node, if it still exists.
    pub fn upgrade(&self) -> Option<P2P> {
        self.0.upgrade().map(|inner| P2P { inner })
    }
}

struct Registered {
    id: HookId,
    hook: Arc<dyn Hook>,
    listener: Option<Arc<dyn Listener>>,
    discovery: Option<Arc<dyn Discovery>>,
}

struct Inner {
    app_name: String,
    identity: Arc<Identity>,
    remote_identity: RemoteIdentity,
    metadata: RwLock<BTreeMap<String, String>>,
    peers: Mutex<PeerTable>,
    connections: Mutex<HashMap<RemoteIdentity, Vec<Connection>>>,
    /// Woken whenever a connection joins `connections`.
    connection_added: tokio::sync::Notify,
    events: broadcast::Sender<Event>,
    libraries: Mutex<BTreeSet<uuid::Uuid>>,
    contacts: Mutex<BTreeSet<RemoteIdentity>>,
    private_metadata: std::sync::atomic::AtomicBool,
    /// ContactsOnly's handshake gate, shared with the QUIC transports.
    gate: Arc<crate::transport::gate::ContactGate>,
    hooks: Mutex<Vec<Registered>>,
    next_hook: Mutex<u64>,
    protocols: RwLock<BTreeMap<String, Arc<dyn ProtocolHandler>>>,
    dialing: tokio::sync::Mutex<HashMap<RemoteIdentity, Arc<tokio::sync::Mutex<()>>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// The path table relaying and hole punching use: the first QUIC transport's, or the one
    /// given to `add_relay`.
    paths: RwLock<Option<std::sync::Weak<Paths>>>,
    /// Whether the task that republishes the record on changes runs.
    publishing: std::sync::atomic::AtomicBool,
    attempts: Mutex<punch::Attempts>,
    relay: Mutex<Option<RelayClient>>,
    /// The first TCP listener (where TCP hole punches start from), and when each peer last
    /// asked for one.
    tcp: std::sync::OnceLock<TcpTransport>,
    tcp_punches: Mutex<HashMap<RemoteIdentity, std::time::Instant>>,
    /// Protocols whose streams [`P2P::connect`] sends as background traffic.
    background: RwLock<BTreeSet<String>>,
}

impl std::fmt::Debug for P2P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2P")
            .field("app_name", &self.inner.app_name)
            .field("identity", &self.inner.remote_identity)
            .finish()
    }
}

impl P2P {
    /// Creates a node named `app_name` (used by discovery, e.g. `_warren._udp`) with `identity`.
    /// Its metadata starts with the host name and the warren version; the operating system and
    /// device model are sent only if the application adds them ([`device_info`]). It
    /// has no transport until a listener hook is spawned.
    pub fn new(app_name: impl Into<String>, identity: Identity) -> Self {
        let remote_identity = identity.to_remote_identity();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let identity = Arc::new(identity);
        Self {
            inner: Arc::new(Inner {
                app_name: app_name.into(),
                gate: Arc::new(crate::transport::gate::ContactGate::new(identity.clone())),
                identity,
                remote_identity,
                metadata: RwLock::new(metadata::defaults()),
                peers: Mutex::default(),
                connections: Mutex::default(),
                connection_added: tokio::sync::Notify::new(),
                events,
                libraries: Mutex::default(),
                contacts: Mutex::default(),
                private_metadata: std::sync::atomic::AtomicBool::new(false),
                hooks: Mutex::default(),
                next_hook: Mutex::new(0),
                protocols: RwLock::default(),
                dialing: tokio::sync::Mutex::default(),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
                paths: RwLock::new(None),
                publishing: std::sync::atomic::AtomicBool::new(false),
                attempts: Mutex::default(),
                relay: Mutex::new(None),
                tcp: std::sync::OnceLock::new(),
                tcp_punches: Mutex::default(),
                background: RwLock::default(),
            }),
        }
    }

    /// The application name given to [`P2P::new`].
    pub fn app_name(&self) -> &str {
        &self.inner.app_name
    }

    /// This node's secret identity (transports need it for their handshakes).
    pub fn identity(&self) -> &Arc<Identity> {
        &self.inner.identity
    }

    /// This node's own identity: the public key peers dial it by (its secret half is
    /// [`P2P::identity`]).
    pub fn id(&self) -> RemoteIdentity {
        self.inner.remote_identity
    }

    /// Subscribes to the node's events from now on. See [`EVENT_BUFFER`] for what a slow
    /// subscriber loses.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Listens for QUIC on `addr` (port 0 picks a free port): binds the node's UDP socket,
    /// registers the transport as a listener (dials go through it too) and starts accepting.
    /// Call it once per socket; several (an IPv4 and an IPv6 one, say) are fine.
    pub async fn listen_quic(&self, addr: SocketAddr) -> Result<QuicTransport, ListenError> {
        let node = self.downgrade();
        let on_path = Box::new(move |event| {
            if let (PathEvent::Changed { remote, path }, Some(p2p)) = (event, node.upgrade()) {
                p2p.path_changed(remote, path);
            }
        });
        let quic = QuicTransport::bind(self.identity(), self.inner.gate.clone(), addr, &self.inner.tasks, on_path)?;
        self.set_paths(quic.paths(), false);
        self.spawn(Paths::drive_timers(Arc::downgrade(quic.paths())));
        self.register_listener(Arc::new(quic.clone()));
        Ok(quic)
    }

    /// Listens for TCP on `addr` (port 0 picks a free port): connections are authenticated with
    /// Noise and multiplexed ([`crate::transport::tcp`]). Registers the transport as a listener;
    /// [`P2P::dial_via`] dials through it.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<TcpTransport, TcpListenError> {
        let tcp = TcpTransport::bind(self.identity(), self.inner.gate.clone(), addr)?;
        self.register_listener(Arc::new(tcp.clone()));
        if self.inner.tcp.set(tcp.clone()).is_ok() {
            self.serve_tcp_punching();
        }
        Ok(tcp)
    }

    /// Listens for uTP on `addr` (port 0 picks a free port; a UDP socket of its own): Noise and
    /// the multiplexer as on TCP, with LEDBAT's congestion control that yields to other traffic
    /// ([`crate::transport::utp_listener`]). Registers the transport as a listener;
    /// [`P2P::dial_via`] dials through it.
    pub async fn listen_utp(&self, addr: SocketAddr) -> Result<UtpTransport, UtpListenError> {
        let utp = UtpTransport::bind(self.identity(), self.inner.gate.clone(), addr).await?;
        self.register_listener(Arc::new(utp.clone()));
        Ok(utp)
    }

    /// Registers with the relay in `config` from `quic`'s socket and keeps the registration:
    /// peers registered there reach this node by identity alone (relayed, then punched
    /// direct), and this node reaches them. Sends `RelayConnected` / `RelayDisconnected`.
    pub fn add_relay(&self, quic: &QuicTransport, config: RelayConfig) -> RelayClient {
        let node = self.downgrade();
        let on_event = Box::new(move |event| {
            let Some(p2p) = node.upgrade() else { return };
            p2p.emit(match event {
                RelayEvent::Connected { relay, addr, observed } => Event::RelayConnected { relay, addr, observed },
                RelayEvent::Disconnected { relay, reason } => Event::RelayDisconnected { relay, reason },
                RelayEvent::Nat { nat, observed } => Event::NatClassified { nat, observed },
            });
        });
        // Relaying and punching happen on this transport's socket.
        self.set_paths(quic.paths(), true);
        let client = RelayClient::start(self.identity().clone(), quic, config, &self.inner.tasks, on_event);
        self.serve_hole_punching();
        self.register_discovery(Arc::new(client.clone()));
        *self.inner.relay.lock().expect("relay lock poisoned") = Some(client.clone());
        client
    }

    /// Asks the gateway to forward an external UDP port to `quic`'s socket (PCP, NAT-PMP or
    /// UPnP IGD, see [`crate::portmap`]), keeps the mapping renewed, offers its address to
    /// peers as a hole-punching candidate, and deletes it at shutdown. Sends `PortMapped` /
    /// `PortMapUnavailable`.
    pub fn add_port_mapping(
        &self,
        quic: &QuicTransport,
        config: crate::portmap::PortMapConfig,
    ) -> crate::portmap::PortMapping {
        use crate::portmap::PortMapStatus;
        let node = self.downgrade();
        let on_status = Box::new(move |status: &PortMapStatus| {
            let Some(p2p) = node.upgrade() else { return };
            match status {
                PortMapStatus::Mapped { mapping, .. } => p2p.emit(Event::PortMapped {
                    protocol: mapping.protocol.to_string(),
                    external: SocketAddr::V4(mapping.external),
                    lifetime_s: mapping.lifetime.as_secs(),
                }),
                PortMapStatus::Unavailable(reason) => p2p.emit(Event::PortMapUnavailable { reason: reason.clone() }),
                PortMapStatus::Searching | PortMapStatus::Removed => {}
            }
        });
        crate::portmap::PortMapping::start(
            quic.paths().clone(),
            config,
            &self.inner.tasks,
            self.inner.cancel.child_token(),
            on_status,
        )
    }

    /// The relay client, if the node was given a relay: its registration now and each change
    /// ([`RelayClient::watch_status`]), its observed address.
    pub fn relay(&self) -> Option<RelayClient> {
        self.inner.relay.lock().expect("relay lock poisoned").clone()
    }

    /// The path table moved `remote`'s packets to `path`: each connection through its
    /// placeholder says so.
    fn path_changed(&self, remote: RemoteIdentity, path: Path) {
        let affected: Vec<Connection> = self
            .inner
            .connections
            .lock()
            .expect("connection lock poisoned")
            .get(&remote)
            .into_iter()
            .flatten()
            .filter(|c| crate::transport::paths::is_placeholder(c.remote_address()))
            .cloned()
            .collect();
        for conn in affected {
            conn.path.send_replace(path);
            self.emit(Event::PathChanged { remote, connection: conn.id(), path });
        }
    }

    fn emit(&self, event: Event) {
        tracing::debug!(?event, "event");
        // An error only means nobody is subscribed.
        let _ = self.inner.events.send(event);
    }

    /// A copy of this node's metadata.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.inner.metadata.read().expect("metadata lock poisoned").clone()
    }

    /// Write access to this node's metadata; see [`MetadataGuard`]. Do not hold it across an
    /// `.await`. New values reach peers in the hellos of later connections.
    pub fn metadata_mut(&self) -> MetadataGuard<'_> {
        let map = self.inner.metadata.write().expect("metadata lock poisoned");
        let before = map.clone();
        MetadataGuard { map, before, events: &self.inner.events }
    }

    /// Everything known about every peer.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner.peers.lock().expect("peer lock poisoned").all()
    }

    /// Everything known about `remote`.
    pub fn peer(&self, remote: &RemoteIdentity) -> Option<PeerInfo> {
        self.inner.peers.lock().expect("peer lock poisoned").get(remote).cloned()
    }

    /// The libraries this node takes part in, announced by discovery (Spacedrive's libraries:
    /// groups of devices sharing data).
    pub fn libraries(&self) -> Vec<uuid::Uuid> {
        self.inner.libraries.lock().expect("library lock poisoned").iter().copied().collect()
    }

    /// Joins `library`; sends `LibrariesModified` (discovery re-announces) if it is new.
    pub fn add_library(&self, library: uuid::Uuid) -> bool {
        self.change_libraries(|set| set.insert(library))
    }

    /// Leaves `library`; sends `LibrariesModified` if it was there.
    pub fn remove_library(&self, library: &uuid::Uuid) -> bool {
        self.change_libraries(|set| set.remove(library))
    }

    fn change_libraries(&self, change: impl FnOnce(&mut BTreeSet<uuid::Uuid>) -> bool) -> bool {
        let mut set = self.inner.libraries.lock().expect("library lock poisoned");
        if !change(&mut set) {
            return false;
        }
        let libraries = set.iter().copied().collect();
        drop(set);
        self.emit(Event::LibrariesModified { libraries });
        true
    }

    /// This node's contacts: the peers ContactsOnly discovery recognises and answers.
    pub fn contacts(&self) -> Vec<RemoteIdentity> {
        self.inner.contacts.lock().expect("contact lock poisoned").iter().copied().collect()
    }

    /// Is `remote` one of this node's contacts?
    pub fn is_contact(&self, remote: &RemoteIdentity) -> bool {
        self.inner.contacts.lock().expect("contact lock poisoned").contains(remote)
    }

    /// Adds a contact; false if it was one already.
    pub fn add_contact(&self, remote: RemoteIdentity) -> bool {
        let mut contacts = self.inner.contacts.lock().expect("contact lock poisoned");
        let added = contacts.insert(remote);
        self.inner.gate.set_contacts(&contacts.iter().copied().collect::<Vec<_>>());
        added
    }

    /// Removes a contact; false if it was not one.
    pub fn remove_contact(&self, remote: &RemoteIdentity) -> bool {
        let mut contacts = self.inner.contacts.lock().expect("contact lock poisoned");
        let removed = contacts.remove(remote);
        self.inner.gate.set_contacts(&contacts.iter().copied().collect::<Vec<_>>());
        removed
    }

    /// ContactsOnly (true): the hello carries no metadata, and this node's listeners answer
    /// only handshakes that prove the secret it shares with one of its contacts (see
    /// [`crate::transport::gate`]): a stranger who reaches the port learns neither identity,
    /// metadata nor protocols. Discovery sets it with its mode.
    pub fn set_contacts_only(&self, contacts_only: bool) {
        self.set_private_metadata(contacts_only);
        self.inner.gate.set_enabled(contacts_only);
    }

    /// When set, the hello carries no metadata (name, OS, model, version): anyone may open a
    /// connection and read a hello, so ContactsOnly discovery hands the metadata to contacts
    /// only, on a stream after the hello.
    pub fn set_private_metadata(&self, private: bool) {
        self.inner.private_metadata.store(private, std::sync::atomic::Ordering::Relaxed);
    }

    /// A handle that does not keep the node alive (for handlers the node itself holds).
    pub fn downgrade(&self) -> WeakP2P {
        WeakP2P(Arc::downgrade(&self.inner))
    }

    /// Called by discovery hooks: `source` vouches for `remote` at `addrs`, with `metadata` (an
    /// empty map leaves known metadata alone). Sends `PeerDiscovered` if anything is new.
    pub fn discovered(
        &self,
        source: &str,
        remote: RemoteIdentity,
        addrs: impl IntoIterator<Item = SocketAddr>,
        metadata: BTreeMap<String, String>,
    ) {
        if remote == self.inner.remote_identity {
            return;
        }
        let event = self.inner.peers.lock().expect("peer lock poisoned").discovered(source, remote, addrs, metadata);
        if let Some(event) = event {
            self.emit(event);
        }
    }

    /// `remote` listens on `transport` (`"tcp"` or `"utp"`) at `addrs` (replacing what was
    /// known; none forgets them). [`P2P::connection`] dials TCP candidates after the QUIC ones,
    /// so a node whose UDP is blocked still reaches a peer with a TCP listener directly;
    /// [`P2P::connect_background`] dials uTP ones.
    pub fn discovered_on(&self, transport: &str, remote: RemoteIdentity, addrs: impl IntoIterator<Item = SocketAddr>) {
        if remote == self.inner.remote_identity || transport == crate::transport::quic::HOOK_NAME {
            return;
        }
        let addrs = addrs.into_iter().collect();
        self.inner.peers.lock().expect("peer lock poisoned").discovered_on(transport, remote, addrs);
    }

    /// Called by discovery hooks: `source` no longer vouches for `remote`. Addresses that other
    /// sources vouch for are kept. Sends `PeerExpired` if the source vouched before.
    pub fn expired(&self, source: &str, remote: RemoteIdentity) {
        let event = self.inner.peers.lock().expect("peer lock poisoned").expired(source, remote);
        if let Some(event) = event {
            self.emit(event);
        }
    }

    fn next_hook_id(&self) -> HookId {
        let mut next = self.inner.next_hook.lock().expect("hook lock poisoned");
        *next += 1;
        HookId(*next)
    }

    /// Registers a hook. It is shut down, in reverse order of registration, by
    /// [`P2P::shutdown`].
    pub fn register_hook(&self, hook: Arc<dyn Hook>) -> HookId {
        let id = self.next_hook_id();
        self.inner.hooks.lock().expect("hook lock poisoned").push(Registered {
            id,
            hook,
            listener: None,
            discovery: None,
        });
        id
    }

    /// Registers a transport: the node dials with it and takes what it accepts (any
    /// [`Listener`]: QUIC, or another transport of the application's). Sends `ListenerStarted`.
    pub fn register_listener(&self, listener: Arc<dyn Listener>) -> HookId {
        let id = self.next_hook_id();
        let node = self.downgrade();
        listener.start(Arc::new(move |incoming| {
            if let Some(p2p) = node.upgrade() {
                p2p.accept(incoming);
            }
        }));
        let event = Event::ListenerStarted { hook: listener.name().to_owned(), addrs: listener.local_addrs() };
        let hook: Arc<dyn Hook> = listener.clone();
        self.inner.hooks.lock().expect("hook lock poisoned").push(Registered {
            id,
            hook,
            listener: Some(listener),
            discovery: None,
        });
        self.emit(event);
        id
    }

    /// Registers a discovery source (see [`Discovery`]): it gets this node's [`Record`] now and
    /// whenever it changes, and is asked to resolve peers whose known addresses fail.
    pub fn register_discovery(&self, discovery: Arc<dyn Discovery>) -> HookId {
        let id = self.next_hook_id();
        let hook: Arc<dyn Hook> = discovery.clone();
        self.inner.hooks.lock().expect("hook lock poisoned").push(Registered {
            id,
            hook,
            listener: None,
            discovery: Some(discovery.clone()),
        });
        discovery.publish(&self.record());
        if !self.inner.publishing.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.republish_on_changes();
        }
        id
    }

    /// This node's record, as discovery sources publish it.
    /// Its addresses are those of its QUIC listeners when it has any (peers dial a plain address
    /// with QUIC), else those of its other listeners; with QUIC, the others go in `transports`,
    /// named.
    pub fn record(&self) -> Record {
        let listeners = self.listeners();
        let quic = listeners.iter().any(|l| l.name() == crate::transport::quic::HOOK_NAME);
        let addrs = listeners
            .iter()
            .filter(|l| !quic || l.name() == crate::transport::quic::HOOK_NAME)
            .flat_map(|l| l.local_addrs())
            .collect();
        let transports = listeners
            .iter()
            .filter(|l| quic && l.name() != crate::transport::quic::HOOK_NAME)
            .filter_map(|l| transport_name(l.name()).map(|name| (name, l.local_addrs())))
            .flat_map(|(name, addrs)| addrs.into_iter().map(move |addr| (name, addr)))
            .collect();
        Record { id: self.id(), addrs, transports, metadata: self.metadata(), libraries: self.libraries() }
    }

    fn discoveries(&self) -> Vec<Arc<dyn Discovery>> {
        self.inner.hooks.lock().expect("hook lock poisoned").iter().filter_map(|r| r.discovery.clone()).collect()
    }

    /// Hands every discovery source the new record when metadata, libraries or listeners
    /// change (or, having fallen behind the event bus, in case they did).
    fn republish_on_changes(&self) {
        let (node, mut events) = (self.downgrade(), self.subscribe());
        self.spawn(async move {
            loop {
                let changed = match events.recv().await {
                    Ok(event) => matches!(
                        event,
                        Event::MetadataModified { .. }
                            | Event::LibrariesModified { .. }
                            | Event::ListenerStarted { .. }
                            | Event::ListenerStopped { .. }
                    ),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(p2p) = node.upgrade() else { return };
                if p2p.is_shutting_down() {
                    return;
                }
                if changed {
                    let record = p2p.record();
                    for discovery in p2p.discoveries() {
                        discovery.publish(&record);
                    }
                }
            }
        });
    }

    /// Unregisters a hook and shuts it down. Returns false if there was no such hook.
    pub async fn unregister_hook(&self, id: HookId) -> bool {
        let registered = {
            let mut hooks = self.inner.hooks.lock().expect("hook lock poisoned");
            let Some(index) = hooks.iter().position(|r| r.id == id) else { return false };
            hooks.remove(index)
        };
        self.stop_hook(registered).await;
        true
    }

    async fn stop_hook(&self, registered: Registered) {
        let name = registered.hook.name().to_owned();
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, registered.hook.shutdown()).await.is_err() {
            tracing::warn!(hook = %name, "hook did not shut down within {SHUTDOWN_TIMEOUT:?}");
        }
        if registered.listener.is_some() {
            self.emit(Event::ListenerStopped { hook: name });
        }
    }

    fn listeners(&self) -> Vec<Arc<dyn Listener>> {
        self.inner.hooks.lock().expect("hook lock poisoned").iter().filter_map(|r| r.listener.clone()).collect()
    }

    /// The listener to dial `addr` with: one bound to the same address family, else a dual-stack
    /// one (bound to `[::]`), else the first.
    fn listener_for(&self, addr: SocketAddr) -> Option<Arc<dyn Listener>> {
        let mut listeners = self.listeners();
        // A plain address is dialled with QUIC when the node has it (see `record`).
        listeners.sort_by_key(|l| l.name() != crate::transport::quic::HOOK_NAME);
        let family = |l: &Arc<dyn Listener>| l.local_addrs().iter().any(|a| a.is_ipv4() == addr.is_ipv4());
        let dual = |l: &Arc<dyn Listener>| l.local_addrs().iter().any(|a| a.is_ipv6() && a.ip().is_unspecified());
        listeners
            .iter()
            .find(|l| family(l))
            .or_else(|| listeners.iter().find(|l| dual(l)))
            .or(listeners.first())
            .cloned()
    }

    /// The addresses this node's listeners accept on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners().iter().flat_map(|l| l.local_addrs()).collect()
    }

    /// Routes incoming streams that name `protocol` to `handler`.
    pub fn register_protocol(&self, protocol: &str, handler: impl ProtocolHandler) -> Result<(), RegisterError> {
        self.register_shared_protocol(protocol, Arc::new(handler))
    }

    /// [`P2P::register_protocol`] with a handler already shared.
    pub fn register_shared_protocol(
        &self,
        protocol: &str,
        handler: Arc<dyn ProtocolHandler>,
    ) -> Result<(), RegisterError> {
        wire::check_protocol_name(protocol).map_err(RegisterError::InvalidName)?;
        let mut protocols = self.inner.protocols.write().expect("protocol lock poisoned");
        if protocols.contains_key(protocol) {
            return Err(RegisterError::Duplicate(protocol.to_owned()));
        }
        protocols.insert(protocol.to_owned(), handler);
        Ok(())
    }

    /// Stops routing `protocol`; streams already running go on. Returns false if it was not
    /// registered.
    pub fn unregister_protocol(&self, protocol: &str) -> bool {
        self.inner.protocols.write().expect("protocol lock poisoned").remove(protocol).is_some()
    }

    /// The protocols with a handler.
    pub fn protocols(&self) -> Vec<String> {
        self.inner.protocols.read().expect("protocol lock poisoned").keys().cloned().collect()
    }

    /// Runs `future` as a task of this node: it is cancelled (dropped) when the node shuts
    /// down, and [`P2P::shutdown`] waits for it.
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn(async move {
            cancel.run_until_cancelled(future).await;
        });
    }

    /// How many tasks of the node are still running (connection drivers, handlers, hooks):
    /// zero after [`P2P::shutdown`] returned.
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.len()
    }

    /// The path table relaying and punching use: `paths` if `replace` or if there is none yet.
    /// (Weak: the transport owns its socket, and shutting the transport down closes it.)
    fn set_paths(&self, paths: &Arc<Paths>, replace: bool) {
        let mut current = self.inner.paths.write().expect("paths lock poisoned");
        if replace || current.as_ref().is_none_or(|p| p.upgrade().is_none()) {
            *current = Some(Arc::downgrade(paths));
        }
    }

    /// The path table relaying and punching use, while its QUIC transport runs.
    pub(crate) fn paths(&self) -> Option<Arc<Paths>> {
        self.inner.paths.read().expect("paths lock poisoned").as_ref()?.upgrade()
    }

    /// Registers the hole-punching signalling handler (once; later calls do nothing).
    fn serve_hole_punching(&self) {
        let node = self.downgrade();
        let _ = self.register_protocol(punch::PROTOCOL, move |stream: Stream| {
            let node = node.clone();
            async move {
                let Some(p2p) = node.upgrade() else { return };
                let remote = stream.remote();
                if let Err(error) = p2p.answer_punch(stream).await {
                    tracing::debug!(%remote, %error, "hole punching (answering) failed");
                }
            }
        });
    }

    /// Answers a peer's offer to punch, on its signalling stream.
    async fn answer_punch(&self, stream: Stream) -> Result<bool, String> {
        let remote = stream.remote();
        let paths = self.paths().ok_or("no QUIC transport")?;
        let conn = self.open_connection(&remote).ok_or("no connection")?;
        if !paths.hole_punching() {
            return Err("hole punching is off on this node".into());
        }
        // Punching is for connections through a relay, once per offer interval: a peer cannot
        // use this node to send datagrams at will.
        if !matches!(conn.path(), Path::Relayed { .. }) {
            return Err("the connection is not relayed".into());
        }
        let begun = self.inner.attempts.lock().expect("punch lock poisoned").begin_theirs(
            std::time::Instant::now(),
            &self.inner.remote_identity,
            remote,
        );
        let (generation, cancel) = begun.map_err(|e| e.to_string())?;
        let report = |attempt| self.emit(punch::event(remote, attempt));
        let result = cancel
            .run_until_cancelled(punch::run(&paths, &conn, stream, punch::Role::Responder, &report))
            .await
            .unwrap_or_else(|| Err("superseded".into()));
        self.inner.attempts.lock().expect("punch lock poisoned").end(&remote, generation);
        result
    }

    /// One attempt of our own on `conn`.
    async fn offer_punch(&self, paths: &Arc<Paths>, conn: &Connection) -> Result<bool, String> {
        let begun = self.inner.attempts.lock().expect("punch lock poisoned").begin_ours(conn.remote);
        let (generation, cancel) = begun.map_err(|e| e.to_string())?;
        let attempt = async {
            let stream = conn.open_stream(punch::PROTOCOL).await.map_err(|e| e.to_string())?;
            let report = |attempt| self.emit(punch::event(conn.remote, attempt));
            punch::run(paths, conn, stream, punch::Role::Initiator, &report).await
        };
        // Cancelled when the peer's crossing offer won: its attempt decides.
        let result = cancel.run_until_cancelled(attempt).await.unwrap_or(Ok(false));
        self.inner.attempts.lock().expect("punch lock poisoned").end(&conn.remote, generation);
        result
    }

    /// Starts punching for a connection this node dialled through a relay, with retries.
    fn start_hole_punching(&self, conn: &Connection) {
        if conn.direction != Direction::Outbound || !matches!(conn.path(), Path::Relayed { .. }) {
            return;
        }
        let Some(paths) = self.paths().filter(|p| p.hole_punching()) else { return };
        let (node, conn) = (self.clone(), conn.clone());
        self.spawn(async move {
            for wait in std::iter::once(Duration::ZERO).chain(punch::RETRY_AFTER) {
                tokio::time::sleep(wait).await;
                if conn.close_reason().is_some() || !matches!(conn.path(), Path::Relayed { .. }) {
                    return;
                }
                match node.offer_punch(&paths, &conn).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(error) => tracing::debug!(remote = %conn.remote, %error, "hole punching failed"),
                }
                // UDP found no path: a TCP simultaneous open may (where both NATs keep ports, or
                // one keeps them and the other filters by address only), once per connection.
                let relayed = conn.close_reason().is_none() && matches!(conn.path(), Path::Relayed { .. });
                if wait.is_zero() && relayed && node.can_punch_tcp() && !node.has_tcp_connection(&conn.remote) {
                    match node.punch_tcp(conn.remote).await {
                        Ok(_) => return,
                        Err(error) => tracing::debug!(remote = %conn.remote, %error, "TCP hole punching failed"),
                    }
                }
            }
        });
    }

    /// True once [`P2P::shutdown`] has started.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when the node starts shutting down.
    pub async fn shutting_down(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Opens a stream of `protocol` to `remote`, reusing an open connection or connecting with
    /// the addresses discovery found. Opening the stream costs no round trip; see
    /// [`Connection::open_stream`] for how a peer without the protocol refuses it.
    /// A protocol marked as background ([`P2P::set_background`]) goes over uTP where it can.
    pub async fn connect(&self, remote: RemoteIdentity, protocol: &str) -> Result<Stream, ConnectError> {
        wire::check_protocol_name(protocol).map_err(ConnectError::InvalidProtocol)?;
        if self.is_background(protocol) {
            match self.connect_background(remote, protocol).await {
                Err(ConnectError::NoTransport | ConnectError::NoAddress { .. }) => {}
                result => return result,
            }
        }
        self.connection(remote).await?.open_stream(protocol).await
    }

    /// Marks `protocol` as background traffic (or not, with `false`): [`P2P::connect`] then
    /// opens its streams as [`P2P::connect_background`] does, over uTP, whose LEDBAT yields to
    /// the user's other traffic. Where uTP is not possible (no uTP listener here, no uTP
    /// candidate for the peer) it falls back to the foreground connection, so marking a
    /// protocol never makes it unreachable; a uTP dial that fails is an error, as with
    /// `connect_background`. Returns whether this changed anything.
    pub fn set_background(&self, protocol: &str, background: bool) -> bool {
        let mut set = self.inner.background.write().expect("background lock poisoned");
        if background { set.insert(protocol.to_owned()) } else { set.remove(protocol) }
    }

    /// Whether `protocol` is marked as background traffic.
    pub fn is_background(&self, protocol: &str) -> bool {
        self.inner.background.read().expect("background lock poisoned").contains(protocol)
    }

    /// An open connection to `remote`, dialling the known addresses in turn if there is none.
    /// Concurrent callers share one dial. A background (uTP) connection is used only when
    /// nothing else connects.
    pub async fn connection(&self, remote: RemoteIdentity) -> Result<Connection, ConnectError> {
        if self.is_shutting_down() {
            return Err(ConnectError::ShuttingDown);
        }
        if let Some(conn) = self.foreground_connection(&remote) {
            return Ok(conn);
        }
        let lock = self.inner.dialing.lock().await.entry(remote).or_default().clone();
        let result = async {
            let _dialing = lock.lock().await;
            if let Some(conn) = self.foreground_connection(&remote) {
                return Ok(conn);
            }
            let peer = self.peer(&remote);
            let mut addrs: Vec<Target> = peer.iter().flat_map(|p| p.addresses()).map(|addr| (None, addr)).collect();
            // TCP candidates after the QUIC ones (the stagger gives QUIC its head start), when
            // this node has a TCP listener: where UDP is blocked, they are what connects. uTP
            // ones only on a uTP-only node (elsewhere uTP is for background traffic).
            let listeners = self.listeners();
            let utp_only = listeners.iter().all(|l| l.name() == crate::transport::utp_listener::HOOK_NAME);
            for transport in [crate::transport::tcp::HOOK_NAME, crate::transport::utp_listener::HOOK_NAME] {
                let foreground = transport != crate::transport::utp_listener::HOOK_NAME || utp_only;
                if foreground && listeners.iter().any(|l| l.name() == transport) {
                    let candidates = peer.iter().flat_map(|p| p.addresses_on(transport));
                    addrs.extend(candidates.map(|addr| (Some(transport), addr)));
                }
            }
            if self.listeners().is_empty() {
                return Err(ConnectError::NoTransport);
            }
            let relay = self.paths().and_then(|p| p.relay()).is_some();
            // Known addresses first (LAN, manual, cache), raced; with a relay to fall back on,
            // addresses that do not answer soon are given up on sooner.
            let timeout = if relay { DIRECT_TIMEOUT_WITH_RELAY } else { HANDSHAKE_TIMEOUT };
            let mut attempts = match self.race(remote, addrs, timeout).await {
                Ok(conn) => return Ok(conn),
                Err(attempts) => attempts,
            };
            if attempts.iter().any(|(_, e)| matches!(e, ConnectError::ShuttingDown)) {
                return Err(ConnectError::ShuttingDown);
            }
            // Then whatever the discovery sources resolve now (the relay: a placeholder it
            // carries; later a DHT), raced with the full handshake time.
            let mut resolved = Vec::new();
            for discovery in self.discoveries() {
                match discovery.resolve(remote).await {
                    Ok(addrs) => {
                        for addr in addrs {
                            if !resolved.contains(&addr) {
                                resolved.push(addr);
                            }
                        }
                    }
                    Err(reason) => {
                        let addr = self.paths().and_then(|p| p.relay()).map(|r| r.addr);
                        let addr = addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                        let error = TransportError::Rendezvous(format!("{}: {reason}", discovery.name()));
                        attempts.push((addr, ConnectError::Transport { addr, error }));
                    }
                }
            }
            let resolved = resolved.into_iter().map(|addr| (None, addr)).collect();
            match self.race(remote, resolved, HANDSHAKE_TIMEOUT).await {
                Ok(conn) => {
                    self.start_hole_punching(&conn);
                    return Ok(conn);
                }
                Err(failed) => attempts.extend(failed),
            }
            Err(unreachable(remote, attempts))
        }
        .await;
        self.inner.dialing.lock().await.remove(&remote);
        // Nothing else reaches the peer, but a background (uTP) connection is open, the peer's
        // own perhaps: better that than no connection.
        result.or_else(|error| self.open_connection(&remote).ok_or(error))
    }

    /// An open connection to `remote`, if there is one: the newest, but not a background (uTP)
    /// one while another is open.
    pub fn open_connection(&self, remote: &RemoteIdentity) -> Option<Connection> {
        self.foreground_connection(remote).or_else(|| {
            let connections = self.inner.connections.lock().expect("connection lock poisoned");
            connections.get(remote)?.iter().rev().find(|c| c.close_reason().is_none()).cloned()
        })
    }

    /// The newest open connection to `remote` that is not a background one: a uTP connection
    /// is background when the node has another transport (on a uTP-only node, every connection
    /// is uTP and foreground).
    fn foreground_connection(&self, remote: &RemoteIdentity) -> Option<Connection> {
        let utp = crate::transport::utp_listener::HOOK_NAME;
        let utp_only = self.listeners().iter().all(|l| l.name() == utp);
        let connections = self.inner.connections.lock().expect("connection lock poisoned");
        let mut open = connections.get(remote).into_iter().flatten().rev();
        open.find(|c| c.close_reason().is_none() && (utp_only || c.transport_name() != utp)).cloned()
    }

    /// Like [`P2P::connect`], for background traffic: the stream goes over a uTP connection,
    /// whose congestion control (LEDBAT) yields to the user's other traffic, such as bulk sync
    /// that must not slow down a video call. An open uTP connection to `remote` is reused;
    /// otherwise its uTP candidates ([`P2P::discovered_on`]) are dialled. Needs a uTP listener
    /// ([`P2P::listen_utp`]); without one, or without a uTP candidate, it fails
    /// (`NoTransport`, `NoAddress`) rather than send in the foreground: the caller decides
    /// whether to fall back to [`P2P::connect`]. Other streams keep using the foreground
    /// connection.
    pub async fn connect_background(&self, remote: RemoteIdentity, protocol: &str) -> Result<Stream, ConnectError> {
        use crate::transport::utp_listener::HOOK_NAME as UTP;
        wire::check_protocol_name(protocol).map_err(ConnectError::InvalidProtocol)?;
        if self.is_shutting_down() {
            return Err(ConnectError::ShuttingDown);
        }
        if !self.listeners().iter().any(|l| l.name() == UTP) {
            return Err(ConnectError::NoTransport);
        }
        let open = {
            let connections = self.inner.connections.lock().expect("connection lock poisoned");
            let mut list = connections.get(&remote).into_iter().flatten().rev();
            list.find(|c| c.close_reason().is_none() && c.transport_name() == UTP).cloned()
        };
        let conn = match open {
            Some(conn) => conn,
            None => {
                let addrs = self.peer(&remote).map(|p| p.addresses_on(UTP)).unwrap_or_default();
                if addrs.is_empty() {
                    return Err(ConnectError::NoAddress { remote });
                }
                let targets = addrs.into_iter().map(|addr| (Some(UTP), addr)).collect();
                self.race(remote, targets, HANDSHAKE_TIMEOUT).await.map_err(|attempts| unreachable(remote, attempts))?
            }
        };
        conn.open_stream(protocol).await
    }

    /// Every open connection.
    pub fn connections(&self) -> Vec<Connection> {
        self.inner.connections.lock().expect("connection lock poisoned").values().flatten().cloned().collect()
    }

    /// Dials `addr` and, if `expected` is given, checks that it answers with that identity.
    /// Returns a new connection after the hello (even if one is already open).
    pub async fn dial(&self, addr: SocketAddr, expected: Option<RemoteIdentity>) -> Result<Connection, ConnectError> {
        self.dial_within(addr, expected, HANDSHAKE_TIMEOUT).await
    }

    /// Like [`P2P::dial`], through the listener named `transport` (`"quic"`, `"tcp"`, `"utp"`).
    pub async fn dial_via(
        &self,
        transport: &str,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
    ) -> Result<Connection, ConnectError> {
        let listener = self.listeners().into_iter().find(|l| l.name() == transport).ok_or(ConnectError::NoTransport)?;
        self.dial_with(listener, addr, expected, HANDSHAKE_TIMEOUT).await
    }

    /// Dials `addrs` for `remote` happy-eyeballs style: the first at once, each next one
    /// [`DIAL_STAGGER`] later (sooner when there are many, so that all start within half the
    /// deadline), all under one deadline `timeout`. The first to complete the handshake and
    /// hello wins; the others are cancelled (or closed, if they completed too).
    async fn race(
        &self,
        remote: RemoteIdentity,
        addrs: Vec<Target>,
        timeout: Duration,
    ) -> Result<Connection, Vec<(SocketAddr, ConnectError)>> {
        if addrs.is_empty() {
            return Err(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let stagger = DIAL_STAGGER.min(timeout / 2 / addrs.len() as u32);
        let mut racing = tokio::task::JoinSet::new();
        for (index, (transport, addr)) in addrs.into_iter().enumerate() {
            let node = self.clone();
            let start = tokio::time::Instant::now() + stagger * index as u32;
            racing.spawn(async move {
                tokio::time::sleep_until(start).await;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // The whole dial, hello included, is under the deadline.
                let dial = async {
                    match transport {
                        None => node.dial_within(addr, Some(remote), left).await,
                        Some(name) => {
                            let listener = node.listeners().into_iter().find(|l| l.name() == name);
                            let listener = listener.ok_or(ConnectError::NoTransport)?;
                            node.dial_with(listener, addr, Some(remote), left).await
                        }
                    }
                };
                let dialled = tokio::time::timeout_at(deadline, dial).await;
                let error = ConnectError::Transport { addr, error: TransportError::Timeout(timeout) };
                (addr, dialled.unwrap_or(Err(error)))
            });
        }
        let mut failed = Vec::new();
        while let Some(joined) = racing.join_next().await {
            let Ok((addr, result)) = joined else { continue };
            match result {
                Ok(conn) => {
                    racing.abort_all();
                    // Attempts that completed meanwhile are surplus connections: closed.
                    while let Some(late) = racing.join_next().await {
                        if let Ok((_, Ok(extra))) = late {
                            extra.close();
                        }
                    }
                    return Ok(conn);
                }
                Err(error) => failed.push((addr, error)),
            }
        }
        Err(failed)
    }

    async fn dial_within(
        &self,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        match self.listener_for(addr) {
            Some(listener) => self.dial_with(listener, addr, expected, timeout).await,
            None if self.is_shutting_down() => Err(ConnectError::ShuttingDown),
            None => Err(ConnectError::NoTransport),
        }
    }

    async fn dial_with(
        &self,
        listener: Arc<dyn Listener>,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        if self.is_shutting_down() {
            return Err(ConnectError::ShuttingDown);
        }
        let conn = tokio::time::timeout(timeout, listener.dial(addr, expected))
            .await
            .map_err(|_| ConnectError::Transport { addr, error: TransportError::Timeout(timeout) })?
            .map_err(|error| match error {
                TransportError::WrongIdentity { expected, got } => ConnectError::WrongIdentity { expected, got },
                error => ConnectError::Transport { addr, error },
            })?;
        self.establish(conn, Direction::Outbound, expected, None).await
    }

    /// Takes a connection a listener brings in: waits for its handshake (the dialler's key
    /// verified), sends our hello, then checks the peer's identity and hello, in a task of the
    /// node. Failures become `IncomingRejected`.
    fn accept(&self, incoming: Incoming) {
        let p2p = self.clone();
        self.spawn(async move {
            let addr = incoming.addr;
            let result = async {
                let transport_err = |error: TransportError| ConnectError::Transport { addr, error };
                let accepted = incoming.connecting.await.map_err(transport_err)?;
                let conn = accepted.connection;
                // Nothing about this node (metadata, protocols) leaves before the dialler's key
                // is verified: the hello waits for the end of the handshake instead of going
                // out as 0.5-RTT data. It costs the dialler one round trip (its connect takes
                // two, like libp2p's identify), which is the price of point 3 of issue 14.
                if let Some(handshake) = accepted.handshake {
                    handshake.await.map_err(transport_err)?;
                }
                let hello_out = match p2p.send_hello(&*conn).await {
                    Ok(sent) => sent,
                    Err(error) => {
                        conn.close(codes::BAD_HELLO, b"hello failed");
                        return Err(error);
                    }
                };
                p2p.establish(conn, Direction::Inbound, None, Some(hello_out)).await
            }
            .await;
            if let Err(error) = result {
                tracing::debug!(%addr, %error, "incoming connection rejected");
                p2p.emit(Event::IncomingRejected { addr, reason: error.to_string() });
            }
        });
    }

    fn hello(&self) -> Hello {
        // The hello goes to verified peers only, but any key can be made: in ContactsOnly mode
        // metadata goes to contacts alone, over their authenticated stream (see
        // `discovery::mdns`).
        let private = self.inner.private_metadata.load(std::sync::atomic::Ordering::Relaxed);
        Hello {
            major: WIRE_VERSION_MAJOR,
            minor: WIRE_VERSION_MINOR,
            metadata: if private { BTreeMap::new() } else { self.metadata() },
            protocols: self.protocols(),
        }
    }

    /// Opens a unidirectional stream and sends our hello on it.
    async fn send_hello(&self, conn: &dyn TransportConnection) -> Result<SendStream, ConnectError> {
        use tokio::io::AsyncWriteExt;
        let write_err = |e: &dyn std::fmt::Display| ConnectError::Hello(HelloError::Write(e.to_string()));
        let ours = self.hello().to_bytes().map_err(|e| ConnectError::Hello(e.into()))?;
        let mut send = conn.open_uni().await.map_err(|e| ConnectError::Hello(e.into()))?;
        send.write_all(&ours).await.map_err(|e| write_err(&e))?;
        send.finish().map_err(|e| write_err(&e))?;
        Ok(send)
    }

    /// Checks the identity, exchanges hellos (each side sends its own on a unidirectional
    /// stream, without waiting for the other's) and registers the connection. `our_hello` is the
    /// hello already sent, if any: the acceptor sends it as soon as the handshake completes.
    async fn establish(
        &self,
        transport: Arc<dyn TransportConnection>,
        direction: Direction,
        expected: Option<RemoteIdentity>,
        our_hello: Option<SendStream>,
    ) -> Result<Connection, ConnectError> {
        let remote = transport.peer_identity().ok_or_else(|| {
            transport.close(codes::BAD_HELLO, b"no identity");
            ConnectError::Hello(HelloError::NoIdentity)
        })?;
        if let Some(expected) = expected.filter(|e| *e != remote) {
            transport.close(codes::WRONG_IDENTITY, b"wrong identity");
            return Err(ConnectError::WrongIdentity { expected, got: remote });
        }
        // The gate let only a contact's handshake through; a client certificate of another
        // identity (one that knew a contact's secret?) is refused all the same.
        if direction == Direction::Inbound && self.inner.gate.enabled() && !self.is_contact(&remote) {
            transport.close(codes::WRONG_IDENTITY, b"contacts only");
            return Err(ConnectError::Hello(HelloError::NotAContact));
        }
        let exchange = async {
            let sent = match our_hello {
                Some(sent) => sent,
                None => self.send_hello(&*transport).await?,
            };
            let recv = transport.accept_uni().await.map_err(|e| ConnectError::Hello(e.into()))?;
            // Decoded straight off the stream; fields of a newer minor version after the ones we
            // know are left unread.
            match wire::read_hello(&mut warren_proto::Reader::new(recv)).await {
                Ok(theirs) => Ok((sent, Ok(theirs))),
                Err(WireError::IncompatibleVersion { theirs }) => Ok((sent, Err(theirs.major))),
                Err(error) => Err(ConnectError::Hello(error.into())),
            }
        };
        let (sent, theirs): (SendStream, Result<Hello, u16>) = match tokio::time::timeout(HELLO_TIMEOUT, exchange).await
        {
            Ok(Ok(exchanged)) => exchanged,
            Ok(Err(error)) => {
                transport.close(codes::BAD_HELLO, b"bad hello");
                return Err(error);
            }
            Err(_) => {
                transport.close(codes::BAD_HELLO, b"hello timed out");
                return Err(ConnectError::Hello(HelloError::Timeout(HELLO_TIMEOUT)));
            }
        };
        let theirs = match theirs {
            Ok(theirs) => theirs,
            Err(their_major) => {
                // Let our hello arrive first, so the peer can report the mismatch too.
                let _ = tokio::time::timeout(Duration::from_secs(2), sent.stopped()).await;
                transport.close(codes::INCOMPATIBLE_VERSION, b"incompatible wire version");
                return Err(ConnectError::IncompatibleVersion { ours: WIRE_VERSION_MAJOR, theirs: their_major });
            }
        };
        let path = Arc::new(tokio::sync::watch::Sender::new(transport.path()));
        let conn = Connection { inner: transport, remote, direction, hello: Arc::new(theirs), path };
        self.register_connection(conn.clone())?;
        // Identity and hello checked: the peer may open streams and fill the full windows.
        conn.inner.admit();
        // A path change between computing the first value and registering would be lost.
        conn.path.send_replace(conn.path());
        Ok(conn)
    }

    fn register_connection(&self, conn: Connection) -> Result<(), ConnectError> {
        if self.is_shutting_down() {
            conn.inner.close(codes::CLOSED, b"shutting down");
            return Err(ConnectError::ShuttingDown);
        }
        let (count, oldest) = {
            let mut connections = self.inner.connections.lock().expect("connection lock poisoned");
            let list = connections.entry(conn.remote).or_default();
            list.push(conn.clone());
            // One identity keeps at most MAX_CONNECTIONS_PER_PEER: the oldest goes (a peer
            // reconnecting after its address changed replaces a connection that may be dead).
            let oldest = (list.len() > MAX_CONNECTIONS_PER_PEER).then(|| list.remove(0));
            (list.len(), oldest)
        };
        self.inner.connection_added.notify_waiters();
        if let Some(oldest) = oldest {
            oldest.inner.close(codes::CLOSED, b"too many connections from this identity");
        }
        self.inner.peers.lock().expect("peer lock poisoned").set_connected(
            conn.remote,
            count,
            Some((conn.remote_address(), conn.direction)),
            Some(&conn.hello.metadata),
        );
        if count == 1 {
            self.emit(Event::PeerConnected {
                remote: conn.remote,
                addr: conn.remote_address(),
                path: conn.path(),
                transport: conn.transport_name(),
                direction: conn.direction,
                metadata: conn.hello.metadata.clone(),
            });
        }
        let p2p = self.clone();
        self.spawn(async move {
            let reason = loop {
                tokio::select! {
                    stream = conn.inner.accept_bi() => match stream {
                        Ok((send, recv)) => {
                            let (p2p2, remote) = (p2p.clone(), conn.remote);
                            p2p.spawn(async move { p2p2.serve_stream(remote, send, recv).await });
                        }
                        Err(error) => break error.to_string(),
                    },
                    // Unidirectional streams carry only the hello.
                    Ok(_) = conn.inner.accept_uni() => {
                        conn.inner.close(codes::PROTOCOL_VIOLATION, b"unexpected unidirectional stream");
                    }
                }
            };
            p2p.unregister_connection(&conn, reason);
        });
        Ok(())
    }

    fn unregister_connection(&self, conn: &Connection, reason: String) {
        let (count, newest) = {
            let mut connections = self.inner.connections.lock().expect("connection lock poisoned");
            let Some(list) = connections.get_mut(&conn.remote) else { return };
            list.retain(|c| c.id() != conn.id());
            let newest = list.last().map(|c| (c.remote_address(), c.direction));
            let count = list.len();
            if count == 0 {
                connections.remove(&conn.remote);
            }
            (count, newest)
        };
        self.inner.peers.lock().expect("peer lock poisoned").set_connected(conn.remote, count, newest, None);
        if count == 0 {
            self.emit(Event::PeerDisconnected { remote: conn.remote, reason });
        }
    }

    async fn serve_stream(&self, remote: RemoteIdentity, mut send: SendStream, mut recv: RecvStream) {
        let header = tokio::time::timeout(STREAM_HEADER_TIMEOUT, wire::read_stream_header(&mut recv)).await;
        let protocol = match header {
            Ok(Ok(protocol)) => protocol,
            Ok(Err(error)) => {
                tracing::debug!(%remote, %error, "bad stream header");
                send.reset(codes::BAD_STREAM_HEADER);
                recv.stop(codes::BAD_STREAM_HEADER);
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "stream header timed out");
                send.reset(codes::STREAM_HEADER_TIMEOUT);
                recv.stop(codes::STREAM_HEADER_TIMEOUT);
                return;
            }
        };
        let handler = self.inner.protocols.read().expect("protocol lock poisoned").get(&protocol).cloned();
        let Some(handler) = handler else {
            tracing::debug!(%remote, %protocol, "stream for an unknown protocol");
            send.reset(codes::UNKNOWN_PROTOCOL);
            recv.stop(codes::UNKNOWN_PROTOCOL);
            return;
        };
        handler.handle(Stream::new(remote, protocol.into(), send, recv)).await;
    }

    /// Shuts the node down: refuses new work, closes every connection, shuts hooks down in
    /// reverse order of registration (each bounded by [`SHUTDOWN_TIMEOUT`]), then waits (again
    /// bounded) for every task of the node, transport drivers included. When it returns the
    /// node's sockets are closed, provided the application dropped the streams it held.
    /// Calling it again returns at once.
    ///
    /// It usually takes a few round trips (QUIC lets a closed connection drain for three probe
    /// timeouts); a connection still in its handshake has no RTT estimate yet, so its drain can
    /// take about 3 s.
    pub async fn shutdown(&self) {
        if self.inner.cancel.is_cancelled() {
            return;
        }
        self.inner.cancel.cancel();
        let connections: Vec<_> =
            self.inner.connections.lock().expect("connection lock poisoned").drain().flat_map(|(_, c)| c).collect();
        for conn in &connections {
            conn.inner.close(codes::CLOSED, b"shutting down");
        }
        drop(connections);
        let hooks = std::mem::take(&mut *self.inner.hooks.lock().expect("hook lock poisoned"));
        for registered in hooks.into_iter().rev() {
            self.stop_hook(registered).await;
        }
        self.inner.protocols.write().expect("protocol lock poisoned").clear();
        self.inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(tasks = self.inner.tasks.len(), "node tasks still running after {SHUTDOWN_TIMEOUT:?}");
        }
        self.emit(Event::Shutdown);
    }
}
