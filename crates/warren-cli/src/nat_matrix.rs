//! `warren netsim nat-matrix`: every pair of NAT kinds in warren-netsim, a relay on the
//! simulated internet, and one node dialling the other by identity alone. Records the path each
//! pair ends on, the time to the first echoed byte, the punch rounds, and whether RFC 4787
//! theory allows a direct path.
//!
//! Each pair runs in a simulation of its own: relay 198.51.100.1 with 25 ms links to both
//! sides' outermost gateway, 50 ms between the two sides (100 ms direct RTT, 100 ms relayed).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::relay::client::RelayConfig;
use warren::transport::paths::Path;
use warren::{Event, Identity, P2P, Stream};
pub use warren_netsim::pair::NatKind;
use warren_netsim::pair::{self, Pair, PairLinks, RELAY_IP};

/// One pair's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    /// The dialled side.
    pub a: NatKind,
    /// The dialling side.
    pub b: NatKind,
    /// `direct`, `relayed` or `failed`: the dialler's path after the hole punching ended.
    pub path: &'static str,
    /// What theory allows: `direct` or `relayed`.
    pub expected: &'static str,
    /// Milliseconds from `connect(identity)` to the first echoed byte (over the relay).
    pub ttfb_ms: Option<f64>,
    /// Milliseconds from the start of signalling to the direct path, if it became direct.
    pub punch_ms: Option<u64>,
    /// Punch rounds sent by the dialler (a birthday spray burst counts as one).
    pub attempts: u32,
    /// Direct although plain theory says relayed (port prediction or birthday probing).
    pub predicted: bool,
    /// How the path was found: `punched`, `predicted`, `birthday`, `port-mapping` (by either
    /// side; None if it stayed relayed).
    pub method: Option<&'static str>,
    /// Datagrams both sides sent for the punch.
    pub packets: u32,
    /// The plan both sides followed: `rounds`, `birthday`, or none.
    pub plan: String,
    /// What went wrong, for `failed`.
    pub error: Option<String>,
    /// The TCP hole punch after it (with `--tcp`).
    pub tcp: Option<TcpPunch>,
}

/// A TCP hole punch (simultaneous open) between the pair, signalled over their connection.
#[derive(Debug, Clone, Serialize)]
pub struct TcpPunch {
    /// `direct` (a TCP connection that echoed a byte) or `failed`.
    pub path: &'static str,
    /// What theory allows: `direct` or `relayed` ([`pair::tcp_theory_allows_direct`]).
    pub expected: &'static str,
    /// Milliseconds from the offer to the connection.
    pub ms: Option<u64>,
    /// Did the node punch by itself (its UDP punch had failed), or was it asked to?
    pub automatic: bool,
    /// Why it failed.
    pub error: Option<String>,
}

pub(crate) const RELAY_PORT: u16 = 3478;
const ECHO: &str = "echo/1";

async fn echo(mut stream: Stream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = stream.finish();
}

/// A node with a relay client, registered; returns it and its reflexive address.
pub(crate) async fn node(relay: RelayConfig) -> anyhow::Result<(P2P, SocketAddr)> {
    node_with(relay, true).await
}

async fn node_with(relay: RelayConfig, punching: bool) -> anyhow::Result<(P2P, SocketAddr)> {
    node_on(relay, punching, false).await
}

