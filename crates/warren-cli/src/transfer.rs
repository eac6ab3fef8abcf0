//! `warren send` and `warren receive`: files and folders to a peer by identity, verified as
//! they stream, resumed by running the same receive again.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use warren::{Identity, P2P};
use warren_transfer::{Progress, Provider, ReceiveOptions, Ticket};

use crate::output::json_line;
use crate::relay::UseRelay;

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
    /// Where the identity is kept [default: a new identity for this send].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON lines instead of text: the ticket, then one line per receiver's request counters.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ReceiveArgs {
    /// The ticket `warren send` printed.
    ticket: Ticket,
    /// Other senders of the same content (their tickets): groups are fetched from all at once.
    #[arg(long = "also-from", value_name = "TICKET")]
    also_from: Vec<Ticket>,
    /// The folder to receive into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// One JSON object per progress line instead of a progress bar.
    #[arg(long)]
    json: bool,
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let identity = match &args.data_dir {
        Some(dir) => Identity::load_or_create(dir)?,
        None => Identity::generate(),
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
    let p2p = P2P::new("warren", Identity::generate());
    let quic = p2p.listen_quic("0.0.0.0:0".parse()?).await?;
    let tickets: Vec<&Ticket> = std::iter::once(&args.ticket).chain(&args.also_from).collect();
    anyhow::ensure!(tickets.iter().all(|t| t.hash == args.ticket.hash), "the --also-from tickets name other content");
    if let Some((identity, addr)) = tickets.iter().find_map(|t| t.relay) {
        let client = p2p.add_relay(&quic, warren::relay::client::RelayConfig::new(identity, addr));
        client.wait_registered(Duration::from_secs(10)).await.context("the ticket's relay")?;
    }
    for ticket in &tickets {
        p2p.discovered("ticket", ticket.provider, ticket.addrs.clone(), Default::default());
    }
    let providers: Vec<_> = tickets.iter().map(|t| t.provider).collect();
    let started = Instant::now();
    let report = Reporter::new(args.json);
    let options = ReceiveOptions { out: args.out.clone(), config: Default::default() };
    let result = warren_transfer::receive(&p2p, args.ticket.hash, &providers, options, {
        let report = report.clone();
        move |progress| report.report(progress)
    })
    .await;
    report.finish();
    p2p.shutdown().await;
    let summary = result?;
    let secs = started.elapsed().as_secs_f64();
    let fetched: u64 = summary.fetched.values().sum();
    if args.json {
        json_line(&serde_json::json!({
            "event": "done",
            "files": summary.files,
            "bytes": summary.total,
            "kept": summary.kept,
            "fetched": fetched,
            "asked_again": summary.asked_again,
            "secs": secs,
        }));
    } else {
        let resumed =
            if summary.kept > 0 { format!(" ({} were already here)", human(summary.kept)) } else { String::new() };
        println!(
            "received {} file(s), {}{resumed} into {}, verified, in {:.1} s ({}/s)",
            summary.files,
            human(summary.total),
            args.out.display(),
            secs,
            human((fetched as f64 / secs.max(1e-3)) as u64)
        );
    }
    Ok(())
}

/// Progress as a bar on a terminal, JSON lines with `--json` (at most 20 a second), a line a
/// second otherwise.
#[derive(Clone)]
struct Reporter {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    last: Arc<Mutex<Instant>>,
}

impl Reporter {
    fn new(json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self { json, bar, last: Arc::new(Mutex::new(Instant::now() - Duration::from_secs(10))) }
    }

    fn report(&self, progress: &Progress) {
        if let Progress::Bytes { .. } = progress {
            let mut last = self.last.lock().expect("reporter lock");
            if self.bar.is_none() && last.elapsed() < Duration::from_millis(if self.json { 50 } else { 1000 }) {
                return;
            }
            *last = Instant::now();
        }
        if self.json {
            let line = match progress {
                Progress::Started { files, total, kept } => {
                    serde_json::json!({ "event": "started", "files": files, "bytes": total, "kept": kept })
                }
                Progress::Bytes { done, total } => {
                    serde_json::json!({ "event": "progress", "done": done, "total": total })
                }
                Progress::FileDone { path, size } => serde_json::json!({ "event": "file", "path": path, "size": size }),
                Progress::ProviderFailed { provider, error } => {
                    serde_json::json!({ "event": "provider_failed", "provider": provider, "error": error })
                }
            };
            return json_line(&line);
        }
        match (&self.bar, progress) {
            (Some(bar), Progress::Started { total, kept, files }) => {
                bar.set_length(*total);
                bar.set_position(*kept);
                bar.set_message(format!("{files} file(s)"));
            }
            (Some(bar), Progress::Bytes { done, .. }) => bar.set_position(*done),
            (Some(bar), Progress::FileDone { path, .. }) => bar.set_message(path.clone()),
            (Some(bar), Progress::ProviderFailed { provider, error }) => bar.println(format!("{provider}: {error}")),
            (None, Progress::Started { files, total, kept }) => {
                eprintln!("receiving {files} file(s), {} ({} already here)", human(*total), human(*kept))
            }
            (None, Progress::Bytes { done, total }) => eprintln!("{} of {}", human(*done), human(*total)),
            (None, Progress::FileDone { .. }) => {}
            (None, Progress::ProviderFailed { provider, error }) => eprintln!("{provider}: {error}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Bytes for people: KiB, MiB, GiB.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}

/// The ticket as a QR code of terminal half-blocks.
pub fn print_qr(text: &str) {
    match qrcode::QrCode::new(text.to_uppercase().as_bytes()) {
        Ok(code) => {
            let image = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            println!("{image}\n");
        }
        Err(error) => tracing::debug!(%error, "no QR code"),
    }
}
