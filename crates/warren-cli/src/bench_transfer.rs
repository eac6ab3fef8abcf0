//! `warren bench transfer`: warren-transfer against a raw warren stream between the same two
//! nodes, in the same run: a large file, then many small files. Ratios, not absolute times.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Args;
use warren::{Identity, P2P};
use warren_transfer::{Provider, ReceiveOptions};

use crate::output::json_line;
use crate::sink::{SINK, send_to_sink, sink};

#[derive(Args)]
pub struct TransferArgs {
    /// Size of the large file.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// How many small files.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Size of each small file.
    #[arg(long, default_value_t = 4096)]
    file_size: u64,
    /// Rounds per contender; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the files (default: the system's temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// One JSON object with the results.
    #[arg(long)]
    json: bool,
    /// Instead: 100 MiB (a folder of four files) across two simulated home NATs, 1 % loss on
    /// every link, relayed and then punched, received by a `warren receive` process (root).
    #[arg(long)]
    netsim: bool,
}

fn progress(line: &str) {
    eprintln!("{line}");
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// CPU seconds this process has used so far, user and system, over all its threads. Both nodes
/// of the bench run in it, so a phase's difference is what the phase cost both ends (work the
/// kernel does in its own threads, like page-cache writeback, is not in it).
fn cpu_secs() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return f64::NAN;
    }
    // SAFETY: filled by the successful call above (and zeroed before it).
    let usage = unsafe { usage.assume_init() };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Runs `phase`, returning its result and the CPU seconds per GiB of `bytes` it cost.
