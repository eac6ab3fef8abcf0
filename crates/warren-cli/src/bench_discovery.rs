//! `warren bench discovery`: LAN discovery latency in a warren-netsim LAN (two hosts on a
//! switch, 1 ms links): from the moment a node starts to `PeerDiscovered` on the other host,
//! over many runs; median and p95. Needs root (network namespaces).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use warren::{Event, Identity, P2P};
use warren_netsim::Simulation;
use warren_netsim::link::LinkConfig;

use crate::output::{json_line, ms};

#[derive(Args)]
pub struct DiscoveryArgs {
    /// Runs, each in a fresh simulated LAN.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Bound on one run: only catches a discovery that never happens.
const RUN_LIMIT: Duration = Duration::from_secs(20);

async fn node(ip: Ipv4Addr) -> anyhow::Result<P2P> {
    let p2p = P2P::new("warren", Identity::generate());
    let quic = p2p.listen_quic(SocketAddr::from((ip, 0))).await?;
    MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
    Ok(p2p)
}

/// One run: the time from starting a node on one host to its discovery on the other.
fn once(seed: u64) -> anyhow::Result<Duration> {
    let mut sim = Simulation::new(seed);
    let switch = sim.add_switch("lan", None)?;
    let (a_ip, b_ip) = (Ipv4Addr::new(192, 168, 40, 2), Ipv4Addr::new(192, 168, 40, 3));
    let a = sim.add_host_behind("a", a_ip, 24, &switch)?;
    let b = sim.add_host_behind("b", b_ip, 24, &switch)?;
    for host in [&a, &b] {
        sim.link(host, &switch, LinkConfig { latency: Duration::from_millis(1), ..Default::default() });
    }
    sim.start()?;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let watcher = a.spawn(move || async move {
        let p2p = node(a_ip).await?;
        let mut events = p2p.subscribe();
        ready_tx.send(()).ok();
        let found = tokio::time::timeout(RUN_LIMIT, async {
            loop {
                if let Ok(Event::PeerDiscovered { source, .. }) = events.recv().await {
                    if source == warren::discovery::mdns::SOURCE {
                        return Instant::now();
                    }
                }
            }
        })
        .await
        .context("the other node was not discovered")?;
        p2p.shutdown().await;
        anyhow::Ok(found)
    });
    ready.recv().context("the watching node did not start")?;
    let started = Instant::now();
    let announcer = b.spawn(move || async move {
        let p2p = node(b_ip).await?;
        let _ = stop.await;
        p2p.shutdown().await;
        anyhow::Ok(())
    });
    let found = watcher.join().map_err(|_| anyhow::anyhow!("the watching node panicked"))?;
    let _ = stop_tx.send(());
    announcer.join().map_err(|_| anyhow::anyhow!("the announcing node panicked"))??;
    Ok(found?.saturating_duration_since(started))
}

pub fn run(args: DiscoveryArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1000).contains(&args.runs), "--runs must be between 1 and 1000");
    let mut latencies = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        latencies.push(once(run as u64 + 1)?);
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let (median, p95) = (pick(0.5), pick(0.95));
    if args.json {
        json_line(&serde_json::json!({
            "runs": args.runs,
            "median_ms": ms(median),
            "p95_ms": ms(p95),
            "min_ms": ms(latencies[0]),
            "max_ms": ms(*latencies.last().expect("at least one run")),
        }));
    } else {
        println!("LAN discovery, node start to PeerDiscovered on the other host, {} runs:", args.runs);
        println!(
            "  median {} ms, p95 {} ms (min {} ms, max {} ms)",
            ms(median),
            ms(p95),
            ms(latencies[0]),
            ms(*latencies.last().expect("at least one run"))
        );
        println!("  target: median under 1 s: {}", if median < Duration::from_secs(1) { "met" } else { "NOT met" });
    }
    Ok(())
}
