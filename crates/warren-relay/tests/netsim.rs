//! NAT traversal in warren-netsim: the seed's scenario (10 MB across two NATs over a lossy
//! 100 ms path, starting relayed and ending direct), a direct path that dies mid-transfer and
//! hands the connection back to the relay, and a relay that cannot read what it forwards. Needs root or a user namespace (as every netsim test).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::relay::client::RelayConfig as ClientConfig;
use warren::transport::paths::Path;
use warren::{Event, Identity, P2P, RemoteIdentity, Stream};
use warren_netsim::Faults;
use warren_netsim::link::{LinkConfig, Loss};
use warren_netsim::pair::{self, NatKind, PUBLIC_IPS, Pair, PairLinks, RELAY_IP};
use warren_relay::{Relay, RelayConfig, RelayStats};

const SINK: &str = "sink/1";
const RELAY_PORT: u16 = 3478;
const HANG: Duration = Duration::from_secs(60);

/// Reads everything, answers with the BLAKE3 hash and the byte count.
async fn sink(mut stream: Stream) {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let mut reply = hasher.finalize().as_bytes().to_vec();
    reply.extend_from_slice(&total.to_be_bytes());
    let _ = stream.write_all(&reply).await;
    let _ = stream.finish();
}

async fn node(relay: ClientConfig) -> anyhow::Result<P2P> {
    let p2p = P2P::new("warren-test", Identity::generate());
    let quic = p2p.listen_quic(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    p2p.register_protocol(SINK, sink)?;
    p2p.add_relay(&quic, relay).wait_registered(HANG).await?;
    Ok(p2p)
}

/// Sends `data` to `remote`'s sink; returns the hash and count it reported.
async fn send(p2p: &P2P, remote: RemoteIdentity, data: &[u8]) -> anyhow::Result<([u8; 32], u64)> {
    let (mut send, mut recv) = p2p.connect(remote, SINK).await?.into_split();
    for chunk in data.chunks(256 * 1024) {
        send.write_all(chunk).await?;
    }
    send.finish()?;
    let mut reply = [0u8; 40];
    recv.read_exact(&mut reply).await?;
    Ok((reply[..32].try_into()?, u64::from_be_bytes(reply[32..].try_into()?)))
}

struct Run {
    relay_stats: RelayStats,
    events: Vec<Event>,
    elapsed: Duration,
}

/// One pair at a time in this binary. Each pair's simulator forwards every packet in user
/// space and paces 20 Mbit/s links by the clock; with several 10 MiB transfers at once on two
/// cores the forwarders fell behind, packets were late or lost, and a fresh-clone CI run saw
/// a masquerade pair's punch fail (its transfer ended relayed; 8 of 8 passed alone).
static ONE_PAIR_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds the pair, runs a relay and node a (a sink), and runs `dialler` on node b with a's
/// identity and the simulation's faults.
fn run_pair<F, Fut>(a: NatKind, b: NatKind, links: PairLinks, capture: Option<&std::path::Path>, dialler: F) -> Run
where
    F: FnOnce(P2P, RemoteIdentity, Arc<Faults>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let _one = ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Pair { mut sim, relay, a: a_host, b: b_host } = pair::build(a, b, links, 7).unwrap();
    if let Some(path) = capture {
        sim.capture_interface(&relay, path).unwrap();
    }
    sim.start().unwrap();
    let faults = sim.faults();
    let relay_identity = Identity::generate();
    let config = ClientConfig::new(relay_identity.to_remote_identity(), (RELAY_IP, RELAY_PORT).into());
    let (ready_tx, ready) = mpsc::channel();
    let (stop_relay, relay_stop) = tokio::sync::oneshot::channel::<()>();
    let relay_task = relay.spawn(move || async move {
        let relay = Relay::spawn(relay_identity, (RELAY_IP, RELAY_PORT).into(), RelayConfig::default()).await.unwrap();
        ready_tx.send(()).unwrap();
        let _ = relay_stop.await;
        let stats = relay.stats();
        relay.shutdown().await;
        stats
    });
    ready.recv().unwrap();
    let (a_tx, a_id) = mpsc::channel();
    let (stop_a, a_stop) = tokio::sync::oneshot::channel::<()>();
    let a_config = config.clone();
    let a_task = a_host.spawn(move || async move {
        let p2p = node(a_config).await.unwrap();
        a_tx.send(p2p.id()).unwrap();
        let _ = a_stop.await;
        p2p.shutdown().await;
    });
    let a_id = a_id.recv().unwrap();
    let b_task = b_host.spawn(move || async move {
        let p2p = node(config).await.unwrap();
        let mut events = p2p.subscribe();
        let started = Instant::now();
        let result = dialler(p2p.clone(), a_id, faults).await;
        let elapsed = started.elapsed();
        let seen = received(&mut events);
        p2p.shutdown().await;
        result.map(|()| (seen, elapsed))
    });
    let outcome = b_task.join().unwrap();
    let _ = stop_a.send(());
    a_task.join().unwrap();
    let _ = stop_relay.send(());
    let relay_stats = relay_task.join().unwrap();
    let (events, elapsed) = outcome.unwrap();
    Run { relay_stats, events, elapsed }
}

/// The events `events` holds now, without waiting.
fn received(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    warren::testing::pseudo_random_bytes(seed, len)
}

/// The seed's scenario: two nodes, each behind its own (port-restricted) NAT, 100 ms RTT, 1 %
/// loss on every internet link. They connect by identity alone through the relay and 10 MB go
/// across intact; the transfer starts relayed and ends direct, without failing.
#[test]
fn ten_megabytes_across_two_nats_start_relayed_and_end_direct() {
    let lossy = |ms| LinkConfig { latency: Duration::from_millis(ms), loss: Loss::Random(0.01), ..Default::default() };
    let links = PairLinks { relay: lossy(25), direct: lossy(50) };
    ten_megabytes_start_relayed_and_end_direct(NatKind::PortRestricted, NatKind::PortRestricted, links);
}

/// The same across two real Linux routers (the simulator's kernel NATs, nftables `masquerade`,
/// a provider router between them), and against `masquerade fully-random`, which only birthday
/// probing gets through (issue 13). Without loss (a lost open can leave a Linux router's
/// conntrack poisoned for that attempt: docs/nat-traversal.md), and at 20 Mbit/s, so that the
/// transfer outlasts the punch (~0.3 s, ~1.1 s by birthday probing) whatever the machine.
#[test]
fn ten_megabytes_across_two_kernel_nats_start_relayed_and_end_direct() {
    let slow =
        |ms| LinkConfig { latency: Duration::from_millis(ms), bandwidth_bps: Some(20_000_000), ..Default::default() };
    for b in [NatKind::KernelMasquerade, NatKind::KernelFullyRandom] {
        ten_megabytes_start_relayed_and_end_direct(
            NatKind::KernelMasquerade,
            b,
            PairLinks { relay: slow(25), direct: slow(50) },
        );
    }
}

/// 10 MiB from a node behind `b` to one behind `a`: intact, begun on the relay and ended
/// direct.
fn ten_megabytes_start_relayed_and_end_direct(a: NatKind, b: NatKind, links: PairLinks) {
    const LEN: usize = 10 * 1024 * 1024;
    let run = run_pair(a, b, links, None, |p2p, a, _| async move {
        let mut events = p2p.subscribe();
        let data = pseudo_random(LEN, 42);
        let (hash, count) = send(&p2p, a, &data).await?;
        anyhow::ensure!(count == LEN as u64, "the sink counted {count} bytes");
        anyhow::ensure!(hash == *blake3::hash(&data).as_bytes(), "the sink's hash differs: corrupted");
        // The punch races the transfer: a transfer that ends first may end relayed (once in a
        // fresh-clone CI run, kernel NATs). What must hold is that the path goes direct.
        // Checked after each event (a path change is one) until the deadline.
        let deadline = tokio::time::Instant::now() + HANG;
        let mut seen = Vec::new();
        loop {
            let path = p2p.open_connection(&a).map(|c| c.path());
            if matches!(path, Some(Path::Direct { .. })) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(event)) => seen.push(event),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                _ => anyhow::bail!("still on {path:?} {HANG:?} after the transfer; the events: {seen:?}"),
            }
        }
    });
    let changed = run.events.iter().position(|e| matches!(e, Event::PathChanged { path: Path::Direct { .. }, .. }));
    assert!(changed.is_some(), "{a:?} x {b:?}: no PathChanged to direct: {:?}", run.events);
    // It began on the relay, which carried part of it (handshake, hello, first data) and not all.
    assert!(run.relay_stats.forwarded_bytes > 1000, "{:?}", run.relay_stats);
    assert!(run.relay_stats.forwarded_bytes < LEN as u64, "{:?}", run.relay_stats);
    println!(
        "{a:?} x {b:?}: 10 MiB in {:?} ({:.1} Mbit/s); the relay forwarded {} bytes before the path went direct",
        run.elapsed,
        LEN as f64 * 8.0 / run.elapsed.as_secs_f64() / 1e6,
        run.relay_stats.forwarded_bytes
    );
}

