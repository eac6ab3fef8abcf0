//! One UDP socket, several paths per peer: the socket quinn sees.
//!
//! A peer reached through a relay gets a stable placeholder address in `240.0.0.0/8` (reserved,
//! never routed) and quinn only ever sees that address. Underneath, [`Paths`] sends each packet
//! for it either straight to the peer's punched address or, wrapped in a data frame
//! ([`crate::wire::frame`]), to the relay; packets coming back either way are handed to quinn
//! as coming from the placeholder. So when a hole punch succeeds, the connection moves from the
//! relay to the direct path without quinn noticing: no stream fails, nothing is re-sent but
//! what was in flight (QUIC's loss recovery covers it).
//!
//! Everything else (connections dialled to real addresses) passes through untouched.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use serde::Serialize;
use tokio::sync::Notify;

use crate::RemoteIdentity;
use crate::wire::frame::{self, Frame, RawIdentity};

/// The path a connection's packets take right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Path {
    /// Straight to the peer's address (known, discovered or punched).
    Direct {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// Through a relay, end-to-end encrypted.
    Relayed {
        /// The relay.
        relay: RemoteIdentity,
        /// The relay's address.
        addr: SocketAddr,
    },
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Direct { addr } => write!(f, "direct {addr}"),
            Path::Relayed { relay, addr } => write!(f, "relayed via {relay}@{addr}"),
        }
    }
}

/// Peers with a placeholder address at once (each relayed peer takes one; they are kept for
/// the life of the node). Frames from further unknown peers are dropped.
pub const MAX_PEERS: usize = 4096;

/// Relayed datagrams waiting for quinn; more are dropped, as a full socket buffer would.
pub const INBOX: usize = 4096;

/// The port of every placeholder address.
const PLACEHOLDER_PORT: u16 = 9;

/// Is `addr` a placeholder for a relayed peer?
pub fn is_placeholder(addr: SocketAddr) -> bool {
    matches!(unmap(addr).ip(), IpAddr::V4(ip) if ip.octets()[0] == 240)
}

fn placeholder(index: u32) -> SocketAddr {
    let [_, a, b, c] = index.to_be_bytes();
    SocketAddr::new(Ipv4Addr::new(240, a, b, c).into(), PLACEHOLDER_PORT)
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The relay this node is registered with.
#[derive(Debug, Clone)]
pub(crate) struct RelayRoute {
    pub(crate) identity: RemoteIdentity,
    pub(crate) addr: SocketAddr,
    pub(crate) observed: SocketAddr,
    pub(crate) egress: RelayEgress,
}

/// How data frames reach the relay.
#[derive(Debug, Clone)]
pub(crate) enum RelayEgress {
    /// Beside QUIC on the node's UDP socket.
    Udp,
    /// As records on the TLS/TCP link (the writer task's queue).
    Tcp(tokio::sync::mpsc::Sender<Vec<u8>>),
}

impl RelayRoute {
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self.egress, RelayEgress::Tcp(_))
    }
}

/// What the path table reports; the node turns these into its own events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// The packets of the connections to `remote` through its placeholder now take `path`.
    Changed {
        /// The peer.
        remote: RemoteIdentity,
        /// The path now.
        path: Path,
    },
}

/// Where the path table reports its events, synchronously and in order (the node maps them to
/// its own events; a `PathChanged` always comes before the `HolePunch` that caused it).
pub type PathEvents = Box<dyn Fn(PathEvent) + Send + Sync>;

struct PeerPath {
    placeholder: SocketAddr,
    direct: Option<SocketAddr>,
    /// Last packet either way: idle entries make room when the table is full.
    last_used: std::time::Instant,
    /// Packets sent on the direct path since the last one heard from it.
    unanswered: Option<Unanswered>,
    /// The direct path went silent: packets go through the relay until it is heard again.
    fallen_back: bool,
    /// When the direct path was punched.
    direct_at: std::time::Instant,
}

