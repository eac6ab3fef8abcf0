//! Decoding realistic messages off a loopback TCP socket: warren-proto's derive, decoding
//! straight off the stream, against the usual u32 length prefix + buffer + bincode.
//!
//! Three messages: a hello (small, several strings), a file-transfer header with 100 file
//! entries, and a 64 KiB block. Baselines: bincode reading each frame with two `read_exact`
//! calls on the socket, and bincode behind a `BufReader`. Criterion measures time per message;
//! before that, a summary prints messages/s, allocations per message and the ratios for each.
//!
//! Run with `cargo bench -p warren-proto`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;
use warren_proto::{Decode, Encode, Message, Reader, encode_to_vec};

/// Counts heap allocations, to report allocations per decoded message.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[proto(max_len = 1024)]
struct Hello {
    major: u16,
    minor: u16,
    metadata: BTreeMap<String, String>,
    protocols: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
struct FileEntry {
    path: String,
    size: u64,
    modified_secs: u64,
    hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[proto(max_len = 4096)]
struct TransferHeader {
    transfer_id: Uuid,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[proto(max_len = 65536, max_bytes = 70000)]
struct Block {
    transfer_id: Uuid,
    offset: u64,
    data: Bytes,
}

fn hello() -> Hello {
    Hello {
        major: 1,
        minor: 0,
        metadata: [("name", "alice's laptop"), ("os", "linux"), ("device_model", "ThinkPad X1"), ("version", "0.1.0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        protocols: vec!["ping/1".into(), "transfer/1".into(), "chat/1".into()],
    }
}

fn header() -> TransferHeader {
    TransferHeader {
        transfer_id: Uuid::from_u128(0x1234),
        files: (0..100)
            .map(|i| FileEntry {
                path: format!("photos/2026/holiday/IMG_{i:05}.jpg"),
                size: 3_000_000 + i * 1000,
                modified_secs: 1_790_000_000 + i,
                hash: [i as u8; 32],
            })
            .collect(),
    }
}

fn block() -> Block {
    Block { transfer_id: Uuid::from_u128(0x1234), offset: 1 << 30, data: Bytes::from(vec![0xa5; 64 * 1024]) }
}

/// How a receiver turns bytes on the socket into messages.
#[derive(Clone, Copy, Debug)]
enum Decoder {
    /// warren-proto: decode straight off the socket.
    Derive,
    /// u32 length prefix, `read_exact` into a reused buffer, bincode.
    Bincode,
    /// The same behind a 16 KiB `BufReader`.
    BincodeBuffered,
}

impl Decoder {
    const ALL: [Decoder; 3] = [Decoder::Derive, Decoder::Bincode, Decoder::BincodeBuffered];

    fn name(self) -> &'static str {
        match self {
            Decoder::Derive => "derive",
            Decoder::Bincode => "len+bincode",
            Decoder::BincodeBuffered => "len+bincode+bufreader",
        }
    }

    fn wire(self, message: &(impl Message + Serialize)) -> Vec<u8> {
        match self {
            Decoder::Derive => encode_to_vec(message).expect("bench messages are within limits"),
            Decoder::Bincode | Decoder::BincodeBuffered => {
                let body = bincode::serialize(message).expect("bincode encodes");
                [&(body.len() as u32).to_le_bytes()[..], &body].concat()
            }
        }
    }
}

async fn read_framed<T: for<'de> Deserialize<'de>>(
    socket: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<T> {
    let len = socket.read_u32_le().await? as usize;
    buf.resize(len, 0);
    socket.read_exact(buf).await?;
    bincode::deserialize(buf).map_err(std::io::Error::other)
}

/// Sends `count` copies of one encoded message over a fresh loopback connection and decodes
/// them; returns the time from the first byte to the last message decoded, and the
/// allocations made meanwhile.
async fn run<T>(decoder: Decoder, message: &T, count: u64) -> (Duration, u64)
where
    T: Message + Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let wire = decoder.wire(message);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = tokio::spawn(async move {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut batch = Vec::new();
        for _ in 0..(256 * 1024 / wire.len()).max(1) {
            batch.extend_from_slice(&wire);
        }
        let per_batch = (batch.len() / wire.len()) as u64;
        let mut left = count;
        while left > 0 {
            let n = left.min(per_batch);
            socket.write_all(&batch[..n as usize * wire.len()]).await.unwrap();
            left -= n;
        }
    });
    let (mut socket, _) = listener.accept().await.unwrap();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut last = None;
    match decoder {
        Decoder::Derive => {
            let mut reader = Reader::new(&mut socket);
            for _ in 0..count {
                last = Some(black_box(reader.decode::<T>().await.unwrap()));
            }
        }
        Decoder::Bincode => {
            let mut buf = Vec::new();
            for _ in 0..count {
                last = Some(black_box(read_framed::<T>(&mut socket, &mut buf).await.unwrap()));
            }
        }
        Decoder::BincodeBuffered => {
            let mut socket = BufReader::with_capacity(16 * 1024, &mut socket);
            let mut buf = Vec::new();
            for _ in 0..count {
                last = Some(black_box(read_framed::<T>(&mut socket, &mut buf).await.unwrap()));
            }
        }
    }
    let elapsed = started.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    assert_eq!(last.as_ref(), Some(message));
    writer.await.unwrap();
    (elapsed, allocations)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Prints messages/s and allocations per message for each decoder, with ratios against the
/// plain bincode baseline, measured in this run. `scale` divides the message counts: `cargo
/// test` (no `--bench` argument) runs a quick smoke version.
fn summary(scale: u64) {
    let rt = runtime();
    println!("\nwarren-proto decode over loopback TCP (this run; higher msgs/s is better)");
    println!("{:<16} {:<22} {:>12} {:>12} {:>14}", "message", "decoder", "msgs/s", "allocs/msg", "vs len+bincode");
    fn rows<T>(rt: &tokio::runtime::Runtime, label: &str, message: &T, count: u64, scale: u64)
    where
        T: Message + Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let count = (count / scale).max(1);
        let mut baseline = None;
        let mut results = Vec::new();
        for decoder in [Decoder::Bincode, Decoder::Derive, Decoder::BincodeBuffered] {
            // Best of three, to soften the noise of a shared machine.
            let best =
                (0..3).map(|_| rt.block_on(run(decoder, message, count))).min_by_key(|(elapsed, _)| *elapsed).unwrap();
            let rate = count as f64 / best.0.as_secs_f64();
            baseline.get_or_insert(rate);
            results.push((decoder, rate, best.1 as f64 / count as f64));
        }
        results.sort_by_key(|(d, _, _)| Decoder::ALL.iter().position(|x| x.name() == d.name()));
        for (decoder, rate, allocs) in results {
            println!(
                "{label:<16} {:<22} {rate:>12.0} {allocs:>12.2} {:>13.2}x",
                decoder.name(),
                rate / baseline.unwrap()
            );
        }
    }
    rows(&rt, "hello", &hello(), 200_000, scale);
    rows(&rt, "header/100", &header(), 20_000, scale);
    rows(&rt, "block/64KiB", &block(), 20_000, scale);
    println!();
}

fn bench<T>(c: &mut Criterion, label: &str, message: T)
where
    T: Message + Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + Sync,
{
    let rt = runtime();
    let mut group = c.benchmark_group(label);
    group.throughput(Throughput::Elements(1));
    for decoder in Decoder::ALL {
        group.bench_function(decoder.name(), |b| {
            b.iter_custom(|iters| rt.block_on(run(decoder, &message, iters)).0);
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench(c, "hello", hello());
    bench(c, "header-100-files", header());
    bench(c, "block-64KiB", block());
}

criterion_group!(decode, benches);

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    summary(if benchmarking { 1 } else { 1000 });
    decode();
    Criterion::default().configure_from_args().final_summary();
}
