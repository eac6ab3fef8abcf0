//! A NAT as a sans-IO state machine with RFC 4787 behaviour chosen piece by piece: mapping
//! (endpoint-independent, address-dependent, address-and-port-dependent), filtering (the same
//! three), port assignment (preserving, random, sequential), hairpinning, mapping timeouts,
//! unsolicited TCP (RFC 5382's drop then ICMP, a RST, or silence), a port range, and a UDP block for "corporate"
//! networks. Feed it packets with [`Nat::outbound`] (from the inside) and [`Nat::inbound`]
//! (from the outside) and the current time; it says what to do with each. The one thing it
//! sends on its own, an ICMP port unreachable for an unsolicited SYN 6 s late, comes out of
//! [`Nat::poll_transmit`] when [`Nat::poll_timeout`] says.
//!
//! With [`NatConfig::conntrack`] the NAT keeps Linux conntrack's state instead
//! ([`crate::conntrack`]): an entry per flow, unsolicited inbound packets included, and a new
//! flow's port moved when its reply tuple is taken. That is what Linux routers (OpenWrt and most
//! consumer firmware) do, and what breaks naive hole punching between two of them.
//!
//! ICMP errors (destination unreachable, time exceeded, parameter problem) about a mapped flow
//! are translated both ways, the quoted header included (RFC 5508), as the kernel's NAT does: a
//! router beyond the NAT can tell an inside host its packets are too big, so path-MTU discovery
//! works through it. Other ICMP (echo) is dropped. A fragmented UDP or TCP packet is translated
//! fragment by fragment: the first (which holds the ports) by its mapping, its transport
//! checksum updated for the rewritten words (it covers the whole datagram); the later ones by
//! the address the first was given, found by source, destination, protocol and IP id. (Linux
//! reassembles, translates and fragments again; what comes out is the same. A later fragment
//! that comes before its first is dropped, where Linux would wait for it.) TCP mappings use one idle timeout, not RFC 5382's separate transitory one.
//! Expired mappings are swept at most once a second, as packets pass.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::conntrack::{self, Conntrack, PortChoice};
use crate::packet::{ICMP, Packet, TCP, UDP, tcp_flags};

/// How often expired mappings are swept, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// When a NAT reuses a mapping (RFC 4787 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One mapping per internal endpoint, whatever the destination ("cone").
    EndpointIndependent,
    /// One mapping per internal endpoint and destination address.
    AddressDependent,
    /// One mapping per internal endpoint and destination address and port ("symmetric").
    AddressAndPortDependent,
}

/// Which inbound packets a mapping lets in (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Any remote endpoint.
    EndpointIndependent,
    /// Remote addresses the internal endpoint has sent to.
    AddressDependent,
    /// Remote address-and-port pairs the internal endpoint has sent to.
    AddressAndPortDependent,
}

/// How external ports are chosen for new mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortAssignment {
    /// The internal port if it is free and in range, else a random one.
    Preserve,
    /// A random free port in range.
    Random,
    /// The next free port after the last one given (what port prediction exploits).
    Sequential,
}

/// What a NAT does with a TCP packet that matches no mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsolicitedTcp {
    /// RFC 5382 REQ-4: drop an unsolicited SYN silently for [`UNSOLICITED_SYN_WAIT`] (it may
    /// be the first half of a simultaneous open); if the inside host sends its own SYN for that
    /// connection meanwhile, nothing more is said, otherwise an ICMP port unreachable goes back
    /// to the SYN's sender (which aborts its connect: ECONNREFUSED from a Linux sender). Other
    /// unsolicited segments are dropped. The default of every preset but [`NatPreset::Linux`].
    /// No kernel NAT does this (an nftables `reject` answers at once), so it has no kernel
    /// twin; the senders' reaction is checked against their real kernels in the tests.
    #[serde(rename = "rfc5382")]
    DropThenUnreachable,
    /// Drop it silently, for good: what a router whose firewall drops unsolicited traffic does
    /// (checked against the kernel: `KernelNatConfig` with this).
    Drop,
    /// Answer with a TCP RST at once, as a Linux router's own stack does for its public
    /// address when no firewall rule drops it (checked against the kernel): it kills a
    /// simultaneous open whose peer's SYN arrives first.
    Reset,
}

/// How long an unsolicited SYN waits for the inside host's own SYN before
/// [`UnsolicitedTcp::DropThenUnreachable`] answers it (RFC 5382 REQ-4: at least 6 s).
pub const UNSOLICITED_SYN_WAIT: Duration = Duration::from_secs(6);
/// Unsolicited SYNs waiting for their answer at most; beyond that the oldest is forgotten
/// (dropped silently), so a SYN flood costs bounded memory.
pub const MAX_UNSOLICITED_SYNS: usize = 256;

/// A NAT's behaviour and public address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The address mappings use on the outside.
    pub public_ip: Ipv4Addr,
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Port assignment.
    pub ports: PortAssignment,
    /// External ports the NAT may give out.
    pub port_range: RangeInclusive<u16>,
    /// May inside hosts reach each other through the public address?
    pub hairpinning: bool,
    /// Idle time after which a UDP mapping is forgotten.
    pub udp_timeout: Duration,
    /// Idle time after which a TCP mapping is forgotten.
    pub tcp_timeout: Duration,
    /// Do inbound packets keep a mapping alive too (RFC 4787 REQ-6 requires outbound only)?
    pub inbound_refresh: bool,
    /// Unsolicited TCP handling.
    pub unsolicited_tcp: UnsolicitedTcp,
    /// Drop all UDP (networks that only let TCP out).
    pub block_udp: bool,
    /// Keep Linux conntrack's per-flow state instead of RFC 4787 mappings (see the module
    /// docs): `mapping` and `filtering` are then what such a router shows from outside
    /// (endpoint-independent, address-and-port-dependent) and only describe it; `ports` is
    /// `Preserve` for `masquerade`, `Random` for `masquerade random`; no hairpinning.
    pub conntrack: bool,
}

/// Named NAT types, as commonly called (RFC 3489 terms) plus carrier and corporate setups, each
/// with the family of real routers it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatPreset {
    /// Endpoint-independent mapping and filtering. Routers with a "full cone" / "open NAT"
    /// setting (game-console modes of consumer routers, some ISP boxes), and UPnP-style static
    /// forwarding.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering. Rare in the wild; some
    /// embedded and older consumer NATs.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering, no state for
    /// unsolicited packets: RFC 4787-behaving NATs such as many ISP CPEs and BSD `pf` with
    /// `static-port`. (A Linux router filters the same way but keeps state: [`NatPreset::Linux`].)
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering, random ports, no hairpinning. BSD `pf`
    /// and pfSense/OPNsense by default (random source ports), many enterprise firewalls, and
    /// Linux `masquerade random`.
    Symmetric,
    /// Two layers: a port-restricted home router behind a carrier-grade NAT (endpoint-
    /// independent mapping, address-and-port-dependent filtering, random ports, RFC 6888):
    /// mobile networks and ISPs short of IPv4 addresses.
    Cgnat,
    /// UDP blocked, TCP through a symmetric NAT that silently drops unsolicited packets:
    /// corporate and guest networks that let only TCP out.
    Corporate,
    /// Linux conntrack with `masquerade` ([`NatConfig::conntrack`]): OpenWrt and most Linux-based
    /// consumer firmware. Outwardly port-restricted with port preservation, but unsolicited
    /// packets leave state behind that moves a later flow's port. Checked against the kernel.
    Linux,
}

