//! `warren bench …`: benchmarks that print ratios against baselines measured in the same run.
//!
//! `throughput` moves the same bytes over one warren stream, over a plain quinn connection
//! with the same TLS and transport configuration, over plain quinn with quinn's default
//! transport configuration, over a plain TCP socket, over warren's TCP transport (Noise and
//! warren's multiplexer), over TLS 1.3 on TCP (rustls, the same keys and suites) and over plain
//! uTP (warren's BEP 29, a tenth of the bytes); it also
//! times connection setup (dial to first echoed byte) for warren, plain quinn and warren over
//! TCP. Rounds are interleaved so that a noisy
//! neighbour hurts every contender alike, and medians are reported.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::transport::quic::{self};
use warren::transport::tls;
use warren::{Identity, P2P, Stream};

use crate::output::json_line;
use crate::sink::{CHUNK, SINK, count_until_finished, send_to_sink, sink};

/// Protocol of the one-byte echo used to time connection setup.
const ECHO_BYTE: &str = "echo-byte/1";
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Bulk throughput and connection setup: warren vs plain quinn vs plain TCP on loopback.
    Throughput(ThroughputArgs),
    /// LAN discovery latency in a simulated LAN: median and p95 (needs root).
    Discovery(crate::bench_discovery::DiscoveryArgs),
    /// A connection flood from throwaway identities at a `warren node`: its RSS and a
    /// legitimate peer's connect time during the flood (loopback).
    Flood(crate::bench_flood::FloodArgs),
    /// warren-transfer against a raw warren stream in the same run: one large file, many small
    /// files (loopback).
    Transfer(crate::bench_transfer::TransferArgs),
}

#[derive(Args)]
pub struct ThroughputArgs {
    /// Bytes to send per round and contender.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Rounds per contender; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connection setups timed per contender; the median is reported.
    #[arg(long, default_value_t = 50)]
    setups: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Throughput(args) => throughput(args).await,
        BenchCommand::Discovery(args) => tokio::task::spawn_blocking(move || crate::bench_discovery::run(args)).await?,
        BenchCommand::Flood(args) => crate::bench_flood::run(args).await,
        BenchCommand::Transfer(args) => crate::bench_transfer::run(args).await,
    }
}

async fn echo_byte(stream: Stream) {
    let (mut send, mut recv) = stream.into_split();
    let mut byte = [0u8; 1];
    if recv.read_exact(&mut byte).await.is_ok() {
        let _ = send.write_all(&byte).await;
        let _ = send.finish();
    }
}

fn progress(line: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{line}");
    }
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A plain quinn endpoint on loopback with the given parameters.
fn plain_quinn_endpoint(
    tuned: bool,
    endpoint: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    if tuned {
        quic::enlarge_socket_buffers(&socket);
    }
    Ok(quinn::Endpoint::new(endpoint, server, socket, Arc::new(quinn::TokioRuntime))?)
}

/// A plain quinn server: sink on streams that start with 0, one-byte echo on those with 1.
fn plain_quinn_server(
    tuned: bool,
    endpoint: quinn::EndpointConfig,
    config: quinn::ServerConfig,
) -> anyhow::Result<(quinn::Endpoint, SocketAddr)> {
    let endpoint = plain_quinn_endpoint(tuned, endpoint, Some(config))?;
    let addr = endpoint.local_addr()?;
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok(mut halves) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        // The first byte says what the stream is for: 0 = sink, 1 = echo.
                        let Ok(kind) = halves.1.read_u8().await else { return };
                        if kind == 1 {
                            let _ = halves.0.write_all(&[kind]).await;
                        } else if let Ok(count) = count_until_finished(&mut halves).await {
                            let _ = halves.0.write_all(&count.to_le_bytes()).await;
                        }
                        let _ = halves.0.finish();
                    });
                }
            });
        }
    });
    Ok((endpoint, addr))
}

async fn plain_quinn_round(client: &quinn::Endpoint, addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let conn = client.connect(addr, tls::SERVER_NAME)?.await?;
    let mut halves = conn.open_bi().await?;
    let started = Instant::now();
    halves.0.write_all(&[0]).await?;
    let count = send_to_sink(&mut halves, bytes).await?;
    let elapsed = started.elapsed();
    ensure!(count == bytes, "plain quinn sink counted {count}");
    conn.close(0u32.into(), b"done");
    Ok(elapsed)
}

