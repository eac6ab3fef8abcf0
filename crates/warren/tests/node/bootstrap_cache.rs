//! The bootstrap cache remembers peers this node reached and reconnects to them after a
//! restart with no address given; a corrupted file is rebuilt with a warning.

use warren::discovery::cache::{BootstrapHook, SOURCE};
use warren::{Event, Identity};

use crate::support::*;

#[tokio::test]
async fn a_restarted_node_reconnects_to_the_peers_its_cache_remembers() {
    let dir = std::env::temp_dir().join(format!("warren-bootstrap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("bootstrap-cache");
    let (bob, bob_addr) = node().await;
    let bob_id = bob.id();
    let alice_secret = Identity::generate().to_secret_bytes();

    // First life: alice reaches bob once (address given), and the cache records it.
    let (alice, _) = node_with(Identity::from_secret_bytes(&alice_secret), "127.0.0.1:0".parse().unwrap()).await;
    let (cache, warning) = BootstrapHook::spawn(&alice, &path);
    assert!(warning.is_none(), "no file yet is not a problem");
    introduce(&alice, &bob, bob_addr);
    alice.connection(bob_id).await.unwrap();
    eventually("the success is recorded", || cache.entries().iter().any(|e| e.identity == bob_id)).await;
    alice.shutdown().await;

    // Second life: nothing but the cache file; alice finds and reconnects to bob by itself.
    let (alice, _) = node_with(Identity::from_secret_bytes(&alice_secret), "127.0.0.1:0".parse().unwrap()).await;
    let mut events = alice.subscribe();
    let (_cache, warning) = BootstrapHook::spawn(&alice, &path);
    assert!(warning.is_none());
    wait_for(&mut events, |e| matches!(e, Event::PeerConnected { remote, .. } if *remote == bob_id).then_some(()))
        .await;
    assert_eq!(alice.peer(&bob_id).unwrap().addrs[&bob_addr], [SOURCE.to_string()].into());
    alice.shutdown().await;

    // A corrupted file: a warning, an empty cache, and a whole file written back.
    std::fs::write(&path, b"WRNCACHE\x01 definitely not a cache").unwrap();
    let (alice, _) = node_with(Identity::from_secret_bytes(&alice_secret), "127.0.0.1:0".parse().unwrap()).await;
    let (cache, warning) = BootstrapHook::spawn(&alice, &path);
    let warning = warning.expect("the corruption is reported").to_string();
    assert!(warning.contains("truncated header") || warning.contains("checksum"), "{warning}");
    assert!(cache.entries().is_empty());
    alice.shutdown().await;
    assert!(warren::discovery::cache::BootstrapCache::load(&path).1.is_none(), "rebuilt whole at shutdown");
    bob.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
