//! `warren demo`: the README's main job. Two nodes in one process, connected by identity over
//! loopback: pings both ways, a bulk stream, an impostor and an unknown protocol refused, and a
//! clean shutdown; then the same across a simulated internet (warren-netsim: a node behind a
//! home NAT reaching a public node over a 100 ms, 1 %-loss path) and on a simulated LAN (nodes
//! finding each other over mDNS with no address given), with a summary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::transport::quic::QuicTransport;
use warren::{ConnectError, Event, Identity, P2P};

use crate::output::{json_line, ms, short};
use crate::sink::{SINK, send_to_sink, sink};

#[derive(Args)]
pub struct DemoArgs {
    /// Bytes to stream from alice to bob.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    bytes: u64,
    /// Bytes to send across the simulated internet (100 ms RTT, 1 % loss).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    netsim_bytes: u64,
    /// Print one JSON object with the results instead of the story.
    #[arg(long)]
    json: bool,
}

async fn start(name: &str, listen: SocketAddr) -> anyhow::Result<(P2P, QuicTransport)> {
    let p2p = P2P::new("warren-demo", Identity::generate());
    p2p.metadata_mut().insert(warren::node::NAME, name)?;
    warren::ping::register(&p2p)?;
    p2p.register_protocol(SINK, sink)?;
    let quic = p2p.listen_quic(listen).await?;
    Ok((p2p, quic))
}

const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// What the simulated-internet chapter measured.
struct AcrossNat {
    seen_at: SocketAddr,
    connect: Duration,
    rtts: Vec<Duration>,
    bytes: u64,
    transfer: Duration,
    lost: u64,
}

/// One dial of the NAT chapter.
struct NatDial {
    from: &'static str,
    to: &'static str,
    dialled: crate::nat_matrix::Dialled,
}

/// A relay on the internet; alice behind a port-restricted home NAT, bob behind a full-cone
/// one, carol behind a symmetric NAT. Each registers with the relay; bob dials alice, carol
/// dials alice and then bob, by identity alone. 25 ms from each NAT to the relay, 50 ms
/// between NATs.
fn across_nats() -> anyhow::Result<Vec<NatDial>> {
    use warren_netsim::link::LinkConfig;
    use warren_netsim::nat::NatPreset;
    let relay_ip = Ipv4Addr::new(198, 51, 100, 1);
    let mut sim = warren_netsim::Simulation::new(2027);
    let relay_host = sim.add_host("relay", relay_ip, 24)?;
    let latency = |ms| LinkConfig { latency: Duration::from_millis(ms), ..Default::default() };
    let mut homes = Vec::new();
    for (i, (name, preset)) in
        [("alice", NatPreset::PortRestricted), ("bob", NatPreset::FullCone), ("carol", NatPreset::Symmetric)]
            .into_iter()
            .enumerate()
    {
        let public = Ipv4Addr::new(203, 0, 113, 1 + i as u8);
        let nat = sim.add_nat(&format!("{name}-nat"), preset.configs(&[public]).remove(0), None)?;
        let host = sim.add_host_behind(name, Ipv4Addr::new(192, 168, 1, 2), 24, &nat)?;
        sim.link(&host, &nat, latency(1));
        sim.link(&nat, &relay_host, latency(25));
        homes.push((host, nat));
    }
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        sim.link(&homes[i].1, &homes[j].1, latency(50));
    }
    sim.start()?;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (relay, relay_task) = crate::demo_transfer::spawn_relay(&relay_host, relay_ip, stop.clone())?;
    // Alice and bob wait to be dialled (bob dials alice first); carol dials both.
    let (ids_tx, ids) = std::sync::mpsc::channel();
    let mut tasks = Vec::new();
    for (index, (host, _)) in homes.iter().enumerate().take(2) {
        let (ids_tx, mut stop, relay) = (ids_tx.clone(), stop.clone(), relay.clone());
        tasks.push(host.spawn(move || async move {
            let (p2p, _) = crate::nat_matrix::node(relay).await?;
            ids_tx.send((index, p2p.id()))?;
            let _ = stop.wait_for(|s| *s).await;
            p2p.shutdown().await;
            anyhow::Ok(())
        }));
    }
    let mut known = [None, None];
    for _ in 0..2 {
        let (index, id) = ids.recv()?;
        known[index] = Some(id);
    }
    let [Some(alice), Some(bob)] = known else { anyhow::bail!("a node did not start") };
    let bob_dials = homes[1].0.spawn({
        let relay = relay.clone();
        move || async move {
            let (p2p, _) = crate::nat_matrix::node(relay).await?;
            let dialled = crate::nat_matrix::dial(&p2p, alice).await;
            p2p.shutdown().await;
            dialled
        }
    });
    let bob_to_alice = bob_dials.join().map_err(|_| anyhow::anyhow!("bob panicked"))?;
    let carol_dials = homes[2].0.spawn(move || async move {
        let (p2p, _) = crate::nat_matrix::node(relay).await?;
        let to_alice = crate::nat_matrix::dial(&p2p, alice).await;
        let to_bob = crate::nat_matrix::dial(&p2p, bob).await;
        p2p.shutdown().await;
        anyhow::Ok((to_alice?, to_bob?))
    });
    let carol = carol_dials.join().map_err(|_| anyhow::anyhow!("carol panicked"))?;
    let _ = stop_tx.send(true);
    for task in tasks {
        task.join().map_err(|_| anyhow::anyhow!("a node panicked"))??;
    }
    let _ = relay_task.join();
    let (carol_to_alice, carol_to_bob) = carol?;
    Ok(vec![
        NatDial { from: "bob", to: "alice", dialled: bob_to_alice? },
        NatDial { from: "carol", to: "alice", dialled: carol_to_alice },
        NatDial { from: "carol", to: "bob", dialled: carol_to_bob },
    ])
}

