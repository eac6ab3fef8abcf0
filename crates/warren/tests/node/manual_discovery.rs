//! Manual discovery dials given addresses, learns identities and reconnects after a restart.

use warren::discovery::manual::{ManualDiscovery, ManualPeer, SOURCE};
use warren::{Event, Identity};

use crate::support::*;

#[tokio::test]
async fn a_manual_peer_is_connected_and_reconnected_after_it_restarts() {
    let bob_secret = Identity::generate().to_secret_bytes();
    let (bob, bob_addr) = node_with(Identity::from_secret_bytes(&bob_secret), "127.0.0.1:0".parse().unwrap()).await;
    let (alice, _) = node().await;
    let mut events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    let peer: ManualPeer = format!("{}@{bob_addr}", bob.id()).parse().unwrap();
    let manual = ManualDiscovery::spawn(&alice, [peer.clone()]);
    let bob_id = bob.id();

    let connected = |e: &Event| matches!(e, Event::PeerConnected { remote, .. } if *remote == bob_id).then_some(());
    wait_for(&mut events, connected).await;
    assert_eq!(alice.peer(&bob_id).unwrap().addrs[&bob_addr], [SOURCE.to_string()].into());

    // Bob finishes his side of the handshake half a round trip after Alice; shutting down
    // before that would leave a connection mid-handshake, whose close takes seconds to drain.
    wait_for(&mut bob_events, |e| matches!(e, Event::PeerConnected { .. }).then_some(())).await;
    bob.shutdown().await;
    wait_for(&mut events, |e| matches!(e, Event::PeerDisconnected { remote, .. } if *remote == bob_id).then_some(()))
        .await;
    // Bob comes back on the same address with the same identity; Alice reconnects by herself.
    let (bob, _) = node_with(Identity::from_secret_bytes(&bob_secret), bob_addr).await;
    wait_for(&mut events, connected).await;
    assert_eq!(warren::ping::ping(&alice, bob_id, 1).await.unwrap().len(), 1);

    // Removing the target withdraws the manual source's address.
    assert!(manual.remove(&peer));
    wait_for(&mut events, |e| matches!(e, Event::PeerExpired { remote, .. } if *remote == bob_id).then_some(())).await;
    assert!(alice.peer(&bob_id).unwrap().addrs.is_empty());
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn a_manual_address_without_identity_learns_who_answers() {
    let (bob, bob_addr) = node().await;
    let (alice, _) = node().await;
    let mut events = alice.subscribe();
    ManualDiscovery::spawn(&alice, [bob_addr.to_string().parse().unwrap()]);
    let (remote, source, addrs) = wait_for(&mut events, |e| match e {
        Event::PeerDiscovered { remote, source, addrs, .. } => Some((*remote, source.clone(), addrs.clone())),
        _ => None,
    })
    .await;
    assert_eq!((remote, source.as_str(), addrs), (bob.id(), SOURCE, vec![bob_addr]));
    alice.shutdown().await;
    bob.shutdown().await;
}
