//! The QUIC transport (quinn + rustls), as a listener hook.
//!
//! One UDP socket both accepts and dials. Both sides authenticate with their Ed25519 identity
//! (see [`tls`](super::tls)). quinn's endpoint and connection drivers run on the node's task
//! tracker, so the node's shutdown waits for them and the port is free when it returns.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, TransportConfig, VarInt};
use tokio_util::task::TaskTracker;

use super::paths::{PathEvents, PathSocket, Paths};
use super::tls;
use crate::Identity;
use crate::connection::codes;
use crate::error::TransportError;
use crate::hook::{BoxFuture, Hook, Listener};

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
    let mut config = quinn::EndpointConfig::default();
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

/// The server configuration for connections through a placeholder: migration off, so that a
/// packet from an address the path table has not validated never moves the connection off its
/// placeholder (it is dropped; QUIC resends).
fn relayed_server_config(identity: &Arc<Identity>) -> quinn::ServerConfig {
    let mut config = server_config_for(identity, PathKind::Relayed);
    config.migration(false);
    config
}

/// quinn client configuration for `identity`, with warren's transport parameters for a LAN.
pub fn client_config(identity: &Arc<Identity>) -> quinn::ClientConfig {
    client_config_for(identity, PathKind::Local)
}

/// quinn client configuration for `identity` and connections of `kind`.
pub fn client_config_for(identity: &Arc<Identity>, kind: PathKind) -> quinn::ClientConfig {
    let crypto = QuicClientConfig::try_from(tls::client_config(identity))
        .expect("the TLS 1.3 configuration has the initial cipher suite QUIC needs");
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
    endpoint: Mutex<Option<quinn::Endpoint>>,
    paths: Arc<Paths>,
    local_addr: SocketAddr,
    /// The node's accept loop, waited for at shutdown (then the port is free).
    accept_loop: TaskTracker,
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
        addr: SocketAddr,
        tasks: &TaskTracker,
        on_path: PathEvents,
    ) -> Result<Self, ListenError> {
        let bind_err = |source| ListenError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
        enlarge_socket_buffers(&socket);
        let runtime = Arc::new(NodeRuntime { tasks: tasks.clone() });
        let udp = runtime.wrap_udp_socket(socket).map_err(bind_err)?;
        let paths = Paths::new(identity.to_remote_identity(), udp, on_path).map_err(bind_err)?;
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            Some(server_config(identity)),
            Arc::new(PathSocket(paths.clone())),
            runtime,
        )
        .map_err(bind_err)?;
        endpoint.set_default_client_config(client_config(identity));
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        Ok(Self {
            inner: Arc::new(QuicInner {
                endpoint: Mutex::new(Some(endpoint.clone())),
                paths,
                local_addr,
                accept_loop: TaskTracker::new(),
                relayed_server: Arc::new(relayed_server_config(identity)),
                relayed_client: client_config_for(identity, PathKind::Relayed),
                internet_server: Arc::new(server_config_for(identity, PathKind::Internet)),
                internet_client: client_config_for(identity, PathKind::Internet),
            }),
        })
    }

    /// Runs `accept_loop` (the node's, handing each incoming connection on) until the endpoint
    /// closes; shutdown waits for it.
    pub(crate) fn run_accept_loop<F>(
        &self,
        accept_loop: impl FnOnce(quinn::Endpoint) -> F,
    ) -> Option<impl Future<Output = ()> + Send + 'static>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let endpoint = self.endpoint()?;
        let tracked = self.inner.accept_loop.track_future(accept_loop(endpoint));
        self.inner.accept_loop.close();
        Some(tracked)
    }

    /// The server configuration for a connection attempt from `remote`: the relayed one for a
    /// placeholder, the internet one for a public address, else None (the endpoint's default,
    /// for a LAN).
    pub(crate) fn server_config_for(&self, remote: SocketAddr) -> Option<Arc<quinn::ServerConfig>> {
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
            endpoint.close(codes::CLOSED, b"shutting down");
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

    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, Result<quinn::Connection, TransportError>> {
        Box::pin(async move {
            let endpoint = self.endpoint().ok_or(TransportError::ShutDown)?;
            let connecting = match PathKind::of(addr) {
                PathKind::Local => endpoint.connect(addr, tls::SERVER_NAME),
                PathKind::Internet => endpoint.connect_with(self.inner.internet_client.clone(), addr, tls::SERVER_NAME),
                PathKind::Relayed => endpoint.connect_with(self.inner.relayed_client.clone(), addr, tls::SERVER_NAME),
            };
            Ok(connecting?.await?)
        })
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
