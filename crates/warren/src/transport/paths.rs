//! The socket quinn sees: the node's one UDP socket with the path table in front of it.
//!
//! [`Paths`] is a thin driver: it owns the socket, the clock and a timer task, and feeds the
//! sans-IO [`PathTable`](crate::state::path_table::PathTable) (which holds every decision:
//! placeholders, which path a relayed peer's packets take, validation, liveness, fallback,
//! re-probing). Packets for a placeholder go straight to the peer's validated address or, in a
//! data frame ([`crate::wire::frame`]), to the relay; packets coming back either way reach
//! quinn as coming from the placeholder. Everything else (connections dialled to real
//! addresses) passes through untouched, without taking the table's lock.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::{Notify, broadcast};

use super::birthday;
use crate::RemoteIdentity;
use crate::state::nat::NatType;
use crate::state::path_table::{OPEN_TTL, PathTable, RelayInfo, Route, Stats};
pub use crate::state::path_table::{Path, PathEvent, is_placeholder, unmap};
use crate::state::punch::{Candidates, MAX_CANDIDATES};
use crate::wire::frame::{self, PathKey};
use crate::wire::punch::NatInfo;

/// `N` bytes from the operating system's random source (secrets, nonces, transaction ids).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// Relayed datagrams waiting for quinn; more are dropped, as a full socket buffer would.
pub const INBOX: usize = 4096;

/// The relay this node is registered with, and how data frames reach it.
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

/// Where the path table's `Changed` events go, synchronously and in order (the node maps them
/// to its own events; a `PathChanged` always comes before the `HolePunch` that caused it).
pub type PathEvents = Box<dyn Fn(PathEvent) + Send + Sync>;

#[derive(Default)]
struct Inbox {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    waker: Option<Waker>,
}

/// The path table's driver around the node's UDP socket. See the module docs.
pub(crate) struct Paths {
    socket: Arc<dyn AsyncUdpSocket>,
    /// The same socket, for the datagrams that leave with a small TTL (path table opens).
    raw: Option<std::net::UdpSocket>,
    ipv6: bool,
    table: Mutex<PathTable>,
    relay: Mutex<Option<Arc<RelayRoute>>>,
    /// The external address a port mapping on the gateway forwards to this socket.
    mapped: Mutex<Option<SocketAddr>>,
    /// This socket's NAT, as the relay's two ports tell it (`crate::state::nat`), and whether a
    /// test is under way.
    nat: tokio::sync::watch::Sender<(NatType, bool)>,
    /// STUN datagrams received (answers from the relay's second port).
    stun: broadcast::Sender<(SocketAddr, Vec<u8>)>,
    /// Birthday probing's extra sockets.
    birthday: birthday::Sockets,
    /// Mirrors `PathTable::any_heard`: incoming QUIC packets need no look-up while false.
    any_heard: AtomicBool,
    inbox: Mutex<Inbox>,
    events: PathEvents,
    validated: broadcast::Sender<(RemoteIdentity, SocketAddr)>,
    /// Wakes the timer task early (its own `Arc`: the task holds the table only weakly).
    timer: Arc<Notify>,
}

impl fmt::Debug for Paths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paths").finish_non_exhaustive()
    }
}

