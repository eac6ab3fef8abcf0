//! The QUIC transport (quinn + rustls), as a listener hook.
//!
//! One UDP socket both accepts and dials. Both sides authenticate with their Ed25519 identity
//! (see [`tls`](super::tls)). quinn's endpoint and connection drivers run on the node's task
//! tracker, so the node's shutdown waits for them and the port is free when it returns.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, TransportConfig, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::task::TaskTracker;

use super::connection::{
    Accept, Accepted, ConnectionError, Incoming, Listener, RecvHalf, RecvStream, SendHalf, SendStream, StreamError,
    TransportConnection, codes,
};
use super::gate::ContactGate;
use super::paths::{Path, PathEvents, PathSocket, Paths, is_placeholder};
use super::slot::{Slot, SlotKind};
use super::tls;
use crate::error::TransportError;
use crate::hook::{BoxFuture, Hook};
use crate::state::admission::{self, Admission, Limits, Stats, Verdict};
use crate::{Identity, RemoteIdentity};

/// How long a transport handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of this hook, as shown in `ListenerStarted`.
pub const HOOK_NAME: &str = "quic";

/// Streams a peer may have open at once on one connection. Further `open` calls on the peer's
/// side wait; a hostile peer cannot make this node run more stream tasks than this per
/// connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Unidirectional streams a peer may have open at once: one, for its hello.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 1;

/// Per-stream receive window: 8 MiB lets one stream fill about 1.3 Gbit/s at 50 ms RTT (and far
/// more on a LAN) before flow control stalls it; quinn's default is 1.25 MB.
pub const STREAM_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

/// Connection-wide receive window: several streams at full speed.
pub const RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// Send buffer per connection.
pub const SEND_WINDOW: u64 = 32 * 1024 * 1024;

/// Idle connections close after 30 s without any packet; keep-alives every 10 s keep a
/// connection (and the NAT mappings along its path, which usually last 30 s or more) open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// See [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Which path a connection starts on, which decides its transport parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Dialled to (or accepted from) a loopback, private, link-local or unique-local address:
    /// a LAN, where loss means congestion. quinn's congestion controller (Cubic) and path MTU
    /// ceiling: as fast as plain quinn on loopback, where BBR costs about 15 %
    /// (docs/benchmarks.md).
    Local,
    /// Dialled to (or accepted from) any other (public) address: the internet, where random
    /// loss is common. BBR, which does not read it as congestion (10 MB at 100 ms RTT and 1 %
    /// loss: 49 Mbit/s against Cubic's 1.2), and quinn's MTU ceiling.
    Internet,
    /// Through a relay placeholder (it may be punched across the internet later): BBR, and path
    /// MTU discovery capped at [`MAX_UDP_PAYLOAD`] so that every packet fits a relay frame.
    Relayed,
}

impl PathKind {
    /// The kind of a connection to `remote`.
    pub fn of(remote: SocketAddr) -> Self {
        let remote = super::paths::unmap(remote);
        if super::paths::is_placeholder(remote) {
            return PathKind::Relayed;
        }
        let local = match remote.ip() {
            std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
            std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local(),
        };
        if local { PathKind::Local } else { PathKind::Internet }
    }
}

/// The QUIC transport parameters warren uses on a LAN (and loopback); public so that
/// benchmarks can give plain quinn exactly the same.
pub fn transport_config() -> TransportConfig {
    transport_config_for(PathKind::Local)
}

/// The QUIC transport parameters warren uses for connections of `kind`.
pub fn transport_config_for(kind: PathKind) -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("30 s fits a VarInt of ms")))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW);
    if kind == PathKind::Relayed {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        config.mtu_discovery_config(Some(mtu));
    }
    if kind != PathKind::Local {
        config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    config
}

/// The endpoint parameters warren uses: quinn's defaults. (Jumbo datagrams were tried, with
/// path MTU discovery up to 8952 bytes; on a loaded loopback a few lost large packets made
/// quinn's black-hole detection fall back to 1200 bytes, slower than the default 1452, so they
/// are not enabled. See docs/benchmarks.md.)
pub fn endpoint_config() -> quinn::EndpointConfig {
    endpoint_config_with(quinn::EndpointConfig::default())
}

