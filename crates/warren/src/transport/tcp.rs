//! The TCP transport: a TCP listener whose connections are authenticated by the Noise handshake
//! of [`super::noise`] and multiplexed by [`crate::state::mux`] ([`super::muxed`] drives it).
//! The node uses it like QUIC: same hello, same streams, same codes, same admission limits.
//!
//! From the SYN, the dialler's first application byte leaves after two round trips (TCP's
//! handshake, then Noise's first two messages) and arrives half a round trip later, right
//! behind Noise's third message; the node's hello exchange then costs what it costs on QUIC.
//!
//! Incoming connections pass [`crate::state::admission`] as QUIC's do (TCP's own handshake has
//! shown the address is real, so there is no Retry), must finish the Noise handshake within
//! [`HANDSHAKE_TIMEOUT`], and until the node admits them may open 8 streams and send 64 KiB.
//! In ContactsOnly mode the first Noise message must carry a contact's proof ([`super::gate`]);
//! without one the listener answers nothing and drops the connection.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{Accept, Accepted, Incoming, Listener, TransportConnection};
use super::gate::ContactGate;
use super::muxed::{MuxConnection, Parts};
use super::noise::{self, NoiseKeys};
use super::slot::{Slot, SlotKind};
use crate::error::TransportError;
use crate::hook::{BoxFuture, Hook};
use crate::state::admission::{self, Admission, Limits, Stats, Verdict};
use crate::state::mux::{Config, Side};
use crate::transport::connection::codes;
use crate::{Identity, RemoteIdentity};

/// The hook's (and the transport's) name.
pub const HOOK_NAME: &str = "tcp";

/// An incoming connection must complete the Noise handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TCP listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (TCP): {source}")]
pub struct TcpListenError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The TCP transport. Cheap to clone. A node makes one with
/// [`P2P::listen_tcp`](crate::P2P::listen_tcp).
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<TcpInner>,
}

struct TcpInner {
    keys: NoiseKeys,
    gate: Arc<ContactGate>,
    local_addr: SocketAddr,
    listener: Mutex<Option<std::net::TcpListener>>,
    /// Connections' tasks.
    tasks: TaskTracker,
    accept_loop: TaskTracker,
    stop: CancellationToken,
    admission: Arc<Mutex<Admission>>,
    /// Accepted connections by source, oldest first (where an eviction takes one from).
    by_source: Mutex<HashMap<IpAddr, VecDeque<Weak<MuxConnection>>>>,
    /// Every live connection, closed at shutdown.
    live: Mutex<Vec<Weak<MuxConnection>>>,
}

impl TcpTransport {
    /// Binds a TCP listener on `addr` (port 0 picks a free port) for `identity`.
    pub(crate) fn bind(identity: &Identity, gate: Arc<ContactGate>, addr: SocketAddr) -> Result<Self, TcpListenError> {
        let bind_err = |source| TcpListenError { addr, source };
        let socket =
            socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).map_err(bind_err)?;
        // Port reuse: a simultaneous open (hole punching) dials from this port.
        socket.set_reuse_address(true).map_err(bind_err)?;
        socket.set_reuse_port(true).map_err(bind_err)?;
        if addr.is_ipv6() {
            let _ = socket.set_only_v6(false);
        }
        socket.bind(&addr.into()).map_err(bind_err)?;
        socket.listen(1024).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let listener: std::net::TcpListener = socket.into();
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            inner: Arc::new(TcpInner {
                keys: NoiseKeys::new(identity),
                gate,
                local_addr,
                listener: Mutex::new(Some(listener)),
                tasks: TaskTracker::new(),
                accept_loop: TaskTracker::new(),
                stop: CancellationToken::new(),
                admission: Arc::default(),
                by_source: Mutex::default(),
                live: Mutex::default(),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The admission counts and verdicts so far.
    pub fn admission(&self) -> (Stats, (usize, usize)) {
        let admission = self.inner.admission.lock().expect("admission lock poisoned");
        (admission.stats(), admission.counts())
    }

    /// Sets the limits on incoming connections; the counts so far are kept.
    pub fn set_admission_limits(&self, limits: Limits) {
        self.inner.admission.lock().expect("admission lock poisoned").set_limits(limits);
    }

    fn track(&self, conn: &Arc<MuxConnection>) {
        let mut live = self.inner.live.lock().expect("live lock poisoned");
        live.retain(|c| c.strong_count() > 0);
        live.push(Arc::downgrade(conn));
    }

    /// Starts the connection's tasks over a handshaken stream.
    fn connection(
        &self,
        stream: TcpStream,
        secured: noise::Secured,
        side: Side,
        remote: SocketAddr,
    ) -> Arc<MuxConnection> {
        let (read, write) = stream.into_split();
        let config = match side {
            Side::Dialler => Config::full(),
            Side::Acceptor => Config::unadmitted(),
        };
        let parts = Parts { read, write, secured, side, config, remote, transport: HOOK_NAME };
        let conn = MuxConnection::spawn(parts, &self.inner.tasks);
        self.track(&conn);
        conn
    }

    /// One accepted TCP connection, as the node takes it, or None when admission refuses it.
    fn incoming(&self, stream: TcpStream, addr: SocketAddr) -> Option<Incoming> {
        let source = admission::source(addr);
        let verdict = self.inner.admission.lock().expect("admission lock poisoned").on_incoming(source, true);
        match verdict {
            Verdict::Accept | Verdict::Retry => {}
            Verdict::Evict(from) => {
                let oldest = self
                    .inner
                    .by_source
                    .lock()
                    .expect("source lock poisoned")
                    .get_mut(&from)
                    .and_then(VecDeque::pop_front)
                    .and_then(|c| c.upgrade());
                if let Some(oldest) = oldest {
                    oldest.close(codes::EVICTED, b"evicted: the node is full");
                }
            }
            Verdict::Refuse(why) => {
                tracing::debug!(%addr, ?why, "incoming TCP connection refused");
                return None;
            }
        }
        let handshake_slot = Slot::new(&self.inner.admission, source, SlotKind::Handshake);
        let connection_slot = Slot::new(&self.inner.admission, source, SlotKind::Connection);
        let this = self.clone();
        let connecting = Box::pin(async move {
            let _ = stream.set_nodelay(true);
            let mut stream = stream;
            let gate = this.inner.gate.clone();
            let handshake = noise::accept(&mut stream, &this.inner.keys, |proof| {
                let proof = (!proof.is_empty()).then_some(proof);
                gate.admit(proof, super::gate::unix_now()).map(drop).map_err(|why| format!("{why:?}"))
            });
            let secured = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))??;
            drop(handshake_slot);
            let conn = this.connection(stream, secured, Side::Acceptor, addr);
            this.hold_until_closed(&conn, connection_slot);
            Ok(Accepted { connection: conn as Arc<dyn TransportConnection>, handshake: None })
        });
        Some(Incoming { addr, connecting })
    }

