//! The path table: for each peer reached through a relay, where its packets go.
//!
//! A relayed peer gets a stable placeholder address in `240.0.0.0/8` (reserved, never routed);
//! quinn only ever sees that address. The table says, packet by packet, whether a packet for a
//! placeholder goes straight to the peer's direct address or through the relay, and which
//! placeholder a packet that arrived came from. So when a direct path is found, a connection
//! moves off the relay without quinn noticing; when it dies, it moves back.
//!
//! # Path validation
//!
//! A direct path is taken only after this side's own challenge to that address was answered
//! ([`crate::wire::frame`]): a challenge carries a fresh id and the address it was sent to,
//! the response must come from that very address, and both are tagged with a key only the two
//! peers hold ([`PathKey`], exported from their connection's TLS session), over both identities.
//! So a LAN neighbour, an on-path router or the relay can neither forge a response, nor replay
//! one from another address, nor replay a challenge (ids are unpredictable and remembered per
//! key), nor make an address count as a peer's before this side's challenge there is answered.
//!
//! # Liveness, fallback, re-probing
//!
//! While a direct path carries packets, a challenge goes out on it every [`PROBE_INTERVAL`];
//! only authenticated responses count as hearing the peer (junk from the direct address
//! counts for nothing). When none came back for [`DIRECT_SILENCE`] from the first unanswered
//! challenge, and a relay is there, packets go through the relay again: a side falls back on
//! its own silence only (a relayed packet from the peer only makes it probe at once). After a
//! fallback the direct address is challenged again on [`REPROBE_AFTER`]; an answer moves the
//! packets back to it.
//!
//! # States, inputs, outputs
//!
//! Per peer: no direct path → validated direct path (live) ⇄ fallen back (relayed, re-probing)
//! → forgotten (its last connection closed). Inputs: [`PathTable::handle_frame`] (a warren
//! datagram), [`PathTable::quic_source`] (a QUIC packet arrived), [`PathTable::route`] (quinn
//! sends), [`PathTable::challenge`] (the punch session asks), [`PathTable::add_key`] /
//! [`PathTable::remove_key`] (connections come and go), [`PathTable::handle_timeout`].
//! Outputs: [`PathTable::poll_transmit`] (datagrams to send), [`PathTable::poll_event`]
//! ([`PathEvent`]), [`PathTable::poll_timeout`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::RemoteIdentity;
use crate::wire::frame::{self, Frame, PathKey, RawIdentity, TagKind};

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

/// Peers with a placeholder address at once. When full, the one unused longest makes room if it
/// has been idle for [`PLACEHOLDER_IDLE`]; frames from further unknown peers are dropped.
pub const MAX_PEERS: usize = 4096;

/// How long a placeholder must be unused before another peer may take it: past quinn's idle
/// timeout, so no connection can still be using it.
pub const PLACEHOLDER_IDLE: Duration = Duration::from_secs(90);

/// The port of every placeholder address.
const PLACEHOLDER_PORT: u16 = 9;

/// While a direct path carries packets, a challenge goes out on it this often: cheap (78
/// bytes a second), and it is what tells a live path from a dead one.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A direct path is given up for the relay when no authenticated response came back for this
/// long after the first unanswered challenge (and at least [`SILENT_PROBES`] went unanswered).
/// Over the RTT of any usable path; quinn's probes after a loss (about 0.3, 0.9, 2.1, 4.5 s at
/// 100 ms RTT) find the relay at the 4th or 5th, well before its 30 s idle timeout.
pub const DIRECT_SILENCE: Duration = Duration::from_secs(3);

/// Unanswered challenges needed, beside [`DIRECT_SILENCE`], before falling back: one lost
/// challenge on a lossy link is not silence.
pub const SILENT_PROBES: u32 = 3;

/// After a fallback, the direct address is challenged again after these waits (the last one
/// repeats for as long as a connection to the peer lives).
pub const REPROBE_AFTER: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(30),
];

/// Keys (one per relayed connection) kept per peer; the oldest goes first.
pub const MAX_KEYS: usize = 4;

/// Our challenges awaiting a response, per peer (a punch attempt sends at most 256, most to
/// addresses that never answer); the oldest goes first.
pub const MAX_PENDING: usize = 512;

/// A challenge not answered within this is forgotten.
pub const CHALLENGE_LIFETIME: Duration = Duration::from_secs(10);

/// Addresses per peer whose authenticated frames made them count as the peer's for incoming
/// QUIC packets (NAT mappings seen during a punch); the oldest goes first.
pub const MAX_HEARD: usize = 8;

/// Responses (and challenges back) this node sends per peer: a burst, then this many per second.
/// A punch from the peer brings at most a few dozen that get through.
pub const RESPONSE_BURST: u32 = 64;
/// See [`RESPONSE_BURST`].
pub const RESPONSES_PER_SECOND: u32 = 32;

/// Challenge ids seen under each key are remembered (the last this many): a replayed challenge
/// gets no answer. Ids are unpredictable (keyed BLAKE3 of a counter under a secret of the
/// table's), so a response cannot be prepared for a challenge one did not see.
pub const REPLAY_MEMORY: usize = 1024;

/// Challenges back (to an address a valid challenge came from) per peer: a burst, then this many
/// per second. With the response, a challenge back makes 138 bytes answer 78: bounded here.
pub const CHALLENGE_BACK_BURST: u32 = 8;
/// See [`CHALLENGE_BACK_BURST`].
pub const CHALLENGE_BACKS_PER_SECOND: u32 = 4;

/// A placeholder whose peer never brought a key (no connection was established through it)
/// may be taken by another peer after this: past the handshake and hello timeouts.
pub const KEYLESS_IDLE: Duration = Duration::from_secs(30);

/// Can this relayed payload start a connection, so that its unknown sender earns a placeholder?
/// Only a QUIC version 1 Initial (long header, fixed bit, type 0) padded to 1,200 bytes, as
/// RFC 9000 requires of a client's first datagram. Anything else from an identity this node
/// has no placeholder for is dropped before it costs one (identities are free: each junk frame
/// from a new key took an entry, until the table was full).
pub fn starts_a_connection(payload: &[u8]) -> bool {
    payload.len() >= 1200 && payload[0] & 0xf0 == 0xc0 && payload[1..5] == [0, 0, 0, 1]
}

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

/// The relay this node is registered with, as the table needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayInfo {
    /// Its identity.
    pub identity: RemoteIdentity,
    /// Its address.
    pub addr: SocketAddr,
    /// Over TCP: data frames come from the TCP link, never as UDP datagrams.
    pub tcp: bool,
}

/// What the table reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// The packets for `remote`'s placeholder now take `path`.
    Changed {
        /// The peer.
        remote: RemoteIdentity,
        /// The path now.
        path: Path,
    },
    /// One of our challenges to `addr` was answered by `remote`: the peer is there.
    Validated {
        /// The peer.
        remote: RemoteIdentity,
        /// Where it answered from (the address challenged).
        addr: SocketAddr,
    },
}

/// Where a packet quinn sends to a placeholder goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to this address.
    Direct(SocketAddr),
    /// Through the relay, in a data frame for this peer.
    Relay(RawIdentity),
    /// Nowhere right now (no relay, no direct path): lost, QUIC resends.
    Drop,
}

/// Why a frame was not taken; counted, never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a well-formed frame.
    Malformed,
    /// A data frame that did not come from the relay.
    NotFromRelay,
    /// From an identity with no relayed connection here.
    UnknownPeer,
    /// The tag did not verify under any key of the peer.
    BadTag,
    /// A challenge id seen before or too old.
    Replayed,
    /// A response to no challenge of ours, or from another address than the one challenged.
    Unsolicited,
    /// The peer's response budget is spent.
    RateLimited,
    /// The placeholder table is full.
    NoRoom,
}

