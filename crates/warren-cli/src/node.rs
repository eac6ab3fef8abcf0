//! `warren node`: a long-running node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use warren::discovery::cache::BootstrapHook;
use warren::discovery::manual::{ManualDiscovery, ManualPeer};
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use warren::relay::client::RelayConfig;
use warren::{Event, Identity, P2P};

use crate::output::{self, describe, json_line, ms};

#[derive(Args)]
pub struct NodeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Also listen for TCP here (Noise and warren's multiplexer; reach it with `warren ping
    /// --tcp`).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Also listen for uTP here, a UDP port of its own (Noise and warren's multiplexer over
    /// LEDBAT, which yields to other traffic; reach it with `warren ping --utp`).
    #[arg(long, value_name = "ADDR")]
    utp: Option<SocketAddr>,
    /// Where the identity is kept [default: $WARREN_DATA_DIR, else ~/.local/share/warren].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The name other nodes see [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// A peer to connect to and keep connected, as ID@HOST:PORT (QUIC), ID@tcp://HOST:PORT or
    /// ID@utp://HOST:PORT (repeatable).
    #[arg(long = "peer", value_name = "ID@ADDR")]
    peers: Vec<ManualPeer>,
    /// LAN discovery over mDNS: announce this node and find others (`disabled`: no mDNS
    /// socket at all; `contacts-only`: only contacts can recognise this node, and only mutual
    /// contacts get its metadata).
    #[arg(long, value_enum, default_value = "enabled")]
    discovery: Discovery,
    /// A contact, by identity (repeatable): recognised and answered in contacts-only mode.
    #[arg(long = "contact", value_name = "ID")]
    contacts: Vec<warren::RemoteIdentity>,
    /// A library UUID to announce on the LAN (repeatable): a bare claim, proved by nothing.
    /// The libraries joined with `warren library` are announced, and proved, without it.
    #[arg(long = "library", value_name = "UUID")]
    libraries: Vec<uuid::Uuid>,
    #[command(flatten)]
    relay: crate::relay::UseRelay,
    /// Print one JSON object per event line.
    #[arg(long)]
    json: bool,
}

/// `--discovery` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Discovery {
    /// Announce and browse.
    Enabled,
    /// No mDNS at all.
    Disabled,
    /// Only a keyed hash of the identity is announced.
    ContactsOnly,
}

