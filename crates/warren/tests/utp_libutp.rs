//! Interop with libutp, the reference uTP implementation (C++, built from source by the
//! `libutp-rs2` crate): plain BEP 29 between warren's uTP and libutp, both directions, 100 MiB
//! each way through a simulated link with 1 % loss and reordering, bytes compared by BLAKE3.
//! Needs root (network namespaces).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::state::utp::Config;
use warren::transport::utp::UtpSocket;
use warren_netsim::link::{LinkConfig, Loss};
use warren_netsim::{Host, Simulation};

const BYTES: usize = 100 << 20;
const PORT: u16 = 6881;
const HANG: Duration = Duration::from_secs(600);

/// These tests move 100 MiB each: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A reproducible stream of bytes, written in chunks.
fn chunk(seed: u64, index: usize, len: usize) -> Vec<u8> {
    warren::testing::pseudo_random_bytes(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15), len)
}

fn expected_hash(seed: u64) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for index in 0..BYTES / (1 << 20) {
        hasher.update(&chunk(seed, index, 1 << 20));
    }
    hasher.finalize()
}

/// Two hosts joined by a link with 1 % loss each way and 2 ms of jitter that reorders.
fn pair(seed: u64) -> (Simulation, Host, Host) {
    let mut sim = Simulation::new(seed);
    let a = sim.add_host("a", Ipv4Addr::new(10, 0, 0, 1), 24).unwrap_or_else(|e| panic!("{e}"));
    let b = sim.add_host("b", Ipv4Addr::new(10, 0, 0, 2), 24).unwrap_or_else(|e| panic!("{e}"));
    let link = LinkConfig {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(2),
        reorder: true,
        loss: Loss::Random(0.01),
        ..Default::default()
    };
    sim.link(&a, &b, link);
    sim.start().unwrap();
    (sim, a, b)
}

/// Reads everything from `stream` and returns its BLAKE3 hash and length.
async fn hash_all(mut stream: impl tokio::io::AsyncRead + Unpin) -> (blake3::Hash, usize) {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf).await.expect("reading");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n;
    }
    (hasher.finalize(), len)
}

async fn send_all(mut stream: impl tokio::io::AsyncWrite + Unpin, seed: u64) {
    for index in 0..BYTES / (1 << 20) {
        stream.write_all(&chunk(seed, index, 1 << 20)).await.expect("writing");
    }
    // libutp-rs2 answers the first shutdown with "call it again", and queues the FIN on the
    // second.
    if stream.shutdown().await.is_err() {
        stream.shutdown().await.expect("shutting down");
    }
}

#[test]
fn libutp_sends_a_hundred_mebibytes_to_warren_through_loss_and_reordering() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_sim, a, b) = pair(21);
    let server = SocketAddr::from((b.ip(), PORT));
    let receiving = b.spawn(move || async move {
        let socket = UtpSocket::bind(server, Config::default()).await.unwrap();
        socket.listen();
        let stream = socket.accept().await.unwrap();
        let (hash, len) = tokio::time::timeout(HANG, hash_all(stream)).await.expect("warren received it all");
        // Let the last ACKs out before the socket goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        (hash, len)
    });
    let started = Instant::now();
    let sending = a.spawn(move || async move {
        let context =
            libutp_rs2::UtpUdpContext::new_udp(SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), PORT))).await.unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(10), context.connect(server)).await.unwrap().unwrap();
        tokio::time::timeout(HANG, send_all(stream, 1)).await.expect("libutp sent it all");
        // libutp's shutdown queues the FIN; give it the time to go.
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    sending.join().unwrap();
    let (hash, len) = receiving.join().unwrap();
    eprintln!("libutp -> warren: {len} bytes in {:?}", started.elapsed());
    assert_eq!(len, BYTES);
    assert_eq!(hash, expected_hash(1));
}

#[test]
fn warren_sends_a_hundred_mebibytes_to_libutp_through_loss_and_reordering() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_sim, a, b) = pair(22);
    let server = SocketAddr::from((b.ip(), PORT));
    let receiving = b.spawn(move || async move {
        let context = libutp_rs2::UtpUdpContext::new_udp(server).await.unwrap();
        let stream = context.accept().await.unwrap();
        tokio::time::timeout(HANG, hash_all(stream)).await.expect("libutp received it all")
    });
    let started = Instant::now();
    let sending = a.spawn(move || async move {
        let socket =
            UtpSocket::bind(SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 0)), Config::default()).await.unwrap();
        let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(server)).await.unwrap().unwrap();
        for index in 0..BYTES / (1 << 20) {
            stream.write_all(&chunk(2, index, 1 << 20)).await.expect("writing");
        }
        stream.shutdown().await.unwrap();
        tokio::time::timeout(HANG, stream.acknowledged()).await.expect("libutp acknowledged everything")
    });
    let acknowledged = sending.join().unwrap();
    let (hash, len) = receiving.join().unwrap();
    eprintln!("warren -> libutp: {len} bytes in {:?}", started.elapsed());
    assert_eq!(len, BYTES);
    assert_eq!(hash, expected_hash(2));
    assert!(acknowledged, "libutp acknowledged the data and the FIN");
}
