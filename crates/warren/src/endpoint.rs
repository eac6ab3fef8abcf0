//! One builder that says everything a node is made of: its identity, its transports, its
//! relay, its discovery sources and its protocols. `P2P::builder(..)….spawn().await` is the
//! way in for most programs; [`P2P::new`] with [`P2P::listen_quic`] and friends is the same,
//! step by step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::discovery::cache::BootstrapHook;
use crate::discovery::manual::{ManualDiscovery, ManualPeer};
use crate::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use crate::error::RegisterError;
use crate::identity::Identity;
use crate::node::{P2P, ProtocolHandler};
use crate::relay::client::RelayConfig;
use crate::transport::quic::ListenError;

/// Builds and starts a node. See [`P2P::builder`].
#[must_use = "a builder does nothing until spawned"]
pub struct Builder {
    app_name: String,
    identity: Identity,
    listen: Vec<SocketAddr>,
    listen_tcp: Vec<SocketAddr>,
    listen_utp: Vec<SocketAddr>,
    relay: Option<RelayConfig>,
    hole_punching: bool,
    port_mapping: Option<crate::portmap::PortMapConfig>,
    mdns: Option<DiscoveryMode>,
    manual: Vec<ManualPeer>,
    bootstrap_cache: Option<PathBuf>,
    protocols: Vec<(String, Arc<dyn ProtocolHandler>)>,
    device_info: bool,
    background: Vec<String>,
}

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A listening socket could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A TCP listener could not be bound.
    #[error(transparent)]
    ListenTcp(#[from] crate::transport::tcp::TcpListenError),
    /// A uTP listener could not start.
    #[error(transparent)]
    ListenUtp(#[from] crate::transport::utp_listener::UtpListenError),
    /// A protocol name was invalid or given twice.
    #[error(transparent)]
    Protocol(#[from] RegisterError),
}

impl P2P {
    /// A builder for a node named `app_name` (used by discovery, e.g. `_warren._udp`) with
    /// `identity`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use warren::{Identity, P2P, Stream};
    /// let node = P2P::builder("my-app", Identity::generate())
    ///     .listen_quic("0.0.0.0:0".parse()?)
    ///     .protocol("echo/1", |stream: Stream| async move {
    ///         // `stream.remote()` is the peer's verified identity.
    ///         let (mut send, mut recv) = stream.into_split();
    ///         let _ = tokio::io::copy(&mut recv, &mut send).await;
    ///     })
    ///     .spawn()
    ///     .await?;
    /// println!("I am {}", node.id());
    /// node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn builder(app_name: impl Into<String>, identity: Identity) -> Builder {
        Builder {
            app_name: app_name.into(),
            identity,
            listen: Vec::new(),
            listen_tcp: Vec::new(),
            listen_utp: Vec::new(),
            background: Vec::new(),
            relay: None,
            hole_punching: true,
            port_mapping: None,
            mdns: None,
            manual: Vec::new(),
            bootstrap_cache: None,
            protocols: Vec::new(),
            device_info: false,
        }
    }
}

impl Builder {
    /// Listens for QUIC on `addr` (port 0: any free port). Call it again for more sockets (an
    /// IPv4 and an IPv6 one); with none, the node listens on `0.0.0.0:0`.
    pub fn listen_quic(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Also listens for TCP on `addr` (Noise and warren's multiplexer; see
    /// [`crate::transport::tcp`]). QUIC stays the transport dials use; [`P2P::dial_via`] dials
    /// over TCP.
    pub fn listen_tcp(mut self, addr: SocketAddr) -> Self {
        self.listen_tcp.push(addr);
        self
    }

    /// Also listens for uTP on `addr` (Noise and warren's multiplexer over LEDBAT-controlled
    /// uTP; see [`crate::transport::utp_listener`]), for background traffic.
    pub fn listen_utp(mut self, addr: SocketAddr) -> Self {
        self.listen_utp.push(addr);
        self
    }

    /// Marks `protocol` as background traffic ([`P2P::set_background`]).
    pub fn background_protocol(mut self, protocol: impl Into<String>) -> Self {
        self.background.push(protocol.into());
        self
    }

    /// Registers with this relay from the first QUIC socket, so that peers registered there
    /// reach the node by identity alone (and it reaches them).
    pub fn relay(mut self, config: RelayConfig) -> Self {
        self.relay = Some(config);
        self
    }

    /// Hole punching on (the default) or off. Off, relayed connections stay relayed and peers
    /// never learn this node's addresses.
    pub fn hole_punching(mut self, enabled: bool) -> Self {
        self.hole_punching = enabled;
        self
    }

    /// Asks the gateway for a port mapping of the first QUIC socket (PCP, NAT-PMP or UPnP IGD;
    /// off by default: see [`crate::portmap`]), and offers it to peers as a candidate.
    pub fn port_mapping(mut self, config: crate::portmap::PortMapConfig) -> Self {
        self.port_mapping = Some(config);
        self
    }

    /// Finds and announces peers on the LAN over mDNS, in `mode`.
    pub fn mdns(mut self, mode: DiscoveryMode) -> Self {
        self.mdns = Some(mode);
        self
    }

    /// Dials these peers (addresses given by hand) and keeps them connected.
    pub fn manual_peers(mut self, peers: impl IntoIterator<Item = ManualPeer>) -> Self {
        self.manual.extend(peers);
        self
    }

    /// Remembers the peers and relays that worked in the file `path` and reconnects to them at
    /// start (a damaged file is rebuilt, with a warning in the log).
    pub fn bootstrap_cache(mut self, path: impl Into<PathBuf>) -> Self {
        self.bootstrap_cache = Some(path.into());
        self
    }

    /// Sends the operating system and device model to verified peers, in the hello (off by
    /// default: they fingerprint the device; see [`crate::node::device_info`]).
    pub fn device_info(mut self, share: bool) -> Self {
        self.device_info = share;
        self
    }

    /// Routes incoming streams that name `protocol` to `handler`; the stream it gets knows the
    /// peer's verified identity ([`Stream::remote`](crate::Stream::remote)).
    pub fn protocol(mut self, protocol: &str, handler: impl ProtocolHandler) -> Self {
        self.protocols.push((protocol.to_owned(), Arc::new(handler)));
        self
    }

    /// Starts the node: protocols first (so that no early stream is refused), then the
    /// sockets, the relay and the discovery sources. On an error, whatever started is shut down.
    pub async fn spawn(self) -> Result<P2P, BuildError> {
        let p2p = P2P::new(self.app_name, self.identity);
        for protocol in &self.background {
            p2p.set_background(protocol, true);
        }
        if self.device_info {
            p2p.metadata_mut().extend(crate::node::device_info()).expect("two short entries fit the wire limits");
        }
        let started = async {
            let started = Self::start(&p2p, self.listen, self.relay, self.hole_punching, self.protocols).await?;
            for addr in self.listen_tcp {
                p2p.listen_tcp(addr).await?;
            }
            for addr in self.listen_utp {
                p2p.listen_utp(addr).await?;
            }
            Ok::<_, BuildError>(started)
        };
        match started.await {
            Ok((port, first)) => {
                if let Some(config) = self.port_mapping {
                    p2p.add_port_mapping(&first, config);
                }
                if let Some(path) = &self.bootstrap_cache {
                    let (_, warning) = BootstrapHook::spawn(&p2p, path);
                    if let Some(warning) = warning {
                        tracing::warn!(%warning, "bootstrap cache");
                    }
                }
                if !self.manual.is_empty() {
                    ManualDiscovery::spawn(&p2p, self.manual);
                }
                if let Some(mode) = self.mdns {
                    MdnsDiscovery::spawn(&p2p, port, mode);
                }
                Ok(p2p)
            }
            Err(error) => {
                p2p.shutdown().await;
                Err(error)
            }
        }
    }

    /// The node's sockets and relay; returns the first socket's port (what mDNS announces) and
    /// the first socket.
    async fn start(
        p2p: &P2P,
        mut listen: Vec<SocketAddr>,
        relay: Option<RelayConfig>,
        hole_punching: bool,
        protocols: Vec<(String, Arc<dyn ProtocolHandler>)>,
    ) -> Result<(u16, crate::transport::quic::QuicTransport), BuildError> {
        for (name, handler) in protocols {
            p2p.register_shared_protocol(&name, handler)?;
        }
        if listen.is_empty() {
            listen.push(SocketAddr::from(([0, 0, 0, 0], 0)));
        }
        let mut first = None;
        for addr in listen {
            let quic = p2p.listen_quic(addr).await?;
            quic.set_hole_punching(hole_punching);
            first.get_or_insert(quic);
        }
        let first = first.expect("at least one listener");
        if let Some(relay) = relay {
            p2p.add_relay(&first, relay);
        }
        Ok((first.local_addr().port(), first))
    }
}
