//! Relay basics on loopback: registration, relayed dial by identity, upgrade to direct,
//! access control.

use std::time::Duration;

use tokio::sync::broadcast;
use warren::relay::client::{RelayClient, RelayConfig as ClientConfig, RelayError};
use warren::transport::paths::Path;
use warren::transport::quic::QuicTransport;
use warren::{Event, Identity, P2P};
use warren_relay::{Relay, RelayConfig};

const HANG: Duration = Duration::from_secs(30);

async fn relay(config: RelayConfig) -> Relay {
    Relay::spawn(Identity::generate(), "127.0.0.1:0".parse().unwrap(), config).await.unwrap()
}

async fn node(relay: &Relay, token: Option<&str>) -> (P2P, RelayClient) {
    node_with(Identity::generate(), relay, token).await
}

async fn node_with(identity: Identity, relay: &Relay, token: Option<&str>) -> (P2P, RelayClient) {
    let p2p = P2P::new("warren-test", identity);
    let quic = QuicTransport::spawn(&p2p, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    warren::ping::register(&p2p).unwrap();
    let config = ClientConfig { identity: relay.identity(), addr: relay.local_addr(), token: token.map(str::to_owned) };
    let client = RelayClient::spawn(&p2p, &quic, config);
    (p2p, client)
}

async fn wait_for<T>(events: &mut broadcast::Receiver<Event>, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(HANG, async {
        loop {
            if let Ok(event) = events.recv().await
                && let Some(found) = pick(&event)
            {
                return found;
            }
        }
    })
    .await
    .expect("event did not arrive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_by_identity_through_the_relay_then_direct() {
    let relay = relay(RelayConfig::default()).await;
    let (a, a_relay) = node(&relay, None).await;
    let (b, b_relay) = node(&relay, None).await;
    let observed = a_relay.wait_registered(HANG).await.unwrap();
    assert_eq!(observed.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    b_relay.wait_registered(HANG).await.unwrap();

    let mut events = a.subscribe();
    // A knows nothing about B but its identity.
    let rtts = warren::ping::ping(&a, b.remote_identity(), 3).await.unwrap();
    assert_eq!(rtts.len(), 3);
    let conn = a.open_connection(&b.remote_identity()).unwrap();
    assert!(warren::transport::paths::is_placeholder(conn.remote_address()));
    // On loopback nothing blocks the punch: the path becomes direct, to B's socket.
    let path = wait_for(&mut events, |e| match e {
        Event::PathChanged { remote, path } if *remote == b.remote_identity() => Some(*path),
        _ => None,
    })
    .await;
    let Path::Direct { addr } = path else { panic!("{path:?}") };
    assert_eq!(addr, b.listen_addrs()[0]);
    assert_eq!(conn.path(), path);
    let before = relay.stats().forwarded_frames;
    warren::ping::ping(&a, b.remote_identity(), 5).await.unwrap();
    assert_eq!(relay.stats().forwarded_frames, before, "pings after the upgrade bypass the relay");
    assert!(before > 0);

    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peer_fails_fast() {
    let relay = relay(RelayConfig::default()).await;
    let (a, a_relay) = node(&relay, None).await;
    a_relay.wait_registered(HANG).await.unwrap();
    let stranger = Identity::generate().to_remote_identity();
    let started = std::time::Instant::now();
    let error = warren::ping::ping(&a, stranger, 1).await.unwrap_err().to_string();
    assert!(error.contains("does not serve"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    a.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control() {
    let allowed = Identity::generate();
    let config = RelayConfig {
        allow: vec![allowed.to_remote_identity()],
        token: Some("sesame".into()),
        ..RelayConfig::default()
    };
    let relay = relay(config).await;
    // Not on the allow-list.
    let (stranger, client) = node(&relay, Some("sesame")).await;
    let error = client.wait_registered(HANG).await.unwrap_err();
    assert!(matches!(&error, RelayError::Refused(r) if r.contains("allow-list")), "{error}");
    // On the list, wrong token.
    let (wrong, client) = node_with(Identity::from_secret_bytes(&allowed.to_secret_bytes()), &relay, Some("x")).await;
    let error = client.wait_registered(HANG).await.unwrap_err();
    assert!(matches!(&error, RelayError::Refused(r) if r.contains("token")), "{error}");
    wrong.shutdown().await;
    // On the list, right token.
    let (ok, client) = node_with(allowed, &relay, Some("sesame")).await;
    client.wait_registered(HANG).await.unwrap();
    assert_eq!(relay.stats().nodes, 1);
    assert!(relay.stats().refused >= 2);
    for node in [stranger, ok] {
        node.shutdown().await;
    }
    relay.shutdown().await;
}
