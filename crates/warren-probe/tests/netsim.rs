//! Ground truth from warren-netsim: behind each NAT the simulator offers, the probe's
//! classification is what the NAT was configured with (for the kernel NAT: what `nat-check`
//! measured and docs/netsim.md records). Needs root or a user namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

mod common;

use warren_netsim::KernelPorts;
use warren_netsim::nat::{Filtering, Mapping, NatConfig, NatPreset, PortAssignment};
use warren_probe::client::{self, ProbeOptions, ProbeResult};
use warren_probe::report::Behaviour;

use common::{Behind, PUBLIC};

/// Builds server (two addresses) and client behind `behind`, probes, returns the result.
fn probe_behind(behind: Behind, lifetime: Option<Vec<Duration>>) -> ProbeResult {
    let (_sim, server, client) = common::topology(behind);
    let (stop, server_task) = common::warren_server(&server);
    let result = client
        .spawn(move || async move {
            let mut opts = ProbeOptions::new(SocketAddr::from((common::PRIMARY, 3478)));
            opts.timeout = Duration::from_millis(150);
            opts.lifetime = lifetime;
            client::probe(&opts, |_| {}).await.unwrap()
        })
        .join()
        .unwrap();
    let _ = stop.send(());
    server_task.join().unwrap();
    result
}

fn behaviour_of_mapping(m: Mapping) -> Behaviour {
    match m {
        Mapping::EndpointIndependent => Behaviour::EndpointIndependent,
        Mapping::AddressDependent => Behaviour::AddressDependent,
        Mapping::AddressAndPortDependent => Behaviour::AddressAndPortDependent,
    }
}

fn behaviour_of_filtering(f: Filtering) -> Behaviour {
    match f {
        Filtering::EndpointIndependent => Behaviour::EndpointIndependent,
        Filtering::AddressDependent => Behaviour::AddressDependent,
        Filtering::AddressAndPortDependent => Behaviour::AddressAndPortDependent,
    }
}

/// The probe behind a single NAT configured as `config` says what the config says.
fn check_single(config: NatConfig) {
    let result = probe_behind(Behind::Nats(vec![config.clone()]), None);
    let label = format!("{:?}/{:?}/{:?}", config.mapping, config.filtering, config.ports);
    assert!(!result.findings.udp_blocked, "{label}: {result:?}");
    assert_eq!(result.findings.no_nat, Some(false), "{label}");
    assert_eq!(result.mapped.map(|m| m.ip()), Some(config.public_ip.into()), "{label}");
    assert_eq!(result.findings.mapping, Some(behaviour_of_mapping(config.mapping)), "{label}: {result:?}");
    assert_eq!(result.findings.filtering, Some(behaviour_of_filtering(config.filtering)), "{label}: {result:?}");
    // A hairpinned packet comes from the mapping our packet to our own public address made;
    // with a destination-dependent mapping that is a new mapping, which the original one's
    // filter only admits if it ignores the source. So hairpinning shows only then.
    let hairpin_shows = config.hairpinning
        && (config.mapping == Mapping::EndpointIndependent || config.filtering == Filtering::EndpointIndependent);
    assert_eq!(result.findings.hairpin, Some(hairpin_shows), "{label}: {result:?}");
    match config.ports {
        PortAssignment::Preserve => assert_eq!(result.findings.port_preserved, Some(true), "{label}"),
        PortAssignment::Random => assert_eq!(result.findings.port_preserved, Some(false), "{label}"),
        PortAssignment::Sequential => {}
    }
    assert_eq!(result.findings.double_nat, None, "{label}");
}

fn preset(p: NatPreset) -> NatConfig {
    p.configs(&[PUBLIC]).remove(0)
}

#[test]
fn full_cone() {
    check_single(preset(NatPreset::FullCone));
}

#[test]
fn restricted_cone() {
    check_single(preset(NatPreset::RestrictedCone));
}

#[test]
fn port_restricted() {
    check_single(preset(NatPreset::PortRestricted));
}

#[test]
fn symmetric() {
    check_single(preset(NatPreset::Symmetric));
}

