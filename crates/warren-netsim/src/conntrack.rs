//! A model of Linux connection tracking as a masquerading router keeps it: one entry per flow
//! (5-tuple), for the flows its inside hosts start (translated) and for every unsolicited
//! packet from outside (delivered to the router itself, which has no socket for it; the entry
//! stays all the same). A new outbound flow keeps its source port only if no entry already
//! holds the tuple its replies would come back on; otherwise the router picks another port.
//!
//! This is what the plain RFC 4787 model misses and what breaks naive hole punching between two
//! Linux routers: when one side's punch reaches the other router before that router's host has
//! sent its own, the unsolicited entry takes the tuple, the host's punch leaves from another
//! port, and neither side's packets match what the other's router expects. Checked against the
//! kernel's own NAT in `tests/conntrack.rs`.
//!
//! TCP differs in one way, checked against the kernel by `warren netsim nat-matrix --tcp`: an
//! unsolicited SYN that the router answers with a RST leaves its entry in `CLOSE`, and the
//! kernel lets a new flow take that tuple, so the host's own SYN keeps its port (two
//! `kernel-masquerade` routers punch TCP; the model without this rule did not).
//!
//! Timeouts are the kernel's defaults: an unreplied UDP flow lives 30 s
//! (`nf_conntrack_udp_timeout`), a replied one `stream_timeout` (120 s,
//! `nf_conntrack_udp_timeout_stream`); every packet of the flow refreshes it.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// An unreplied UDP flow's lifetime (`nf_conntrack_udp_timeout`).
pub const UDP_UNREPLIED: Duration = Duration::from_secs(30);

/// An unreplied TCP flow's lifetime (the kernel's `SYN_SENT` and `CLOSE` states are shorter or
/// longer; one value is enough for the model).
pub const TCP_UNREPLIED: Duration = Duration::from_secs(120);

/// Entries the table holds at most (the kernel's `nf_conntrack_max` on a small router); a new
/// flow past it is dropped.
pub const MAX_ENTRIES: usize = 65_536;

/// How a new outbound flow's source port is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortChoice {
    /// `masquerade`: the flow's own source port unless its reply tuple is taken, then a free one
    /// from a random starting point.
    Keep,
    /// `masquerade random` / `fully-random`: a random free port for every flow.
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Outside {
    protocol: u8,
    remote: SocketAddrV4,
    port: u16,
}

#[derive(Debug)]
struct Entry {
    /// The inside endpoint of a translated flow; `None` for an unsolicited packet the router
    /// took for itself.
    internal: Option<SocketAddrV4>,
    replied: bool,
    last_seen: Instant,
    /// A TCP entry the router answered with a RST (the kernel's `CLOSE` state): it no longer
    /// holds its tuple against a new flow.
    closed: bool,
}

/// Where an inbound packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// A reply on a translated flow: to this inside endpoint.
    Forward(SocketAddrV4),
    /// To the router itself (no socket there): dropped, and its entry stays (made now if new).
    Local,
}

/// The connection-tracking table of one router. See the module docs.
#[derive(Debug)]
pub struct Conntrack {
    port_range: std::ops::RangeInclusive<u16>,
    choice: PortChoice,
    unreplied_timeout: Duration,
    stream_timeout: Duration,
    tcp_timeout: Duration,
    /// Every entry, by the tuple as seen from outside (remote endpoint, router port).
    entries: HashMap<Outside, Entry>,
    /// Translated flows by their inside tuple (protocol, inside endpoint, remote endpoint).
    flows: HashMap<(u8, SocketAddrV4, SocketAddrV4), u16>,
}

impl Conntrack {
    /// An empty table giving out ports in `port_range`; unreplied UDP entries live
    /// `unreplied_timeout` (the kernel's default is [`UDP_UNREPLIED`]), replied ones
    /// `stream_timeout`, established TCP ones `tcp_timeout`.
    pub fn new(
        port_range: std::ops::RangeInclusive<u16>,
        choice: PortChoice,
        unreplied_timeout: Duration,
        stream_timeout: Duration,
        tcp_timeout: Duration,
    ) -> Self {
        Self {
            port_range,
            choice,
            unreplied_timeout,
            stream_timeout,
            tcp_timeout,
            entries: HashMap::new(),
            flows: HashMap::new(),
        }
    }