/// A punched path that dies while a transfer is under way (the two NATs can no longer reach
/// each other; both still reach the relay): the connection goes back to the relay within
/// seconds and the stream open at the time completes intact, on the same connection.
#[test]
fn a_direct_path_that_dies_hands_the_connection_back_to_the_relay() {
    const LEN: usize = 4 * 1024 * 1024;
    let run = run_pair(NatKind::PortRestricted, NatKind::FullCone, PairLinks::default(), None, |p2p, a, faults| {
        async move {
            let mut events = p2p.subscribe();
            let conn = p2p.connection(a).await?;
            let direct = tokio::time::timeout(HANG, async {
                loop {
                    if let Ok(Event::PathChanged { path: Path::Direct { .. }, .. }) = events.recv().await {
                        break;
                    }
                }
            });
            direct.await?;
            // A transfer under way when the direct path dies.
            let data = pseudo_random(LEN, 9);
            let quic = conn.quic().expect("a QUIC connection").clone();
            let sent_before = quic.stats().udp_tx.bytes;
            let (sent, cut_at) = tokio::join!(send(&p2p, a, &data), async {
                // Cut once the transfer is under way: 256 KiB of it sent.
                while quic.stats().udp_tx.bytes < sent_before + 256 * 1024 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                faults.block(PUBLIC_IPS[0], PUBLIC_IPS[1]);
                Instant::now()
            });
            let (hash, count) = sent?;
            anyhow::ensure!(count == LEN as u64 && hash == *blake3::hash(&data).as_bytes(), "corrupted");
            let now = p2p.open_connection(&a).ok_or_else(|| anyhow::anyhow!("the connection is gone"))?;
            anyhow::ensure!(now.id() == conn.id(), "a new connection replaced the old one");
            anyhow::ensure!(matches!(now.path(), Path::Relayed { .. }), "ended on {:?}", now.path());
            anyhow::ensure!(faults.dropped() > 0, "the block dropped nothing: the path was not cut under way");
            println!("the transfer finished {:?} after the direct path was cut", cut_at.elapsed());
            Ok(())
        }
    });
    let to_direct = run.events.iter().position(|e| matches!(e, Event::PathChanged { path: Path::Direct { .. }, .. }));
    let back = run.events.iter().position(|e| matches!(e, Event::PathChanged { path: Path::Relayed { .. }, .. }));
    assert!(matches!((to_direct, back), (Some(d), Some(r)) if d < r), "{:?}", run.events);
    assert!(run.relay_stats.forwarded_bytes > LEN as u64 / 2, "the relay carried the rest: {:?}", run.relay_stats);
}

