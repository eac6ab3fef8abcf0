//! LAN discovery in a warren-netsim LAN: three hosts on one simulated switch (multicast
//! forwarded), each running a node with mDNS discovery. Nodes find each other with no address
//! given, connect by identity alone, see metadata and library changes, and see a goodbye that
//! leaves what other sources vouch for.
//! Needs root (network namespaces).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::support::{HANG, wait_for};
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
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
    p2p.metadata_mut().insert(warren::node::NAME, name).unwrap();
    warren::ping::register(&p2p).unwrap();
    let quic = p2p.listen_quic(SocketAddr::from((ip, 0))).await.unwrap();
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
            let (p2p, mdns) = start(&name, ip, DiscoveryMode::Enabled).await;
            ids_tx.send((name, p2p.id())).unwrap();
            while let Some(command) = rx.recv().await {
                match command {
                    "rename" => {
                        // A name the hello allows but a TXT entry cannot hold (5 + 252 > 255
                        // bytes) is refused by discovery with a reason, never cut...
                        p2p.metadata_mut().insert(warren::node::NAME, "x".repeat(252)).unwrap();
                        let deadline = Instant::now() + HANG;
                        while mdns.last_error().is_none() {
                            assert!(Instant::now() < deadline, "the oversized name was not refused");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let error = mdns.last_error().unwrap();
                        assert!(error.contains("an entry holds 255"), "{error}");
                        // ...and a name that fits is announced again.
                        p2p.metadata_mut().insert(warren::node::NAME, "renamed").unwrap();
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
            let renamed = wait_for(&mut events, |e| {
                discovered(b)(e).filter(|m| m["name"] == "renamed" || m["name"].starts_with("xxx"))
            })
            .await;
            assert_eq!(renamed["name"], "renamed", "the oversized name never went out, the next one did");
            // So is a library.
            assert!(mdns.peers_in_library(&library).is_empty());
            commands[0].send("join").unwrap();
            let deadline = Instant::now() + HANG;
            while mdns.peers_in_library(&library) != vec![b] {
                assert!(Instant::now() < deadline, "the library was not announced");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // One peer, many sources: c is also known through a manual address.
            let manual: SocketAddr = "192.168.99.9:4000".parse().unwrap();
            p2p.discovered("manual", c, [manual], Default::default());
            let both = p2p.peer(&c).unwrap();
            assert!(both.addrs.len() >= 2, "one peer with the addresses of both sources: {:?}", both.addrs);
            // Goodbye: c shuts down and is expired by mDNS; the manual address stays.
            commands[1].send("stop").unwrap();
            let remaining = wait_for(&mut events, |e| match e {
                Event::PeerExpired { remote, source, remaining_addrs } if *remote == c && source == "mdns" => {
                    Some(remaining_addrs.clone())
                }
                _ => None,
            })
            .await;
            assert_eq!(remaining, vec![manual], "mDNS's goodbye keeps what manual discovery vouches for");
            let left = p2p.peer(&c).expect("still known through the manual source");
            assert_eq!(left.addrs.keys().copied().collect::<Vec<_>>(), vec![manual]);
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
        id_tx.send(p2p.id()).unwrap();
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
    let packets = warren_netsim::pcap::read_file(&path).expect("a capture of IPv4 packets");
    let from_quiet: Vec<_> = packets.iter().filter(|(_, p)| p.src() == quiet_ip).collect();
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

/// Appends a DNS name, uncompressed.
fn dns_name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Appends a resource record of class IN (with the cache-flush bit when `unique`).
fn dns_record(out: &mut Vec<u8>, name: &str, rtype: u16, unique: bool, rdata: &[u8]) {
    dns_name(out, name);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&(if unique { 0x8001u16 } else { 1 }).to_be_bytes());
    out.extend_from_slice(&120u32.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// One mDNS response announcing the services named `instances` (PTR, SRV, TXT, A each), as a
/// hostile host on the LAN would send them. Test-only: the implementation never writes mDNS.
fn fake_announcement(instances: &[String], ip: Ipv4Addr) -> Vec<u8> {
    let mut out = vec![0, 0, 0x84, 0, 0, 0];
    out.extend_from_slice(&((instances.len() * 4) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    for instance in instances {
        let full = format!("{instance}._warren._udp.local");
        let host = format!("{instance}.local");
        let mut ptr = Vec::new();
        dns_name(&mut ptr, &full);
        dns_record(&mut out, "_warren._udp.local", 12, false, &ptr);
        let mut srv = vec![0, 0, 0, 0, 0x1b, 0x58];
        dns_name(&mut srv, &host);
        dns_record(&mut out, &full, 33, true, &srv);
        dns_record(&mut out, &full, 16, true, b"\x09name=fake\x0aos=hostile");
        dns_record(&mut out, &host, 1, true, &ip.octets());
    }
    out
}

/// Garbage, malformed and oversized packets and a flood of 10,000 fake services from one host
/// of the LAN: no crash, the peer table stays under its cap, records whose names are not
/// identities are ignored, and a real node that comes up afterwards is still discovered.
#[test]
fn a_flood_of_fake_services_and_garbage_is_survived() {
    use warren::discovery::mdns::MAX_PEERS;
    let (_sim, hosts) = lan(3, None);
    let observer_ip = hosts[0].ip();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (flooded_tx, flooded) = tokio::sync::oneshot::channel::<()>();
    let (peer_tx, mut peer_rx) = mpsc::unbounded_channel::<RemoteIdentity>();
    let observer = hosts[0].spawn(move || async move {
        let (p2p, mdns) = start("observer", observer_ip, DiscoveryMode::Enabled).await;
        let mut events = p2p.subscribe();
        ready_tx.send(()).unwrap();
        flooded.await.unwrap();
        // Wait until the daemon has worked through the flood far enough to have ignored bad
        // names and evicted stale records.
        let deadline = Instant::now() + HANG;
        while mdns.ignored() == 0 || mdns.evicted() == 0 {
            assert!(Instant::now() < deadline, "the flood was never processed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (kept, ignored, evicted) = (mdns.peer_count(), mdns.ignored(), mdns.evicted());
        let known = p2p.peers().len();
        let real = peer_rx.recv().await.unwrap();
        wait_for(&mut events, discovered(real)).await;
        p2p.shutdown().await;
        (kept, ignored, evicted, known)
    });
    ready.recv().unwrap();
    let attacker_ip = hosts[2].ip();
    hosts[2]
        .spawn_sync(move || {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353)).unwrap();
            socket.set_multicast_ttl_v4(255).unwrap();
            let group = (Ipv4Addr::new(224, 0, 0, 251), 5353);
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut random = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            // Garbage of every size, a truncated header, a header promising 65,535 answers,
            // and an oversized (fragmented) packet.
            for i in 0..200 {
                let len = (random() % 1400) as usize + i % 2;
                let garbage: Vec<u8> = (0..len).map(|_| random() as u8).collect();
                socket.send_to(&garbage, group).unwrap();
            }
            socket.send_to(&[0, 0, 0x84, 0, 0], group).unwrap();
            socket.send_to(&[0, 0, 0x84, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0], group).unwrap();
            let mut huge = fake_announcement(&["x".repeat(63)], attacker_ip);
            huge.resize(9000, 0xee);
            socket.send_to(&huge, group).unwrap();
            // 10,000 fake services: most with valid identities as names, one in ten not.
            let names: Vec<String> = (0..10_000)
                .map(|i| {
                    if i % 10 == 0 {
                        format!("not-an-identity-{i}")
                    } else {
                        Identity::generate().to_remote_identity().to_string()
                    }
                })
                .collect();
            for chunk in names.chunks(5) {
                socket.send_to(&fake_announcement(chunk, attacker_ip), group).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
        })
        .join()
        .unwrap();
    flooded_tx.send(()).unwrap();
    // A real node comes up after the flood.
    let real_ip = hosts[1].ip();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let real = hosts[1].spawn(move || async move {
        let (p2p, _mdns) = start("real", real_ip, DiscoveryMode::Enabled).await;
        peer_tx.send(p2p.id()).unwrap();
        let _ = stop.await;
        p2p.shutdown().await;
    });
    let (kept, ignored, evicted, known) = observer.join().unwrap();
    stop_tx.send(()).unwrap();
    real.join().unwrap();
    eprintln!("flood: {kept} mDNS peers kept, {evicted} evicted, {ignored} records ignored, {known} peers known");
    assert!(kept <= MAX_PEERS, "{kept} peers kept, cap {MAX_PEERS}");
    assert!(known <= MAX_PEERS + 1, "the peer table stays bounded: {known}");
    assert!(ignored > 0, "names that are not identities were ignored and counted");
    assert!(evicted > 0, "the full table made room for newer records");
}

/// ContactsOnly: a stranger learns nothing (the records are keyed with secrets it does not
/// share; it cannot even tell whose), mutual contacts recognise each other and get the
/// metadata over their authenticated connection, and a one-sided contact does not find the
/// node (it announces itself only to its own contacts).
#[test]
fn contacts_only_reveals_nothing_to_strangers_and_metadata_to_mutual_contacts() {
    let (_sim, hosts) = lan(4, None);
    let secrets: Vec<[u8; 32]> = (0..4).map(|_| *Identity::generate().to_secret_bytes()).collect();
    let ids: Vec<RemoteIdentity> =
        secrets.iter().map(|s| Identity::from_secret_bytes(s).to_remote_identity()).collect();
    // a and b: ContactsOnly and each other's contact; c: a stranger; d: has a as a contact,
    // but a does not have d. With each: what it must come to see (peer, name) and how many
    // unreadable records it must have ignored; the negative checks below are made once a node
    // saw this and at least 3 s passed (what must not happen had time to).
    type Expect = (Vec<(usize, Option<&'static str>)>, u64);
    let plan: [(&str, DiscoveryMode, Vec<RemoteIdentity>, Expect); 4] = [
        ("a", DiscoveryMode::ContactsOnly, vec![ids[1]], (vec![(1, Some("b")), (2, Some("c"))], 0)),
        ("b", DiscoveryMode::ContactsOnly, vec![ids[0]], (vec![(0, Some("a"))], 0)),
        ("c", DiscoveryMode::Enabled, vec![], (vec![(3, Some("d"))], 2)),
        ("d", DiscoveryMode::Enabled, vec![ids[0]], (vec![], 0)),
    ];
    // Nobody leaves (and says goodbye) before everybody has looked.
    let all_seen = std::sync::Arc::new(tokio::sync::Barrier::new(plan.len()));
    let nodes: Vec<_> = hosts
        .iter()
        .zip(plan)
        .zip(secrets)
        .map(|((host, (name, mode, contacts, (expect, min_ignored))), secret)| {
            let (ip, ids, all_seen) = (host.ip(), ids.clone(), all_seen.clone());
            host.spawn(move || async move {
                let p2p = P2P::new("warren", Identity::from_secret_bytes(&secret));
                p2p.metadata_mut().insert(warren::node::NAME, name).unwrap();
                for contact in contacts {
                    p2p.add_contact(contact);
                }
                let quic = p2p.listen_quic(SocketAddr::from((ip, 0))).await.unwrap();
                let mdns = MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), mode);
                let started = Instant::now();
                let settled = || {
                    let name = |i: usize| p2p.peer(&ids[i]).map(|peer| peer.metadata.get("name").cloned());
                    expect.iter().all(|(i, want)| name(*i) == Some(want.map(str::to_owned)))
                        && mdns.ignored() >= min_ignored
                };
                while started.elapsed() < Duration::from_secs(3) || (!settled() && started.elapsed() < HANG) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let view: Vec<(RemoteIdentity, Option<String>)> = ids
                    .iter()
                    .filter_map(|id| p2p.peer(id).map(|peer| (*id, peer.metadata.get("name").cloned())))
                    .collect();
                let ignored = mdns.ignored();
                all_seen.wait().await;
                p2p.shutdown().await;
                (view, ignored)
            })
        })
        .collect();
    let results: Vec<_> = nodes.into_iter().map(|node| node.join().unwrap()).collect();
    let seen = |viewer: usize, peer: usize| {
        results[viewer].0.iter().find(|(id, _)| *id == ids[peer]).map(|(_, name)| name.clone())
    };
    assert_eq!(seen(0, 1), Some(Some("b".into())), "a recognised b and got its metadata");
    assert_eq!(seen(1, 0), Some(Some("a".into())), "b recognised a and got its metadata");
    assert_eq!(seen(2, 0), None, "the stranger does not know a");
    assert_eq!(seen(2, 1), None, "the stranger does not know b");
    assert!(results[2].1 >= 2, "the stranger saw two records it could not read: {}", results[2].1);
    // Issue 14, point 4: a announces itself only to its own contacts, so d (which lists a, but
    // whom a does not list) cannot recognise a's records at all (before: d found a).
    assert_eq!(seen(3, 0), None, "a one-sided contact does not find a");
    assert_eq!(seen(3, 1), None, "d does not know b");
    assert_eq!(seen(2, 3), Some(Some("d".into())), "Enabled nodes see each other as before");
    assert_eq!(seen(0, 2), Some(Some("c".into())), "a ContactsOnly node still sees public records");
}

/// Issue 14, point 4: the tag was keyed with the announcer's public key and a clear salt, so
/// anyone who knew the key recognised the device in every session. Now it is keyed with the
/// secret the announcer shares with one contact: the contact computes it, a third party who
/// knows both public keys gets another tag, and the announcer's own record is not taken for
/// the contact's.
#[test]
fn a_contacts_only_tag_is_for_one_contact_and_unlinkable_across_salts() {
    use warren::discovery::mdns::contact_tag;
    let (alice, bob, mallory) = (Identity::generate(), Identity::generate(), Identity::generate());
    let (a, b) = (alice.to_remote_identity(), bob.to_remote_identity());
    // Alice announces herself to Bob.
    let tag = contact_tag(&alice.contact_secret(&b), &a, b"salt-one!!");
    assert_eq!(tag, contact_tag(&bob.contact_secret(&a), &a, b"salt-one!!"), "Bob recomputes it");
    assert_ne!(tag, contact_tag(&alice.contact_secret(&b), &a, b"salt-two!!"), "another session, another tag");
    assert_ne!(tag, contact_tag(&mallory.contact_secret(&a), &a, b"salt-one!!"), "a stranger cannot");
    assert_ne!(tag, contact_tag(&mallory.contact_secret(&b), &a, b"salt-one!!"), "not even one who knows both keys");
    assert_ne!(tag, contact_tag(&bob.contact_secret(&a), &b, b"salt-one!!"), "Bob's record for Alice differs");
    assert_eq!(tag.len(), 26);
    assert!(!tag.contains(&a.to_string()[..8]), "the tag is not a prefix of the identity");
}

/// Candidates that name their transport, on the LAN: a node with QUIC and TCP announces its TCP
/// port in TXT (`tcp=PORT`); a node that has only TCP finds it, knows the TCP candidate, and
/// connects to it by identity over TCP.
#[test]
fn a_tcp_listener_is_announced_and_a_tcp_only_peer_connects_by_identity() {
    let (_sim, hosts) = lan(2, None);
    let (id_tx, id_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ip0 = Ipv4Addr::new(192, 168, 5, 10);
    let both = hosts[0].spawn(move || async move {
        let p2p = P2P::new("warren", Identity::generate());
        warren::ping::register(&p2p).unwrap();
        let quic = p2p.listen_quic(SocketAddr::from((ip0, 0))).await.unwrap();
        let tcp = p2p.listen_tcp(SocketAddr::from((ip0, 0))).await.unwrap();
        let mdns = MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
        id_tx.send((p2p.id(), tcp.local_addr())).unwrap();
        let _ = stop_rx.await;
        drop(mdns);
        p2p.shutdown().await;
    });
    let (id, tcp_addr) = id_rx.recv().unwrap();
    let ip1 = Ipv4Addr::new(192, 168, 5, 11);
    let tcp_only = hosts[1].spawn(move || async move {
        let p2p = P2P::new("warren", Identity::generate());
        let tcp = p2p.listen_tcp(SocketAddr::from((ip1, 0))).await.unwrap();
        let mut events = p2p.subscribe();
        let _mdns = MdnsDiscovery::spawn(&p2p, tcp.local_addr().port(), DiscoveryMode::Enabled);
        wait_for(&mut events, discovered(id)).await;
        let candidates = p2p.peer(&id).unwrap().addresses_on("tcp");
        let rtts = tokio::time::timeout(HANG, warren::ping::ping(&p2p, id, 2)).await.expect("ping ended");
        let transport = p2p.open_connection(&id).map(|c| c.transport_name());
        p2p.shutdown().await;
        (candidates, rtts.map(|r| r.len()).map_err(|e| e.to_string()), transport)
    });
    let (candidates, pinged, transport) = tcp_only.join().unwrap();
    let _ = stop_tx.send(());
    both.join().unwrap();
    assert_eq!(candidates, vec![tcp_addr]);
    assert_eq!(pinged, Ok(2));
    assert_eq!(transport, Some("tcp"));
}
