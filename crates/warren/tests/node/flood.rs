//! Connection floods from throwaway identities (issue 14, point 1): identities are free, so
//! what bounds a flood is the node's admission limits per source and in total, and the small
//! windows an unadmitted connection has.

use std::sync::Arc;
use std::time::Duration;

use warren::transport::tls;
use warren::wire::{Hello, WIRE_VERSION_MAJOR, WIRE_VERSION_MINOR};
use warren::{Identity, P2P};

use crate::support::raw::client;
use crate::support::*;

/// Handshakes the flood starts at once from one address.
const FLOOD: usize = 200;

#[tokio::test]
async fn a_handshake_flood_from_one_address_is_capped_and_a_real_peer_still_connects() {
    let bob = P2P::new("warren-test", Identity::generate());
    let quic = bob.listen_quic("127.0.0.1:0".parse().unwrap()).await.unwrap();
    warren::ping::register(&bob).unwrap();
    let bob_addr = quic.local_addr();
    let limits = quic.admission_limits();

    // 200 throwaway identities from one address, all at once, each holding its connection.
    let (endpoint, _) = client(tls::client_config(&Arc::new(Identity::generate())));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let (endpoint, config) = (endpoint.clone(), client_config_for_new_identity());
        flood.spawn(async move {
            let connecting = endpoint.connect_with(config, bob_addr, tls::SERVER_NAME).unwrap();
            tokio::time::timeout(HANG, connecting).await.expect("refused or accepted, never silent").ok()
        });
    }
    let mut held = Vec::new();
    while let Some(done) = flood.join_next().await {
        held.extend(done.unwrap());
    }
    // Before issue 14 all 200 completed (and each kept 8 MiB stream and 32 MiB connection
    // windows open to its sender).
    assert!(
        held.len() <= limits.connections_per_source,
        "{} of {FLOOD} handshakes from one address completed; the cap is {}",
        held.len(),
        limits.connections_per_source
    );
    let (stats, (handshakes, connections)) = quic.admission();
    assert!(stats.refused as usize >= FLOOD - limits.connections_per_source, "{stats:?}");
    assert!(connections <= limits.connections_per_source, "{connections} alive");
    assert!(handshakes <= limits.handshakes_per_source);

    // Another address is not held back by the flood: a real peer connects and pings.
    let (alice, _) = node_with(Identity::generate(), "127.0.0.2:0".parse().unwrap()).await;
    introduce(&alice, &bob, bob_addr);
    assert_eq!(warren::ping::ping(&alice, bob.id(), 1).await.unwrap().len(), 1);

    // The flood's connections give their places back when they close.
    for conn in &held {
        conn.close(0u32.into(), b"");
    }
    tokio::time::timeout(HANG, async {
        while quic.admission().1.1 > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the closed connections still count");
    endpoint.close(0u32.into(), b"");
    alice.shutdown().await;
    bob.shutdown().await;
}

fn client_config_for_new_identity() -> quinn::ClientConfig {
    client(tls::client_config(&Arc::new(Identity::generate()))).1
}

#[tokio::test]
async fn an_unadmitted_connection_can_open_few_streams_until_its_hello_is_checked() {
    let (bob, bob_addr) = node().await;
    let (endpoint, config) = client(tls::client_config(&Arc::new(Identity::generate())));
    let conn = endpoint.connect_with(config, bob_addr, tls::SERVER_NAME).unwrap().await.unwrap();
    // No hello yet: the node allows UNADMITTED_STREAMS bidirectional streams, served only once
    // admitted, and no more (before issue 14 it allowed 128, with 8 MiB windows each, to a
    // dialler that had not said who it is).
    let mut early = Vec::new();
    for _ in 0..warren::transport::quic::UNADMITTED_STREAMS {
        early.push(tokio::time::timeout(HANG, conn.open_bi()).await.expect("within the limit").unwrap());
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await.is_err(),
        "an unadmitted dialler opened more streams than allowed"
    );
    let hello = Hello {
        major: WIRE_VERSION_MAJOR,
        minor: WIRE_VERSION_MINOR,
        metadata: Default::default(),
        protocols: Vec::new(),
    };
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&hello.to_bytes().unwrap()).await.unwrap();
    send.finish().unwrap();
    // Admitted: more streams open.
    let (_send, _recv) = tokio::time::timeout(HANG, conn.open_bi()).await.expect("admitted").unwrap();
    endpoint.close(0u32.into(), b"");
    bob.shutdown().await;
}