/// Traffic through the relay is the peers' own QUIC: a capture of everything the relay sent
/// and received holds the frames (their magic and the relayed bytes) but not one copy of a
/// payload the peers exchanged in the clear of their streams.
#[test]
fn the_relay_cannot_read_what_it_forwards() {
    let dir = std::env::temp_dir().join(format!("warren-relay-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("relay.pcap");
    const MARKER: &[u8] = b"warren-secret-payload:";
    let payload: Vec<u8> = MARKER.iter().chain(b"0123456789").copied().cycle().take(512 * 1024).collect();
    // Symmetric against port-restricted: no direct path, everything goes through the relay.
    let sent = payload.clone();
    let run = run_pair(
        NatKind::Symmetric,
        NatKind::PortRestricted,
        PairLinks::default(),
        Some(&capture),
        |p2p, a, _| async move {
            let (hash, count) = send(&p2p, a, &sent).await?;
            anyhow::ensure!(count == sent.len() as u64 && hash == *blake3::hash(&sent).as_bytes());
            let path = p2p.open_connection(&a).map(|c| c.path());
            anyhow::ensure!(matches!(path, Some(Path::Relayed { .. })), "expected relayed, got {path:?}");
            Ok(())
        },
    );
    assert!(run.relay_stats.forwarded_bytes >= payload.len() as u64, "{:?}", run.relay_stats);
    let packets = warren_netsim::pcap::read_file(&capture).expect("the capture parses");
    let mut udp = Vec::new();
    for (_, packet) in &packets {
        udp.extend_from_slice(packet.payload());
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // The capture did see the relayed traffic: data frames (magic 00 'W' 'R' 01), at least as
    // many bytes as the payload.
    let frames = udp.windows(4).filter(|w| *w == [0, b'W', b'R', 1]).count();
    assert!(frames > 300, "only {frames} data frames in the capture");
    assert!(udp.len() > payload.len(), "{} bytes captured", udp.len());
    let leaks = udp.windows(MARKER.len()).filter(|w| *w == MARKER).count();
    assert_eq!(leaks, 0, "the payload's marker appears {leaks} times in what the relay saw");
}

/// A node on a network that blocks UDP (TCP only, through a symmetric NAT) registers with the
/// relay over TCP after its QUIC attempt gets no answer, and a peer behind a home NAT reaches
/// it by identity through the relay; data crosses intact.
#[test]
fn a_node_behind_a_udp_blocking_network_is_reached_over_tcp() {
    let run =
        run_pair(NatKind::UdpBlocked, NatKind::PortRestricted, PairLinks::default(), None, |p2p, a, _| async move {
            let data = pseudo_random(1024 * 1024, 3);
            let (hash, count) = send(&p2p, a, &data).await?;
            anyhow::ensure!(count == data.len() as u64 && hash == *blake3::hash(&data).as_bytes());
            let path = p2p.open_connection(&a).map(|c| c.path());
            anyhow::ensure!(matches!(path, Some(Path::Relayed { .. })), "expected relayed, got {path:?}");
            Ok(())
        });
    assert!(run.relay_stats.forwarded_bytes >= 1024 * 1024, "{:?}", run.relay_stats);
}