impl NatPreset {
    /// Every preset.
    pub const ALL: [NatPreset; 7] = [
        NatPreset::FullCone,
        NatPreset::RestrictedCone,
        NatPreset::PortRestricted,
        NatPreset::Symmetric,
        NatPreset::Cgnat,
        NatPreset::Corporate,
        NatPreset::Linux,
    ];

    /// How many NATs the preset chains (2 for CGNAT).
    pub fn layers(self) -> usize {
        if self == NatPreset::Cgnat { 2 } else { 1 }
    }

    /// The configuration of each layer, innermost first; `public_ips` gives each layer's
    /// outside address (one per layer).
    pub fn configs(self, public_ips: &[Ipv4Addr]) -> Vec<NatConfig> {
        assert_eq!(public_ips.len(), self.layers(), "{self:?} needs {} public addresses", self.layers());
        let home = |ip, mapping, filtering| NatConfig {
            public_ip: ip,
            mapping,
            filtering,
            ports: PortAssignment::Preserve,
            port_range: 1024..=65535,
            hairpinning: true,
            udp_timeout: Duration::from_secs(120),
            tcp_timeout: Duration::from_secs(7440),
            inbound_refresh: false,
            unsolicited_tcp: UnsolicitedTcp::DropThenUnreachable,
            block_udp: false,
            conntrack: false,
        };
        use Filtering as F;
        use Mapping as M;
        match self {
            NatPreset::FullCone => vec![home(public_ips[0], M::EndpointIndependent, F::EndpointIndependent)],
            NatPreset::RestrictedCone => vec![home(public_ips[0], M::EndpointIndependent, F::AddressDependent)],
            NatPreset::PortRestricted => vec![home(public_ips[0], M::EndpointIndependent, F::AddressAndPortDependent)],
            NatPreset::Symmetric => vec![NatConfig {
                ports: PortAssignment::Random,
                hairpinning: false,
                ..home(public_ips[0], M::AddressAndPortDependent, F::AddressAndPortDependent)
            }],
            NatPreset::Cgnat => vec![
                home(public_ips[0], M::EndpointIndependent, F::AddressAndPortDependent),
                NatConfig {
                    ports: PortAssignment::Random,
                    ..home(public_ips[1], M::EndpointIndependent, F::AddressAndPortDependent)
                },
            ],
            NatPreset::Linux => vec![NatConfig {
                hairpinning: false,
                conntrack: true,
                // The router's own stack answers an unsolicited SYN (kernel-checked).
                unsolicited_tcp: UnsolicitedTcp::Reset,
                ..home(public_ips[0], M::EndpointIndependent, F::AddressAndPortDependent)
            }],
            NatPreset::Corporate => vec![NatConfig {
                ports: PortAssignment::Random,
                hairpinning: false,
                block_udp: true,
                ..home(public_ips[0], M::AddressAndPortDependent, F::AddressAndPortDependent)
            }],
        }
    }
}

/// How long a first fragment's translation waits for the rest (Linux's `ipfrag_time`).
pub const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Fragmented datagrams in flight remembered at most.
pub const MAX_FRAGMENTED: usize = 1024;

/// A fragmented datagram: direction (inbound?), source, destination, protocol, IP id.
type FragmentKey = (bool, Ipv4Addr, Ipv4Addr, u8, u16);

fn fragment_key(packet: &Packet, inbound: bool) -> FragmentKey {
    (inbound, packet.src(), packet.dst(), packet.protocol(), packet.ip_id())
}

/// Why a NAT dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not UDP or TCP, or a non-first fragment.
    Unsupported,
    /// UDP is blocked.
    UdpBlocked,
    /// Inbound with no mapping for its destination port.
    NoMapping,
    /// A mapping exists but its filter refuses the sender.
    Filtered,
    /// Sent to the public address from inside with hairpinning off.
    HairpinDisabled,
    /// No free external port.
    PortsExhausted,
}

/// What to do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatVerdict {
    /// Send it on, translated, to the other side.
    Forward(Packet),
    /// Hairpinned: send it back to the inside, translated both ways.
    Hairpin(Packet),
    /// Drop it and send this answer back to where it came from (a TCP RST).
    Reply(Packet),
    /// Drop it.
    Drop(DropReason),
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings that timed out.
    pub mappings_expired: u64,
    /// Packets translated outbound.
    pub outbound: u64,
    /// Packets translated inbound.
    pub inbound: u64,
    /// Packets hairpinned.
    pub hairpinned: u64,
    /// Packets dropped, by reason.
    pub dropped: HashMap<DropReason, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MappingKey {
    protocol: u8,
    internal: SocketAddrV4,
    remote_ip: Option<Ipv4Addr>,
    remote_port: Option<u16>,
}

#[derive(Debug)]
struct MappingState {
    external_port: u16,
    last_used: Instant,
    /// Remote endpoints the internal endpoint sent to through this mapping.
    contacted: Vec<SocketAddrV4>,
}

/// A NAT.
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    rng: ChaCha8Rng,
    mappings: HashMap<MappingKey, MappingState>,
    by_external: HashMap<(u8, u16), MappingKey>,
    next_port: u16,
    stats: NatStats,
    /// Linux conntrack's table, for a [`NatConfig::conntrack`] NAT.
    conntrack: Option<Conntrack>,
    last_sweep: Option<Instant>,
    /// Where each fragmented datagram's first fragment went (see the module docs).
    fragments: HashMap<FragmentKey, (Ipv4Addr, Instant)>,
    /// Unsolicited SYNs waiting for [`UnsolicitedTcp::DropThenUnreachable`]'s answer, oldest
    /// first.
    unsolicited_syns: VecDeque<UnsolicitedSyn>,
}

/// An unsolicited SYN as it arrived, and when its ICMP is due.
#[derive(Debug)]
struct UnsolicitedSyn {
    due: Instant,
    syn: Packet,
}

impl Nat {
    /// A NAT with `config`, its random port choices seeded by `seed`.
    pub fn new(config: NatConfig, seed: u64) -> Self {
        let next_port = *config.port_range.start();
        let conntrack = config.conntrack.then(|| {
            let choice = if config.ports == PortAssignment::Preserve { PortChoice::Keep } else { PortChoice::Random };
            Conntrack::new(
                config.port_range.clone(),
                choice,
                config.udp_timeout.min(conntrack::UDP_UNREPLIED),
                config.udp_timeout,
                config.tcp_timeout,
            )
        });
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            mappings: HashMap::new(),
            by_external: HashMap::new(),
            next_port,
            stats: NatStats::default(),
            conntrack,
            last_sweep: None,
            fragments: HashMap::new(),
            unsolicited_syns: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> &NatStats {
        &self.stats
    }

    /// Live mappings (for a conntrack NAT: its entries, unsolicited ones included).
    pub fn mapping_count(&self) -> usize {
        match &self.conntrack {
            Some(table) => table.len(),
            None => self.mappings.len(),
        }
    }

    /// When [`Nat::poll_transmit`] next has something to send, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unsolicited_syns.front().map(|pending| pending.due)
    }

