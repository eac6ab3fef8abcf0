//! A ready-made topology for NAT traversal: two hosts, each behind a NAT of some kind (or none),
//! and a third host on the internet between them (a relay, a rendezvous server).
//!
//! ```text
//!            relay 198.51.100.1
//!          /  relay link      relay link \
//!   side a outer gateway ---direct link--- isp-b 203.0.114.1 (a router)
//!          |                                 |
//!          |                               side b outer gateway
//!          |                                 |
//!   host a 192.168.1.2 (or 203.0.113.10)   host b 192.168.2.2 (or 203.0.114.10)
//! ```
//!
//! `isp-b` is side b's provider: a router (it decrements the TTL) that owns b's public subnet,
//! so that, as on the internet, at least one router lies between the two sides' NATs (a packet
//! with a TTL of 2 from either host passes its own NAT and dies there). It adds no delay.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::link::LinkConfig;
use crate::nat::{NatConfig, NatPreset, PortAssignment};
use crate::{Device, Host, KernelNatConfig, KernelPorts, SimError, Simulation};

/// Where a side's host sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// A public address, no NAT.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering, random ports.
    Symmetric,
    /// A port-restricted home NAT behind a carrier-grade NAT.
    Cgnat,
    /// Linux nftables `masquerade`.
    KernelMasquerade,
    /// Linux nftables `masquerade fully-random`.
    KernelFullyRandom,
    /// Symmetric with sequential port allocation (where port prediction can work).
    SymmetricSequential,
    /// The model of a Linux router (conntrack with `masquerade`, [`NatPreset::Linux`]), checked
    /// against [`NatKind::KernelMasquerade`].
    Linux,
    /// UDP blocked, TCP through a symmetric NAT (the corporate preset). Not in [`NatKind::ALL`]:
    /// only a relay over TCP reaches it.
    UdpBlocked,
}

impl NatKind {
    /// Every kind.
    pub const ALL: [NatKind; 10] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::Cgnat,
        NatKind::KernelMasquerade,
        NatKind::KernelFullyRandom,
        NatKind::SymmetricSequential,
        NatKind::Linux,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestricted => "port-restricted",
            NatKind::Symmetric => "symmetric",
            NatKind::Cgnat => "cgnat",
            NatKind::KernelMasquerade => "kernel-masquerade",
            NatKind::KernelFullyRandom => "kernel-fully-random",
            NatKind::SymmetricSequential => "symmetric-sequential",
            NatKind::Linux => "linux",
            NatKind::UdpBlocked => "udp-blocked",
        }
    }

    /// The mapping depends on the destination (RFC 4787 address-and-port-dependent mapping).
    pub fn endpoint_dependent_mapping(self) -> bool {
        matches!(
            self,
            NatKind::Symmetric | NatKind::KernelFullyRandom | NatKind::SymmetricSequential | NatKind::UdpBlocked
        )
    }

    /// A mapping keeps the inner port (while it is free), so a peer can aim at a TCP
    /// listener's port: no NAT, the home presets with endpoint-independent mapping, Linux's
    /// `masquerade` and its model.
    pub fn keeps_ports(self) -> bool {
        matches!(
            self,
            NatKind::None
                | NatKind::FullCone
                | NatKind::RestrictedCone
                | NatKind::PortRestricted
                | NatKind::KernelMasquerade
                | NatKind::Linux
        )
    }

    /// The filter admits only the exact address and port contacted.
    pub fn port_dependent_filtering(self) -> bool {
        !matches!(self, NatKind::None | NatKind::FullCone | NatKind::RestrictedCone)
    }
}

impl std::str::FromStr for NatKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        NatKind::ALL.into_iter().chain([NatKind::UdpBlocked]).find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = NatKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown NAT kind {s:?} (one of {})", names.join(", "))
        })
    }
}