impl Paths {
    pub(crate) fn new(
        me: RemoteIdentity,
        socket: Arc<dyn AsyncUdpSocket>,
        raw: Option<std::net::UdpSocket>,
        events: PathEvents,
    ) -> io::Result<Arc<Self>> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        Ok(Arc::new(Self {
            socket,
            raw,
            ipv6,
            table: Mutex::new(PathTable::new(me, random_bytes())),
            relay: Mutex::new(None),
            mapped: Mutex::new(None),
            nat: tokio::sync::watch::channel((NatType::Unknown, false)).0,
            stun: broadcast::channel(8).0,
            birthday: birthday::Sockets::default(),
            any_heard: AtomicBool::new(false),
            inbox: Mutex::default(),
            events,
            validated: broadcast::channel(64).0,
            timer: Arc::new(Notify::new()),
        }))
    }

    fn table(&self) -> MutexGuard<'_, PathTable> {
        self.table.lock().expect("path lock poisoned")
    }

    /// Sends what the table queued and reports its events, after releasing its lock.
    fn flush(&self, mut table: MutexGuard<'_, PathTable>) {
        let opens: Vec<_> = std::iter::from_fn(|| table.poll_open()).collect();
        let transmits: Vec<_> = std::iter::from_fn(|| table.poll_transmit()).collect();
        let events: Vec<_> = std::iter::from_fn(|| table.poll_event()).collect();
        self.any_heard.store(table.any_heard(), Ordering::Relaxed);
        let wake = table.take_timer_moved();
        drop(table);
        if wake {
            self.timer.notify_one();
        }
        for (to, datagram) in opens {
            self.send_with_ttl(&datagram, to, OPEN_TTL);
        }
        for (to, datagram) in transmits {
            self.send_control(&datagram, to);
        }
        for event in events {
            match event {
                PathEvent::Validated { remote, addr } => {
                    // Nobody listening is fine: no punch session is waiting.
                    let _ = self.validated.send((remote, addr));
                }
                PathEvent::Changed { remote, path } => {
                    (self.events)(PathEvent::Changed { remote, path: display_path(path) })
                }
            }
        }
    }

    /// Runs the table's timers (probes, fallback, re-probes) until the node's tasks are
    /// cancelled.
    /// Holds the table only weakly: it ends when the transport is gone.
    pub(crate) async fn drive_timers(paths: std::sync::Weak<Self>) {
        let Some(timer) = paths.upgrade().map(|p| p.timer.clone()) else { return };
        loop {
            let Some(deadline) = paths.upgrade().map(|p| p.table().poll_timeout()) else { return };
            let moved = timer.notified();
            let wait = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait => {
                    let Some(this) = paths.upgrade() else { return };
                    let mut table = this.table();
                    table.handle_timeout(Instant::now());
                    this.flush(table);
                }
                _ = moved => {}
            }
        }
    }

    /// Forgets the direct path of the peer behind `placeholder` (a new connection from it is
    /// arriving through the relay: its old address may be dead).
    pub(crate) fn forget_direct_at(&self, placeholder: SocketAddr) {
        let mut table = self.table();
        if let Some(remote) = table.peer_of(placeholder) {
            table.forget_direct(&remote);
        }
        self.flush(table);
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
        self.table().punching()
    }

    pub(crate) fn set_hole_punching(&self, enabled: bool) {
        self.table().set_punching(enabled);
    }

    /// What the path table refused and sent so far (forged, replayed, unsolicited frames).
    pub fn stats(&self) -> Stats {
        self.table().stats()
    }

    pub(crate) fn set_relay(&self, relay: Option<RelayRoute>) {
        let info = relay.as_ref().map(|r| RelayInfo { identity: r.identity, addr: r.addr, tcp: r.is_tcp() });
        *self.relay.lock().expect("relay lock poisoned") = relay.map(Arc::new);
        self.table().set_relay(info);
    }

    /// The relay route (shared: the send path takes it per relayed packet).
    pub(crate) fn relay(&self) -> Option<Arc<RelayRoute>> {
        self.relay.lock().expect("relay lock poisoned").clone()
    }

    /// Sets the external address the gateway maps to this socket (`crate::portmap`).
    pub(crate) fn set_mapped(&self, mapped: Option<SocketAddr>) {
        *self.mapped.lock().expect("mapped lock poisoned") = mapped;
    }

    /// The external address the gateway maps to this socket, if a port mapping made one.
    pub(crate) fn mapped(&self) -> Option<SocketAddr> {
        *self.mapped.lock().expect("mapped lock poisoned")
    }

    /// The placeholder address quinn dials to reach `remote` through the relay.
    pub(crate) fn placeholder_for(&self, remote: RemoteIdentity) -> Option<SocketAddr> {
        self.table().placeholder_for(Instant::now(), remote).map(|a| self.in_family(a))
    }

    /// The path behind a connection's remote address.
    pub fn path_of(&self, remote_addr: SocketAddr) -> Path {
        display_path(self.table().path_of(remote_addr))
    }

    /// This node's candidate addresses: the external address of a port mapping, the socket's
    /// addresses on each interface, and the reflexive address the relay reported.
    pub(crate) fn candidates(&self) -> Candidates {
        let paths = self;
        // Over TCP the relay sees a TCP mapping, which says nothing about the UDP one.
        let reflexive = paths.relay().filter(|r| !r.is_tcp()).map(|r| r.observed);
        let nat = NatInfo { kind: paths.nat(), mapped: paths.mapped().is_some() };
        let Ok(local) = paths.local_addr() else { return Candidates { local: Vec::new(), reflexive, nat } };
        let mut out: Vec<std::net::SocketAddr> = paths.mapped().into_iter().collect();
        if local.ip().is_unspecified() {
            let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
            let ips =
                interfaces.iter().map(|i| i.ip()).filter(|ip| !ip.is_loopback() && (ip.is_ipv4() || local.is_ipv6()));
            out.extend(ips.map(|ip| std::net::SocketAddr::new(ip, local.port())));
        } else {
            out.push(local);
        }
        out.truncate(MAX_CANDIDATES - 1);
        Candidates { local: out, reflexive, nat }
    }

    /// This socket's NAT, as far as it is known.
    pub fn nat(&self) -> NatType {
        self.nat.borrow().0
    }

    /// A NAT test is starting (`testing`) or is over with `nat`.
    pub(crate) fn set_nat(&self, nat: NatType, testing: bool) {
        self.nat.send_replace((nat, testing));
    }

    /// The NAT once no test is under way (waiting at most `bound`).
    pub(crate) async fn settled_nat(&self, bound: std::time::Duration) -> NatType {
        let mut watch = self.nat.subscribe();
        let _ = tokio::time::timeout(bound, watch.wait_for(|(_, testing)| !testing)).await;
        self.nat()
    }

    /// STUN datagrams received from now on (with their senders).
    pub(crate) fn subscribe_stun(&self) -> broadcast::Receiver<(SocketAddr, Vec<u8>)> {
        self.stun.subscribe()
    }

    /// Sends a STUN request from this socket.
    pub(crate) fn send_stun(&self, datagram: &[u8], to: SocketAddr) {
        self.send_control(datagram, to);
    }

    /// Birthday probing, the hard side: opens up to `count` extra sockets for `remote`, each
    /// with a TTL-limited challenge to `target` (the peer's reflexive address). Returns how many
    /// opened.
    pub(crate) fn open_birthday(self: &Arc<Self>, remote: &RemoteIdentity, target: SocketAddr, count: usize) -> usize {
        let SocketAddr::V4(target) = unmap(target) else { return 0 };
        let ip = match self.local_addr().map(|a| unmap(a).ip()) {
            Ok(std::net::IpAddr::V4(ip)) => ip,
            _ => std::net::Ipv4Addr::UNSPECIFIED,
        };
        let opened = self.birthday.open(*remote, ip, count);
        for birthday::Opened { slot, socket, cancel } in &opened {
            let (slot, socket, cancel, paths) = (*slot, socket.clone(), cancel.clone(), Arc::downgrade(self));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let received = tokio::select! {
                        _ = cancel.cancelled() => break,
                        received = socket.recv_from(&mut buf) => received,
                    };
                    let (Ok((len, SocketAddr::V4(from))), Some(paths)) = (received, paths.upgrade()) else { break };
                    paths.on_birthday(slot, from, &buf[..len]);
                }
            });
        }
        let mut table = self.table();
        for birthday::Opened { slot, .. } in &opened {
            table.open(Instant::now(), remote, birthday::alias(*slot, target));
        }
        self.flush(table);
        opened.len()
    }

    /// A datagram on birthday slot `slot` from `from`: to the table as from the alias.
    fn on_birthday(&self, slot: u16, from: std::net::SocketAddrV4, datagram: &[u8]) {
        let alias = birthday::alias(slot, from);
        if frame::is_frame(datagram) {
            self.on_frame(Some(alias), datagram);
        } else {
            let source = self.table().quic_source(alias);
            // Only QUIC packets of a peer validated on this socket.
            if is_placeholder(source) {
                self.deliver(self.in_family(source), datagram);
            }
        }
    }

    /// Birthday probing is over for `remote`: its extra sockets close, but the one its direct
    /// path now uses.
    pub(crate) fn close_birthday(&self, remote: &RemoteIdentity) {
        let keep = self.table().direct(remote).and_then(birthday::unalias).map(|(slot, _)| slot);
        self.birthday.close(remote, keep);
    }

    /// A relayed connection to `remote` (`id` names it) brings its path key.
    pub(crate) fn add_key(&self, remote: RemoteIdentity, id: u64, key: PathKey) {
        self.table().add_key(Instant::now(), remote, id, key);
    }

    /// That connection closed; with the last one, the direct path is forgotten once its last
    /// packets are out ([`crate::state::path_table::KEYLESS_DRAIN`]).
    pub(crate) fn remove_key(&self, remote: &RemoteIdentity, id: u64) {
        let mut table = self.table();
        table.remove_key(Instant::now(), remote, id);
        self.flush(table);
    }

    /// Opens this side's NAT towards `target` for `remote`: a challenge with a small TTL
    /// ([`PathTable::open`]).
    pub(crate) fn open(&self, remote: &RemoteIdentity, target: SocketAddr) -> bool {
        let mut table = self.table();
        let queued = table.open(Instant::now(), remote, target);
        self.flush(table);
        queued
    }

    /// Forgets the direct path to `remote` (it is being dialled again through the relay).
    pub(crate) fn forget_direct(&self, remote: &RemoteIdentity) {
        let mut table = self.table();
        table.forget_direct(remote);
        self.flush(table);
    }

    /// Challenges `remote` at `target` (a punch round). False if there is no key or punching
    /// is off.
    pub(crate) fn challenge(&self, remote: &RemoteIdentity, target: SocketAddr) -> bool {
        let mut table = self.table();
        let sent = table.challenge(Instant::now(), remote, unmap(target));
        self.flush(table);
        sent
    }

    /// The validated, live direct address of `remote`.
    pub(crate) fn direct(&self, remote: &RemoteIdentity) -> Option<SocketAddr> {
        self.table().direct(remote)
    }

    /// Addresses validated from now on, for any peer.
    pub(crate) fn subscribe_validated(&self) -> broadcast::Receiver<(RemoteIdentity, SocketAddr)> {
        self.validated.subscribe()
    }

    /// A data frame that came over the TCP relay link.
    pub(crate) fn deliver_tcp_frame(&self, datagram: &[u8]) {
        self.on_frame(None, datagram);
    }

    /// Sends `datagram` with the IP TTL (hop limit) `ttl`, as a control message of this one
    /// datagram (the socket's own TTL, which quinn's packets use, is untouched). Where that is not
    /// supported it goes with the normal TTL.
    fn send_with_ttl(&self, datagram: &[u8], to: SocketAddr, ttl: u8) {
        if let Some((slot, real)) = birthday::unalias(to) {
            self.birthday.send(slot, datagram, real, Some(ttl));
            return;
        }
        let to = self.in_family(to);
        let sent = match &self.raw {
            Some(raw) => super::ttl::send(raw, datagram, to, ttl),
            None => Err(io::Error::from(io::ErrorKind::Unsupported)),
        };
        if let Err(error) = sent {
            tracing::trace!(%to, %error, "TTL-limited datagram not sent as such; sending it plainly");
            self.send_control(datagram, to);
        }
    }

    fn send_control(&self, datagram: &[u8], to: SocketAddr) {
        if let Some((slot, real)) = birthday::unalias(to) {
            self.birthday.send(slot, datagram, real, None);
            return;
        }
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

    /// Handles one warren frame from `from` (None: the TCP relay link).
    fn on_frame(&self, from: Option<SocketAddr>, datagram: &[u8]) {
        let mut table = self.table();
        match table.handle_frame(Instant::now(), from, datagram) {
            Ok(Some((placeholder, payload))) => {
                let placeholder = self.in_family(placeholder);
                self.flush(table);
                self.deliver(placeholder, payload);
            }
            Ok(None) => self.flush(table),
            Err(reason) => {
                drop(table);
                tracing::trace!(?from, ?reason, "warren frame refused");
            }
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

    /// The address quinn should see a QUIC packet from `from` come from.
    fn quic_source(&self, from: SocketAddr) -> SocketAddr {
        if !self.any_heard.load(Ordering::Relaxed) {
            return from;
        }
        let source = self.table().quic_source(from);
        if source == unmap(from) { from } else { self.in_family(source) }
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
                if frame::is_frame(segment) {
                    self.on_frame(Some(unmap(meta.addr)), segment);
                } else if crate::wire::stun::is_stun(segment) {
                    let _ = self.stun.send((unmap(meta.addr), segment.to_vec()));
                } else {
                    self.deliver(self.quic_source(meta.addr), segment);
                }
            },
            |meta| meta.addr = self.quic_source(meta.addr),
        )
    }
}

