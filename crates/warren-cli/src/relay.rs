//! `warren relay`: run a relay for nodes behind NATs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use warren::Identity;
use warren_relay::{Relay, RelayConfig};

use crate::output::json_line;

/// `--relay-over` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Over {
    /// UDP, then TCP if UDP gets no answer within 3 s.
    Auto,
    /// QUIC over UDP only.
    Udp,
    /// TLS over TCP only.
    Tcp,
}

impl From<Over> for warren::relay::client::RelayTransport {
    fn from(value: Over) -> Self {
        match value {
            Over::Auto => Self::Auto,
            Over::Udp => Self::Udp,
            Over::Tcp => Self::Tcp,
        }
    }
}

#[derive(Args)]
pub struct RelayArgs {
    /// Address to serve on (UDP for QUIC and relayed frames, TCP on the same port for nodes
    /// whose network blocks UDP).
    #[arg(long, default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// Only this identity may register (repeatable; none given: anyone, with the token if set).
    #[arg(long = "allow", value_name = "ID")]
    allow: Vec<warren::RemoteIdentity>,
    /// Nodes must present this token (`warren node --relay-token`).
    #[arg(long)]
    token: Option<String>,
    /// Forwarding rate per node, in Mbit/s; frames over it are dropped.
    #[arg(long)]
    max_mbps: Option<f64>,
    /// Bytes forwarded per registration before the node is cut off.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Where the relay's identity is kept [default: $WARREN_DATA_DIR, else ~/.local/share/warren].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    stats_every: u64,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    if args.max_mbps.is_some_and(|m| !(m > 0.0 && m.is_finite())) {
        anyhow::bail!("--max-mbps must be a positive number");
    }
    let identity = Identity::load_or_create(&crate::data_dir(args.data_dir)?)?;
    let config =
        RelayConfig { allow: args.allow, token: args.token, max_mbps: args.max_mbps, max_bytes: args.max_bytes };
    let relay = Relay::spawn(identity, args.listen, config).await?;
    let (id, addr) = (relay.identity(), relay.local_addr());
    if args.json {
        json_line(&serde_json::json!({"event": "RelayStarted", "identity": id, "addr": addr}));
    } else {
        println!("warren relay {id}");
        println!("  serving on {addr}, UDP and TCP (nodes use: warren node --relay {id}@<ADDRESS>:{})", addr.port());
    }
    let print = |relay: &Relay| {
        let stats = relay.stats();
        if args.json {
            json_line(&serde_json::json!({"event": "RelayStats", "stats": stats}));
        } else {
            println!(
                "nodes {}, forwarded {} frames / {} bytes, throttled {}, dropped {}, refused {}, cut off {}",
                stats.nodes,
                stats.forwarded_frames,
                stats.forwarded_bytes,
                stats.throttled_frames,
                stats.dropped_frames,
                stats.refused,
                stats.cut_off
            );
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let every = Duration::from_secs(args.stats_every.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick(), if args.stats_every > 0 => print(&relay),
        }
    }
    print(&relay);
    relay.shutdown().await;
    Ok(())
}
