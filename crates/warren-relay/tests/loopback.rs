//! Relay basics on loopback: registration, relayed dial by identity, upgrade to direct,
//! access control.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use warren::relay::client::{RelayClient, RelayConfig as ClientConfig, RelayError, RelayTransport};
use warren::transport::paths::Path;
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
    node_full(identity, relay, token, true).await
}

/// A node that never punches: its connections through the relay stay relayed.
async fn relay_only_node(relay: &Relay) -> (P2P, RelayClient) {
    let (p2p, client) = node_full(Identity::generate(), relay, None, false).await;
    client.wait_registered(HANG).await.unwrap();
    (p2p, client)
}

const SINK: &str = "sink/1";

/// Reads everything, answers with the byte count.
async fn sink(mut stream: warren::Stream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let _ = stream.write_all(&total.to_be_bytes()).await;
    let _ = stream.finish();
}

/// Sends `len` bytes to `to`'s sink; returns how long it took until the sink confirmed.
async fn send(from: &P2P, to: &P2P, len: usize) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let (mut send, mut recv) = from.connect(to.id(), SINK).await?.into_split();
    let chunk = vec![7u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        send.write_all(&chunk[..n]).await?;
        left -= n;
    }
    send.finish()?;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await?;
    anyhow::ensure!(u64::from_be_bytes(count) == len as u64, "the sink counted {}", u64::from_be_bytes(count));
    Ok(started.elapsed())
}

fn mbps(len: usize, took: Duration) -> f64 {
    len as f64 * 8.0 / took.as_secs_f64() / 1e6
}

async fn node_full(identity: Identity, relay: &Relay, token: Option<&str>, punching: bool) -> (P2P, RelayClient) {
    node_over(identity, relay, token, punching, RelayTransport::Auto).await
}

