//! Which incoming connection attempts a node takes, sans-IO: counts of connections in handshake
//! and alive, in total and per source, and the verdict for each new attempt (accept, ask for
//! address validation with a QUIC Retry, or refuse).
//!
//! Identities are free, so nothing here can tell a flood from a crowd by key; what bounds a
//! flood is what it costs the flooder: a source (an IPv4 address, an IPv6 /64) gets at most
//! [`Limits::handshakes_per_source`] handshakes at once and [`Limits::connections_per_source`]
//! connections in all; the node at most [`Limits::handshakes`] and [`Limits::connections`].
//! Above [`Limits::retry_above`] handshakes at once, an address that has not shown it can receive
//! (a Retry token) must do so first, so a spoofer cannot occupy slots from addresses it does not
//! hold. Each connection costs the node about 45 KiB of quinn state before any window fills, so
//! the defaults bound a flood to about 100 MiB however many keys and addresses it has.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The node's limits on incoming connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes in progress at once, from everyone.
    pub handshakes: usize,
    /// Handshakes in progress at once from one source.
    pub handshakes_per_source: usize,
    /// Above this many handshakes in progress, an unvalidated address gets a Retry first.
    pub retry_above: usize,
    /// Incoming connections alive at once (in handshake or established), from everyone.
    pub connections: usize,
    /// Incoming connections alive at once from one source.
    pub connections_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshakes: 256,
            handshakes_per_source: 16,
            retry_above: 32,
            connections: 2048,
            connections_per_source: 64,
        }
    }
}

/// What to do with a new attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take it; its handshake counts until [`Admission::handshake_done`] and the connection until
    /// [`Admission::closed`].
    Accept,
    /// Take it, and close the oldest connection of this source to make room: the node is full
    /// and that source holds the most connections, more than the newcomer's by two or more.
    /// (A flood from many addresses fills [`Limits::connections`]; a newcomer then still gets
    /// in at the expense of the biggest holder, not at nobody's.)
    Evict(IpAddr),
    /// Ask the address to prove it receives (QUIC Retry); it is not counted.
    Retry,
    /// Refuse it (QUIC CONNECTION_REFUSED); it is not counted.
    Refuse(Refusal),
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// [`Limits::handshakes`] reached.
    Handshakes,
    /// [`Limits::handshakes_per_source`] reached.
    HandshakesPerSource,
    /// [`Limits::connections`] reached.
    Connections,
    /// [`Limits::connections_per_source`] reached.
    ConnectionsPerSource,
}

/// What a source is, for the per-source limits: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64). IPv4-mapped addresses count as IPv4. Relay placeholders are one
/// per peer and count alone.
pub fn source(addr: SocketAddr) -> IpAddr {
    match crate::state::path_table::unmap(addr).ip() {
        IpAddr::V4(ip) => IpAddr::V4(ip),
        IpAddr::V6(ip) => {
            let [a, b, c, d, ..] = ip.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
    }
}

/// Counts so far, for the flood benchmark and the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Attempts taken.
    pub accepted: u64,
    /// Attempts asked to validate their address.
    pub retried: u64,
    /// Attempts refused.
    pub refused: u64,
    /// Connections closed to make room for a newcomer from a smaller source.
    pub evicted: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    handshakes: usize,
    connections: usize,
}

/// The counts and the verdicts.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    total: Counts,
    sources: HashMap<IpAddr, Counts>,
    /// Evicted connections not closed yet, per source (already given back).
    evicted: HashMap<IpAddr, usize>,
    stats: Stats,
}

impl Admission {
    /// With these limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// Changes the limits; the counts so far are kept (a lower limit refuses new attempts until
    /// the counts fall under it).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A new attempt from `source` (see [`source`]); `validated` if its address has been shown
    /// to receive (a Retry token came back).
    pub fn on_incoming(&mut self, source: IpAddr, validated: bool) -> Verdict {
        let here = self.sources.get(&source).copied().unwrap_or_default();
        let mut evict = None;
        let refusal = if self.total.handshakes >= self.limits.handshakes {
            Some(Refusal::Handshakes)
        } else if here.handshakes >= self.limits.handshakes_per_source {
            Some(Refusal::HandshakesPerSource)
        } else if here.connections >= self.limits.connections_per_source {
            Some(Refusal::ConnectionsPerSource)
        } else if self.total.connections >= self.limits.connections {
            evict = self.heaviest().filter(|(_, count)| *count >= here.connections + 2).map(|(ip, _)| ip);
            evict.is_none().then_some(Refusal::Connections)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.stats.refused += 1;
            return Verdict::Refuse(refusal);
        }
        if !validated && self.total.handshakes >= self.limits.retry_above {
            self.stats.retried += 1;
            return Verdict::Retry;
        }
        self.stats.accepted += 1;
        self.total.handshakes += 1;
        self.total.connections += 1;
        let here = self.sources.entry(source).or_default();
        here.handshakes += 1;
        here.connections += 1;
        match evict {
            Some(heaviest) => {
                self.stats.evicted += 1;
                // Counted as gone now, so that a burst of newcomers evicts from whoever is then
                // the biggest holder; the connection's own close later finds nothing to count.
                self.forget_one(heaviest);
                Verdict::Evict(heaviest)
            }
            None => Verdict::Accept,
        }
    }

