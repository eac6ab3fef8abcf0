//! warren-netsim: a virtual internet for tests (in progress).
//!
//! This first part is the sans-IO core: IPv4 packets ([`packet`]), and the devices that move
//! them, as state machines fed packets and time and returning packets ([`link`], [`nat`]). The
//! namespace, TUN and kernel-NAT plumbing that runs real programs through these devices is not
//! built yet (see the README).

#![warn(missing_docs)]

pub mod link;
pub mod nat;
pub mod packet;
pub mod pcap;
pub mod sim;
mod sys;

pub use sim::{AsNode, Host, NatHandle, Node, SimError, Simulation};

/// The property the `netsim_packet` fuzz target checks, also replayed over the saved corpus:
/// parsing arbitrary bytes never panics, and a packet that parses goes through a NAT (both
/// ways) and a link (with fragmentation) without panicking, coming out as packets that parse
/// again.
#[doc(hidden)]
pub fn fuzz_packet(data: &[u8]) {
    use std::time::{Duration, Instant};
    let Ok(packet) = packet::Packet::parse(data.to_vec()) else { return };
    let now = Instant::now();
    let check = |p: &packet::Packet| {
        packet::Packet::parse(p.as_bytes().to_vec()).expect("a device's output parses");
    };
    for preset in [nat::NatPreset::FullCone, nat::NatPreset::Symmetric] {
        let config = preset.configs(&["203.0.113.1".parse().expect("literal")]).remove(0);
        let mut nat = nat::Nat::new(config, 1);
        for verdict in [nat.outbound(packet.clone(), now), nat.inbound(packet.clone(), now)] {
            match verdict {
                nat::NatVerdict::Forward(p) | nat::NatVerdict::Hairpin(p) | nat::NatVerdict::Reply(p) => check(&p),
                nat::NatVerdict::Drop(_) => {}
            }
        }
    }
    let mut link = link::Link::new(link::LinkConfig { mtu: 576, ..Default::default() }, 1);
    if let Some(icmp) = link.send(packet, now) {
        check(&icmp);
    }
    while let Some(p) = link.poll(now + Duration::from_secs(1)) {
        check(&p);
    }
}
