//! Choosing a transport where UDP is blocked: a node behind the simulator's corporate preset
//! (UDP dropped, TCP through a symmetric NAT) reaches a public node by identity over a direct
//! TCP connection, from the TCP candidate it knows, with no relay. Needs root (network
//! namespaces).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::{Identity, P2P};
use warren_netsim::pair::{self, NatKind, Pair, PairLinks};

const ECHO: &str = "echo/1";

#[test]
fn a_node_whose_udp_is_blocked_reaches_a_public_peer_over_tcp_by_identity() {
    let Pair { mut sim, a, b, .. } = pair::build(NatKind::None, NatKind::UdpBlocked, PairLinks::default(), 9).unwrap();
    sim.start().unwrap();
    let (quic, tcp) = (SocketAddr::from((a.ip(), 4433)), SocketAddr::from((a.ip(), 4434)));
    let identity = Identity::generate();
    let public_id = identity.to_remote_identity();
    let (ready, is_ready) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let public = a.spawn(move || async move {
        let p2p = P2P::builder("warren-test", identity).listen_quic(quic).listen_tcp(tcp).spawn().await.unwrap();
        p2p.register_protocol(ECHO, |mut stream: warren::Stream| async move {
            let mut buf = Vec::new();
            if stream.read_to_end(&mut buf).await.is_ok() {
                let _ = stream.write_all(&buf).await;
                let _ = stream.finish();
            }
        })
        .unwrap();
        ready.send(()).unwrap();
        let _ = stopped.await;
        p2p.shutdown().await;
    });
    is_ready.recv().unwrap();
    let corporate = b.spawn(move || async move {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let p2p =
            P2P::builder("warren-test", Identity::generate()).listen_quic(any).listen_tcp(any).spawn().await.unwrap();
        p2p.discovered("test", public_id, [quic], Default::default());
        p2p.discovered_on("tcp", public_id, [tcp]);
        let started = Instant::now();
        let mut stream = tokio::time::timeout(Duration::from_secs(15), p2p.connect(public_id, ECHO))
            .await
            .expect("connect ended")
            .expect("connected");
        let took = started.elapsed();
        stream.write_all(b"through the firewall").await.unwrap();
        stream.finish().unwrap();
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed).await.unwrap();
        let transport = p2p.open_connection(&public_id).unwrap().transport_name();
        p2p.shutdown().await;
        (echoed, transport, took)
    });
    let (echoed, transport, took) = corporate.join().unwrap();
    let _ = stop.send(());
    public.join().unwrap();
    assert_eq!(echoed, b"through the firewall");
    assert_eq!(transport, "tcp");
    // The QUIC dial gets nowhere; the TCP one starts a stagger (250 ms) later and wins: the
    // whole connect is well under QUIC's 10 s handshake timeout.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
