//! An incompatible major wire version gives a clear error on both sides.

use std::collections::BTreeMap;
use std::sync::Arc;

use warren::connection::codes;
use warren::transport::tls;
use warren::wire::{Hello, WIRE_VERSION_MAJOR};
use warren::{ConnectError, Identity};

use crate::support::raw::dial_as_new_identity;
use crate::support::*;

fn future_hello() -> Vec<u8> {
    Hello { major: WIRE_VERSION_MAJOR + 1, minor: 0, metadata: BTreeMap::new(), protocols: vec!["ping/2".into()] }
        .to_bytes()
        .unwrap()
}

#[tokio::test]
async fn a_newer_major_dialling_us_is_refused_and_told_our_version() {
    let (bob, bob_addr) = node().await;
    let mut events = bob.subscribe();
    let (endpoint, conn) = dial_as_new_identity(bob_addr).await;

    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&future_hello()).await.unwrap();
    send.finish().unwrap();
    // The node sends its hello whatever the peer's version, so the newer peer can say what
    // went wrong...
    let theirs = Hello::from_bytes(&conn.accept_uni().await.unwrap().read_to_end(65536).await.unwrap()).unwrap();
    assert_eq!(theirs.major, WIRE_VERSION_MAJOR);
    // ...then closes the connection with the version code.
    assert_eq!(close_code(conn.closed().await), codes::INCOMPATIBLE_VERSION);
    let reason = next_rejection(&mut events).await;
    assert_eq!(reason, "incompatible wire version: we speak 1.x, the peer speaks 2.x");
    assert!(bob.connections().is_empty());
    endpoint.close(0u32.into(), b"");
    bob.shutdown().await;
}

#[tokio::test]
async fn dialling_a_newer_major_fails_with_incompatible_version() {
    let (alice, _) = node().await;
    let identity = Arc::new(Identity::generate());
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(&identity)).unwrap();
    let server =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let addr = server.local_addr().unwrap();
    let newer_peer = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        send.write_all(&future_hello()).await.unwrap();
        send.finish().unwrap();
        let theirs = Hello::from_bytes(&conn.accept_uni().await.unwrap().read_to_end(65536).await.unwrap()).unwrap();
        let closed = conn.closed().await;
        server.close(0u32.into(), b"");
        (theirs, closed)
    });

    let err = alice.dial(addr, Some(identity.to_remote_identity())).await.unwrap_err();
    assert!(matches!(err, ConnectError::IncompatibleVersion { ours: 1, theirs: 2 }), "{err}");
    assert_eq!(err.to_string(), "incompatible wire version: we speak 1.x, the peer speaks 2.x");
    let (our_hello, closed) = newer_peer.await.unwrap();
    assert_eq!(our_hello.major, WIRE_VERSION_MAJOR);
    assert_eq!(close_code(closed), codes::INCOMPATIBLE_VERSION);
    alice.shutdown().await;
}