/// [`endpoint_config`] with its stateless-reset key and its connection-ID check key derived
/// from `identity`: a node killed and started again with the same identity recognises the
/// connection IDs its earlier run handed out and answers its peers' packets on those dead
/// connections with a stateless reset they accept (RFC 9000, section 10.3), so they learn at
/// once that the connection is gone, instead of after the 30 s idle timeout, and dial again.
/// With quinn's random keys the new run drops those packets as "invalid CID" and the peers
/// wait out the timeout.
pub fn endpoint_config_for(identity: &Identity) -> quinn::EndpointConfig {
    let secret = identity.derive_secret("warren 2026 quic stateless reset key");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret[..]);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    let cid_secret = identity.derive_secret("warren 2026 quic connection id key");
    let cid_key = u64::from_le_bytes(cid_secret[..8].try_into().expect("8 bytes"));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    endpoint_config_with(config)
}

fn endpoint_config_with(mut config: quinn::EndpointConfig) -> quinn::EndpointConfig {
    // Relay frames and hole punches share the socket; they start with a byte whose QUIC fixed
    // bit is clear, which only greased QUIC packets could have (see `wire::frame`).
    config.grease_quic_bit(false);
    config
}

/// The largest UDP payload warren's QUIC sends: path MTU discovery stops here, so that any
/// packet still fits a relay's data frame on a 1,500-byte link.
pub const MAX_UDP_PAYLOAD: u16 = crate::wire::frame::MAX_PAYLOAD as u16;

/// quinn server configuration for `identity`, with warren's transport parameters for a LAN.
pub fn server_config(identity: &Arc<Identity>) -> quinn::ServerConfig {
    server_config_for(identity, PathKind::Local)
}

/// quinn server configuration for `identity` and connections of `kind`.
pub fn server_config_for(identity: &Arc<Identity>, kind: PathKind) -> quinn::ServerConfig {
    let crypto = QuicServerConfig::try_from(tls::server_config(identity))
        .expect("the TLS 1.3 configuration has the initial cipher suite QUIC needs");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config_for(kind)));
    config
}

/// Connection-wide receive window of an accepted connection until the node admits it (its
/// hello checked): a peer that has not said who it is cannot make the node buffer more.
pub const UNADMITTED_RECEIVE_WINDOW: u32 = 64 * 1024;

/// Bidirectional streams a peer may open before the node admits it: a few, so that a dialler's
/// first stream need not wait for the admission's MAX_STREAMS (a round trip); the node serves
/// none of them before admission, and together they buffer at most
/// [`UNADMITTED_RECEIVE_WINDOW`].
pub const UNADMITTED_STREAMS: u32 = 8;

/// A node's server configuration for connections of `kind`: its handshakes pass `gate` (in
/// ContactsOnly mode, only contacts' do), and until admitted ([`TransportConnection::admit`])
/// the peer may open [`UNADMITTED_STREAMS`] bidirectional streams and the connection's receive
/// window is [`UNADMITTED_RECEIVE_WINDOW`]; admission raises both to the values of `kind`. Relayed ones
/// (through a placeholder) have migration off, so that a packet from an address the path
/// table has not validated never moves the connection off its placeholder (it is dropped;
/// QUIC resends).
fn node_server_config(identity: &Arc<Identity>, gate: &Arc<ContactGate>, kind: PathKind) -> quinn::ServerConfig {
    let crypto = QuicServerConfig::try_from(tls::server_config_gated(identity, gate.clone()))
        .expect("the TLS 1.3 configuration has the initial cipher suite QUIC needs");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config_for(kind);
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(UNADMITTED_STREAMS))
        .receive_window(VarInt::from_u32(UNADMITTED_RECEIVE_WINDOW));
    config.transport_config(Arc::new(transport));
    if kind == PathKind::Relayed {
        config.migration(false);
    }
    config
}

/// quinn client configuration for `identity`, with warren's transport parameters for a LAN.
pub fn client_config(identity: &Arc<Identity>) -> quinn::ClientConfig {
    client_config_for(identity, PathKind::Local)
}

/// quinn client configuration for `identity` and connections of `kind`.
pub fn client_config_for(identity: &Arc<Identity>, kind: PathKind) -> quinn::ClientConfig {
    quic_client_config(tls::client_config(identity), kind)
}

/// quinn client configuration for dialling `expected` as `identity` over a path of `kind`: the
/// handshake aborts before this side's certificate goes out if another key answers (see
/// [`tls::client_config_expecting`]).
pub fn client_config_expecting(
    identity: &Arc<Identity>,
    kind: PathKind,
    expected: RemoteIdentity,
) -> (quinn::ClientConfig, tls::Presented) {
    let (crypto, presented) = tls::client_config_expecting(identity, expected);
    (quic_client_config(crypto, kind), presented)
}

