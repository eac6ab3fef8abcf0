//! One connection test suite, run over every transport a node can listen on (QUIC, TCP, uTP): the
//! same identity checks, refusals, hostile peers, limits and shutdown, through the node's
//! public API alone. Each test is written once and instantiated per transport below.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::connection::codes;
use warren::transport::{Listener, StreamError, TransportConnection};
use warren::{ConnectError, Event, Identity, P2P};

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Tcp,
    Utp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
            Transport::Utp => "utp",
        }
    }
}

/// A node listening on `transport` alone, on 127.0.0.1, with ping and echo; its listener.
async fn node_on(transport: Transport) -> (P2P, SocketAddr, Arc<dyn Listener>) {
    node_as(transport, Identity::generate()).await
}

async fn node_as(transport: Transport, identity: Identity) -> (P2P, SocketAddr, Arc<dyn Listener>) {
    let p2p = P2P::new("warren-test", identity);
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (addr, listener): (_, Arc<dyn Listener>) = match transport {
        Transport::Quic => {
            let quic = p2p.listen_quic(lo).await.unwrap();
            (quic.local_addr(), Arc::new(quic))
        }
        Transport::Tcp => {
            let tcp = p2p.listen_tcp(lo).await.unwrap();
            (tcp.local_addr(), Arc::new(tcp))
        }
        Transport::Utp => {
            let utp = p2p.listen_utp(lo).await.unwrap();
            (utp.local_addr(), Arc::new(utp))
        }
    };
    warren::ping::register(&p2p).unwrap();
    p2p.register_protocol(ECHO, echo).unwrap();
    (p2p, addr, listener)
}

async fn connect_by_identity_ping_and_echo(t: Transport) {
    let (alice, _, _) = node_on(t).await;
    let (bob, bob_addr, _) = node_on(t).await;
    introduce(&alice, &bob, bob_addr);
    assert_eq!(warren::ping::ping(&alice, bob.id(), 3).await.unwrap().len(), 3);
    // The other way reuses the connection alice opened.
    assert_eq!(warren::ping::ping(&bob, alice.id(), 2).await.unwrap().len(), 2);
    assert_eq!(alice.connections().len(), 1);
    let conn = alice.open_connection(&bob.id()).unwrap();
    assert_eq!(conn.transport_name(), t.name());
    assert_eq!(conn.remote(), bob.id());
    // A megabyte through echo, and several streams at once.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    assert!(echo_once(&alice, bob.id(), &payload).await == payload);
    let echoes: Vec<_> = (0..16u8)
        .map(|i| {
            let (alice, bob) = (alice.clone(), bob.id());
            tokio::spawn(async move { echo_once(&alice, bob, &[i; 1000]).await == [i; 1000] })
        })
        .collect();
    for echo in echoes {
        assert!(echo.await.unwrap());
    }
    // Metadata came with the hello.
    let protocols = conn.remote_protocols();
    assert!(
        protocols.iter().any(|p| p == ECHO) && protocols.iter().any(|p| p == warren::ping::PROTOCOL),
        "{protocols:?}"
    );
    alice.shutdown().await;
    bob.shutdown().await;
}

async fn unknown_protocol_is_refused_and_the_connection_keeps_working(t: Transport) {
    let (alice, _, _) = node_on(t).await;
    let (bob, bob_addr, _) = node_on(t).await;
    introduce(&alice, &bob, bob_addr);
    let mut stream = alice.connect(bob.id(), "nope/1").await.unwrap();
    let err = match stream.write_all(b"hello?").await {
        Ok(()) => stream.read_u8().await.unwrap_err(),
        Err(refused) => refused,
    };
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    assert_eq!(err.to_string(), "the peer does not speak protocol \"nope/1\"");
    let inner = err.into_inner().unwrap().downcast::<ConnectError>().unwrap();
    assert!(matches!(*inner, ConnectError::UnknownProtocol { ref protocol } if protocol == "nope/1"));
    // Writing on it fails the same way once the refusal has arrived.
    let err = stream.write_all(b"more").await.unwrap_err();
    assert_eq!(err.to_string(), "the peer does not speak protocol \"nope/1\"");
    assert_eq!(echo_once(&alice, bob.id(), b"still here").await, b"still here");
    let err = alice.connect(bob.id(), "has space").await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidProtocol(_)), "{err}");
    alice.shutdown().await;
    bob.shutdown().await;
}