/// The [`AsyncUdpSocket`] quinn runs on.
#[derive(Debug)]
pub(crate) struct PathSocket(pub(crate) Arc<Paths>);

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
        let route = {
            let mut table = paths.table();
            let route = table.route(Instant::now(), destination);
            if table.take_timer_moved() {
                paths.timer.notify_one();
            }
            route
        };
        match route {
            Route::Direct(addr) if birthday::unalias(addr).is_some() => {
                let (slot, real) = birthday::unalias(addr).expect("an alias");
                let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
                for segment in transmit.contents.chunks(size) {
                    paths.birthday.send(slot, segment, real, None);
                }
                Ok(())
            }
            Route::Direct(addr) => paths.socket.try_send(&Transmit {
                destination: paths.in_family(addr),
                ecn: transmit.ecn,
                contents: transmit.contents,
                segment_size: transmit.segment_size,
                src_ip: transmit.src_ip,
            }),
            // No path at the moment (relay reconnecting): the packet is lost; QUIC resends.
            Route::Drop => Ok(()),
            Route::Relay(peer) => {
                let Some(relay) = paths.relay() else { return Ok(()) };
                let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
                match &relay.egress {
                    RelayEgress::Tcp(records) => {
                        for segment in transmit.contents.chunks(size) {
                            let mut frame = vec![0u8; frame::DATA_HEADER_LEN + segment.len()];
                            frame::write_data_header(&mut frame, &peer);
                            frame[frame::DATA_HEADER_LEN..].copy_from_slice(segment);
                            // A full queue loses the packet, as a congested link would.
                            let _ = records.try_send(crate::wire::record::encode(crate::wire::record::DATA, &frame));
                        }
                        Ok(())
                    }
                    RelayEgress::Udp => {
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
                                destination: paths.in_family(relay.addr),
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

/// A path as people see it: a birthday alias as the peer's real address.
fn display_path(path: Path) -> Path {
    match path {
        Path::Direct { addr } => Path::Direct { addr: birthday::display(addr) },
        other => other,
    }
}