async fn plain_quinn_setup(client: &quinn::Endpoint, addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let conn = client.connect(addr, tls::SERVER_NAME)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[1]).await?;
    recv.read_u8().await?;
    let elapsed = started.elapsed();
    conn.close(0u32.into(), b"done");
    Ok(elapsed)
}

async fn warren_round(alice: &P2P, bob: &P2P, bytes: u64) -> anyhow::Result<Duration> {
    let mut halves = alice.connect(bob.id(), SINK).await?.into_split();
    let started = Instant::now();
    let count = send_to_sink(&mut halves, bytes).await?;
    let elapsed = started.elapsed();
    ensure!(count == bytes, "warren sink counted {count}");
    Ok(elapsed)
}

async fn warren_setup(alice: &P2P, bob: &P2P, bob_addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let conn = alice.dial(bob_addr, Some(bob.id())).await?;
    let (mut send, mut recv) = conn.open_stream(ECHO_BYTE).await?.into_split();
    send.write_all(&[1]).await?;
    recv.read_u8().await?;
    let elapsed = started.elapsed();
    conn.close();
    Ok(elapsed)
}

/// Reads `reader` to its end; the bytes it gave.
async fn count_to_end(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut count = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(count);
        }
        count += n as u64;
    }
}

/// Writes `bytes` bytes to `writer` in chunks.
async fn write_bytes(writer: &mut (impl tokio::io::AsyncWrite + Unpin), bytes: u64) -> std::io::Result<()> {
    let chunk = vec![0xa5u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        writer.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

async fn tcp_round(bytes: u64) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let count = count_to_end(&mut socket).await?;
        socket.write_all(&count.to_le_bytes()).await?;
        anyhow::Ok(())
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let started = Instant::now();
    write_bytes(&mut socket, bytes).await?;
    socket.shutdown().await?;
    let count = socket.read_u64_le().await?;
    let elapsed = started.elapsed();
    server.await??;
    ensure!(count == bytes, "tcp sink counted {count}");
    Ok(elapsed)
}

/// Sends `bytes` over a TLS 1.3 session on TCP (rustls, warren's raw-public-key configuration
/// and cipher suites) to a sink that answers with its count: the anchor for warren over TCP.
async fn tls_tcp_round(server: &Arc<Identity>, client: &Arc<Identity>, bytes: u64) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(server)));
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut tls = acceptor.accept(socket).await?;
        let count = count_to_end(&mut tls).await?;
        tls.write_all(&count.to_le_bytes()).await?;
        tls.shutdown().await?;
        anyhow::Ok(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(client)));
    let socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME)?;
    let mut tls = connector.connect(name, socket).await?;
    let started = Instant::now();
    write_bytes(&mut tls, bytes).await?;
    tls.shutdown().await?;
    let count = tls.read_u64_le().await?;
    let elapsed = started.elapsed();
    server.await??;
    ensure!(count == bytes, "tls sink counted {count}");
    Ok(elapsed)
}

/// Sends `bytes` over plain uTP (warren's BEP 29, no Noise) on loopback to a sink counting them.
async fn utp_round(bytes: u64) -> anyhow::Result<Duration> {
    use warren::transport::utp::UtpSocket;
    let config = warren::state::utp::Config::default();
    let server = UtpSocket::bind("127.0.0.1:0".parse()?, config).await?;
    server.listen();
    let addr = server.local_addr()?;
    let sink = tokio::spawn(async move {
        let mut stream = server.accept().await?;
        let count = count_to_end(&mut stream).await?;
        anyhow::Ok(count)
    });
    let client = UtpSocket::bind("127.0.0.1:0".parse()?, config).await?;
    let mut stream = client.connect(addr).await?;
    let started = Instant::now();
    write_bytes(&mut stream, bytes).await?;
    stream.shutdown().await?;
    let count = sink.await??;
    let elapsed = started.elapsed();
    ensure!(count == bytes, "utp sink counted {count}");
    client.shutdown().await;
    Ok(elapsed)
}