fn quic_client_config(crypto: rustls::ClientConfig, kind: PathKind) -> quinn::ClientConfig {
    let crypto =
        QuicClientConfig::try_from(crypto).expect("the TLS 1.3 configuration has the initial cipher suite QUIC needs");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config_for(kind)));
    config
}

/// Why the QUIC transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// The QUIC transport: one UDP socket that accepts and dials, with the path table in front of
/// it. Cheap to clone. A node makes one with [`P2P::listen_quic`](crate::P2P::listen_quic).
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<QuicInner>,
}

struct QuicInner {
    identity: Arc<Identity>,
    /// ContactsOnly's handshake gate (servers) and the contact proofs (dials).
    gate: Arc<ContactGate>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    paths: Arc<Paths>,
    local_addr: SocketAddr,
    /// The node's tasks: quinn's drivers, the accept loop and the per-connection watchers run
    /// there.
    tasks: TaskTracker,
    /// The accept loop, waited for at shutdown (then the port is free).
    accept_loop: TaskTracker,
    /// Which incoming attempts are taken (caps per source and in total; see
    /// [`crate::state::admission`]).
    admission: Arc<Mutex<Admission>>,
    /// Accepted connections by source, oldest first: where an eviction takes one from.
    by_source: Arc<Mutex<HashMap<IpAddr, VecDeque<quinn::Connection>>>>,
    /// For connections through a relay placeholder and to public addresses (the endpoint's
    /// defaults are for a LAN).
    relayed_server: Arc<quinn::ServerConfig>,
    relayed_client: quinn::ClientConfig,
    internet_server: Arc<quinn::ServerConfig>,
    internet_client: quinn::ClientConfig,
}

