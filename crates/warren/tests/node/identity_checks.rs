//! Dialling identity X yields X or an error, never someone else; both sides prove their keys.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use warren::transport::tls;
use warren::{ConnectError, Event, Identity};

use crate::support::raw::{AcceptAnyServer, client};
use crate::support::*;

#[tokio::test]
async fn dialling_an_identity_where_another_answers_fails_with_wrong_identity() {
    let (alice, _) = node().await;
    let (bob, bob_addr) = node().await;
    let carol = Identity::generate().to_remote_identity();
    alice.discovered("test", carol, [bob_addr], Default::default());

    let err = alice.connect(carol, "ping/1").await.unwrap_err();
    match err {
        ConnectError::WrongIdentity { expected, got } => {
            assert_eq!(expected, carol);
            assert_eq!(got, bob.id());
        }
        other => panic!("expected WrongIdentity, got {other}"),
    }
    assert!(alice.connections().is_empty(), "the wrong peer's connection is not kept");
    let err = alice.dial(bob_addr, Some(carol)).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("wrong identity: dialled {carol} but ")), "{err}");
    alice.shutdown().await;
    bob.shutdown().await;
}

fn tls13_client() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
}

/// Connects with `crypto` and returns how the connection ended (it must not survive).
async fn handshake_outcome(crypto: rustls::ClientConfig, addr: std::net::SocketAddr) -> String {
    let (outcome, hello) = handshake_outcome_and_hello(crypto, addr).await;
    assert!(hello.is_empty(), "an unverified dialler got {} bytes of hello", hello.len());
    outcome
}

/// Connects with `crypto`; returns how the connection ended and what the node sent on a
/// unidirectional stream (its hello) meanwhile.
async fn handshake_outcome_and_hello(crypto: rustls::ClientConfig, addr: std::net::SocketAddr) -> (String, Vec<u8>) {
    let (endpoint, config) = client(crypto);
    let outcome = tokio::time::timeout(HANG, async {
        match endpoint.connect_with(config, addr, tls::SERVER_NAME).unwrap().await {
            Err(e) => (e.to_string(), Vec::new()),
            // TLS 1.3 clients finish first; the server's verdict arrives as a close. A hello
            // sent as 0.5-RTT data would be readable before it.
            Ok(conn) => {
                let mut hello = Vec::new();
                if let Ok(mut recv) = conn.accept_uni().await {
                    while let Ok(Some(chunk)) = recv.read_chunk(65536, true).await {
                        hello.extend_from_slice(&chunk.bytes);
                    }
                }
                (conn.closed().await.to_string(), hello)
            }
        }
    })
    .await
    .expect("the node neither accepted nor refused");
    endpoint.close(0u32.into(), b"");
    outcome
}

/// Presents one identity's key but signs the handshake with another.
#[derive(Debug)]
struct ImpostorKey {
    claimed: Identity,
    actual: Arc<Identity>,
}

#[derive(Debug)]
struct ImpostorSigner(Arc<Identity>);

impl Signer for ImpostorSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).to_vec())
    }
    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

impl SigningKey for ImpostorKey {
    fn choose_scheme(&self, _: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        Some(Box::new(ImpostorSigner(self.actual.clone())))
    }
    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(tls::identity_to_spki(&self.claimed.to_remote_identity()).into())
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ED25519
    }
}

#[tokio::test]
async fn a_peer_presenting_a_key_it_cannot_sign_for_is_refused() {
    let (bob, bob_addr) = node().await;
    let mut events = bob.subscribe();
    let claimed = Identity::generate();
    let claimed_id = claimed.to_remote_identity();
    let key = ImpostorKey { claimed, actual: Arc::new(Identity::generate()) };
    let spki = tls::identity_to_spki(&claimed_id);
    let certified = Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki)], Arc::new(key)));
    let mut crypto = tls13_client()
        .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified)));
    crypto.alpn_protocols = vec![tls::ALPN.to_vec()];

    // Issue 14, point 3: the node's hello (host name, OS, device model, protocols) went out as
    // 0.5-RTT data, before this key was checked; the impostor read it.
    let (outcome, hello) = handshake_outcome_and_hello(crypto, bob_addr).await;
    assert!(hello.is_empty(), "the impostor read {} bytes of the node's hello", hello.len());
    assert!(outcome.contains("certificate") || outcome.contains("signature"), "{outcome}");
    let reason = wait_for(&mut events, |e| match e {
        Event::IncomingRejected { reason, .. } => Some(reason.clone()),
        Event::PeerConnected { remote, .. } => panic!("impostor {remote} was accepted"),
        _ => None,
    })
    .await;
    assert!(reason.contains("BadSignature") || reason.contains("signature"), "{reason}");
    assert!(bob.peer(&claimed_id).is_none());
    bob.shutdown().await;
}

#[tokio::test]
async fn a_client_without_a_key_is_refused() {
    let (bob, bob_addr) = node().await;
    let mut events = bob.subscribe();
    let mut crypto = tls13_client().with_no_client_auth();
    crypto.alpn_protocols = vec![tls::ALPN.to_vec()];

    // The node insists on a raw public key and aborts the handshake.
    let outcome = handshake_outcome(crypto, bob_addr).await;
    assert!(outcome.contains("handshake failed") && outcome.contains("Certificate"), "{outcome}");
    let reason = wait_for(&mut events, |e| match e {
        Event::IncomingRejected { reason, .. } => Some(reason.clone()),
        Event::PeerConnected { remote, .. } => panic!("keyless client {remote} was accepted"),
        _ => None,
    })
    .await;
    assert!(reason.contains("handshake failed") && reason.contains("Certificate"), "{reason}");
    assert!(bob.connections().is_empty());
    bob.shutdown().await;
}
