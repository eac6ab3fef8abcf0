//! The warren relay: what lets two nodes behind NATs reach each other by identity.
//!
//! One UDP socket carries both QUIC (each node's registration connection) and the nodes'
//! relayed data frames ([`warren::wire::frame`]). For each node it serves, the relay
//!
//! - reports the node's reflexive address (the address its packets arrive from),
//! - answers lookups ("is this identity registered here?"),
//! - keeps rendezvous announcements ("I answer for this pairing nameplate") for as long as the
//!   announcer is registered, and lists them to whoever asks ([`rendezvous`]),
//! - forwards data frames to the destination identity, rewriting the header to name the
//!   source. The payload is a QUIC packet of the two peers' own end-to-end encrypted session:
//!   the relay never has a key for it.
//!
//! Frames are forwarded inline, in the socket's receive path, without a copy or a task switch.
//!
//! Volunteers run relays, so access is controlled (an allow-list of identities and/or a token)
//! and each node is limited: a token bucket of [`RelayConfig::max_mbps`] (frames over the rate
//! are dropped, which QUIC's congestion control reads as a slower path) and a total of
//! [`RelayConfig::max_bytes`] forwarded per node per hour, across reconnections (then the node
//! is cut off and refused until the hour is over). Frames
//! come from the address a node registered from, so a node cannot send as another one.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller, VarInt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren::transport::{quic, tls};
use warren::wire::control::{self, Request, Response};
use warren::wire::frame::{self, Frame, RawIdentity};
use warren::wire::record::{self as stream, Record};
use warren::{Identity, RemoteIdentity};

pub use warren::wire::control::{OVER_LIMIT, REFUSED};

mod rendezvous;
pub use rendezvous::MAX_KEYS as MAX_RENDEZVOUS_KEYS;
use rendezvous::Rendezvous;

/// Nodes served at once; further registrations are refused.
pub const MAX_NODES: usize = 10_000;

/// The window of [`RelayConfig::max_bytes`].
pub const BYTE_LIMIT_WINDOW: Duration = Duration::from_secs(3600);

/// TCP connections that have not registered yet, at most; more are closed at once.
pub const MAX_PENDING_TCP: usize = 256;

/// QUIC connections that have not registered yet, at most; more are refused at once (before,
/// any number of handshakes could sit unregistered for up to 20 s each).
pub const MAX_PENDING_QUIC: usize = 256;

/// Nodes registered at once from one IP address (the default of
/// [`RelayConfig::max_nodes_per_ip`]): a host with free identities cannot fill the relay.
pub const MAX_NODES_PER_IP: usize = 64;

/// Bytes waiting in all TCP nodes' queues together, at most; frames past it are dropped, as a
/// congested link would (before, each of 10,000 nodes could queue 1,024 frames: ~15 GB).
pub const MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;

/// Requests (lookups, rendezvous announcements and finds) answered per registration per second
/// at most (a burst of this many, refilled each second); more get no answer. "Is X online" is an oracle: this bounds how fast it is asked.
pub const LOOKUPS_PER_SECOND: u32 = 20;

/// How long a node may take to send its registration after the handshake.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a relay runs.
#[derive(Debug, Clone)]
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
    /// Nodes registered at once from one IP address ([`MAX_NODES_PER_IP`] by default).
    pub max_nodes_per_ip: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { allow: Vec::new(), token: None, max_mbps: None, max_bytes: None, max_nodes_per_ip: MAX_NODES_PER_IP }
    }
}

/// Compares a presented token with the relay's in time that depends on the relay's token's
/// length only, not on where the two first differ (a byte-by-byte `==` told an attacker, by
/// its timing, how much of a guess was right).
fn token_matches(presented: Option<&str>, expected: &str) -> bool {
    let Some(presented) = presented else { return false };
    let (presented, expected) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, byte) in expected.iter().enumerate() {
        diff |= std::hint::black_box(presented.get(i).copied().unwrap_or(0) ^ byte);
    }
    std::hint::black_box(diff) == 0
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
    /// Lookups not answered: the registration was over [`LOOKUPS_PER_SECOND`].
    pub throttled_lookups: u64,
    /// Frames to TCP nodes dropped because all queues together held [`MAX_QUEUED_BYTES`].
    pub queue_full_frames: u64,
}

