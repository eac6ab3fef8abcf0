//! warren-netsim: a virtual internet for tests.
//!
//! Hosts run in their own network namespaces, each with one TAP device; a forwarder thread
//! moves their packets through simulated devices: links ([`link`]) and NATs ([`nat`]), both
//! sans-IO state machines fed packets and time, plus routers, switches and real Linux NATs
//! ([`sim`]). See docs/netsim.md for the whole picture.

#![warn(missing_docs)]

pub mod bench;
pub mod conntrack;
pub(crate) mod forward;
pub mod link;
pub mod nat;
pub mod nat_check;
pub mod packet;
pub mod pair;
pub mod pcap;
pub mod scenario;
pub mod sim;
mod sys;
mod topology;

pub use forward::Faults;
pub use sim::{AsNode, Device, Host, KernelNatConfig, KernelPorts, Node, SimError, Simulation};

/// The property the `netsim_packet` fuzz target checks, also replayed over the saved corpus:
/// parsing arbitrary bytes never panics, and a packet that parses goes through a NAT (both
/// ways) and a link (with fragmentation) without panicking, coming out as packets that parse
/// again.
#[doc(hidden)]
pub fn fuzz_packet(data: &[u8]) {
    use std::time::{Duration, Instant};
    // The same bytes as a TUN device's frame: a virtio-net header, then a packet, which is cut
    // into wire packets that must parse again; and as a TAP device's Ethernet frame.
    let _ = forward::ethernet_frame(data);
    if let Ok(frame) = packet::Packet::parse_vnet(data, 0) {
        frame.for_each_plain(|p| {
            let again = packet::Packet::parse(p.as_bytes().to_vec()).expect("a segment parses");
            assert!(again.len() <= data.len(), "segments are never longer than the frame");
        });
    }
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