async fn node_over(
    identity: Identity,
    relay: &Relay,
    token: Option<&str>,
    punching: bool,
    transport: RelayTransport,
) -> (P2P, RelayClient) {
    let p2p = P2P::new("warren-test", identity);
    let quic = p2p.listen_quic("127.0.0.1:0".parse().unwrap()).await.unwrap();
    quic.set_hole_punching(punching);
    p2p.register_protocol(SINK, sink).unwrap();
    warren::ping::register(&p2p).unwrap();
    let config = ClientConfig {
        token: token.map(str::to_owned),
        transport,
        ..ClientConfig::new(relay.identity(), relay.local_addr())
    };
    let client = p2p.add_relay(&quic, config);
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

/// The relay with identity `secret` again at `addr`, once the old one's port is free.
async fn respawn(secret: &[u8; 32], addr: std::net::SocketAddr) -> Relay {
    tokio::time::timeout(HANG, async {
        loop {
            match Relay::spawn(Identity::from_secret_bytes(secret), addr, RelayConfig::default()).await {
                Ok(relay) => break relay,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the old relay's port is free again after its shutdown")
}

/// Waits (at most HANG) until the relay lists `want` for `key`, asking every 100 ms (the relay
/// tells nobody when its table changes; 10 finds a second stay under its request rate).
async fn listed_eventually(client: &RelayClient, key: [u8; 16], want: &[warren::RemoteIdentity], what: &str) {
    let polled = tokio::time::timeout(HANG, async {
        while !client.find(key).await.is_ok_and(|found| found == want) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    polled.await.unwrap_or_else(|_| panic!("never: {what}"));
}

/// Waits (at most HANG) until `done` holds: for state no event reports.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(HANG, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    polled.await.unwrap_or_else(|_| panic!("never: {what}"));
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
    let rtts = warren::ping::ping(&a, b.id(), 3).await.unwrap();
    assert_eq!(rtts.len(), 3);
    let conn = a.open_connection(&b.id()).unwrap();
    assert!(warren::transport::paths::is_placeholder(conn.remote_address()));
    // On loopback nothing blocks the punch: the path becomes direct, to B's socket.
    let path = wait_for(&mut events, |e| match e {
        Event::PathChanged { remote, path, .. } if *remote == b.id() => Some(*path),
        _ => None,
    })
    .await;
    let Path::Direct { addr } = path else { panic!("{path:?}") };
    assert_eq!(addr, b.listen_addrs()[0]);
    assert_eq!(conn.path(), path);
    // Both sides end their punch session (b may confirm a moment after a) before counting.
    wait_for(&mut events, |e| matches!(e, Event::HolePunch { .. }).then_some(())).await;
    let b_conn = b.open_connection(&a.id()).unwrap();
    wait_until("b's path turns direct", || matches!(b_conn.path(), Path::Direct { .. })).await;
    // Frames already on their way still reach the relay (on loopback, well within this).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = relay.stats().forwarded_frames;
    warren::ping::ping(&a, b.id(), 5).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_rate_is_throttled_and_others_are_not() {
    let relay = relay(RelayConfig { max_mbps: Some(8.0), ..RelayConfig::default() }).await;
    let (a, _ca) = relay_only_node(&relay).await;
    let (b, _cb) = relay_only_node(&relay).await;
    let (c, _cc) = relay_only_node(&relay).await;
    let (d, _cd) = relay_only_node(&relay).await;
    // a pushes 4 MB (4 s at the limit) while c sends 512 kB.
    const BULK: usize = 4 * 1024 * 1024;
    const SMALL: usize = 512 * 1024;
    let (bulk, small) = tokio::join!(send(&a, &b, BULK), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send(&c, &d, SMALL).await
    });
    let (bulk, small) = (bulk.unwrap(), small.unwrap());
    let stats = relay.stats();
    println!(
        "a: {:.1} Mbit/s, c: {:.1} Mbit/s (limit 8 each); {} frames throttled",
        mbps(BULK, bulk),
        mbps(SMALL, small),
        stats.throttled_frames
    );
    assert!(stats.throttled_frames > 0, "{stats:?}");
    // a is held near its limit (plus the bucket's 100 ms burst)...
    assert!(mbps(BULK, bulk) < 12.0, "a got {:.1} Mbit/s", mbps(BULK, bulk));
    // ...and c, with a bucket of its own, is not slowed by a's excess.
    assert!(mbps(SMALL, small) > 3.0, "c got {:.1} Mbit/s", mbps(SMALL, small));
    for node in [a, b, c, d] {
        node.shutdown().await;
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_byte_limit_is_cut_off_and_others_are_not() {
    let relay = relay(RelayConfig { max_bytes: Some(1024 * 1024), ..RelayConfig::default() }).await;
    let (a, a_client) = relay_only_node(&relay).await;
    let (b, _cb) = relay_only_node(&relay).await;
    let (c, _cc) = relay_only_node(&relay).await;
    let (d, _cd) = relay_only_node(&relay).await;
    let mut events = a.subscribe();
    let over = tokio::time::timeout(Duration::from_secs(10), send(&a, &b, 3 * 1024 * 1024)).await;
    assert!(!matches!(over, Ok(Ok(_))), "3 MB went through a 1 MB limit");
    let reason = wait_for(&mut events, |e| match e {
        Event::RelayDisconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("byte limit"), "{reason}");
    // It stays refused when it comes back (the limit counts across registrations).
    let refused = wait_for(&mut events, |e| match e {
        Event::RelayDisconnected { reason, .. } if reason.contains("byte limit") => Some(()),
        _ => None,
    });
    tokio::time::timeout(Duration::from_secs(5), refused).await.unwrap();
    assert!(matches!(a_client.last_error(), Some(RelayError::Refused(_))), "{:?}", a_client.last_error());
    assert_eq!(relay.stats().cut_off, 1);
    // c and d are unaffected.
    send(&c, &d, 256 * 1024).await.unwrap();
    for node in [a, b, c, d] {
        node.shutdown().await;
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_keeps_direct_connections_and_relayed_ones_come_back() {
    let identity = Identity::generate();
    let secret = identity.to_secret_bytes();
    let first = Relay::spawn(identity, "127.0.0.1:0".parse().unwrap(), RelayConfig::default()).await.unwrap();
    let addr = first.local_addr();
    // a and b punch through (direct); c and d stay relayed.
    let (a, ca) = node(&first, None).await;
    let (b, cb) = node(&first, None).await;
    ca.wait_registered(HANG).await.unwrap();
    cb.wait_registered(HANG).await.unwrap();
    let mut a_events = a.subscribe();
    warren::ping::ping(&a, b.id(), 1).await.unwrap();
    wait_for(&mut a_events, |e| matches!(e, Event::PathChanged { path: Path::Direct { .. }, .. }).then_some(())).await;
    let direct = a.open_connection(&b.id()).unwrap();
    let (c, _cc) = relay_only_node(&first).await;
    let (d, _cd) = relay_only_node(&first).await;
    warren::ping::ping(&c, d.id(), 1).await.unwrap();
    let relayed = c.open_connection(&d.id()).unwrap();
    assert!(matches!(relayed.path(), Path::Relayed { .. }));

    let mut c_events = c.subscribe();
    first.shutdown().await;
    // While the relay is down the direct connection carries on.
    warren::ping::ping(&a, b.id(), 3).await.unwrap();
    // Same identity, same address.
    let second = respawn(&secret, addr).await;
    wait_for(&mut c_events, |e| matches!(e, Event::RelayConnected { .. }).then_some(())).await;
    // c and d talk again through the new relay (d re-registers too).
    let again = tokio::time::timeout(HANG, async {
        loop {
            if let Ok(rtts) = warren::ping::ping(&c, d.id(), 1).await {
                break rtts;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(again.len(), 1);
    // The direct connection is the one from before the restart.
    let still = a.open_connection(&b.id()).unwrap();
    assert_eq!(still.id(), direct.id());
    assert!(second.stats().forwarded_frames > 0, "c and d went through the new relay");
    for node in [a, b, c, d] {
        node.shutdown().await;
    }
    second.shutdown().await;
}

/// Over TCP (TLS), as on networks that block UDP: a node registered over TCP and one over UDP
/// reach each other by identity through the relay, both ways, and bulk data crosses intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_tcp() {
    let relay = relay(RelayConfig::default()).await;
    let (a, ca) = node_over(Identity::generate(), &relay, None, false, RelayTransport::Tcp).await;
    let (b, cb) = node_over(Identity::generate(), &relay, None, false, RelayTransport::Udp).await;
    let observed = ca.wait_registered(HANG).await.unwrap();
    cb.wait_registered(HANG).await.unwrap();
    assert_eq!(observed.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    warren::ping::ping(&a, b.id(), 2).await.unwrap();
    warren::ping::ping(&b, a.id(), 2).await.unwrap();
    assert!(matches!(a.open_connection(&b.id()).unwrap().path(), Path::Relayed { .. }));
    let took = send(&a, &b, 2 * 1024 * 1024).await.unwrap();
    let took_back = send(&b, &a, 2 * 1024 * 1024).await.unwrap();
    println!("2 MiB over TCP+UDP relay: {:.0} and {:.0} Mbit/s", mbps(2 << 20, took), mbps(2 << 20, took_back));
    assert!(relay.stats().forwarded_bytes > 4 * 1024 * 1024);
    for node in [a, b] {
        node.shutdown().await;
    }
    relay.shutdown().await;
}

/// The bootstrap cache remembers the relay that worked: a node restarted without being told
/// any relay finds it there, registers again and is reachable by identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_finds_its_relay_in_the_bootstrap_cache() {
    use warren::discovery::cache::BootstrapHook;
    let dir = std::env::temp_dir().join(format!("warren-relay-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bootstrap-cache");
    let relay = relay(RelayConfig::default()).await;
    let identity = Identity::generate();
    let secret = identity.to_secret_bytes();

    let p2p = P2P::new("warren-test", identity);
    let quic = p2p.listen_quic("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (cache, warning) = BootstrapHook::spawn(&p2p, &path);
    assert!(warning.is_none() || !path.exists());
    let mut events = p2p.subscribe();
    p2p.add_relay(&quic, ClientConfig::new(relay.identity(), relay.local_addr()));
    wait_for(&mut events, |e| matches!(e, Event::RelayConnected { .. }).then_some(())).await;
    // The hook records it from the event.
    wait_until("the cache records the relay", || !cache.relays().is_empty()).await;
    p2p.shutdown().await;

    // Restart: no relay given.
    let p2p = P2P::new("warren-test", Identity::from_secret_bytes(&secret));
    warren::ping::register(&p2p).unwrap();
    let quic = p2p.listen_quic("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (cache, warning) = BootstrapHook::spawn(&p2p, &path);
    assert!(warning.is_none(), "{warning:?}");
    let cached = cache.relays().into_iter().next().expect("the relay is cached");
    assert_eq!(cached.identity, relay.identity());
    let config = ClientConfig::new(cached.identity, cached.addrs[0]);
    p2p.add_relay(&quic, config).wait_registered(HANG).await.unwrap();
    let (other, other_client) = node(&relay, None).await;
    other_client.wait_registered(HANG).await.unwrap();
    warren::ping::ping(&other, p2p.id(), 1).await.unwrap();
    other.shutdown().await;
    p2p.shutdown().await;
    relay.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Garbage at the relay (datagrams: random, truncated frames, frames for nobody, from nobody,
/// oversized; TCP: junk, a huge length, a TLS stream that never registers) and at a node
/// (data frames not from its relay, challenges and responses under a key nobody agreed on) changes nothing: nothing is sent
/// back to the sender, the relay keeps serving, registered nodes keep talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_changes_nothing() {
    use warren::wire::frame;
    let relay = relay(RelayConfig::default()).await;
    let (a, ca) = relay_only_node(&relay).await;
    let (b, _cb) = relay_only_node(&relay).await;
    let _ = ca;
    warren::ping::ping(&a, b.id(), 1).await.unwrap();
    let before = relay.stats();

    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stranger = Identity::generate().to_remote_identity();
    let mut hostile: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        frame::MAGIC.to_vec(),
        [&frame::MAGIC[..], &[1]].concat(),
        [&frame::MAGIC[..], &[9], &[0; 40]].concat(),
        frame::data(&b.id(), b"from someone never registered"),
        frame::data(&stranger, b"for nobody"),
        [&frame::data(&b.id(), b"")[..], &vec![0x55; frame::MAX_PAYLOAD + 1]].concat(),
        frame::challenge(&[0; 32], 1, relay.local_addr(), stranger.as_bytes(), b.id().as_bytes()).to_vec(),
        vec![0xc0; 1200],
    ];
    hostile.extend((0..200u32).map(|i| i.to_le_bytes().repeat(1 + i as usize % 300)));
    for datagram in &hostile {
        attacker.send_to(datagram, relay.local_addr()).await.unwrap();
        // And at node b itself, straight at its socket.
        attacker.send_to(datagram, b.listen_addrs()[0]).await.unwrap();
    }
    // Challenges and responses for b "from a", under a key nobody agreed on.
    let (a_raw, b_raw) = (a.id().as_bytes().to_owned(), b.id().as_bytes().to_owned());
    attacker
        .send_to(&frame::challenge(&[7; 32], 42, b.listen_addrs()[0], &a_raw, &b_raw), b.listen_addrs()[0])
        .await
        .unwrap();
    attacker
        .send_to(&frame::response(&[7; 32], 1, b.listen_addrs()[0], &a_raw, &b_raw), b.listen_addrs()[0])
        .await
        .unwrap();

    // TCP: junk, a record of the maximum length that never comes, a TLS handshake that stops.
    let mut junk = tokio::net::TcpStream::connect(relay.local_addr()).await.unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(relay.local_addr()).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();

    // The attacker gets nothing back: no amplification, no answers to strangers.
    let mut buf = [0u8; 2048];
    let answer = tokio::time::timeout(Duration::from_millis(500), attacker.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "the attacker got an answer: {answer:?}");
    let mut read = [0u8; 64];
    let junk_answer = tokio::time::timeout(Duration::from_secs(2), junk.read(&mut read)).await;
    // At most a TLS alert (record type 0x15, 7 bytes), smaller than the junk.
    if let Ok(Ok(n)) = junk_answer {
        assert!(n == 0 || (n <= 7 && read[0] == 0x15), "{:?}", &read[..n]);
    }

    // Everything still works, and the frames were counted as dropped.
    warren::ping::ping(&a, b.id(), 3).await.unwrap();
    warren::ping::ping(&b, a.id(), 1).await.unwrap();
    let after = relay.stats();
    assert!(after.dropped_frames >= before.dropped_frames + 4, "{before:?} -> {after:?}");
    assert_eq!(after.nodes, 2);
    assert_eq!(b.connections().len(), 1, "b accepted nothing from the attacker");
    for node in [a, b] {
        node.shutdown().await;
    }
    relay.shutdown().await;
}

/// Both peers dial each other through the relay at the same moment: both dials succeed, the
/// two offers to punch cross and one wins (the smaller identity's), and the peers end direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_both_succeed_and_end_direct() {
    let relay = relay(RelayConfig::default()).await;
    let (a, ca) = node(&relay, None).await;
    let (b, cb) = node(&relay, None).await;
    ca.wait_registered(HANG).await.unwrap();
    cb.wait_registered(HANG).await.unwrap();
    let mut a_events = a.subscribe();
    let (ab, ba) = tokio::join!(a.connection(b.id()), b.connection(a.id()));
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    wait_for(&mut a_events, |e| matches!(e, Event::PathChanged { path: Path::Direct { .. }, .. }).then_some(())).await;
    assert!(matches!(ab.path(), Path::Direct { .. }), "{:?}", ab.path());
    // b's side confirms too (its own acknowledgement, or the winning session's).
    wait_until("b's path turns direct", || matches!(ba.path(), Path::Direct { .. })).await;
    warren::ping::ping(&a, b.id(), 2).await.unwrap();
    warren::ping::ping(&b, a.id(), 2).await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

/// A punched path is forgotten with the connection that used it: a peer that restarts on
/// another port is reached again by identity (first through the relay), not at its dead address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_elsewhere_is_reached_again() {
    let relay = relay(RelayConfig::default()).await;
    let (a, ca) = node(&relay, None).await;
    let b_identity = Identity::generate();
    let b_secret = b_identity.to_secret_bytes();
    let (b, cb) = node_with(b_identity, &relay, None).await;
    ca.wait_registered(HANG).await.unwrap();
    cb.wait_registered(HANG).await.unwrap();
    let mut events = a.subscribe();
    warren::ping::ping(&a, b.id(), 1).await.unwrap();
    wait_for(&mut events, |e| matches!(e, Event::PathChanged { path: Path::Direct { .. }, .. }).then_some(())).await;
    let old_addr = b.listen_addrs()[0];
    b.shutdown().await;
    let reason = wait_for(&mut events, |e| match e {
        Event::PeerDisconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    // B's close reached A over the punched path (not A's idle timeout, 30 s later: the path
    // outlives B's last key for the close to leave by it).
    assert!(reason.contains("closed by the peer"), "{reason}");

    let (b2, cb2) = node_with(Identity::from_secret_bytes(&b_secret), &relay, None).await;
    cb2.wait_registered(HANG).await.unwrap();
    assert_ne!(b2.listen_addrs()[0], old_addr);
    let rtts = tokio::time::timeout(HANG, warren::ping::ping(&a, b2.id(), 2)).await.unwrap().unwrap();
    assert_eq!(rtts.len(), 2);
    a.shutdown().await;
    b2.shutdown().await;
    relay.shutdown().await;
}

/// A relay on a dual-stack socket (`[::]`) serves IPv4 nodes: it sees them at IPv4-mapped
/// addresses (frames arrive from those too), tells them their plain IPv4 address, and
/// forwards between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_relay_serves_ipv4_nodes() {
    let relay = Relay::spawn(Identity::generate(), "[::]:0".parse().unwrap(), RelayConfig::default()).await.unwrap();
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], relay.local_addr().port()));
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let p2p = P2P::new("warren-test", Identity::generate());
        let quic = p2p.listen_quic("127.0.0.1:0".parse().unwrap()).await.unwrap();
        quic.set_hole_punching(false);
        warren::ping::register(&p2p).unwrap();
        let config = ClientConfig { transport: RelayTransport::Udp, ..ClientConfig::new(relay.identity(), at) };
        let client = p2p.add_relay(&quic, config);
        let observed = client.wait_registered(HANG).await.unwrap();
        assert_eq!(observed, quic.local_addr(), "observed as plain IPv4");
        nodes.push((p2p, client));
    }
    let rtts = warren::ping::ping(&nodes[0].0, nodes[1].0.id(), 3).await.unwrap();
    assert_eq!(rtts.len(), 3);
    let stats = relay.stats();
    assert!(stats.forwarded_frames > 0 && stats.dropped_frames == 0, "every frame forwarded: {stats:?}");
    for (p2p, _) in &nodes {
        p2p.shutdown().await;
    }
    relay.shutdown().await;
}

/// A relay operator forges a data frame "from b" to a while a and b talk directly. Before the
/// core redesign one such frame, once 3 s had passed since the punch, made a give the direct
/// path up (the peer "had fallen back"), and b followed on a's first relayed packet: the
/// connection stayed relayed for good. Now a side falls back on its own silence only: the
/// frame makes a probe the direct path, b answers, and a stays direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_forging_a_frame_cannot_pull_a_direct_connection_back() {
    let relay = relay(RelayConfig::default()).await;
    let (a, ca) = node(&relay, None).await;
    let (b, cb) = node(&relay, None).await;
    ca.wait_registered(HANG).await.unwrap();
    cb.wait_registered(HANG).await.unwrap();
    let mut events = a.subscribe();
    warren::ping::ping(&a, b.id(), 1).await.unwrap();
    wait_for(&mut events, |e| matches!(e, Event::PathChanged { path: Path::Direct { .. }, .. }).then_some(())).await;
    let conn = a.open_connection(&b.id()).unwrap();
    // Past the window in which the old rule ignored relayed packets (sent before the punch).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..3 {
        warren::ping::ping(&a, b.id(), 2).await.unwrap();
        assert!(relay.send_forged(a.id(), b.id(), b"\x40forged, not from b"));
    }
    warren::ping::ping(&a, b.id(), 5).await.unwrap();
    assert!(matches!(conn.path(), Path::Direct { .. }), "{:?}", conn.path());
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, Event::PathChanged { path: Path::Relayed { .. }, .. }), "{event:?}");
    }
    // And the pings still bypass the relay.
    let before = relay.stats().forwarded_frames;
    warren::ping::ping(&a, b.id(), 3).await.unwrap();
    assert_eq!(relay.stats().forwarded_frames, before);
    assert_eq!(conn.id(), a.open_connection(&b.id()).unwrap().id(), "the same connection");
    for node in [a, b] {
        node.shutdown().await;
    }
    relay.shutdown().await;
}

/// A node listening on `ip` (any port), registered with `relay` or refused.
async fn node_at(relay: &Relay, ip: &str) -> (P2P, Result<std::net::SocketAddr, RelayError>) {
    let p2p = P2P::new("warren-test", Identity::generate());
    let quic = p2p.listen_quic(format!("{ip}:0").parse().unwrap()).await.unwrap();
    let client = p2p.add_relay(&quic, ClientConfig::new(relay.identity(), relay.local_addr()));
    let registered = client.wait_registered(HANG).await;
    (p2p, registered)
}

/// Issue 14, point 6: with no token or allow-list, one host with free identities could fill
/// the relay (10,000 registrations). Now one IP address registers `max_nodes_per_ip` nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_identities_from_one_address_cannot_fill_the_relay() {
    let relay = relay(RelayConfig { max_nodes_per_ip: 3, ..RelayConfig::default() }).await;
    let mut nodes = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..5 {
        let (p2p, registered) = node_at(&relay, "127.0.0.1").await;
        match registered {
            Ok(_) => nodes.push(p2p),
            Err(error) => {
                refused.push(error.to_string());
                p2p.shutdown().await;
            }
        }
    }
    assert_eq!(nodes.len(), 3, "refused: {refused:?}");
    assert!(refused.iter().all(|r| r.contains("too many nodes from this address")), "{refused:?}");
    // Another address is not held back.
    let (other, registered) = node_at(&relay, "127.0.0.2").await;
    registered.unwrap();
    assert_eq!(relay.stats().nodes, 4);
    // A node that leaves frees its place.
    nodes.pop().unwrap().shutdown().await;
    wait_until("the node's place freed", || relay.stats().nodes == 3).await;
    let (again, registered) = node_at(&relay, "127.0.0.1").await;
    registered.unwrap();
    for node in nodes.into_iter().chain([other, again]) {
        node.shutdown().await;
    }
    relay.shutdown().await;
}

/// Issue 14, point 6: lookups ("is X online?") were an open oracle, answered as fast as they
/// came. Now a registration gets LOOKUPS_PER_SECOND answers a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_rate_limited_per_registration() {
    use warren::wire::control::{self, Request, Response};
    let relay = relay(RelayConfig::default()).await;
    let identity = std::sync::Arc::new(Identity::generate());
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(warren::transport::quic::client_config(&identity));
    let conn = endpoint.connect(relay.local_addr(), warren::transport::tls::SERVER_NAME).unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    control::write(&mut send, &Request::Register { token: None }).await.unwrap();
    let registered: Response = control::read(&mut recv).await.unwrap();
    assert!(matches!(registered, Response::Registered { .. }), "{registered:?}");

    // 100 lookups at once, each waiting a second for its answer.
    const ASKED: u64 = 100;
    let started = std::time::Instant::now();
    let mut asks = tokio::task::JoinSet::new();
    for id in 0..ASKED {
        let conn = conn.clone();
        asks.spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let peer = Identity::generate().to_remote_identity();
            control::write(&mut send, &Request::Lookup { id, peer }).await.unwrap();
            let _ = send.finish();
            let answer = tokio::time::timeout(Duration::from_secs(1), control::read::<_, Response>(&mut recv)).await;
            matches!(answer, Ok(Ok(Response::Lookup { online: false, .. })))
        });
    }
    let mut answered = 0;
    while let Some(done) = asks.join_next().await {
        answered += u64::from(done.unwrap());
    }
    // All were asked within the elapsed time: the answers are those of the seconds it spanned.
    let seconds = started.elapsed().as_secs() + 1;
    let bound = seconds * u64::from(warren_relay::LOOKUPS_PER_SECOND);
    assert!(answered <= bound, "{answered} of {ASKED} lookups answered in {seconds} s");
    assert!(answered >= u64::from(warren_relay::LOOKUPS_PER_SECOND), "{answered}");
    assert_eq!(relay.stats().throttled_lookups, ASKED - answered);
    endpoint.close(0u32.into(), b"");
    relay.shutdown().await;
}

/// Rendezvous: a node announces a key (over QUIC), another finds it (over TCP: the answer is
/// matched by id on the record stream); a relay restart forgets it and the announcer renews it
/// at its next registration; a withdrawal or the announcer leaving takes it away. Bounded: a
/// node announces at most `MAX_RENDEZVOUS_KEYS` keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_announcements_are_found_renewed_and_go_with_their_announcer() {
    let identity = Identity::generate();
    let secret = identity.to_secret_bytes();
    let first = Relay::spawn(identity, "127.0.0.1:0".parse().unwrap(), RelayConfig::default()).await.unwrap();
    let addr = first.local_addr();
    let (a, ca) = node(&first, None).await;
    let (_b, cb) = node_over(Identity::generate(), &first, None, true, RelayTransport::Tcp).await;
    ca.wait_registered(HANG).await.unwrap();
    cb.wait_registered(HANG).await.unwrap();
    let key = [42u8; 16];
    assert_eq!(cb.find(key).await.unwrap(), vec![]);
    ca.announce(key).await.unwrap();
    assert_eq!(cb.find(key).await.unwrap(), vec![a.id()]);
    // Over its limit a node is refused, and what it holds is unchanged.
    for n in 1..warren_relay::MAX_RENDEZVOUS_KEYS as u8 {
        ca.announce([n; 16]).await.unwrap();
    }
    assert!(matches!(ca.announce([200; 16]).await, Err(RelayError::Refused(_))));
    assert_eq!(cb.find([200; 16]).await.unwrap(), vec![]);
    ca.withdraw([200; 16]);

    // The relay restarts: it forgot everything, and the announcer tells it again.
    first.shutdown().await;
    let second = respawn(&secret, addr).await;
    listed_eventually(&cb, key, &[a.id()], "the announcement renewed after the relay restarted").await;

    // Withdrawn, it is gone; announced again and the announcer leaves, it is gone too.
    ca.withdraw(key);
    listed_eventually(&cb, key, &[], "gone after the withdrawal").await;
    ca.announce(key).await.unwrap();
    assert_eq!(cb.find(key).await.unwrap(), vec![a.id()]);
    a.shutdown().await;
    listed_eventually(&cb, key, &[], "gone after the announcer left").await;
    second.shutdown().await;
}