#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    forwarded_frames: AtomicU64,
    forwarded_bytes: AtomicU64,
    throttled_frames: AtomicU64,
    dropped_frames: AtomicU64,
    cut_off: AtomicU64,
    throttled_lookups: AtomicU64,
    queue_full_frames: AtomicU64,
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

/// One registration's lookups: [`LOOKUPS_PER_SECOND`] per second, counted in whole seconds.
struct Lookups {
    second: Instant,
    count: u32,
}

impl Lookups {
    fn new() -> Self {
        Self { second: Instant::now(), count: 0 }
    }

    /// May one more lookup be answered at `now`? Counts the refusals in `shared`.
    fn allow(&mut self, shared: &Shared, now: Instant) -> bool {
        if now.saturating_duration_since(self.second) >= Duration::from_secs(1) {
            (self.second, self.count) = (now, 0);
        }
        self.count += 1;
        let allowed = self.count <= LOOKUPS_PER_SECOND;
        if !allowed {
            shared.counters.throttled_lookups.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }
}

/// Where a node's frames go.
#[derive(Clone)]
enum Dest {
    /// Its UDP address (registered over QUIC).
    Udp(SocketAddr),
    /// Its TLS stream's writer (registered over TCP).
    Tcp(mpsc::Sender<Vec<u8>>),
}

/// Who sent a frame.
enum Sender {
    /// From this UDP address.
    Udp(SocketAddr),
    /// On this node's TCP stream.
    Node(RawIdentity),
}

struct Node {
    registration: u64,
    /// The IP address it registered from (for the per-IP cap).
    ip: std::net::IpAddr,
    dest: Dest,
    bucket: Option<Bucket>,
    /// Bytes forwarded since `window`.
    forwarded: u64,
    /// Start of the current byte-limit window.
    window: Instant,
    cut: bool,
}

#[derive(Default)]
struct Registry {
    nodes: HashMap<RawIdentity, Node>,
    by_addr: HashMap<SocketAddr, RawIdentity>,
    /// Nodes registered from each IP address.
    per_ip: HashMap<std::net::IpAddr, usize>,
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

    /// Records what `id` spent in the window that began at `since`.
    fn remember_spent(&mut self, id: RawIdentity, bytes: u64, since: Instant) {
        if self.spent.len() < 2 * MAX_NODES || self.spent.contains_key(&id) {
            self.spent.insert(id, (since, bytes));
        }
    }

    fn remove(&mut self, id: &RawIdentity) -> Option<Node> {
        let node = self.nodes.remove(id)?;
        if let Some(count) = self.per_ip.get_mut(&node.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&node.ip);
            }
        }
        if let Dest::Udp(addr) = &node.dest
            && self.by_addr.get(addr) == Some(id)
        {
            self.by_addr.remove(addr);
        }
        Some(node)
    }
}

/// How to close a registration from outside its task.
enum Closer {
    Quic(quinn::Connection),
    Tcp(CancellationToken),
}

struct Shared {
    config: RelayConfig,
    registry: Mutex<Registry>,
    counters: Counters,
    next_registration: AtomicU64,
    /// Registrations to close for going over their byte limit (closed from a task, not from
    /// the socket's receive path).
    cut: mpsc::UnboundedSender<u64>,
    closers: Mutex<HashMap<u64, Closer>>,
    /// The UDP socket, for frames arriving over TCP for a UDP node.
    udp: OnceLock<Arc<dyn AsyncUdpSocket>>,
    /// Bytes in all TCP nodes' queues (at most [`MAX_QUEUED_BYTES`]).
    queued_bytes: AtomicU64,
    /// Rendezvous announcements, by key and by registration.
    rendezvous: Mutex<Rendezvous>,
    /// A malicious operator's knob, for tests: flip a bit in every payload forwarded.
    tamper: std::sync::atomic::AtomicBool,
}

/// Where to send a forwarded frame.
enum Forward {
    Udp(SocketAddr),
    Tcp(mpsc::Sender<Vec<u8>>),
}