/// One probe of the router-probing chapter: the NAT's name, what it was configured as, what
/// the probe found.
struct ProbedNat {
    name: &'static str,
    configured: (warren_probe::report::Behaviour, warren_probe::report::Behaviour),
    found: warren_probe::client::ProbeResult,
}

/// An RFC 5780 server with two addresses on the simulated internet; three homes behind a
/// full-cone, a port-restricted and a symmetric NAT probe it and submit their reports; the
/// server's catalogue counts them.
fn probe_routers() -> anyhow::Result<(Vec<ProbedNat>, warren_probe::catalog::Catalog)> {
    use warren_netsim::link::LinkConfig;
    use warren_netsim::nat::NatPreset;
    use warren_probe::report::Behaviour as B;
    let (primary, alternate) = (Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(198, 51, 100, 2));
    let mut sim = warren_netsim::Simulation::new(2028);
    let server = sim.add_host("probe-server", primary, 24)?;
    sim.add_address(&server, alternate)?;
    let latency = LinkConfig { latency: Duration::from_millis(10), ..Default::default() };
    let homes = [
        ("full cone", NatPreset::FullCone, (B::EndpointIndependent, B::EndpointIndependent)),
        ("port-restricted", NatPreset::PortRestricted, (B::EndpointIndependent, B::AddressAndPortDependent)),
        ("symmetric", NatPreset::Symmetric, (B::AddressAndPortDependent, B::AddressAndPortDependent)),
    ];
    let mut hosts = Vec::new();
    for (i, (name, preset, configured)) in homes.into_iter().enumerate() {
        let public = Ipv4Addr::new(203, 0, 113, 10 + i as u8);
        let nat = sim.add_nat(&format!("nat-{i}"), preset.configs(&[public]).remove(0), None)?;
        let host = sim.add_host_behind(&format!("home-{i}"), Ipv4Addr::new(192, 168, 1, 2), 24, &nat)?;
        sim.link(&host, &nat, LinkConfig { latency: Duration::from_millis(1), ..Default::default() });
        sim.link(&nat, &server, latency.clone());
        hosts.push((name, configured, host));
    }
    sim.start()?;
    let dir = std::env::temp_dir().join(format!("warren-demo-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("reports.db");
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let server_db = db.clone();
    let server_task = server.spawn(move || async move {
        let config = warren_probe::server::ServerConfig {
            primary: SocketAddr::from((primary, 3478)),
            alternate: SocketAddr::from((alternate, 3479)),
            db: Some(server_db),
        };
        match warren_probe::server::ProbeServer::spawn(config).await {
            Ok(server) => {
                let _ = ready_tx.send(Ok(()));
                let _ = stop.await;
                server.shutdown().await;
            }
            Err(error) => {
                let _ = ready_tx.send(Err(error.to_string()));
            }
        }
    });
    ready.recv()?.map_err(|e| anyhow::anyhow!("probe server: {e}"))?;
    let probes: Vec<_> = hosts
        .into_iter()
        .map(|(name, configured, host)| {
            let task = host.spawn(move || async move {
                let mut opts = warren_probe::client::ProbeOptions::new(SocketAddr::from((primary, 3478)));
                opts.timeout = Duration::from_millis(100);
                let found = warren_probe::client::probe(&opts, |_| {}).await?;
                warren_probe::client::submit(opts.server, &found.report(false))
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                anyhow::Ok(found)
            });
            (name, configured, task)
        })
        .collect();
    let mut probed = Vec::new();
    for (name, configured, task) in probes {
        let found = task.join().map_err(|_| anyhow::anyhow!("a probe panicked"))??;
        probed.push(ProbedNat { name, configured, found });
    }
    let _ = stop_tx.send(());
    let _ = server_task.join();
    let catalog = warren_probe::catalog::Store::open_read_only(&db)?.catalog()?;
    std::fs::remove_dir_all(&dir)?;
    Ok((probed, catalog))
}

/// What the LAN chapter measured.
struct OnLan {
    found_in: Duration,
    name: String,
    addrs: Vec<SocketAddr>,
    rtts: Vec<Duration>,
}

/// Two nodes on a simulated LAN (one switch, 1 ms links) with mDNS discovery: the second finds
/// the first with no address given and pings it by identity alone.
fn on_lan() -> anyhow::Result<OnLan> {
    use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
    let mut sim = warren_netsim::Simulation::new(7);
    let switch = sim.add_switch("lan", None)?;
    let (desk_ip, laptop_ip) = (Ipv4Addr::new(192, 168, 1, 10), Ipv4Addr::new(192, 168, 1, 11));
    let desk = sim.add_host_behind("desk", desk_ip, 24, &switch)?;
    let laptop = sim.add_host_behind("laptop", laptop_ip, 24, &switch)?;
    for host in [&desk, &laptop] {
        let link = warren_netsim::link::LinkConfig { latency: Duration::from_millis(1), ..Default::default() };
        sim.link(host, &switch, link);
    }
    sim.start()?;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    let desk_task = desk.spawn(move || async move {
        let (p2p, quic) = start("desk", SocketAddr::from((desk_ip, 0))).await?;
        MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
        ready_tx.send(p2p.id()).map_err(|_| anyhow::anyhow!("the demo stopped"))?;
        let _ = done.await;
        p2p.shutdown().await;
        anyhow::Ok(())
    });
    let desk_id = ready.recv().map_err(|_| anyhow::anyhow!("the desk node did not start"))?;
    let laptop_task = laptop.spawn(move || async move {
        let started = Instant::now();
        let (p2p, quic) = start("laptop", SocketAddr::from((laptop_ip, 0))).await?;
        let mut events = p2p.subscribe();
        MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
        let (name, addrs) = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(Event::PeerDiscovered { remote, metadata, addrs, .. }) = events.recv().await {
                    if remote == desk_id {
                        break (metadata.get("name").cloned().unwrap_or_default(), addrs);
                    }
                }
            }
        })
        .await?;
        let found_in = started.elapsed();
        let rtts = warren::ping::ping(&p2p, desk_id, 3).await?;
        p2p.shutdown().await;
        anyhow::Ok(OnLan { found_in, name, addrs, rtts })
    });
    let story = laptop_task.join().map_err(|_| anyhow::anyhow!("the laptop node panicked"))?;
    let _ = done_tx.send(());
    desk_task.join().map_err(|_| anyhow::anyhow!("the desk node panicked"))??;
    story
}

