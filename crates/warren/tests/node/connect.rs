//! Connecting by identity, pinging both ways, many streams on one connection, routing.

use std::time::Duration;

use warren::{ConnectError, ConnectionState, Direction, Event, Identity, P2P};

use crate::support::*;

#[tokio::test]
async fn connect_by_identity_over_loopback_and_ping_both_ways() {
    let (alice, _) = node().await;
    let (bob, bob_addr) = node().await;
    alice.metadata_mut().insert("name", "alice").unwrap();
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();

    introduce(&alice, &bob, bob_addr);
    let rtts = warren::ping::ping(&alice, bob.id(), 3).await.unwrap();
    assert_eq!(rtts.len(), 3);
    assert!(rtts.iter().all(|rtt| *rtt < Duration::from_secs(5)), "{rtts:?}");

    let (remote, direction) = wait_for(&mut alice_events, |e| match e {
        Event::PeerConnected { remote, direction, .. } => Some((*remote, *direction)),
        _ => None,
    })
    .await;
    assert_eq!((remote, direction), (bob.id(), Direction::Outbound));
    // Bob learned Alice's identity from the handshake and her metadata from the hello.
    let (remote, direction, name) = wait_for(&mut bob_events, |e| match e {
        Event::PeerConnected { remote, direction, metadata, .. } => {
            Some((*remote, *direction, metadata.get("name").cloned()))
        }
        _ => None,
    })
    .await;
    assert_eq!((remote, direction, name.as_deref()), (alice.id(), Direction::Inbound, Some("alice")));

    // Bob knows no address of Alice, but reuses the connection she opened.
    assert!(bob.peer(&alice.id()).unwrap().addrs.is_empty());
    let rtts = warren::ping::ping(&bob, alice.id(), 3).await.unwrap();
    assert_eq!(rtts.len(), 3);
    assert_eq!(alice.connections().len(), 1);
    assert_eq!(bob.connections().len(), 1);
    let state = alice.peer(&bob.id()).unwrap().state;
    assert_eq!(state, ConnectionState::Connected { addr: bob_addr, direction: Direction::Outbound, connections: 1 });

    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn several_streams_at_once_share_one_connection() {
    let (alice, _) = node().await;
    let (bob, bob_addr) = node().await;
    introduce(&alice, &bob, bob_addr);
    let remote = bob.id();

    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            let alice = alice.clone();
            tokio::spawn(async move {
                let payload: Vec<u8> = (0..10_000u32).map(|j| (j as u8).wrapping_mul(i)).collect();
                let back = echo_once(&alice, remote, &payload).await;
                assert_eq!(back, payload, "stream {i}");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(alice.connections().len(), 1, "all streams share one connection");
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn connect_without_any_address_says_so() {
    let (alice, _) = node().await;
    let stranger = warren::Identity::generate().to_remote_identity();
    let err = alice.connect(stranger, "ping/1").await.unwrap_err();
    assert!(matches!(err, ConnectError::NoAddress { remote } if remote == stranger), "{err}");
    alice.shutdown().await;
}

#[tokio::test]
async fn hello_carries_metadata_and_protocols_and_the_guard_reports_only_changes() {
    let (alice, _) = node().await;
    let (bob, bob_addr) = node().await;
    let mut events = bob.subscribe();

    {
        let mut metadata = bob.metadata_mut();
        metadata.insert("name", "bob").unwrap();
        metadata.insert("library", "none").unwrap();
    }
    // Setting the same values again changes nothing and says nothing.
    bob.metadata_mut().insert("name", "bob").unwrap();
    // Refused entries leave the map as it was.
    assert!(bob.metadata_mut().insert("bad key", "x").is_err());
    assert!(bob.metadata_mut().insert("long", "x".repeat(256)).is_err());
    bob.metadata_mut().remove("library");

    let mut modified = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::MetadataModified { metadata } = event {
            modified.push(metadata);
        }
    }
    assert_eq!(modified.len(), 2, "one event per guard that changed something: {modified:?}");
    assert_eq!(modified[0].get("library").map(String::as_str), Some("none"));
    assert_eq!(modified[1].get("library"), None);

    introduce(&alice, &bob, bob_addr);
    let conn = alice.connection(bob.id()).await.unwrap();
    let metadata = conn.remote_metadata();
    assert_eq!(metadata.get("name").map(String::as_str), Some("bob"));
    assert_eq!(metadata.get("version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    // OS and device model are opt-in (issue 14, point 3).
    assert_eq!(metadata.get("os"), None);
    assert_eq!(metadata.get("device_model"), None);
    assert_eq!(conn.remote_protocols(), ["echo/1", "ping/1"]);
    assert_eq!(conn.remote_wire_version(), (warren::wire::WIRE_VERSION_MAJOR, warren::wire::WIRE_VERSION_MINOR));
    assert_eq!(alice.peer(&bob.id()).unwrap().metadata, *metadata);
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn device_info_goes_only_when_the_application_opts_in() {
    let (alice, _) = node().await;
    let bob = P2P::builder("warren-test", Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .device_info(true)
        .protocol(ECHO, echo)
        .spawn()
        .await
        .unwrap();
    let bob_addr = bob.listen_addrs()[0];
    introduce(&alice, &bob, bob_addr);
    let conn = alice.connection(bob.id()).await.unwrap();
    let metadata = conn.remote_metadata();
    assert_eq!(metadata.get("os").map(String::as_str), Some(std::env::consts::OS));
    assert!(metadata.contains_key("device_model"));
    assert_eq!(metadata.get("version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_stall_the_node() {
    let (alice, _) = node().await;
    let (bob, bob_addr) = node().await;
    let mut stalled = alice.subscribe();
    for i in 0..(warren::node::EVENT_BUFFER * 2) {
        alice.metadata_mut().insert("counter", i.to_string()).unwrap();
    }
    introduce(&alice, &bob, bob_addr);
    assert_eq!(warren::ping::ping(&alice, bob.id(), 1).await.unwrap().len(), 1);
    // The stalled subscriber lost the oldest events and is told how many.
    match stalled.try_recv() {
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(lost)) => assert!(lost >= 1024, "{lost}"),
        other => panic!("expected a lag report, got {other:?}"),
    }
    alice.shutdown().await;
    bob.shutdown().await;
}

/// A peer's known addresses are raced, not tried in turn: a dead one listed first does not
/// hold up the live one (tried in turn, the dead one would take the whole 10 s handshake
/// timeout first).
#[tokio::test]
async fn a_dead_address_listed_first_does_not_delay_a_live_one() {
    let (alice, _) = node().await;
    // Bob on 127.0.0.2, the silent socket on 127.0.0.1: the peer table keeps addresses sorted,
    // so the dead one comes first.
    let (bob, bob_addr) = node_with(Identity::generate(), "127.0.0.2:0".parse().unwrap()).await;
    // Bound and silent: every packet sent to it is swallowed.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead = silent.local_addr().unwrap();
    alice.discovered("test", bob.id(), [dead, bob_addr], Default::default());
    assert_eq!(alice.peer(&bob.id()).unwrap().addresses(), vec![dead, bob_addr], "the dead one is tried first");
    let started = std::time::Instant::now();
    let conn = tokio::time::timeout(HANG, alice.connection(bob.id())).await.unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(conn.remote(), bob.id());
    assert_eq!(conn.remote_address(), bob_addr);
    assert!(took < warren::node::HANDSHAKE_TIMEOUT / 2, "took {took:?}");
    // The losing attempt left no connection behind (the race cancels or closes the others
    // before it returns, and a dial to a silent address never registers one).
    assert_eq!(alice.connections().len(), 1);
    alice.shutdown().await;
    bob.shutdown().await;
}

/// A node can listen on several sockets at once; a dial goes out through the one of the
/// address's family.
#[tokio::test]
async fn several_listeners_dial_through_the_one_of_the_right_family() {
    let alice = P2P::new("warren-test", Identity::generate());
    alice.listen_quic("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let v6 = alice.listen_quic("[::1]:0".parse().unwrap()).await.unwrap();
    assert_eq!(alice.listen_addrs().len(), 2);
    let (bob, _) = node_with(Identity::generate(), "[::1]:0".parse().unwrap()).await;
    let bob_addr = bob.listen_addrs()[0];
    introduce(&alice, &bob, bob_addr);
    let rtts = warren::ping::ping(&alice, bob.id(), 2).await.unwrap();
    assert_eq!(rtts.len(), 2);
    // Bob saw alice come from her IPv6 socket.
    let seen = bob.open_connection(&alice.id()).unwrap().remote_address();
    assert_eq!(seen.port(), v6.local_addr().port(), "{seen}");
    alice.shutdown().await;
    bob.shutdown().await;
}
