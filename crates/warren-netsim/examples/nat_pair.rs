//! The seed's example: two services, each behind its own NAT, talking over a lossy,
//! high-latency link. Each sends to the other's public endpoint until it hears back; the first
//! packets open the NAT mappings (full-cone NATs keep the ports, so the endpoints are known).
//!
//! Needs root (network namespaces): `sudo cargo run -p warren-netsim --example nat_pair`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use warren_netsim::Simulation;
use warren_netsim::link::{LinkConfig, Loss};
use warren_netsim::nat::NatPreset;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (public_a, public_b) = (Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2));
    let mut sim = Simulation::new(2026);
    let nat_a = sim.add_nat("nat-a", NatPreset::FullCone.configs(&[public_a]).remove(0), None)?;
    let nat_b = sim.add_nat("nat-b", NatPreset::FullCone.configs(&[public_b]).remove(0), None)?;
    let a = sim.add_host_behind("a", "10.1.0.2".parse()?, 24, &nat_a)?;
    let b = sim.add_host_behind("b", "10.2.0.2".parse()?, 24, &nat_b)?;
    let lan = LinkConfig { latency: Duration::from_millis(1), ..Default::default() };
    sim.link(&a, &nat_a, lan.clone());
    sim.link(&b, &nat_b, lan);
    // The "internet" between the two NATs: 150 ms each way, 20 % loss.
    let wan = LinkConfig { latency: Duration::from_millis(150), loss: Loss::Random(0.2), ..Default::default() };
    sim.link(&nat_a, &nat_b, wan);
    sim.start()?;

    let service = |me: Ipv4Addr, peer: SocketAddr, name: &'static str| {
        move || async move {
            let socket = UdpSocket::bind((me, 4000)).await.expect("bind inside the host");
            let started = Instant::now();
            let mut buf = [0u8; 64];
            for attempt in 1..=100 {
                socket.send_to(name.as_bytes(), peer).await.expect("send");
                if let Ok(Ok((n, from))) =
                    tokio::time::timeout(Duration::from_millis(400), socket.recv_from(&mut buf)).await
                {
                    for _ in 0..3 {
                        socket.send_to(name.as_bytes(), peer).await.expect("send");
                    }
                    let heard = String::from_utf8_lossy(&buf[..n]).into_owned();
                    return format!(
                        "{name} heard {heard:?} from {from} after {attempt} tries, {:?}",
                        started.elapsed()
                    );
                }
            }
            format!("{name} heard nothing")
        }
    };
    let task_a = a.spawn(service("10.1.0.2".parse()?, SocketAddr::from((public_b, 4000)), "a"));
    let task_b = b.spawn(service("10.2.0.2".parse()?, SocketAddr::from((public_a, 4000)), "b"));
    println!("{}", task_a.join().expect("service a"));
    println!("{}", task_b.join().expect("service b"));
    let mut stats: Vec<_> = sim.link_stats().into_iter().collect();
    stats.sort_by(|x, y| x.0.cmp(&y.0));
    for ((from, to), s) in stats {
        println!("link {from} -> {to}: offered {}, delivered {}, lost {}", s.offered, s.delivered, s.lost);
    }
    Ok(())
}