/// Counters of what the table refused, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames refused, any reason.
    pub refused: u64,
    /// Of those, with a bad tag.
    pub bad_tags: u64,
    /// Of those, replayed challenges.
    pub replayed: u64,
    /// Of those, unsolicited responses (or from the wrong address).
    pub unsolicited: u64,
    /// Responses sent.
    pub responses: u64,
    /// Challenges sent.
    pub challenges: u64,
}

/// Our challenge, awaiting its response.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u64,
    target: SocketAddr,
    key: PathKey,
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Direct {
    addr: SocketAddr,
    /// Silent: packets go through the relay (if any) until a re-probe is answered.
    fallen_back: bool,
    /// When the first challenge since the last response went out.
    unanswered_since: Option<Instant>,
    unanswered: u32,
    /// The last packet quinn sent on this path.
    last_sent: Option<Instant>,
    /// When the next challenge goes out (None: idle, nothing to watch).
    next_probe: Option<Instant>,
    /// Re-probes sent since the fallback.
    reprobes: usize,
}

impl Direct {
    fn new(addr: SocketAddr) -> Self {
        Direct {
            addr,
            fallen_back: false,
            unanswered_since: None,
            unanswered: 0,
            last_sent: None,
            next_probe: None,
            reprobes: 0,
        }
    }
}

/// Ids of challenges seen under one key, the last [`REPLAY_MEMORY`] of them.
#[derive(Debug, Clone, Default)]
struct SeenIds {
    order: VecDeque<u64>,
    set: std::collections::HashSet<u64>,
}