    /// The next packet the NAT sends on its own at `now`: the ICMP port unreachable for an
    /// unsolicited SYN whose wait is over (sent to the outside, toward the SYN's sender).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        if self.unsolicited_syns.front()?.due > now {
            return None;
        }
        let pending = self.unsolicited_syns.pop_front()?;
        Some(pending.syn.port_unreachable(self.config.public_ip))
    }

    /// An unsolicited TCP segment from outside, dropped for `reason`, answered as configured.
    fn unsolicited_tcp(&mut self, packet: Packet, reason: DropReason, now: Instant) -> NatVerdict {
        match self.config.unsolicited_tcp {
            UnsolicitedTcp::Reset => {
                if let Some(reset) = reset_for(&packet) {
                    if let Some(table) = self.conntrack.as_mut() {
                        let port = packet.dst_port().expect("TCP has ports");
                        table.reset(TCP, packet.src_endpoint(), port, now);
                    }
                    *self.stats.dropped.entry(reason).or_default() += 1;
                    return NatVerdict::Reply(reset);
                }
            }
            UnsolicitedTcp::DropThenUnreachable
                if packet
                    .tcp_flags()
                    .is_some_and(|f| f & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN) =>
            {
                // A retransmitted SYN waits with the first one.
                let same = |p: &UnsolicitedSyn| {
                    p.syn.src_endpoint() == packet.src_endpoint() && p.syn.dst_port() == packet.dst_port()
                };
                if !self.unsolicited_syns.iter().any(same) {
                    if self.unsolicited_syns.len() >= MAX_UNSOLICITED_SYNS {
                        self.unsolicited_syns.pop_front();
                    }
                    self.unsolicited_syns.push_back(UnsolicitedSyn { due: now + UNSOLICITED_SYN_WAIT, syn: packet });
                }
            }
            UnsolicitedTcp::DropThenUnreachable | UnsolicitedTcp::Drop => {}
        }
        self.drop(reason)
    }

    /// The inside host sent `syn` (translated): an unsolicited SYN of the same connection is
    /// the other half of a simultaneous open, and is dropped silently (RFC 5382 REQ-4).
    fn outbound_syn(&mut self, syn: &Packet) {
        if self.unsolicited_syns.is_empty()
            || syn.tcp_flags().is_none_or(|f| f & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN)
        {
            return;
        }
        let (from, to) = (syn.src_endpoint(), syn.dst_endpoint());
        self.unsolicited_syns.retain(|p| !(p.syn.src_endpoint() == to && p.syn.dst_port() == Some(from.port())));
    }

    /// Sweeps expired mappings at most once a second.
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_INTERVAL) {
            self.last_sweep = Some(now);
            self.expire(now);
        }
    }

    fn drop(&mut self, reason: DropReason) -> NatVerdict {
        *self.stats.dropped.entry(reason).or_default() += 1;
        NatVerdict::Drop(reason)
    }

    /// A later fragment: translated as its first fragment was (`inbound`: its destination, else
    /// its source), or dropped if that one was not seen.
    fn later_fragment(&mut self, mut packet: Packet, inbound: bool, now: Instant) -> NatVerdict {
        let key = fragment_key(&packet, inbound);
        match self.fragments.get(&key) {
            Some((ip, at)) if now.saturating_duration_since(*at) < FRAGMENT_TIMEOUT => {
                if inbound {
                    packet.set_dst_ip(*ip);
                    self.stats.inbound += 1;
                } else {
                    packet.set_src_ip(*ip);
                    self.stats.outbound += 1;
                }
                NatVerdict::Forward(packet)
            }
            _ => self.drop(DropReason::Unsupported),
        }
    }

    /// Remembers where a first fragment went, for the rest of its datagram.
    fn first_fragment(&mut self, key: FragmentKey, verdict: &NatVerdict, inbound: bool, now: Instant) {
        let NatVerdict::Forward(translated) = verdict else { return };
        if self.fragments.len() >= MAX_FRAGMENTED {
            self.fragments.retain(|_, (_, at)| now.saturating_duration_since(*at) < FRAGMENT_TIMEOUT);
            if self.fragments.len() >= MAX_FRAGMENTED {
                return;
            }
        }
        let ip = if inbound { translated.dst() } else { translated.src() };
        self.fragments.insert(key, (ip, now));
    }

    /// The verdict for a packet no NAT here translates: not UDP or TCP, a later fragment, or
    /// UDP where it is blocked.
    fn refuse(&mut self, packet: &Packet) -> Option<NatVerdict> {
        let protocol = packet.protocol();
        if !matches!(protocol, UDP | TCP) || packet.is_later_fragment() {
            return Some(self.drop(DropReason::Unsupported));
        }
        if protocol == UDP && self.config.block_udp {
            return Some(self.drop(DropReason::UdpBlocked));
        }
        None
    }

    fn timeout(&self, protocol: u8) -> Duration {
        if protocol == TCP { self.config.tcp_timeout } else { self.config.udp_timeout }
    }

    /// Forgets mappings idle for longer than their timeout (done as packets pass, at most once
    /// a second; call it to sweep at a given time).
    pub fn expire(&mut self, now: Instant) {
        if let Some(table) = self.conntrack.as_mut() {
            self.stats.mappings_expired += table.expire(now) as u64;
            return;
        }
        let (udp, tcp) = (self.config.udp_timeout, self.config.tcp_timeout);
        let mut expired = Vec::new();
        self.mappings.retain(|key, state| {
            let timeout = if key.protocol == TCP { tcp } else { udp };
            let alive = now.saturating_duration_since(state.last_used) <= timeout;
            if !alive {
                expired.push((key.protocol, state.external_port));
            }
            alive
        });
        self.stats.mappings_expired += expired.len() as u64;
        for external in expired {
            self.by_external.remove(&external);
        }
    }

    fn key(&self, protocol: u8, internal: SocketAddrV4, remote: SocketAddrV4) -> MappingKey {
        let (remote_ip, remote_port) = match self.config.mapping {
            Mapping::EndpointIndependent => (None, None),
            Mapping::AddressDependent => (Some(*remote.ip()), None),
            Mapping::AddressAndPortDependent => (Some(*remote.ip()), Some(remote.port())),
        };
        MappingKey { protocol, internal, remote_ip, remote_port }
    }

    fn free(&self, protocol: u8, port: u16) -> bool {
        self.config.port_range.contains(&port) && !self.by_external.contains_key(&(protocol, port))
    }

    fn allocate_port(&mut self, protocol: u8, internal_port: u16) -> Option<u16> {
        let (lo, hi) = (*self.config.port_range.start(), *self.config.port_range.end());
        let size = u32::from(hi - lo) + 1;
        match self.config.ports {
            PortAssignment::Preserve if self.free(protocol, internal_port) => return Some(internal_port),
            PortAssignment::Sequential => {
                for _ in 0..size {
                    let port = self.next_port;
                    self.next_port = if port >= hi { lo } else { port + 1 };
                    if self.free(protocol, port) {
                        return Some(port);
                    }
                }
                return None;
            }
            _ => {}
        }
        // Random: a few tries, then a scan from a random start so a crowded range still works.
        for _ in 0..16 {
            let port = self.rng.random_range(lo..=hi);
            if self.free(protocol, port) {
                return Some(port);
            }
        }
        let start = self.rng.random_range(0..size);
        (0..size).map(|i| lo + ((start + i) % size) as u16).find(|port| self.free(protocol, *port))
    }

    /// The live mapping for an external port, forgetting it if it timed out.
    fn live_mapping(&mut self, protocol: u8, external_port: u16, now: Instant) -> Option<MappingKey> {
        let key = *self.by_external.get(&(protocol, external_port))?;
        let timeout = self.timeout(protocol);
        let state = self.mappings.get(&key)?;
        if now.saturating_duration_since(state.last_used) > timeout {
            self.mappings.remove(&key);
            self.by_external.remove(&(protocol, external_port));
            self.stats.mappings_expired += 1;
            return None;
        }
        Some(key)
    }

    fn admitted(&self, key: &MappingKey, from: SocketAddrV4) -> bool {
        let Some(state) = self.mappings.get(key) else { return false };
        match self.config.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => state.contacted.iter().any(|c| c.ip() == from.ip()),
            Filtering::AddressAndPortDependent => state.contacted.contains(&from),
        }
    }

    /// A packet from the inside, at `now`.
    pub fn outbound(&mut self, packet: Packet, now: Instant) -> NatVerdict {
        self.sweep(now);
        if packet.is_later_fragment() && matches!(packet.protocol(), UDP | TCP) && !self.config.block_udp {
            return self.later_fragment(packet, false, now);
        }
        let first = packet.is_first_fragment().then(|| fragment_key(&packet, false));
        let verdict = self.outbound_whole(packet, now);
        if let Some(key) = first {
            self.first_fragment(key, &verdict, false, now);
        }
        if let NatVerdict::Forward(translated) = &verdict
            && translated.protocol() == TCP
        {
            self.outbound_syn(translated);
        }
        verdict
    }

    fn outbound_whole(&mut self, mut packet: Packet, now: Instant) -> NatVerdict {
        if let Some(error) = IcmpError::of(&packet) {
            return self.icmp_outbound(&packet, error, now);
        }
        let protocol = packet.protocol();
        if let Some(refused) = self.refuse(&packet) {
            return refused;
        }
        if self.conntrack.is_some() {
            return self.conntrack_outbound(packet, now);
        }
        let internal = packet.src_endpoint();
        let remote = packet.dst_endpoint();
        let key = self.key(protocol, internal, remote);
        // An existing mapping that timed out is forgotten first.
        if let Some(port) = self.mappings.get(&key).map(|m| m.external_port) {
            self.live_mapping(protocol, port, now);
        }
        if !self.mappings.contains_key(&key) {
            let Some(port) = self.allocate_port(protocol, internal.port()) else {
                return self.drop(DropReason::PortsExhausted);
            };
            self.mappings.insert(key, MappingState { external_port: port, last_used: now, contacted: Vec::new() });
            self.by_external.insert((protocol, port), key);
            self.stats.mappings_created += 1;
        }
        let state = self.mappings.get_mut(&key).expect("inserted above");
        state.last_used = now;
        if !state.contacted.contains(&remote) {
            state.contacted.push(remote);
        }
        let external = SocketAddrV4::new(self.config.public_ip, state.external_port);
        packet.set_src(external);

        if *remote.ip() == self.config.public_ip {
            if !self.config.hairpinning {
                return self.drop(DropReason::HairpinDisabled);
            }
            // Hairpinning: deliver to the mapping behind the destination port, filtered as if
            // the packet came from outside, with the sender's external address as its source.
            return match self.translate_inbound(packet, now) {
                NatVerdict::Forward(packet) => {
                    self.stats.hairpinned += 1;
                    NatVerdict::Hairpin(packet)
                }
                other => other,
            };
        }
        self.stats.outbound += 1;
        NatVerdict::Forward(packet)
    }

    /// A packet from the outside, at `now`.
    pub fn inbound(&mut self, packet: Packet, now: Instant) -> NatVerdict {
        self.sweep(now);
        if let Some(error) = IcmpError::of(&packet) {
            return self.icmp_inbound(&packet, error, now);
        }
        if packet.is_later_fragment() && matches!(packet.protocol(), UDP | TCP) && !self.config.block_udp {
            return self.later_fragment(packet, true, now);
        }
        let first = packet.is_first_fragment().then(|| fragment_key(&packet, true));
        let verdict = if self.conntrack.is_some() {
            self.conntrack_inbound(packet, now)
        } else {
            self.translate_inbound(packet, now)
        };
        if matches!(verdict, NatVerdict::Forward(_)) {
            self.stats.inbound += 1;
        }
        if let Some(key) = first {
            self.first_fragment(key, &verdict, true, now);
        }
        verdict
    }

    /// An ICMP error from outside about a packet this NAT sent out: to the inside host whose
    /// flow it was, the quoted header translated back (RFC 5508).
    fn icmp_inbound(&mut self, packet: &Packet, error: IcmpError, now: Instant) -> NatVerdict {
        let quoted = error.quoted();
        if *quoted.src.ip() != self.config.public_ip {
            return self.drop(DropReason::NoMapping);
        }
        let internal = match &self.conntrack {
            Some(table) => table.internal_of(quoted.protocol, quoted.dst, quoted.src.port(), now),
            None => self
                .live_mapping(quoted.protocol, quoted.src.port(), now)
                .filter(|key| self.admitted(key, quoted.dst))
                .map(|key| key.internal),
        };
        let Some(internal) = internal else { return self.drop(DropReason::NoMapping) };
        self.stats.inbound += 1;
        NatVerdict::Forward(error.rewritten(packet.src(), *internal.ip(), Some(internal), None))
    }

    /// An ICMP error from an inside host about a packet that came in through this NAT: out to
    /// the sender, from the public address, the quoted header translated too.
    fn icmp_outbound(&mut self, packet: &Packet, error: IcmpError, now: Instant) -> NatVerdict {
        let quoted = error.quoted();
        let (internal, remote) = (quoted.dst, quoted.src);
        let port = match &self.conntrack {
            Some(table) => table.port_of(quoted.protocol, internal, remote, now),
            None => {
                let key = self.key(quoted.protocol, internal, remote);
                self.mappings.get(&key).map(|m| m.external_port)
            }
        };
        let Some(port) = port else { return self.drop(DropReason::NoMapping) };
        let public = SocketAddrV4::new(self.config.public_ip, port);
        self.stats.outbound += 1;
        NatVerdict::Forward(error.rewritten(self.config.public_ip, packet.dst(), None, Some(public)))
    }

    fn conntrack_outbound(&mut self, mut packet: Packet, now: Instant) -> NatVerdict {
        let (protocol, internal, remote) = (packet.protocol(), packet.src_endpoint(), packet.dst_endpoint());
        if *remote.ip() == self.config.public_ip {
            // Plain masquerade has no rule to send it back in: the router takes it.
            return self.drop(DropReason::HairpinDisabled);
        }
        let random = self.rng.random();
        let table = self.conntrack.as_mut().expect("a conntrack NAT");
        let created = table.len();
        let Some(port) = table.outbound(protocol, internal, remote, now, random) else {
            return self.drop(DropReason::PortsExhausted);
        };
        if table.len() > created {
            self.stats.mappings_created += 1;
        }
        packet.set_src(SocketAddrV4::new(self.config.public_ip, port));
        self.stats.outbound += 1;
        NatVerdict::Forward(packet)
    }

    fn conntrack_inbound(&mut self, mut packet: Packet, now: Instant) -> NatVerdict {
        let protocol = packet.protocol();
        if let Some(refused) = self.refuse(&packet) {
            return refused;
        }
        let port = packet.dst_port().expect("UDP and TCP have ports");
        let table = self.conntrack.as_mut().expect("a conntrack NAT");
        match table.inbound(protocol, packet.src_endpoint(), port, now) {
            conntrack::Inbound::Forward(internal) => {
                packet.set_dst(internal);
                NatVerdict::Forward(packet)
            }
            // The router's own stack answers: a RST for TCP, for UDP an ICMP port unreachable
            // (not modelled: dropped).
            conntrack::Inbound::Local if protocol == TCP => self.unsolicited_tcp(packet, DropReason::NoMapping, now),
            conntrack::Inbound::Local => self.drop(DropReason::NoMapping),
        }
    }

    fn translate_inbound(&mut self, mut packet: Packet, now: Instant) -> NatVerdict {
        let protocol = packet.protocol();
        if let Some(refused) = self.refuse(&packet) {
            return refused;
        }
        let from = packet.src_endpoint();
        let port = packet.dst_port().expect("UDP and TCP have ports");
        let key = self.live_mapping(protocol, port, now);
        let admitted = key.filter(|key| self.admitted(key, from));
        let Some(key) = admitted else {
            let reason = if key.is_some() { DropReason::Filtered } else { DropReason::NoMapping };
            if protocol == TCP {
                return self.unsolicited_tcp(packet, reason, now);
            }
            return self.drop(reason);
        };
        let state = self.mappings.get_mut(&key).expect("live mapping");
        if self.config.inbound_refresh {
            state.last_used = now;
        }
        packet.set_dst(key.internal);
        NatVerdict::Forward(packet)
    }
}