/// Does RFC 4787 theory allow a direct path between `a` and `b` with plain hole punching (no
/// port prediction)? A NAT whose mapping depends on the destination shows the other side a port
/// nobody could learn in advance; that only works if the other side's filter does not care
/// about the port.
pub fn theory_allows_direct(a: NatKind, b: NatKind) -> bool {
    let one_way = |x: NatKind, y: NatKind| !x.endpoint_dependent_mapping() || !y.port_dependent_filtering();
    if a == NatKind::UdpBlocked || b == NatKind::UdpBlocked {
        return false;
    }
    a == NatKind::None || b == NatKind::None || (one_way(a, b) && one_way(b, a))
}

/// Can a TCP hole punch between the two go direct? Each side connects from its listener's
/// port to the other's public address and listener port, again and again. A SYN from `x`
/// reaches `y`'s host if `y`'s NAT kept the listener's port (so `x` aims right) and either `x`'s
/// NAT kept its port too (the SYN comes from the endpoint `y` is sending to: a simultaneous
/// open) or `y` filters by address alone (a SYN from any port of `x`'s address passes, and `y`'s
/// listener takes it). No NAT keeps ports and filters nothing. A router that answers an
/// unsolicited SYN with a RST does not matter: the kernel frees the tuple (see
/// [`crate::conntrack`]) and the retried SYNs meet, as two real `kernel-masquerade` routers
/// show.
pub fn tcp_theory_allows_direct(a: NatKind, b: NatKind) -> bool {
    let reaches = |x: NatKind, y: NatKind| y.keeps_ports() && (x.keeps_ports() || !y.port_dependent_filtering());
    reaches(a, b) || reaches(b, a)
}

/// The middle host's address.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Side b's provider router (see the module docs).
pub const ISP_B_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 1);

/// Side a's and side b's public addresses (their outer NAT's, or the host's with no NAT):
/// block the pair ([`Simulation::faults`]) to cut the direct path and leave the relay's.
pub const PUBLIC_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(203, 0, 114, 10)];

/// Links of the pair topology.
#[derive(Debug, Clone)]
pub struct PairLinks {
    /// Between each side's outer gateway and the relay.
    pub relay: LinkConfig,
    /// Between the two sides' outer gateways.
    pub direct: LinkConfig,
}

impl Default for PairLinks {
    /// 25 ms to the relay, 50 ms between the sides: 100 ms RTT both direct and relayed.
    fn default() -> Self {
        let latency = |ms| LinkConfig { latency: Duration::from_millis(ms), ..Default::default() };
        Self { relay: latency(25), direct: latency(50) }
    }
}

/// The built (not yet started) topology.
pub struct Pair {
    /// The simulation; start it with [`Simulation::start`].
    pub sim: Simulation,
    /// The host in the middle, at [`RELAY_IP`].
    pub relay: Host,
    /// Side a's host.
    pub a: Host,
    /// Side b's host.
    pub b: Host,
}

enum Root {
    Host(Host),
    Device(Device),
}

fn link(sim: &mut Simulation, a: &Root, b: &Root, config: LinkConfig) {
    match (a, b) {
        (Root::Host(a), Root::Host(b)) => sim.link(a, b, config),
        (Root::Host(a), Root::Device(b)) => sim.link(a, b, config),
        (Root::Device(a), Root::Host(b)) => sim.link(a, b, config),
        (Root::Device(a), Root::Device(b)) => sim.link(a, b, config),
    }
}

fn lan() -> LinkConfig {
    LinkConfig { latency: Duration::from_millis(1), ..Default::default() }
}

