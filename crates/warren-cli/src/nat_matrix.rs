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
use warren::relay::client::{RelayClient, RelayConfig};
use warren::transport::paths::Path;
use warren::transport::quic::QuicTransport;
use warren::{Event, Identity, P2P, Stream};
use warren_netsim::link::LinkConfig;
use warren_netsim::nat::{NatPreset, PortAssignment};
use warren_netsim::{Device, Host, KernelNatConfig, KernelPorts, Simulation};

/// A side of a pair: where its node sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// A public address, no NAT.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// EIM, address-dependent filtering.
    RestrictedCone,
    /// EIM, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering, random ports.
    Symmetric,
    /// A port-restricted home NAT behind a carrier-grade NAT.
    Cgnat,
    /// Linux nftables `masquerade`.
    KernelMasquerade,
    /// Linux nftables `masquerade fully-random`.
    KernelFullyRandom,
    /// Symmetric with sequential port allocation: where port prediction can work.
    SymmetricSequential,
}

impl NatKind {
    /// The kinds the issue asks for, then the one that shows port prediction.
    pub const ALL: [NatKind; 9] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::Cgnat,
        NatKind::KernelMasquerade,
        NatKind::KernelFullyRandom,
        NatKind::SymmetricSequential,
    ];

    fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestricted => "port-restricted",
            NatKind::Symmetric => "symmetric",
            NatKind::Cgnat => "cgnat",
            NatKind::KernelMasquerade => "kernel-masquerade",
            NatKind::KernelFullyRandom => "kernel-fully-random",
            NatKind::SymmetricSequential => "symmetric-sequential",
        }
    }

    /// Mapping depends on the destination (RFC 4787 address-and-port-dependent mapping).
    fn endpoint_dependent_mapping(self) -> bool {
        matches!(self, NatKind::Symmetric | NatKind::KernelFullyRandom | NatKind::SymmetricSequential)
    }

    /// Filtering admits only the exact address and port contacted.
    fn port_dependent_filtering(self) -> bool {
        !matches!(self, NatKind::None | NatKind::FullCone | NatKind::RestrictedCone)
    }
}

/// Does RFC 4787 theory allow a direct path between `a` and `b` with plain hole punching (no
/// port prediction)? A NAT whose mapping depends on the destination shows the other side a
/// port nobody could learn in advance; that only works if the other side's filter does not
/// care about the port (or there is no NAT on the other side).
pub fn theory_allows_direct(a: NatKind, b: NatKind) -> bool {
    let one_way = |x: NatKind, y: NatKind| !x.endpoint_dependent_mapping() || !y.port_dependent_filtering();
    a == NatKind::None || b == NatKind::None || (one_way(a, b) && one_way(b, a))
}

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
    /// Punch rounds sent by the dialler.
    pub attempts: u32,
    /// Direct although plain theory says relayed: only port prediction does that.
    pub predicted: bool,
    /// What went wrong, for `failed`.
    pub error: Option<String>,
}

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const RELAY_PORT: u16 = 3478;
const ECHO: &str = "echo/1";

enum Root {
    Host(Host),
    Device(Device),
}

fn link(sim: &mut Simulation, a: &Root, b: &Root, config: LinkConfig) {
    match (a, b) {
        (Root::Host(a), Root::Host(b)) => sim.link(a, b, config),
        (Root::Host(a), Root::Device(b)) => sim.link(a, b, config),
        (Root::Device(a), Root::Host(b)) => sim.link(a, b, config),
        (Root::Device(a), Root::Device(b)) => sim.link(a, b, config),
    }
}

fn latency(ms: u64) -> LinkConfig {
    LinkConfig { latency: Duration::from_millis(ms), ..Default::default() }
}

