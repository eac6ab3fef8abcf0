//! ContactsOnly against an *active* stranger (issue 14, point 4): one who reaches the node's
//! port and starts handshakes learns neither its identity, nor its metadata, nor its
//! protocols; its contacts still connect by identity.

use std::sync::Arc;

use warren::transport::quic::{PathKind, client_config_expecting};
use warren::transport::tls;
use warren::{ConnectError, Identity};

use crate::support::*;

#[tokio::test]
async fn a_stranger_who_reaches_the_port_learns_nothing_and_contacts_still_connect() {
    let (bob, bob_addr) = node().await;
    let (alice, _) = node().await;
    let (mallory, _) = node().await;
    bob.add_contact(alice.id());
    alice.add_contact(bob.id());
    bob.set_contacts_only(true);

    // Mallory dials the port blind, and as if she knew whom she dials: both fail, and neither
    // error names bob.
    for expected in [None, Some(bob.id()), Some(Identity::generate().to_remote_identity())] {
        let error = mallory.dial(bob_addr, expected).await.unwrap_err();
        assert!(!matches!(error, ConnectError::WrongIdentity { .. }), "{error}");
        assert!(!error.to_string().contains(&bob.id().to_string()), "{error}");
    }
    // A raw handshake shows it: the server presented no key at all (before issue 14 it
    // presented bob's to anyone).
    let identity = Arc::new(Identity::generate());
    let (config, presented) = client_config_expecting(&identity, PathKind::Local, bob.id());
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let result = endpoint.connect_with(config, bob_addr, tls::SERVER_NAME).unwrap().await;
    assert!(result.is_err(), "a stranger's handshake completed");
    assert_eq!(presented.get(), None, "the server showed its key to a stranger");
    endpoint.close(0u32.into(), b"");
    assert!(mallory.peer(&bob.id()).is_none_or(|p| p.metadata.is_empty()));

    // Alice, a contact, connects by identity and pings.
    introduce(&alice, &bob, bob_addr);
    assert_eq!(warren::ping::ping(&alice, bob.id(), 1).await.unwrap().len(), 1);

    // Out of ContactsOnly, the port answers anyone again.
    bob.set_contacts_only(false);
    let conn = mallory.dial(bob_addr, None).await.unwrap();
    assert_eq!(conn.remote(), bob.id());
    for node in [alice, bob, mallory] {
        node.shutdown().await;
    }
}
