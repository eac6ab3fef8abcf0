//! The forwarder thread: reads every TUN device, routes each packet through the topology tree
//! (see [`crate::sim`]), runs the link and NAT models, and writes what reaches a host or a
//! kernel NAT's interface.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::link::{Link, LinkStats};
use crate::nat::{Nat, NatStats, NatVerdict};
use crate::packet::{MAX_PACKET, Packet, VNET_HEADER_LEN};
use crate::topology::{Capture, Node};

/// The MAC address the forwarder answers every ARP request with: to a host, every other
/// address is on its link, behind this one "router".
pub(crate) const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const ETHERNET_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

/// What an Ethernet frame read from a host's TAP device (after its virtio-net header) holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An IPv4 packet.
    Ipv4,
    /// An ARP request: the reply frame to send back.
    ArpRequest(Vec<u8>),
    /// Anything else (IPv6, other ARP, LLDP…), dropped.
    Other,
}

/// Classifies an Ethernet frame; for an ARP request, builds the reply (from [`GATEWAY_MAC`],
/// whatever address was asked for).
pub(crate) fn ethernet_frame(frame: &[u8]) -> Frame {
    let Some(header) = frame.get(..ETHERNET_LEN) else { return Frame::Other };
    match u16::from_be_bytes([header[12], header[13]]) {
        ETHERTYPE_IPV4 => Frame::Ipv4,
        ETHERTYPE_ARP => {
            let Some(arp) = frame.get(ETHERNET_LEN..ETHERNET_LEN + 28) else { return Frame::Other };
            // Ethernet/IPv4 request, not a probe or announcement of the sender's own address.
            let request = arp[..8] == [0, 1, 8, 0, 6, 4, 0, 1];
            let (sender_mac, sender_ip, target_ip) = (&arp[8..14], &arp[14..18], &arp[24..28]);
            if !request || sender_ip == target_ip || sender_ip == [0, 0, 0, 0] {
                return Frame::Other;
            }
            let mut reply = Vec::with_capacity(ETHERNET_LEN + 28);
            reply.extend_from_slice(sender_mac);
            reply.extend_from_slice(&GATEWAY_MAC);
            reply.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
            reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
            reply.extend_from_slice(&GATEWAY_MAC);
            reply.extend_from_slice(target_ip);
            reply.extend_from_slice(sender_mac);
            reply.extend_from_slice(sender_ip);
            Frame::ArpRequest(reply)
        }
        _ => Frame::Other,
    }
}

/// The Ethernet header for an IPv4 packet to `dst` on a host whose MAC is `host`: multicast
/// and broadcast addresses map to their group MACs (RFC 1112), everything else to the host.
fn ethernet_header(dst: Ipv4Addr, host: [u8; 6]) -> [u8; ETHERNET_LEN] {
    let o = dst.octets();
    let to = if dst.is_multicast() {
        [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
    } else if dst.is_broadcast() {
        [0xff; 6]
    } else {
        host
    };
    let mut header = [0u8; ETHERNET_LEN];
    header[..6].copy_from_slice(&to);
    header[6..12].copy_from_slice(&GATEWAY_MAC);
    header[12..].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    header
}

/// A TUN device the forwarder reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Port {
    /// A host's `sim0` (a TAP device: Ethernet frames).
    Host(usize),
    /// A kernel NAT's upstream `wan0`.
    Wan(usize),
    /// A kernel NAT's downstream `lan0`.
    Lan(usize),
}

/// Counters the forwarder publishes.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) links: HashMap<(String, String), LinkStats>,
    pub(crate) nats: HashMap<String, NatStats>,
    /// Bumped at every publication.
    generation: u64,
}

/// The counters, shared between the forwarder and the simulation.
#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    state: Mutex<Stats>,
    published: Condvar,
    /// Someone waits for counters newer than the last publication.
    wanted: AtomicBool,
}

impl SharedStats {
    /// The counters as of the forwarder's next pass (bounded wait), so that everything it had
    /// already forwarded when this was called is counted; `running` false reads them as they
    /// are.
    pub(crate) fn fresh(&self, running: bool) -> MutexGuard<'_, Stats> {
        let state = self.state.lock().expect("stats lock");
        if !running {
            return state;
        }
        let generation = state.generation;
        self.wanted.store(true, Ordering::Release);
        self.published.wait_timeout_while(state, STATS_WAIT, |s| s.generation == generation).expect("stats lock").0
    }
}