impl QuicTransport {
    /// Binds a UDP socket on `addr` (port 0 picks a free port) for `identity`. quinn's drivers
    /// run on `tasks`; the path table reports its changes to `on_path`.
    pub(crate) fn bind(
        identity: &Arc<Identity>,
        gate: Arc<ContactGate>,
        addr: SocketAddr,
        tasks: &TaskTracker,
        on_path: PathEvents,
    ) -> Result<Self, ListenError> {
        let bind_err = |source| ListenError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
        enlarge_socket_buffers(&socket);
        let runtime = Arc::new(NodeRuntime { tasks: tasks.clone() });
        // A second handle on the socket for datagrams with a TTL of their own (path opens).
        let raw = socket.try_clone().ok();
        let udp = runtime.wrap_udp_socket(socket).map_err(bind_err)?;
        let paths = Paths::new(identity.to_remote_identity(), udp, raw, on_path).map_err(bind_err)?;
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config_for(identity),
            Some(node_server_config(identity, &gate, PathKind::Local)),
            Arc::new(PathSocket(paths.clone())),
            runtime,
        )
        .map_err(bind_err)?;
        endpoint.set_default_client_config(client_config(identity));
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        Ok(Self {
            inner: Arc::new(QuicInner {
                identity: identity.clone(),
                gate: gate.clone(),
                admission: Arc::default(),
                by_source: Arc::default(),
                endpoint: Mutex::new(Some(endpoint.clone())),
                paths,
                local_addr,
                tasks: tasks.clone(),
                accept_loop: TaskTracker::new(),
                relayed_server: Arc::new(node_server_config(identity, &gate, PathKind::Relayed)),
                relayed_client: client_config_for(identity, PathKind::Relayed),
                internet_server: Arc::new(node_server_config(identity, &gate, PathKind::Internet)),
                internet_client: client_config_for(identity, PathKind::Internet),
            }),
        })
    }

    /// The server configuration for a connection attempt from `remote`: the relayed one for a
    /// placeholder, the internet one for a public address, else None (the endpoint's default,
    /// for a LAN).
    fn server_config_for(&self, remote: SocketAddr) -> Option<Arc<quinn::ServerConfig>> {
        match PathKind::of(remote) {
            PathKind::Local => None,
            PathKind::Internet => Some(self.inner.internet_server.clone()),
            PathKind::Relayed => Some(self.inner.relayed_server.clone()),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Turns hole punching on (the default) or off. Off, relayed connections stay relayed:
    /// peers never learn this node's addresses, and the relay carries everything.
    pub fn set_hole_punching(&self, enabled: bool) {
        self.inner.paths.set_hole_punching(enabled);
    }

    /// The path table of this transport's socket.
    pub(crate) fn paths(&self) -> &Arc<Paths> {
        &self.inner.paths
    }

    /// What the path table refused and sent so far (forged, replayed, unsolicited frames).
    pub fn path_stats(&self) -> crate::state::path_table::Stats {
        self.inner.paths.stats()
    }

    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.inner.endpoint.lock().expect("endpoint lock poisoned").clone()
    }

    /// The admission counts and verdicts so far (for benchmarks and logs).
    pub fn admission(&self) -> (Stats, (usize, usize)) {
        let admission = self.inner.admission.lock().expect("admission lock poisoned");
        (admission.stats(), admission.counts())
    }

    /// The limits on incoming connections in force.
    pub fn admission_limits(&self) -> Limits {
        self.inner.admission.lock().expect("admission lock poisoned").limits()
    }

    /// Sets the limits on incoming connections (see [`crate::state::admission::Limits`]); the
    /// counts so far are kept.
    pub fn set_admission_limits(&self, limits: Limits) {
        self.inner.admission.lock().expect("admission lock poisoned").set_limits(limits);
    }

    /// An incoming connection attempt, as the node takes it, or None when it was refused or
    /// asked for a Retry (the admission limits).
    fn incoming(&self, incoming: quinn::Incoming) -> Option<Incoming> {
        let addr = incoming.remote_address();
        let source = admission::source(addr);
        let verdict = self
            .inner
            .admission
            .lock()
            .expect("admission lock poisoned")
            .on_incoming(source, incoming.remote_address_validated());
        match verdict {
            Verdict::Accept => {}
            Verdict::Evict(from) => {
                let oldest = self
                    .inner
                    .by_source
                    .lock()
                    .expect("source lock poisoned")
                    .get_mut(&from)
                    .and_then(VecDeque::pop_front);
                if let Some(oldest) = oldest {
                    tracing::debug!(%from, "node full: the biggest holder's oldest connection makes room");
                    oldest.close(VarInt::from_u32(codes::EVICTED), b"evicted: the node is full");
                }
            }
            Verdict::Retry => {
                // A retry is possible only for a first Initial without a token, which an
                // unvalidated address sent.
                if let Err(error) = incoming.retry() {
                    error.into_incoming().refuse();
                }
                return None;
            }
            Verdict::Refuse(why) => {
                tracing::debug!(%addr, ?why, "incoming connection refused");
                incoming.refuse();
                return None;
            }
        }
        let handshake_slot = Slot::new(&self.inner.admission, source, SlotKind::Handshake);
        let connection_slot = Slot::new(&self.inner.admission, source, SlotKind::Connection);
        if is_placeholder(addr) {
            // A new connection from a relayed peer: its old direct address may be dead, and our
            // handshake answer must not go there. It punches afresh.
            self.inner.paths.forget_direct_at(addr);
        }
        let config = self.server_config_for(addr);
        let this = self.clone();
        let connecting = Box::pin(async move {
            let connecting = match config {
                Some(config) => incoming.accept_with(config),
                None => incoming.accept(),
            }
            .map_err(|e| TransportError::Connection(e.into()))?;
            // The connection can carry 0.5-RTT data (the node's hello, say) before the handshake
            // completes, that is before the dialler's key is verified.
            match connecting.into_0rtt() {
                Ok((quic, accepted)) => {
                    let connection = this.wrap(quic.clone());
                    this.hold_until_closed(&quic, connection_slot);
                    let handshake: BoxFuture<'static, _> = Box::pin(async move {
                        let _slot = handshake_slot;
                        // Resolves when the handshake completes or fails. Its value says whether
                        // the client's 0-RTT data was accepted (never, here), not whether the
                        // handshake succeeded: the close reason tells that.
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, accepted)
                            .await
                            .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))?;
                        if let Some(reason) = quic.close_reason() {
                            return Err(TransportError::Connection(reason.into()));
                        }
                        this.established(&quic);
                        Ok(())
                    });
                    Ok(Accepted { connection, handshake: Some(handshake) })
                }
                // Not expected for incoming connections; fall back to a full handshake.
                Err(connecting) => {
                    let quic = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                        .await
                        .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))?
                        .map_err(|e| TransportError::Connection(e.into()))?;
                    drop(handshake_slot);
                    this.hold_until_closed(&quic, connection_slot);
                    this.established(&quic);
                    Ok(Accepted { connection: this.wrap(quic), handshake: None })
                }
            }
        });
        Some(Incoming { addr, connecting })
    }

    /// Keeps `slot` (the connection's place in the admission counts) until `quic` closes.
    fn hold_until_closed(&self, quic: &quinn::Connection, slot: Slot) {
        let (closed, by_source) = (quic.clone(), self.inner.by_source.clone());
        by_source.lock().expect("source lock poisoned").entry(slot.source).or_default().push_back(quic.clone());
        self.inner.tasks.spawn(async move {
            closed.closed().await;
            let mut sources = by_source.lock().expect("source lock poisoned");
            if let Some(list) = sources.get_mut(&slot.source) {
                list.retain(|c| c.stable_id() != closed.stable_id());
                if list.is_empty() {
                    sources.remove(&slot.source);
                }
            }
            drop(sources);
            drop(slot);
        });
    }

    fn wrap(&self, quic: quinn::Connection) -> Arc<dyn TransportConnection> {
        Arc::new(QuicConnection { quic, paths: Arc::downgrade(&self.inner.paths) })
    }

    /// The handshake of `quic` completed. A connection through a relay placeholder brings the
    /// path table the key both ends derive from its TLS session: it authenticates the
    /// connection's path challenges, so only the two of them can validate a direct path for it.
    /// The key goes when the connection closes (with the peer's last one, its direct path).
    fn established(&self, quic: &quinn::Connection) {
        if !is_placeholder(quic.remote_address()) {
            return;
        }
        let Some(remote) = tls::peer_identity(quic) else { return };
        let mut key = [0; 32];
        let id = quic.stable_id() as u64;
        if let Err(error) = quic.export_keying_material(&mut key, crate::wire::frame::PATH_KEY_LABEL, b"") {
            tracing::debug!(%remote, ?error, "no path key: the connection stays relayed");
            return;
        }
        self.inner.paths.add_key(remote, id, key);
        let (paths, closed) = (Arc::downgrade(&self.inner.paths), quic.clone());
        self.inner.tasks.spawn(async move {
            closed.closed().await;
            if let Some(paths) = paths.upgrade() {
                paths.remove_key(&remote, id);
            }
        });
    }
}