impl From<Discovery> for DiscoveryMode {
    fn from(value: Discovery) -> Self {
        match value {
            Discovery::Enabled => DiscoveryMode::Enabled,
            Discovery::Disabled => DiscoveryMode::Disabled,
            Discovery::ContactsOnly => DiscoveryMode::ContactsOnly,
        }
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let dir = crate::data_dir(args.data_dir)?;
    let identity = Identity::load_or_create(&dir)?;
    let p2p = P2P::new("warren", identity);
    if let Some(name) = &args.name {
        p2p.metadata_mut().insert(warren::node::NAME, name.as_str()).context("--name")?;
    }
    warren::ping::register(&p2p)?;
    let mut events = p2p.subscribe();
    let quic = p2p.listen_quic(args.listen).await?;
    let tcp = match args.tcp {
        Some(addr) => Some(p2p.listen_tcp(addr).await?.local_addr()),
        None => None,
    };
    let utp = match args.utp {
        Some(addr) => Some(p2p.listen_utp(addr).await?.local_addr()),
        None => None,
    };
    let me = p2p.id();
    if args.json {
        json_line(&serde_json::json!({
            "event": "NodeStarted",
            "identity": me,
            "addrs": [quic.local_addr()],
            "tcp": tcp,
            "utp": utp,
            "metadata": p2p.metadata(),
        }));
    } else {
        let addr = quic.local_addr();
        println!("warren node {me}");
        if addr.ip().is_unspecified() {
            println!(
                "  listening on port {} of every interface (reach it with: warren ping {me}@<ADDRESS>:{})",
                addr.port(),
                addr.port()
            );
        } else {
            println!("  listening on {addr} (reach it with: warren ping {me}@{addr})");
        }
        if let Some(tcp) = tcp {
            println!("  and on TCP {tcp} (reach it with: warren ping --tcp {me}@{tcp})");
        }
        if let Some(utp) = utp {
            println!("  and on uTP {utp} (reach it with: warren ping --utp {me}@{utp})");
        }
    }
    ManualDiscovery::spawn(&p2p, args.peers);
    // Peers that worked before: reported and reconnected to at start; a broken file is
    // rebuilt, with a warning.
    let (cache, warning) = BootstrapHook::spawn(&p2p, &dir.join("bootstrap-cache"));
    if let Some(warning) = warning {
        eprintln!("warren: {warning}");
    }
    // The relay given, else the one that worked last time.
    args.relay.start(&p2p, &quic, || {
        let cached = cache.relays().into_iter().next()?;
        let addr = *cached.addrs.first()?;
        if !args.json {
            println!("  relay {}@{addr} from the bootstrap cache", cached.identity);
        }
        Some(RelayConfig::new(cached.identity, addr))
    });
    for library in &args.libraries {
        p2p.add_library(*library);
    }
    // The libraries this device joined (`warren library`): announced, proved in tunnels, and
    // each known member met on the LAN is asked to prove it is one still (swapping revocation
    // lists as it does; strangers claiming a library are not dialled).
    let (proofs, mut proved) = tokio::sync::mpsc::unbounded_channel();
    let mut checker = None;
    if let Some(store) = crate::library::existing_store(&dir)? {
        let records = crate::library::serve_libraries(&p2p, store.clone(), args.json)?;
        if !args.json && !records.is_empty() {
            let names: Vec<String> = records.iter().map(|r| format!("{} ({})", r.name, r.role())).collect();
            println!("  member of {}: it proves so in library tunnels", names.join(", "));
        }
        checker = Some(crate::library::ClaimChecker::new(&p2p, store, crate::library::Ask::KnownMembers, proofs));
    }
    for contact in &args.contacts {
        p2p.add_contact(*contact);
    }
    let mdns = MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), args.discovery.into());

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            Some(proof) = proved.recv() => proof.print(args.json),
            event = events.recv() => match event {
                Ok(event) => {
                    // Printed first: the greeting ping's result must never come out before
                    // the connection it was sent on (on loopback it can be that quick).
                    if args.json { json_line(&event) } else { println!("{}", describe(&event)) }
                    if let Event::PeerConnected { remote, .. } = &event {
                        spawn_greeting_ping(&p2p, *remote, args.json);
                    }
                    if let (Event::PeerDiscovered { remote, source, .. }, Some(checker)) = (&event, &checker)
                        && *source == warren::discovery::mdns::SOURCE
                    {
                        checker.check(*remote, &mdns.libraries_of(remote));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                    tracing::warn!("printing fell behind; {lost} events not shown");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    p2p.shutdown().await;
    if args.json {
        json_line(&Event::Shutdown);
    } else {
        println!("shut down");
    }
    Ok(())
}

/// How long the greeting ping may take.
const GREETING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Pings each newly connected peer once and prints the result, so that two nodes that find
/// each other show a round trip in each direction.
fn spawn_greeting_ping(p2p: &P2P, remote: warren::RemoteIdentity, json: bool) {
    let node = p2p.clone();
    p2p.spawn(async move {
        // Bounded: a ping that gets no answer says so instead of waiting for ever.
        let result = match tokio::time::timeout(GREETING_TIMEOUT, warren::ping::ping(&node, remote, 1)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {GREETING_TIMEOUT:?}")),
        };
        match (result, json) {
            (Ok(rtts), true) => {
                json_line(&serde_json::json!({"event": "PingResult", "remote": remote, "rtt_ms": ms(rtts[0])}))
            }
            (Ok(rtts), false) => println!("ping {}…: {} ms", output::short(&remote), ms(rtts[0])),
            (Err(e), true) => {
                json_line(&serde_json::json!({"event": "PingFailed", "remote": remote, "error": e.to_string()}))
            }
            (Err(e), false) => println!("ping {}… failed: {e}", output::short(&remote)),
        }
    });
}
