//! `warren relay`: run a relay for nodes behind NATs.

use std::net::SocketAddr;
use std::path::PathBuf;

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

/// How a node uses a relay and crosses NATs: `--relay`, `--relay-token`, `--relay-over`,
/// `--no-hole-punching`, `--port-mapping` (shared by `warren node` and `warren ping`).
#[derive(Args)]
pub struct UseRelay {
    /// A relay to register with, as ID@HOST:PORT: nodes registered with the same relay reach
    /// each other by identity alone, through NATs (relayed, then directly once a hole is
    /// punched).
    #[arg(long, value_name = "ID@ADDR")]
    pub relay: Option<warren::relay::client::RelayConfig>,
    /// The relay's access token.
    #[arg(long, requires = "relay")]
    relay_token: Option<String>,
    /// How to reach the relay: QUIC over UDP, TLS over TCP (networks that block UDP), or UDP
    /// with TCP as the fallback.
    #[arg(long, value_enum, default_value = "auto", requires = "relay")]
    relay_over: Over,
    /// Never punch holes: relayed connections stay relayed and peers never learn this node's
    /// addresses.
    #[arg(long)]
    no_hole_punching: bool,
    /// Ask the gateway (the default route's, or --gateway) to forward a port to this node
    /// (PCP, NAT-PMP, then UPnP IGD) and offer it to peers: reachable through NATs that punching
    /// alone cannot pass. The mapping is deleted at exit.
    #[arg(long)]
    port_mapping: bool,
    /// The gateway to ask for a port mapping (default: the default route's).
    #[arg(long, value_name = "IPV4", requires = "port_mapping")]
    gateway: Option<std::net::Ipv4Addr>,
}

impl UseRelay {
    /// Applies `--no-hole-punching` and `--port-mapping` to `quic` and starts a client for
    /// `--relay` (or for `fallback` when none was given), with the token and transport asked
    /// for.
    pub fn start(
        &self,
        p2p: &warren::P2P,
        quic: &warren::transport::quic::QuicTransport,
        fallback: impl FnOnce() -> Option<warren::relay::client::RelayConfig>,
    ) -> Option<warren::relay::client::RelayClient> {
        quic.set_hole_punching(!self.no_hole_punching);
        if self.port_mapping {
            let config = warren::portmap::PortMapConfig { gateway: self.gateway, ..Default::default() };
            p2p.add_port_mapping(quic, config);
        }
        let mut relay = self.relay.clone().or_else(fallback)?;
        relay.token = self.relay_token.clone();
        relay.transport = self.relay_over.into();
        Some(p2p.add_relay(quic, relay))
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
    /// Bytes forwarded per node per hour (across reconnections) before it is cut off and
    /// refused until the hour is over.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Nodes registered at once from one IP address (a host with free identities cannot fill
    /// the relay; raise it for a relay behind which many nodes share one address).
    #[arg(long, default_value_t = warren_relay::MAX_NODES_PER_IP)]
    max_nodes_per_ip: usize,
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
    let config = RelayConfig {
        allow: args.allow,
        token: args.token,
        max_mbps: args.max_mbps,
        max_bytes: args.max_bytes,
        max_nodes_per_ip: args.max_nodes_per_ip,
    };
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
    crate::output::print_until_stopped(args.stats_every, || print(&relay)).await?;
    relay.shutdown().await;
    Ok(())
}