/// Builds one side (index 0 or 1) behind `provider` (a router, or the internet itself): its host,
/// and the device to link to the provider.
fn side(sim: &mut Simulation, kind: NatKind, index: u8, isp: Option<&Device>) -> Result<(Host, Root), SimError> {
    let provider = isp.map(|p| p as &dyn crate::AsNode);
    let name = |what: &str| format!("{what}-{}", if index == 0 { 'a' } else { 'b' });
    let public = PUBLIC_IPS[usize::from(index)];
    let private = Ipv4Addr::new(192, 168, 1 + index, 2);
    let behind_nat = |sim: &mut Simulation, config| -> Result<(Host, Root), SimError> {
        let nat = sim.add_nat(&name("nat"), config, provider)?;
        let host = sim.add_host_behind(&name("host"), private, 24, &nat)?;
        sim.link(&host, &nat, lan());
        Ok((host, Root::Device(nat)))
    };
    let preset = |p: NatPreset| p.configs(&[public]).remove(0);
    match kind {
        NatKind::None => {
            let host = match isp {
                Some(isp) => sim.add_host_behind(&name("host"), public, 24, isp)?,
                None => sim.add_host(&name("host"), public, 24)?,
            };
            Ok((host.clone(), Root::Host(host)))
        }
        NatKind::FullCone => behind_nat(sim, preset(NatPreset::FullCone)),
        NatKind::RestrictedCone => behind_nat(sim, preset(NatPreset::RestrictedCone)),
        NatKind::PortRestricted => behind_nat(sim, preset(NatPreset::PortRestricted)),
        NatKind::Symmetric => behind_nat(sim, preset(NatPreset::Symmetric)),
        NatKind::UdpBlocked => behind_nat(sim, preset(NatPreset::Corporate)),
        NatKind::Linux => behind_nat(sim, preset(NatPreset::Linux)),
        NatKind::SymmetricSequential => {
            behind_nat(sim, NatConfig { ports: PortAssignment::Sequential, ..preset(NatPreset::Symmetric) })
        }
        NatKind::Cgnat => {
            let mut layers = NatPreset::Cgnat.configs(&[Ipv4Addr::new(100, 64, index, 2), public]);
            let carrier = sim.add_nat(&name("carrier"), layers.remove(1), provider)?;
            let home = sim.add_nat(&name("home"), layers.remove(0), Some(&carrier))?;
            let host = sim.add_host_behind(&name("host"), private, 24, &home)?;
            sim.link(&host, &home, lan());
            sim.link(&home, &carrier, LinkConfig { latency: Duration::from_millis(5), ..Default::default() });
            Ok((host, Root::Device(carrier)))
        }
        NatKind::KernelMasquerade | NatKind::KernelFullyRandom => {
            let ports =
                if kind == NatKind::KernelMasquerade { KernelPorts::Masquerade } else { KernelPorts::FullyRandom };
            let config = KernelNatConfig {
                public_ip: public,
                lan_ip: Ipv4Addr::new(192, 168, 1 + index, 1),
                lan_prefix: 24,
                ports,
                udp_timeout: None,
                unsolicited_tcp: crate::nat::UnsolicitedTcp::Reset,
            };
            let nat = sim.add_kernel_nat(&name("knat"), config, provider)?;
            let host = sim.add_host_behind(&name("host"), private, 24, &nat)?;
            sim.link(&host, &nat, lan());
            Ok((host, Root::Device(nat)))
        }
    }
}

/// Builds the topology for sides `a` and `b` (hosts named `host-a`, `host-b`, `relay`).
pub fn build(a: NatKind, b: NatKind, links: PairLinks, seed: u64) -> Result<Pair, SimError> {
    let mut sim = Simulation::new(seed);
    let relay = sim.add_host("relay", RELAY_IP, 24)?;
    let isp = sim.add_router("isp-b", ISP_B_IP, &[(PUBLIC_IPS[1], 24)], None)?;
    let (a_host, a_root) = side(&mut sim, a, 0, None)?;
    let (b_host, b_root) = side(&mut sim, b, 1, Some(&isp))?;
    let (relay_root, isp_root) = (Root::Host(relay.clone()), Root::Device(isp));
    link(&mut sim, &relay_root, &a_root, links.relay.clone());
    link(&mut sim, &relay_root, &isp_root, links.relay);
    link(&mut sim, &a_root, &isp_root, links.direct);
    link(&mut sim, &isp_root, &b_root, LinkConfig::default());
    Ok(Pair { sim, relay, a: a_host, b: b_host })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn theory() {
        use NatKind::*;
        assert!(theory_allows_direct(Symmetric, None));
        assert!(theory_allows_direct(Symmetric, RestrictedCone));
        assert!(!theory_allows_direct(Symmetric, PortRestricted));
        assert!(!theory_allows_direct(KernelMasquerade, KernelFullyRandom));
        assert!(theory_allows_direct(Cgnat, KernelMasquerade));
        assert!(!theory_allows_direct(Symmetric, Symmetric));
    }
}
