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

/// CPU seconds the calling thread has used so far, user and system.
fn thread_cpu_secs() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given and reads nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// The work that no transfer of a file can leave out, in CPU seconds per GiB, measured on this
/// machine, on one thread, with nothing else running, each part done the cheapest way there is:
/// the sender gets the file's bytes from the page cache (mapped with `MAP_POPULATE`: no copy,
/// cheaper than the `pread` a sender must use, since a mapped file that shrinks kills its
/// reader), the receiver checks every 16 KiB group against its hash and writes the bytes into
/// the folder the transfer writes to (256 KiB at a time, straight from the mapping, with
/// `O_DIRECT` where the file system takes it) and syncs them. Left out, so the figure is a floor:
/// the stream's own work (the raw stream does it too), the receiver's copy out of the stream,
/// requests, checkpoints.
struct Floor {
    read: f64,
    hash: f64,
    write: f64,
}

impl Floor {
    fn total(&self) -> f64 {
        self.read + self.hash + self.write
    }
}

fn floor(path: &Path, dir: &Path) -> std::io::Result<Floor> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use warren_transfer::DIRECT_ALIGN;
    const PIECE: usize = 256 * 1024;
    let source = std::fs::File::open(path)?;
    let size = source.metadata()?.len() as usize;
    let out_path = dir.join("floor.bin");
    let open =
        |flags| std::fs::OpenOptions::new().create(true).truncate(true).write(true).custom_flags(flags).open(&out_path);
    let (out, direct) = match open(libc::O_DIRECT) {
        Ok(out) => (out, true),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
        Err(error) => return Err(error),
    };
    // The receiver's tail under 4 KiB goes through the page cache.
    let buffered = std::fs::OpenOptions::new().write(true).open(&out_path)?;
    let t0 = thread_cpu_secs();
    // SAFETY: a private read-only mapping of a file this bench wrote and nobody changes while
    // it runs; it is unmapped below, and nothing refers to it after that.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            source.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mut read = thread_cpu_secs() - t0;
    // SAFETY: the mapping is `size` bytes long, readable, and lives until the munmap below.
    let bytes = unsafe { std::slice::from_raw_parts(map.cast::<u8>(), size) };
    let (mut hash, mut write) = (0.0, 0.0);
    let mut sink = 0u8;
    for (p, piece) in bytes.chunks(PIECE).enumerate() {
        let at = (p * PIECE) as u64;
        let t1 = thread_cpu_secs();
        for (i, group) in piece.chunks(warren_transfer::GROUP as usize).enumerate() {
            sink ^= warren_transfer::tree::group_cv(group, at / warren_transfer::GROUP + i as u64)[0];
        }
        let t2 = thread_cpu_secs();
        let aligned = if direct { piece.len() / DIRECT_ALIGN * DIRECT_ALIGN } else { 0 };
        out.write_all_at(&piece[..aligned], at)?;
        buffered.write_all_at(&piece[aligned..], at + aligned as u64)?;
        (hash, write) = (hash + t2 - t1, write + thread_cpu_secs() - t2);
    }
    let t3 = thread_cpu_secs();
    buffered.sync_all()?;
    write += thread_cpu_secs() - t3;
    std::hint::black_box(sink);
    let t4 = thread_cpu_secs();
    // SAFETY: the mapping made above; `bytes` is not used after this.
    unsafe { libc::munmap(map, size) };
    read += thread_cpu_secs() - t4;
    drop((out, buffered));
    std::fs::remove_file(&out_path)?;
    let per_gib = (1u64 << 30) as f64 / size as f64;
    Ok(Floor { read: read * per_gib, hash: hash * per_gib, write: write * per_gib })
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
    let (mut floor_read, mut floor_hash, mut floor_write) = (vec![], vec![], vec![]);
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
        let measured = tokio::task::spawn_blocking({
            let (big, dir) = (big.clone(), dir.to_owned());
            move || floor(&big, &dir)
        })
        .await??;
        floor_read.push(measured.read);
        floor_hash.push(measured.hash);
        floor_write.push(measured.write);
    }
    let floor = Floor { read: median(floor_read), hash: median(floor_hash), write: median(floor_write) };
    let (raw, file, raw_small, files_per_sec) = (median(raw), median(file), median(raw_small), median(files));
    let (raw_cpu, file_cpu) = (median(raw_cpu), median(file_cpu));
    let small_gbps = files_per_sec * args.file_size as f64 * 8.0 / 1e9;
    // How busy the raw stream kept the machine's cores (1.0: all of them, all the time).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let raw_secs_per_gib = (1u64 << 30) as f64 * 8.0 / (raw * 1e9);
    let raw_busy = raw_cpu / (raw_secs_per_gib * cores);
    // With both ends on these cores, a transfer costs at least the raw stream's CPU plus the
    // floor's, and cannot keep more than all of the cores busy: its rate is at most
    // cores / (raw + floor) per second, and the raw stream's is raw_busy × cores / raw. The
    // ratio of the two is the best any transfer could reach against the raw stream here.
    let bound = raw_cpu / (raw_cpu + floor.total()) / raw_busy;
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
        "raw_stream_busy": raw_busy,
        "cores": cores,
        "floor_cpu_secs_per_gib": { "read": floor.read, "hash": floor.hash, "write": floor.write, "total": floor.total() },
        "bound_vs_raw": bound,
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
        println!(
            "  floor per GiB        read {:.2} s + check {:.2} s + write {:.2} s = {:.2} s; raw stream kept {:.0} % of {cores} cores busy",
            floor.read,
            floor.hash,
            floor.write,
            floor.total(),
            raw_busy * 100.0
        );
        println!("  best ratio possible  {bound:.3} (raw stream's CPU / (raw + floor), for all cores busy)");
    }
    provider_node.shutdown().await;
    receiver.shutdown().await;
    Ok(())
}