impl PeerPath {
    /// The direct address packets go to now: none after the path went silent, while a relay
    /// can carry them instead.
    fn live_direct(&self, has_relay: bool) -> Option<SocketAddr> {
        self.direct.filter(|_| !self.fallen_back || !has_relay)
    }

    /// A direct path punched now (Some) or forgotten (None), with no silence counted.
    fn set_direct(&mut self, direct: Option<SocketAddr>) {
        self.direct = direct;
        self.direct_at = std::time::Instant::now();
        self.unanswered = None;
        self.fallen_back = false;
    }
}

#[derive(Clone, Copy)]
struct Unanswered {
    count: u32,
    /// When the second one was sent.
    since: std::time::Instant,
}

/// A direct path is given up for the relay (until a packet arrives on it again) when packets
/// kept going out on it for this long and none came back. Over the RTT of any usable path and
/// quinn's first few probe timeouts; a keep-alive goes out every 10 s and is answered at once,
/// so a working path is always heard within it. quinn's probes after a loss (about 0.3, 0.9,
/// 2.1, 4.5 s at 100 ms RTT) find the relay at the 4th or 5th, well before the idle timeout.
pub const DIRECT_SILENCE: std::time::Duration = std::time::Duration::from_secs(3);

impl Unanswered {
    /// Counts one more packet sent at `now`; true if the path has now been silent too long.
    ///
    /// The clock starts at the second packet: the first may be an acknowledgement, which asks
    /// for no answer (a connection idle since it acknowledged something, then sending again,
    /// is not a silent path). Every later one is, in practice, a packet the peer answers
    /// within a round trip.
    fn sent(slot: &mut Option<Self>, now: std::time::Instant) -> bool {
        let entry = slot.get_or_insert(Unanswered { count: 0, since: now });
        entry.count += 1;
        if entry.count == 2 {
            entry.since = now;
        }
        entry.count >= 3 && now.duration_since(entry.since) >= DIRECT_SILENCE
    }
}

/// How long a placeholder must be unused before another peer may take it: past quinn's idle
/// timeout, so no connection can still be using it.
pub const PLACEHOLDER_IDLE: std::time::Duration = std::time::Duration::from_secs(90);

struct Punch {
    nonce: u64,
    /// What our acknowledgements carry, and what the peer's must carry: exchanged only inside
    /// the encrypted signalling, so an acknowledgement cannot be forged by someone who saw a
    /// punch (punches carry the nonce in the clear).
    send_ack: u64,
    expect_ack: u64,
    initiator: bool,
    confirmed: Option<SocketAddr>,
    done: Arc<Notify>,
}

#[derive(Default)]
struct State {
    peers: HashMap<RawIdentity, PeerPath>,
    by_placeholder: HashMap<SocketAddr, RemoteIdentity>,
    by_direct: HashMap<SocketAddr, RawIdentity>,
    relay: Option<RelayRoute>,
    punches: HashMap<RawIdentity, Punch>,
    /// When each peer's last offer was answered (bounded: entries older than
    /// [`MIN_OFFER_INTERVAL`] are dropped).
    answered: HashMap<RawIdentity, std::time::Instant>,
    /// The placeholder table is full and no entry can be reclaimed before this.
    no_room_until: Option<std::time::Instant>,
}

