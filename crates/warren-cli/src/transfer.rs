//! `warren send` and `warren receive`: files and folders to a peer by identity, verified as
//! they stream, resumed by running the same receive again.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use warren::{Identity, P2P};
use warren_transfer::{Provider, Ticket};

use crate::output::json_line;
use crate::relay::UseRelay;
use crate::transfer_ui::{human, print_qr};

#[derive(Args)]
pub struct SendArgs {
    /// Files and folders to send (a folder with everything under it; symbolic links are
    /// refused).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Where to listen (QUIC).
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    #[command(flatten)]
    relay: UseRelay,
    /// Where the identity is kept [default: a new identity for this send; with --library,
    /// $WARREN_DATA_DIR, else ~/.local/share/warren].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON lines instead of text: the ticket, then one line per receiver's request counters.
    #[arg(long)]
    json: bool,
    /// Send to the members of this library that are online (its name or id), each checked in
    /// a library tunnel, instead of printing a ticket (they run `warren receive --library`).
    #[arg(long, value_name = "LIB")]
    library: Option<String>,
    /// With --library: a member to try by address, as ID@HOST:PORT (repeatable).
    #[arg(long = "peer", value_name = "ID@ADDR", requires = "library")]
    peers: Vec<warren::discovery::manual::ManualPeer>,
    /// With --library: do not look for members on the LAN (only the --peer ones).
    #[arg(long, requires = "library")]
    no_mdns: bool,
    /// With --library: how long to look for members on the LAN, in seconds.
    #[arg(long, default_value_t = 3.0, requires = "library")]
    wait: f64,
}

#[derive(Args)]
pub struct ReceiveArgs {
    /// The ticket `warren send` printed.
    #[arg(required_unless_present = "library")]
    ticket: Option<Ticket>,
    /// Other senders of the same content (their tickets): groups are fetched from all at once.
    #[arg(long = "also-from", value_name = "TICKET", conflicts_with = "library")]
    also_from: Vec<Ticket>,
    /// Instead of a ticket: wait for a member of this library (its name or id) to send with
    /// `warren send --library`, checked in a library tunnel, and receive from it.
    #[arg(long, value_name = "LIB", conflicts_with = "ticket")]
    library: Option<String>,
    /// With --library: where to listen (QUIC).
    #[arg(long, default_value = "0.0.0.0:0", requires = "library")]
    listen: SocketAddr,
    /// With --library: no mDNS (the sender then needs --peer).
    #[arg(long, requires = "library")]
    no_mdns: bool,
    /// With --library: where the identity and the libraries are kept [default:
    /// $WARREN_DATA_DIR, else ~/.local/share/warren].
    #[arg(long, requires = "library")]
    data_dir: Option<PathBuf>,
    /// The folder to receive into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// One JSON object per progress line instead of a progress bar.
    #[arg(long)]
    json: bool,
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let library = match &args.library {
        Some(library) => Some(crate::library_send::open(args.data_dir.clone(), library)?),
        None => None,
    };
    let identity = match (&library, &args.data_dir) {
        (Some((identity, _, _)), _) => Identity::from_secret_bytes(&identity.to_secret_bytes()),
        (None, Some(dir)) => Identity::load_or_create(dir)?,
        (None, None) => Identity::generate(),
    };
    let p2p = P2P::new("warren", identity);
    let quic = p2p.listen_quic(args.listen).await?;
    let relay = args.relay.start(&p2p, &quic, || None);
    if let Some(client) = &relay {
        client.wait_registered(Duration::from_secs(10)).await?;
    }
    let provider = Provider::new();
    provider.register(&p2p)?;
    if !args.json {
        eprintln!("hashing {} path(s)…", args.paths.len());
    }
    let started = Instant::now();
    let (manifest, hash) = provider.add_paths(&args.paths).await?;
    if let Some((_, store, record)) = library {
        let files = u32::try_from(manifest.entries.len()).unwrap_or(u32::MAX);
        let offer = crate::library_send::Offer { hash, bytes: manifest.total_size(), files };
        if !args.json {
            println!("sending {} file(s), {} to the members of {:?} online", files, human(offer.bytes), record.name);
        }
        anyhow::ensure!(args.wait.is_finite() && args.wait >= 0.0, "--wait {}: give a number of seconds", args.wait);
        let reach = crate::library_send::Reach {
            peers: args.peers,
            mdns: !args.no_mdns,
            wait: Duration::from_secs_f64(args.wait),
        };
        let port = quic.local_addr().port();
        let sent = crate::library_send::send(&p2p, port, store, &record, offer, reach, args.json).await;
        p2p.shutdown().await;
        return sent;
    }
    let ticket = Ticket {
        provider: p2p.id(),
        addrs: p2p.record().addrs.into_iter().take(16).collect(),
        relay: args.relay.relay.as_ref().map(|r| (r.identity, r.addr)),
        hash,
    };
    if args.json {
        json_line(&serde_json::json!({
            "event": "ready",
            "ticket": ticket.to_string(),
            "files": manifest.entries.len(),
            "bytes": manifest.total_size(),
            "hash_ms": started.elapsed().as_millis() as u64,
        }));
    } else {
        println!(
            "sending {} file(s), {} in {:.1} s; on the other device run:\n\n  warren receive {ticket}\n",
            manifest.entries.len(),
            human(manifest.total_size()),
            started.elapsed().as_secs_f64()
        );
        if std::io::stdout().is_terminal() {
            print_qr(&ticket.to_string());
        }
        println!("waiting for receivers (Ctrl-C to stop)");
    }
    tokio::signal::ctrl_c().await?;
    let stats = provider.stats();
    if args.json {
        json_line(&serde_json::json!({ "event": "stopped", "served": stats.served, "bytes": stats.bytes }));
    } else {
        println!("stopped: {} requests served, {} sent", stats.served, human(stats.bytes));
    }
    p2p.shutdown().await;
    Ok(())
}