/// Faults set while a simulation runs ([`Simulation::faults`](crate::Simulation::faults)):
/// address pairs between which every packet is lost, wherever it is in the network. A path
/// failure between two places that leaves their other paths working; between NATed networks,
/// name their public addresses.
#[derive(Debug, Default)]
pub struct Faults {
    /// Some pair is blocked (spares the lock on the common path).
    any: AtomicBool,
    blocked: Mutex<HashSet<(Ipv4Addr, Ipv4Addr)>>,
    dropped: AtomicU64,
}

impl Faults {
    /// Loses every packet between `a` and `b`, both ways, until [`unblock`](Self::unblock).
    pub fn block(&self, a: Ipv4Addr, b: Ipv4Addr) {
        self.set(a, b, true);
    }

    /// Lets packets between `a` and `b` through again.
    pub fn unblock(&self, a: Ipv4Addr, b: Ipv4Addr) {
        self.set(a, b, false);
    }

    /// Packets lost to blocks so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn set(&self, a: Ipv4Addr, b: Ipv4Addr, blocked: bool) {
        let mut pairs = self.blocked.lock().expect("faults lock");
        let pair = if a <= b { (a, b) } else { (b, a) };
        if blocked {
            pairs.insert(pair);
        } else {
            pairs.remove(&pair);
        }
        self.any.store(!pairs.is_empty(), Ordering::Release);
    }

    /// Is `packet` lost to a block (counted if so)?
    fn drops(&self, packet: &Packet) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let (src, dst) = (packet.src(), packet.dst());
        let pair = if src <= dst { (src, dst) } else { (dst, src) };
        let lost = self.blocked.lock().expect("faults lock").contains(&pair);
        if lost {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }
}

/// Longest wait for fresh counters: a few forwarder passes.
const STATS_WAIT: Duration = Duration::from_millis(200);

/// One routing entry: a prefix and the child of a scope that owns it.
#[derive(Debug, Clone, Copy)]
struct Route {
    network: u32,
    prefix: u8,
    child: Node,
}

impl Route {
    fn matches(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix.min(32))) };
        u32::from(ip) & mask == self.network & mask
    }
}

/// The thread that moves packets.
pub(crate) struct Forwarder {
    ports: Vec<(File, Port)>,
    port_index: HashMap<Port, usize>,
    nats: Vec<Nat>,
    /// For each scope (a gateway, or `None` for the internet), its children's prefixes,
    /// longest first.
    routes: HashMap<Option<Node>, Vec<Route>>,
    parent: HashMap<Node, Node>,
    names: HashMap<Node, String>,
    links: HashMap<(Node, Node), Link>,
    captures: HashMap<(Node, Node), Capture>,
    interface_captures: HashMap<usize, Capture>,
    /// Each host's MAC address, by host index.
    host_macs: Vec<[u8; 6]>,
    stats: Arc<SharedStats>,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
}

/// How long the forwarder sleeps at most, so it notices a stop request.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Packets read from one device before the others get their turn.
const READ_BATCH: usize = 64;

/// How often the counters are published at least while packets flow.
const STATS_EVERY: Duration = Duration::from_millis(10);

