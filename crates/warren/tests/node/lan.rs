//! LAN discovery in a warren-netsim LAN: three hosts on one simulated switch (multicast
//! forwarded), each running a node with mDNS discovery. Nodes find each other with no address
//! given, connect by identity alone, see metadata and library changes, and see a goodbye.
//! Needs root (network namespaces).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::support::{HANG, wait_for};
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use warren::transport::quic::QuicTransport;
use warren::{Event, Identity, P2P, RemoteIdentity};
use warren_netsim::link::LinkConfig;
use warren_netsim::{Host, Simulation};

fn lan(count: u8, capture: Option<&std::path::Path>) -> (Simulation, Vec<Host>) {
    let mut sim = Simulation::new(5);
    let switch = sim.add_switch("lan", None).unwrap();
    let hosts: Vec<Host> = (0..count)
        .map(|i| {
            let host = sim
                .add_host_behind(&format!("h{i}"), Ipv4Addr::new(192, 168, 5, 10 + i), 24, &switch)
                .unwrap_or_else(|e| panic!("{e}"));
            sim.link(&host, &switch, LinkConfig { latency: Duration::from_millis(1), ..Default::default() });
            if let (Some(path), 1) = (capture, i) {
                sim.capture_interface(&host, path).unwrap();
            }
            host
        })
        .collect();
    sim.start().unwrap();
    (sim, hosts)
}

async fn start(name: &str, ip: Ipv4Addr, mode: DiscoveryMode) -> (P2P, MdnsDiscovery) {
    let p2p = P2P::new("warren", Identity::generate());
    p2p.metadata_mut().insert(warren::p2p::NAME, name).unwrap();
    warren::ping::register(&p2p).unwrap();
    let quic = QuicTransport::spawn(&p2p, SocketAddr::from((ip, 0))).await.unwrap();
    let mdns = MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), mode);
    (p2p, mdns)
}

fn discovered(id: RemoteIdentity) -> impl Fn(&Event) -> Option<std::collections::BTreeMap<String, String>> {
    move |event| match event {
        Event::PeerDiscovered { remote, source, metadata, .. } if *remote == id && source == "mdns" => {
            Some(metadata.clone())
        }
        _ => None,
    }
}