async fn a_wrong_identity_is_refused_and_the_impostor_learns_nothing(t: Transport) {
    let (alice, _, _) = node_on(t).await;
    let (impostor, impostor_addr, _) = node_on(t).await;
    let wanted = Identity::generate().to_remote_identity();
    let mut events = impostor.subscribe();
    alice.discovered("test", wanted, [impostor_addr], Default::default());
    match alice.connect(wanted, ECHO).await {
        Err(ConnectError::WrongIdentity { expected, got }) => {
            assert_eq!(expected, wanted);
            assert_eq!(got, impostor.id());
        }
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
    // The impostor's handshake failed: it never had alice's identity, so no connection and no
    // peer.
    let reason = next_rejection(&mut events).await;
    assert!(!reason.is_empty());
    assert!(impostor.connections().is_empty());
    assert!(impostor.peer(&alice.id()).is_none());
    alice.shutdown().await;
    impostor.shutdown().await;
}

/// Writes `bytes` on a fresh raw stream and returns how the node answered.
async fn raw_stream(conn: &dyn TransportConnection, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open raw stream");
    send.write_all(bytes).await.expect("write raw header");
    let _ = send.finish();
    let mut answer = Vec::new();
    recv.read_to_end(&mut answer).await.map(|_| answer)
}

fn reset_code(result: std::io::Result<Vec<u8>>) -> u32 {
    match result.as_ref().map_err(StreamError::of) {
        Err(Some(StreamError::Reset(code))) => u32::try_from(*code).unwrap(),
        other => panic!("expected the stream to be reset, got {other:?}"),
    }
}

async fn garbage_stream_headers_are_reset_and_ten_thousand_streams_do_not_stop_another_peer(t: Transport) {
    const STREAMS: usize = 10_000;
    let (bob, bob_addr, _) = node_on(t).await;
    let (alice, _, _) = node_on(t).await;
    let (hostile, _, _) = node_on(t).await;
    introduce(&alice, &bob, bob_addr);
    introduce(&hostile, &bob, bob_addr);
    let conn = hostile.connection(bob.id()).await.unwrap();
    let raw = conn.transport();
    let mut oversized = vec![200u8];
    oversized.extend_from_slice(&[b'x'; 200]);
    assert_eq!(reset_code(raw_stream(raw, &oversized).await), codes::BAD_STREAM_HEADER);
    assert_eq!(reset_code(raw_stream(raw, b"\x00").await), codes::BAD_STREAM_HEADER);
    assert_eq!(reset_code(raw_stream(raw, b"\x05ping").await), codes::BAD_STREAM_HEADER);
    assert_eq!(reset_code(raw_stream(raw, b"\x07nope/99").await), codes::UNKNOWN_PROTOCOL);
    warren::ping::ping(&alice, bob.id(), 1).await.unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (conn, refused) = (conn.clone(), refused.clone());
            tokio::spawn(async move {
                let header: &[u8] = if i % 2 == 0 { b"\xffgarbage" } else { b"\x07nope/99" };
                let code = reset_code(raw_stream(conn.transport(), header).await);
                assert!(code == codes::BAD_STREAM_HEADER || code == codes::UNKNOWN_PROTOCOL, "stream {i}: {code}");
                refused.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for _ in 0..10 {
        assert_eq!(warren::ping::ping(&alice, bob.id(), 1).await.unwrap().len(), 1);
    }
    tokio::time::timeout(HANG * 4, async {
        for task in flood {
            task.await.unwrap();
        }
    })
    .await
    .expect("the flood did not finish");
    assert_eq!(refused.load(Ordering::Relaxed), STREAMS);
    assert_eq!(warren::ping::ping(&hostile, bob.id(), 1).await.unwrap().len(), 1);
    for node in [alice, bob, hostile] {
        node.shutdown().await;
    }
}

async fn a_garbage_hello_closes_that_connection_only(t: Transport) {
    let (bob, bob_addr, _) = node_on(t).await;
    let (alice, _, _) = node_on(t).await;
    let (hostile, _, hostile_listener) = node_on(t).await;
    introduce(&alice, &bob, bob_addr);
    let mut events = bob.subscribe();
    // Below the node: the transport's handshake, then garbage where the hello goes.
    let conn = hostile_listener.dial(bob_addr, Some(bob.id())).await.unwrap();
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(b"\x01\x00\x00\x00\xff not a hello").await.unwrap();
    // The bytes written are enough to judge: bob may close before the finish.
    let _ = send.finish();
    assert_eq!(close_code(conn.closed().await), codes::BAD_HELLO);
    let reason = next_rejection(&mut events).await;
    assert_eq!(reason, "hello failed: HelloBody.metadata: length 4223 exceeds max 255");
    assert_eq!(warren::ping::ping(&alice, bob.id(), 2).await.unwrap().len(), 2);
    for node in [alice, bob, hostile] {
        node.shutdown().await;
    }
}

async fn a_second_unidirectional_stream_closes_the_connection(t: Transport) {
    let (bob, bob_addr, _) = node_on(t).await;
    let (hostile, _, _) = node_on(t).await;
    introduce(&hostile, &bob, bob_addr);
    let conn = hostile.connection(bob.id()).await.unwrap();
    // The hello's stream is done, so the limit of one lets a second one open; the node takes
    // it as a violation.
    let mut send = conn.transport().open_uni().await.unwrap();
    send.write_all(b"unasked for").await.unwrap();
    assert_eq!(close_code(conn.closed().await), codes::PROTOCOL_VIOLATION);
    hostile.shutdown().await;
    bob.shutdown().await;
}

async fn one_address_gets_at_most_its_share_of_connections(t: Transport) {
    let (bob, bob_addr, _) = node_on(t).await;
    let (hostile, _, hostile_listener) = node_on(t).await;
    // 100 handshakes from one address, one after the other, each held open without a hello:
    // the per-source cap (64) lets the first 64 in and refuses the rest.
    let mut held = Vec::new();
    for _ in 0..100 {
        let dial = tokio::time::timeout(std::time::Duration::from_secs(5), hostile_listener.dial(bob_addr, None));
        if let Ok(Ok(conn)) = dial.await {
            held.push(conn);
        }
    }
    let alive = held.iter().filter(|c| c.close_reason().is_none()).count();
    assert_eq!(alive, 64, "connections from one address (cap 64)");
    drop(held);
    hostile.shutdown().await;
    bob.shutdown().await;
}

async fn shutdown_closes_connections_with_the_code_and_frees_the_port(t: Transport) {
    let (alice, _, _) = node_on(t).await;
    let identity = Identity::generate();
    let (bob, bob_addr, _) = node_as(t, identity.clone()).await;
    introduce(&alice, &bob, bob_addr);
    warren::ping::ping(&alice, bob.id(), 1).await.unwrap();
    let conn = alice.open_connection(&bob.id()).unwrap();
    let mut events = alice.subscribe();
    bob.shutdown().await;
    assert_eq!(bob.running_tasks(), 0);
    assert_eq!(close_code(conn.closed().await), codes::CLOSED);
    wait_for(&mut events, |e| matches!(e, Event::PeerDisconnected { .. }).then_some(())).await;
    // The port can be bound again.
    match t {
        Transport::Quic | Transport::Utp => drop(std::net::UdpSocket::bind(bob_addr).expect("the port is free")),
        Transport::Tcp => drop(std::net::TcpListener::bind(bob_addr).expect("the port is free")),
    }
    alice.shutdown().await;
    assert_eq!(alice.running_tasks(), 0);
}

async fn contacts_only_answers_contacts_alone(t: Transport) {
    let (bob, bob_addr, _) = node_on(t).await;
    let (alice, _, _) = node_on(t).await;
    let (mallory, _, mallory_listener) = node_on(t).await;
    bob.set_contacts_only(true);
    bob.add_contact(alice.id());
    alice.add_contact(bob.id());
    // A stranger who knows bob's identity and address gets no handshake: no key, no identity.
    mallory.discovered("test", bob.id(), [bob_addr], Default::default());
    let refused = mallory.connect(bob.id(), ECHO).await.unwrap_err();
    assert!(!matches!(refused, ConnectError::WrongIdentity { .. }), "{refused}");
    assert!(!refused.to_string().contains(&bob.id().to_string()[..16]), "bob's identity leaked: {refused}");
    // Nor does a dial that names nobody (no proof at all).
    assert!(mallory_listener.dial(bob_addr, None).await.is_err());
    // A contact proves the shared secret and gets in.
    introduce(&alice, &bob, bob_addr);
    assert_eq!(echo_once(&alice, bob.id(), b"friend").await, b"friend");
    for node in [alice, bob, mallory] {
        node.shutdown().await;
    }
}

/// A node with both listeners: a plain address is dialled with QUIC and published as QUIC's,
/// TCP when asked for by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_both_listeners_dials_quic_by_default_and_tcp_when_asked() {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bob = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).listen_tcp(lo).spawn().await.unwrap();
    warren::ping::register(&bob).unwrap();
    let alice = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).listen_tcp(lo).spawn().await.unwrap();
    let addrs = bob.listen_addrs();
    assert_eq!(addrs.len(), 2);
    let record = bob.record();
    assert_eq!(record.addrs.len(), 1, "only the QUIC address is published: {record:?}");
    let (quic_addr, tcp_addr) = (record.addrs[0], *addrs.iter().find(|a| **a != record.addrs[0]).unwrap());
    alice.discovered("test", bob.id(), [quic_addr], Default::default());
    let conn = alice.connection(bob.id()).await.unwrap();
    assert_eq!(conn.transport_name(), "quic");
    let over_tcp = alice.dial_via("tcp", tcp_addr, Some(bob.id())).await.unwrap();
    assert_eq!(over_tcp.transport_name(), "tcp");
    let mut stream = over_tcp.open_stream(warren::ping::PROTOCOL).await.unwrap();
    assert_eq!(warren::ping::ping_stream(&mut stream, 2).await.unwrap().len(), 2);
    assert!(matches!(alice.dial_via("utp", tcp_addr, None).await, Err(ConnectError::NoTransport)));
    alice.shutdown().await;
    bob.shutdown().await;
}

/// A peer given by hand on this transport (`tcp://`, `utp://`, or plain for QUIC) is reached
/// over it; the bootstrap cache remembers the address with its transport, and the node,
/// restarted with nothing but the cache, reconnects over the same transport.
async fn a_manual_peer_is_reached_cached_and_reconnected_on_its_transport(t: Transport) {
    use warren::discovery::cache::BootstrapHook;
    use warren::discovery::manual::{ManualDiscovery, ManualPeer};
    let dir = std::env::temp_dir().join(format!("warren-manual-{}-{}", t.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("bootstrap-cache");
    let (bob, bob_addr, _) = node_on(t).await;
    let bob_id = bob.id();
    let secret = Identity::generate().to_secret_bytes();
    let over = |transport: &'static str| {
        move |e: &Event| {
            matches!(e, Event::PeerConnected { remote, transport: got, .. } if *remote == bob_id && *got == transport)
                .then_some(())
        }
    };

    let (alice, _, _) = node_as(t, Identity::from_secret_bytes(&secret)).await;
    let mut events = alice.subscribe();
    let (cache, _) = BootstrapHook::spawn(&alice, &path);
    let scheme = if t == Transport::Quic { String::new() } else { format!("{}://", t.name()) };
    let peer: ManualPeer = format!("{bob_id}@{scheme}{bob_addr}").parse().unwrap();
    assert_eq!(peer.to_string(), format!("{bob_id}@{scheme}{bob_addr}"));
    let _manual = ManualDiscovery::spawn(&alice, [peer]);
    wait_for(&mut events, over(t.name())).await;
    assert_eq!(alice.peer(&bob_id).unwrap().addresses_on(t.name()), [bob_addr]);
    eventually("cached on its transport", || {
        cache.entries().iter().any(|e| e.identity == bob_id && e.addresses_on(t.name()) == [bob_addr])
    })
    .await;
    alice.shutdown().await;

    let (alice, _, _) = node_as(t, Identity::from_secret_bytes(&secret)).await;
    let mut events = alice.subscribe();
    let _cache = BootstrapHook::spawn(&alice, &path);
    wait_for(&mut events, over(t.name())).await;
    assert_eq!(echo_once(&alice, bob_id, b"again").await, b"again");
    alice.shutdown().await;
    bob.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Instantiates each test once per transport: `transports::quic::name`, `transports::tcp::name`,
/// `transports::utp::name`.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod quic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Transport::Quic).await
                }
            )*
        }
        mod tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Transport::Tcp).await
                }
            )*
        }
        mod utp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Transport::Utp).await
                }
            )*
        }
    };
}

