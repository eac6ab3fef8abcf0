//! `warren probe`, `warren probe catalog` and `warren probe-server`: router probing (RFC 5780).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use warren_probe::catalog::Store;
use warren_probe::client::{self, ProbeOptions};
use warren_probe::server::{ProbeServer, ServerConfig};

use crate::output::json_line;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProbeArgs {
    #[command(subcommand)]
    command: Option<ProbeCommand>,
    /// The RFC 5780 server's primary address (a `warren probe-server`, or coturn with RFC 5780).
    #[arg(long, required = true)]
    server: Option<SocketAddr>,
    /// Also measure how long an idle binding lives (slow: up to --lifetime-max).
    #[arg(long)]
    lifetime: bool,
    /// Longest idle time tried by --lifetime, in seconds.
    #[arg(long, default_value_t = 120)]
    lifetime_max: u64,
    /// First wait for each answer, in milliseconds (retries wait twice as long each time).
    #[arg(long, default_value_t = 250)]
    timeout_ms: u64,
    /// Send the report (anonymised) to the server's collector.
    #[arg(long)]
    submit: bool,
    /// Include the public IP address in the submitted report.
    #[arg(long, requires = "submit")]
    include_ip: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ProbeCommand {
    /// Print how common each behaviour is among the reports a probe server collected.
    Catalog {
        /// The server's report database.
        #[arg(long)]
        db: PathBuf,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ProbeServerArgs {
    /// Primary IP and port.
    #[arg(long)]
    primary: SocketAddr,
    /// Alternate IP and port: both must differ from the primary's.
    #[arg(long)]
    alternate: SocketAddr,
    /// Store submitted reports in this SQLite file (without it, reports are refused).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Print counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    stats_every: u64,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    if let Some(ProbeCommand::Catalog { db, json }) = args.command {
        anyhow::ensure!(db.exists(), "{} does not exist", db.display());
        let catalog = Store::open_read_only(&db)?.catalog()?;
        if json {
            println!("{}", serde_json::to_string_pretty(&catalog)?);
        } else {
            print!("{}", catalog.render());
        }
        return Ok(());
    }
    let server = args.server.expect("clap requires --server without a subcommand");
    anyhow::ensure!((10..=10_000).contains(&args.timeout_ms), "--timeout-ms must be 10 to 10000");
    anyhow::ensure!((1..=3600).contains(&args.lifetime_max), "--lifetime-max must be 1 to 3600 seconds");
    let mut opts = ProbeOptions::new(server);
    opts.timeout = Duration::from_millis(args.timeout_ms);
    if args.lifetime {
        opts.lifetime = Some(client::lifetime_checkpoints(Duration::from_secs(args.lifetime_max)));
    }
    let terminal = std::io::stderr().is_terminal();
    let result = client::probe(&opts, |step| {
        if terminal {
            eprintln!("... {step}");
        }
    })
    .await?;
    let submitted =
        if args.submit { Some(client::submit(server, &result.report(args.include_ip)).await) } else { None };
    if args.json {
        let mut value = serde_json::to_value(&result)?;
        value["report"] = serde_json::to_value(result.report(args.include_ip))?;
        if let Some(outcome) = &submitted {
            value["submitted"] = match outcome {
                Ok(id) => serde_json::json!({ "ok": true, "id": id }),
                Err(error) => serde_json::json!({ "ok": false, "error": error }),
            };
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", result.summary());
        match &submitted {
            Some(Ok(id)) => {
                println!("report submitted (#{id}){}", if args.include_ip { "" } else { ", without the public IP" })
            }
            Some(Err(error)) => println!("report not submitted: {error}"),
            None => {}
        }
    }
    if let Some(Err(error)) = submitted {
        anyhow::bail!("the server refused the report: {error}");
    }
    Ok(())
}

pub async fn run_server(args: ProbeServerArgs) -> anyhow::Result<()> {
    let config = ServerConfig { primary: args.primary, alternate: args.alternate, db: args.db };
    let server = ProbeServer::spawn(config).await?;
    if args.json {
        json_line(
            &serde_json::json!({"event": "ProbeServerStarted", "primary": server.primary(), "alternate": server.alternate()}),
        );
    } else {
        println!(
            "warren probe-server: RFC 5780 on {} and {} (four sockets), reports over TCP on {}",
            server.primary(),
            server.alternate(),
            server.primary()
        );
    }
    let print = |server: &ProbeServer| {
        let stats = server.stats();
        if args.json {
            json_line(&serde_json::json!({"event": "ProbeServerStats", "stats": stats}));
        } else {
            println!(
                "{} datagrams ({} bytes), {} answered ({} bytes), {} dropped, {} rate-limited; reports {} stored, {} refused",
                stats.datagrams,
                stats.bytes_in,
                stats.answered,
                stats.bytes_out,
                stats.dropped,
                stats.rate_limited,
                stats.reports_stored,
                stats.reports_refused
            );
        }
    };
    crate::output::print_until_stopped(args.stats_every, || print(&server)).await?;
    server.shutdown().await;
    Ok(())
}