pub async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let Some(ticket) = &args.ticket else { return receive_in_library(args).await };
    let p2p = P2P::new("warren", Identity::generate());
    let quic = p2p.listen_quic("0.0.0.0:0".parse()?).await?;
    let tickets: Vec<&Ticket> = std::iter::once(ticket).chain(&args.also_from).collect();
    anyhow::ensure!(tickets.iter().all(|t| t.hash == ticket.hash), "the --also-from tickets name other content");
    if let Some((identity, addr)) = tickets.iter().find_map(|t| t.relay) {
        let client = p2p.add_relay(&quic, warren::relay::client::RelayConfig::new(identity, addr));
        client.wait_registered(Duration::from_secs(10)).await.context("the ticket's relay")?;
    }
    for ticket in &tickets {
        p2p.discovered("ticket", ticket.provider, ticket.addrs.clone(), Default::default());
    }
    let providers: Vec<_> = tickets.iter().map(|t| t.provider).collect();
    let result = crate::transfer_ui::fetch(&p2p, ticket.hash, &providers, &args.out, args.json).await;
    p2p.shutdown().await;
    result.map(|_| ())
}

/// `warren receive --library LIB`: waits for a member's offer in a library tunnel.
async fn receive_in_library(args: ReceiveArgs) -> anyhow::Result<()> {
    let library = args.library.as_deref().context("a ticket or --library")?;
    let (identity, store, record) = crate::library_send::open(args.data_dir, library)?;
    let p2p = P2P::new("warren", identity);
    let quic = p2p.listen_quic(args.listen).await?;
    let addr = p2p.record().addrs.first().copied();
    if args.json {
        json_line(&serde_json::json!({
            "event": "waiting", "identity": p2p.id(), "addr": addr, "library": record.id.to_string(),
        }));
    } else {
        println!("waiting for a member of {:?} to send (warren send PATH --library {})", record.name, record.id);
        if let Some(addr) = addr {
            println!("(where mDNS does not reach: --peer {}@{addr})", p2p.id());
        }
    }
    let port = quic.local_addr().port();
    let received = crate::library_send::receive(&p2p, port, store, &record, &args.out, !args.no_mdns, args.json).await;
    p2p.shutdown().await;
    received.map(|_| ())
}
