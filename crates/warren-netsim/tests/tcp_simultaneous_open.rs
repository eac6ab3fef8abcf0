//! TCP simultaneous open between two hosts behind NATs, the model checked against the kernel:
//! each host connects from its listening port to the other's public address at nearly the
//! same time, and one side's SYN reaches the other's NAT before that NAT has seen its own
//! host's SYN. A NAT that drops that early SYN (RFC 5382 REQ-4; a router with a firewall) lets
//! the retransmitted SYN through a second later and the connection opens; a NAT that answers it
//! with a RST (a Linux router's own stack) kills it. A SYN nobody answers from inside gets
//! RFC 5382's ICMP port unreachable after 6 s, which the sender's kernel takes as a refusal.
//! Needs root.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use warren_netsim::link::LinkConfig;
use warren_netsim::nat::{NatPreset, UnsolicitedTcp};
use warren_netsim::{Host, KernelNatConfig, KernelPorts, Simulation};

const PUBLIC: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(203, 0, 114, 10)];
const PORT: u16 = 40_000;

/// These tests time SYNs: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Debug, Clone, Copy)]
enum Side {
    Model(UnsolicitedTcp),
    Kernel(UnsolicitedTcp),
}

/// Builds two NATed hosts (port-preserving NATs) joined through an ISP router, 10 ms each way.
fn topology(kind: Side, seed: u64) -> (Simulation, Host, Host) {
    let mut sim = Simulation::new(seed);
    let isp = sim.add_router("isp", Ipv4Addr::new(203, 0, 114, 1), &[(PUBLIC[1], 24)], None).unwrap();
    let mut hosts = Vec::new();
    let mut roots = Vec::new();
    for index in 0..2u8 {
        let provider = (index == 1).then_some(&isp as &dyn warren_netsim::AsNode);
        let name = |what: &str| format!("{what}-{}", if index == 0 { 'a' } else { 'b' });
        let private = Ipv4Addr::new(192, 168, 1 + index, 2);
        let nat = match kind {
            Side::Model(unsolicited_tcp) => {
                let config = NatPreset::PortRestricted.configs(&[PUBLIC[usize::from(index)]]).remove(0);
                sim.add_nat(&name("nat"), warren_netsim::nat::NatConfig { unsolicited_tcp, ..config }, provider)
                    .unwrap()
            }
            Side::Kernel(unsolicited_tcp) => {
                let config = KernelNatConfig {
                    public_ip: PUBLIC[usize::from(index)],
                    lan_ip: Ipv4Addr::new(192, 168, 1 + index, 1),
                    lan_prefix: 24,
                    ports: KernelPorts::Masquerade,
                    udp_timeout: None,
                    unsolicited_tcp,
                };
                sim.add_kernel_nat(&name("nat"), config, provider).unwrap_or_else(|e| panic!("{e}"))
            }
        };
        let host = sim.add_host_behind(&name("host"), private, 24, &nat).unwrap();
        sim.link(&host, &nat, LinkConfig { latency: Duration::from_millis(1), ..Default::default() });
        hosts.push(host);
        roots.push(nat);
    }
    let wan = LinkConfig { latency: Duration::from_millis(10), ..Default::default() };
    sim.link(&roots[0], &isp, wan.clone());
    sim.link(&isp, &roots[1], LinkConfig::default());
    sim.start().unwrap();
    let b = hosts.pop().unwrap();
    let a = hosts.pop().unwrap();
    (sim, a, b)
}

/// Connects from port [`PORT`] to `peer` after `delay`; on success, sends its name and reads the
/// peer's.
fn open(
    host: &Host,
    peer: SocketAddrV4,
    delay: Duration,
    me: &'static str,
) -> std::thread::JoinHandle<Result<String, ErrorKind>> {
    host.spawn_sync(move || {
        std::thread::sleep(delay);
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], PORT)).into()).unwrap();
        socket.connect_timeout(&SocketAddr::V4(peer).into(), Duration::from_secs(5)).map_err(|e| e.kind())?;
        let mut stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(me.as_bytes()).map_err(|e| e.kind())?;
        let mut theirs = [0u8; 1];
        stream.read_exact(&mut theirs).map_err(|e| e.kind())?;
        Ok(String::from_utf8_lossy(&theirs).into_owned())
    })
}