impl Shared {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().expect("registry lock poisoned")
    }

    /// Registers `id` from `ip` (replacing an older registration of it). Err: why it is
    /// refused.
    fn register(
        &self,
        id: RawIdentity,
        ip: std::net::IpAddr,
        dest: Dest,
        registration: u64,
        closer: Closer,
    ) -> Result<(), &'static str> {
        let ip = warren::transport::paths::unmap(SocketAddr::new(ip, 0)).ip();
        let mut registry = self.registry();
        if registry.nodes.len() >= MAX_NODES && !registry.nodes.contains_key(&id) {
            return Err("the relay is full");
        }
        let replacing_here = registry.nodes.get(&id).is_some_and(|n| n.ip == ip);
        if !replacing_here && registry.per_ip.get(&ip).copied().unwrap_or(0) >= self.config.max_nodes_per_ip {
            return Err("too many nodes from this address");
        }
        let now = Instant::now();
        // What the node spent in this window: in earlier registrations, and in one still open
        // (it restarted, or its old connection is dying; this one replaces it).
        let mut spent = registry.spent(&id, now);
        if let Some(old) = registry.remove(&id) {
            spent = spent.max(old.forwarded);
            // Kept even if this registration is refused: the old one's task will find nothing
            // to record when it ends.
            if self.config.max_bytes.is_some() {
                registry.remember_spent(id, spent, old.window);
            }
        }
        if self.config.max_bytes.is_some_and(|max| spent >= max) {
            return Err("over the relay's byte limit");
        }
        if let Dest::Udp(addr) = &dest {
            registry.by_addr.insert(*addr, id);
        }
        let bucket = self.config.max_mbps.map(Bucket::new);
        let window = registry.spent.get(&id).map_or(now, |(since, _)| *since);
        registry.nodes.insert(id, Node { registration, ip, dest, bucket, forwarded: spent, window, cut: false });
        *registry.per_ip.entry(ip).or_default() += 1;
        drop(registry);
        self.closers.lock().expect("closer lock poisoned").insert(registration, closer);
        Ok(())
    }

    /// Ends a registration (if it is still the node's current one).
    fn unregister(&self, id: &RawIdentity, registration: u64) {
        self.closers.lock().expect("closer lock poisoned").remove(&registration);
        self.rendezvous().forget(registration);
        let mut registry = self.registry();
        if registry.nodes.get(id).is_some_and(|n| n.registration == registration) {
            let node = registry.remove(id).expect("checked above");
            if self.config.max_bytes.is_some() {
                registry.remember_spent(*id, node.forwarded, node.window);
            }
        }
    }

    /// A UDP node's NAT gave it a new address (rebinding): its frames come from there now.
    fn moved(&self, id: &RawIdentity, registration: u64, to: SocketAddr) {
        let mut registry = self.registry();
        let Some(node) = registry.nodes.get_mut(id).filter(|n| n.registration == registration) else { return };
        let Dest::Udp(old) = std::mem::replace(&mut node.dest, Dest::Udp(to)) else { return };
        if registry.by_addr.get(&old) == Some(id) {
            registry.by_addr.remove(&old);
        }
        registry.by_addr.insert(to, *id);
    }

    fn online(&self, id: &RawIdentity) -> bool {
        self.registry().nodes.contains_key(id)
    }

    fn rendezvous(&self) -> std::sync::MutexGuard<'_, Rendezvous> {
        self.rendezvous.lock().expect("rendezvous lock poisoned")
    }

    /// Answers one request of `node`'s registration `registration` (None: no answer, because
    /// it is over its rate or not a request one answers after registering).
    fn answer(
        &self,
        node: &RawIdentity,
        registration: u64,
        lookups: &mut Lookups,
        request: Request,
    ) -> Option<Response> {
        if request.id().is_none() || !lookups.allow(self, Instant::now()) {
            return None;
        }
        Some(match request {
            Request::Register { .. } => return None,
            Request::Lookup { id, peer } => Response::Lookup { id, online: self.online(peer.as_bytes()) },
            Request::Announce { id, key } => {
                Response::Announced { id, accepted: self.rendezvous().announce(key, *node, registration) }
            }
            Request::Withdraw { id, key } => {
                self.rendezvous().withdraw(key, registration);
                Response::Announced { id, accepted: true }
            }
            Request::Find { id, key } => {
                let found = self.rendezvous().find(&key);
                let peers = found.iter().filter_map(|raw| RemoteIdentity::from_bytes(raw).ok()).collect();
                Response::Found { id, peers }
            }
        })
    }

    fn drop_frame(&self) -> Option<Forward> {
        self.counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Routes one data frame, rewriting its header in place to name the sender. Returns where
    /// to send it, or None to drop it.
    fn route(&self, from: Sender, frame: &mut [u8], now: Instant) -> Option<Forward> {
        let Ok(Frame::Data { peer: dest, payload }) = Frame::parse(frame) else { return self.drop_frame() };
        let payload_len = payload.len();
        let mut registry = self.registry();
        let source = match from {
            Sender::Udp(addr) => match registry.by_addr.get(&addr) {
                Some(id) => *id,
                None => return self.drop_frame(),
            },
            Sender::Node(id) => id,
        };
        let to = match registry.nodes.get(&dest) {
            Some(node) => match &node.dest {
                Dest::Udp(addr) => Forward::Udp(*addr),
                Dest::Tcp(writer) => Forward::Tcp(writer.clone()),
            },
            None => return self.drop_frame(),
        };
        let Some(sender) = registry.nodes.get_mut(&source).filter(|n| !n.cut) else { return self.drop_frame() };
        if let Some(bucket) = &mut sender.bucket
            && !bucket.take(frame.len(), now)
        {
            self.counters.throttled_frames.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if now.duration_since(sender.window) >= BYTE_LIMIT_WINDOW {
            sender.window = now;
            sender.forwarded = 0;
        }
        sender.forwarded += payload_len as u64;
        if self.config.max_bytes.is_some_and(|max| sender.forwarded > max) {
            sender.cut = true;
            self.counters.cut_off.fetch_add(1, Ordering::Relaxed);
            let _ = self.cut.send(sender.registration);
            return None;
        }
        drop(registry);
        frame::write_data_header(frame, &source);
        if self.tamper.load(Ordering::Relaxed) && payload_len > 0 {
            let last = frame.len() - 1;
            frame[last] ^= 0x01;
        }
        self.counters.forwarded_frames.fetch_add(1, Ordering::Relaxed);
        self.counters.forwarded_bytes.fetch_add(payload_len as u64, Ordering::Relaxed);
        Some(to)
    }

    /// A record left a TCP node's queue (written, or dropped with the node): a data record gives
    /// its bytes back to the budget [`forward`](Self::forward) took them from (control records
    /// were never counted). A record is a 2-byte length, its kind, then its body.
    fn dequeued(&self, record: &[u8]) {
        if record.get(2) == Some(&stream::DATA) {
            self.queued_bytes.fetch_sub(record.len() as u64, Ordering::Relaxed);
        }
    }

    /// Sends a routed frame on its way; a full queue or socket buffer drops it, as a congested
    /// link would.
    fn forward(&self, to: Forward, frame: &[u8], src_ip: Option<std::net::IpAddr>) {
        match to {
            Forward::Udp(addr) => {
                let Some(udp) = self.udp.get() else { return };
                let transmit = Transmit { destination: addr, ecn: None, contents: frame, segment_size: None, src_ip };
                if let Err(error) = udp.try_send(&transmit) {
                    tracing::trace!(%addr, %error, "frame not forwarded");
                }
            }
            Forward::Tcp(writer) => {
                let record = stream::encode(stream::DATA, frame);
                let len = record.len() as u64;
                if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
                    self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    self.counters.queue_full_frames.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if writer.try_send(record).is_err() {
                    self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                }
            }
        }
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
            // A QUIC packet that shares a GRO buffer with frames is dropped (rare: a node's
            // control traffic is a few packets a minute; QUIC resends it).
            let kept = warren::transport::gro::sort_received(
                bufs,
                meta,
                n,
                |meta, segment| {
                    if !frame::is_frame(segment) {
                        return;
                    }
                    if let Some(to) = self.shared.0.route(Sender::Udp(meta.addr), segment, now) {
                        self.shared.0.forward(to, segment, meta.dst_ip);
                    }
                },
                |_| {},
            );
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

/// A UDP socket on `listen`, a TCP listener on the same port, and the STUN socket on the next
/// port. With port 0 the system picks the UDP port, and its TCP or STUN twin may be taken by
/// someone else: then another UDP port is tried (a few times), instead of failing at random.
/// With a port given, a taken STUN port only leaves the relay without one (nodes then cannot
/// test their NAT; a warning says so).
async fn bind_sockets(
    listen: SocketAddr,
) -> std::io::Result<(std::net::UdpSocket, tokio::net::TcpListener, Option<std::net::UdpSocket>)> {
    const TRIES: usize = 8;
    let mut tries = 0;
    loop {
        let socket = std::net::UdpSocket::bind(listen)?;
        let bound = socket.local_addr()?;
        let stun = bound.port().checked_add(1).map(|p| std::net::UdpSocket::bind(SocketAddr::new(bound.ip(), p)));
        let retry = |error: &std::io::Error| {
            listen.port() == 0 && error.kind() == std::io::ErrorKind::AddrInUse && tries < TRIES
        };
        let stun = match stun {
            Some(Ok(stun)) => Some(stun),
            Some(Err(error)) if retry(&error) => {
                tries += 1;
                continue;
            }
            Some(Err(error)) => {
                tracing::warn!(port = bound.port() + 1, %error, "no STUN port: nodes cannot test their NAT here");
                None
            }
            None => None,
        };
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((socket, tcp, stun)),
            Err(error) if retry(&error) => tries += 1,
            Err(error) => return Err(error),
        }
    }
}

/// Binding requests answered per second at most (the answer is a few bytes longer than the
/// request: a spoofed flood gains the spoofer little, and is cut off here).
pub const STUN_ANSWERS_PER_SECOND: u32 = 2000;

/// Answers STUN binding requests on the relay's second port with the address each came from:
/// with the address the main port saw, a node learns whether its NAT maps per destination
/// (`warren::state::nat`).
async fn serve_stun(socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; warren::wire::stun::MAX_MESSAGE + 1];
    let (mut window, mut answered) = (tokio::time::Instant::now(), 0u32);
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if window.elapsed() >= Duration::from_secs(1) {
            (window, answered) = (tokio::time::Instant::now(), 0);
        }
        if answered >= STUN_ANSWERS_PER_SECOND {
            continue;
        }
        if let Some(answer) = warren::wire::stun::answer(&buf[..len], from) {
            answered += 1;
            let _ = socket.send_to(&answer, from).await;
        }
    }
}

