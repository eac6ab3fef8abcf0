//! Routers, switches, kernel NATs and interface captures, with real sockets in host
//! namespaces. Needs root (CAP_NET_ADMIN) and, for the kernel NAT, `nft` (nftables).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use warren_netsim::link::LinkConfig;
use warren_netsim::{Host, KernelNatConfig, KernelPorts, Simulation};

/// These tests measure time: one at a time, so they do not compete for the cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ms(n: u64) -> LinkConfig {
    LinkConfig { latency: Duration::from_millis(n), ..Default::default() }
}

fn ok<T>(result: Result<T, warren_netsim::SimError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// A kernel NAT (`masquerade`) with `public` outside and 192.168.1.1/24 inside.
fn kernel_nat(sim: &mut Simulation, public: Ipv4Addr) -> warren_netsim::Device {
    let config = KernelNatConfig {
        public_ip: public,
        lan_ip: "192.168.1.1".parse().unwrap(),
        lan_prefix: 24,
        ports: KernelPorts::Masquerade,
        udp_timeout: None,
        unsolicited_tcp: warren_netsim::nat::UnsolicitedTcp::Reset,
    };
    ok(sim.add_kernel_nat("knat", config, None))
}

/// A UDP echo server on `host` port 7000 for `count` datagrams (or until 3 s of silence):
/// answers each with the address it came from. Returns once bound.
fn echo(host: &Host, count: usize) -> std::thread::JoinHandle<usize> {
    let ip = host.ip();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = host.spawn_sync(move || {
        let socket = UdpSocket::bind((ip, 7000)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut seen = 0;
        while seen < count {
            let Ok((_, from)) = socket.recv_from(&mut buf) else { break };
            seen += 1;
            socket.send_to(from.to_string().as_bytes(), from).unwrap();
        }
        seen
    });
    ready.recv().unwrap();
    server
}

/// From `host`, asks the echo server at `server` who we are `count` times; returns each
/// answer and round-trip time.
fn ask(host: &Host, server: Ipv4Addr, count: usize) -> Vec<(String, Duration)> {
    let ip = host.ip();
    host.spawn_sync(move || {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 128];
        (0..count)
            .map(|_| {
                let started = Instant::now();
                socket.send_to(b"who am I?", (server, 7000)).unwrap();
                let (n, _) = socket.recv_from(&mut buf).expect("an answer");
                (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed())
            })
            .collect()
    })
    .join()
    .unwrap()
}

#[test]
fn round_trip_through_two_25_ms_links_and_a_router_is_100_ms() {
    let _serial = serial();
    let mut sim = Simulation::new(3);
    let router = ok(sim.add_router("r", "10.9.0.1".parse().unwrap(), &[("10.1.0.0".parse().unwrap(), 16)], None));
    let a = ok(sim.add_host_behind("a", "10.1.0.2".parse().unwrap(), 16, &router));
    let b = ok(sim.add_host("b", "198.51.100.7".parse().unwrap(), 24));
    sim.link(&a, &router, ms(25));
    sim.link(&router, &b, ms(25));
    sim.start().unwrap();
    let server = echo(&b, 20);
    let answers = ask(&a, b.ip(), 20);
    assert_eq!(server.join().unwrap(), 20);
    let mut ms = Vec::new();
    for (seen_as, rtt) in answers {
        assert!(seen_as.starts_with("10.1.0.2:"), "routers do not translate: {seen_as}");
        ms.push(rtt.as_secs_f64() * 1e3);
    }
    // As in hosts.rs: never early; median within 3 ms and the 90th percentile within 10 ms above
    // the configured 100 ms, which a loaded machine's scheduler does not break.
    ms.sort_by(f64::total_cmp);
    assert!(ms[0] >= 100.0, "an RTT under the links' 100 ms: {ms:?}");
    let (median, p90) = (ms[ms.len() / 2], ms[ms.len() * 9 / 10]);
    assert!(median <= 103.0, "median RTT {median} ms, expected 100 ms + at most 3: {ms:?}");
    assert!(p90 <= 110.0, "90th percentile RTT {p90} ms, expected 100 ms + at most 10: {ms:?}");
    let stats = sim.link_stats();
    assert_eq!(stats[&("a".into(), "r".into())].delivered, 20);
    assert_eq!(stats[&("r".into(), "b".into())].delivered, 20);
}

#[test]
fn a_router_decrements_the_ttl_and_drops_what_has_run_out() {
    let _serial = serial();
    let mut sim = Simulation::new(4);
    let router = ok(sim.add_router("r", "10.9.0.1".parse().unwrap(), &[("10.1.0.0".parse().unwrap(), 16)], None));
    let a = ok(sim.add_host_behind("a", "10.1.0.2".parse().unwrap(), 16, &router));
    let b = ok(sim.add_host("b", "198.51.100.7".parse().unwrap(), 24));
    sim.link(&a, &router, ms(0));
    sim.link(&router, &b, ms(0));
    sim.start().unwrap();
    let received = b.spawn_sync(|| {
        let socket = UdpSocket::bind(("198.51.100.7", 7000)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    });
    std::thread::sleep(Duration::from_millis(100));
    a.spawn_sync(|| {
        let socket = UdpSocket::bind(("10.1.0.2", 0)).unwrap();
        socket.set_ttl(1).unwrap();
        socket.send_to(b"ttl1", ("198.51.100.7", 7000)).unwrap();
        socket.set_ttl(2).unwrap();
        socket.send_to(b"ttl2", ("198.51.100.7", 7000)).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(received.join().unwrap(), vec![b"ttl2".to_vec()], "TTL 1 dies at the router, TTL 2 gets through");
}

#[test]
fn a_switch_carries_unicast_between_its_hosts_and_floods_multicast() {
    let _serial = serial();
    let mut sim = Simulation::new(5);
    let switch = ok(sim.add_switch("lan", None));
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(192, 168, 7, i)).collect();
    let hosts: Vec<Host> =
        ips.iter().enumerate().map(|(i, ip)| ok(sim.add_host_behind(&format!("h{i}"), *ip, 24, &switch))).collect();
    for host in &hosts {
        sim.link(host, &switch, ms(1));
    }
    sim.start().unwrap();
    // Unicast: h0 → h2 through the switch.
    let server = echo(&hosts[2], 1);
    let answers = ask(&hosts[0], ips[2], 1);
    assert!(answers[0].0.starts_with("192.168.7.1:"), "a switch does not translate: {}", answers[0].0);
    server.join().unwrap();
    // Multicast from h0 reaches h1 and h2.
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let listeners: Vec<_> = hosts[1..]
        .iter()
        .map(|host| {
            let ip = host.ip();
            let (ready_tx, ready) = std::sync::mpsc::channel();
            let handle = host.spawn_sync(move || {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353)).unwrap();
                socket.join_multicast_v4(&group, &ip).unwrap();
                socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                let (n, from) = socket.recv_from(&mut buf).expect("the multicast datagram");
                (buf[..n].to_vec(), from)
            });
            ready.recv().unwrap();
            handle
        })
        .collect();
    let sender = ips[0];
    hosts[0]
        .spawn_sync(move || {
            let socket = UdpSocket::bind((sender, 0)).unwrap();
            socket.send_to(b"hello, LAN", (group, 5353)).unwrap();
        })
        .join()
        .unwrap();
    for listener in listeners {
        let (payload, from) = listener.join().unwrap();
        assert_eq!(payload, b"hello, LAN");
        assert_eq!(from.ip(), std::net::IpAddr::V4(ips[0]));
    }
}

#[test]
fn a_host_behind_a_kernel_nat_is_seen_as_the_nat_public_address() {
    let _serial = serial();
    let mut sim = Simulation::new(6);
    let public: Ipv4Addr = "203.0.113.9".parse().unwrap();
    let config = KernelNatConfig {
        public_ip: public,
        lan_ip: "192.168.50.1".parse().unwrap(),
        lan_prefix: 24,
        ports: KernelPorts::Masquerade,
        udp_timeout: None,
        unsolicited_tcp: warren_netsim::nat::UnsolicitedTcp::Reset,
    };
    let nat = ok(sim.add_kernel_nat("knat", config, None));
    let client = ok(sim.add_host_behind("client", "192.168.50.2".parse().unwrap(), 24, &nat));
    let server = ok(sim.add_host("server", "198.51.100.1".parse().unwrap(), 24));
    sim.link(&client, &nat, ms(1));
    sim.link(&nat, &server, ms(5));
    sim.start().unwrap();
    let echo_server = echo(&server, 3);
    let answers = ask(&client, server.ip(), 3);
    assert_eq!(echo_server.join().unwrap(), 3);
    for (seen_as, _) in &answers {
        let seen: SocketAddr = seen_as.parse().unwrap();
        assert_eq!(seen.ip(), std::net::IpAddr::V4(public), "masqueraded to the public address");
    }
    let rules = nat.command("nft").expect("a kernel NAT has a namespace").args(["list", "ruleset"]).output().unwrap();
    assert!(String::from_utf8_lossy(&rules.stdout).contains("masquerade"));
}

#[test]
fn a_host_interface_capture_holds_what_the_host_sent_and_received() {
    let _serial = serial();
    let path = std::env::temp_dir().join(format!("warren-netsim-iface-{}.pcap", std::process::id()));
    {
        let mut sim = Simulation::new(7);
        let a = ok(sim.add_host("a", "10.0.0.1".parse().unwrap(), 24));
        let b = ok(sim.add_host("b", "10.0.0.2".parse().unwrap(), 24));
        sim.link(&a, &b, ms(1));
        sim.capture_interface(&a, &path).unwrap();
        sim.start().unwrap();
        let server = echo(&b, 4);
        assert_eq!(ask(&a, b.ip(), 4).len(), 4);
        server.join().unwrap();
    }
    let packets = warren_netsim::pcap::read_file(&path).expect("a capture of IPv4 packets");
    let udp: Vec<_> = packets.iter().map(|(_, p)| p).filter(|p| p.protocol() == warren_netsim::packet::UDP).collect();
    assert_eq!(udp.iter().filter(|p| p.dst_port() == Some(7000)).count(), 4, "sent");
    assert_eq!(udp.iter().filter(|p| p.src_port() == Some(7000)).count(), 4, "received");
    // A reader nobody here wrote opens it too (tcpdump, installed by scripts/setup).
    let tcpdump = std::process::Command::new("tcpdump").args(["-nn", "-r"]).arg(&path).output().expect("tcpdump");
    assert!(tcpdump.status.success(), "{}", String::from_utf8_lossy(&tcpdump.stderr));
    let listing = String::from_utf8_lossy(&tcpdump.stdout);
    assert_eq!(
        listing.lines().filter(|l| l.contains("IP 10.0.0.1.") && l.contains(" > 10.0.0.2.7000:")).count(),
        4,
        "{listing}"
    );
    assert_eq!(listing.lines().filter(|l| l.contains("IP 10.0.0.2.7000 > 10.0.0.1.")).count(), 4, "{listing}");
    std::fs::remove_file(&path).unwrap();
}

/// Sends 1,400-byte datagrams with DF (and path-MTU discovery on) from `host` to `to` until the
/// kernel refuses one: `Some(EMSGSIZE)` once an ICMP "fragmentation needed" taught it the path
/// MTU; `None` if that never happened within 3 s.
fn learns_path_mtu(host: &Host, to: SocketAddr) -> Option<Option<i32>> {
    host.spawn_sync(move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        // Don't fragment, and learn the path MTU from ICMP (Linux's IP_PMTUDISC_DO).
        let value: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: a valid socket, option and int-sized value.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into()).unwrap();
        let big = vec![0u8; 1400];
        let deadline = Instant::now() + Duration::from_secs(3);
        // The first sends go out and are refused by the router; once the ICMP is in, the
        // kernel refuses such sends itself.
        while Instant::now() < deadline {
            if let Err(error) = socket.send_to(&big, &to.into()) {
                return Some(error.raw_os_error());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .join()
    .unwrap()
}

/// Path-MTU discovery across a small-MTU link: a router in front of a 1,280-byte link answers a
/// too-big packet with "fragmentation needed" from its own address, and the sender's kernel
/// takes it (from 0.0.0.0 it was dropped as martian and the path black-holed).
#[test]
fn a_small_mtu_link_teaches_the_sender_its_path_mtu() {
    let _serial = serial();
    let mut sim = Simulation::new(5);
    let router = ok(sim.add_router("r", "10.9.0.1".parse().unwrap(), &[("10.1.0.0".parse().unwrap(), 16)], None));
    let a = ok(sim.add_host_behind("a", "10.1.0.2".parse().unwrap(), 16, &router));
    let b = ok(sim.add_host("b", "198.51.100.7".parse().unwrap(), 24));
    sim.link(&a, &router, ms(1));
    sim.link(&router, &b, LinkConfig { mtu: 1280, latency: Duration::from_millis(1), ..Default::default() });
    sim.start().unwrap();
    assert_eq!(learns_path_mtu(&a, SocketAddr::from((b.ip(), 7000))), Some(Some(libc::EMSGSIZE)));
}

/// The same through a NAT: the ICMP comes back to the NAT's public address, quoting the
/// translated packet, and reaches the inside host only if the NAT translates it back (RFC 5508)
/// as the kernel's NAT does; the model and the kernel must agree.
#[test]
fn path_mtu_discovery_works_through_the_model_nat_and_the_kernel_nat() {
    let _serial = serial();
    for kernel in [false, true] {
        let mut sim = Simulation::new(6);
        let public: Ipv4Addr = "203.0.113.1".parse().unwrap();
        let nat = if kernel {
            kernel_nat(&mut sim, public)
        } else {
            let config = warren_netsim::nat::NatPreset::Linux.configs(&[public]).remove(0);
            ok(sim.add_nat("nat", config, None))
        };
        let host = ok(sim.add_host_behind("host", "192.168.1.2".parse().unwrap(), 24, &nat));
        let router =
            ok(sim.add_router("r", "198.51.100.254".parse().unwrap(), &[("198.51.100.0".parse().unwrap(), 24)], None));
        let server = ok(sim.add_host_behind("server", "198.51.100.7".parse().unwrap(), 24, &router));
        sim.link(&host, &nat, ms(1));
        sim.link(&nat, &router, ms(1));
        sim.link(&router, &server, LinkConfig { mtu: 1280, latency: Duration::from_millis(1), ..Default::default() });
        sim.start().unwrap();
        let learned = learns_path_mtu(&host, SocketAddr::from((server.ip(), 7000)));
        assert_eq!(learned, Some(Some(libc::EMSGSIZE)), "kernel NAT: {kernel}");
    }
}

/// A 3,000-byte datagram (fragmented by the sender's kernel on a 1,500-byte link) to an echo
/// server beyond the NAT and back: every fragment translated both ways, reassembled intact at
/// each end, through the model NATs (RFC 4787 and conntrack) and the kernel NAT alike. Before
/// the model translated fragments, its NAT dropped all but the first and the datagram never
/// arrived.
#[test]
fn fragmented_datagrams_cross_the_model_nats_and_the_kernel_nat() {
    let _serial = serial();
    for kind in ["port-restricted", "linux", "kernel"] {
        let mut sim = Simulation::new(7);
        let public: Ipv4Addr = "203.0.113.1".parse().unwrap();
        let nat = match kind {
            "kernel" => kernel_nat(&mut sim, public),
            "linux" => ok(sim.add_nat("nat", warren_netsim::nat::NatPreset::Linux.configs(&[public]).remove(0), None)),
            _ => {
                ok(sim.add_nat("nat", warren_netsim::nat::NatPreset::PortRestricted.configs(&[public]).remove(0), None))
            }
        };
        let host = ok(sim.add_host_behind("host", "192.168.1.2".parse().unwrap(), 24, &nat));
        let server = ok(sim.add_host("server", "198.51.100.7".parse().unwrap(), 24));
        sim.link(&host, &nat, ms(1));
        sim.link(&nat, &server, ms(1));
        sim.start().unwrap();
        let ip = server.ip();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let echo = server.spawn_sync(move || {
            let socket = UdpSocket::bind((ip, 7000)).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 4096];
            let (n, from) = socket.recv_from(&mut buf).ok()?;
            socket.send_to(&buf[..n], from).unwrap();
            Some((n, from))
        });
        ready.recv().unwrap();
        let sent: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expected = sent.clone();
        let back = host
            .spawn_sync(move || {
                let socket = UdpSocket::bind(("192.168.1.2", 0)).unwrap();
                socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                socket.send_to(&sent, (ip, 7000)).unwrap();
                let mut buf = [0u8; 4096];
                socket.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
            })
            .join()
            .unwrap();
        let seen = echo.join().unwrap();
        let (n, from) = seen.unwrap_or_else(|| panic!("{kind}: the server got nothing"));
        assert_eq!((n, from.ip()), (3000, std::net::IpAddr::V4(public)), "{kind}: translated and whole");
        assert_eq!(back.as_deref(), Some(&expected[..]), "{kind}: the echo came back whole");
    }
}