async fn node_on(relay: RelayConfig, punching: bool, tcp: bool) -> anyhow::Result<(P2P, SocketAddr)> {
    let p2p = P2P::new("warren-matrix", Identity::generate());
    let quic = p2p.listen_quic(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    if tcp {
        p2p.listen_tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    }
    p2p.register_protocol(ECHO, echo)?;
    p2p.register_protocol(crate::sink::SINK, crate::sink::sink)?;
    quic.set_hole_punching(punching);
    let client = p2p.add_relay(&quic, relay);
    let observed = client.wait_registered(Duration::from_secs(10)).await?;
    Ok((p2p, observed))
}

pub(crate) struct Dialled {
    pub(crate) ttfb: Duration,
    pub(crate) punch: Option<(SocketAddr, u64)>,
    pub(crate) rounds: u32,
    pub(crate) path: Path,
    /// The dialler's own report of the attempt.
    pub(crate) method: Option<warren::state::punch::Method>,
    pub(crate) packets: u32,
    pub(crate) plan: String,
    /// The TCP hole punch's time, or why it failed (when asked for), and whether it was the
    /// node's automatic one.
    pub(crate) tcp: Option<(Result<u64, String>, bool)>,
}

/// The dialler's side: connect by identity, first byte, then wait for the punch to end.
pub(crate) async fn dial(p2p: &P2P, target: warren::RemoteIdentity) -> anyhow::Result<Dialled> {
    let mut events = p2p.subscribe();
    let started = Instant::now();
    let conn = p2p.connection(target).await?;
    let mut stream = conn.open_stream(ECHO).await?;
    stream.write_all(b"x").await?;
    let mut byte = [0u8];
    stream.read_exact(&mut byte).await?;
    let ttfb = started.elapsed();
    let (direct, rounds, elapsed_ms, method, packets, plan) = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(Event::HolePunch { remote, direct, rounds, elapsed_ms, method, packets, plan }) =
                events.recv().await
                && remote == target
            {
                return (direct, rounds, elapsed_ms, method, packets, plan);
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("hole punching did not end within 30 s"))?;
    // The path must carry data, whichever it is.
    stream.write_all(b"y").await?;
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte))
        .await
        .map_err(|_| anyhow::anyhow!("no echo on the final path"))??;
    // The path of the connection the streams went over (a TCP punch after a failed UDP one
    // makes a connection of its own).
    anyhow::ensure!(conn.close_reason().is_none(), "connection lost");
    let path = conn.path();
    Ok(Dialled { ttfb, punch: direct.map(|d| (d, elapsed_ms)), rounds, path, method, packets, plan, tcp: None })
}

/// The dialler's TCP hole punch, once its connection (relayed or punched) is up: a byte echoed
/// over the TCP connection it gives. Where the UDP punch failed (`udp_failed`), the node
/// tries TCP by itself: that automatic attempt's outcome is the result (`events` was
/// subscribed before the dial); elsewhere the punch is asked for.
async fn punch_tcp(
    p2p: &P2P,
    target: warren::RemoteIdentity,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    udp_failed: bool,
) -> Result<u64, String> {
    let (conn, ms) = if udp_failed {
        let ended = tokio::time::timeout(Duration::from_secs(40), async {
            loop {
                match events.recv().await {
                    Ok(Event::TcpHolePunch { remote, direct, elapsed_ms, error }) if remote == target => {
                        return Ok((direct, elapsed_ms, error));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(error) => return Err(error.to_string()),
                }
            }
        });
        let (direct, ms, error) =
            ended.await.map_err(|_| "no automatic TCP punch ended within 40 s of the UDP one".to_string())??;
        if direct.is_none() {
            return Err(format!("automatic: {}", error.unwrap_or_default()));
        }
        let conn = p2p.open_connection(&target).ok_or("the TCP connection closed")?;
        (conn, ms)
    } else {
        let started = Instant::now();
        let conn = tokio::time::timeout(Duration::from_secs(20), p2p.punch_tcp(target))
            .await
            .map_err(|_| "the punch did not end within 20 s".to_string())?
            .map_err(|e| format!("{e:#}"))?;
        (conn, started.elapsed().as_millis() as u64)
    };
    if conn.transport_name() != "tcp" {
        return Err(format!("the punch gave a {} connection", conn.transport_name()));
    }
    let mut stream = conn.open_stream(ECHO).await.map_err(|e| e.to_string())?;
    stream.write_all(b"t").await.map_err(|e| e.to_string())?;
    let mut byte = [0u8];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte))
        .await
        .map_err(|_| "no echo over TCP".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ms)
}

