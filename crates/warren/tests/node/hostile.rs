//! A peer that sends garbage gets an error on that stream or connection; other peers never
//! notice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::connection::codes;
use warren::transport::{StreamError, TransportConnection};

use crate::support::raw::dial_as_new_identity;
use crate::support::*;

/// Writes `bytes` on a fresh raw stream (below protocol routing, on the transport's connection)
/// and returns how the node answered.
async fn raw_stream(conn: &dyn TransportConnection, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open raw stream");
    send.write_all(bytes).await.expect("write raw header");
    let _ = send.finish();
    let mut answer = Vec::new();
    recv.read_to_end(&mut answer).await.map(|_| answer)
}

fn reset_code(result: std::io::Result<Vec<u8>>) -> u32 {
    match result.as_ref().map_err(StreamError::of) {
        Err(Some(StreamError::Reset(code))) => u32::try_from(*code).unwrap(),
        other => panic!("expected the stream to be reset, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_and_oversized_stream_headers_are_reset_and_others_keep_being_served() {
    let (bob, bob_addr) = node().await;
    let (alice, _) = node().await;
    let (hostile, _) = node().await;
    introduce(&alice, &bob, bob_addr);
    introduce(&hostile, &bob, bob_addr);
    let conn = hostile.connection(bob.id()).await.unwrap();
    let raw = conn.transport();

    let mut oversized = vec![200u8];
    oversized.extend_from_slice(&[b'x'; 200]);
    assert_eq!(reset_code(raw_stream(raw, &oversized).await), codes::BAD_STREAM_HEADER);
    assert_eq!(reset_code(raw_stream(raw, b"\x00").await), codes::BAD_STREAM_HEADER);
    assert_eq!(reset_code(raw_stream(raw, b"\x03\xff\xfe\xfd").await), codes::BAD_STREAM_HEADER);
    assert_eq!(reset_code(raw_stream(raw, b"\x05ping").await), codes::BAD_STREAM_HEADER, "truncated header");
    assert_eq!(reset_code(raw_stream(raw, b"\x07nope/99").await), codes::UNKNOWN_PROTOCOL);

    assert_eq!(warren::ping::ping(&alice, bob.id(), 3).await.unwrap().len(), 3);
    // The hostile peer's connection itself is still open: a bad stream costs only that stream.
    assert_eq!(warren::ping::ping(&hostile, bob.id(), 1).await.unwrap().len(), 1);
    for node in [alice, bob, hostile] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_at_once_do_not_stop_another_peer() {
    const STREAMS: usize = 10_000;
    let (bob, bob_addr) = node().await;
    let (alice, _) = node().await;
    let (hostile, _) = node().await;
    introduce(&alice, &bob, bob_addr);
    introduce(&hostile, &bob, bob_addr);
    let conn = hostile.connection(bob.id()).await.unwrap();
    // Alice is connected before the flood starts.
    warren::ping::ping(&alice, bob.id(), 1).await.unwrap();

    let refused = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (conn, refused) = (conn.clone(), refused.clone());
            tokio::spawn(async move {
                let header: &[u8] = if i % 2 == 0 { b"\xffgarbage" } else { b"\x07nope/99" };
                let code = reset_code(raw_stream(conn.transport(), header).await);
                assert!(code == codes::BAD_STREAM_HEADER || code == codes::UNKNOWN_PROTOCOL, "stream {i}: code {code}");
                refused.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();

    // While the flood runs, Alice's pings keep working.
    for _ in 0..20 {
        let rtts = warren::ping::ping(&alice, bob.id(), 1).await.unwrap();
        assert_eq!(rtts.len(), 1);
    }
    tokio::time::timeout(HANG * 4, async {
        for task in flood {
            task.await.unwrap();
        }
    })
    .await
    .expect("flood did not finish");
    assert_eq!(refused.load(Ordering::Relaxed), STREAMS);
    assert_eq!(warren::ping::ping(&alice, bob.id(), 1).await.unwrap().len(), 1);
    for node in [alice, bob, hostile] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_garbage_hello_closes_that_connection_only() {
    let (bob, bob_addr) = node().await;
    let (alice, _) = node().await;
    introduce(&alice, &bob, bob_addr);
    let mut events = bob.subscribe();

    let (endpoint, conn) = dial_as_new_identity(bob_addr).await;
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(b"\x01\x00\x00\x00\xff not a hello").await.unwrap();
    send.finish().unwrap();

    assert_eq!(close_code(conn.closed().await), codes::BAD_HELLO);
    let reason = next_rejection(&mut events).await;
    assert_eq!(reason, "hello failed: HelloBody.metadata: length 4223 exceeds max 255");
    assert_eq!(warren::ping::ping(&alice, bob.id(), 2).await.unwrap().len(), 2);
    endpoint.close(0u32.into(), b"");
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn a_second_unidirectional_stream_after_the_hello_closes_the_connection() {
    let (bob, bob_addr) = node().await;
    let (hostile, _) = node().await;
    introduce(&hostile, &bob, bob_addr);
    let conn = hostile.connection(bob.id()).await.unwrap();
    let mut send = conn.transport().open_uni().await.unwrap();
    send.write_all(b"unasked for").await.unwrap();
    assert_eq!(close_code(conn.closed().await), codes::PROTOCOL_VIOLATION);
    hostile.shutdown().await;
    bob.shutdown().await;
}
