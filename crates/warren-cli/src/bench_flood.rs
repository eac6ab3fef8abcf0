//! `warren bench flood`: a connection flood from throwaway identities at one `warren node`
//! process on loopback (issue 14, point 1). The flood comes from several loopback addresses
//! (127.0.1.x), each handshake from a fresh key, each connection held to the end and, with
//! `--hello`, admitted by a valid hello. Meanwhile a legitimate peer from 127.0.0.2 connects by
//! identity again and again. Printed: the node's RSS before, at its peak and at the end, how
//! many handshakes completed, and how long the legitimate connects took.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use warren::transport::{quic, tls};
use warren::wire::{Hello, WIRE_VERSION_MAJOR, WIRE_VERSION_MINOR};
use warren::{Identity, P2P, RemoteIdentity};

use crate::output::json_line;

#[derive(Args)]
pub struct FloodArgs {
    /// Handshakes in the flood, each from a fresh identity.
    #[arg(long, default_value_t = 10_000)]
    handshakes: usize,
    /// Loopback addresses the flood comes from (127.0.1.1, 127.0.1.2, …).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Each completed connection also sends a valid hello (and so is admitted, if the node
    /// admits it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    hello: bool,
    /// Connects by the legitimate peer at least (one after another from the flood's start, and
    /// on until the flood ends).
    #[arg(long, default_value_t = 5)]
    connects: usize,
    /// The flood stops after this long whatever it has done.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// The warren binary to run the target node with [default: this one]; an older build
    /// gives the figure before a change.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The target `warren node` process, killed when dropped.
struct Target {
    child: std::process::Child,
    identity: RemoteIdentity,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Target {
    fn start(binary: &std::path::Path) -> anyhow::Result<Self> {
        // A data directory of its own (a fresh identity), removed when it stops.
        let dir = std::env::temp_dir().join(format!("warren-bench-flood-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new(binary)
            .args(["node", "--listen", "127.0.0.1:0", "--discovery", "disabled", "--json", "--data-dir"])
            .arg(&dir)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        lines.read_line(&mut first)?;
        let started: serde_json::Value =
            serde_json::from_str(&first).with_context(|| format!("the node said {first:?}"))?;
        let identity = started["identity"].as_str().context("no identity")?.parse()?;
        let addr = started["addrs"][0].as_str().context("no address")?.parse()?;
        // Its event lines are drained so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        Ok(Self { child, identity, addr, dir })
    }

    /// Resident set size and its high-water mark, in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let [rss, hwm] = status_kib(self.child.id(), ["VmRSS:", "VmHWM:"]);
        (rss, hwm)
    }
}

/// Fields of `/proc/PID/status` in KiB (0 for one that is missing or unreadable).
fn status_kib<const N: usize>(pid: u32, fields: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    fields.map(|name| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    })
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hello_bytes() -> Vec<u8> {
    let hello =
        Hello { major: WIRE_VERSION_MAJOR, minor: WIRE_VERSION_MINOR, metadata: Default::default(), protocols: vec![] };
    hello.to_bytes().expect("an empty hello fits")
}

/// One throwaway identity's handshake; the connection, if the node took it.
async fn throwaway(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    hello: Option<Arc<Vec<u8>>>,
) -> Option<quinn::Connection> {
    let config = quic::client_config(&Arc::new(Identity::generate()));
    let connecting = endpoint.connect_with(config, addr, tls::SERVER_NAME).ok()?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting).await.ok()?.ok()?;
    if let Some(hello) = hello {
        let mut send = conn.open_uni().await.ok()?;
        send.write_all(&hello).await.ok()?;
        send.finish().ok()?;
    }
    Some(conn)
}

/// A fresh legitimate node connects to the target by identity: the time to a ping's answer.
async fn legitimate_connect(target: RemoteIdentity, addr: SocketAddr) -> anyhow::Result<Duration> {
    let p2p = P2P::new("warren", Identity::generate());
    p2p.listen_quic(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0)).await?;
    p2p.discovered("bench", target, [addr], Default::default());
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), warren::ping::ping(&p2p, target, 1)).await;
    let elapsed = started.elapsed();
    p2p.shutdown().await;
    result.context("no answer in 10 s")??;
    Ok(elapsed)
}

pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    ensure!(args.sources > 0 && args.concurrency > 0, "--sources and --concurrency must be positive");
    let binary = match &args.target {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    let target = Target::start(&binary)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_before, _) = target.rss_kib();

    let endpoints = (1..=args.sources)
        .map(|i| {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)), 0);
            quinn::Endpoint::client(addr).with_context(|| format!("binding {addr}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hello = args.hello.then(|| Arc::new(hello_bytes()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (peak, pid) = (peak.clone(), target.child.id());
        tokio::spawn(async move {
            loop {
                let [rss] = status_kib(pid, ["VmRSS:"]);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The legitimate peer connects one time after another while the flood runs (each connect
    // that started before the flood ended counts as during it).
    let flood_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (identity, addr, connects) = (target.identity, target.addr, args.connects);
    let legit = {
        let flood_done = flood_done.clone();
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut during = 0;
            while times.len() < connects || !flood_done.load(Ordering::Relaxed) {
                during += usize::from(!flood_done.load(Ordering::Relaxed));
                times.push(
                    legitimate_connect(identity, addr).await.map(|d| d.as_secs_f64() * 1e3).map_err(|e| e.to_string()),
                );
            }
            (times, during)
        })
    };

    let mut held = Vec::new();
    let mut inflight = tokio::task::JoinSet::new();
    let (mut started_count, mut completed, mut failed) = (0usize, 0usize, 0usize);
    while (started_count < args.handshakes || !inflight.is_empty()) && Instant::now() < deadline {
        while started_count < args.handshakes && inflight.len() < args.concurrency {
            let endpoint = endpoints[started_count % endpoints.len()].clone();
            inflight.spawn(throwaway(endpoint, target.addr, hello.clone()));
            started_count += 1;
        }
        match tokio::time::timeout_at(deadline.into(), inflight.join_next()).await {
            Ok(Some(Ok(Some(conn)))) => {
                completed += 1;
                held.push(conn);
            }
            Ok(Some(_)) => failed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    inflight.abort_all();
    let flood_seconds = started.elapsed().as_secs_f64();
    flood_done.store(true, Ordering::Relaxed);
    let (legit_times, legit_during) = legit.await?;
    // Held connections that the node has since closed (by its hello timeout or the per-peer
    // cap) no longer count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive_at_end = held.iter().filter(|c| c.close_reason().is_none()).count();
    let (rss_end, hwm) = target.rss_kib();
    sampler.abort();
    let rss_peak = peak.load(Ordering::Relaxed).max(hwm);
    for conn in &held {
        conn.close(0u32.into(), b"");
    }
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"");
    }
    drop(target);

    let ok_times: Vec<f64> = legit_times.iter().filter_map(|t| t.as_ref().ok().copied()).collect();
    let legit_failed = legit_times.len() - ok_times.len();
    let legit_max_ms = ok_times.iter().copied().fold(0.0, f64::max);
    let report = serde_json::json!({
        "handshakes": started_count,
        "sources": args.sources,
        "hello": args.hello,
        "completed": completed,
        "failed_or_refused": failed,
        "alive_at_end": alive_at_end,
        "flood_seconds": flood_seconds,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
        "rss_end_kib": rss_end,
        "legit_connect_ms": ok_times,
        "legit_connect_max_ms": legit_max_ms,
        "legit_connect_failures": legit_failed,
        "legit_connects_during_flood": legit_during,
        "target": binary,
    });
    if args.json {
        json_line(&report);
    } else {
        println!(
            "flood: {started_count} handshakes from as many throwaway identities on {} addresses in {flood_seconds:.1} s{}",
            args.sources,
            if args.hello { ", each with a hello" } else { "" }
        );
        println!("  completed {completed}, failed or refused {failed}, still alive at the end {alive_at_end}");
        println!(
            "  node RSS: {:.1} MiB before, {:.1} MiB at the peak, {:.1} MiB at the end",
            rss_before as f64 / 1024.0,
            rss_peak as f64 / 1024.0,
            rss_end as f64 / 1024.0
        );
        println!(
            "  a legitimate peer connected {} times ({legit_during} started during the flood): at most {legit_max_ms:.0} ms ({legit_failed} failures)",
            ok_times.len()
        );
    }
    Ok(())
}