/// Runs one pair in a simulation of its own (with `tcp`, a TCP hole punch after it).
pub fn run_pair(a: NatKind, b: NatKind, seed: u64, tcp: bool) -> PairResult {
    let expected = if pair::theory_allows_direct(a, b) { "direct" } else { "relayed" };
    let mut result = PairResult {
        a,
        b,
        path: "failed",
        expected,
        ttfb_ms: None,
        punch_ms: None,
        attempts: 0,
        predicted: false,
        method: None,
        packets: 0,
        plan: String::new(),
        error: None,
        tcp: None,
    };
    match run_one(a, b, seed, tcp) {
        Ok((dialled, other)) => {
            result.tcp = dialled.tcp.clone().map(|(punched, automatic)| TcpPunch {
                path: if punched.is_ok() { "direct" } else { "failed" },
                expected: if pair::tcp_theory_allows_direct(a, b) { "direct" } else { "relayed" },
                ms: punched.as_ref().ok().copied(),
                automatic,
                error: punched.err(),
            });
            result.ttfb_ms = Some(dialled.ttfb.as_secs_f64() * 1000.0);
            result.attempts = dialled.rounds;
            result.packets = dialled.packets + other.packets;
            result.plan = dialled.plan.clone();
            // Each side names how it found the path; the more specific name wins (a predicted
            // port validated on one side is the other's plain reflexive address).
            result.method = dialled.method.max(other.method).map(|m| m.name());
            result.path = match dialled.path {
                Path::Direct { .. } => "direct",
                Path::Relayed { .. } => "relayed",
            };
            if let (Path::Direct { .. }, Some((_, ms))) = (dialled.path, dialled.punch) {
                result.punch_ms = Some(ms);
                result.predicted = expected == "relayed";
            }
        }
        Err(error) => result.error = Some(format!("{error:#}")),
    }
    result
}

/// The dialled side's own report of its attempt: how it found the path, datagrams it sent.
#[derive(Debug, Clone, Copy, Default)]
struct Answered {
    method: Option<warren::state::punch::Method>,
    packets: u32,
}

