//! Each NAT behaves as RFC 4787 defines, measured from outside with plain UDP and TCP sockets
//! (`warren_netsim::nat_check`): the simulated presets and explicit behaviours must show
//! exactly what they were configured with, and the kernel NAT shows what the real Linux
//! kernel does (recorded in docs/netsim.md). Needs root and `nft`.

use std::time::Duration;

use warren_netsim::KernelPorts;
use warren_netsim::nat::{Filtering, Mapping, NatConfig, NatPreset, PortAssignment, UnsolicitedTcp};
use warren_netsim::nat_check::{Lifetime, Observed, Subject, TcpAnswer, check};

/// The lifetime checks sleep through timeouts: one simulation at a time keeps them exact.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The UDP timeout the NATs are given for the lifetime check.
const TIMEOUT: Duration = Duration::from_secs(1);

fn run(subject: Subject, lifetime: Option<Duration>) -> Observed {
    let _serial = serial();
    check(&subject, lifetime, 7).unwrap_or_else(|e| panic!("{e}"))
}

fn expired_after_timeout() -> Option<Lifetime> {
    Some(Lifetime { configured_ms: 1000, alive_at_half: true, expired_at_one_and_half: true })
}

/// What a single-layer NAT with `config` must look like from outside.
fn expected(subject: &Subject, config: &NatConfig, lifetime: Option<Lifetime>) -> Observed {
    let udp = !config.block_udp;
    Observed {
        subject: subject.name(),
        udp,
        mapping: udp.then_some(config.mapping),
        filtering: udp.then_some(config.filtering),
        port_preserved: udp.then_some(config.ports == PortAssignment::Preserve),
        // Hairpinned packets are filtered like any inbound packet and come from the sender's
        // mapping toward the NAT's own address. With a destination-dependent mapping that is a
        // new mapping neither side has contacted, so only endpoint-independent filtering lets
        // it in (RFC 4787 section 6): hairpinning shows from outside only with one of the two.
        hairpin: udp.then_some(
            config.hairpinning
                && (config.mapping == Mapping::EndpointIndependent
                    || config.filtering == Filtering::EndpointIndependent),
        ),
        unsolicited_moves_port: (udp && config.ports == PortAssignment::Preserve).then_some(config.conntrack),
        lifetime: if udp { lifetime } else { None },
        tcp: true,
        unsolicited_tcp: match config.unsolicited_tcp {
            UnsolicitedTcp::Reset => TcpAnswer::Reset,
            // Within the 1 s the check waits: RFC 5382 answers only after 6 s.
            UnsolicitedTcp::Drop | UnsolicitedTcp::DropThenUnreachable => TcpAnswer::Silence,
        },
    }
}

fn preset(preset: NatPreset) {
    let subject = Subject::Preset(preset);
    let observed = run(subject.clone(), Some(TIMEOUT));
    let config = preset.configs(&["203.0.113.1".parse().unwrap()]).remove(0);
    assert_eq!(observed, expected(&subject, &config, expired_after_timeout()));
}

#[test]
fn full_cone() {
    preset(NatPreset::FullCone);
}

#[test]
fn restricted_cone() {
    preset(NatPreset::RestrictedCone);
}

#[test]
fn port_restricted() {
    preset(NatPreset::PortRestricted);
}

#[test]
fn symmetric() {
    preset(NatPreset::Symmetric);
}

/// The conntrack model (OpenWrt-style routers) shows from outside exactly what the kernel's
/// `masquerade` shows (`kernel_masquerade` below), unsolicited state included.
#[test]
fn linux_conntrack_model_looks_like_the_kernel() {
    preset(NatPreset::Linux);
    let observed = run(Subject::Preset(NatPreset::Linux), Some(TIMEOUT));
    let kernel = run(Subject::Kernel(KernelPorts::Masquerade), Some(TIMEOUT));
    assert_eq!(Observed { subject: kernel.subject.clone(), ..observed }, kernel);
}

#[test]
fn corporate_blocks_udp_and_lets_tcp_out_but_never_answers_unsolicited_tcp() {
    preset(NatPreset::Corporate);
}