suite!(
    connect_by_identity_ping_and_echo,
    unknown_protocol_is_refused_and_the_connection_keeps_working,
    a_wrong_identity_is_refused_and_the_impostor_learns_nothing,
    garbage_stream_headers_are_reset_and_ten_thousand_streams_do_not_stop_another_peer,
    a_garbage_hello_closes_that_connection_only,
    a_second_unidirectional_stream_closes_the_connection,
    one_address_gets_at_most_its_share_of_connections,
    shutdown_closes_connections_with_the_code_and_frees_the_port,
    contacts_only_answers_contacts_alone,
    a_manual_peer_is_reached_cached_and_reconnected_on_its_transport,
);

/// A TCP hole punch between two nodes on loopback (no NAT: the SYNs cross or meet a listener),
/// signalled over their QUIC connection: it gives a direct TCP connection that carries streams,
/// and the node prefers it from then on. A second punch within the interval is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_hole_punch_over_an_existing_connection_gives_a_direct_tcp_connection() {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bob = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).listen_tcp(lo).spawn().await.unwrap();
    warren::ping::register(&bob).unwrap();
    let alice = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).listen_tcp(lo).spawn().await.unwrap();
    let quic_addr = bob.record().addrs[0];
    alice.discovered("test", bob.id(), [quic_addr], Default::default());
    assert_eq!(alice.connection(bob.id()).await.unwrap().transport_name(), "quic");
    let tcp = tokio::time::timeout(HANG, alice.punch_tcp(bob.id())).await.expect("the punch ended").unwrap();
    assert_eq!(tcp.transport_name(), "tcp");
    assert_eq!(tcp.remote(), bob.id());
    assert_eq!(alice.open_connection(&bob.id()).unwrap().id(), tcp.id(), "the newest connection is used");
    assert_eq!(warren::ping::ping(&alice, bob.id(), 2).await.unwrap().len(), 2);
    // Bob has it too, as a TCP connection from alice.
    let alice_id = alice.id();
    eventually("bob has the TCP connection", || {
        bob.connections().iter().any(|c| c.remote() == alice_id && c.transport_name() == "tcp")
    })
    .await;
    // Another offer from alice within the interval: bob does not answer it.
    assert!(alice.punch_tcp(bob.id()).await.is_err());
    alice.shutdown().await;
    bob.shutdown().await;
}