impl Relay {
    /// Starts a relay with `identity` on `listen`: QUIC and data frames on the UDP port, TLS
    /// over TCP on the same port number, STUN binding answers on the next UDP port (the NAT
    /// test of `warren::state::nat`).
    pub async fn spawn(identity: Identity, listen: SocketAddr, config: RelayConfig) -> Result<Self, ListenError> {
        let bind_err = |source| ListenError { addr: listen, source };
        let (socket, tcp, stun) = bind_sockets(listen).await.map_err(bind_err)?;
        quic::enlarge_socket_buffers(&socket);
        let inner = TokioRuntime.wrap_udp_socket(socket).map_err(bind_err)?;
        let (cut_tx, mut cut_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(SharedHandle(Shared {
            config,
            registry: Mutex::default(),
            counters: Counters::default(),
            next_registration: AtomicU64::new(1),
            cut: cut_tx,
            closers: Mutex::default(),
            udp: OnceLock::new(),
            queued_bytes: AtomicU64::new(0),
            rendezvous: Mutex::default(),
            tamper: Default::default(),
        }));
        let _ = shared.0.udp.set(inner.clone());
        let identity = Arc::new(identity);
        let me = identity.to_remote_identity();
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quic::endpoint_config_for(&identity),
            Some(quic::server_config(&identity)),
            Arc::new(RelaySocket { inner, shared: shared.clone() }),
            Arc::new(TokioRuntime),
        )
        .map_err(bind_err)?;
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());

