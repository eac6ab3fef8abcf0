//! `warren`: the command-line face of the warren crates. Each subcommand is a thin layer over a
//! library call; see `warren --help`.

mod bench;
mod bench_discovery;
mod bench_flood;
mod bench_transfer;
mod demo;
mod demo_library;
mod demo_relay_pairing;
mod demo_transfer;
mod discover;
mod ledbat_bench;
mod library;
mod library_send;
mod nat_matrix;
mod netsim;
mod node;
mod output;
mod ping;
mod probe;
mod relay;
mod sink;
mod transfer;
mod transfer_ui;
mod utp;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "warren", version, about = "Reach any device by its public key: encrypted, authenticated P2P")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print this node's identity (creating it on first use).
    Id {
        /// Where the identity is kept [default: $WARREN_DATA_DIR, else ~/.local/share/warren].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print a JSON object instead of the bare identity.
        #[arg(long)]
        json: bool,
    },
    /// Run a node: listen, connect to peers, answer pings, print events until Ctrl-C.
    Node(node::NodeArgs),
    /// List the warren nodes on the LAN (mDNS) as they appear and leave.
    Discover(discover::DiscoverArgs),
    /// Connect to ID@ADDR (or ID alone, through --relay), verify its identity and measure
    /// round-trip times.
    Ping(ping::PingArgs),
    /// Send files and folders: prints a ticket (and a QR code on a terminal), then serves
    /// every receiver that has it until Ctrl-C.
    Send(transfer::SendArgs),
    /// Receive what a ticket names into a folder, verified as it streams; running the same
    /// receive again resumes an interrupted one.
    Receive(transfer::ReceiveArgs),
    /// Run a relay: tells nodes their public address, lets them find each other by identity
    /// and forwards their end-to-end encrypted traffic when no direct path works.
    Relay(relay::RelayArgs),
    /// Classify the NAT between here and an RFC 5780 server (mapping, filtering, hairpinning,
    /// port preservation, binding lifetime); `warren probe catalog` sums up collected reports.
    Probe(probe::ProbeArgs),
    /// Serve RFC 5780 on two addresses and two ports, and collect probe reports.
    ProbeServer(probe::ProbeServerArgs),
    /// Two nodes in one process, connected by identity over loopback: pings, a stream, a
    /// refused impostor, a summary.
    Demo(demo::DemoArgs),
    /// Benchmarks against baselines measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The network simulator: scenarios, NAT behaviour checks, forwarding benchmark (root).
    #[command(subcommand)]
    Netsim(netsim::NetsimCommand),
    /// Plain uTP (BEP 29, no encryption) to test against other implementations.
    #[command(subcommand)]
    Utp(utp::UtpCommand),
    /// Libraries: create one, pair a device into it by short code, list members, revoke.
    #[command(subcommand)]
    Library(library::LibraryCommand),
}

/// The data directory: `--data-dir`, else `$WARREN_DATA_DIR`, else `$XDG_DATA_HOME/warren`,
/// else `~/.local/share/warren`.
pub fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag.or_else(|| std::env::var_os("WARREN_DATA_DIR").map(PathBuf::from)) {
        return Ok(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(xdg).join("warren"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow::anyhow!("no --data-dir given and $HOME is not set"))?;
    Ok(PathBuf::from(home).join(".local/share/warren"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the Tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Id { data_dir: dir, json } => {
                let dir = data_dir(dir)?;
                let identity = warren::Identity::load_or_create(&dir)?.to_remote_identity();
                if json {
                    output::json_line(&serde_json::json!({
                        "identity": identity,
                        "peer_id": identity.peer_id().to_string(),
                        "data_dir": dir,
                    }));
                } else {
                    println!("{identity}");
                }
                Ok(())
            }
            Command::Node(args) => node::run(args).await,
            Command::Discover(args) => discover::run(args).await,
            Command::Ping(args) => ping::run(args).await,
            Command::Relay(args) => relay::run(args).await,
            Command::Send(args) => transfer::send(args).await,
            Command::Receive(args) => transfer::receive(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::ProbeServer(args) => probe::run_server(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(command) => bench::run(command).await,
            Command::Utp(command) => utp::run(command).await,
            Command::Library(command) => library::run(command).await,
            // The simulator runs its own threads and runtimes; keep it off this runtime's
            // workers.
            Command::Netsim(command) => tokio::task::spawn_blocking(move || netsim::run(command)).await?,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warren: {error:#}");
            ExitCode::FAILURE
        }
    }
}
