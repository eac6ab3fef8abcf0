//! Helpers shared by the node tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use warren::{Event, Identity, P2P, Stream};

/// Bound on any wait in these tests: only catches hangs, never paces the test.
pub const HANG: Duration = Duration::from_secs(30);

pub const ECHO: &str = "echo/1";

/// A node on 127.0.0.1 with the ping and echo protocols.
pub async fn node() -> (P2P, SocketAddr) {
    node_with(Identity::generate(), "127.0.0.1:0".parse().unwrap()).await
}

pub async fn node_with(identity: Identity, addr: SocketAddr) -> (P2P, SocketAddr) {
    let p2p = P2P::new("warren-test", identity);
    let quic = p2p.listen_quic(addr).await.expect("bind loopback");
    warren::ping::register(&p2p).unwrap();
    p2p.register_protocol(ECHO, echo).unwrap();
    (p2p, quic.local_addr())
}

/// Echoes everything until the dialler finishes.
pub async fn echo(mut stream: Stream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.finish();
}

/// Tells `from` where `to` is, as manual discovery would.
pub fn introduce(from: &P2P, to: &P2P, addr: SocketAddr) {
    from.discovered("test", to.id(), [addr], Default::default());
}

/// Waits for the first event that `pick` accepts.
/// Waits until `condition` holds (checked every 10 ms), for state no event announces; panics
/// with `what` after [`HANG`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "not within {HANG:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_for<T>(events: &mut broadcast::Receiver<Event>, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(HANG, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("event bus closed"),
            }
        }
    })
    .await
    .expect("event did not arrive")
}

/// The application error code a connection was closed with (panics on any other ending).
/// Takes warren's connection errors and raw quinn ones alike.
pub fn close_code(ending: impl Into<warren::transport::ConnectionError>) -> u32 {
    match ending.into() {
        warren::transport::ConnectionError::Closed { code, .. } => u32::try_from(code).expect("a warren code"),
        other => panic!("expected an application close, got {other}"),
    }
}

/// Waits for the next `IncomingRejected` and returns its reason.
pub async fn next_rejection(events: &mut broadcast::Receiver<Event>) -> String {
    wait_for(events, |e| match e {
        Event::IncomingRejected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await
}

/// Echoes `payload` over a new echo stream and returns what came back.
pub async fn echo_once(p2p: &P2P, remote: warren::RemoteIdentity, payload: &[u8]) -> Vec<u8> {
    let mut stream = p2p.connect(remote, ECHO).await.expect("open echo stream");
    stream.write_all(payload).await.unwrap();
    stream.finish().unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    back
}

/// Rustls client and server configurations a test can bend, for peers that misbehave.
pub mod raw {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts any server key without checking anything: the test is about the server's checks.
    #[derive(Debug)]
    pub struct AcceptAnyServer;

    impl ServerCertVerifier for AcceptAnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    }

    /// A plain quinn connection to the node at `addr`, authenticated as a fresh identity but
    /// speaking no warren on top: the test writes the bytes itself.
    pub async fn dial_as_new_identity(addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
        let identity = Arc::new(warren::Identity::generate());
        let (endpoint, config) = client(warren::transport::tls::client_config(&identity));
        let conn = endpoint.connect_with(config, addr, warren::transport::tls::SERVER_NAME).unwrap().await.unwrap();
        (endpoint, conn)
    }

    /// A plain quinn client endpoint on loopback using `crypto`.
    pub fn client(crypto: rustls::ClientConfig) -> (quinn::Endpoint, quinn::ClientConfig) {
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(warren::transport::quic::transport_config()));
        (quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap(), config)
    }
}
