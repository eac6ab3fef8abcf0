//! TCP through the simulator: a 100 MB transfer through a NAT and a lossy link arrives intact,
//! and a 10 Mbit/s link carries 10 Mbit/s. Needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use warren_netsim::link::{LinkConfig, Loss};
use warren_netsim::nat::NatPreset;
use warren_netsim::{Host, KernelNatConfig, KernelPorts, Simulation};

/// These tests measure rates: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

/// A reproducible byte stream (xorshift64*), so the receiver can check every byte.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// What the receiver saw: bytes, the offset of the first byte that differs from the expected
/// stream (if any), and the timeline of (time, bytes so far).
type Received = (u64, Option<u64>, Vec<(Instant, u64)>);

/// Listens on the server, accepts one connection, reads to the end.
fn receive(server: &Host) -> std::thread::JoinHandle<Received> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let handle = server.spawn_sync(move || {
        let listener = TcpListener::bind((SERVER, 9000)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut expected = Stream(0x9e37_79b9_7f4a_7c15);
        let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let (mut total, mut mismatch, mut timeline) = (0u64, None, Vec::new());
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            expected.fill(&mut want[..n]);
            if mismatch.is_none() {
                if let Some(at) = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
                    mismatch = Some(total + at as u64);
                }
            }
            total += n as u64;
            timeline.push((Instant::now(), total));
        }
        (total, mismatch, timeline)
    });
    ready.recv().unwrap();
    handle
}

/// Sends `bytes` of the stream from the client (or for `duration` when given).
fn send(client: &Host, bytes: u64, duration: Option<Duration>) {
    client
        .spawn_sync(move || {
            let mut stream = TcpStream::connect((SERVER, 9000)).unwrap();
            let mut source = Stream(0x9e37_79b9_7f4a_7c15);
            let mut buf = vec![0u8; 64 * 1024];
            let (mut sent, started) = (0u64, Instant::now());
            while sent < bytes && duration.is_none_or(|d| started.elapsed() < d) {
                let n = buf.len().min((bytes - sent) as usize);
                source.fill(&mut buf[..n]);
                stream.write_all(&buf[..n]).unwrap();
                sent += n as u64;
            }
        })
        .join()
        .unwrap();
}

#[test]
fn one_hundred_megabytes_cross_a_nat_and_a_lossy_link_intact() {
    let _serial = serial();
    let mut sim = Simulation::new(11);
    let nat = sim
        .add_nat("nat", NatPreset::PortRestricted.configs(&["203.0.113.1".parse().unwrap()]).remove(0), None)
        .unwrap();
    let client = sim.add_host_behind("client", CLIENT, 24, &nat).unwrap_or_else(|e| panic!("{e}"));
    let server = sim.add_host("server", SERVER, 24).unwrap_or_else(|e| panic!("{e}"));
    sim.link(&client, &nat, LinkConfig::default());
    let lossy = LinkConfig { latency: Duration::from_millis(1), loss: Loss::Random(0.01), ..Default::default() };
    sim.link(&nat, &server, lossy);
    sim.start().unwrap();
    const BYTES: u64 = 100_000_000;
    let receiver = receive(&server);
    let started = Instant::now();
    send(&client, BYTES, None);
    let (received, mismatch, _) = receiver.join().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(received, BYTES, "every byte arrived");
    assert_eq!(mismatch, None, "every byte is the one sent");
    let lost = sim.link_stats()[&("nat".into(), "server".into())].lost;
    assert!(lost > 100, "the link did lose packets ({lost}), which TCP resent");
    assert!(sim.nat_stats()["nat"].outbound > 60_000, "everything went through the NAT");
    eprintln!("100 MB through NAT + 1% loss in {elapsed:?} ({lost} packets lost on the way)");
}