impl Forwarder {
    /// `owned` lists each device's own prefixes (a switch owns none: its children's count as
    /// its own to its gateway).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ports: Vec<(File, Port)>,
        nats: Vec<Nat>,
        owned: &[(Node, Vec<(Ipv4Addr, u8)>)],
        parent: HashMap<Node, Node>,
        names: HashMap<Node, String>,
        links: HashMap<(Node, Node), Link>,
        captures: HashMap<(Node, Node), Capture>,
        interface_captures: HashMap<usize, Capture>,
        host_macs: Vec<[u8; 6]>,
        stats: Arc<SharedStats>,
        faults: Arc<Faults>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let owned: HashMap<Node, &Vec<(Ipv4Addr, u8)>> = owned.iter().map(|(n, p)| (*n, p)).collect();
        let mut children: HashMap<Option<Node>, Vec<Node>> = HashMap::new();
        for node in names.keys() {
            children.entry(parent.get(node).copied()).or_default().push(*node);
        }
        // Everything a node's subtree answers for, as seen from its gateway.
        fn prefixes_of(
            node: Node,
            owned: &HashMap<Node, &Vec<(Ipv4Addr, u8)>>,
            children: &HashMap<Option<Node>, Vec<Node>>,
        ) -> Vec<(Ipv4Addr, u8)> {
            match node {
                Node::Switch(_) => children
                    .get(&Some(node))
                    .into_iter()
                    .flatten()
                    .flat_map(|c| prefixes_of(*c, owned, children))
                    .collect(),
                _ => owned.get(&node).map(|p| p.to_vec()).unwrap_or_default(),
            }
        }
        let mut routes: HashMap<Option<Node>, Vec<Route>> = HashMap::new();
        for (scope, kids) in &children {
            let table = routes.entry(*scope).or_default();
            for child in kids {
                for (ip, prefix) in prefixes_of(*child, &owned, &children) {
                    table.push(Route { network: u32::from(ip), prefix, child: *child });
                }
            }
            table.sort_by_key(|r| std::cmp::Reverse(r.prefix));
        }
        let port_index = ports.iter().enumerate().map(|(i, (_, p))| (*p, i)).collect();
        Self {
            ports,
            port_index,
            nats,
            routes,
            parent,
            names,
            links,
            captures,
            interface_captures,
            host_macs,
            stats,
            faults,
            stop,
        }
    }

    pub(crate) fn run(mut self) {
        let mut buf = vec![0u8; VNET_HEADER_LEN + MAX_PACKET];
        let mut fds: Vec<libc::pollfd> = self
            .ports
            .iter()
            .map(|(t, _)| libc::pollfd { fd: t.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        let mut published = Instant::now();
        // Wake-ups as asked: the kernel's default slack for a thread's timers is 50 µs.
        // SAFETY: PR_SET_TIMERSLACK takes a value in nanoseconds and touches only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next = self
                .links
                .values()
                .filter_map(|l| l.next_delivery())
                .chain(self.nats.iter().filter_map(|n| n.poll_timeout()))
                .min();
            let wait = next.map_or(IDLE_POLL, |at| at.saturating_duration_since(now).min(IDLE_POLL));
            // To the microsecond: `poll`'s whole milliseconds inflated every latency and bunched
            // deliveries at high rates.
            let timeout =
                libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
            // SAFETY: `fds` is a live array of pollfd of the given length; `timeout` outlives the
            // call; a null signal mask leaves the thread's as it is.
            let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &timeout, std::ptr::null()) };
            let readable: Vec<usize> =
                fds.iter().enumerate().filter(|(_, fd)| fd.revents & libc::POLLIN != 0).map(|(i, _)| i).collect();
            for index in readable {
                // Read a batch (the descriptor is non-blocking): a bounded one, so that a
                // sender faster than the forwarder cannot starve the other devices and the
                // deliveries below.
                for _ in 0..READ_BATCH {
                    let Ok(n) = self.ports[index].0.read(&mut buf) else { break };
                    let port = self.ports[index].1;
                    let l2_len = match port {
                        Port::Host(_) => match ethernet_frame(buf.get(VNET_HEADER_LEN..n).unwrap_or_default()) {
                            Frame::Ipv4 => ETHERNET_LEN,
                            Frame::ArpRequest(reply) => {
                                self.write_frame(index, &[0u8; VNET_HEADER_LEN], &reply, &[]);
                                continue;
                            }
                            Frame::Other => continue,
                        },
                        Port::Wan(_) | Port::Lan(_) => 0,
                    };
                    if let Ok(packet) = Packet::parse_vnet(&buf[..n], l2_len) {
                        self.read_from(port, packet, Instant::now());
                    }
                }
            }
            self.deliver(Instant::now());
            // Counters go out when the devices are quiet, and at least every STATS_EVERY
            // under load (cloning them for every packet would cost more than forwarding).
            if ready <= 0 || published.elapsed() >= STATS_EVERY || self.stats.wanted.load(Ordering::Acquire) {
                self.publish_stats();
                published = Instant::now();
            }
        }
        self.publish_stats();
        for capture in self.captures.values().chain(self.interface_captures.values()) {
            let _ = capture.lock().expect("capture lock").flush();
        }
    }

    /// A packet came out of a TUN device.
    fn read_from(&mut self, port: Port, packet: Packet, now: Instant) {
        match port {
            Port::Host(host) if !packet.is_plain() && self.interface_captures.contains_key(&host) => {
                // A captured interface shows the packets a wire would carry.
                packet.for_each_plain(|p| self.read_from(port, p, now));
            }
            Port::Host(host) => {
                write_capture(self.interface_captures.get(&host), &packet);
                let from = Node::Host(host);
                if let Some(to) = self.next_hop(from, packet.dst()) {
                    self.send(from, to, packet, now);
                }
            }
            Port::Wan(index) => {
                let from = Node::KernelNat(index);
                if let Some(to) = self.next_hop(from, packet.dst()) {
                    self.send(from, to, packet, now);
                }
            }
            Port::Lan(index) => {
                let from = Node::KernelNat(index);
                if let Some(to) = self.lookup(Some(from), packet.dst()) {
                    self.send(from, to, packet, now);
                }
            }
        }
    }

    /// The child of `scope` whose subtree owns `dst`.
    fn lookup(&self, scope: Option<Node>, dst: Ipv4Addr) -> Option<Node> {
        self.routes.get(&scope)?.iter().find(|r| r.matches(dst)).map(|r| r.child)
    }

    /// Where a packet leaving `from` for `dst` goes next: a neighbour under the same gateway
    /// when the two are linked, otherwise the gateway (none on the internet: dropped).
    fn next_hop(&self, from: Node, dst: Ipv4Addr) -> Option<Node> {
        let scope = self.parent.get(&from).copied();
        match self.lookup(scope, dst) {
            Some(owner) if owner != from && self.links.contains_key(&(from, owner)) => Some(owner),
            _ => scope,
        }
    }

    fn is_child(&self, node: Node, of: Node) -> bool {
        self.parent.get(&node) == Some(&of)
    }

    fn send(&mut self, from: Node, to: Node, packet: Packet, now: Instant) {
        if self.faults.drops(&packet) {
            return;
        }
        let Some(link) = self.links.get_mut(&(from, to)) else { return };
        let config = link.config();
        if !packet.is_plain()
            && (config.shapes_packets() || packet.wire_len() > config.mtu || self.captures.contains_key(&(from, to)))
        {
            return packet.for_each_plain(|p| self.send(from, to, p, now));
        }
        if let Some(reply) = link.send(packet, now) {
            // ICMP "fragmentation needed" goes back to the sender.
            self.arrive(from, to, reply, now);
        }
    }

    /// A packet reached node `at` over the link from `from`.
    fn arrive(&mut self, at: Node, from: Node, mut packet: Packet, now: Instant) {
        let captured = matches!(at, Node::Host(host) if self.interface_captures.contains_key(&host));
        if !packet.is_plain() && (matches!(at, Node::Nat(_)) || captured) {
            // The NAT model and captures see wire packets.
            return packet.for_each_plain(|p| self.arrive(at, from, p, now));
        }
        match at {
            Node::Host(host) => {
                write_capture(self.interface_captures.get(&host), &packet);
                self.write_port(Port::Host(host), &packet);
            }
            Node::KernelNat(index) => {
                let port = if self.is_child(from, at) { Port::Lan(index) } else { Port::Wan(index) };
                self.write_port(port, &packet);
            }
            Node::Nat(nat) => {
                let outbound = self.is_child(from, at);
                // A NAT is a router: what it forwards loses one TTL, and a packet with none left
                // to lose is dropped before it is translated (Linux's forwarding check comes
                // before its source NAT, so no mapping is made). A packet for the NAT itself
                // (an unsolicited one, say) is not forwarded and keeps its state either way.
                if outbound && packet.ttl() <= 1 {
                    return;
                }
                let verdict =
                    if outbound { self.nats[nat].outbound(packet, now) } else { self.nats[nat].inbound(packet, now) };
                let verdict = match verdict {
                    NatVerdict::Forward(mut packet) => {
                        if !packet.decrement_ttl() {
                            return;
                        }
                        NatVerdict::Forward(packet)
                    }
                    NatVerdict::Hairpin(mut packet) => {
                        if !packet.decrement_ttl() {
                            return;
                        }
                        NatVerdict::Hairpin(packet)
                    }
                    other => other,
                };
                let (next, packet) = match verdict {
                    NatVerdict::Forward(packet) if outbound => (self.next_hop(at, packet.dst()), packet),
                    NatVerdict::Forward(packet) | NatVerdict::Hairpin(packet) => {
                        (self.lookup(Some(at), packet.dst()), packet)
                    }
                    NatVerdict::Reply(packet) => (Some(from), packet),
                    NatVerdict::Drop(_) => return,
                };
                if let Some(next) = next {
                    self.send(at, next, packet, now);
                }
            }
            Node::Switch(_) if packet.dst().is_multicast() || packet.dst().is_broadcast() => {
                let ports: Vec<Node> = self
                    .links
                    .keys()
                    .filter(|(a, b)| *a == at && *b != from && self.is_child(*b, at))
                    .map(|(_, b)| *b)
                    .collect();
                for port in ports {
                    self.send(at, port, packet.clone(), now);
                }
            }
            Node::Router(_) | Node::Switch(_) => {
                if matches!(at, Node::Router(_)) && !packet.decrement_ttl() {
                    return;
                }
                let next = match self.lookup(Some(at), packet.dst()) {
                    Some(child) if child != from => Some(child),
                    Some(_) => None,
                    // Not ours: up, unless it came from there.
                    None if self.is_child(from, at) => self.next_hop(at, packet.dst()),
                    None => None,
                };
                if let Some(next) = next {
                    self.send(at, next, packet, now);
                }
            }
        }
    }

    fn write_port(&mut self, port: Port, packet: &Packet) {
        let Some(&index) = self.port_index.get(&port) else { return };
        match port {
            Port::Host(host) => {
                let ethernet = ethernet_header(packet.dst(), self.host_macs[host]);
                self.write_frame(index, &packet.vnet_header(ETHERNET_LEN), &ethernet, packet.as_bytes());
            }
            Port::Wan(_) | Port::Lan(_) => self.write_frame(index, &packet.vnet_header(0), &[], packet.as_bytes()),
        }
    }

    /// Writes a virtio-net header, a link-layer header (empty on TUN) and a payload to port
    /// `index` in one system call.
    fn write_frame(&self, index: usize, vnet: &[u8], link: &[u8], payload: &[u8]) {
        let iov = [vnet, link, payload]
            .map(|part| libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() });
        // SAFETY: every iovec points into a buffer alive for the call; writev only reads them.
        // A full device queue drops the frame (the result is ignored), as a full interface
        // queue would.
        unsafe { libc::writev(self.ports[index].0.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    }

    fn deliver(&mut self, now: Instant) {
        // What the NATs send on their own (late ICMP answers) goes toward its destination.
        for index in 0..self.nats.len() {
            while let Some(packet) = self.nats[index].poll_transmit(now) {
                let at = Node::Nat(index);
                if let Some(next) = self.next_hop(at, packet.dst()) {
                    self.send(at, next, packet, now);
                }
            }
        }
        // Deliveries may feed other links (through NATs and routers); repeat until nothing
        // more is due.
        loop {
            let mut due = Vec::new();
            for (&(from, to), link) in self.links.iter_mut() {
                while let Some(packet) = link.poll(now) {
                    due.push((from, to, packet));
                }
            }
            if due.is_empty() {
                return;
            }
            for (from, to, packet) in due {
                write_capture(self.captures.get(&(from, to)), &packet);
                self.arrive(to, from, packet, now);
            }
        }
    }

    fn publish_stats(&self) {
        self.stats.wanted.store(false, Ordering::Release);
        let mut stats = self.stats.state.lock().expect("stats lock");
        stats.generation += 1;
        self.stats.published.notify_all();
        for (&(from, to), link) in &self.links {
            stats.links.insert((self.names[&from].clone(), self.names[&to].clone()), link.stats().clone());
        }
        for (index, nat) in self.nats.iter().enumerate() {
            stats.nats.insert(self.names[&Node::Nat(index)].clone(), nat.stats().clone());
        }
    }
}

fn write_capture(capture: Option<&Capture>, packet: &Packet) {
    if let Some(capture) = capture {
        // A capture that cannot be written is not worth stopping the simulation.
        let _ = capture.lock().expect("capture lock").write_packet(SystemTime::now(), packet.as_bytes());
    }
}