    /// Live entries (translated flows and unsolicited ones).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn lifetime(&self, protocol: u8, replied: bool) -> Duration {
        match (protocol == crate::packet::TCP, replied) {
            (false, false) => self.unreplied_timeout,
            (false, true) => self.stream_timeout,
            (true, false) => TCP_UNREPLIED,
            (true, true) => self.tcp_timeout,
        }
    }

    fn alive(&self, key: &Outside, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_seen) <= self.lifetime(key.protocol, entry.replied)
    }

    /// The entry for `key` if it is still alive (a dead one is removed).
    fn live(&mut self, key: Outside, now: Instant) -> Option<&mut Entry> {
        let alive = self.entries.get(&key).map(|e| self.alive(&key, e, now))?;
        if !alive {
            self.remove(key);
            return None;
        }
        self.entries.get_mut(&key)
    }

    fn remove(&mut self, key: Outside) {
        if let Some(Entry { internal: Some(internal), .. }) = self.entries.remove(&key) {
            self.flows.remove(&(key.protocol, internal, key.remote));
        }
    }

    /// Removes every entry past its lifetime; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let dead: Vec<Outside> =
            self.entries.iter().filter(|(key, entry)| !self.alive(key, entry, now)).map(|(key, _)| *key).collect();
        for key in &dead {
            self.remove(*key);
        }
        dead.len()
    }

    /// A packet from `internal` to `remote`: the router port it leaves from, or `None` if no
    /// port is free for it (or the table is full). `random` is a fresh random number (the
    /// caller's generator), used where the kernel picks at random.
    pub fn outbound(
        &mut self,
        protocol: u8,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        now: Instant,
        random: u32,
    ) -> Option<u16> {
        if let Some(&port) = self.flows.get(&(protocol, internal, remote)) {
            let key = Outside { protocol, remote, port };
            if let Some(entry) = self.live(key, now) {
                entry.last_seen = now;
                return Some(port);
            }
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.expire(now);
            if self.entries.len() >= MAX_ENTRIES {
                return None;
            }
        }
        let port = self.choose_port(protocol, internal.port(), remote, now, random)?;
        self.entries.insert(
            Outside { protocol, remote, port },
            Entry { internal: Some(internal), replied: false, last_seen: now, closed: false },
        );
        self.flows.insert((protocol, internal, remote), port);
        Some(port)
    }

    fn taken(&mut self, protocol: u8, remote: SocketAddrV4, port: u16, now: Instant) -> bool {
        self.live(Outside { protocol, remote, port }, now).is_some_and(|e| !e.closed)
    }

    /// The router answered the unsolicited TCP packet from `remote` to its `port` with a RST:
    /// the entry moves to `CLOSE`, whose tuple the kernel gives to a new flow (the inside host's
    /// own SYN to that peer keeps its port, and a simultaneous open can still meet).
    pub fn reset(&mut self, protocol: u8, remote: SocketAddrV4, port: u16, now: Instant) {
        if let Some(entry) = self.live(Outside { protocol, remote, port }, now)
            && entry.internal.is_none()
        {
            entry.closed = true;
        }
    }

    fn choose_port(&mut self, protocol: u8, own: u16, remote: SocketAddrV4, now: Instant, random: u32) -> Option<u16> {
        let (lo, hi) = (*self.port_range.start(), *self.port_range.end());
        if self.choice == PortChoice::Keep && self.port_range.contains(&own) && !self.taken(protocol, remote, own, now)
        {
            return Some(own);
        }
        // Like the kernel's search: from a random offset, the next free port.
        let size = u32::from(hi - lo) + 1;
        (0..size)
            .map(|i| lo + ((random.wrapping_add(i)) % size) as u16)
            .find(|&port| !self.taken(protocol, remote, port, now))
    }

    /// The inside endpoint of the live translated flow between `remote` and the router's `port`
    /// (for an ICMP error about it), without touching the flow.
    pub fn internal_of(&self, protocol: u8, remote: SocketAddrV4, port: u16, now: Instant) -> Option<SocketAddrV4> {
        let key = Outside { protocol, remote, port };
        let entry = self.entries.get(&key).filter(|e| self.alive(&key, e, now))?;
        entry.internal
    }

    /// The router port of the live translated flow from `internal` to `remote`.
    pub fn port_of(&self, protocol: u8, internal: SocketAddrV4, remote: SocketAddrV4, now: Instant) -> Option<u16> {
        let port = *self.flows.get(&(protocol, internal, remote))?;
        let key = Outside { protocol, remote, port };
        self.entries.get(&key).filter(|e| self.alive(&key, e, now)).map(|_| port)
    }

    /// A packet from `remote` to the router's `port`.
    pub fn inbound(&mut self, protocol: u8, remote: SocketAddrV4, port: u16, now: Instant) -> Inbound {
        let key = Outside { protocol, remote, port };
        if let Some(entry) = self.live(key, now) {
            entry.last_seen = now;
            return match entry.internal {
                Some(internal) => {
                    entry.replied = true;
                    Inbound::Forward(internal)
                }
                None => Inbound::Local,
            };
        }
        if self.entries.len() < MAX_ENTRIES {
            self.entries.insert(key, Entry { internal: None, replied: false, last_seen: now, closed: false });
        }
        Inbound::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{TCP, UDP};

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn table(choice: PortChoice) -> Conntrack {
        Conntrack::new(1024..=65535, choice, UDP_UNREPLIED, Duration::from_secs(120), Duration::from_secs(7440))
    }

    #[test]
    fn a_tcp_tuple_the_router_reset_is_free_for_the_hosts_own_syn() {
        let mut ct = table(PortChoice::Keep);
        let now = Instant::now();
        let (inside, peer) = (ep("10.0.0.2:5000"), ep("203.0.114.10:6000"));
        // The peer's SYN comes first: the router takes it, and answers with a RST.
        assert_eq!(ct.inbound(TCP, peer, 5000, now), Inbound::Local);
        // Without the RST the tuple stays taken: the host's SYN would leave from another port.
        let mut silent = table(PortChoice::Keep);
        assert_eq!(silent.inbound(TCP, peer, 5000, now), Inbound::Local);
        assert_ne!(silent.outbound(TCP, inside, peer, now, 7), Some(5000));
        ct.reset(TCP, peer, 5000, now);
        assert_eq!(ct.outbound(TCP, inside, peer, now, 7), Some(5000));
        // And the peer's next SYN is the reply of the host's flow.
        assert_eq!(ct.inbound(TCP, peer, 5000, now), Inbound::Forward(inside));
    }

    #[test]
    fn flows_keep_their_port_and_replies_come_back_only_on_their_tuple() {
        let mut ct = table(PortChoice::Keep);
        let now = Instant::now();
        let (inside, relay, peer) = (ep("10.0.0.2:5000"), ep("198.51.100.1:3478"), ep("203.0.114.10:6000"));
        assert_eq!(ct.outbound(UDP, inside, relay, now, 7), Some(5000));
        // Another destination, the same port: the tuples differ (endpoint-independent mapping).
        assert_eq!(ct.outbound(UDP, inside, peer, now, 7), Some(5000));
        assert_eq!(ct.inbound(UDP, relay, 5000, now), Inbound::Forward(inside));
        assert_eq!(ct.inbound(UDP, ep("198.51.100.1:9999"), 5000, now), Inbound::Local, "port-dependent filter");
    }

    #[test]
    fn an_unsolicited_packet_takes_the_tuple_and_the_hosts_own_flow_moves_to_another_port() {
        let mut ct = table(PortChoice::Keep);
        let now = Instant::now();
        let (inside, peer) = (ep("10.0.0.2:5000"), ep("203.0.114.10:6000"));
        // The peer's punch arrives first: an entry for the router itself.
        assert_eq!(ct.inbound(UDP, peer, 5000, now), Inbound::Local);
        assert_eq!(ct.len(), 1);
        // The host's own punch cannot have 5000: its replies would come back on that tuple.
        let moved = ct.outbound(UDP, inside, peer, now, 12345).unwrap();
        assert_ne!(moved, 5000);
        // The peer keeps sending to 5000: still the router's.
        assert_eq!(ct.inbound(UDP, peer, 5000, now), Inbound::Local);
        // Only packets to the port the host's flow really has come through.
        assert_eq!(ct.inbound(UDP, peer, moved, now), Inbound::Forward(inside));
    }

    #[test]
    fn unreplied_entries_go_after_30_s_and_replied_ones_after_the_stream_timeout() {
        let mut ct = table(PortChoice::Keep);
        let t0 = Instant::now();
        let (inside, peer, other) = (ep("10.0.0.2:5000"), ep("203.0.114.10:6000"), ep("203.0.114.11:6000"));
        ct.inbound(UDP, peer, 5000, t0);
        ct.outbound(UDP, inside, other, t0, 1);
        ct.inbound(UDP, other, 5000, t0);
        assert_eq!(ct.expire(t0 + UDP_UNREPLIED), 0);
        assert_eq!(ct.expire(t0 + UDP_UNREPLIED + Duration::from_millis(1)), 1, "the unsolicited one");
        // Its tuple is free again: the host's flow keeps its port.
        assert_eq!(ct.outbound(UDP, inside, peer, t0 + Duration::from_secs(31), 9), Some(5000));
        assert_eq!(ct.expire(t0 + Duration::from_secs(100)), 1, "the new flow, unreplied for 30 s");
        assert_eq!(ct.expire(t0 + Duration::from_secs(120)), 0, "the replied flow lives 120 s");
        assert_eq!(ct.expire(t0 + Duration::from_secs(121)), 1, "and then goes");
    }

    #[test]
    fn random_choice_moves_every_flow_and_a_full_table_refuses_new_ones() {
        let mut ct = table(PortChoice::Random);
        let now = Instant::now();
        let inside = ep("10.0.0.2:5000");
        let ports: Vec<u16> = (0..50u32)
            .map(|i| ct.outbound(UDP, inside, ep(&format!("203.0.114.10:{}", 6000 + i)), now, i * 7919).unwrap())
            .collect();
        assert!(ports.iter().filter(|&&p| p == 5000).count() <= 1, "{ports:?}");
        let mut small = Conntrack::new(
            2000..=2001,
            PortChoice::Keep,
            UDP_UNREPLIED,
            Duration::from_secs(120),
            Duration::from_secs(7440),
        );
        let peer = ep("203.0.114.10:6000");
        assert!(small.outbound(UDP, ep("10.0.0.2:2000"), peer, now, 0).is_some());
        assert!(small.outbound(UDP, ep("10.0.0.3:2000"), peer, now, 0).is_some());
        assert_eq!(small.outbound(UDP, ep("10.0.0.4:2000"), peer, now, 0), None, "no free port towards the peer");
    }
}