        let (accepting, inner_tasks, serving, stop) = (endpoint.clone(), tasks.clone(), shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_QUIC));
            while let Some(Some(incoming)) = stop.run_until_cancelled(accepting.accept()).await {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    refused(&serving.0, incoming.remote_address(), "too many unregistered connections");
                    incoming.refuse();
                    continue;
                };
                let (shared, stop) = (serving.clone(), stop.clone());
                inner_tasks.spawn(async move {
                    stop.run_until_cancelled(serve_quic(incoming, shared, permit)).await;
                });
            }
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&identity)));
        let (inner_tasks, serving, stop) = (tasks.clone(), shared.clone(), cancel.clone());
        tasks.spawn(async move {
            // Connections that have not registered yet, at most (each may take ~20 s).
            let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_TCP));
            while let Some(accepted) = stop.run_until_cancelled(tcp.accept()).await {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: wait a little and go on.
                    Err(error) => {
                        tracing::warn!(%error, "TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else { continue };
                let (shared, stop, acceptor) = (serving.clone(), stop.clone(), acceptor.clone());
                inner_tasks.spawn(async move {
                    stop.run_until_cancelled(serve_tcp(stream, addr, acceptor, shared, permit)).await;
                });
            }
        });
        if let Some(stun) = stun {
            stun.set_nonblocking(true).map_err(bind_err)?;
            let stun = tokio::net::UdpSocket::from_std(stun).map_err(bind_err)?;
            let stop = cancel.clone();
            tasks.spawn(async move {
                stop.run_until_cancelled(serve_stun(stun)).await;
            });
        }
        let (stop, closing) = (cancel.clone(), shared.clone());
        tasks.spawn(async move {
            while let Some(Some(registration)) = stop.run_until_cancelled(cut_rx.recv()).await {
                match closing.0.closers.lock().expect("closer lock poisoned").get(&registration) {
                    Some(Closer::Quic(conn)) => {
                        conn.close(quinn::VarInt::from_u32(OVER_LIMIT), b"over the relay's byte limit")
                    }
                    Some(Closer::Tcp(token)) => token.cancel(),
                    None => {}
                }
            }
        });
        tracing::info!(identity = %me, %local_addr, "relay listening (UDP and TCP)");
        Ok(Self { identity: me, local_addr, endpoint, shared, tasks, cancel })
    }

    /// The relay's identity.
    pub fn identity(&self) -> RemoteIdentity {
        self.identity
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What a malicious relay operator can do, for tests of what nodes make of it: sends the
    /// registered node `to` a data frame claiming to come from `from`, carrying `payload`
    /// (counted as forwarded). False if `to` is not registered.
    #[doc(hidden)]
    pub fn send_forged(&self, to: RemoteIdentity, from: RemoteIdentity, payload: &[u8]) -> bool {
        let shared = &self.shared.0;
        let dest = match shared.registry().nodes.get(to.as_bytes()) {
            Some(node) => match &node.dest {
                Dest::Udp(addr) => Forward::Udp(*addr),
                Dest::Tcp(writer) => Forward::Tcp(writer.clone()),
            },
            None => return false,
        };
        shared.counters.forwarded_frames.fetch_add(1, Ordering::Relaxed);
        shared.forward(dest, &frame::data(&from, payload), None);
        true
    }

    /// What a malicious relay operator can do, for tests of what nodes make of it: while `on`,
    /// every payload forwarded has its last bit flipped.
    #[doc(hidden)]
    pub fn tamper_with_frames(&self, on: bool) {
        self.shared.0.tamper.store(on, Ordering::Relaxed);
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.0.counters;
        RelayStats {
            nodes: self.shared.0.registry().nodes.len() as u64,
            refused: c.refused.load(Ordering::Relaxed),
            forwarded_frames: c.forwarded_frames.load(Ordering::Relaxed),
            forwarded_bytes: c.forwarded_bytes.load(Ordering::Relaxed),
            throttled_frames: c.throttled_frames.load(Ordering::Relaxed),
            dropped_frames: c.dropped_frames.load(Ordering::Relaxed),
            cut_off: c.cut_off.load(Ordering::Relaxed),
            throttled_lookups: c.throttled_lookups.load(Ordering::Relaxed),
            queue_full_frames: c.queue_full_frames.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection and stops; the ports are free when it returns.
    pub async fn shutdown(self) {
        self.endpoint.close(VarInt::from_u32(0), b"relay shutting down");
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        // A node's task cancelled before it saw its connection close leaves its closer (a
        // quinn connection) registered; that connection holds the endpoint, which holds the
        // socket, which holds this registry: a cycle that kept the UDP port bound after
        // shutdown (a restart on the same port then failed with "address in use", about one
        // run in five of the relay-restart test). Cleared here, the cycle is gone.
        self.shared.0.closers.lock().expect("closer lock poisoned").clear();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
    }
}

/// Checks a node's identity and token and registers it. Err: the reason it is refused.
fn admit(shared: &Shared, node: Option<RemoteIdentity>, request: Request) -> Result<RemoteIdentity, &'static str> {
    let node = node.ok_or("no identity")?;
    if !shared.config.allow.is_empty() && !shared.config.allow.contains(&node) {
        return Err("not on the relay's allow-list");
    }
    match request {
        Request::Register { token }
            if shared.config.token.as_deref().is_none_or(|expected| token_matches(token.as_deref(), expected)) =>
        {
            Ok(node)
        }
        Request::Register { .. } => Err("wrong or missing token"),
        _ => Err("the first request must be a registration"),
    }
}

fn refused(shared: &Shared, addr: SocketAddr, reason: &str) {
    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%addr, reason, "registration refused");
}