/// Runs one simultaneous open, host b 300 ms ahead of host a (so b's first SYN meets nat-a
/// before a's own SYN has left): what each side got.
fn simultaneous_open(kind: Side, seed: u64) -> (Result<String, ErrorKind>, Result<String, ErrorKind>) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_sim, a, b) = topology(kind, seed);
    let to_b = SocketAddrV4::new(PUBLIC[1], PORT);
    let to_a = SocketAddrV4::new(PUBLIC[0], PORT);
    let early = open(&b, to_a, Duration::ZERO, "b");
    let late = open(&a, to_b, Duration::from_millis(300), "a");
    (late.join().unwrap(), early.join().unwrap())
}

#[test]
fn the_model_drops_an_early_syn_by_default_and_the_simultaneous_open_succeeds() {
    for (seed, variant) in [(1, UnsolicitedTcp::DropThenUnreachable), (4, UnsolicitedTcp::Drop)] {
        let (a, b) = simultaneous_open(Side::Model(variant), seed);
        assert_eq!((a, b), (Ok("b".into()), Ok("a".into())), "{variant:?}");
    }
}

#[test]
fn a_syn_the_inside_never_answers_is_refused_by_icmp_after_6_s() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_sim, _a, b) = topology(Side::Model(UnsolicitedTcp::DropThenUnreachable), 5);
    let to_a = SocketAddr::from((PUBLIC[0], PORT));
    let (result, waited) = b
        .spawn_sync(move || {
            let start = std::time::Instant::now();
            let result = std::net::TcpStream::connect_timeout(&to_a, Duration::from_secs(20)).map(drop);
            (result.map_err(|e| e.kind()), start.elapsed())
        })
        .join()
        .unwrap();
    // b's own kernel turns the ICMP into a refusal (a silent NAT would have it time out).
    assert_eq!(result, Err(ErrorKind::ConnectionRefused), "after {waited:?}");
    assert!(waited >= Duration::from_secs(6), "refused after {waited:?}: RFC 5382 asks for 6 s of silence first");
}

#[test]
fn a_kernel_nat_cannot_be_asked_for_the_late_icmp() {
    let mut sim = Simulation::new(6);
    let config = KernelNatConfig {
        public_ip: PUBLIC[0],
        lan_ip: Ipv4Addr::new(192, 168, 1, 1),
        lan_prefix: 24,
        ports: KernelPorts::Masquerade,
        udp_timeout: None,
        unsolicited_tcp: UnsolicitedTcp::DropThenUnreachable,
    };
    let Err(error) = sim.add_kernel_nat("nat", config, None) else { panic!("a kernel NAT has no late ICMP") };
    assert!(error.to_string().contains("6 s late"), "{error}");
}

#[test]
fn a_kernel_nat_with_a_firewall_lets_the_simultaneous_open_through_as_the_model_does() {
    let (a, b) = simultaneous_open(Side::Kernel(UnsolicitedTcp::Drop), 2);
    assert_eq!((a, b), (Ok("b".into()), Ok("a".into())));
}

#[test]
fn a_reset_kills_the_early_side_in_the_model_and_in_the_kernel() {
    for kind in [Side::Model(UnsolicitedTcp::Reset), Side::Kernel(UnsolicitedTcp::Reset)] {
        let (a, b) = simultaneous_open(kind, 3);
        // The early side got the RST: refused.
        assert_eq!(b, Err(ErrorKind::ConnectionRefused), "{kind:?}: early side");
        // The late side's SYN finds no socket at b any more: refused too (b's own stack answers).
        assert!(a.is_err(), "{kind:?}: the late side connected: {a:?}");
    }
}