impl Hook for QuicTransport {
    fn name(&self) -> &str {
        HOOK_NAME
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(endpoint) = self.inner.endpoint.lock().expect("endpoint lock poisoned").take() else { return };
            // Refuse new handshakes first: a peer redialling during shutdown must not keep the
            // endpoint busy.
            endpoint.set_server_config(None);
            endpoint.close(VarInt::from_u32(codes::CLOSED), b"shutting down");
            // Lets the peers learn of the close; bounded by the node's shutdown timeout.
            endpoint.wait_idle().await;
            drop(endpoint);
            self.inner.accept_loop.wait().await;
        })
    }
}

impl Listener for QuicTransport {
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.inner.local_addr]
    }

    fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
    ) -> BoxFuture<'_, Result<Arc<dyn TransportConnection>, TransportError>> {
        Box::pin(async move {
            let endpoint = self.endpoint().ok_or(TransportError::ShutDown)?;
            let kind = PathKind::of(addr);
            let (connecting, presented) = match (expected, kind) {
                (Some(expected), kind) => {
                    let (config, presented) = client_config_expecting(&self.inner.identity, kind, expected);
                    // A contact gets a proof of the secret we share (it may be in ContactsOnly
                    // mode); anyone else the plain name.
                    let name = self.inner.gate.server_name_for(&expected, super::gate::unix_now());
                    let name = name.as_deref().unwrap_or(tls::SERVER_NAME);
                    (endpoint.connect_with(config, addr, name), Some((expected, presented)))
                }
                (None, PathKind::Local) => (endpoint.connect(addr, tls::SERVER_NAME), None),
                (None, PathKind::Internet) => {
                    (endpoint.connect_with(self.inner.internet_client.clone(), addr, tls::SERVER_NAME), None)
                }
                (None, PathKind::Relayed) => {
                    (endpoint.connect_with(self.inner.relayed_client.clone(), addr, tls::SERVER_NAME), None)
                }
            };
            let quic = connecting?.await.map_err(|e| match &presented {
                Some((expected, presented)) => match presented.get() {
                    Some(got) if got != expected => TransportError::WrongIdentity { expected: *expected, got: *got },
                    _ => TransportError::Connection(e.into()),
                },
                None => TransportError::Connection(e.into()),
            })?;
            self.established(&quic);
            Ok(self.wrap(quic))
        })
    }

    fn start(&self, accept: Accept) {
        let Some(endpoint) = self.endpoint() else { return };
        let this = self.clone();
        let accept_loop = self.inner.accept_loop.track_future(async move {
            while let Some(incoming) = endpoint.accept().await {
                if let Some(incoming) = this.incoming(incoming) {
                    accept(incoming);
                }
            }
        });
        self.inner.accept_loop.close();
        self.inner.tasks.spawn(accept_loop);
    }
}

