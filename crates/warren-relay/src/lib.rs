//! The warren relay: what lets two nodes behind NATs reach each other by identity.
//!
//! One UDP socket carries both QUIC (each node's registration connection) and the nodes'
//! relayed data frames ([`warren::relay::frame`]). For each node it serves, the relay
//!
//! - reports the node's reflexive address (the address its packets arrive from),
//! - answers lookups ("is this identity registered here?"),
//! - forwards data frames to the destination identity, rewriting the header to name the
//!   source. The payload is a QUIC packet of the two peers' own end-to-end encrypted session:
//!   the relay never has a key for it.
//!
//! Frames are forwarded inline, in the socket's receive path, without a copy or a task switch.
//!
//! Volunteers run relays, so access is controlled (an allow-list of identities and/or a token)
//! and each node is limited: a token bucket of [`RelayConfig::max_mbps`] (frames over the rate
//! are dropped, which QUIC's congestion control reads as a slower path) and a total of
//! [`RelayConfig::max_bytes`] forwarded per registration (then the node is cut off). Frames
//! come from the address a node registered from, so a node cannot send as another one.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller, VarInt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren::relay::control::{self, Request, Response};
use warren::relay::frame::{self, Frame, RawIdentity};
use warren::transport::{quic, tls};
use warren::{Identity, RemoteIdentity};

/// QUIC close code for a node the relay refuses.
pub const REFUSED: VarInt = VarInt::from_u32(0x52_01);
/// QUIC close code for a node over its byte limit.
pub const OVER_LIMIT: VarInt = VarInt::from_u32(0x52_02);

/// Nodes served at once; further registrations are refused.
pub const MAX_NODES: usize = 10_000;

/// The window of [`RelayConfig::max_bytes`].
pub const BYTE_LIMIT_WINDOW: Duration = Duration::from_secs(3600);

/// How long a node may take to send its registration after the handshake.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a relay runs.
#[derive(Debug, Clone, Default)]
pub struct RelayConfig {
    /// Only these identities may register (empty: anyone with the token).
    pub allow: Vec<RemoteIdentity>,
    /// Nodes must present this token (None: no token needed).
    pub token: Option<String>,
    /// Forwarding rate per node, in Mbit/s (None: unlimited). Frames over it are dropped.
    pub max_mbps: Option<f64>,
    /// Bytes forwarded per node in each [`BYTE_LIMIT_WINDOW`] before it is cut off and
    /// refused until the window ends (None: unlimited). Counted across reconnections.
    pub max_bytes: Option<u64>,
}

/// What a relay has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    /// Nodes registered now.
    pub nodes: u64,
    /// Registrations refused (allow-list, token, capacity).
    pub refused: u64,
    /// Frames forwarded.
    pub forwarded_frames: u64,
    /// Payload bytes forwarded.
    pub forwarded_bytes: u64,
    /// Frames dropped because the sender was over its rate.
    pub throttled_frames: u64,
    /// Frames dropped: unknown sender, unknown destination or malformed.
    pub dropped_frames: u64,
    /// Nodes cut off for going over their byte limit.
    pub cut_off: u64,
}

#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    forwarded_frames: AtomicU64,
    forwarded_bytes: AtomicU64,
    throttled_frames: AtomicU64,
    dropped_frames: AtomicU64,
    cut_off: AtomicU64,
}

/// A token bucket in bytes.
struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(mbps: f64) -> Self {
        let rate = mbps * 1e6 / 8.0;
        // A tenth of a second of traffic, and at least a few full packets.
        let burst = (rate / 10.0).max(16.0 * 1500.0);
        Self { rate, burst, level: burst, at: Instant::now() }
    }

    fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        if self.level < bytes as f64 {
            return false;
        }
        self.level -= bytes as f64;
        true
    }
}

struct Node {
    id: RawIdentity,
    conn_id: usize,
    bucket: Option<Bucket>,
    forwarded: u64,
    cut: bool,
}