impl SeenIds {
    /// Records `id`; false if it was seen before.
    fn check(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > REPLAY_MEMORY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// One relayed connection's key and the challenge ids seen under it.
#[derive(Debug, Clone)]
struct Key {
    connection: u64,
    key: PathKey,
    seen: SeenIds,
}

/// A token bucket in whole tokens.
#[derive(Debug, Clone, Copy)]
struct Budget {
    tokens: u32,
    burst: u32,
    per_second: u32,
    refilled: Instant,
}

impl Budget {
    fn new(now: Instant, burst: u32, per_second: u32) -> Self {
        Budget { tokens: burst, burst, per_second, refilled: now }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed_ms = now.saturating_duration_since(self.refilled).as_millis() as u64;
        let earned = elapsed_ms * u64::from(self.per_second) / 1000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(self.burst)) as u32;
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[derive(Debug)]
struct PeerPath {
    remote: RemoteIdentity,
    placeholder: SocketAddr,
    /// Last packet either way: idle entries make room when the table is full.
    last_used: Instant,
    /// One per relayed connection, newest last.
    keys: Vec<Key>,
    pending: VecDeque<Pending>,
    /// Addresses whose authenticated frames attribute their QUIC packets to this peer.
    heard: VecDeque<SocketAddr>,
    direct: Option<Direct>,
    budget: Budget,
    back_budget: Budget,
    /// When the last challenge back went to each address (bounded like `heard`).
    challenged_back: VecDeque<(SocketAddr, Instant)>,
    /// The last key went: the direct path is forgotten at this time (see [`KEYLESS_DRAIN`]).
    forget_at: Option<Instant>,
}

/// The path table. See the module docs.
#[derive(Debug)]
pub struct PathTable {
    me: RemoteIdentity,
    peers: HashMap<RawIdentity, PeerPath>,
    by_placeholder: HashMap<SocketAddr, RawIdentity>,
    by_heard: HashMap<SocketAddr, RawIdentity>,
    relay: Option<RelayInfo>,
    punching: bool,
    /// Challenge ids are keyed BLAKE3 of a counter under this secret: unpredictable.
    id_secret: [u8; 32],
    next_id: u64,
    /// The table is full and no entry can be reclaimed before this.
    no_room_until: Option<Instant>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Challenges to send with a small TTL ([`OPEN_TTL`]): see [`PathTable::open`].
    opens: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<PathEvent>,
    /// Set when a new wake-up time may be earlier than what the driver waits for.
    timer_moved: bool,
    stats: Stats,
}

/// Waits between challenges back to one address (a punch brings several challenges from it).
const CHALLENGE_BACK_INTERVAL: Duration = Duration::from_millis(250);

/// A relayed packet from a peer whose direct path looks live makes this side probe that path at
/// once, at most this often (packets sent before the peer switched are common and harmless).
const SWITCH_GRACE: Duration = Duration::from_secs(1);

/// The TTL of [`PathTable::open`]'s datagrams: past this side's NAT (the first router), dead at
/// the next router.
pub const OPEN_TTL: u8 = 2;

/// How long a direct path outlives its peer's last key. Removing the key is the connection's
/// close, and its CONNECTION_CLOSE (and the answers to the peer's packets while it drains) must
/// still leave by the path the peer listens on; forgetting at once sent them to the relay, or
/// nowhere while the relay link was going down too, and the peer waited out its idle timeout.
pub const KEYLESS_DRAIN: Duration = Duration::from_secs(2);

/// Our direct path is in use if we sent on it this recently: only then does a relayed packet
/// from the peer make us probe it.
const RECENTLY_SENT: Duration = Duration::from_secs(10);

impl PathTable {
    /// An empty table for the node `me`, with hole punching on. `id_secret` makes challenge
    /// ids unpredictable: give it 32 random bytes (tests may give a constant).
    pub fn new(me: RemoteIdentity, id_secret: [u8; 32]) -> Self {
        PathTable {
            me,
            peers: HashMap::new(),
            by_placeholder: HashMap::new(),
            by_heard: HashMap::new(),
            relay: None,
            punching: true,
            id_secret,
            next_id: 0,
            no_room_until: None,
            transmits: VecDeque::new(),
            opens: VecDeque::new(),
            events: VecDeque::new(),
            timer_moved: false,
            stats: Stats::default(),
        }
    }

    /// Turns hole punching on or off. Off, nothing is challenged or answered: relayed
    /// connections stay relayed and peers never learn this node's addresses.
    pub fn set_punching(&mut self, enabled: bool) {
        self.punching = enabled;
    }

    /// Whether this node takes part in hole punching.
    pub fn punching(&self) -> bool {
        self.punching
    }

    /// The relay this node is registered with (None while it is not).
    pub fn set_relay(&mut self, relay: Option<RelayInfo>) {
        self.relay = relay;
    }

    /// The relay this node is registered with.
    pub fn relay(&self) -> Option<RelayInfo> {
        self.relay
    }

    /// What the table refused and sent so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Is any address attributed to a peer (so that incoming QUIC packets need a look-up)?
    pub fn any_heard(&self) -> bool {
        !self.by_heard.is_empty()
    }

    /// The placeholder address for `remote`, allocated on first use (None: the table is full).
    pub fn placeholder_for(&mut self, now: Instant, remote: RemoteIdentity) -> Option<SocketAddr> {
        if let Some(peer) = self.peers.get_mut(remote.as_bytes()) {
            peer.last_used = now;
            return Some(peer.placeholder);
        }
        let addr = if self.peers.len() < MAX_PEERS {
            placeholder(self.peers.len() as u32 + 1)
        } else {
            // Full: the longest-unused entry makes room, if it has been idle long enough. When
            // none has, none can before the stalest could: no scan until then.
            if self.no_room_until.is_some_and(|until| now < until) {
                return None;
            }
            // Entries that never brought a key go sooner: nobody connected through them.
            let idle_for = |p: &PeerPath| if p.keys.is_empty() { KEYLESS_IDLE } else { PLACEHOLDER_IDLE };
            let (&stale, entry) = self.peers.iter().min_by_key(|(_, p)| p.last_used + idle_for(p))?;
            let free_at = entry.last_used + idle_for(entry);
            if now < free_at {
                self.no_room_until = Some(free_at);
                return None;
            }
            let addr = entry.placeholder;
            self.remove_peer(&stale);
            addr
        };
        let entry = PeerPath {
            remote,
            placeholder: addr,
            last_used: now,
            keys: Vec::new(),
            pending: VecDeque::new(),
            heard: VecDeque::new(),
            direct: None,
            budget: Budget::new(now, RESPONSE_BURST, RESPONSES_PER_SECOND),
            back_budget: Budget::new(now, CHALLENGE_BACK_BURST, CHALLENGE_BACKS_PER_SECOND),
            challenged_back: VecDeque::new(),
            forget_at: None,
        };
        self.peers.insert(*remote.as_bytes(), entry);
        self.by_placeholder.insert(addr, *remote.as_bytes());
        Some(addr)
    }

    fn remove_peer(&mut self, raw: &RawIdentity) {
        if let Some(peer) = self.peers.remove(raw) {
            self.by_placeholder.remove(&peer.placeholder);
            for addr in peer.heard {
                self.by_heard.remove(&addr);
            }
        }
    }

    /// The peer behind a placeholder.
    pub fn peer_of(&self, placeholder: SocketAddr) -> Option<RemoteIdentity> {
        let raw = self.by_placeholder.get(&unmap(placeholder))?;
        Some(self.peers[raw].remote)
    }

    /// Adds the path key of a relayed connection (`id` names it) to `remote`: challenges and
    /// responses under it are accepted from now on.
    pub fn add_key(&mut self, now: Instant, remote: RemoteIdentity, id: u64, key: PathKey) {
        if self.placeholder_for(now, remote).is_none() {
            return;
        }
        let peer = self.peers.get_mut(remote.as_bytes()).expect("just made");
        if peer.forget_at.take().is_some() && peer.keys.is_empty() {
            // A new connection after the last one closed starts over on the relay.
            self.forget_direct(&remote);
        }
        let peer = self.peers.get_mut(remote.as_bytes()).expect("just made");
        peer.keys.retain(|k| k.connection != id);
        if peer.keys.len() >= MAX_KEYS {
            peer.keys.remove(0);
        }
        peer.keys.push(Key { connection: id, key, seen: SeenIds::default() });
    }

    /// Removes a connection's key. With the last one gone, the direct path is forgotten
    /// [`KEYLESS_DRAIN`] later (the closing connection's last packets still take it): the next
    /// connection starts on the relay and punches afresh (the peer may have moved).
    pub fn remove_key(&mut self, now: Instant, remote: &RemoteIdentity, id: u64) {
        let Some(peer) = self.peers.get_mut(remote.as_bytes()) else { return };
        peer.keys.retain(|k| k.connection != id);
        if peer.keys.is_empty() && peer.direct.is_some() {
            peer.forget_at = Some(now + KEYLESS_DRAIN);
            self.timer_moved = true;
        }
    }

    /// Forgets the direct path to `remote`, its pending challenges and the addresses heard from.
    pub fn forget_direct(&mut self, remote: &RemoteIdentity) {
        let Some(peer) = self.peers.get_mut(remote.as_bytes()) else { return };
        peer.direct = None;
        peer.forget_at = None;
        peer.pending.clear();
        peer.challenged_back.clear();
        for addr in peer.heard.drain(..) {
            self.by_heard.remove(&addr);
        }
    }

    /// The path behind a placeholder (a real address is its own direct path).
    pub fn path_of(&self, remote_addr: SocketAddr) -> Path {
        let addr = unmap(remote_addr);
        if !is_placeholder(addr) {
            return Path::Direct { addr };
        }
        let peer = self.by_placeholder.get(&addr).and_then(|raw| self.peers.get(raw));
        match (peer.and_then(|p| self.live_direct(p)), self.relay) {
            (Some(addr), _) => Path::Direct { addr },
            (None, Some(relay)) => Path::Relayed { relay: relay.identity, addr: relay.addr },
            (None, None) => Path::Relayed { relay: self.me, addr },
        }
    }

    /// The direct address packets go to now: none after the path went silent, while a relay
    /// can carry them instead.
    fn live_direct(&self, peer: &PeerPath) -> Option<SocketAddr> {
        let direct = peer.direct?;
        (!direct.fallen_back || self.relay.is_none()).then_some(direct.addr)
    }

    /// The direct address of `remote`, validated and live.
    pub fn direct(&self, remote: &RemoteIdentity) -> Option<SocketAddr> {
        self.peers.get(remote.as_bytes()).and_then(|p| self.live_direct(p))
    }

    /// Where a packet quinn sends to `placeholder` goes (and it counts as traffic on the path,
    /// which keeps liveness probes going).
    pub fn route(&mut self, now: Instant, placeholder: SocketAddr) -> Route {
        let Some(raw) = self.by_placeholder.get(&unmap(placeholder)).copied() else { return Route::Drop };
        let has_relay = self.relay.is_some();
        let peer = self.peers.get_mut(&raw).expect("every placeholder has a peer");
        peer.last_used = now;
        match &mut peer.direct {
            Some(direct) if !direct.fallen_back || !has_relay => {
                direct.last_sent = Some(now);
                if direct.next_probe.is_none() {
                    direct.next_probe = Some(now);
                    self.timer_moved = true;
                }
                Route::Direct(direct.addr)
            }
            _ if has_relay => Route::Relay(raw),
            _ => Route::Drop,
        }
    }

    /// Which address quinn should see a QUIC packet from `from` come from: the peer's
    /// placeholder if `from` was heard from in an authenticated frame, else `from`.
    pub fn quic_source(&self, from: SocketAddr) -> SocketAddr {
        let from = unmap(from);
        match self.by_heard.get(&from) {
            Some(raw) => self.peers[raw].placeholder,
            None => from,
        }
    }

    /// Sends a challenge to `remote` at `target` (a punch round, or a probe). False if there is
    /// no key for `remote` or punching is off.
    pub fn challenge(&mut self, now: Instant, remote: &RemoteIdentity, target: SocketAddr) -> bool {
        self.queue_challenge(now, remote, target, false)
    }

    /// Like [`PathTable::challenge`], but the datagram is to leave with a TTL of [`OPEN_TTL`]
    /// ([`PathTable::poll_open`]): enough to pass this side's NAT and open its mapping towards
    /// `target`, too little to reach the peer's router when a router lies between the two (as
    /// one always does on the internet). A Linux router that saw the peer's punch before its own
    /// host sent one keeps an entry for it and moves the host's punch to another port (see
    /// docs/nat-traversal.md); opening first, both ways, avoids that. If it does arrive, it is a
    /// challenge like any other.
    pub fn open(&mut self, now: Instant, remote: &RemoteIdentity, target: SocketAddr) -> bool {
        self.queue_challenge(now, remote, target, true)
    }

    fn queue_challenge(&mut self, now: Instant, remote: &RemoteIdentity, target: SocketAddr, open: bool) -> bool {
        if !self.punching {
            return false;
        }
        let me = *self.me.as_bytes();
        let Some(peer) = self.peers.get_mut(remote.as_bytes()) else { return false };
        let Some(key) = peer.keys.last().map(|k| k.key) else { return false };
        self.next_id += 1;
        let id_hash = blake3::keyed_hash(&self.id_secret, &self.next_id.to_le_bytes());
        let id = u64::from_le_bytes(id_hash.as_bytes()[..8].try_into().expect("8 bytes"));
        let target = unmap(target);
        if peer.pending.len() >= MAX_PENDING {
            peer.pending.pop_front();
        }
        peer.pending.push_back(Pending { id, target, key, sent: now });
        let datagram = frame::challenge(&key, id, target, &me, remote.as_bytes()).to_vec();
        if open {
            self.opens.push_back((target, datagram));
        } else {
            self.transmits.push_back((target, datagram));
        }
        self.stats.challenges += 1;
        // Its expiry may come before whatever the driver waits for now.
        self.timer_moved = true;
        true
    }

    /// Handles a warren datagram from `from` (`None`: it came over the TCP relay link). Returns
    /// the relayed QUIC packet it carried, as from the peer's placeholder, for quinn.
    pub fn handle_frame<'a>(
        &mut self,
        now: Instant,
        from: Option<SocketAddr>,
        datagram: &'a [u8],
    ) -> Result<Option<(SocketAddr, &'a [u8])>, Refused> {
        let result = self.frame(now, from.map(unmap), datagram);
        if let Err(reason) = result {
            self.stats.refused += 1;
            match reason {
                Refused::BadTag => self.stats.bad_tags += 1,
                Refused::Replayed => self.stats.replayed += 1,
                Refused::Unsolicited => self.stats.unsolicited += 1,
                _ => {}
            }
        }
        result
    }

    fn frame<'a>(
        &mut self,
        now: Instant,
        from: Option<SocketAddr>,
        datagram: &'a [u8],
    ) -> Result<Option<(SocketAddr, &'a [u8])>, Refused> {
        let frame = Frame::parse(datagram).map_err(|_| Refused::Malformed)?;
        match frame {
            Frame::Data { peer, payload } => {
                let from_relay = match (from, self.relay) {
                    (None, Some(relay)) => relay.tcp,
                    (Some(from), Some(relay)) => !relay.tcp && unmap(relay.addr) == from,
                    _ => false,
                };
                if !from_relay {
                    return Err(Refused::NotFromRelay);
                }
                Ok(Some((self.relayed(now, &peer, payload)?, payload)))
            }
            Frame::Challenge { sender, id, target, tag } => {
                let from = from.ok_or(Refused::NotFromRelay)?;
                self.on_challenge(now, from, sender, id, target, tag)?;
                Ok(None)
            }
            Frame::Response { sender, id, tag } => {
                let from = from.ok_or(Refused::NotFromRelay)?;
                self.on_response(now, from, sender, id, tag)?;
                Ok(None)
            }
        }
    }

    /// A relayed packet from `raw`: the placeholder to deliver it as (allocated on first
    /// contact, and then only for what can start a connection: a QUIC Initial, see
    /// [`starts_a_connection`]).
    fn relayed(&mut self, now: Instant, raw: &RawIdentity, payload: &[u8]) -> Result<SocketAddr, Refused> {
        if !self.peers.contains_key(raw) && !starts_a_connection(payload) {
            return Err(Refused::UnknownPeer);
        }
        if let Some(peer) = self.peers.get_mut(raw) {
            peer.last_used = now;
            // The peer sends through the relay although our direct path looks live: it may
            // have gone silent on its side. Probe now (only our own silence makes us leave it).
            if let Some(direct) = peer.direct.as_mut().filter(|d| !d.fallen_back)
                && direct.next_probe.is_none_or(|at| at > now)
                && direct.last_sent.is_some_and(|at| now.saturating_duration_since(at) < RECENTLY_SENT)
                && !peer
                    .pending
                    .iter()
                    .any(|p| p.target == direct.addr && now.saturating_duration_since(p.sent) < SWITCH_GRACE)
            {
                direct.next_probe = Some(now);
                self.timer_moved = true;
            }
            return Ok(peer.placeholder);
        }
        let remote = RemoteIdentity::from_bytes(raw).map_err(|_| Refused::UnknownPeer)?;
        self.placeholder_for(now, remote).ok_or(Refused::NoRoom)
    }

    fn on_challenge(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: RawIdentity,
        id: u64,
        target: SocketAddr,
        tag: [u8; frame::TAG_LEN],
    ) -> Result<(), Refused> {
        if !self.punching {
            return Err(Refused::UnknownPeer);
        }
        let me = *self.me.as_bytes();
        let peer = self.peers.get_mut(&sender).ok_or(Refused::UnknownPeer)?;
        let entry = peer
            .keys
            .iter_mut()
            .rev()
            .find(|k| frame::tags_equal(&tag, &frame::tag(&k.key, TagKind::Challenge, id, target, &sender, &me)))
            .ok_or(Refused::BadTag)?;
        if !entry.seen.check(id) {
            return Err(Refused::Replayed);
        }
        let key = entry.key;
        if !peer.budget.take(now) {
            return Err(Refused::RateLimited);
        }
        peer.last_used = now;
        self.transmits.push_back((from, frame::response(&key, id, target, &me, &sender).to_vec()));
        self.stats.responses += 1;
        // The peer is at `from`, as far as it knows: challenge it there too (that is how a
        // punch from one side opens the way for the other), unless that path is ours already.
        // `from` counts as the peer's only once our own challenge there is answered.
        let live = peer.direct.is_some_and(|d| d.addr == from && !d.fallen_back);
        let recent = peer
            .challenged_back
            .iter()
            .any(|(addr, at)| *addr == from && now.saturating_duration_since(*at) < CHALLENGE_BACK_INTERVAL);
        if !live && !recent && peer.back_budget.take(now) {
            if peer.challenged_back.len() >= MAX_HEARD {
                peer.challenged_back.pop_front();
            }
            peer.challenged_back.push_back((from, now));
            let remote = peer.remote;
            self.challenge(now, &remote, from);
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: RawIdentity,
        id: u64,
        tag: [u8; frame::TAG_LEN],
    ) -> Result<(), Refused> {
        let me = *self.me.as_bytes();
        let peer = self.peers.get_mut(&sender).ok_or(Refused::UnknownPeer)?;
        let index = peer.pending.iter().position(|p| p.id == id).ok_or(Refused::Unsolicited)?;
        let pending = peer.pending[index];
        if !frame::tags_equal(&tag, &frame::tag(&pending.key, TagKind::Response, id, pending.target, &sender, &me)) {
            return Err(Refused::BadTag);
        }
        // The answer must come from the address challenged: one from elsewhere proves nothing
        // about that address (and the real answer may still come).
        if pending.target != from || now.saturating_duration_since(pending.sent) >= CHALLENGE_LIFETIME {
            return Err(Refused::Unsolicited);
        }
        peer.pending.remove(index);
        peer.last_used = now;
        let remote = peer.remote;
        let has_relay = self.relay.is_some();
        let changed = match &mut peer.direct {
            Some(direct) if direct.addr == from => {
                direct.unanswered_since = None;
                direct.unanswered = 0;
                let back = std::mem::take(&mut direct.fallen_back);
                direct.reprobes = 0;
                if back {
                    direct.next_probe = direct.last_sent.map(|_| now + PROBE_INTERVAL);
                    self.timer_moved = true;
                }
                back && has_relay
            }
            // A live direct path stays (no flapping between addresses that both work).
            Some(direct) if !direct.fallen_back => false,
            _ => {
                peer.direct = Some(Direct::new(from));
                true
            }
        };
        self.hear(sender, from);
        if changed {
            self.events.push_back(PathEvent::Changed { remote, path: Path::Direct { addr: from } });
        }
        self.events.push_back(PathEvent::Validated { remote, addr: from });
        Ok(())
    }

    /// Attributes QUIC packets from `addr` (validated: our challenge there was answered) to the
    /// peer `raw` from now on. Never the relay's address, never another peer's live direct one.
    fn hear(&mut self, raw: RawIdentity, addr: SocketAddr) {
        if self.relay.is_some_and(|r| unmap(r.addr) == addr) {
            return;
        }
        if let Some(other) = self.by_heard.get(&addr).filter(|o| **o != raw)
            && self.peers.get(other).and_then(|p| p.direct).is_some_and(|d| d.addr == addr && !d.fallen_back)
        {
            return;
        }
        let Some(peer) = self.peers.get_mut(&raw) else { return };
        if peer.heard.contains(&addr) {
            return;
        }
        if peer.heard.len() >= MAX_HEARD {
            // The oldest goes, but never the direct path's own address.
            let direct = peer.direct.map(|d| d.addr);
            if let Some(index) = peer.heard.iter().position(|a| Some(*a) != direct)
                && let Some(old) = peer.heard.remove(index)
            {
                self.by_heard.remove(&old);
            }
        }
        peer.heard.push_back(addr);
        // An address another peer was heard from moves to this one (a NAT reused the mapping).
        if let Some(previous) = self.by_heard.insert(addr, raw)
            && previous != raw
            && let Some(other) = self.peers.get_mut(&previous)
        {
            other.heard.retain(|a| *a != addr);
        }
    }

    /// When [`PathTable::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probes = self.peers.values().filter_map(|p| p.direct.and_then(|d| d.next_probe));
        let expiries = self.peers.values().filter_map(|p| p.pending.front().map(|c| c.sent + CHALLENGE_LIFETIME));
        let forgets = self.peers.values().filter_map(|p| p.forget_at);
        probes.chain(expiries).chain(forgets).min()
    }

    /// True (once) if a wake-up time may have moved earlier since the last call: the driver
    /// should ask [`PathTable::poll_timeout`] again.
    pub fn take_timer_moved(&mut self) -> bool {
        std::mem::take(&mut self.timer_moved)
    }

    /// Sends due probes, gives up silent paths, forgets expired challenges and the direct
    /// paths of peers whose last connection closed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let drained: Vec<RemoteIdentity> = self
            .peers
            .values_mut()
            .filter(|p| p.forget_at.is_some_and(|at| at <= now))
            .map(|p| {
                p.forget_at = None;
                p.remote
            })
            .collect();
        for remote in drained {
            self.forget_direct(&remote);
        }
        let has_relay = self.relay.is_some();
        let mut probes = Vec::new();
        for peer in self.peers.values_mut() {
            while peer.pending.front().is_some_and(|c| now.saturating_duration_since(c.sent) >= CHALLENGE_LIFETIME) {
                peer.pending.pop_front();
            }
            let Some(direct) = peer.direct.as_mut() else { continue };
            let Some(due) = direct.next_probe.filter(|at| *at <= now) else { continue };
            let _ = due;
            if direct.fallen_back {
                probes.push((peer.remote, direct.addr));
                let wait = REPROBE_AFTER[direct.reprobes.min(REPROBE_AFTER.len() - 1)];
                direct.reprobes += 1;
                direct.next_probe = Some(now + wait);
                continue;
            }
            let silent_since = direct.unanswered_since;
            if has_relay
                && direct.unanswered >= SILENT_PROBES
                && silent_since.is_some_and(|since| now.saturating_duration_since(since) >= DIRECT_SILENCE)
            {
                direct.fallen_back = true;
                direct.reprobes = 0;
                direct.next_probe = Some(now + REPROBE_AFTER[0]);
                direct.reprobes = 1;
                let relay = self.relay.expect("checked");
                self.events.push_back(PathEvent::Changed {
                    remote: peer.remote,
                    path: Path::Relayed { relay: relay.identity, addr: relay.addr },
                });
                continue;
            }
            // Probe only while the path carries packets; an idle connection has nothing to lose.
            let active = direct.last_sent.is_some_and(|at| now.saturating_duration_since(at) < PROBE_INTERVAL * 2);
            if !active && silent_since.is_none() {
                direct.next_probe = None;
                continue;
            }
            probes.push((peer.remote, direct.addr));
            direct.unanswered_since.get_or_insert(now);
            direct.unanswered += 1;
            direct.next_probe = Some(now + PROBE_INTERVAL);
        }
        for (remote, addr) in probes {
            self.challenge(now, &remote, addr);
        }
    }