/// Offers to punch answered per peer at most this often (the dialler's own schedule retries
/// after 30 s at the soonest): a peer cannot make this node send punch after punch.
pub const MIN_OFFER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl State {
    fn placeholder_for(&mut self, remote: RemoteIdentity) -> Option<SocketAddr> {
        let now = std::time::Instant::now();
        if let Some(peer) = self.peers.get_mut(remote.as_bytes()) {
            peer.last_used = now;
            return Some(peer.placeholder);
        }
        let addr = if self.peers.len() < MAX_PEERS {
            placeholder(self.peers.len() as u32 + 1)
        } else {
            // Full: the longest-unused entry makes room, if it has been idle long enough. When
            // none has, none can before the stalest could: no scan (under the lock every
            // datagram takes) until then.
            if self.no_room_until.is_some_and(|until| now < until) {
                return None;
            }
            let (&stale, entry) = self.peers.iter().min_by_key(|(_, p)| p.last_used)?;
            if now.duration_since(entry.last_used) < PLACEHOLDER_IDLE {
                self.no_room_until = Some(entry.last_used + PLACEHOLDER_IDLE);
                return None;
            }
            let addr = entry.placeholder;
            self.peers.remove(&stale);
            self.by_placeholder.remove(&addr);
            self.by_direct.retain(|_, id| *id != stale);
            self.punches.remove(&stale);
            addr
        };
        let entry = PeerPath {
            placeholder: addr,
            direct: None,
            last_used: now,
            unanswered: None,
            fallen_back: false,
            direct_at: now,
        };
        self.peers.insert(*remote.as_bytes(), entry);
        self.by_placeholder.insert(addr, remote);
        Some(addr)
    }
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    waker: Option<Waker>,
}

/// The path table and the socket around the node's UDP socket. See the module docs.
pub struct Paths {
    me: RemoteIdentity,
    socket: Arc<dyn AsyncUdpSocket>,
    ipv6: bool,
    state: Mutex<State>,
    any_direct: AtomicBool,
    punching: AtomicBool,
    inbox: Mutex<Inbox>,
    events: PathEvents,
}

impl fmt::Debug for Paths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paths").field("me", &self.me).finish_non_exhaustive()
    }
}