/// Serves one node's QUIC connection: registration, then lookups until it closes.
async fn serve_quic(incoming: quinn::Incoming, shared: Arc<SharedHandle>, pending: tokio::sync::OwnedSemaphorePermit) {
    let shared = &shared.0;
    let Ok(Ok(conn)) = tokio::time::timeout(warren::node::HANDSHAKE_TIMEOUT, async { incoming.accept()?.await }).await
    else {
        return;
    };
    // As the socket reports it (IPv4-mapped on a dual-stack socket), as frames will arrive.
    let mut addr = conn.remote_address();
    let refuse = |reason: &str| {
        refused(shared, addr, reason);
        conn.close(quinn::VarInt::from_u32(REFUSED), reason.as_bytes());
    };
    let identity = tls::peer_identity(&conn);
    if let (Some(node), false) = (identity, shared.config.allow.is_empty())
        && !shared.config.allow.contains(&node)
    {
        // Refused before reading anything from it.
        return refuse("not on the relay's allow-list");
    }
    let registration = tokio::time::timeout(REGISTER_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let request: Request = control::read(&mut recv).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((send, request))
    })
    .await;
    let Ok(Ok((mut send, request))) = registration else { return refuse("no registration") };
    let registered = admit(shared, identity, request).and_then(|node| {
        let id = shared.next_registration.fetch_add(1, Ordering::Relaxed);
        shared
            .register(*node.as_bytes(), addr.ip(), Dest::Udp(addr), id, Closer::Quic(conn.clone()))
            .map(|()| (node, id))
    });
    let (node, registration) = match registered {
        Ok(registered) => registered,
        Err(reason) => {
            let _ = control::write(&mut send, &Response::Refused { reason: reason.into() }).await;
            let _ = send.finish();
            return refuse(reason);
        }
    };
    drop(pending);
    tracing::debug!(%node, %addr, "node registered over QUIC");
    let mut lookups = Lookups::new();
    if control::write(&mut send, &Response::Registered { observed: warren::transport::paths::unmap(addr) })
        .await
        .is_ok()
    {
        let _ = send.finish();
        loop {
            tokio::select! {
                stream = conn.accept_bi() => {
                    let Ok((mut send, mut recv)) = stream else { break };
                    let Ok(request) = control::read::<_, Request>(&mut recv).await else { continue };
                    let Some(answer) = shared.answer(node.as_bytes(), registration, &mut lookups, request) else { continue };
                    let _ = control::write(&mut send, &answer).await;
                    let _ = send.finish();
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let now = conn.remote_address();
                    if now != addr {
                        shared.moved(node.as_bytes(), registration, now);
                        addr = now;
                    }
                }
            }
        }
    }
    shared.unregister(node.as_bytes(), registration);
    tracing::debug!(%node, "node left");
}