    /// The next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next datagram to send with a TTL (hop limit) of [`OPEN_TTL`], and where; send these
    /// before [`PathTable::poll_transmit`]'s.
    pub fn poll_open(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.opens.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    const RELAY: &str = "203.0.113.1:3478";
    const A_ADDR: &str = "198.51.100.1:4000";
    const B_ADDR: &str = "198.51.100.2:5000";

    fn id() -> RemoteIdentity {
        Identity::generate().to_remote_identity()
    }

    fn relay_info() -> RelayInfo {
        RelayInfo { identity: id(), addr: RELAY.parse().unwrap(), tcp: false }
    }

    /// Two tables that share a relayed connection (key), each at its address.
    struct Pair {
        a: PathTable,
        b: PathTable,
        a_id: RemoteIdentity,
        b_id: RemoteIdentity,
        a_addr: SocketAddr,
        b_addr: SocketAddr,
        now: Instant,
    }

    impl Pair {
        fn new() -> Self {
            let (a_id, b_id) = (id(), id());
            let now = Instant::now();
            let (mut a, mut b) = (PathTable::new(a_id, [1; 32]), PathTable::new(b_id, [2; 32]));
            let relay = relay_info();
            a.set_relay(Some(relay));
            b.set_relay(Some(relay));
            a.add_key(now, b_id, 1, [42; 32]);
            b.add_key(now, a_id, 1, [42; 32]);
            Pair { a, b, a_id, b_id, a_addr: A_ADDR.parse().unwrap(), b_addr: B_ADDR.parse().unwrap(), now }
        }

        /// Delivers every datagram each side queued, both ways, until none is left; a datagram
        /// for an address that is not the other side's is lost. `cut` loses everything.
        fn exchange(&mut self, cut: bool) {
            for _ in 0..16 {
                let mut moved = false;
                while let Some((to, datagram)) = self.a.poll_transmit() {
                    moved = true;
                    if !cut && to == self.b_addr {
                        let _ = self.b.handle_frame(self.now, Some(self.a_addr), &datagram);
                    }
                }
                while let Some((to, datagram)) = self.b.poll_transmit() {
                    moved = true;
                    if !cut && to == self.a_addr {
                        let _ = self.a.handle_frame(self.now, Some(self.b_addr), &datagram);
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn events(table: &mut PathTable) -> Vec<PathEvent> {
            std::iter::from_fn(|| table.poll_event()).collect()
        }

        /// A punch: each side challenges the other's address once.
        fn punch(&mut self) {
            assert!(self.a.challenge(self.now, &self.b_id, self.b_addr));
            assert!(self.b.challenge(self.now, &self.a_id, self.a_addr));
            self.exchange(false);
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
        }
    }

    #[test]
    fn a_punch_validates_the_direct_path_both_ways() {
        let mut p = Pair::new();
        let pa = p.a.placeholder_for(p.now, p.b_id).unwrap();
        assert_eq!(p.a.route(p.now, pa), Route::Relay(*p.b_id.as_bytes()));
        p.punch();
        assert_eq!(p.a.direct(&p.b_id), Some(p.b_addr));
        assert_eq!(p.b.direct(&p.a_id), Some(p.a_addr));
        let events = Pair::events(&mut p.a);
        assert_eq!(events[0], PathEvent::Changed { remote: p.b_id, path: Path::Direct { addr: p.b_addr } });
        assert!(events.contains(&PathEvent::Validated { remote: p.b_id, addr: p.b_addr }));
        assert_eq!(p.a.route(p.now, pa), Route::Direct(p.b_addr));
        // QUIC packets from the peer's address are the placeholder's now.
        assert_eq!(p.a.quic_source(p.b_addr), pa);
        assert_eq!(p.a.path_of(pa), Path::Direct { addr: p.b_addr });
    }

    #[test]
    fn one_sided_punch_is_enough_challenges_come_back() {
        // Only A punches: B's response and B's own challenge back validate both sides.
        let mut p = Pair::new();
        assert!(p.a.challenge(p.now, &p.b_id, p.b_addr));
        p.exchange(false);
        assert_eq!(p.a.direct(&p.b_id), Some(p.b_addr));
        assert_eq!(p.b.direct(&p.a_id), Some(p.a_addr));
    }

    #[test]
    fn a_forged_response_is_refused() {
        let mut p = Pair::new();
        let attacker: SocketAddr = "192.168.1.66:4444".parse().unwrap();
        assert!(p.a.challenge(p.now, &p.b_id, p.b_addr));
        let (_, challenge) = p.a.poll_transmit().unwrap();
        let Ok(Frame::Challenge { id, target, .. }) = Frame::parse(&challenge) else { panic!() };
        // The attacker saw the challenge (id and target in the clear) but has no key.
        for key in [[0; 32], [41; 32]] {
            let forged = frame::response(&key, id, target, p.b_id.as_bytes(), p.a_id.as_bytes());
            assert_eq!(p.a.handle_frame(p.now, Some(p.b_addr), &forged), Err(Refused::BadTag));
            assert_eq!(p.a.handle_frame(p.now, Some(attacker), &forged), Err(Refused::BadTag));
        }
        // A response to no challenge at all, even with the key, is refused.
        let stray = frame::response(&[42; 32], id + 1000, target, p.b_id.as_bytes(), p.a_id.as_bytes());
        assert_eq!(p.a.handle_frame(p.now, Some(p.b_addr), &stray), Err(Refused::Unsolicited));
        assert_eq!(p.a.direct(&p.b_id), None);
        assert!(Pair::events(&mut p.a).is_empty());
    }

    #[test]
    fn a_real_response_replayed_from_another_address_is_refused() {
        let mut p = Pair::new();
        let attacker: SocketAddr = "192.168.1.66:4444".parse().unwrap();
        assert!(p.a.challenge(p.now, &p.b_id, p.b_addr));
        let (_, challenge) = p.a.poll_transmit().unwrap();
        p.b.handle_frame(p.now, Some(p.a_addr), &challenge).unwrap();
        let (_, response) = p.b.poll_transmit().unwrap();
        // Replayed from the attacker's address first: refused, nothing changes.
        assert_eq!(p.a.handle_frame(p.now, Some(attacker), &response), Err(Refused::Unsolicited));
        assert_eq!(p.a.direct(&p.b_id), None);
        assert_eq!(p.a.quic_source(attacker), attacker, "the attacker's packets are not the peer's");
        // The real one still counts; a second copy of it does not.
        p.a.handle_frame(p.now, Some(p.b_addr), &response).unwrap();
        assert_eq!(p.a.direct(&p.b_id), Some(p.b_addr));
        assert_eq!(p.a.handle_frame(p.now, Some(p.b_addr), &response), Err(Refused::Unsolicited));
    }

    #[test]
    fn a_replayed_challenge_gets_no_answer() {
        let mut p = Pair::new();
        let attacker: SocketAddr = "192.168.1.66:4444".parse().unwrap();
        assert!(p.a.challenge(p.now, &p.b_id, p.b_addr));
        let (_, challenge) = p.a.poll_transmit().unwrap();
        p.b.handle_frame(p.now, Some(p.a_addr), &challenge).unwrap();
        while p.b.poll_transmit().is_some() {}
        assert_eq!(p.b.handle_frame(p.now, Some(attacker), &challenge), Err(Refused::Replayed));
        assert!(p.b.poll_transmit().is_none(), "nothing is sent to the replayer");
        assert_eq!(p.b.quic_source(attacker), attacker);
    }

    #[test]
    fn junk_from_the_direct_address_does_not_keep_a_dead_path() {
        let mut p = Pair::new();
        p.punch();
        let pa = p.a.placeholder_for(p.now, p.b_id).unwrap();
        Pair::events(&mut p.a);
        // The path dies; someone (the NAT, an attacker) keeps sending junk from B's address.
        for _ in 0..12 {
            p.a.route(p.now, pa);
            let _ = p.a.handle_frame(p.now, Some(p.b_addr), b"\x00WR\x05junk");
            assert_eq!(p.a.quic_source(p.b_addr), pa);
            p.advance(Duration::from_millis(500));
            while p.a.poll_transmit().is_some() {}
        }
        assert_eq!(p.a.route(p.now, pa), Route::Relay(*p.b_id.as_bytes()), "junk is not an answer");
        let relay = p.a.relay().unwrap();
        assert!(Pair::events(&mut p.a).contains(&PathEvent::Changed {
            remote: p.b_id,
            path: Path::Relayed { relay: relay.identity, addr: relay.addr }
        }));
    }

    #[test]
    fn a_forged_relayed_frame_does_not_make_a_side_fall_back() {
        let mut p = Pair::new();
        p.punch();
        let pa = p.a.placeholder_for(p.now, p.b_id).unwrap();
        let relay_addr: SocketAddr = RELAY.parse().unwrap();
        p.advance(Duration::from_secs(5));
        // Frames "from the peer through the relay" (a relay operator, or a spoofer of its
        // address) while the direct path works: A probes, B answers, A stays direct.
        for _ in 0..20 {
            p.a.route(p.now, pa);
            let forged = frame::data(&p.b_id, b"not really from b");
            assert_eq!(p.a.handle_frame(p.now, Some(relay_addr), &forged).unwrap().map(|(f, _)| f), Some(pa));
            p.advance(Duration::from_millis(300));
            p.exchange(false);
        }
        assert_eq!(p.a.route(p.now, pa), Route::Direct(p.b_addr));
        assert!(
            !Pair::events(&mut p.a).iter().any(|e| matches!(e, PathEvent::Changed { path: Path::Relayed { .. }, .. }))
        );
    }

    #[test]
    fn data_frames_only_from_the_relay() {
        let mut p = Pair::new();
        let stranger: SocketAddr = "192.168.1.66:4444".parse().unwrap();
        let forged = frame::data(&p.b_id, b"x");
        assert_eq!(p.a.handle_frame(p.now, Some(stranger), &forged), Err(Refused::NotFromRelay));
        assert_eq!(p.a.handle_frame(p.now, None, &forged), Err(Refused::NotFromRelay), "not registered over TCP");
    }

    /// Issue 14, point 6: each frame from a new identity took a placeholder before any QUIC
    /// check, so a relay operator (or a node through the relay) with free keys filled the table
    /// with junk. Now only a QUIC Initial from an unknown identity earns one.
    #[test]
    fn junk_from_new_identities_takes_no_placeholder() {
        let mut table = PathTable::new(id(), [1; 32]);
        table.set_relay(Some(relay_info()));
        let relay: SocketAddr = RELAY.parse().unwrap();
        let now = Instant::now();
        for _ in 0..1000 {
            let junk = frame::data(&id(), &[0x40; 1300]);
            assert_eq!(table.handle_frame(now, Some(relay), &junk), Err(Refused::UnknownPeer));
        }
        let mut short_initial = vec![0xc3, 0, 0, 0, 1];
        short_initial.resize(600, 0);
        assert_eq!(
            table.handle_frame(now, Some(relay), &frame::data(&id(), &short_initial)),
            Err(Refused::UnknownPeer)
        );
        let newcomer = id();
        let mut initial = vec![0xc3, 0, 0, 0, 1];
        initial.resize(1200, 0);
        let first = frame::data(&newcomer, &initial);
        let delivered = table.handle_frame(now, Some(relay), &first).unwrap();
        let (placeholder, payload) = delivered.expect("a data frame is delivered");
        assert_eq!(payload.len(), 1200);
        assert_eq!(table.peer_of(placeholder), Some(newcomer));
        // Known now: its later (short-header) packets get through.
        let short = frame::data(&newcomer, &[0x40; 50]);
        let later = table.handle_frame(now, Some(relay), &short).unwrap();
        assert_eq!(later.map(|(p, _)| p), Some(placeholder));
        assert!(starts_a_connection(&initial) && !starts_a_connection(&initial[..1199]));
    }

    #[test]
    fn a_dead_path_falls_back_then_returns_when_it_answers_again() {
        let mut p = Pair::new();
        p.punch();
        Pair::events(&mut p.a);
        let pa = p.a.placeholder_for(p.now, p.b_id).unwrap();
        // Traffic on a working path: probes answered, stays direct.
        for _ in 0..20 {
            p.a.route(p.now, pa);
            p.advance(Duration::from_millis(250));
            p.exchange(false);
        }
        assert_eq!(p.a.route(p.now, pa), Route::Direct(p.b_addr));
        // Cut: falls back within DIRECT_SILENCE plus a probe interval or two.
        let cut_at = p.now;
        let mut fell_back_at = None;
        for _ in 0..40 {
            p.a.route(p.now, pa);
            p.advance(Duration::from_millis(100));
            p.exchange(true);
            if fell_back_at.is_none() && p.a.route(p.now, pa) != Route::Direct(p.b_addr) {
                fell_back_at = Some(p.now);
            }
        }
        let took = fell_back_at.expect("fell back") - cut_at;
        assert!(took >= DIRECT_SILENCE && took <= DIRECT_SILENCE + PROBE_INTERVAL * 2, "{took:?}");
        // Healed: a re-probe finds the path and the packets go back to it.
        let mut back_at = None;
        for _ in 0..100 {
            p.a.route(p.now, pa);
            p.advance(Duration::from_millis(100));
            p.exchange(false);
            if p.a.route(p.now, pa) == Route::Direct(p.b_addr) {
                back_at = Some(p.now);
                break;
            }
        }
        assert!(back_at.is_some(), "re-probed and returned");
        let events = Pair::events(&mut p.a);
        let changes: Vec<_> = events.iter().filter(|e| matches!(e, PathEvent::Changed { .. })).collect();
        assert!(
            matches!(
                changes.as_slice(),
                [
                    PathEvent::Changed { path: Path::Relayed { .. }, .. },
                    PathEvent::Changed { path: Path::Direct { .. }, .. }
                ]
            ),
            "{changes:?}"
        );
    }

    #[test]
    fn an_idle_path_is_not_probed_and_not_given_up() {
        let mut p = Pair::new();
        p.punch();
        let pa = p.a.placeholder_for(p.now, p.b_id).unwrap();
        p.a.route(p.now, pa);
        p.advance(Duration::from_secs(1));
        p.exchange(false);
        while p.a.poll_transmit().is_some() {}
        // Idle for a minute with the path cut: nothing is sent, nothing changes.
        for _ in 0..60 {
            p.advance(Duration::from_secs(1));
            p.exchange(true);
        }
        assert_eq!(p.a.poll_timeout(), None);
        // Then a keep-alive goes out: it goes direct, and only silence after it counts.
        assert_eq!(p.a.route(p.now, pa), Route::Direct(p.b_addr));
    }

    #[test]
    fn a_connection_closing_forgets_the_path_only_with_its_last_key() {
        let mut p = Pair::new();
        p.a.add_key(p.now, p.b_id, 2, [43; 32]);
        p.b.add_key(p.now, p.a_id, 2, [43; 32]);
        p.punch();
        assert_eq!(p.a.direct(&p.b_id), Some(p.b_addr));
        p.a.remove_key(p.now, &p.b_id, 2);
        assert_eq!(p.a.direct(&p.b_id), Some(p.b_addr));
        p.a.remove_key(p.now, &p.b_id, 1);
        // The closing connection's last packets (its CONNECTION_CLOSE) still go direct...
        let pa = p.a.placeholder_for(p.now, p.b_id).unwrap();
        assert_eq!(p.a.route(p.now, pa), Route::Direct(p.b_addr));
        assert!(!p.a.challenge(p.now, &p.b_id, p.b_addr), "no key, no challenge");
        assert!(p.a.poll_timeout().is_some_and(|at| at <= p.now + KEYLESS_DRAIN), "woken for the drain");
        // ...until the drain is over.
        p.a.handle_timeout(p.now + KEYLESS_DRAIN);
        assert_eq!(p.a.direct(&p.b_id), None);
        assert_eq!(p.a.quic_source(p.b_addr), p.b_addr);
        assert_eq!(p.a.poll_timeout(), None);
    }

    #[test]
    fn a_new_connection_during_the_drain_starts_over_on_the_relay() {
        let mut p = Pair::new();
        p.punch();
        p.a.remove_key(p.now, &p.b_id, 1);
        assert_eq!(p.a.direct(&p.b_id), Some(p.b_addr), "draining");
        p.a.add_key(p.now, p.b_id, 9, [45; 32]);
        assert_eq!(p.a.direct(&p.b_id), None, "the new connection punches afresh");
        assert_eq!(p.a.poll_timeout(), None, "no drain left behind");
    }

    #[test]
    fn punching_off_sends_and_answers_nothing() {
        let mut p = Pair::new();
        p.b.set_punching(false);
        assert!(!p.b.challenge(p.now, &p.a_id, p.a_addr));
        assert!(p.a.challenge(p.now, &p.b_id, p.b_addr));
        p.exchange(false);
        assert_eq!(p.a.direct(&p.b_id), None);
        assert_eq!(p.b.stats().responses, 0);
    }

    #[test]
    fn responses_are_rate_limited_per_peer() {
        let mut p = Pair::new();
        // Many valid challenges at once (a hostile peer with the key): at most the burst is
        // answered, each smaller than what asked for it.
        for _ in 0..1000 {
            p.a.challenge(p.now, &p.b_id, p.b_addr);
        }
        let mut answered = 0;
        while let Some((_, challenge)) = p.a.poll_transmit() {
            let _ = p.b.handle_frame(p.now, Some(p.a_addr), &challenge);
        }
        while let Some((_, datagram)) = p.b.poll_transmit() {
            if matches!(Frame::parse(&datagram), Ok(Frame::Response { .. })) {
                answered += 1;
                assert!(datagram.len() < frame::CHALLENGE_LEN);
            }
        }
        assert!(answered <= RESPONSE_BURST as usize, "{answered}");
        assert!(answered > 0);
    }

    #[test]
    fn placeholders_are_recognised_in_both_families_and_reclaimed_when_idle() {
        let p = placeholder(70_000);
        assert!(is_placeholder(p));
        let IpAddr::V4(v4) = p.ip() else { unreachable!() };
        assert!(is_placeholder(SocketAddr::new(v4.to_ipv6_mapped().into(), p.port())));
        assert!(!is_placeholder("10.0.0.1:9".parse().unwrap()));
        assert!(!is_placeholder("[::1]:9".parse().unwrap()));

        let mut table = PathTable::new(id(), [3; 32]);
        let start = Instant::now();
        let first = id();
        let addr = table.placeholder_for(start, first).unwrap();
        for _ in 1..MAX_PEERS {
            table.placeholder_for(start + Duration::from_secs(1), id()).unwrap();
        }
        assert_eq!(table.placeholder_for(start + Duration::from_secs(2), id()), None, "full, nothing idle");
        let later = start + PLACEHOLDER_IDLE + Duration::from_secs(1);
        let newcomer = id();
        assert_eq!(table.placeholder_for(later, newcomer), Some(addr), "the idlest entry made room");
        assert_eq!(table.peer_of(addr), Some(newcomer));
    }

    #[test]
    fn seen_ids_take_each_id_once_within_their_memory() {
        let mut seen = SeenIds::default();
        assert!(seen.check(5));
        assert!(seen.check(3));
        assert!(!seen.check(3));
        for id in 100..100 + REPLAY_MEMORY as u64 {
            assert!(seen.check(id));
        }
        assert!(seen.check(5), "forgotten past its memory");
        assert!(!seen.check(100 + REPLAY_MEMORY as u64 - 1));
    }

    #[test]
    fn a_restarted_peer_is_not_taken_for_a_replayer() {
        // The peer restarts (a new table, so its counter starts again) and connects anew: its
        // challenges under the new connection's key are answered.
        let mut p = Pair::new();
        p.punch();
        p.b.remove_key(p.now, &p.a_id, 1);
        let mut a2 = PathTable::new(p.a_id, [1; 32]);
        a2.set_relay(p.a.relay());
        a2.add_key(p.now, p.b_id, 7, [44; 32]);
        p.b.add_key(p.now, p.a_id, 7, [44; 32]);
        p.a = a2;
        p.punch();
        assert_eq!(p.a.direct(&p.b_id), Some(p.b_addr));
        assert_eq!(p.b.direct(&p.a_id), Some(p.a_addr));
    }

    #[test]
    fn a_challenge_alone_does_not_make_its_source_the_peers() {
        // A valid challenge from a (spoofed) address gets an answer there, and a challenge
        // back, but QUIC packets from it are not the peer's until that challenge is answered.
        let mut p = Pair::new();
        let spoofed: SocketAddr = "192.168.1.66:4444".parse().unwrap();
        assert!(p.a.challenge(p.now, &p.b_id, p.b_addr));
        let (_, challenge) = p.a.poll_transmit().unwrap();
        p.b.handle_frame(p.now, Some(spoofed), &challenge).unwrap();
        assert_eq!(p.b.quic_source(spoofed), spoofed);
        assert_eq!(p.b.direct(&p.a_id), None);
        let sent: Vec<_> = std::iter::from_fn(|| p.b.poll_transmit()).collect();
        assert_eq!(sent.len(), 2, "a response and a challenge back");
        assert!(sent.iter().all(|(to, _)| *to == spoofed));
    }

    #[test]
    fn challenges_back_are_bounded_per_peer() {
        // A hostile peer (it has the key) sends valid challenges from ever new source ports:
        // answered within the response budget, challenged back within a smaller one.
        let mut p = Pair::new();
        let mut backs = 0;
        for port in 0..200u16 {
            p.a.challenge(p.now, &p.b_id, p.b_addr);
            let (_, challenge) = p.a.poll_transmit().unwrap();
            let from = SocketAddr::new("192.168.1.66".parse().unwrap(), 10_000 + port);
            let _ = p.b.handle_frame(p.now, Some(from), &challenge);
            while let Some((_, datagram)) = p.b.poll_transmit() {
                backs += usize::from(matches!(Frame::parse(&datagram), Ok(Frame::Challenge { .. })));
            }
        }
        assert_eq!(backs, CHALLENGE_BACK_BURST as usize);
    }

    /// A tiny deterministic generator for the randomised test below.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn lossy_duplicated_reordered_and_forged_traffic_never_validates_a_wrong_address() {
        // Thousands of runs: both sides punch over a network that loses, duplicates and
        // reorders datagrams, while an attacker replays everything it sees from its own
        // address and sends forged responses. The only direct paths ever taken are the real
        // addresses, and nothing panics.
        let attacker: SocketAddr = "192.168.1.66:4444".parse().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut validated = 0;
        for _ in 0..2000 {
            let mut p = Pair::new();
            let mut wire: Vec<(bool, Vec<u8>)> = Vec::new();
            for round in 0..4 {
                p.a.challenge(p.now, &p.b_id, p.b_addr);
                p.b.challenge(p.now, &p.a_id, p.a_addr);
                if round == 1 {
                    // A challenge to a wrong address (port prediction): never answered by B.
                    p.a.challenge(p.now, &p.b_id, "198.51.100.2:5001".parse().unwrap());
                }
                for _ in 0..8 {
                    while let Some((to, d)) = p.a.poll_transmit() {
                        if to == p.b_addr {
                            wire.push((true, d));
                        }
                    }
                    while let Some((to, d)) = p.b.poll_transmit() {
                        if to == p.a_addr {
                            wire.push((false, d));
                        }
                    }
                    // Shuffle, drop, duplicate.
                    let mut next = Vec::new();
                    for (to_b, d) in wire.drain(..) {
                        match xorshift(&mut seed) % 6 {
                            0 => {}
                            1 => {
                                next.push((to_b, d.clone()));
                                next.push((to_b, d));
                            }
                            _ => next.push((to_b, d)),
                        }
                    }
                    let n = next.len();
                    for i in (1..n).rev() {
                        next.swap(i, (xorshift(&mut seed) % (i as u64 + 1)) as usize);
                    }
                    for (to_b, d) in next {
                        let (table, from) = if to_b { (&mut p.b, p.a_addr) } else { (&mut p.a, p.b_addr) };
                        let _ = table.handle_frame(p.now, Some(from), &d);
                        // The attacker replays it to both from its own address.
                        let _ = p.a.handle_frame(p.now, Some(attacker), &d);
                        let _ = p.b.handle_frame(p.now, Some(attacker), &d);
                    }
                    let forged = frame::response(
                        &[0; 32],
                        xorshift(&mut seed) % 64,
                        p.b_addr,
                        p.b_id.as_bytes(),
                        p.a_id.as_bytes(),
                    );
                    let _ = p.a.handle_frame(p.now, Some(p.b_addr), &forged);
                }
                p.now += Duration::from_millis(100);
            }
            for (table, expected) in [(&p.a, p.b_addr), (&p.b, p.a_addr)] {
                let peer = if expected == p.b_addr { p.b_id } else { p.a_id };
                if let Some(addr) = table.direct(&peer) {
                    assert_eq!(addr, expected);
                    validated += 1;
                }
            }
            assert_eq!(p.a.quic_source(attacker), attacker);
            assert_eq!(p.b.quic_source(attacker), attacker);
        }
        assert!(validated > 3000, "most runs punch through despite the losses: {validated}");
    }
}