impl From<quinn::ConnectError> for TransportError {
    fn from(error: quinn::ConnectError) -> Self {
        match error {
            quinn::ConnectError::EndpointStopping => TransportError::ShutDown,
            quinn::ConnectError::InvalidRemoteAddress(addr) => TransportError::InvalidAddress(addr),
            other => TransportError::Start(other.to_string()),
        }
    }
}

impl From<quinn::ConnectionError> for ConnectionError {
    fn from(error: quinn::ConnectionError) -> Self {
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => ConnectionError::Closed {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            quinn::ConnectionError::LocallyClosed => ConnectionError::LocallyClosed,
            quinn::ConnectionError::TimedOut => ConnectionError::TimedOut,
            quinn::ConnectionError::Reset => ConnectionError::Reset,
            other => ConnectionError::Transport(other.to_string()),
        }
    }
}

/// warren never sends 0-RTT data; should quinn still say it was rejected, the stream is lost.
fn zero_rtt_rejected() -> StreamError {
    StreamError::Connection(ConnectionError::Transport("0-RTT rejected".into()))
}

fn write_error(error: quinn::WriteError) -> io::Error {
    match error {
        quinn::WriteError::Stopped(code) => StreamError::Stopped(code.into_inner()),
        quinn::WriteError::ConnectionLost(lost) => StreamError::Connection(lost.into()),
        quinn::WriteError::ClosedStream => StreamError::ClosedLocally,
        quinn::WriteError::ZeroRttRejected => zero_rtt_rejected(),
    }
    .into_io()
}

fn read_error(error: quinn::ReadError) -> io::Error {
    match error {
        quinn::ReadError::Reset(code) => StreamError::Reset(code.into_inner()),
        quinn::ReadError::ConnectionLost(lost) => StreamError::Connection(lost.into()),
        quinn::ReadError::ClosedStream | quinn::ReadError::IllegalOrderedRead => StreamError::ClosedLocally,
        quinn::ReadError::ZeroRttRejected => zero_rtt_rejected(),
    }
    .into_io()
}

/// A QUIC connection, as the node holds it. [`QuicConnection::quinn`] is the quinn connection
/// underneath, for statistics and datagrams.
#[derive(Debug)]
pub struct QuicConnection {
    quic: quinn::Connection,
    paths: Weak<Paths>,
}

impl QuicConnection {
    /// The quinn connection. Streams opened on it directly bypass protocol routing: the peer
    /// treats their first bytes as a stream header.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.quic
    }
}

fn streams((send, recv): (quinn::SendStream, quinn::RecvStream)) -> (SendStream, RecvStream) {
    (SendStream::new(QuicSend(send)), RecvStream::new(QuicRecv(recv)))
}

impl TransportConnection for QuicConnection {
    fn transport(&self) -> &'static str {
        HOOK_NAME
    }

    fn id(&self) -> u64 {
        self.quic.stable_id() as u64
    }

    fn peer_identity(&self) -> Option<RemoteIdentity> {
        tls::peer_identity(&self.quic)
    }

    fn remote_address(&self) -> SocketAddr {
        self.quic.remote_address()
    }

    fn path(&self) -> Path {
        match self.paths.upgrade() {
            Some(paths) => paths.path_of(self.quic.remote_address()),
            None => Path::Direct { addr: self.quic.remote_address() },
        }
    }

    fn rtt(&self) -> Duration {
        self.quic.rtt()
    }

    fn open_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move { self.quic.open_bi().await.map(streams).map_err(Into::into) })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move { self.quic.accept_bi().await.map(streams).map_err(Into::into) })
    }

    fn open_uni(&self) -> BoxFuture<'_, Result<SendStream, ConnectionError>> {
        Box::pin(async move { Ok(SendStream::new(QuicSend(self.quic.open_uni().await?))) })
    }

    fn accept_uni(&self) -> BoxFuture<'_, Result<RecvStream, ConnectionError>> {
        Box::pin(async move { Ok(RecvStream::new(QuicRecv(self.quic.accept_uni().await?))) })
    }

    fn admit(&self) {
        self.quic.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
        self.quic.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS));
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.quic.close(VarInt::from_u32(code), reason);
    }

    fn close_reason(&self) -> Option<ConnectionError> {
        self.quic.close_reason().map(Into::into)
    }

    fn closed(&self) -> BoxFuture<'_, ConnectionError> {
        Box::pin(async move { self.quic.closed().await.into() })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A QUIC send stream behind [`SendStream`]; chunk writes are zero-copy.