/// Builds one side (index 0 or 1): returns its host, and the device on the internet to link.
fn side(sim: &mut Simulation, kind: NatKind, index: u8) -> anyhow::Result<(Host, Root)> {
    let name = |what: &str| format!("{what}-{index}");
    let public = Ipv4Addr::new(203, 0, 113 + index, 10);
    let private = Ipv4Addr::new(192, 168, 1 + index, 2);
    let behind_nat = |sim: &mut Simulation, config| -> anyhow::Result<(Host, Root)> {
        let nat = sim.add_nat(&name("nat"), config, None)?;
        let host = sim.add_host_behind(&name("host"), private, 24, &nat)?;
        sim.link(&host, &nat, latency(1));
        Ok((host, Root::Device(nat)))
    };
    let preset = |p: NatPreset| p.configs(&[public]).remove(0);
    Ok(match kind {
        NatKind::None => {
            let host = sim.add_host(&name("host"), public, 24)?;
            let root = Root::Host(host.clone());
            (host, root)
        }
        NatKind::FullCone => behind_nat(sim, preset(NatPreset::FullCone))?,
        NatKind::RestrictedCone => behind_nat(sim, preset(NatPreset::RestrictedCone))?,
        NatKind::PortRestricted => behind_nat(sim, preset(NatPreset::PortRestricted))?,
        NatKind::Symmetric => behind_nat(sim, preset(NatPreset::Symmetric))?,
        NatKind::SymmetricSequential => behind_nat(
            sim,
            warren_netsim::nat::NatConfig { ports: PortAssignment::Sequential, ..preset(NatPreset::Symmetric) },
        )?,
        NatKind::Cgnat => {
            let mut layers = NatPreset::Cgnat.configs(&[Ipv4Addr::new(100, 64, index, 2), public]);
            let carrier = sim.add_nat(&name("carrier"), layers.remove(1), None)?;
            let home = sim.add_nat(&name("home"), layers.remove(0), Some(&carrier))?;
            let host = sim.add_host_behind(&name("host"), private, 24, &home)?;
            sim.link(&host, &home, latency(1));
            sim.link(&home, &carrier, latency(5));
            (host, Root::Device(carrier))
        }
        NatKind::KernelMasquerade | NatKind::KernelFullyRandom => {
            let ports =
                if kind == NatKind::KernelMasquerade { KernelPorts::Masquerade } else { KernelPorts::FullyRandom };
            let config = KernelNatConfig {
                public_ip: public,
                lan_ip: Ipv4Addr::new(192, 168, 1 + index, 1),
                lan_prefix: 24,
                ports,
                udp_timeout: None,
            };
            let nat = sim.add_kernel_nat(&name("knat"), config, None)?;
            let host = sim.add_host_behind(&name("host"), private, 24, &nat)?;
            sim.link(&host, &nat, latency(1));
            (host, Root::Device(nat))
        }
    })
}

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
async fn node(relay: RelayConfig) -> anyhow::Result<(P2P, SocketAddr)> {
    let p2p = P2P::new("warren-matrix", Identity::generate());
    let quic = QuicTransport::spawn(&p2p, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    p2p.register_protocol(ECHO, echo)?;
    let client = RelayClient::spawn(&p2p, &quic, relay);
    let observed = client.wait_registered(Duration::from_secs(10)).await?;
    Ok((p2p, observed))
}

struct Dialled {
    ttfb: Duration,
    punch: Option<(SocketAddr, u64)>,
    rounds: u32,
    path: Path,
}

/// The dialler's side: connect by identity, first byte, then wait for the punch to end.
async fn dial(p2p: &P2P, target: warren::RemoteIdentity) -> anyhow::Result<Dialled> {
    let mut events = p2p.subscribe();
    let started = Instant::now();
    let mut stream = p2p.connect(target, ECHO).await?;
    stream.write_all(b"x").await?;
    let mut byte = [0u8];
    stream.read_exact(&mut byte).await?;
    let ttfb = started.elapsed();
    let (direct, rounds, elapsed_ms) = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(Event::HolePunch { remote, direct, rounds, elapsed_ms }) = events.recv().await
                && remote == target
            {
                return (direct, rounds, elapsed_ms);
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
    let path = p2p.open_connection(&target).map(|c| c.path()).ok_or_else(|| anyhow::anyhow!("connection lost"))?;
    Ok(Dialled { ttfb, punch: direct.map(|d| (d, elapsed_ms)), rounds, path })
}

/// Runs one pair in a simulation of its own.
pub fn run_pair(a: NatKind, b: NatKind, seed: u64) -> PairResult {
    let expected = if theory_allows_direct(a, b) { "direct" } else { "relayed" };
    let mut result = PairResult {
        a,
        b,
        path: "failed",
        expected,
        ttfb_ms: None,
        punch_ms: None,
        attempts: 0,
        predicted: false,
        error: None,
    };
    match pair(a, b, seed) {
        Ok((dialled, _)) => {
            result.ttfb_ms = Some(dialled.ttfb.as_secs_f64() * 1000.0);
            result.attempts = dialled.rounds;
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

fn pair(a: NatKind, b: NatKind, seed: u64) -> anyhow::Result<(Dialled, SocketAddr)> {
    let mut sim = Simulation::new(seed);
    let relay_host = sim.add_host("relay", RELAY_IP, 24)?;
    let (a_host, a_root) = side(&mut sim, a, 0)?;
    let (b_host, b_root) = side(&mut sim, b, 1)?;
    let relay_root = Root::Host(relay_host.clone());
    link(&mut sim, &relay_root, &a_root, latency(25));
    link(&mut sim, &relay_root, &b_root, latency(25));
    link(&mut sim, &a_root, &b_root, latency(50));
    sim.start()?;

    let relay_identity = Identity::generate();
    let relay_config = RelayConfig {
        identity: relay_identity.to_remote_identity(),
        addr: SocketAddr::from((RELAY_IP, RELAY_PORT)),
        token: None,
    };
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
        match node(config).await {
            Ok((p2p, observed)) => {
                let _ = a_ready.send(Ok((p2p.remote_identity(), observed)));
                let _ = a_stop.await;
                p2p.shutdown().await;
            }
            Err(error) => {
                let _ = a_ready.send(Err(format!("{error:#}")));
            }
        }
    });
    let outcome = (|| {
        let (a_id, a_observed) = a_info.recv()?.map_err(|e| anyhow::anyhow!("node a: {e}"))?;
        let b_task = b_host.spawn(move || async move {
            let (p2p, _) = node(relay_config).await?;
            let dialled = dial(&p2p, a_id).await;
            p2p.shutdown().await;
            dialled
        });
        let dialled = b_task.join().map_err(|_| anyhow::anyhow!("node b panicked"))??;
        anyhow::Ok((dialled, a_observed))
    })();
    let _ = stop_a.send(());
    let _ = stop_relay.send(());
    let _ = a_task.join();
    let _ = relay_task.join();
    outcome
}

/// Every unordered pair of `kinds` (each kind with itself too), `parallel` at a time.
pub fn run(kinds: &[NatKind], parallel: usize, seed: u64, mut each: impl FnMut(&PairResult)) -> Vec<PairResult> {
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
                std::thread::spawn(move || run_pair(a, b, seed))
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
        "{:<20} {:<20} {:<8} {:<8} {:>8} {:>8} {:>6} {}{}",
        r.a.name(),
        r.b.name(),
        r.path,
        r.expected,
        ms(r.ttfb_ms),
        ms(r.punch_ms.map(|v| v as f64)),
        r.attempts,
        if r.predicted { "predicted port" } else { "" },
        r.error.as_deref().map(|e| format!("error: {e}")).unwrap_or_default(),
    )
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<20} {:<20} {:<8} {:<8} {:>8} {:>8} {:>6} {}",
        "a (dialled)", "b (dials)", "path", "theory", "ttfb_ms", "punch_ms", "rounds", "note"
    )
}