impl Paths {
    pub(crate) fn new(me: RemoteIdentity, socket: Arc<dyn AsyncUdpSocket>, events: PathEvents) -> io::Result<Arc<Self>> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        let paths = Arc::new(Self {
            me,
            socket,
            ipv6,
            state: Mutex::default(),
            any_direct: AtomicBool::new(false),
            punching: AtomicBool::new(true),
            inbox: Mutex::default(),
            events,
        });
        Ok(paths)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("path lock poisoned")
    }

    fn emit(&self, event: PathEvent) {
        (self.events)(event);
    }

    /// `addr` in the socket's address family (IPv4-mapped on an IPv6 socket).
    fn in_family(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.ipv6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            _ => addr,
        }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether this node takes part in hole punching (see `QuicTransport::set_hole_punching`).
    pub fn hole_punching(&self) -> bool {
        self.punching.load(Ordering::Relaxed)
    }

    pub(crate) fn set_hole_punching(&self, enabled: bool) {
        self.punching.store(enabled, Ordering::Relaxed);
    }

    pub(crate) fn set_relay(&self, relay: Option<RelayRoute>) {
        self.state().relay = relay;
    }

    pub(crate) fn relay(&self) -> Option<RelayRoute> {
        self.state().relay.clone()
    }

    /// The placeholder address quinn dials to reach `remote` through the relay.
    pub(crate) fn placeholder_for(&self, remote: RemoteIdentity) -> Option<SocketAddr> {
        self.state().placeholder_for(remote).map(|a| self.in_family(a))
    }

    /// The path behind a connection's remote address.
    pub fn path_of(&self, remote_addr: SocketAddr) -> Path {
        let addr = unmap(remote_addr);
        if !is_placeholder(addr) {
            return Path::Direct { addr };
        }
        let state = self.state();
        let peer = state.by_placeholder.get(&addr).and_then(|id| state.peers.get(id.as_bytes()));
        let direct = peer.and_then(|p| p.live_direct(state.relay.is_some()));
        match (direct, &state.relay) {
            (Some(addr), _) => Path::Direct { addr },
            (None, Some(relay)) => Path::Relayed { relay: relay.identity, addr: relay.addr },
            (None, None) => Path::Relayed { relay: self.me, addr },
        }
    }

    /// Starts a punch session with `peer`: punches and acknowledgements carrying `nonce` from
    /// it are accepted until [`Paths::end_punch`]. The returned `Notify` fires on success.
    ///
    /// One session per peer. Our own offer never replaces a session under way (None). When
    /// both peers dialled each other through the relay at once, both offers cross: the one
    /// from the smaller identity wins, so the other side's offer is refused (None) on the
    /// smaller side and replaces its own offer on the larger side.
    pub(crate) fn begin_punch(
        &self,
        peer: RemoteIdentity,
        nonce: u64,
        (send_ack, expect_ack): (u64, u64),
        initiator: bool,
    ) -> Option<Arc<Notify>> {
        let mut state = self.state();
        if let Some(current) = state.punches.get(peer.as_bytes()).filter(|c| c.nonce != nonce) {
            // Our own offer never replaces a session under way (we may be answering theirs);
            // their offer replaces ours only if their identity is the smaller.
            let keep = initiator || (current.initiator && self.me.as_bytes() < peer.as_bytes());
            if keep {
                return None;
            }
        }
        let done = Arc::new(Notify::new());
        let punch = Punch { nonce, send_ack, expect_ack, initiator, confirmed: None, done: done.clone() };
        state.punches.insert(*peer.as_bytes(), punch);
        Some(done)
    }

    /// The address a punch with `peer` confirmed, if any.
    pub(crate) fn punched(&self, peer: &RemoteIdentity) -> Option<SocketAddr> {
        self.state().punches.get(peer.as_bytes())?.confirmed
    }

    /// Ends the punch session with `peer`; addresses it heard from that did not confirm are
    /// forgotten.
    pub(crate) fn end_punch(&self, peer: &RemoteIdentity, nonce: u64) {
        let mut state = self.state();
        // A session another one replaced leaves the winner's addresses alone.
        if state.punches.get(peer.as_bytes()).is_none_or(|p| p.nonce != nonce) {
            return;
        }
        state.punches.remove(peer.as_bytes());
        let direct = state.peers.get(peer.as_bytes()).and_then(|p| p.direct);
        state.by_direct.retain(|addr, id| id != peer.as_bytes() || Some(*addr) == direct);
        self.any_direct.store(!state.by_direct.is_empty(), Ordering::Relaxed);
    }

    /// May an offer from `peer` be answered now? Records it if so.
    pub(crate) fn may_answer_offer(&self, peer: &RemoteIdentity) -> bool {
        let now = std::time::Instant::now();
        let mut state = self.state();
        state.answered.retain(|_, at| now.duration_since(*at) < MIN_OFFER_INTERVAL);
        if state.answered.contains_key(peer.as_bytes()) || state.answered.len() >= MAX_PEERS {
            return false;
        }
        state.answered.insert(*peer.as_bytes(), now);
        true
    }

    /// Forgets the direct path to `peer` (its last connection closed, or it is being dialled
    /// again): the next connection starts on the relay and punches afresh.
    pub(crate) fn forget_direct(&self, peer: &RemoteIdentity) {
        let mut state = self.state();
        if let Some(entry) = state.peers.get_mut(peer.as_bytes()) {
            entry.set_direct(None);
        }
        state.by_direct.retain(|_, id| id != peer.as_bytes());
        self.any_direct.store(!state.by_direct.is_empty(), Ordering::Relaxed);
    }

    /// Sends one punch to `to`, best effort (a full socket buffer loses it, like the network).
    pub(crate) fn send_punch(&self, nonce: u64, to: SocketAddr) {
        self.send_control(&frame::punch(nonce, &self.me), to);
    }

    fn send_control(&self, datagram: &[u8], to: SocketAddr) {
        let transmit = Transmit {
            destination: self.in_family(to),
            ecn: None,
            contents: datagram,
            segment_size: None,
            src_ip: None,
        };
        if let Err(error) = self.socket.try_send(&transmit) {
            tracing::trace!(%to, %error, "control datagram not sent");
        }
    }

    /// Handles one warren frame that arrived from `from`.
    fn on_frame(&self, from: SocketAddr, datagram: &[u8]) {
        let Ok(frame) = Frame::parse(datagram) else {
            tracing::trace!(%from, "malformed warren frame dropped");
            return;
        };
        match frame {
            Frame::Data { peer, payload } => {
                let from_relay = self.state().relay.as_ref().is_some_and(|r| !r.is_tcp() && r.addr == from);
                if from_relay {
                    self.deliver_relayed(&peer, payload);
                }
            }
            Frame::Punch { nonce, sender } => {
                let (confirmed, send_ack) = {
                    let mut state = self.state();
                    let Some(punch) = state.punches.get(&sender).filter(|p| p.nonce == nonce) else { return };
                    let answer = (punch.confirmed.is_some(), punch.send_ack);
                    // QUIC packets from here are the peer's from now on.
                    state.by_direct.insert(from, sender);
                    self.any_direct.store(true, Ordering::Relaxed);
                    answer
                };
                self.send_control(&frame::ack(send_ack, &self.me), from);
                if !confirmed {
                    self.send_punch(nonce, from);
                }
            }
            Frame::Ack { nonce: token, sender } => {
                let mut state = self.state();
                let Some(punch) = state.punches.get_mut(&sender).filter(|p| p.expect_ack == token) else { return };
                if punch.confirmed.is_some() {
                    return;
                }
                punch.confirmed = Some(from);
                punch.done.notify_one();
                state.by_direct.insert(from, sender);
                self.any_direct.store(true, Ordering::Relaxed);
                let Some(peer) = state.peers.get_mut(&sender) else { return };
                peer.set_direct(Some(from));
                let placeholder = peer.placeholder;
                let remote = state.by_placeholder[&placeholder];
                drop(state);
                tracing::debug!(%remote, %from, "hole punched: path is direct");
                self.emit(PathEvent::Changed { remote, path: Path::Direct { addr: from } });
            }
        }
    }

    /// Hands a packet the relay forwarded from `peer` to quinn, as coming from the peer's
    /// placeholder (allocated on first contact: the peer is dialling us through the relay).
    ///
    /// A peer whose path was punched a while ago and that sends through the relay again has
    /// given the direct path up (see [`DIRECT_SILENCE`]): this side follows at once rather
    /// than wait for its own count, which a side that only acknowledges fills slowly.
    pub(crate) fn deliver_relayed(&self, peer: &RawIdentity, payload: &[u8]) {
        let mut fell_back = None;
        let placeholder = {
            let mut state = self.state();
            match state.peers.get_mut(peer) {
                Some(known) => {
                    let now = std::time::Instant::now();
                    known.last_used = now;
                    // Just after a punch, packets the peer sent before it learnt of the
                    // direct path may still come through the relay.
                    if known.direct.is_some()
                        && !known.fallen_back
                        && now.duration_since(known.direct_at) >= DIRECT_SILENCE
                    {
                        known.fallen_back = true;
                        fell_back = Some(known.placeholder);
                    }
                    known.placeholder
                }
                None => {
                    let Ok(remote) = RemoteIdentity::from_bytes(peer) else { return };
                    let Some(addr) = state.placeholder_for(remote) else { return };
                    addr
                }
            }
        };
        self.deliver(self.in_family(placeholder), payload);
        if let (Some(placeholder), Ok(remote)) = (fell_back, RemoteIdentity::from_bytes(peer)) {
            self.fell_back(remote, placeholder);
        }
    }

    /// Reports that packets to `remote` go through the relay again.
    fn fell_back(&self, remote: RemoteIdentity, placeholder: SocketAddr) {
        tracing::debug!(%remote, "direct path given up; back to the relay");
        if let path @ Path::Relayed { .. } = self.path_of(placeholder) {
            self.emit(PathEvent::Changed { remote, path });
        }
    }

    fn deliver(&self, from: SocketAddr, payload: &[u8]) {
        let mut inbox = self.inbox.lock().expect("inbox lock poisoned");
        if inbox.queue.len() >= INBOX {
            return;
        }
        inbox.queue.push_back((from, payload.to_vec()));
        if let Some(waker) = inbox.waker.take() {
            drop(inbox);
            waker.wake();
        }
    }

    /// Moves queued relayed datagrams into quinn's buffers; registers `waker` if there are none.
    fn drain_inbox(&self, waker: &Waker, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut inbox = self.inbox.lock().expect("inbox lock poisoned");
        if inbox.queue.is_empty() {
            inbox.waker = Some(waker.clone());
            return 0;
        }
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((addr, payload)) = inbox.queue.pop_front() else { break };
            let len = payload.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&payload[..len]);
            meta[n] = RecvMeta { addr, len, stride: len, ecn: None, dst_ip: None };
            n += 1;
        }
        n
    }

    /// The address quinn should see a QUIC packet from `from` come from: the peer's placeholder
    /// if `from` is a punched address, else `from`.
    ///
    /// A packet from the peer's direct address shows the direct path works: if the peer's
    /// packets had gone to the relay because it was silent, they go direct again.
    fn quic_source(&self, from: SocketAddr) -> SocketAddr {
        if self.any_direct.load(Ordering::Relaxed) {
            let mut state = self.state();
            let State { peers, by_direct, by_placeholder, .. } = &mut *state;
            if let Some(peer) = by_direct.get(&from).and_then(|id| peers.get_mut(id)) {
                let placeholder = peer.placeholder;
                peer.unanswered = None;
                if peer.direct == Some(from) && std::mem::take(&mut peer.fallen_back) {
                    let remote = by_placeholder[&placeholder];
                    drop(state);
                    tracing::debug!(%remote, %from, "direct path heard again");
                    self.emit(PathEvent::Changed { remote, path: Path::Direct { addr: from } });
                }
                return self.in_family(placeholder);
            }
        }
        self.in_family(from)
    }

    /// Post-processes `n` datagrams quinn-udp received: frames are handled and removed, QUIC
    /// packets from punched addresses are re-addressed to the peer's placeholder. Returns how
    /// many are left for quinn (compacted to the front).
    fn filter(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        super::gro::sort_received(
            bufs,
            meta,
            n,
            // Frames and QUIC packets from the relay's address can share a buffer.
            |meta, segment| {
                let from = unmap(meta.addr);
                if frame::is_frame(segment) {
                    self.on_frame(from, segment);
                } else {
                    self.deliver(self.quic_source(from), segment);
                }
            },
            |meta| meta.addr = self.quic_source(unmap(meta.addr)),
        )
    }
}