#[derive(Debug)]
struct QuicSend(quinn::SendStream);

impl AsyncWrite for QuicSend {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        quinn::SendStream::poll_write(Pin::new(&mut self.0), cx, buf).map_err(write_error)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.finish().map_err(|_| StreamError::ClosedLocally.into_io()))
    }
}

impl SendHalf for QuicSend {
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        // quinn's future holds no state of its own between polls, so a fresh one each time is
        // the same future; it advances the chunk past what it took.
        let mut chunks = [std::mem::take(chunk)];
        let polled = pin!(self.0.write_chunks(&mut chunks)).poll(cx);
        *chunk = std::mem::take(&mut chunks[0]);
        polled.map(|written| written.map(|_| ()).map_err(write_error))
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        self.0.finish().map_err(|_| StreamError::ClosedLocally)
    }

    fn reset(&mut self, code: u32) {
        let _ = self.0.reset(VarInt::from_u32(code));
    }

    fn stopped(&self) -> BoxFuture<'static, Option<u64>> {
        let stopped = self.0.stopped();
        Box::pin(async move { stopped.await.ok().flatten().map(VarInt::into_inner) })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
}

/// A QUIC receive stream behind [`RecvStream`]; chunk reads are zero-copy.
#[derive(Debug)]
struct QuicRecv(quinn::RecvStream);

impl AsyncRead for QuicRecv {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read_buf(cx, buf).map_err(read_error)
    }
}

impl RecvHalf for QuicRecv {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        // As for writes: quinn's future is a stateless wrapper of its poll.
        pin!(self.0.read_chunk(max, true)).poll(cx).map(|chunk| match chunk {
            Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
            Err(error) => Err(read_error(error)),
        })
    }

    fn stop(&mut self, code: u32) {
        let _ = self.0.stop(VarInt::from_u32(code));
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
}

/// Asks for [`SOCKET_BUFFER`]-byte socket buffers. The kernel caps the request at
/// `net.core.rmem_max`/`wmem_max` (often 208 KiB, which drops packets at a few Gbit/s); a
/// refusal is harmless, so errors are only logged.
pub fn enlarge_socket_buffers(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    if let Err(error) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(%error, "could not enlarge the UDP receive buffer");
    }
    if let Err(error) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(%error, "could not enlarge the UDP send buffer");
    }
}

/// UDP socket buffer size asked for: 4 MiB holds about 3 ms of a 10 Gbit/s stream.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// quinn's Tokio runtime, but spawning on the node's task tracker so that shutdown can wait for
/// the endpoint and connection drivers.
#[derive(Debug)]
struct NodeRuntime {
    tasks: TaskTracker,
}

impl Runtime for NodeRuntime {
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(deadline)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.tasks.spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_kinds_follow_the_address() {
        for (addr, kind) in [
            ("127.0.0.1:5", PathKind::Local),
            ("192.168.1.2:5", PathKind::Local),
            ("10.0.0.1:5", PathKind::Local),
            ("169.254.0.1:5", PathKind::Local),
            ("[::1]:5", PathKind::Local),
            ("[fd00::1]:5", PathKind::Local),
            ("[fe80::1]:5", PathKind::Local),
            ("203.0.113.9:5", PathKind::Internet),
            ("[2001:db8::1]:5", PathKind::Internet),
            ("[::ffff:192.168.1.2]:5", PathKind::Local),
            ("240.0.0.1:9", PathKind::Relayed),
            ("[::ffff:240.0.0.1]:9", PathKind::Relayed),
        ] {
            assert_eq!(PathKind::of(addr.parse().unwrap()), kind, "{addr}");
        }
    }
}