/// An ICMP error message (destination unreachable, time exceeded, parameter problem) quoting a
/// UDP or TCP packet's IPv4 header and first 8 bytes.
#[derive(Debug, Clone)]
struct IcmpError {
    kind: u8,
    code: u8,
    rest: [u8; 4],
    /// The quoted packet: its IPv4 header, then at least 8 bytes.
    quote: Vec<u8>,
    header_len: usize,
}

/// The quoted packet's protocol and endpoints.
struct Quoted {
    protocol: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
}

impl IcmpError {
    fn of(packet: &Packet) -> Option<Self> {
        if packet.protocol() != ICMP || packet.is_later_fragment() {
            return None;
        }
        let message = packet.payload();
        if message.len() < 8 + 20 + 8 || !matches!(message[0], 3 | 11 | 12) {
            return None;
        }
        let quote = message[8..].to_vec();
        let header_len = usize::from(quote[0] & 0x0f) * 4;
        if quote[0] >> 4 != 4 || header_len < 20 || quote.len() < header_len + 8 || !matches!(quote[9], UDP | TCP) {
            return None;
        }
        let rest = message[4..8].try_into().expect("4 bytes");
        Some(Self { kind: message[0], code: message[1], rest, quote, header_len })
    }

    fn quoted(&self) -> Quoted {
        let (q, h) = (&self.quote, self.header_len);
        let ip = |at: usize| Ipv4Addr::new(q[at], q[at + 1], q[at + 2], q[at + 3]);
        let port = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
        Quoted { protocol: q[9], src: SocketAddrV4::new(ip(12), port(h)), dst: SocketAddrV4::new(ip(16), port(h + 2)) }
    }