    /// The source with the most connections, and how many.
    fn heaviest(&self) -> Option<(IpAddr, usize)> {
        self.sources.iter().map(|(ip, c)| (*ip, c.connections)).max_by_key(|(_, count)| *count)
    }

    /// One connection of `source` is no longer counted (evicted): its close is not counted again.
    fn forget_one(&mut self, source: IpAddr) {
        self.give_back(source);
        *self.evicted.entry(source).or_default() += 1;
    }

    /// The handshake of an accepted attempt from `source` ended (completed or failed). A failed
    /// one should be [`closed`](Self::closed) too.
    pub fn handshake_done(&mut self, source: IpAddr) {
        self.total.handshakes = self.total.handshakes.saturating_sub(1);
        if let Some(here) = self.sources.get_mut(&source) {
            here.handshakes = here.handshakes.saturating_sub(1);
        }
    }

    /// An accepted connection from `source` is gone.
    pub fn closed(&mut self, source: IpAddr) {
        // An evicted connection was given back when it was chosen.
        if let Some(evicted) = self.evicted.get_mut(&source) {
            *evicted -= 1;
            if *evicted == 0 {
                self.evicted.remove(&source);
            }
            return;
        }
        self.give_back(source);
    }

    fn give_back(&mut self, source: IpAddr) {
        self.total.connections = self.total.connections.saturating_sub(1);
        if let Some(here) = self.sources.get_mut(&source) {
            here.connections = here.connections.saturating_sub(1);
            if here.connections == 0 {
                self.sources.remove(&source);
            }
        }
    }

    /// Handshakes in progress and connections alive, in total.
    pub fn counts(&self) -> (usize, usize) {
        (self.total.handshakes, self.total.connections)
    }

    /// Connections counted for `source`.
    pub fn connections_from(&self, source: IpAddr) -> usize {
        self.sources.get(&source).map_or(0, |c| c.connections)
    }