/// A public node on a simulated internet and a node behind a port-restricted home NAT, 50 ms
/// each way with 1 % loss: the home node connects by identity, pings, and sends `bytes`.
fn across_nat(bytes: u64) -> anyhow::Result<AcrossNat> {
    use warren_netsim::link::{LinkConfig, Loss};
    use warren_netsim::nat::NatPreset;
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const HOME_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    let mut sim = warren_netsim::Simulation::new(2026);
    let nat = sim.add_nat("home-nat", NatPreset::PortRestricted.configs(&[HOME_PUBLIC]).remove(0), None)?;
    let home = sim.add_host_behind("home", Ipv4Addr::new(192, 168, 1, 2), 24, &nat)?;
    let server = sim.add_host("server", SERVER, 24)?;
    sim.link(&home, &nat, LinkConfig { latency: Duration::from_millis(1), ..Default::default() });
    let wan = LinkConfig { latency: Duration::from_millis(49), loss: Loss::Random(0.01), ..Default::default() };
    sim.link(&nat, &server, wan);
    sim.start()?;

    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    let server_task = server.spawn(move || async move {
        let (p2p, _quic) = start("server", SocketAddr::from((SERVER, 7000))).await?;
        let mut events = p2p.subscribe();
        ready_tx.send(p2p.id()).map_err(|_| anyhow::anyhow!("the demo stopped"))?;
        let seen_at = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(Event::PeerConnected { addr, .. }) = events.recv().await {
                    break addr;
                }
            }
        })
        .await?;
        let _ = done.await;
        p2p.shutdown().await;
        anyhow::Ok(seen_at)
    });
    let server_id = ready.recv().map_err(|_| anyhow::anyhow!("the public node did not start"))?;
    let home_task = home.spawn(move || async move {
        let (p2p, _quic) = start("home", SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
        p2p.discovered("demo", server_id, [SocketAddr::from((SERVER, 7000))], Default::default());
        let started = Instant::now();
        let conn = p2p.connection(server_id).await?;
        let connect = started.elapsed();
        let rtts = warren::ping::ping(&p2p, server_id, 5).await?;
        let mut halves = p2p.connect(server_id, SINK).await?.into_split();
        let started = Instant::now();
        let received = send_to_sink(&mut halves, bytes).await?;
        let transfer = started.elapsed();
        anyhow::ensure!(received == bytes, "the server counted {received} bytes of {bytes}");
        drop((halves, conn));
        p2p.shutdown().await;
        anyhow::Ok((connect, rtts, transfer))
    });
    let home_result = home_task.join().map_err(|_| anyhow::anyhow!("the home node panicked"))?;
    let _ = done_tx.send(());
    let seen_at = server_task.join().map_err(|_| anyhow::anyhow!("the public node panicked"))??;
    let (connect, rtts, transfer) = home_result?;
    let lost = sim.link_stats().iter().filter(|((from, _), _)| from != "home").map(|(_, s)| s.lost).sum();
    Ok(AcrossNat { seen_at, connect, rtts, bytes, transfer, lost })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    say("warren demo: two nodes in one process, talking over loopback QUIC\n".into());
    let (alice, alice_quic) = start("alice", LOOPBACK).await?;
    let (bob, bob_quic) = start("bob", LOOPBACK).await?;
    let mut bob_events = bob.subscribe();
    for (name, node, quic) in [("alice", &alice, &alice_quic), ("bob", &bob, &bob_quic)] {
        say(format!("  {name:<5} {}  listening on {}", node.id(), quic.local_addr()));
    }

    say("\n1. alice connects to bob by his identity (his address given by hand, like --peer)".into());
    let bob_id = bob.id();
    alice.discovered("demo", bob_id, [bob_quic.local_addr()], Default::default());
    let started = Instant::now();
    let conn = alice.connection(bob_id).await?;
    let connect_time = started.elapsed();
    let meta = conn.remote_metadata();
    let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
    say(format!(
        "   connected in {} ms; TLS 1.3 with both identities verified; bob's hello (sent once alice was verified; OS and device model opt-in): name={} version={} protocols={:?}",
        ms(connect_time),
        get("name"),
        get("version"),
        conn.remote_protocols()
    ));
    let alice_seen_by_bob = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::PeerConnected { remote, .. }) = bob_events.recv().await {
                break remote;
            }
        }
    })
    .await?;
    say(format!("   bob's side: PeerConnected from {}… (learned from the handshake)", short(&alice_seen_by_bob)));

    say("\n2. alice pings bob".into());
    let there = warren::ping::ping(&alice, bob_id, 5).await?;
    say(format!("   5 round trips: {:?} ms", there.iter().map(|d| ms(*d)).collect::<Vec<_>>()));
    say("   bob pings alice back over the same connection (he never learned her address)".into());
    let back = warren::ping::ping(&bob, alice.id(), 5).await?;
    say(format!("   5 round trips: {:?} ms", back.iter().map(|d| ms(*d)).collect::<Vec<_>>()));

    say(format!("\n3. alice streams {} MiB to bob on one stream", args.bytes / (1024 * 1024)));
    let mut halves = alice.connect(bob_id, SINK).await?.into_split();
    let started = Instant::now();
    let received = send_to_sink(&mut halves, args.bytes).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(received == args.bytes, "bob counted {received} bytes, alice sent {}", args.bytes);
    let gbps = args.bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9;
    say(format!("   bob confirms {received} bytes in {} ms: {gbps:.2} Gbit/s", ms(elapsed)));

    say("\n4. someone dials bob's address expecting carol".into());
    let carol = Identity::generate().to_remote_identity();
    let impostor = alice.dial(bob_quic.local_addr(), Some(carol)).await;
    let impostor_refused = matches!(impostor, Err(ConnectError::WrongIdentity { .. }));
    say(format!("   refused: {}", impostor.err().map(|e| e.to_string()).unwrap_or_else(|| "NOT REFUSED".into())));
    anyhow::ensure!(impostor_refused, "dialling the wrong identity was not refused");

    say("\n5. alice asks bob for a protocol he does not speak".into());
    let mut chat = alice.connect(bob_id, "chat/9").await?;
    // Bob's refusal ends the stream both ways: it shows on the write if it is already in (the
    // machine was slow to get here), else on the read.
    let unknown = match chat.write_all(b"hi bob").await {
        Ok(()) => chat.read_u8().await,
        Err(refused) => Err(refused),
    };
    let unknown_refused = unknown.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::Unsupported);
    say(format!("   refused: {}", unknown.err().map(|e| e.to_string()).unwrap_or_else(|| "NOT REFUSED".into())));
    anyhow::ensure!(unknown_refused, "an unknown protocol was not refused");

    drop((halves, chat, conn));
    let started = Instant::now();
    alice.shutdown().await;
    bob.shutdown().await;
    let shutdown_time = started.elapsed();
    say(format!("\n6. both nodes shut down in {} ms, every task finished", ms(shutdown_time)));

    say("\n7. across a simulated internet (warren-netsim): a node behind a port-restricted home NAT".into());
    say("   reaches a public node by identity over 50 ms each way with 1 % loss".into());
    let netsim_bytes = args.netsim_bytes;
    let netsim = tokio::task::spawn_blocking(move || across_nat(netsim_bytes)).await?;
    let netsim = outcome(&say, "   ", netsim, |story| {
        say(format!(
            "   connected in {} ms; the public node sees it at {} (the NAT's address)",
            ms(story.connect),
            story.seen_at
        ));
        say(format!("   5 round trips: {:?} ms", story.rtts.iter().map(|d| ms(*d)).collect::<Vec<_>>()));
        say(format!(
            "   {} KiB sent in {} ms through the lossy path ({} packets lost on the way, resent by QUIC)",
            story.bytes / 1024,
            ms(story.transfer),
            story.lost
        ));
    });

    say("\n8. on a simulated LAN (one switch): a laptop finds a desk node over mDNS, no address given".into());
    let lan = outcome(&say, "   ", tokio::task::spawn_blocking(on_lan).await?, |story| {
        say(format!(
            "   found \"{}\" at {} {} ms after starting, then pinged it by identity alone: {:?} ms",
            story.name,
            story.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
            ms(story.found_in),
            story.rtts.iter().map(|d| ms(*d)).collect::<Vec<_>>()
        ));
    });

    say("\n9. across NATs by identity alone: a relay on the simulated internet; alice behind a".into());
    say("   port-restricted home NAT, bob behind a full-cone one, carol behind a symmetric NAT".into());
    let nats = outcome(&say, "   ", tokio::task::spawn_blocking(across_nats).await?, |dials| {
        for NatDial { from, to, dialled } in dials {
            let punched = match dialled.punch {
                Some((addr, punch_ms)) => format!(
                    "hole punched in {punch_ms} ms ({}, {} datagrams): now direct to {addr}",
                    dialled.method.map_or("found by the peer", |m| m.name()),
                    dialled.packets
                ),
                None => format!("no hole after {} rounds of punches: stays relayed", dialled.rounds),
            };
            say(format!("   {from} -> {to}: first byte after {} ms through the relay; {punched}", ms(dialled.ttfb)));
        }
    });

    say("\n10. router probing: three homes behind a full-cone, a port-restricted and a symmetric NAT run".into());
    say("    the RFC 5780 tests against a probe server with two addresses and submit their reports".into());
    let probing = outcome(&say, "    ", tokio::task::spawn_blocking(probe_routers).await?, |(probed, catalog)| {
        for p in probed {
            let name = |b: Option<warren_probe::report::Behaviour>| b.map_or("not measured", |b| b.name());
            say(format!(
                "    {:<16} mapping {}, filtering {}, hairpinning {}, port {}",
                p.name,
                name(p.found.findings.mapping),
                name(p.found.findings.filtering),
                if p.found.findings.hairpin == Some(true) { "yes" } else { "no" },
                if p.found.findings.port_preserved == Some(true) { "kept" } else { "changed" },
            ));
        }
        say(format!("    the server's catalogue now counts {} reports", catalog.reports));
    });

    say("\n11. a folder across the NATs, resumed: alice sends 4 files (16 MiB) from behind her".into());
    say("    port-restricted NAT; bob's `warren receive` is killed with SIGKILL a third of the way".into());
    say("    and started again (1 % loss on every link)".into());
    let transfer = outcome(
        &say,
        "    ",
        tokio::task::spawn_blocking(|| {
            let dir = crate::demo_transfer::scratch();
            let story = crate::demo_transfer::across_nats(&dir, 12 << 20, true);
            let _ = std::fs::remove_dir_all(&dir);
            story
        })
        .await?,
        |story| {
            say(format!(
                "    killed at {} KiB verified; the second run found {} KiB verified on disk, fetched the other {} KiB in {} ms,",
                story.killed_at / 1024,
                story.kept / 1024,
                story.fetched / 1024,
                ms(story.resume)
            ));
            say(format!(
                "    and the {} files ({} KiB) arrived whole, each 16 KiB checked against the ticket's hash (relayed, then direct once the hole was punched)",
                story.files,
                story.bytes / 1024,
            ));
            say(format!(
                "    the path went direct mid-transfer: {} KiB of groups had been served, {} KiB followed directly",
                story.punch.served_at / 1024,
                (story.punch.served_total - story.punch.served_at) / 1024
            ));
        },
    );

    say("\n12. a library on the LAN: the desk invites by code, eve (a LAN neighbour) answers for the".into());
    say("    code's number too, the laptop joins, opens a tunnel, is revoked, and is refused".into());
    let json = args.json;
    let library = outcome(&say, "    ", quiet_unless_text(json, crate::demo_library::run).await?, |story| {
        say(format!("    eve was tried first and failed: {}", story.eve_saw));
        say(format!(
            "    the laptop joined in {} ms (mDNS included); it lists the desk as {}",
            ms(story.joined_in),
            story.desk_source
        ));
        say(format!("    revoked, its next tunnel was refused: {}", story.refused));
        say(format!(
            "    the desk's handler was handed {} bytes in all: the {} of the member's tunnel, none after",
            story.handler_bytes, story.member_bytes
        ));
    });

    say("\n13. pairing through a hostile relay, across two NATs: its operator's node answers for the".into());
    say("    code's number first, and the relay flips bits for a while; only the desk can grant".into());
    let relay_pairing =
        outcome(&say, "    ", quiet_unless_text(json, crate::demo_relay_pairing::run).await?, |story| {
            say(format!("    the operator's node was tried and failed: {}", story.mallory_saw));
        });

    let avg = |rtts: &[Duration]| ms(rtts.iter().sum::<Duration>() / rtts.len() as u32);
    if args.json {
        json_line(&serde_json::json!({
            "alice": alice.id(),
            "bob": bob_id,
            "connect_ms": ms(connect_time),
            "ping_alice_to_bob_avg_ms": avg(&there),
            "ping_bob_to_alice_avg_ms": avg(&back),
            "stream_bytes": args.bytes,
            "stream_gbps": gbps,
            "wrong_identity_refused": impostor_refused,
            "unknown_protocol_refused": unknown_refused,
            "shutdown_ms": ms(shutdown_time),
            "netsim": match &netsim {
                Ok(story) => serde_json::json!({
                    "seen_at": story.seen_at,
                    "connect_ms": ms(story.connect),
                    "ping_avg_ms": avg(&story.rtts),
                    "bytes": story.bytes,
                    "transfer_ms": ms(story.transfer),
                    "lost_packets": story.lost,
                }),
                Err(error) => serde_json::json!({ "error": error }),
            },
            "nats": match &nats {
                Ok(dials) => serde_json::json!(dials.iter().map(|d| serde_json::json!({
                    "from": d.from,
                    "to": d.to,
                    "ttfb_ms": ms(d.dialled.ttfb),
                    "path": d.dialled.path,
                    "punch_ms": d.dialled.punch.map(|(_, ms)| ms),
                    "punch_rounds": d.dialled.rounds,
                })).collect::<Vec<_>>()),
                Err(error) => serde_json::json!({ "error": error }),
            },
            "probing": match &probing {
                Ok((probed, catalog)) => serde_json::json!({
                    "probes": probed.iter().map(|p| serde_json::json!({ "nat": p.name, "result": p.found })).collect::<Vec<_>>(),
                    "catalog": catalog,
                }),
                Err(error) => serde_json::json!({ "error": error }),
            },
            "transfer": match &transfer {
                Ok(story) => serde_json::json!({
                    "files": story.files,
                    "bytes": story.bytes,
                    "killed_at": story.killed_at,
                    "kept": story.kept,
                    "fetched": story.fetched,
                    "resume_ms": ms(story.resume),
                    // `across_nats` fails unless the path went direct mid-transfer.
                    "punched": true,
                    "served_at_punch": story.punch.served_at,
                }),
                Err(error) => serde_json::json!({ "error": error }),
            },
            "library": match &library {
                Ok(story) => serde_json::json!({
                    "joined_ms": ms(story.joined_in),
                    "eve_saw": story.eve_saw,
                    "refused": story.refused,
                    "handler_bytes": story.handler_bytes,
                    "member_bytes": story.member_bytes,
                    "desk_source": story.desk_source,
                }),
                Err(error) => serde_json::json!({ "error": error }),
            },
            "relay_pairing": match &relay_pairing {
                Ok(story) => serde_json::json!({
                    "joined_ms": ms(story.joined_in),
                    "role": story.role,
                    "tampered": story.tampered,
                    "hidden": story.hidden,
                    "operator_saw": story.mallory_saw,
                    "listed": story.listed.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "listed_after_close": story.listed_after.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
                Err(error) => serde_json::json!({ "error": error }),
            },
            "lan": match &lan {
                Ok(story) => serde_json::json!({
                    "found_ms": ms(story.found_in),
                    "name": story.name,
                    "addrs": story.addrs,
                    "ping_avg_ms": avg(&story.rtts),
                }),
                Err(error) => serde_json::json!({ "error": error }),
            },
        }));
    } else {
        println!("\nsummary");
        println!("  connect by identity   {} ms", ms(connect_time));
        println!("  ping alice -> bob     {} ms average", avg(&there));
        println!("  ping bob -> alice     {} ms average", avg(&back));
        println!("  stream                {gbps:.2} Gbit/s ({} MiB)", args.bytes / (1024 * 1024));
        println!("  wrong identity        refused");
        println!("  unknown protocol      refused");
        println!("  shutdown              {} ms", ms(shutdown_time));
        match &netsim {
            Ok(story) => println!(
                "  behind a NAT          connect {} ms, ping {} ms average, {} KiB in {} ms",
                ms(story.connect),
                avg(&story.rtts),
                story.bytes / 1024,
                ms(story.transfer)
            ),
            Err(error) => println!("  behind a NAT          not run: {error}"),
        }
        match &nats {
            Ok(dials) => {
                for NatDial { from, to, dialled } in dials {
                    println!(
                        "  {:<21} first byte {} ms, {}",
                        format!("{from} -> {to}"),
                        ms(dialled.ttfb),
                        match dialled.punch {
                            Some((_, punch_ms)) => format!("direct after {punch_ms} ms"),
                            None => "relayed".into(),
                        }
                    );
                }
            }
            Err(error) => println!("  across NATs           not run: {error}"),
        }
        match &probing {
            Ok((probed, _)) => println!(
                "  router probing        {} NATs classified as configured, {} reports catalogued",
                probed
                    .iter()
                    .filter(|p| (p.found.findings.mapping, p.found.findings.filtering)
                        == (Some(p.configured.0), Some(p.configured.1)))
                    .count(),
                probed.len()
            ),
            Err(error) => println!("  router probing        not run: {error}"),
        }
        match &lan {
            Ok(story) => println!(
                "  LAN discovery         found in {} ms, ping {} ms average",
                ms(story.found_in),
                avg(&story.rtts)
            ),
            Err(error) => println!("  LAN discovery         not run: {error}"),
        }
        match &transfer {
            Ok(story) => println!(
                "  folder across NATs    killed at {} KiB, resumed with {} KiB kept, {} KiB fetched",
                story.killed_at / 1024,
                story.kept / 1024,
                story.fetched / 1024
            ),
            Err(error) => println!("  folder across NATs    not run: {error}"),
        }
        match &library {
            Ok(story) => println!(
                "  library on the LAN    joined in {} ms past eve; revoked laptop refused, {} bytes after",
                ms(story.joined_in),
                story.handler_bytes - story.member_bytes
            ),
            Err(error) => println!("  library on the LAN    not run: {error}"),
        }
        match &relay_pairing {
            Ok(story) => println!(
                "  pairing via relay     joined in {} ms past the operator's node; tampering refused with an error",
                ms(story.joined_in)
            ),
            Err(error) => println!("  pairing via relay     not run: {error}"),
        }
    }
    // The simulator needs root; everything else ran. Say so plainly and fail.
    if let Err(error) = netsim {
        anyhow::bail!("the simulated-internet chapter could not run: {error}");
    }
    if let Err(error) = lan {
        anyhow::bail!("the LAN chapter could not run: {error}");
    }
    if let Err(error) = transfer {
        anyhow::bail!("the transfer chapter could not run: {error}");
    }
    match library {
        Err(error) => anyhow::bail!("the library chapter could not run: {error}"),
        Ok(story) => story.check()?,
    }
    match relay_pairing {
        Err(error) => anyhow::bail!("the relay pairing chapter could not run: {error}"),
        Ok(story) => story.check()?,
    }
    match probing {
        Err(error) => anyhow::bail!("the router-probing chapter could not run: {error}"),
        Ok((probed, catalog)) => {
            for p in &probed {
                let found = (p.found.findings.mapping, p.found.findings.filtering);
                anyhow::ensure!(
                    found == (Some(p.configured.0), Some(p.configured.1)),
                    "the probe classified the {} NAT as {found:?}",
                    p.name
                );
            }
            anyhow::ensure!(catalog.reports == probed.len() as u64, "the catalogue lost reports");
        }
    }
    match nats {
        Err(error) => anyhow::bail!("the NAT chapter could not run: {error}"),
        // Every pair goes direct: bob -> alice and carol -> bob by a punch round, carol
        // (symmetric, random ports) -> alice (port-restricted), which theory says stays
        // relayed, by birthday probing.
        Ok(dials) => {
            let direct: Vec<bool> =
                dials.iter().map(|d| matches!(d.dialled.path, warren::transport::paths::Path::Direct { .. })).collect();
            anyhow::ensure!(direct == [true, true, true], "unexpected paths across the NATs: {direct:?}");
        }
    }
    Ok(())
}

/// Runs a simulated chapter on a blocking thread; its story lines are printed unless `json`.
async fn quiet_unless_text<T: Send + 'static>(
    json: bool,
    chapter: fn(&dyn Fn(String)) -> anyhow::Result<T>,
) -> Result<anyhow::Result<T>, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        chapter(&|line: String| {
            if !json {
                println!("{line}");
            }
        })
    })
    .await
}

/// What a chapter came to: told by `tell` if it ran; else said as NOT RUN (after `indent`) and
/// kept as the reason, for the summary and the exit status.
fn outcome<T>(say: &dyn Fn(String), indent: &str, ran: anyhow::Result<T>, tell: impl FnOnce(&T)) -> Result<T, String> {
    match ran {
        Ok(story) => {
            tell(&story);
            Ok(story)
        }
        Err(error) => {
            say(format!("{indent}NOT RUN: {error:#}"));
            Err(format!("{error:#}"))
        }
    }
}