/// Background traffic: with a uTP candidate known, `connect_background` opens its stream over
/// uTP (LEDBAT) while `connect` keeps using QUIC; without one it fails instead of sending in
/// the foreground.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_background_goes_over_utp_and_foreground_streams_stay_on_quic() {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let spawn = || P2P::builder("warren-test", Identity::generate()).listen_quic(lo).listen_utp(lo).spawn();
    let (bob, alice) = (spawn().await.unwrap(), spawn().await.unwrap());
    bob.register_protocol(ECHO, echo).unwrap();
    let quic_addr = bob.record().addrs[0];
    let utp_addr = *bob.listen_addrs().iter().find(|a| **a != quic_addr).unwrap();
    alice.discovered("test", bob.id(), [quic_addr], Default::default());
    // No uTP candidate yet: refused, not sent in the foreground.
    let refused = alice.connect_background(bob.id(), ECHO).await.unwrap_err();
    assert!(matches!(refused, ConnectError::NoAddress { .. }), "{refused}");
    alice.discovered_on("utp", bob.id(), [utp_addr]);
    assert_eq!(alice.peer(&bob.id()).unwrap().addresses_on("utp"), vec![utp_addr]);
    let mut background = alice.connect_background(bob.id(), ECHO).await.unwrap();
    background.write_all(b"bulk").await.unwrap();
    background.finish().unwrap();
    let mut echoed = Vec::new();
    background.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"bulk");
    let transports: Vec<_> = alice.connections().iter().map(|c| c.transport_name()).collect();
    assert_eq!(transports, ["utp"], "one background connection so far");
    // A foreground stream does not ride the background connection: it dials QUIC.
    assert_eq!(echo_once(&alice, bob.id(), b"now").await, b"now");
    assert_eq!(alice.open_connection(&bob.id()).unwrap().transport_name(), "quic");
    // The next background stream reuses the uTP connection.
    let _again = alice.connect_background(bob.id(), ECHO).await.unwrap();
    assert_eq!(alice.connections().len(), 2);
    alice.shutdown().await;
    bob.shutdown().await;
}