#[test]
fn cgnat_two_layers_compose() {
    let observed = run(Subject::Preset(NatPreset::Cgnat), Some(TIMEOUT));
    // Home router (endpoint-independent, port-preserving) behind a carrier NAT (endpoint-
    // independent, random ports): the outside sees endpoint-independent mapping, filtering by
    // address and port, ports not preserved; hairpinning works in both layers.
    let expected = Observed {
        subject: "Cgnat".into(),
        udp: true,
        mapping: Some(Mapping::EndpointIndependent),
        filtering: Some(Filtering::AddressAndPortDependent),
        port_preserved: Some(false),
        hairpin: Some(true),
        unsolicited_moves_port: None,
        lifetime: expired_after_timeout(),
        tcp: true,
        unsolicited_tcp: TcpAnswer::Silence,
    };
    assert_eq!(observed, expected);
}

#[test]
fn every_mapping_and_filtering_combination_is_what_was_configured() {
    let base = NatPreset::FullCone.configs(&["203.0.113.1".parse().unwrap()]).remove(0);
    let mappings = [Mapping::EndpointIndependent, Mapping::AddressDependent, Mapping::AddressAndPortDependent];
    let filterings = [Filtering::EndpointIndependent, Filtering::AddressDependent, Filtering::AddressAndPortDependent];
    let ports = [PortAssignment::Preserve, PortAssignment::Random, PortAssignment::Sequential];
    for (i, mapping) in mappings.into_iter().enumerate() {
        for (j, filtering) in filterings.into_iter().enumerate() {
            let config = NatConfig {
                mapping,
                filtering,
                // Vary the other settings along the way, so each appears with several others.
                ports: ports[(i + j) % 3],
                hairpinning: (i + j) % 2 == 0,
                unsolicited_tcp: if j == 1 { UnsolicitedTcp::Drop } else { UnsolicitedTcp::Reset },
                ..base.clone()
            };
            let subject = Subject::Config(config.clone());
            assert_eq!(run(subject.clone(), None), expected(&subject, &config, None), "{config:?}");
        }
    }
}

/// The real kernel (nftables masquerade in a router namespace, conntrack's UDP timeout set to
/// one second): endpoint-independent mapping with port preservation, filtering by address and
/// port (conntrack admits only the exact reply tuple), no hairpinning (no DNAT rule for it),
/// RST for unsolicited TCP from the router itself; and an unsolicited packet leaves an entry
/// that moves a later flow to another port (the hole-punching failure between two Linux
/// routers).
#[test]
fn kernel_masquerade() {
    let observed = run(Subject::Kernel(KernelPorts::Masquerade), Some(TIMEOUT));
    let expected = Observed {
        subject: "kernel masquerade".into(),
        udp: true,
        mapping: Some(Mapping::EndpointIndependent),
        filtering: Some(Filtering::AddressAndPortDependent),
        port_preserved: Some(true),
        hairpin: Some(false),
        unsolicited_moves_port: Some(true),
        lifetime: expired_after_timeout(),
        tcp: true,
        unsolicited_tcp: TcpAnswer::Reset,
    };
    assert_eq!(observed, expected);
}

/// A kernel NAT whose firewall drops new TCP from outside (an input rule, as most consumer
/// firmware has) answers an unsolicited SYN with silence, the simulator's default
/// (`UnsolicitedTcp::Drop`); everything else is plain masquerade's.
#[test]
fn kernel_masquerade_behind_a_firewall_is_silent_to_unsolicited_tcp() {
    let plain = run(Subject::Kernel(KernelPorts::Masquerade), None);
    let dropping = run(Subject::KernelDropping(KernelPorts::Masquerade), None);
    assert_eq!(dropping.unsolicited_tcp, TcpAnswer::Silence);
    assert_eq!(plain.unsolicited_tcp, TcpAnswer::Reset);
    assert_eq!(Observed { subject: plain.subject.clone(), unsolicited_tcp: TcpAnswer::Reset, ..dropping }, plain);
}

/// `random` and `fully-random` pick a new port per connection (5-tuple): the mapping depends on
/// the destination address and port, as a symmetric NAT's does.
#[test]
fn kernel_masquerade_random_and_fully_random() {
    for ports in [KernelPorts::Random, KernelPorts::FullyRandom] {
        let observed = run(Subject::Kernel(ports), Some(TIMEOUT));
        let expected = Observed {
            subject: format!("kernel {}", ports.name()),
            udp: true,
            mapping: Some(Mapping::AddressAndPortDependent),
            filtering: Some(Filtering::AddressAndPortDependent),
            port_preserved: Some(false),
            hairpin: Some(false),
            unsolicited_moves_port: None,
            lifetime: expired_after_timeout(),
            tcp: true,
            unsolicited_tcp: TcpAnswer::Reset,
        };
        assert_eq!(observed, expected);
    }
}