    /// Keeps `slot` until `conn` closes.
    fn hold_until_closed(&self, conn: &Arc<MuxConnection>, slot: Slot) {
        let this = self.clone();
        this.inner
            .by_source
            .lock()
            .expect("source lock poisoned")
            .entry(slot.source)
            .or_default()
            .push_back(Arc::downgrade(conn));
        let (closed, weak) = (conn.on_closed(), Arc::downgrade(conn));
        self.inner.tasks.spawn(async move {
            closed.await;
            let mut sources = this.inner.by_source.lock().expect("source lock poisoned");
            if let Some(list) = sources.get_mut(&slot.source) {
                list.retain(|c| !c.ptr_eq(&weak) && c.strong_count() > 0);
                if list.is_empty() {
                    sources.remove(&slot.source);
                }
            }
            drop(sources);
            drop(slot);
        });
    }
}

impl Hook for TcpTransport {
    fn name(&self) -> &str {
        HOOK_NAME
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.stop.cancel();
            self.inner.accept_loop.close();
            self.inner.accept_loop.wait().await;
            let live: Vec<_> = self.inner.live.lock().expect("live lock poisoned").drain(..).collect();
            for conn in live.iter().filter_map(Weak::upgrade) {
                conn.close(codes::CLOSED, b"shutting down");
            }
            self.inner.tasks.close();
            self.inner.tasks.wait().await;
        })
    }
}

impl Listener for TcpTransport {
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.inner.local_addr]
    }

    fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<RemoteIdentity>,
    ) -> BoxFuture<'_, Result<Arc<dyn TransportConnection>, TransportError>> {
        Box::pin(async move {
            if self.inner.stop.is_cancelled() {
                return Err(TransportError::ShutDown);
            }
            let mut stream = TcpStream::connect(addr).await.map_err(|error| {
                TransportError::Connection(crate::error::ConnectionError::Transport(format!("TCP connect: {error}")))
            })?;
            let _ = stream.set_nodelay(true);
            let proof = expected.and_then(|e| self.inner.gate.server_name_for(&e, super::gate::unix_now()));
            let secured = noise::dial(&mut stream, &self.inner.keys, expected, proof.as_deref()).await?;
            let conn = self.connection(stream, secured, Side::Dialler, addr);
            Ok(conn as Arc<dyn TransportConnection>)
        })
    }

    fn start(&self, accept: Accept) {
        let Some(listener) = self.inner.listener.lock().expect("listener lock poisoned").take() else { return };
        let this = self.clone();
        self.inner.accept_loop.spawn(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "TCP listener could not start");
                    return;
                }
            };
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = this.inner.stop.cancelled() => return,
                };
                match accepted {
                    Ok((stream, addr)) => {
                        if let Some(incoming) = this.incoming(stream, addr) {
                            accept(incoming);
                        }
                    }
                    Err(error) => {
                        // Out of descriptors, say: wait rather than spin.
                        tracing::debug!(%error, "TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
}