/// Two layers: a port-restricted home NAT (port-preserving) behind a carrier NAT
/// (endpoint-independent mapping, port-dependent filtering, random ports).
#[test]
fn cgnat() {
    let carrier_public = Ipv4Addr::new(203, 0, 113, 50);
    let mut layers = NatPreset::Cgnat.configs(&[Ipv4Addr::new(100, 64, 0, 2), carrier_public]);
    let outer = layers.remove(1);
    let inner = layers.remove(0);
    let result = probe_behind(Behind::Nats(vec![outer, inner]), None);
    assert_eq!(result.mapped.map(|m| m.ip()), Some(carrier_public.into()), "{result:?}");
    assert_eq!(result.findings.mapping, Some(Behaviour::EndpointIndependent), "{result:?}");
    assert_eq!(result.findings.filtering, Some(Behaviour::AddressAndPortDependent), "{result:?}");
    assert_eq!(result.findings.port_preserved, Some(false), "the carrier picks random ports: {result:?}");
}

#[test]
fn corporate_blocks_udp() {
    let result = probe_behind(Behind::Nats(vec![preset(NatPreset::Corporate)]), None);
    assert!(result.findings.udp_blocked, "{result:?}");
    assert_eq!(result.findings.mapping, None);
}

/// Every mapping x filtering combination, port-preserving and not, hairpinning on and off.
#[test]
fn every_mapping_and_filtering_combination() {
    let mut handles = Vec::new();
    for (i, mapping) in [Mapping::EndpointIndependent, Mapping::AddressDependent, Mapping::AddressAndPortDependent]
        .into_iter()
        .enumerate()
    {
        for (j, filtering) in
            [Filtering::EndpointIndependent, Filtering::AddressDependent, Filtering::AddressAndPortDependent]
                .into_iter()
                .enumerate()
        {
            let config = NatConfig {
                mapping,
                filtering,
                ports: if (i + j) % 2 == 0 { PortAssignment::Preserve } else { PortAssignment::Random },
                hairpinning: (i + j) % 3 != 0,
                ..preset(NatPreset::FullCone)
            };
            handles.push(std::thread::spawn(move || check_single(config)));
            // Three at a time.
            if handles.len() == 3 {
                for handle in handles.drain(..) {
                    handle.join().unwrap();
                }
            }
        }
    }
    for handle in handles {
        handle.join().unwrap();
    }
}

/// The kernel's NAT (nftables masquerade): as `warren netsim nat-check` measured it
/// (docs/netsim.md): endpoint-independent mapping keeping the port, port-dependent filtering,
/// no hairpinning.
#[test]
fn kernel_masquerade() {
    let result = probe_behind(Behind::Kernel(KernelPorts::Masquerade), None);
    assert_eq!(result.mapped.map(|m| m.ip()), Some(PUBLIC.into()), "{result:?}");
    assert_eq!(result.findings.mapping, Some(Behaviour::EndpointIndependent), "{result:?}");
    assert_eq!(result.findings.filtering, Some(Behaviour::AddressAndPortDependent), "{result:?}");
    assert_eq!(result.findings.port_preserved, Some(true), "{result:?}");
    assert_eq!(result.findings.hairpin, Some(false), "{result:?}");
}

/// `masquerade fully-random`: a new random port per destination.
#[test]
fn kernel_fully_random() {
    let result = probe_behind(Behind::Kernel(KernelPorts::FullyRandom), None);
    assert_eq!(result.findings.mapping, Some(Behaviour::AddressAndPortDependent), "{result:?}");
    assert_eq!(result.findings.filtering, Some(Behaviour::AddressAndPortDependent), "{result:?}");
    assert_eq!(result.findings.port_preserved, Some(false), "{result:?}");
}

/// `masquerade random`.
#[test]
fn kernel_random() {
    let result = probe_behind(Behind::Kernel(KernelPorts::Random), None);
    assert_eq!(result.findings.mapping, Some(Behaviour::AddressAndPortDependent), "{result:?}");
    assert_eq!(result.findings.filtering, Some(Behaviour::AddressAndPortDependent), "{result:?}");
}

/// A NAT whose bindings live 2 s: the bounded search puts the lifetime between about 1 and
/// about 3 s (the idle times actually waited, to a tenth of a second).
#[test]
fn binding_lifetime() {
    let config = NatConfig { udp_timeout: Duration::from_secs(2), ..preset(NatPreset::PortRestricted) };
    let checkpoints = vec![Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(4)];
    let result = probe_behind(Behind::Nats(vec![config]), Some(checkpoints));
    let life = result.findings.lifetime.expect("measured");
    assert!((1.0..=1.5).contains(&life.at_least_s), "{result:?}");
    assert!(life.at_most_s.is_some_and(|m| (3.0..=3.5).contains(&m)), "{result:?}");
}
