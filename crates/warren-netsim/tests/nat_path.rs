//! Hosts behind simulated NATs talking over simulated links, with real sockets. Needs root
//! (CAP_NET_ADMIN); without it these tests fail with a message saying how to run them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use warren_netsim::Simulation;
use warren_netsim::link::{LinkConfig, Loss};
use warren_netsim::nat::NatPreset;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const HOME_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const HOME_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

fn ms(n: u64) -> LinkConfig {
    LinkConfig { latency: Duration::from_millis(n), ..Default::default() }
}

#[test]
fn a_host_behind_a_nat_reaches_a_server_which_sees_the_nat_and_cannot_call_back_unasked() {
    let mut sim = Simulation::new(1);
    let nat = sim.add_nat("home", NatPreset::PortRestricted.configs(&[HOME_A]).remove(0), None).unwrap();
    let client =
        sim.add_host_behind("client", "192.168.1.2".parse().unwrap(), 24, &nat).unwrap_or_else(|e| panic!("{e}"));
    let server = sim.add_host("server", SERVER, 24).unwrap_or_else(|e| panic!("{e}"));
    sim.link(&client, &nat, ms(1));
    sim.link(&nat, &server, ms(10));
    sim.start().unwrap();

    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server_task = server.spawn(move || async move {
        let socket = UdpSocket::bind((SERVER, 3478)).await.unwrap();
        let other = UdpSocket::bind((SERVER, 3479)).await.unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        let (_, from) = socket.recv_from(&mut buf).await.unwrap();
        // Answer from the port it was asked on (admitted), then from another port (filtered).
        socket.send_to(from.to_string().as_bytes(), from).await.unwrap();
        other.send_to(b"unsolicited", from).await.unwrap();
        from
    });
    ready.recv().unwrap();
    let (answer, unsolicited) = client
        .spawn(|| async {
            let socket = UdpSocket::bind(("192.168.1.2".parse::<Ipv4Addr>().unwrap(), 5000)).await.unwrap();
            socket.send_to(b"who am I?", SocketAddr::from((SERVER, 3478))).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await.unwrap().unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            // The port-restricted NAT must drop the second answer: give it ten round trips.
            let unsolicited = tokio::time::timeout(Duration::from_millis(250), socket.recv_from(&mut buf)).await;
            (answer, unsolicited.is_ok())
        })
        .join()
        .unwrap();
    let seen_by_server = server_task.join().unwrap();
    assert_eq!(seen_by_server, SocketAddr::from((HOME_A, 5000)), "the server sees the NAT, port preserved");
    assert_eq!(answer, "203.0.113.1:5000");
    assert!(!unsolicited, "the port-restricted NAT let an unsolicited packet in");
    let stats = &sim.nat_stats()["home"];
    assert!(stats.dropped.values().sum::<u64>() >= 1, "{stats:?}");
}

/// The seed's example: two services, each behind its own NAT, talking over a lossy,
/// high-latency link. Each knows the other's public endpoint (full-cone NATs preserve ports)
/// and keeps sending until it hears the other: the first packets open the mappings.
#[test]
fn two_services_behind_their_own_nats_talk_over_a_lossy_high_latency_link() {
    let mut sim = Simulation::new(7);
    let nat_a = sim.add_nat("nat-a", NatPreset::FullCone.configs(&[HOME_A]).remove(0), None).unwrap();
    let nat_b = sim.add_nat("nat-b", NatPreset::FullCone.configs(&[HOME_B]).remove(0), None).unwrap();
    let a = sim.add_host_behind("a", "10.1.0.2".parse().unwrap(), 24, &nat_a).unwrap_or_else(|e| panic!("{e}"));
    let b = sim.add_host_behind("b", "10.2.0.2".parse().unwrap(), 24, &nat_b).unwrap_or_else(|e| panic!("{e}"));
    sim.link(&a, &nat_a, ms(1));
    sim.link(&b, &nat_b, ms(1));
    let wan = LinkConfig { latency: Duration::from_millis(100), loss: Loss::Random(0.1), ..Default::default() };
    sim.link(&nat_a, &nat_b, wan);
    sim.start().unwrap();

    let talk = |me: Ipv4Addr, peer: SocketAddr, name: &'static str| {
        move || async move {
            let socket = UdpSocket::bind((me, 4000)).await.unwrap();
            let mut buf = [0u8; 64];
            let mut heard = None;
            // Up to 50 tries, 300 ms apart: with 10 % loss each way one gets through.
            for _ in 0..50 {
                socket.send_to(name.as_bytes(), peer).await.unwrap();
                if let Ok(Ok((n, from))) =
                    tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
                {
                    heard = Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
                    // Answer once more so the other side hears us too, then stop.
                    socket.send_to(name.as_bytes(), peer).await.unwrap();
                    socket.send_to(name.as_bytes(), peer).await.unwrap();
                    break;
                }
            }
            heard
        }
    };
    let task_a = a.spawn(talk("10.1.0.2".parse().unwrap(), SocketAddr::from((HOME_B, 4000)), "a"));
    let task_b = b.spawn(talk("10.2.0.2".parse().unwrap(), SocketAddr::from((HOME_A, 4000)), "b"));
    let heard_by_a = task_a.join().unwrap().expect("a never heard b");
    let heard_by_b = task_b.join().unwrap().expect("b never heard a");
    assert_eq!(heard_by_a, ("b".to_string(), SocketAddr::from((HOME_B, 4000))));
    assert_eq!(heard_by_b, ("a".to_string(), SocketAddr::from((HOME_A, 4000))));
}