/// Background per protocol: a protocol marked as background (`Builder::background_protocol`,
/// `P2P::set_background`) goes over uTP through plain `connect`, other protocols stay on QUIC;
/// where the peer has no uTP candidate, it falls back to the foreground connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_marked_as_background_goes_over_utp_through_connect() {
    const BULK: &str = "bulk/1";
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bob = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).listen_utp(lo).spawn().await.unwrap();
    bob.register_protocol(ECHO, echo).unwrap();
    bob.register_protocol(BULK, echo).unwrap();
    let builder = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).listen_utp(lo);
    let alice = builder.background_protocol(BULK).spawn().await.unwrap();
    assert!(alice.is_background(BULK) && !alice.is_background(ECHO));
    let quic_addr = bob.record().addrs[0];
    let utp_addr = *bob.listen_addrs().iter().find(|a| **a != quic_addr).unwrap();
    alice.discovered("test", bob.id(), [quic_addr], Default::default());
    let echoed = |mut stream: warren::Stream, payload: &'static [u8]| async move {
        stream.write_all(payload).await.unwrap();
        stream.finish().unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        out
    };
    // No uTP candidate: the background protocol still works, in the foreground.
    assert_eq!(echoed(alice.connect(bob.id(), BULK).await.unwrap(), b"early").await, b"early");
    let transports = |p2p: &P2P| {
        let mut names: Vec<_> = p2p.connections().iter().map(|c| c.transport_name()).collect();
        names.sort_unstable();
        names
    };
    assert_eq!(transports(&alice), ["quic"]);
    alice.discovered_on("utp", bob.id(), [utp_addr]);
    assert_eq!(echoed(alice.connect(bob.id(), BULK).await.unwrap(), b"bulk").await, b"bulk");
    assert_eq!(transports(&alice), ["quic", "utp"], "the background protocol dialled uTP");
    assert_eq!(echoed(alice.connect(bob.id(), ECHO).await.unwrap(), b"now").await, b"now");
    assert_eq!(alice.open_connection(&bob.id()).unwrap().transport_name(), "quic", "foreground stays on QUIC");
    // Unmarked, it is foreground again.
    assert!(alice.set_background(BULK, false));
    let _ = alice.connect(bob.id(), BULK).await.unwrap();
    assert_eq!(alice.connections().len(), 2, "no new connection");
    alice.shutdown().await;
    bob.shutdown().await;
}