#[test]
fn a_10_mbit_link_carries_10_mbit_of_tcp() {
    let _serial = serial();
    let mut sim = Simulation::new(12);
    let client = sim.add_host("client", "198.51.100.2".parse().unwrap(), 24).unwrap_or_else(|e| panic!("{e}"));
    let server = sim.add_host("server", SERVER, 24).unwrap_or_else(|e| panic!("{e}"));
    let limited = LinkConfig {
        latency: Duration::from_millis(5),
        bandwidth_bps: Some(10_000_000),
        queue_bytes: 64 * 1024,
        ..Default::default()
    };
    sim.link(&client, &server, limited);
    sim.start().unwrap();
    let receiver = receive(&server);
    send(&client, u64::MAX, Some(Duration::from_secs(5)));
    let (_, mismatch, timeline) = receiver.join().unwrap();
    assert_eq!(mismatch, None);
    // The rate over the steady part: from one second in to the last byte.
    let start = timeline[0].0 + Duration::from_secs(1);
    let (t0, b0) = *timeline.iter().find(|(t, _)| *t >= start).unwrap();
    let (t1, b1) = *timeline.last().unwrap();
    let mbit = (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e6;
    // Payload rate: 1448 of every 1500 bytes on the wire are data (20 IP + 32 TCP with
    // timestamps), so the link's 10 Mbit/s shows as 9.65 Mbit/s of payload.
    let wire_mbit = mbit * 1500.0 / 1448.0;
    eprintln!("10 Mbit/s link: {mbit:.2} Mbit/s payload, {wire_mbit:.2} Mbit/s on the wire");
    assert!((9.0..=11.0).contains(&wire_mbit), "{wire_mbit:.2} Mbit/s, expected 10 ± 10%");
}

/// Over links that only delay, the kernel's 64 KB TCP super-segments (TSO) pass whole through
/// a kernel NAT and a router (each decrementing their TTL), and arrive intact; where a link is
/// captured they are cut into the packets a wire would carry.
#[test]
fn tcp_super_segments_cross_unimpaired_links_whole_and_captures_see_wire_packets() {
    let _serial = serial();
    let path = std::env::temp_dir().join(format!("warren-netsim-tso-{}.pcap", std::process::id()));
    let mut sim = Simulation::new(13);
    let router = sim.add_router("r", "10.9.0.1".parse().unwrap(), &[("10.9.0.0".parse().unwrap(), 24)], None).unwrap();
    let nat = sim
        .add_kernel_nat(
            "knat",
            KernelNatConfig {
                public_ip: "10.9.0.2".parse().unwrap(),
                lan_ip: "192.168.1.1".parse().unwrap(),
                lan_prefix: 24,
                ports: KernelPorts::Masquerade,
                udp_timeout: None,
                unsolicited_tcp: warren_netsim::nat::UnsolicitedTcp::Reset,
            },
            Some(&router),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let client = sim.add_host_behind("client", CLIENT, 24, &nat).unwrap();
    let server = sim.add_host("server", SERVER, 24).unwrap();
    let delay = LinkConfig { latency: Duration::from_millis(1), ..Default::default() };
    sim.link(&client, &nat, delay.clone());
    sim.link(&nat, &router, delay.clone());
    sim.link(&router, &server, delay);
    sim.capture(&router, &server, &path).unwrap();
    sim.start().unwrap();
    const BYTES: u64 = 20_000_000;
    let receiver = receive(&server);
    send(&client, BYTES, None);
    let (received, mismatch, _) = receiver.join().unwrap();
    assert_eq!(received, BYTES);
    assert_eq!(mismatch, None, "every byte is the one sent");
    let stats = sim.link_stats();
    let segments = BYTES / 1448;
    for hop in [("client", "knat"), ("knat", "r")] {
        let packets = stats[&(hop.0.into(), hop.1.into())].delivered;
        assert!(
            packets < segments / 4,
            "{hop:?}: {packets} packets for {segments} segments: super-segments pass whole"
        );
    }
    let captured = stats[&("r".into(), "server".into())].delivered;
    assert!(captured >= segments, "{captured} packets on the captured link: cut to wire size");
    drop(sim);
    let packets = warren_netsim::pcap::read_file(&path).expect("a capture of IPv4 packets");
    let largest = packets.iter().map(|(_, p)| p.len()).max().unwrap();
    assert!(largest <= 1500, "the capture holds wire packets (largest {largest} bytes)");
    for (_, packet) in &packets {
        assert!(packet.checksums_ok(), "complete checksums: {packet:?}");
        if packet.dst() == SERVER {
            assert_eq!(packet.ttl(), 62, "the kernel NAT and the router each decremented the TTL");
        }
    }
    std::fs::remove_file(&path).unwrap();
}