async fn costed<T>(bytes: u64, phase: impl std::future::Future<Output = T>) -> (T, f64) {
    let before = cpu_secs();
    let result = phase.await;
    (result, (cpu_secs() - before) / (bytes as f64 / (1u64 << 30) as f64))
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// Writes `len` reproducible bytes to `path`, a MiB at a time.
fn write_file(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = len;
    let mut piece = 0u64;
    while left > 0 {
        let n = left.min(1 << 20);
        std::io::Write::write_all(&mut file, &warren::testing::pseudo_random_bytes(seed ^ piece, n as usize))?;
        left -= n;
        piece += 1;
    }
    std::io::Write::flush(&mut file)
}

/// Sends `bytes` over a raw stream from `from` to `to`'s sink.
async fn raw_round(from: &P2P, to: &P2P, bytes: u64) -> anyhow::Result<Duration> {
    let mut halves = from.connect(to.id(), SINK).await?.into_split();
    let started = Instant::now();
    let count = send_to_sink(&mut halves, bytes).await?;
    ensure!(count == bytes, "the sink counted {count}");
    Ok(started.elapsed())
}

/// Receives `hash` from `provider` into a fresh `out`, and removes it again.
async fn transfer_round(receiver: &P2P, provider: &P2P, hash: [u8; 32], out: &Path) -> anyhow::Result<Duration> {
    let _ = std::fs::remove_dir_all(out);
    let started = Instant::now();
    let options = ReceiveOptions { out: out.to_owned(), config: Default::default() };
    let summary = warren_transfer::receive(receiver, hash, &[provider.id()], options, |_| {}).await?;
    let elapsed = started.elapsed();
    ensure!(summary.kept == 0, "a fresh receive kept {} bytes", summary.kept);
    std::fs::remove_dir_all(out)?;
    Ok(elapsed)
}

pub async fn run(args: TransferArgs) -> anyhow::Result<()> {
    if args.netsim {
        return netsim(args.json).await;
    }
    ensure!(args.rounds > 0 && args.bytes > 0 && args.files > 0, "--bytes, --files and --rounds must be positive");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("warren-bench-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The simulated-NAT run: time, rate, and whether the path went direct.
async fn netsim(json: bool) -> anyhow::Result<()> {
    let dir = crate::demo_transfer::scratch();
    // A 96 MiB file and the folder's others: 100 MiB in all.
    let story = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || crate::demo_transfer::across_nats(&dir, (100 << 20) - (4 << 20) - 42_000, false)
    })
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    let story = story?;
    let mbps = story.bytes as f64 * 8.0 / story.resume.as_secs_f64() / 1e6;
    if json {
        json_line(&serde_json::json!({
            "netsim_bytes": story.bytes,
            "netsim_secs": story.resume.as_secs_f64(),
            "netsim_mbps": mbps,
            // `across_nats` fails unless the folder arrived equal and the path went direct
            // mid-transfer.
            "punched": true,
            "served_at_punch": story.punch.served_at,
            "verified": true,
        }));
    } else {
        println!(
            "{} MiB across two home NATs, 1 % loss, 50 ms direct and 25 ms to the relay: {:.1} s ({mbps:.0} Mbit/s), relayed then punched ({} KiB through the relay), verified",
            story.bytes >> 20,
            story.resume.as_secs_f64(),
            story.punch.served_at / 1024
        );
    }
    Ok(())
}

async fn bench(args: &TransferArgs, dir: &Path) -> anyhow::Result<()> {
    progress(&format!("writing a {} MiB file and {} files of {} bytes", args.bytes >> 20, args.files, args.file_size));
    let big = dir.join("big.bin");
    write_file(&big, args.bytes, 1)?;
    let small = dir.join("small");
    for i in 0..args.files {
        let sub = small.join(format!("{:03}", i / 100));
        std::fs::create_dir_all(&sub)?;
        write_file(&sub.join(format!("{i}.dat")), args.file_size, 1000 + i as u64)?;
    }
    let provider_node = P2P::new("warren-bench", Identity::generate());
    let receiver = P2P::new("warren-bench", Identity::generate());
    let addr = provider_node.listen_quic("127.0.0.1:0".parse()?).await?.local_addr();
    let receiver_addr = receiver.listen_quic("127.0.0.1:0".parse()?).await?.local_addr();
    receiver.register_protocol(SINK, sink)?;
    receiver.discovered("bench", provider_node.id(), [addr], Default::default());
    provider_node.discovered("bench", receiver.id(), [receiver_addr], Default::default());
    let provider = Provider::new();
    provider.register(&provider_node)?;
    let started = Instant::now();
    let (_, big_hash) = provider.add_paths(std::slice::from_ref(&big)).await?;
    let hash_secs = started.elapsed().as_secs_f64();
    let (small_manifest, small_hash) = provider.add_paths(std::slice::from_ref(&small)).await?;
    let small_bytes = small_manifest.total_size();

    let out = dir.join("out");
    let (mut raw, mut file, mut raw_small, mut files) = (vec![], vec![], vec![], vec![]);
    let (mut raw_cpu, mut file_cpu) = (vec![], vec![]);
    for round in 1..=args.rounds {
        progress(&format!("round {round}/{}: raw stream, 1 file, raw stream, {} files", args.rounds, args.files));
        let (took, cpu) = costed(args.bytes, raw_round(&provider_node, &receiver, args.bytes)).await;
        raw.push(gbps(args.bytes, took?));
        raw_cpu.push(cpu);
        let (took, cpu) = costed(args.bytes, transfer_round(&receiver, &provider_node, big_hash, &out)).await;
        file.push(gbps(args.bytes, took?));
        file_cpu.push(cpu);
        raw_small.push(gbps(small_bytes, raw_round(&provider_node, &receiver, small_bytes).await?));
        let took = transfer_round(&receiver, &provider_node, small_hash, &out).await?;
        files.push(args.files as f64 / took.as_secs_f64());
    }
    let (raw, file, raw_small, files_per_sec) = (median(raw), median(file), median(raw_small), median(files));
    let (raw_cpu, file_cpu) = (median(raw_cpu), median(file_cpu));
    let small_gbps = files_per_sec * args.file_size as f64 * 8.0 / 1e9;
    let report = serde_json::json!({
        "bytes": args.bytes,
        "rounds": args.rounds,
        "raw_stream_gbps": raw,
        "transfer_gbps": file,
        "transfer_vs_raw": file / raw,
        // Both ends share the machine's cores: where they are all busy, the throughput ratio
        // follows this one.
        "raw_stream_cpu_secs_per_gib": raw_cpu,
        "transfer_cpu_secs_per_gib": file_cpu,
        "raw_vs_transfer_cpu": raw_cpu / file_cpu,
        "hash_gbps": args.bytes as f64 * 8.0 / hash_secs / 1e9,
        "small_files": args.files,
        "small_file_bytes": args.file_size,
        "small_files_per_sec": files_per_sec,
        "small_transfer_gbps": small_gbps,
        "small_raw_stream_gbps": raw_small,
        "small_transfer_vs_raw": small_gbps / raw_small,
    });
    if args.json {
        json_line(&report);
    } else {
        println!("transfer on loopback, {} rounds (median), against a raw warren stream in the same run", args.rounds);
        println!(
            "  one {} MiB file      {file:6.2} Gbit/s   raw stream {raw:6.2} Gbit/s   ratio {:.3}",
            args.bytes >> 20,
            file / raw
        );
        println!(
            "  {} files of {} B   {files_per_sec:8.0} files/s = {small_gbps:6.3} Gbit/s   raw stream {raw_small:6.2} Gbit/s   ratio {:.3}",
            args.files,
            args.file_size,
            small_gbps / raw_small
        );
        println!(
            "  CPU per GiB          transfer {file_cpu:5.2} s   raw stream {raw_cpu:5.2} s   ratio {:.3} (both ends, all threads)",
            raw_cpu / file_cpu
        );
        println!("  hashing (sender)     {:6.2} Gbit/s", args.bytes as f64 * 8.0 / hash_secs / 1e9);
    }
    provider_node.shutdown().await;
    receiver.shutdown().await;
    Ok(())
}