    /// Sources with a connection alive (the map never holds more than [`Limits::connections`]).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// The verdicts so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_source_is_capped_and_others_still_get_in() {
        let limits = Limits {
            handshakes: 100,
            handshakes_per_source: 4,
            retry_above: 100,
            connections: 1000,
            connections_per_source: 6,
        };
        let mut admission = Admission::new(limits);
        let flooder = ip(1);
        let verdicts: Vec<_> = (0..10_000).map(|_| admission.on_incoming(flooder, true)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Accept).count(), 4);
        assert_eq!(verdicts[4], Verdict::Refuse(Refusal::HandshakesPerSource));
        assert_eq!(admission.on_incoming(ip(2), false), Verdict::Accept, "another source gets in");
        // Completed handshakes free handshake slots, up to the connection cap of the source.
        for _ in 0..4 {
            admission.handshake_done(flooder);
        }
        assert_eq!(admission.on_incoming(flooder, true), Verdict::Accept);
        assert_eq!(admission.on_incoming(flooder, true), Verdict::Accept);
        assert_eq!(admission.on_incoming(flooder, true), Verdict::Refuse(Refusal::ConnectionsPerSource));
        admission.handshake_done(flooder);
        admission.closed(flooder);
        assert_eq!(admission.on_incoming(flooder, true), Verdict::Accept, "a closed connection frees its slot");
        assert_eq!(admission.stats().accepted, 8);
        assert_eq!(admission.stats().refused, 9_997);
    }

    #[test]
    fn many_sources_meet_the_totals_and_unvalidated_ones_are_retried_under_load() {
        let limits = Limits {
            handshakes: 50,
            handshakes_per_source: 4,
            retry_above: 10,
            connections: 80,
            connections_per_source: 8,
        };
        let mut admission = Admission::new(limits);
        // 10,000 attempts from 2,500 spoofed (never validated) sources: past 10 in handshake
        // they are all asked to validate, so they hold at most 10 slots.
        let verdicts: Vec<_> = (0..10_000u32)
            .map(|i| admission.on_incoming(IpAddr::from((0x0a00_0000 + i % 2500).to_be_bytes()), false))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Accept).count(), 10);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Retry).count(), 9_990);
        // Validated ones fill the handshake slots, then are refused.
        let validated: Vec<_> =
            (0..100u8).map(|i| admission.on_incoming(IpAddr::from([192, 168, 1, i]), true)).collect();
        assert_eq!(validated.iter().filter(|v| **v == Verdict::Accept).count(), 40);
        assert_eq!(validated[40], Verdict::Refuse(Refusal::Handshakes));
        assert_eq!(admission.counts(), (50, 50));
        // Handshakes done: the connection total binds next.
        for i in 0..40u8 {
            admission.handshake_done(IpAddr::from([192, 168, 1, i]));
        }
        let more: Vec<_> = (100..200u8).map(|i| admission.on_incoming(IpAddr::from([192, 168, 1, i]), true)).collect();
        assert_eq!(more.iter().filter(|v| **v == Verdict::Accept).count(), 30);
        assert!(
            more[30..]
                .iter()
                .all(|v| *v == Verdict::Refuse(Refusal::Connections) || *v == Verdict::Refuse(Refusal::Handshakes))
        );
        assert_eq!(admission.counts().1, 80);
        assert!(admission.sources() <= 80);
    }

    /// A flood from many addresses fills the node's connections; a newcomer from another
    /// address still gets in, by evicting the oldest connection of the biggest holder. One
    /// connection apart, nobody is evicted (the newcomer would only take the holder's place).
    #[test]
    fn a_full_node_makes_room_for_a_newcomer_at_the_biggest_holders_expense() {
        let limits = Limits {
            handshakes: 1000,
            handshakes_per_source: 1000,
            retry_above: 1000,
            connections: 100,
            connections_per_source: 40,
        };
        let mut admission = Admission::new(limits);
        // Flooders: 40 + 40 + 20 connections, established.
        for (last, count) in [(1, 40), (2, 40), (3, 20)] {
            for _ in 0..count {
                assert_eq!(admission.on_incoming(ip(last), true), Verdict::Accept);
                admission.handshake_done(ip(last));
            }
        }
        assert_eq!(admission.counts(), (0, 100));
        let verdict = admission.on_incoming(ip(9), true);
        assert!(matches!(verdict, Verdict::Evict(from) if from == ip(1) || from == ip(2)), "{verdict:?}");
        assert_eq!(admission.counts().1, 100, "one in, one out");
        // A burst of newcomers evicts from whoever holds the most at the time.
        let mut from = HashMap::new();
        for i in 10..60u8 {
            if let Verdict::Evict(source) = admission.on_incoming(ip(i), true) {
                *from.entry(source).or_insert(0) += 1;
            }
        }
        assert_eq!(from.values().sum::<i32>(), 50, "{from:?}");
        // The biggest holders lose first, until all three hold about as many: 100 - 51 = 49.
        let left: Vec<usize> = (1..=3).map(|i| admission.connections_from(ip(i))).collect();
        assert_eq!(left.iter().sum::<usize>(), 49, "{left:?}");
        assert!(left.iter().all(|n| (16..=17).contains(n)), "{left:?} after evictions {from:?}");
        // An evicted connection closing changes no count (it was given back when chosen).
        admission.closed(ip(1));
        assert_eq!(admission.counts().1, 100);
        assert_eq!(admission.stats().evicted, 51);
        // Equal holders: no eviction for the newcomer's sake.
        let mut even = Admission::new(Limits { connections: 2, ..limits });
        assert_eq!(even.on_incoming(ip(1), true), Verdict::Accept);
        assert_eq!(even.on_incoming(ip(2), true), Verdict::Accept);
        assert_eq!(even.on_incoming(ip(3), true), Verdict::Refuse(Refusal::Connections));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::2]:6000".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:5000".parse().unwrap();
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source(c));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:1".parse().unwrap();
        assert_eq!(source(mapped), ip(1));
    }

    #[test]
    fn counts_never_underflow_on_stray_calls() {
        let mut admission = Admission::default();
        admission.handshake_done(ip(9));
        admission.closed(ip(9));
        assert_eq!(admission.counts(), (0, 0));
        assert_eq!(admission.on_incoming(ip(9), false), Verdict::Accept);
    }
}