/// Serves one node's TLS stream over TCP: registration, then frames and lookups.
async fn serve_tcp(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<SharedHandle>,
    pending: tokio::sync::OwnedSemaphorePermit,
) {
    let shared = &shared.0;
    let _ = stream.set_nodelay(true);
    warren::relay::tcp::keepalive(&stream);
    let Ok(Ok(tls)) = tokio::time::timeout(warren::node::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await else {
        return;
    };
    let identity = tls::peer_identity_tls(tls.get_ref().1);
    let (mut reader, mut writer) = tokio::io::split(tls);
    let first = tokio::time::timeout(REGISTER_TIMEOUT, stream::read(&mut reader)).await;
    let request = match first {
        Ok(Ok(Record::Control(body))) => control::decode::<Request>(&body).ok(),
        _ => None,
    };
    let Some(request) = request else { return refused(shared, addr, "no registration") };
    let (queue, mut queued) = mpsc::channel::<Vec<u8>>(stream::QUEUE);
    let cut = CancellationToken::new();
    let registered = admit(shared, identity, request).and_then(|node| {
        let id = shared.next_registration.fetch_add(1, Ordering::Relaxed);
        shared
            .register(*node.as_bytes(), addr.ip(), Dest::Tcp(queue.clone()), id, Closer::Tcp(cut.clone()))
            .map(|()| (node, id))
    });
    let (node, registration) = match registered {
        Ok(registered) => registered,
        Err(reason) => {
            if let Ok(record) = stream::control(&Response::Refused { reason: reason.into() }) {
                let _ = writer.write_all(&record).await;
            }
            let _ = writer.shutdown().await;
            return refused(shared, addr, reason);
        }
    };
    drop(pending);
    tracing::debug!(%node, %addr, "node registered over TCP");
    let Ok(welcome) = stream::control(&Response::Registered { observed: warren::transport::paths::unmap(addr) }) else {
        return;
    };
    let _ = queue.try_send(welcome);
    // Every data record written gives its bytes back to the budget (control records, the
    // welcome and lookup answers, were never counted).
    let mut lookups = Lookups::new();
    let writing = warren::relay::tcp::write_queued_then(&mut writer, &mut queued, |record| shared.dequeued(record));
    let reading = async {
        loop {
            match stream::read(&mut reader).await {
                Ok(Record::Data(mut frame)) => {
                    if let Some(to) = shared.route(Sender::Node(*node.as_bytes()), &mut frame, Instant::now()) {
                        shared.forward(to, &frame, None);
                    }
                }
                Ok(Record::Control(body)) => {
                    let Ok(request) = control::decode::<Request>(&body) else { continue };
                    let Some(answer) = shared.answer(node.as_bytes(), registration, &mut lookups, request) else {
                        continue;
                    };
                    let Ok(answer) = stream::control(&answer) else { continue };
                    if queue.send(answer).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    };
    tokio::select! {
        _ = writing => {}
        _ = reading => {}
        _ = cut.cancelled() => {}
    }
    shared.unregister(node.as_bytes(), registration);
    // What is still queued will never be written: its bytes go back to the budget.
    queued.close();
    while let Ok(record) = queued.try_recv() {
        shared.dequeued(&record);
    }
    tracing::debug!(%node, "node left (TCP)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly_and_any_difference_refuses() {
        assert!(token_matches(Some("sesame"), "sesame"));
        for wrong in ["", "s", "sesam", "sesamE", "sesame!", "xesame", "sesame\0"] {
            assert!(!token_matches(Some(wrong), "sesame"), "{wrong:?}");
        }
        assert!(!token_matches(None, "sesame"));
    }

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