fn run_one(a: NatKind, b: NatKind, seed: u64, tcp: bool) -> anyhow::Result<(Dialled, Answered)> {
    let Pair { mut sim, relay: relay_host, a: a_host, b: b_host } = pair::build(a, b, PairLinks::default(), seed)?;
    sim.start()?;

    let relay_identity = Identity::generate();
    let relay_config = RelayConfig::new(relay_identity.to_remote_identity(), SocketAddr::from((RELAY_IP, RELAY_PORT)));
    let (relay_ready, ready) = mpsc::channel();
    let (stop_relay, relay_stop) = tokio::sync::oneshot::channel::<()>();
    let relay_task = relay_host.spawn(move || async move {
        let relay = warren_relay::Relay::spawn(
            relay_identity,
            SocketAddr::from((RELAY_IP, RELAY_PORT)),
            warren_relay::RelayConfig::default(),
        )
        .await;
        let _ = relay_ready.send(relay.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if let Ok(relay) = relay {
            let _ = relay_stop.await;
            relay.shutdown().await;
        }
    });
    ready.recv()?.map_err(|e| anyhow::anyhow!("relay: {e}"))?;

    let (a_ready, a_info) = mpsc::channel();
    let (stop_a, a_stop) = tokio::sync::oneshot::channel::<()>();
    let config = relay_config.clone();
    let a_task = a_host.spawn(move || async move {
        match node_on(config, true, tcp).await {
            Ok((p2p, observed)) => {
                let mut events = p2p.subscribe();
                let _ = a_ready.send(Ok((p2p.id(), observed)));
                let _ = a_stop.await;
                let mut answered = Answered::default();
                loop {
                    match events.try_recv() {
                        Ok(Event::HolePunch { method, packets, .. }) => answered = Answered { method, packets },
                        Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
                p2p.shutdown().await;
                answered
            }
            Err(error) => {
                let _ = a_ready.send(Err(format!("{error:#}")));
                Answered::default()
            }
        }
    });
    let outcome = (|| {
        let (a_id, _) = a_info.recv()?.map_err(|e| anyhow::anyhow!("node a: {e}"))?;
        let b_task = b_host.spawn(move || async move {
            let (p2p, _) = node_on(relay_config, true, tcp).await?;
            let mut events = p2p.subscribe();
            let mut dialled = dial(&p2p, a_id).await;
            if let (true, Ok(dialled)) = (tcp, dialled.as_mut()) {
                let udp_failed = dialled.punch.is_none();
                dialled.tcp = Some((punch_tcp(&p2p, a_id, &mut events, udp_failed).await, udp_failed));
            }
            p2p.shutdown().await;
            dialled
        });
        let dialled = b_task.join().map_err(|_| anyhow::anyhow!("node b panicked"))??;
        anyhow::Ok(dialled)
    })();
    let _ = stop_a.send(());
    let _ = stop_relay.send(());
    let answered = a_task.join().unwrap_or_default();
    let _ = relay_task.join();
    outcome.map(|dialled| (dialled, answered))
}

/// Every unordered pair of `kinds` (each kind with itself too), `parallel` at a time.
pub fn run(
    kinds: &[NatKind],
    parallel: usize,
    seed: u64,
    tcp: bool,
    mut each: impl FnMut(&PairResult),
) -> Vec<PairResult> {
    let mut pairs = Vec::new();
    for (i, a) in kinds.iter().enumerate() {
        for b in &kinds[i..] {
            pairs.push((*a, *b));
        }
    }
    let mut results = Vec::new();
    for (chunk_index, chunk) in pairs.chunks(parallel.max(1)).enumerate() {
        let handles: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, (a, b))| {
                let (a, b) = (*a, *b);
                let seed = seed + (chunk_index * parallel + i) as u64;
                std::thread::spawn(move || run_pair(a, b, seed, tcp))
            })
            .collect();
        for handle in handles {
            let result = handle.join().expect("a pair's thread does not panic");
            each(&result);
            results.push(result);
        }
    }
    results
}

/// The table, one line per pair.
pub fn row(r: &PairResult) -> String {
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    format!(
        "{:<20} {:<20} {:<8} {:<8} {:>8} {:>8} {:>6} {:>7} {}{}{}",
        r.a.name(),
        r.b.name(),
        r.path,
        r.expected,
        ms(r.ttfb_ms),
        ms(r.punch_ms.map(|v| v as f64)),
        r.attempts,
        r.packets,
        r.method.unwrap_or(if r.path == "relayed" && r.plan.starts_with("none") { "no punch: both hard" } else { "" }),
        r.error.as_deref().map(|e| format!("error: {e}")).unwrap_or_default(),
        r.tcp
            .as_ref()
            .map(|t| format!(
                "  tcp{}: {} (theory {}){}{}",
                if t.automatic { " (automatic)" } else { "" },
                t.path,
                t.expected,
                t.ms.map(|ms| format!(" in {ms} ms")).unwrap_or_default(),
                t.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ))
            .unwrap_or_default(),
    )
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<20} {:<20} {:<8} {:<8} {:>8} {:>8} {:>6} {:>7} {}",
        "a (dialled)", "b (dials)", "path", "theory", "ttfb_ms", "punch_ms", "rounds", "packets", "method"
    )
}

/// What `warren netsim relay-bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RelayBench {
    /// Bytes per transfer.
    pub bytes: u64,
    /// Direct (punched) throughput, median of the rounds, Mbit/s.
    pub direct_mbps: f64,
    /// Relayed throughput, median of the rounds, Mbit/s.
    pub relayed_mbps: f64,
    /// `relayed_mbps / direct_mbps`.
    pub ratio: f64,
    /// Time from the start of signalling to the direct path, per round, ms.
    pub punch_ms: Vec<u64>,
}