    /// The message from `from` to `to`, its quoted source or destination replaced.
    fn rewritten(
        mut self,
        from: Ipv4Addr,
        to: Ipv4Addr,
        quoted_src: Option<SocketAddrV4>,
        quoted_dst: Option<SocketAddrV4>,
    ) -> Packet {
        let h = self.header_len;
        if let Some(src) = quoted_src {
            self.quote[12..16].copy_from_slice(&src.ip().octets());
            self.quote[h..h + 2].copy_from_slice(&src.port().to_be_bytes());
        }
        if let Some(dst) = quoted_dst {
            self.quote[16..20].copy_from_slice(&dst.ip().octets());
            self.quote[h + 2..h + 4].copy_from_slice(&dst.port().to_be_bytes());
        }
        // The quoted IP header's checksum is fixed; the quoted transport checksum cannot be (the
        // quote is cut short), and no receiver checks it.
        self.quote[10..12].copy_from_slice(&[0, 0]);
        let sum = crate::packet::checksum(&self.quote[..h]);
        self.quote[10..12].copy_from_slice(&sum.to_be_bytes());
        Packet::icmp(from, to, self.kind, self.code, self.rest, &self.quote)
    }
}

/// The RST a host answers an unexpected TCP segment with (RFC 9293 section 3.10.7.1); none
/// for a segment that is itself a RST.
pub fn reset_for(packet: &Packet) -> Option<Packet> {
    let flags = packet.tcp_flags()?;
    if flags & tcp_flags::RST != 0 {
        return None;
    }
    let segment = packet.payload();
    let seq = u32::from_be_bytes(segment[4..8].try_into().expect("TCP header checked at parse"));
    let ack = u32::from_be_bytes(segment[8..12].try_into().expect("TCP header checked at parse"));
    let data_len = segment.len() - usize::from(segment[12] >> 4) * 4;
    let (from, to) = (packet.dst_endpoint(), packet.src_endpoint());
    if flags & tcp_flags::ACK != 0 {
        Some(Packet::tcp(from, to, tcp_flags::RST, ack, 0, &[]))
    } else {
        let consumed =
            data_len as u32 + u32::from(flags & tcp_flags::SYN != 0) + u32::from(flags & tcp_flags::FIN != 0);
        Some(Packet::tcp(from, to, tcp_flags::RST | tcp_flags::ACK, 0, seq.wrapping_add(consumed), &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn config(mapping: Mapping, filtering: Filtering) -> NatConfig {
        NatConfig {
            mapping,
            filtering,
            ports: PortAssignment::Sequential,
            ..NatPreset::FullCone.configs(&[PUBLIC]).remove(0)
        }
    }

    fn udp(from: &str, to: &str) -> Packet {
        Packet::udp(ep(from), ep(to), b"x")
    }

    fn forwarded(verdict: NatVerdict) -> Packet {
        match verdict {
            NatVerdict::Forward(packet) => packet,
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    /// The external endpoints one internal endpoint gets towards S1:3478, S1:3479 and S2:3478.
    fn external_endpoints(nat: &mut Nat, now: Instant) -> [SocketAddrV4; 3] {
        ["198.51.100.1:3478", "198.51.100.1:3479", "198.51.100.2:3478"]
            .map(|to| forwarded(nat.outbound(udp("10.0.0.2:5000", to), now)).src_endpoint())
    }

    #[test]
    fn mapping_behaviour_is_as_configured() {
        let now = Instant::now();
        for (mapping, same_port_other_port, same_port_other_addr) in [
            (Mapping::EndpointIndependent, true, true),
            (Mapping::AddressDependent, true, false),
            (Mapping::AddressAndPortDependent, false, false),
        ] {
            let mut nat = Nat::new(config(mapping, Filtering::EndpointIndependent), 1);
            let [a, b, c] = external_endpoints(&mut nat, now);
            assert_eq!(*a.ip(), PUBLIC);
            assert_eq!(a == b, same_port_other_port, "{mapping:?}");
            assert_eq!(a == c, same_port_other_addr, "{mapping:?}");
        }
    }

    #[test]
    fn filtering_behaviour_is_as_configured() {
        let now = Instant::now();
        for (filtering, other_port_admitted, other_addr_admitted) in [
            (Filtering::EndpointIndependent, true, true),
            (Filtering::AddressDependent, true, false),
            (Filtering::AddressAndPortDependent, false, false),
        ] {
            let mut nat = Nat::new(config(Mapping::EndpointIndependent, filtering), 1);
            let external = forwarded(nat.outbound(udp("10.0.0.2:5000", "198.51.100.1:3478"), now)).src_endpoint();
            let to = external.to_string();
            let reply = forwarded(nat.inbound(udp("198.51.100.1:3478", &to), now));
            assert_eq!(reply.dst_endpoint(), ep("10.0.0.2:5000"));
            assert!(reply.checksums_ok());
            let other_port = nat.inbound(udp("198.51.100.1:9999", &to), now);
            assert_eq!(matches!(other_port, NatVerdict::Forward(_)), other_port_admitted, "{filtering:?}");
            let other_addr = nat.inbound(udp("198.51.100.2:3478", &to), now);
            assert_eq!(matches!(other_addr, NatVerdict::Forward(_)), other_addr_admitted, "{filtering:?}");
            if !other_addr_admitted {
                assert_eq!(other_addr, NatVerdict::Drop(DropReason::Filtered));
            }
        }
    }

    #[test]
    fn unsolicited_inbound_has_no_mapping() {
        let mut nat = Nat::new(config(Mapping::EndpointIndependent, Filtering::EndpointIndependent), 1);
        let verdict = nat.inbound(udp("198.51.100.1:3478", "203.0.113.1:40000"), Instant::now());
        assert_eq!(verdict, NatVerdict::Drop(DropReason::NoMapping));
        assert_eq!(nat.stats().dropped[&DropReason::NoMapping], 1);
    }

    #[test]
    fn mappings_expire_after_their_timeout_and_outbound_traffic_refreshes_them() {
        let mut nat = Nat::new(config(Mapping::EndpointIndependent, Filtering::EndpointIndependent), 1);
        let start = Instant::now();
        let timeout = nat.config().udp_timeout;
        let external = forwarded(nat.outbound(udp("10.0.0.2:5000", "198.51.100.1:3478"), start)).src_endpoint();
        let to = external.to_string();
        // Refreshed by outbound traffic just before the timeout...
        forwarded(nat.outbound(udp("10.0.0.2:5000", "198.51.100.1:3478"), start + timeout));
        forwarded(nat.inbound(udp("198.51.100.1:3478", &to), start + timeout * 2));
        // ...but inbound traffic does not refresh it (RFC 4787 REQ-6 default here).
        let late = nat.inbound(udp("198.51.100.1:3478", &to), start + timeout * 2 + Duration::from_millis(1));
        assert_eq!(late, NatVerdict::Drop(DropReason::NoMapping));
        assert_eq!(nat.stats().mappings_expired, 1);
        assert_eq!(nat.mapping_count(), 0);
        // With inbound refresh on, it does.
        let mut nat = Nat::new(
            NatConfig { inbound_refresh: true, ..config(Mapping::EndpointIndependent, Filtering::EndpointIndependent) },
            1,
        );
        let to = forwarded(nat.outbound(udp("10.0.0.2:5000", "198.51.100.1:3478"), start)).src_endpoint().to_string();
        forwarded(nat.inbound(udp("198.51.100.1:3478", &to), start + timeout));
        forwarded(nat.inbound(udp("198.51.100.1:3478", &to), start + timeout * 2));
    }

    #[test]
    fn ports_are_preserved_random_or_sequential_and_stay_in_range() {
        let now = Instant::now();
        let preset = |ports, range| NatConfig {
            ports,
            port_range: range,
            ..config(Mapping::AddressAndPortDependent, Filtering::EndpointIndependent)
        };
        let mut nat = Nat::new(preset(PortAssignment::Preserve, 1024..=65535), 1);
        assert_eq!(external_endpoints(&mut nat, now)[0].port(), 5000);
        // A second host with the same port cannot keep it.
        let other = forwarded(nat.outbound(udp("10.0.0.3:5000", "198.51.100.1:3478"), now)).src_endpoint();
        assert_ne!(other.port(), 5000);

        let mut nat = Nat::new(preset(PortAssignment::Sequential, 20000..=20009), 1);
        let ports: Vec<u16> = external_endpoints(&mut nat, now).iter().map(|e| e.port()).collect();
        assert_eq!(ports, [20000, 20001, 20002]);

        let mut nat = Nat::new(preset(PortAssignment::Random, 30000..=30003), 7);
        let ports: Vec<u16> = (0..4)
            .map(|i| {
                forwarded(nat.outbound(udp("10.0.0.2:5000", &format!("198.51.100.1:{}", 1000 + i)), now))
                    .src_port()
                    .unwrap()
            })
            .collect();
        let mut sorted = ports.clone();
        sorted.sort();
        assert_eq!(sorted, [30000, 30001, 30002, 30003], "all four ports, each once");
        assert_eq!(
            nat.outbound(udp("10.0.0.2:5000", "198.51.100.1:2000"), now),
            NatVerdict::Drop(DropReason::PortsExhausted)
        );
        // The same seed chooses the same ports.
        let mut again = Nat::new(preset(PortAssignment::Random, 30000..=30003), 7);
        let ports_again: Vec<u16> = (0..4)
            .map(|i| {
                forwarded(again.outbound(udp("10.0.0.2:5000", &format!("198.51.100.1:{}", 1000 + i)), now))
                    .src_port()
                    .unwrap()
            })
            .collect();
        assert_eq!(ports, ports_again);
    }

    #[test]
    fn hairpinning_on_and_off() {
        let now = Instant::now();
        for hairpinning in [true, false] {
            let mut nat = Nat::new(
                NatConfig { hairpinning, ..config(Mapping::EndpointIndependent, Filtering::EndpointIndependent) },
                1,
            );
            let b_external = forwarded(nat.outbound(udp("10.0.0.3:6000", "198.51.100.1:3478"), now)).src_endpoint();
            let verdict = nat.outbound(udp("10.0.0.2:5000", &b_external.to_string()), now);
            if hairpinning {
                let NatVerdict::Hairpin(packet) = verdict else { panic!("expected a hairpin, got {verdict:?}") };
                assert_eq!(packet.dst_endpoint(), ep("10.0.0.3:6000"));
                assert_eq!(*packet.src_endpoint().ip(), PUBLIC, "the source is the sender's mapping");
                assert!(packet.checksums_ok());
            } else {
                assert_eq!(verdict, NatVerdict::Drop(DropReason::HairpinDisabled));
            }
        }
    }

    #[test]
    fn an_unsolicited_syn_is_answered_with_port_unreachable_after_6_s() {
        let start = Instant::now();
        let syn = Packet::tcp(ep("198.51.100.1:443"), ep("203.0.113.1:40000"), tcp_flags::SYN, 1000, 0, &[]);
        let mut nat = Nat::new(NatPreset::PortRestricted.configs(&[PUBLIC]).remove(0), 1);
        assert_eq!(nat.inbound(syn.clone(), start), NatVerdict::Drop(DropReason::NoMapping));
        // A retransmission waits with the first SYN; a stray ACK is only dropped.
        assert_eq!(nat.inbound(syn.clone(), start + Duration::from_secs(1)), NatVerdict::Drop(DropReason::NoMapping));
        let ack = Packet::tcp(ep("198.51.100.2:443"), ep("203.0.113.1:40001"), tcp_flags::ACK, 5, 5, &[]);
        assert_eq!(nat.inbound(ack, start), NatVerdict::Drop(DropReason::NoMapping));
        assert_eq!(nat.poll_timeout(), Some(start + UNSOLICITED_SYN_WAIT));
        assert_eq!(nat.poll_transmit(start + Duration::from_millis(5999)), None, "silent for 6 s");
        let icmp = nat.poll_transmit(start + UNSOLICITED_SYN_WAIT).expect("the ICMP is due");
        assert_eq!((icmp.src(), icmp.dst()), (PUBLIC, Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(icmp.icmp_type(), Some(3));
        assert_eq!(icmp.payload()[1], 3, "port unreachable");
        assert_eq!(&icmp.payload()[8..36], &syn.as_bytes()[..28], "quotes the SYN as it arrived");
        assert!(icmp.checksums_ok());
        assert_eq!(nat.poll_transmit(start + Duration::from_secs(60)), None, "one answer per connection");
        assert_eq!(nat.poll_timeout(), None);
    }

    #[test]
    fn the_inside_hosts_own_syn_makes_a_simultaneous_open_and_no_icmp() {
        let start = Instant::now();
        let mut nat = Nat::new(NatPreset::PortRestricted.configs(&[PUBLIC]).remove(0), 1);
        let peer = ep("198.51.100.1:5000");
        let early = Packet::tcp(peer, ep("203.0.113.1:40000"), tcp_flags::SYN, 1000, 0, &[]);
        assert_eq!(nat.inbound(early.clone(), start), NatVerdict::Drop(DropReason::NoMapping));
        // The inside host's SYN leaves from the port the peer aimed at (the preset keeps ports).
        let own = Packet::tcp(ep("10.0.0.2:40000"), peer, tcp_flags::SYN, 7, 0, &[]);
        let out = forwarded(nat.outbound(own, start + Duration::from_secs(2)));
        assert_eq!(out.src_endpoint(), ep("203.0.113.1:40000"));
        assert_eq!(nat.poll_timeout(), None, "the pending answer is withdrawn");
        // The peer's retransmitted SYN now gets in: the simultaneous open completes.
        let again = forwarded(nat.inbound(early, start + Duration::from_secs(3)));
        assert_eq!(again.dst_endpoint(), ep("10.0.0.2:40000"));
        assert_eq!(nat.poll_transmit(start + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_syn_flood_keeps_a_bounded_queue_of_answers() {
        let start = Instant::now();
        let mut nat = Nat::new(NatPreset::FullCone.configs(&[PUBLIC]).remove(0), 1);
        for i in 0..10_000u32 {
            let from = SocketAddrV4::new(Ipv4Addr::from(0xc633_6400 + i), 1234);
            let syn = Packet::tcp(from, ep("203.0.113.1:40000"), tcp_flags::SYN, i, 0, &[]);
            nat.inbound(syn, start);
        }
        let mut answers = 0;
        while nat.poll_transmit(start + UNSOLICITED_SYN_WAIT).is_some() {
            answers += 1;
        }
        assert_eq!(answers, MAX_UNSOLICITED_SYNS);
    }

    #[test]
    fn unsolicited_tcp_gets_a_reset_or_nothing() {
        let now = Instant::now();
        let syn = Packet::tcp(ep("198.51.100.1:443"), ep("203.0.113.1:40000"), tcp_flags::SYN, 1000, 0, &[]);
        // The default (RFC 5382 REQ-4): silence.
        let mut nat = Nat::new(config(Mapping::EndpointIndependent, Filtering::EndpointIndependent), 1);
        assert_eq!(nat.inbound(syn.clone(), now), NatVerdict::Drop(DropReason::NoMapping));
        // The RST variant answers at once.
        let reset = NatConfig {
            unsolicited_tcp: UnsolicitedTcp::Reset,
            ..config(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
        };
        let mut nat = Nat::new(reset, 1);
        let NatVerdict::Reply(rst) = nat.inbound(syn.clone(), now) else { panic!("expected a RST") };
        assert_eq!(rst.dst_endpoint(), ep("198.51.100.1:443"));
        assert_eq!(rst.tcp_flags(), Some(tcp_flags::RST | tcp_flags::ACK));
        assert_eq!(&rst.payload()[8..12], &1001u32.to_be_bytes(), "acknowledges the SYN");
        assert!(rst.checksums_ok());
        let corporate = NatPreset::Corporate.configs(&[PUBLIC]).remove(0);
        let mut nat = Nat::new(corporate, 1);
        assert_eq!(nat.inbound(syn, now), NatVerdict::Drop(DropReason::NoMapping));
        // And a corporate NAT lets TCP out but not UDP.
        assert_eq!(
            nat.outbound(udp("10.0.0.2:5000", "198.51.100.1:3478"), now),
            NatVerdict::Drop(DropReason::UdpBlocked)
        );
        let out = Packet::tcp(ep("10.0.0.2:40000"), ep("198.51.100.1:443"), tcp_flags::SYN, 1, 0, &[]);
        let out = forwarded(nat.outbound(out, now));
        let synack =
            Packet::tcp(ep("198.51.100.1:443"), out.src_endpoint(), tcp_flags::SYN | tcp_flags::ACK, 9, 2, &[]);
        assert_eq!(forwarded(nat.inbound(synack, now)).dst_endpoint(), ep("10.0.0.2:40000"));
    }

    #[test]
    fn presets_have_the_documented_behaviour() {
        let ips = [PUBLIC, Ipv4Addr::new(192, 0, 2, 1)];
        for preset in NatPreset::ALL {
            let configs = preset.configs(&ips[..preset.layers()]);
            let outer = configs.last().unwrap();
            let expected = match preset {
                NatPreset::FullCone => (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
                NatPreset::RestrictedCone => (Mapping::EndpointIndependent, Filtering::AddressDependent),
                NatPreset::PortRestricted | NatPreset::Cgnat | NatPreset::Linux => {
                    (Mapping::EndpointIndependent, Filtering::AddressAndPortDependent)
                }
                NatPreset::Symmetric | NatPreset::Corporate => {
                    (Mapping::AddressAndPortDependent, Filtering::AddressAndPortDependent)
                }
            };
            assert_eq!((outer.mapping, outer.filtering), expected, "{preset:?}");
            assert_eq!(outer.block_udp, preset == NatPreset::Corporate);
            assert_eq!(outer.conntrack, preset == NatPreset::Linux);
        }
    }

    /// Two Linux routers, A at 203.0.113.1 and B at 203.0.114.1, their hosts on port 5000
    /// behind each: a punch from one side that reaches the other router before that router's
    /// host has sent its own.
    fn linux_pair() -> (Nat, Nat) {
        let a = NatPreset::Linux.configs(&[PUBLIC]).remove(0);
        let b = NatPreset::Linux.configs(&[Ipv4Addr::new(203, 0, 114, 1)]).remove(0);
        (Nat::new(a, 1), Nat::new(b, 2))
    }

    #[test]
    fn two_linux_routers_break_a_punch_that_arrives_before_the_other_side_sent() {
        let now = Instant::now();
        let (mut a, mut b) = linux_pair();
        // A's punch leaves A's router from 5000 and reaches B's router first: B takes it for
        // itself, and keeps the entry.
        let from_a = forwarded(a.outbound(udp("10.0.1.2:5000", "203.0.114.1:5000"), now));
        assert_eq!(from_a.src_endpoint(), ep("203.0.113.1:5000"));
        assert_eq!(b.inbound(from_a.clone(), now), NatVerdict::Drop(DropReason::NoMapping));
        // B's own punch cannot leave from 5000 any more (the tuple is taken)...
        let from_b = forwarded(b.outbound(udp("10.0.2.2:5000", "203.0.113.1:5000"), now));
        assert_ne!(from_b.src_endpoint().port(), 5000, "the clash moved B's port");
        // ...so A's router does not know it, and A's next punches still go to B's router.
        assert_eq!(a.inbound(from_b, now), NatVerdict::Drop(DropReason::NoMapping));
        assert_eq!(b.inbound(from_a, now), NatVerdict::Drop(DropReason::NoMapping));
    }

    #[test]
    fn two_linux_routers_punch_when_each_sends_before_the_other_arrives() {
        let now = Instant::now();
        let (mut a, mut b) = linux_pair();
        let from_a = forwarded(a.outbound(udp("10.0.1.2:5000", "203.0.114.1:5000"), now));
        let from_b = forwarded(b.outbound(udp("10.0.2.2:5000", "203.0.113.1:5000"), now));
        assert_eq!(forwarded(b.inbound(from_a, now)).dst_endpoint(), ep("10.0.2.2:5000"));
        assert_eq!(forwarded(a.inbound(from_b, now)).dst_endpoint(), ep("10.0.1.2:5000"));
    }

    #[test]
    fn icmp_errors_about_a_mapped_flow_are_translated_both_ways() {
        let now = Instant::now();
        for preset in [NatPreset::PortRestricted, NatPreset::Symmetric, NatPreset::Linux] {
            let mut nat = Nat::new(preset.configs(&[PUBLIC]).remove(0), 4);
            let out = forwarded(nat.outbound(udp("10.0.0.2:5000", "198.51.100.1:3478"), now));
            let public = out.src_endpoint();
            // A router beyond the NAT: too big. To the inside host, quoting its own packet.
            let too_big = out.fragmentation_needed("198.51.100.254".parse().unwrap(), 1280);
            let back = forwarded(nat.inbound(too_big, now));
            assert_eq!(back.dst(), Ipv4Addr::new(10, 0, 0, 2), "{preset:?}");
            assert_eq!(back.src(), Ipv4Addr::new(198, 51, 100, 254));
            assert!(back.checksums_ok(), "{preset:?}");
            let quote = &back.payload()[8..];
            assert_eq!(&quote[12..16], &[10, 0, 0, 2], "the quoted source is the host's again");
            assert_eq!(u16::from_be_bytes([quote[20], quote[21]]), 5000);
            assert_eq!(crate::packet::checksum(&quote[..20]), 0, "the quoted header's checksum holds");
            // The inside host answers a packet with "port unreachable": out from the public
            // address, quoting the packet as the sender sent it.
            let inbound = forwarded(nat.inbound(udp("198.51.100.1:3478", &public.to_string()), now));
            let unreachable = Packet::icmp(
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(198, 51, 100, 1),
                3,
                3,
                [0; 4],
                &inbound.as_bytes()[..28],
            );
            let out = forwarded(nat.outbound(unreachable, now));
            assert_eq!((out.src(), out.dst()), (PUBLIC, Ipv4Addr::new(198, 51, 100, 1)));
            let quote = &out.payload()[8..];
            assert_eq!(&quote[16..20], &PUBLIC.octets());
            assert_eq!(u16::from_be_bytes([quote[22], quote[23]]), public.port());
            assert!(out.checksums_ok());
        }
    }

    #[test]
    fn icmp_errors_about_no_flow_of_ours_are_dropped() {
        let now = Instant::now();
        let mut nat = Nat::new(NatPreset::Linux.configs(&[PUBLIC]).remove(0), 4);
        let stray =
            udp("203.0.113.1:4000", "198.51.100.1:3478").fragmentation_needed("198.51.100.254".parse().unwrap(), 1280);
        assert_eq!(nat.inbound(stray, now), NatVerdict::Drop(DropReason::NoMapping));
        let ping = Packet::icmp(Ipv4Addr::new(198, 51, 100, 1), PUBLIC, 8, 0, [0; 4], b"echo");
        assert_eq!(nat.inbound(ping, now), NatVerdict::Drop(DropReason::Unsupported));
    }

    #[test]
    fn expired_mappings_are_swept_as_packets_pass() {
        let t0 = Instant::now();
        for preset in [NatPreset::Symmetric, NatPreset::Linux] {
            let config = NatConfig { udp_timeout: Duration::from_secs(2), ..preset.configs(&[PUBLIC]).remove(0) };
            let mut nat = Nat::new(config, 3);
            for port in 0..100u16 {
                nat.outbound(udp("10.0.0.2:5000", &format!("198.51.100.1:{}", 1000 + port)), t0);
            }
            assert_eq!(nat.mapping_count(), 100, "{preset:?}");
            // Later traffic of one mapping sweeps the others away.
            nat.outbound(udp("10.0.0.3:5000", "198.51.100.9:1"), t0 + Duration::from_secs(3));
            assert_eq!(nat.mapping_count(), 1, "{preset:?}");
            assert_eq!(nat.stats().mappings_expired, 100, "{preset:?}");
        }
    }

    #[test]
    fn cgnat_translates_twice_and_replies_come_back_through_both_layers() {
        let now = Instant::now();
        let carrier_side = Ipv4Addr::new(100, 64, 0, 2);
        let configs = NatPreset::Cgnat.configs(&[carrier_side, PUBLIC]);
        let (mut home, mut carrier) = (Nat::new(configs[0].clone(), 1), Nat::new(configs[1].clone(), 2));
        let once = forwarded(home.outbound(udp("192.168.1.2:5000", "198.51.100.1:3478"), now));
        assert_eq!(*once.src_endpoint().ip(), carrier_side);
        let twice = forwarded(carrier.outbound(once, now));
        assert_eq!(*twice.src_endpoint().ip(), PUBLIC);
        let reply = udp("198.51.100.1:3478", &twice.src_endpoint().to_string());
        let back = forwarded(home.inbound(forwarded(carrier.inbound(reply, now)), now));
        assert_eq!(back.dst_endpoint(), ep("192.168.1.2:5000"));
        assert!(back.checksums_ok());
    }
}
