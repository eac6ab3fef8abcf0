//! `warren ping ID@ADDR`: connect, verify the identity, measure round trips.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use warren::discovery::manual::{ManualAddr, ManualPeer};
use warren::{Identity, P2P};

use crate::output::{json_line, ms};

#[derive(Args)]
pub struct PingArgs {
    /// The peer, as ID@HOST:PORT, or ID alone with --relay.
    #[arg(value_name = "ID@ADDR|ID")]
    peer: Target,
    #[command(flatten)]
    relay: crate::relay::UseRelay,
    /// How many pings.
    #[arg(long, default_value_t = 4)]
    count: usize,
    /// Time between pings, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Use the identity in this data directory instead of a throwaway one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Connect over TCP (Noise and warren's multiplexer) instead of QUIC: the peer's `warren
    /// node --tcp` address.
    #[arg(long)]
    tcp: bool,
    /// Connect over uTP (Noise and warren's multiplexer over LEDBAT) instead of QUIC: the
    /// peer's `warren node --utp` address.
    #[arg(long, conflicts_with = "tcp")]
    utp: bool,
    /// Print one JSON object with the results.
    #[arg(long)]
    json: bool,
}

/// Whom to ping: an address with an identity, or an identity alone (through a relay).
#[derive(Debug, Clone)]
pub enum Target {
    /// `ID@ADDR` (or a bare `ADDR`, refused later: the identity is required).
    Peer(ManualPeer),
    /// `ID`.
    Identity(warren::RemoteIdentity),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('@') || s.contains(':') {
            s.parse().map(Target::Peer).map_err(|e| e.to_string())
        } else {
            s.parse().map(Target::Identity).map_err(|e| format!("{s:?} is not an identity: {e}"))
        }
    }
}

pub async fn run(args: PingArgs) -> anyhow::Result<()> {
    let (peer, remote) = match &args.peer {
        Target::Peer(peer) => (Some(peer.clone()), peer.identity),
        Target::Identity(id) => (None, Some(*id)),
    };
    let Some(remote) = remote else {
        bail!("give the peer as ID@ADDR: warren only talks to a peer whose identity it checks");
    };
    if peer.is_none() && args.relay.relay.is_none() {
        bail!("give the peer's address (ID@ADDR) or a relay it uses (--relay RELAY_ID@ADDR)");
    }
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    // `ID@tcp://ADDR` says what `--tcp` says.
    let named = peer.as_ref().and_then(|p| p.transport);
    let tcp = args.tcp || named == Some(warren::transport::tcp::HOOK_NAME);
    let utp = args.utp || named == Some(warren::transport::utp_listener::HOOK_NAME);
    if tcp && utp {
        bail!("the peer's address names one transport and the flag another");
    }
    if (tcp || utp) && (peer.is_none() || args.relay.relay.is_some()) {
        let flag = if tcp { "--tcp" } else { "--utp" };
        bail!("{flag} needs the peer's address on that transport (ID@ADDR) and no relay: the relay carries QUIC");
    }
    let identity = match &args.data_dir {
        Some(dir) => Identity::load_or_create(dir)?,
        None => Identity::generate(),
    };
    let p2p = P2P::new("warren", identity);
    // Answer the peer's pings too: a `warren node` pings every peer that connects.
    warren::ping::register(&p2p)?;
    let unspecified = match peer.as_ref().map(|p| &p.addr) {
        Some(ManualAddr::Socket(addr)) if addr.is_ipv6() => "[::]:0",
        _ => "0.0.0.0:0",
    };
    if tcp || utp {
        if tcp {
            p2p.listen_tcp(unspecified.parse()?).await?;
        } else {
            p2p.listen_utp(unspecified.parse()?).await?;
        }
        let result = ping(&p2p, &args, peer.as_ref(), remote).await;
        p2p.shutdown().await;
        return result;
    }
    let quic = p2p.listen_quic(unspecified.parse()?).await?;
    if let Some(client) = args.relay.start(&p2p, &quic, || None) {
        if let Err(error) = client.wait_registered(Duration::from_secs(10)).await {
            p2p.shutdown().await;
            return Err(error.into());
        }
    }
    let result = ping(&p2p, &args, peer.as_ref(), remote).await;
    p2p.shutdown().await;
    result
}

async fn ping(
    p2p: &P2P,
    args: &PingArgs,
    peer: Option<&ManualPeer>,
    remote: warren::RemoteIdentity,
) -> anyhow::Result<()> {
    let addrs = match peer.map(|p| &p.addr) {
        Some(ManualAddr::Socket(addr)) => vec![*addr],
        Some(ManualAddr::Name { host, port }) => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect(),
        None => Vec::new(),
    };
    if !addrs.is_empty() {
        p2p.discovered("cli", remote, addrs, Default::default());
    }
    let started = Instant::now();
    let conn = p2p.connection(remote).await?;
    let connect_time = started.elapsed();
    let name = conn.remote_metadata().get(warren::node::NAME).cloned().unwrap_or_default();
    if !args.json {
        println!(
            "connected to {remote} ({name}) in {} ms over {}, identity verified, path: {}",
            ms(connect_time),
            conn.transport_name(),
            conn.path()
        );
    }
    let mut path = conn.path();
    let mut stream = conn.open_stream(warren::ping::PROTOCOL).await?;
    let mut rtts = Vec::with_capacity(args.count);
    for seq in 1..=args.count {
        let rtt = warren::ping::ping_stream(&mut stream, 1).await?[0];
        rtts.push(rtt);
        if !args.json {
            let now = conn.path();
            let changed = if now != path { format!(" (path now {now})") } else { String::new() };
            path = now;
            println!("seq={seq} rtt={} ms{changed}", ms(rtt));
        }
        if seq < args.count {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    let min = rtts.iter().min().copied().unwrap_or_default();
    let max = rtts.iter().max().copied().unwrap_or_default();
    let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
    if args.json {
        json_line(&serde_json::json!({
            "remote": remote,
            "name": name,
            "addr": conn.remote_address(),
            "path": conn.path(),
            "connect_ms": ms(connect_time),
            "rtt_ms": rtts.iter().map(|r| ms(*r)).collect::<Vec<_>>(),
            "min_ms": ms(min),
            "avg_ms": ms(avg),
            "max_ms": ms(max),
        }));
    } else {
        println!("{} pings: min {} ms, avg {} ms, max {} ms", rtts.len(), ms(min), ms(avg), ms(max));
    }
    Ok(())
}