#[test]
fn nodes_on_a_lan_find_each_other_connect_by_identity_and_follow_changes() {
    let (_sim, hosts) = lan(3, None);
    let library = uuid::Uuid::new_v4();
    // Each peer host: start, report its identity, obey commands, shut down on "stop".
    let (ids_tx, mut ids) = mpsc::unbounded_channel::<(String, RemoteIdentity)>();
    let mut commands = Vec::new();
    let mut peers = Vec::new();
    for (i, host) in hosts[1..].iter().enumerate() {
        let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
        commands.push(tx);
        let (ids_tx, ip, name) = (ids_tx.clone(), host.ip(), format!("peer{i}"));
        peers.push(host.spawn(move || async move {
            let (p2p, _mdns) = start(&name, ip, DiscoveryMode::Enabled).await;
            ids_tx.send((name, p2p.remote_identity())).unwrap();
            while let Some(command) = rx.recv().await {
                match command {
                    "rename" => {
                        p2p.metadata_mut().insert(warren::p2p::NAME, "renamed").unwrap();
                    }
                    "join" => {
                        p2p.add_library(library);
                    }
                    _ => break,
                }
            }
            p2p.shutdown().await;
        }));
    }
    let observer = hosts[0].ip();
    let result = hosts[0]
        .spawn(move || async move {
            let (p2p, mdns) = start("observer", observer, DiscoveryMode::Enabled).await;
            let mut events = p2p.subscribe();
            // The peers start concurrently: sort their identities by name (peer0 takes commands[0]).
            let mut named = [ids.recv().await.unwrap(), ids.recv().await.unwrap()];
            named.sort();
            let (b, c) = (named[0].1, named[1].1);
            let started = Instant::now();
            // Both, in whichever order they come.
            let mut found = std::collections::BTreeMap::new();
            while found.len() < 2 {
                let (id, metadata) =
                    wait_for(&mut events, |e| [b, c].into_iter().find_map(|id| discovered(id)(e).map(|m| (id, m))))
                        .await;
                found.insert(id, metadata);
            }
            let (meta_b, meta_c) = (found[&b].clone(), found[&c].clone());
            let found_in = started.elapsed();
            assert_eq!(meta_b["name"], "peer0");
            assert_eq!(meta_c["name"], "peer1");
            // Connect by identity alone: the addresses came from mDNS.
            let rtts = warren::ping::ping(&p2p, b, 3).await.expect("ping by identity");
            assert_eq!(rtts.len(), 3);
            // A metadata change is re-announced at once.
            commands[0].send("rename").unwrap();
            let renamed = wait_for(&mut events, |e| discovered(b)(e).filter(|m| m["name"] == "renamed")).await;
            assert_eq!(renamed["name"], "renamed");
            // So is a library.
            assert!(mdns.peers_in_library(&library).is_empty());
            commands[0].send("join").unwrap();
            let deadline = Instant::now() + HANG;
            while mdns.peers_in_library(&library) != vec![b] {
                assert!(Instant::now() < deadline, "the library was not announced");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Goodbye: c shuts down and is expired.
            commands[1].send("stop").unwrap();
            wait_for(&mut events, |e| match e {
                Event::PeerExpired { remote, source, .. } if *remote == c && source == "mdns" => Some(()),
                _ => None,
            })
            .await;
            commands[0].send("stop").unwrap();
            p2p.shutdown().await;
            found_in
        })
        .join()
        .unwrap();
    for peer in peers {
        peer.join().unwrap();
    }
    eprintln!("both peers discovered {result:?} after the observer started");
}

/// Disabled means silent: a disabled node sends not one packet while others announce and
/// browse around it; enabled at runtime it is found, disabled again it says goodbye.
#[test]
fn a_disabled_node_is_silent_and_modes_switch_at_runtime() {
    let path = std::env::temp_dir().join(format!("warren-mdns-disabled-{}.pcap", std::process::id()));
    let (sim, hosts) = lan(2, Some(&path));
    let (to_quiet, mut commands) = mpsc::unbounded_channel::<DiscoveryMode>();
    let (id_tx, mut id_rx) = mpsc::unbounded_channel::<RemoteIdentity>();
    let quiet_ip = hosts[1].ip();
    let quiet = hosts[1].spawn(move || async move {
        let (p2p, mdns) = start("quiet", quiet_ip, DiscoveryMode::Disabled).await;
        id_tx.send(p2p.remote_identity()).unwrap();
        while let Some(mode) = commands.recv().await {
            mdns.set_mode(mode);
        }
        p2p.shutdown().await;
    });
    let observer_ip = hosts[0].ip();
    let enabled_at = hosts[0]
        .spawn(move || async move {
            let (p2p, _mdns) = start("observer", observer_ip, DiscoveryMode::Enabled).await;
            let mut events = p2p.subscribe();
            let quiet_id = id_rx.recv().await.unwrap();
            // Three seconds of the observer announcing and querying.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(p2p.peer(&quiet_id).is_none(), "a disabled node is not found");
            let enabled_at = std::time::SystemTime::now();
            to_quiet.send(DiscoveryMode::Enabled).unwrap();
            wait_for(&mut events, discovered(quiet_id)).await;
            to_quiet.send(DiscoveryMode::Disabled).unwrap();
            wait_for(&mut events, |e| match e {
                Event::PeerExpired { remote, source, .. } if *remote == quiet_id && source == "mdns" => Some(()),
                _ => None,
            })
            .await;
            drop(to_quiet);
            p2p.shutdown().await;
            enabled_at.duration_since(std::time::UNIX_EPOCH).unwrap()
        })
        .join()
        .unwrap();
    quiet.join().unwrap();
    drop(sim);
    // The capture of the quiet host's interface: nothing from it before it was enabled.
    let bytes = std::fs::read(&path).unwrap();
    let packets = warren_netsim::pcap::read_packets(&bytes).expect("a pcap file");
    let from_quiet: Vec<_> = packets
        .iter()
        .filter_map(|(at, p)| warren_netsim::packet::Packet::parse(p.clone()).ok().map(|p| (*at, p)))
        .filter(|(_, p)| p.src() == quiet_ip)
        .collect();
    let received = packets.len() - from_quiet.len();
    assert!(received > 0, "the quiet host did hear the observer's announcements");
    let first_sent = from_quiet.first().map(|(at, _)| *at).expect("it spoke once enabled");
    assert!(
        first_sent >= enabled_at,
        "nothing sent while disabled: {:?} before it was enabled",
        enabled_at - first_sent
    );
    assert!(from_quiet.iter().any(|(_, p)| p.dst_port() == Some(5353)), "once enabled, it speaks mDNS");
    std::fs::remove_file(&path).unwrap();
}