#[derive(Default)]
struct Registry {
    by_addr: HashMap<SocketAddr, Node>,
    by_id: HashMap<RawIdentity, SocketAddr>,
    /// Bytes each node had forwarded in its current byte-limit window, kept across
    /// registrations (only when there is a byte limit).
    spent: HashMap<RawIdentity, (Instant, u64)>,
}

impl Registry {
    /// Bytes `id` already spent in its current window.
    fn spent(&mut self, id: &RawIdentity, now: Instant) -> u64 {
        self.spent.retain(|_, (since, _)| now.duration_since(*since) < BYTE_LIMIT_WINDOW);
        self.spent.get(id).map_or(0, |(_, bytes)| *bytes)
    }

    fn remember_spent(&mut self, id: RawIdentity, bytes: u64, now: Instant) {
        if self.spent.len() < 2 * MAX_NODES || self.spent.contains_key(&id) {
            self.spent.entry(id).or_insert((now, 0)).1 = bytes;
        }
    }
}

struct Shared {
    config: RelayConfig,
    registry: Mutex<Registry>,
    counters: Counters,
    /// Connections to close for going over their byte limit (closed from a task, not from the
    /// socket's receive path).
    cut: mpsc::UnboundedSender<usize>,
}

impl Shared {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().expect("registry lock poisoned")
    }

    /// Forwards one data frame from `from`, rewriting its header in place. Returns where to send
    /// it, or None to drop it.
    fn route(&self, from: SocketAddr, frame: &mut [u8], now: Instant) -> Option<SocketAddr> {
        let Ok(Frame::Data { peer: dest, payload }) = Frame::parse(frame) else {
            self.counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let payload_len = payload.len();
        let mut registry = self.registry();
        let Some(&to) = registry.by_id.get(&dest) else {
            self.counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(sender) = registry.by_addr.get_mut(&from).filter(|n| !n.cut) else {
            self.counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if let Some(bucket) = &mut sender.bucket
            && !bucket.take(frame.len(), now)
        {
            self.counters.throttled_frames.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        sender.forwarded += payload_len as u64;
        if self.config.max_bytes.is_some_and(|max| sender.forwarded > max) {
            sender.cut = true;
            self.counters.cut_off.fetch_add(1, Ordering::Relaxed);
            let _ = self.cut.send(sender.conn_id);
            return None;
        }
        let source = sender.id;
        drop(registry);
        frame::write_data_header(frame, &source);
        self.counters.forwarded_frames.fetch_add(1, Ordering::Relaxed);
        self.counters.forwarded_bytes.fetch_add(payload_len as u64, Ordering::Relaxed);
        Some(to)
    }
}

/// The relay's socket: QUIC goes to quinn, data frames are forwarded on the spot.
#[derive(Debug)]
struct RelaySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<SharedHandle>,
}

/// `Shared` behind a Debug impl, for the socket.
struct SharedHandle(Shared);

impl std::fmt::Debug for SharedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("relay")
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let now = Instant::now();
            let mut kept = 0;
            for i in 0..n {
                let len = meta[i].len;
                if !frame::is_frame(&bufs[i][..len]) {
                    if kept != i {
                        let (front, back) = bufs.split_at_mut(i);
                        front[kept][..len].copy_from_slice(&back[0][..len]);
                        meta[kept] = meta[i];
                    }
                    kept += 1;
                    continue;
                }
                let from = meta[i].addr;
                let stride = meta[i].stride.max(1);
                for segment in bufs[i][..len].chunks_mut(stride) {
                    let Some(to) = self.shared.0.route(from, segment, now) else { continue };
                    let transmit = Transmit {
                        destination: to,
                        ecn: None,
                        contents: segment,
                        segment_size: None,
                        src_ip: meta[i].dst_ip,
                    };
                    if let Err(error) = self.inner.try_send(&transmit) {
                        // A full send buffer drops the frame, as a congested link would.
                        tracing::trace!(%to, %error, "frame not forwarded");
                    }
                }
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the operating system said.
    pub source: io::Error,
}

/// A running relay.
pub struct Relay {
    identity: RemoteIdentity,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    shared: Arc<SharedHandle>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Relay {
    /// Starts a relay with `identity` on `listen` (UDP).
    pub async fn spawn(identity: Identity, listen: SocketAddr, config: RelayConfig) -> Result<Self, ListenError> {
        let bind_err = |source| ListenError { addr: listen, source };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
        quic::enlarge_socket_buffers(&socket);
        let inner = TokioRuntime.wrap_udp_socket(socket).map_err(bind_err)?;
        let (cut_tx, mut cut_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(SharedHandle(Shared {
            config,
            registry: Mutex::default(),
            counters: Counters::default(),
            cut: cut_tx,
        }));
        let identity = Arc::new(identity);
        let me = identity.to_remote_identity();
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quic::endpoint_config(),
            Some(quic::server_config(&identity)),
            Arc::new(RelaySocket { inner, shared: shared.clone() }),
            Arc::new(TokioRuntime),
        )
        .map_err(bind_err)?;
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let connections: Arc<Mutex<HashMap<usize, quinn::Connection>>> = Arc::default();

        let (accepting, inner_tasks, conns) = (endpoint.clone(), tasks.clone(), connections.clone());
        let (serving, stop) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            while let Some(Some(incoming)) = stop.run_until_cancelled(accepting.accept()).await {
                let (shared, conns, stop) = (serving.clone(), conns.clone(), stop.clone());
                inner_tasks.spawn(async move {
                    stop.run_until_cancelled(serve(incoming, shared, conns)).await;
                });
            }
        });
        let stop = cancel.clone();
        tasks.spawn(async move {
            while let Some(Some(conn_id)) = stop.run_until_cancelled(cut_rx.recv()).await {
                if let Some(conn) = connections.lock().expect("connection lock poisoned").get(&conn_id) {
                    conn.close(OVER_LIMIT, b"over the relay's byte limit");
                }
            }
        });
        tracing::info!(identity = %me, %local_addr, "relay listening");
        Ok(Self { identity: me, local_addr, endpoint, shared, tasks, cancel })
    }

    /// The relay's identity.
    pub fn identity(&self) -> RemoteIdentity {
        self.identity
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.0.counters;
        RelayStats {
            nodes: self.shared.0.registry().by_id.len() as u64,
            refused: c.refused.load(Ordering::Relaxed),
            forwarded_frames: c.forwarded_frames.load(Ordering::Relaxed),
            forwarded_bytes: c.forwarded_bytes.load(Ordering::Relaxed),
            throttled_frames: c.throttled_frames.load(Ordering::Relaxed),
            dropped_frames: c.dropped_frames.load(Ordering::Relaxed),
            cut_off: c.cut_off.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection and stops; the port is free when it returns.
    pub async fn shutdown(self) {
        self.endpoint.close(VarInt::from_u32(0), b"relay shutting down");
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
    }
}

/// Serves one node's connection: registration, then lookups until it closes.
async fn serve(
    incoming: quinn::Incoming,
    shared: Arc<SharedHandle>,
    conns: Arc<Mutex<HashMap<usize, quinn::Connection>>>,
) {
    let shared = &shared.0;
    let Ok(Ok(conn)) = tokio::time::timeout(warren::p2p::HANDSHAKE_TIMEOUT, async { incoming.accept()?.await }).await
    else {
        return;
    };
    let refuse = |reason: &str| {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(addr = %conn.remote_address(), reason, "registration refused");
        conn.close(REFUSED, reason.as_bytes());
    };
    let Some(node) = tls::peer_identity(&conn) else { return refuse("no identity") };
    if !shared.config.allow.is_empty() && !shared.config.allow.contains(&node) {
        return refuse("not on the relay's allow-list");
    }
    let registration = tokio::time::timeout(REGISTER_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let request: Request = control::read(&mut recv).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((send, request))
    })
    .await;
    let (mut send, token) = match registration {
        Ok(Ok((send, Request::Register { token }))) => (send, token),
        Ok(Ok(_)) => return refuse("the first request must be a registration"),
        Ok(Err(_)) | Err(_) => return refuse("no registration"),
    };
    if shared.config.token.is_some() && token != shared.config.token {
        let _ = control::write(&mut send, &Response::Refused { reason: "wrong or missing token".into() }).await;
        let _ = send.finish();
        return refuse("wrong or missing token");
    }
    let conn_id = conn.stable_id();
    let mut addr = conn.remote_address();
    let over_limit = {
        let mut registry = shared.registry();
        if registry.by_id.len() >= MAX_NODES && !registry.by_id.contains_key(node.as_bytes()) {
            drop(registry);
            return refuse("the relay is full");
        }
        let now = Instant::now();
        // What the node spent in this window: in earlier registrations, and in a registration
        // still open (it restarted, or its old connection is dying; this one replaces it).
        let mut spent = registry.spent(node.as_bytes(), now);
        if let Some(old) = registry.by_id.get(node.as_bytes()).copied() {
            if let Some(entry) = registry.by_addr.remove(&old) {
                spent = spent.max(entry.forwarded);
            }
            registry.by_id.remove(node.as_bytes());
        }
        if shared.config.max_bytes.is_some_and(|max| spent >= max) {
            registry.remember_spent(*node.as_bytes(), spent, now);
            true
        } else {
            registry.by_id.insert(*node.as_bytes(), addr);
            let bucket = shared.config.max_mbps.map(Bucket::new);
            registry.by_addr.insert(addr, Node { id: *node.as_bytes(), conn_id, bucket, forwarded: spent, cut: false });
            false
        }
    };
    if over_limit {
        let _ = control::write(&mut send, &Response::Refused { reason: "over the relay's byte limit".into() }).await;
        let _ = send.finish();
        return refuse("over the relay's byte limit");
    }
    conns.lock().expect("connection lock poisoned").insert(conn_id, conn.clone());
    tracing::debug!(%node, %addr, "node registered");
    if control::write(&mut send, &Response::Registered { observed: addr }).await.is_ok() {
        let _ = send.finish();
        loop {
            tokio::select! {
                stream = conn.accept_bi() => {
                    let Ok((mut send, mut recv)) = stream else { break };
                    let Ok(Request::Lookup { peer }) = control::read::<_, Request>(&mut recv).await else { continue };
                    let online = shared.registry().by_id.contains_key(peer.as_bytes());
                    let _ = control::write(&mut send, &Response::Lookup { online }).await;
                    let _ = send.finish();
                }
                // The node's NAT may give it a new address (rebinding): frames come from there now.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let now = conn.remote_address();
                    if now != addr {
                        let mut registry = shared.registry();
                        if let Some(entry) = registry.by_addr.remove(&addr) {
                            registry.by_addr.insert(now, entry);
                            registry.by_id.insert(*node.as_bytes(), now);
                        }
                        addr = now;
                    }
                }
            }
        }
    }
    conns.lock().expect("connection lock poisoned").remove(&conn_id);
    let mut registry = shared.registry();
    if registry.by_addr.get(&addr).is_some_and(|n| n.conn_id == conn_id) {
        let entry = registry.by_addr.remove(&addr).expect("checked above");
        if shared.config.max_bytes.is_some() {
            registry.remember_spent(entry.id, entry.forwarded, Instant::now());
        }
        if registry.by_id.get(node.as_bytes()) == Some(&addr) {
            registry.by_id.remove(node.as_bytes());
        }
    }
    tracing::debug!(%node, "node left");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(8.0); // 1 MB/s, 100 kB burst
        let mut sent = 0;
        // One simulated second in 1 ms steps, offering 10 kB per step (10 MB/s).
        for ms in 0..1000 {
            let now = start + Duration::from_millis(ms);
            for _ in 0..10 {
                if bucket.take(1000, now) {
                    sent += 1000;
                }
            }
        }
        // About 1 MB/s plus the initial burst.
        assert!((1_000_000..=1_150_000).contains(&sent), "{sent}");
    }
}
