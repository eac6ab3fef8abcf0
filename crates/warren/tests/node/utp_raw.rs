//! Plain uTP (BEP 29, no Noise) between two warren sockets on loopback, and the SYN flood
//! bounds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::state::utp::Config;
use warren::transport::utp::{MAX_HALF_OPEN_PER_SOURCE, UtpSocket};
use warren::wire::utp::{Packet, Type};

use crate::support::HANG;

fn payload(len: usize) -> Vec<u8> {
    warren::testing::pseudo_random_bytes(0x2545_f491_4f6c_dd1d, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mebibytes_cross_loopback_intact_and_both_ends_finish() {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = UtpSocket::bind(lo, Config::default()).await.unwrap();
    server.listen();
    let client = UtpSocket::bind(lo, Config::default()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let data = payload(16 << 20);
    let expected = blake3::hash(&data);
    let receiving = tokio::spawn(async move {
        let mut stream = server.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        (blake3::hash(&got), got.len())
    });
    let started = Instant::now();
    let mut stream = tokio::time::timeout(HANG, client.connect(addr)).await.unwrap().unwrap();
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let (hash, len) = tokio::time::timeout(HANG, receiving).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(len, data.len());
    assert_eq!(hash, expected);
    let finished = tokio::time::timeout(HANG, stream.finished()).await.unwrap();
    assert_eq!(finished, Some(warren::state::utp::Closed::Finished));
    eprintln!(
        "16 MiB over uTP on loopback in {elapsed:?} ({:.2} Gbit/s)",
        (16 << 23) as f64 / elapsed.as_secs_f64() / 1e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syn_flood_from_one_address_holds_sixteen_half_open_and_another_address_connects() {
    let server = UtpSocket::bind("127.0.0.1:0".parse().unwrap(), Config::default()).await.unwrap();
    server.listen();
    let addr = server.local_addr().unwrap();
    let flooder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut syn = Vec::new();
    for id in 0..1_000u16 {
        syn.clear();
        Packet {
            kind: Type::Syn,
            connection_id: id * 2,
            timestamp: 1,
            timestamp_difference: 0,
            wnd_size: 1 << 20,
            seq_nr: 1,
            ack_nr: 0,
            sack: None,
            payload: &[],
        }
        .encode(&mut syn);
        flooder.send_to(&syn, addr).await.unwrap();
    }
    // Every SYN was answered or refused; give the driver the time to see them all.
    tokio::time::timeout(HANG, async {
        while server.stats().accepted + server.stats().refused < 1_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the SYNs were not all seen");
    assert_eq!(server.stats().accepted, MAX_HALF_OPEN_PER_SOURCE as u64);
    assert_eq!(server.stats().refused, 1_000 - MAX_HALF_OPEN_PER_SOURCE as u64);
    // A peer from another address still gets in.
    let client = UtpSocket::bind("127.0.0.2:0".parse().unwrap(), Config::default()).await.unwrap();
    let mut stream = tokio::time::timeout(HANG, client.connect(addr)).await.unwrap().unwrap();
    stream.write_all(b"legit").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut accepted = None;
    for _ in 0..=MAX_HALF_OPEN_PER_SOURCE {
        let stream = tokio::time::timeout(HANG, server.accept()).await.unwrap().unwrap();
        if stream.peer_addr().ip().to_string() == "127.0.0.2" {
            accepted = Some(stream);
            break;
        }
    }
    let mut got = Vec::new();
    accepted.expect("the legitimate peer was accepted").read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"legit");
}