/// Relayed against direct throughput in one simulation (full-cone NATs, 100 ms RTT both
/// ways): each round, a node punches through and sends `bytes` on the direct path, then a node
/// that does not punch sends `bytes` through the relay.
pub fn relay_bench(bytes: u64, rounds: usize, seed: u64) -> anyhow::Result<RelayBench> {
    let Pair { mut sim, relay: relay_host, a: a_host, b: b_host } =
        pair::build(NatKind::FullCone, NatKind::FullCone, PairLinks::default(), seed)?;
    sim.start()?;
    let relay_identity = Identity::generate();
    let relay = RelayConfig::new(relay_identity.to_remote_identity(), SocketAddr::from((RELAY_IP, RELAY_PORT)));
    let (ready_tx, ready) = mpsc::channel();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut relay_stop = stop.clone();
    let relay_task = relay_host.spawn(move || async move {
        let relay = warren_relay::Relay::spawn(relay_identity, relay.addr, Default::default()).await;
        let _ = ready_tx.send(relay.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if let Ok(relay) = relay {
            let _ = relay_stop.wait_for(|s| *s).await;
            relay.shutdown().await;
        }
    });
    ready.recv()?.map_err(|e| anyhow::anyhow!("relay: {e}"))?;
    let (id_tx, id) = mpsc::channel();
    let (a_relay, mut a_stop) = (relay.clone(), stop.clone());
    let a_task = a_host.spawn(move || async move {
        let (p2p, _) = node(a_relay).await?;
        id_tx.send(p2p.id())?;
        let _ = a_stop.wait_for(|s| *s).await;
        p2p.shutdown().await;
        anyhow::Ok(())
    });
    let a_id = id.recv()?;
    let measured = b_host.spawn(move || async move {
        let mut direct = Vec::new();
        let mut relayed = Vec::new();
        let mut punch_ms = Vec::new();
        for _ in 0..rounds {
            for punching in [true, false] {
                let (p2p, _) = node_with(relay.clone(), punching).await?;
                let mut events = p2p.subscribe();
                p2p.connection(a_id).await?;
                if punching {
                    let punched = tokio::time::timeout(Duration::from_secs(30), async {
                        loop {
                            if let Ok(Event::HolePunch { direct, elapsed_ms, .. }) = events.recv().await {
                                return direct.map(|_| elapsed_ms);
                            }
                        }
                    })
                    .await?;
                    punch_ms.push(punched.ok_or_else(|| anyhow::anyhow!("the hole punch failed"))?);
                }
                let mut halves = p2p.connect(a_id, crate::sink::SINK).await?.into_split();
                let started = Instant::now();
                let received = crate::sink::send_to_sink(&mut halves, bytes).await?;
                let took = started.elapsed();
                anyhow::ensure!(received == bytes, "the sink counted {received} of {bytes} bytes");
                let path = p2p.open_connection(&a_id).map(|c| c.path());
                let expected_direct = matches!(path, Some(Path::Direct { .. }));
                anyhow::ensure!(expected_direct == punching, "measured on the wrong path: {path:?}");
                let mbps = bytes as f64 * 8.0 / took.as_secs_f64() / 1e6;
                if punching {
                    direct.push(mbps)
                } else {
                    relayed.push(mbps)
                }
                drop(halves);
                p2p.shutdown().await;
            }
        }
        anyhow::Ok((direct, relayed, punch_ms))
    });
    let measured = measured.join().map_err(|_| anyhow::anyhow!("the measuring node panicked"));
    let _ = stop_tx.send(true);
    let _ = a_task.join();
    let _ = relay_task.join();
    let (direct, relayed, punch_ms) = measured??;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (direct_mbps, relayed_mbps) = (median(direct), median(relayed));
    Ok(RelayBench { bytes, direct_mbps, relayed_mbps, ratio: relayed_mbps / direct_mbps, punch_ms })
}