async fn throughput(args: ThroughputArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0 && args.bytes > 0 && args.setups > 0, "--bytes, --rounds and --setups must be positive");
    let alice = P2P::new("warren-bench", Identity::generate());
    let bob = P2P::new("warren-bench", Identity::generate());
    alice.listen_quic("127.0.0.1:0".parse()?).await?;
    let bob_addr = bob.listen_quic("127.0.0.1:0".parse()?).await?.local_addr();
    bob.register_protocol(SINK, sink)?;
    bob.register_protocol(ECHO_BYTE, echo_byte)?;
    alice.discovered("bench", bob.id(), [bob_addr], Default::default());
    // The same over TCP: Noise and warren's multiplexer.
    let alice_tcp = P2P::new("warren-bench", Identity::generate());
    let bob_tcp = P2P::new("warren-bench", Identity::generate());
    alice_tcp.listen_tcp("127.0.0.1:0".parse()?).await?;
    let bob_tcp_addr = bob_tcp.listen_tcp("127.0.0.1:0".parse()?).await?.local_addr();
    bob_tcp.register_protocol(SINK, sink)?;
    bob_tcp.register_protocol(ECHO_BYTE, echo_byte)?;
    alice_tcp.discovered("bench", bob_tcp.id(), [bob_tcp_addr], Default::default());

    let server_id = Arc::new(Identity::generate());
    let client_id = Arc::new(Identity::generate());
    let (server, server_addr) = plain_quinn_server(true, quic::endpoint_config(), quic::server_config(&server_id))?;
    let mut client = plain_quinn_endpoint(true, quic::endpoint_config(), None)?;
    client.set_default_client_config(quic::client_config(&client_id));

    // quinn with its default transport parameters (same TLS), to show what warren's tuning buys.
    let mut default_server_config = quic::server_config(&server_id);
    default_server_config.transport_config(Arc::new(quinn::TransportConfig::default()));
    let (default_server, default_addr) =
        plain_quinn_server(false, quinn::EndpointConfig::default(), default_server_config)?;
    let mut default_client = plain_quinn_endpoint(false, quinn::EndpointConfig::default(), None)?;
    let mut default_client_config = quic::client_config(&client_id);
    default_client_config.transport_config(Arc::new(quinn::TransportConfig::default()));
    default_client.set_default_client_config(default_client_config);

    let (mut warren_runs, mut quinn_runs, mut default_runs, mut tcp_runs) = (vec![], vec![], vec![], vec![]);
    let (mut warren_tcp_runs, mut tls_tcp_runs, mut utp_runs) = (vec![], vec![], vec![]);
    for round in 1..=args.rounds {
        progress(&format!(
            "round {round}/{}: warren, quinn, quinn (defaults), tcp, warren over tcp, tls over tcp, utp",
            args.rounds
        ));
        warren_runs.push(gbps(args.bytes, warren_round(&alice, &bob, args.bytes).await?));
        quinn_runs.push(gbps(args.bytes, plain_quinn_round(&client, server_addr, args.bytes).await?));
        default_runs.push(gbps(args.bytes, plain_quinn_round(&default_client, default_addr, args.bytes).await?));
        tcp_runs.push(gbps(args.bytes, tcp_round(args.bytes).await?));
        warren_tcp_runs.push(gbps(args.bytes, warren_round(&alice_tcp, &bob_tcp, args.bytes).await?));
        tls_tcp_runs.push(gbps(args.bytes, tls_tcp_round(&server_id, &client_id, args.bytes).await?));
        // Plain uTP is far slower: a tenth of the bytes keeps the round short.
        let utp_bytes = (args.bytes / 10).max(1 << 20);
        utp_runs.push(gbps(utp_bytes, utp_round(utp_bytes).await?));
    }
    progress(&format!("connection setup: {} dials each", args.setups));
    let (mut warren_setups, mut quinn_setups, mut warren_tcp_setups) = (vec![], vec![], vec![]);
    for _ in 0..args.setups {
        warren_setups.push(warren_setup(&alice, &bob, bob_addr).await?.as_secs_f64() * 1e3);
        quinn_setups.push(plain_quinn_setup(&client, server_addr).await?.as_secs_f64() * 1e3);
        warren_tcp_setups.push(warren_setup(&alice_tcp, &bob_tcp, bob_tcp_addr).await?.as_secs_f64() * 1e3);
    }

    let warren_gbps = median(warren_runs);
    let quinn_gbps = median(quinn_runs);
    let quinn_default_gbps = median(default_runs);
    let tcp_gbps = median(tcp_runs);
    let warren_tcp_gbps = median(warren_tcp_runs);
    let tls_tcp_gbps = median(tls_tcp_runs);
    let setup_ms_warren_tcp = median(warren_tcp_setups);
    let utp_gbps = median(utp_runs);
    let setup_ms_warren = median(warren_setups);
    let setup_ms_quinn = median(quinn_setups);
    let warren_path_mtu = alice.open_connection(&bob.id()).and_then(|c| c.quic().map(|q| q.stats().path.current_mtu));
    let report = serde_json::json!({
        "bytes": args.bytes,
        "rounds": args.rounds,
        "warren_gbps": warren_gbps,
        "quinn_gbps": quinn_gbps,
        "quinn_default_gbps": quinn_default_gbps,
        "tcp_gbps": tcp_gbps,
        "ratio_vs_quinn": warren_gbps / quinn_gbps,
        "ratio_vs_quinn_default": warren_gbps / quinn_default_gbps,
        "ratio_vs_tcp": warren_gbps / tcp_gbps,
        "warren_tcp_gbps": warren_tcp_gbps,
        "tls_tcp_gbps": tls_tcp_gbps,
        "warren_tcp_vs_quinn": warren_tcp_gbps / quinn_gbps,
        "warren_tcp_vs_tcp": warren_tcp_gbps / tcp_gbps,
        "warren_tcp_vs_tls_tcp": warren_tcp_gbps / tls_tcp_gbps,
        "setup_ms_warren_tcp": setup_ms_warren_tcp,
        "utp_gbps": utp_gbps,
        "utp_vs_quinn": utp_gbps / quinn_gbps,
        "setup_ms_warren": setup_ms_warren,
        "setup_ms_quinn": setup_ms_quinn,
        "setup_ratio": setup_ms_warren / setup_ms_quinn,
        "warren_path_mtu": warren_path_mtu,
    });
    if args.json {
        json_line(&report);
    } else {
        println!("throughput, one stream on loopback, {} MiB x {} rounds (median)", args.bytes >> 20, args.rounds);
        println!("  warren                 {warren_gbps:6.2} Gbit/s   (path MTU {warren_path_mtu:?})");
        println!("  quinn, same config     {quinn_gbps:6.2} Gbit/s   warren/quinn  = {:.3}", warren_gbps / quinn_gbps);
        println!(
            "  quinn, default config  {quinn_default_gbps:6.2} Gbit/s   warren/quinn-default = {:.3}",
            warren_gbps / quinn_default_gbps
        );
        println!("  tcp                    {tcp_gbps:6.2} Gbit/s   warren/tcp    = {:.3}", warren_gbps / tcp_gbps);
        println!(
            "  warren over tcp        {warren_tcp_gbps:6.2} Gbit/s   /quinn = {:.3}, /tcp = {:.3}, /tls-over-tcp = {:.3}",
            warren_tcp_gbps / quinn_gbps,
            warren_tcp_gbps / tcp_gbps,
            warren_tcp_gbps / tls_tcp_gbps
        );
        println!("  tls 1.3 over tcp       {tls_tcp_gbps:6.2} Gbit/s   (rustls, same keys and suites)");
        println!(
            "  utp, plain BEP 29      {utp_gbps:6.2} Gbit/s   /quinn = {:.3}   (plain BEP 29 without Noise; a tenth of the bytes)",
            utp_gbps / quinn_gbps
        );
        println!("connection setup, dial to first echoed byte ({} dials, median)", args.setups);
        println!("  warren  {setup_ms_warren:.3} ms");
        println!("  quinn   {setup_ms_quinn:.3} ms   warren/quinn = {:.3}", setup_ms_warren / setup_ms_quinn);
        println!("  warren over tcp  {setup_ms_warren_tcp:.3} ms");
    }
    for node in [alice, bob, alice_tcp, bob_tcp] {
        node.shutdown().await;
    }
    for endpoint in [server, client, default_server, default_client] {
        endpoint.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    }
    Ok(())
}