/// The [`AsyncUdpSocket`] quinn runs on.
#[derive(Debug)]
pub(crate) struct PathSocket(pub(crate) Arc<Paths>);

enum Route {
    Direct(SocketAddr),
    Relay { relay: SocketAddr, peer: RawIdentity },
    RelayTcp { records: tokio::sync::mpsc::Sender<Vec<u8>>, peer: RawIdentity },
}

impl AsyncUdpSocket for PathSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.socket.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let paths = &self.0;
        let destination = unmap(transmit.destination);
        if !is_placeholder(destination) {
            return paths.socket.try_send(transmit);
        }
        let mut fell_back = None;
        let route = {
            let mut state = paths.state();
            let Some(remote) = state.by_placeholder.get(&destination).copied() else { return Ok(()) };
            let has_relay = state.relay.is_some();
            let peer = state.peers.get_mut(remote.as_bytes()).expect("every placeholder has a peer");
            let now = std::time::Instant::now();
            peer.last_used = now;
            // Silent for too long: the relay carries the packets while there is one.
            if peer.direct.is_some() && !peer.fallen_back && Unanswered::sent(&mut peer.unanswered, now) && has_relay {
                peer.fallen_back = true;
                fell_back = Some(remote);
            }
            let peer_direct = peer.live_direct(has_relay);
            match (peer_direct, &state.relay) {
                (Some(addr), _) => Route::Direct(addr),
                (None, Some(relay)) => match &relay.egress {
                    RelayEgress::Tcp(records) => Route::RelayTcp { records: records.clone(), peer: *remote.as_bytes() },
                    RelayEgress::Udp => Route::Relay { relay: relay.addr, peer: *remote.as_bytes() },
                },
                // No path at the moment (relay reconnecting): the packet is lost; QUIC resends.
                (None, None) => return Ok(()),
            }
        };
        if let Some(remote) = fell_back {
            paths.fell_back(remote, destination);
        }
        match route {
            Route::Direct(addr) => paths.socket.try_send(&Transmit {
                destination: paths.in_family(addr),
                ecn: transmit.ecn,
                contents: transmit.contents,
                segment_size: transmit.segment_size,
                src_ip: transmit.src_ip,
            }),
            Route::RelayTcp { records, peer } => {
                let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
                for segment in transmit.contents.chunks(size) {
                    let mut frame = vec![0u8; frame::DATA_HEADER_LEN + segment.len()];
                    frame::write_data_header(&mut frame, &peer);
                    frame[frame::DATA_HEADER_LEN..].copy_from_slice(segment);
                    // A full queue loses the packet, as a congested link would.
                    let _ = records.try_send(crate::wire::record::encode(crate::wire::record::DATA, &frame));
                }
                Ok(())
            }
            Route::Relay { relay, peer } => {
                let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
                let mut frame = [0u8; frame::DATA_HEADER_LEN + frame::MAX_PAYLOAD];
                frame::write_data_header(&mut frame, &peer);
                for (index, segment) in transmit.contents.chunks(size).enumerate() {
                    if segment.len() > frame::MAX_PAYLOAD {
                        // Cannot happen with warren's MTU ceiling; like a too-big packet, lost.
                        continue;
                    }
                    let len = frame::DATA_HEADER_LEN + segment.len();
                    frame[frame::DATA_HEADER_LEN..len].copy_from_slice(segment);
                    let sent = paths.socket.try_send(&Transmit {
                        destination: paths.in_family(relay),
                        ecn: None,
                        contents: &frame[..len],
                        segment_size: None,
                        src_ip: transmit.src_ip,
                    });
                    match sent {
                        // Nothing sent yet: quinn waits and retries the whole transmit.
                        Err(error) if index == 0 => return Err(error),
                        // Part sent: the rest is lost (a retry would send the first part twice).
                        Err(_) => return Ok(()),
                        Ok(()) => {}
                    }
                }
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let paths = &self.0;
        loop {
            let relayed = paths.drain_inbox(cx.waker(), bufs, meta);
            if relayed > 0 {
                return Poll::Ready(Ok(relayed));
            }
            let n = match paths.socket.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let kept = paths.filter(bufs, meta, n);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.socket.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.socket.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.socket.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.socket.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds sends at these offsets (ms) and returns, for each, whether the path was given up.
    fn silence(offsets_ms: &[u64]) -> Vec<bool> {
        let start = std::time::Instant::now();
        let mut slot = None;
        offsets_ms.iter().map(|ms| Unanswered::sent(&mut slot, start + std::time::Duration::from_millis(*ms))).collect()
    }

    #[test]
    fn a_path_is_given_up_only_after_repeated_unanswered_packets() {
        // quinn's probes after a loss at 100 ms RTT: given up at the one past 3 s.
        assert_eq!(silence(&[0, 300, 900, 2100, 4500]), [false, false, false, false, true]);
        // Two packets are not enough, however far apart (an acknowledgement, then a packet).
        assert_eq!(silence(&[0, 4000]), [false, false]);
        // Idle after an acknowledgement, then a burst: the clock starts with the burst.
        assert_eq!(silence(&[0, 3500, 3501, 3502]), [false; 4]);
        assert_eq!(silence(&[0, 10_000, 10_100, 12_000, 13_100]), [false, false, false, false, true]);
    }

    #[test]
    fn placeholders_are_recognised_in_both_families() {
        let p = placeholder(70_000);
        assert!(is_placeholder(p));
        let mapped = SocketAddr::new(
            match p.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().into(),
                IpAddr::V6(_) => unreachable!(),
            },
            p.port(),
        );
        assert!(is_placeholder(mapped));
        assert!(!is_placeholder("10.0.0.1:9".parse().unwrap()));
        assert!(!is_placeholder("[::1]:9".parse().unwrap()));
    }
}
