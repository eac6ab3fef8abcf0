//! A simulation leaves nothing behind: no namespace that any process still holds, no
//! interface in the caller's namespace, nothing under /run/netns, even when the code using it
//! panics. Needs root and `nft`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use warren_netsim::link::LinkConfig;
use warren_netsim::nat::NatPreset;
use warren_netsim::{KernelNatConfig, KernelPorts, Simulation};

/// Every network namespace inode some process holds: as its threads' namespace or an open
/// file.
fn held_namespaces() -> BTreeSet<u64> {
    let mut held = BTreeSet::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return held };
    for process in processes.flatten() {
        let path = process.path();
        let mut links = Vec::new();
        for dir in ["fd", "task"] {
            if let Ok(entries) = std::fs::read_dir(path.join(dir)) {
                for entry in entries.flatten() {
                    links.push(if dir == "task" { entry.path().join("ns/net") } else { entry.path() });
                }
            }
        }
        for link in links {
            if let Ok(target) = std::fs::read_link(&link) {
                let target = target.to_string_lossy();
                if let Some(inode) = target.strip_prefix("net:[").and_then(|t| t.strip_suffix(']')) {
                    held.extend(inode.parse::<u64>().ok());
                }
            }
        }
    }
    held
}

fn root_interfaces() -> String {
    let output = std::process::Command::new("ip").args(["-o", "link", "show"]).output().expect("ip (iproute2)");
    // Counters and state change on their own; names are what must not.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(':').nth(1).map(|name| name.trim().to_owned()))
        .collect::<Vec<_>>()
        .join(",")
}

fn run_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Builds every kind of device, runs a little traffic, then panics if asked to; returns the
/// inodes of the namespaces it made.
fn build_and_use(panic: bool) -> Vec<u64> {
    let mut sim = Simulation::new(9);
    let nat =
        sim.add_nat("nat", NatPreset::FullCone.configs(&["203.0.113.1".parse().unwrap()]).remove(0), None).unwrap();
    let knat = sim
        .add_kernel_nat(
            "knat",
            KernelNatConfig {
                public_ip: "203.0.113.2".parse().unwrap(),
                lan_ip: "192.168.2.1".parse().unwrap(),
                lan_prefix: 24,
                ports: KernelPorts::FullyRandom,
                udp_timeout: Some(Duration::from_secs(5)),
                unsolicited_tcp: warren_netsim::nat::UnsolicitedTcp::Reset,
            },
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let router = sim.add_router("r", "198.51.100.254".parse().unwrap(), &[], None).unwrap();
    let switch = sim.add_switch("lan", Some(&nat)).unwrap();
    let a = sim.add_host_behind("a", "192.168.1.2".parse().unwrap(), 24, &switch).unwrap_or_else(|e| panic!("{e}"));
    let b = sim.add_host_behind("b", "192.168.2.2".parse().unwrap(), 24, &knat).unwrap();
    let c = sim.add_host("c", "198.51.100.1".parse().unwrap(), 24).unwrap();
    sim.link(&a, &switch, LinkConfig::default());
    sim.link(&switch, &nat, LinkConfig::default());
    sim.link(&b, &knat, LinkConfig::default());
    for gateway in [&nat, &knat, &router] {
        sim.link(gateway, &c, LinkConfig::default());
    }
    sim.start().unwrap();
    let mut inodes: Vec<u64> = [&a, &b, &c].iter().map(|h| h.namespace().metadata().unwrap().ino()).collect();
    let knat_ns = knat.command("true").expect("kernel NAT namespace").output().unwrap();
    assert!(knat_ns.status.success());
    for host in [&a, &b] {
        let sent = host
            .command("bash")
            .args(["-c", "echo hi > /dev/udp/198.51.100.1/9 2>/dev/null; ip -o link show sim0"])
            .output()
            .unwrap();
        assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    }
    // A host thread that panics must not keep its namespace alive.
    assert!(a.spawn_sync(|| panic!("a test assertion failing inside a host")).join().is_err());
    inodes.sort();
    if panic {
        panic!("the test using the simulation fails");
    }
    inodes
}

#[test]
fn nothing_is_left_behind_after_normal_use_or_a_panic() {
    let interfaces = root_interfaces();
    let named = run_netns();
    let before = held_namespaces();
    let inodes = build_and_use(false);
    assert_eq!(inodes.len(), 3);
    let during_panic = std::panic::catch_unwind(|| build_and_use(true));
    assert!(during_panic.is_err(), "the second run panicked as asked");
    let after = held_namespaces();
    for inode in &inodes {
        assert!(!after.contains(inode), "namespace {inode} is still held by some process");
    }
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "namespaces held now that were not before: {new:?}");
    assert_eq!(root_interfaces(), interfaces, "the caller's namespace has the same interfaces");

    // The check itself can fail: a host handle kept alive is seen holding its namespace.
    let mut sim = Simulation::new(1);
    let kept = sim.add_host("kept", "10.0.0.1".parse().unwrap(), 24).unwrap();
    drop(sim);
    let inode = kept.namespace().metadata().unwrap().ino();
    assert!(held_namespaces().contains(&inode), "a live handle is detected");
    drop(kept);
    assert!(!held_namespaces().contains(&inode));
    assert_eq!(run_netns(), named, "no named namespaces were made");
}
