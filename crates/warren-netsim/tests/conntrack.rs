//! Two Linux routers and the order of the first punches: the kernel's own NAT (nftables
//! `masquerade` in router namespaces) and the simulator's conntrack model (`NatPreset::Linux`)
//! must agree. When one side's punch reaches the other router before that router's host has
//! sent its own, the router keeps an entry for it, the host's punch leaves from another port,
//! and no packet ever gets through; when each side sends before the other's punch arrives, both
//! get through. Plain UDP sockets, so this is about the routers, not warren. Needs root and
//! `nft`.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use warren_netsim::link::LinkConfig;
use warren_netsim::pair::{self, NatKind, PUBLIC_IPS, PairLinks};

const PORT: u16 = 5000;

/// How long a host listens for what should (or should not) arrive.
const LISTEN: Duration = Duration::from_millis(300);

fn links(direct_ms: u64) -> PairLinks {
    let latency = |ms| LinkConfig { latency: Duration::from_millis(ms), ..Default::default() };
    PairLinks { relay: latency(1), direct: latency(direct_ms) }
}

/// The last link a's punch takes to b's router in the pair topology: from b's provider.
fn into_b(kind: NatKind) -> (String, String) {
    let b = if kind == NatKind::KernelMasquerade { "knat-b" } else { "nat-b" };
    ("isp-b".into(), b.into())
}

struct Outcome {
    a_heard: usize,
    b_heard: usize,
}

/// Each host binds `PORT`; `a` sends first; `b` sends once `a`'s punch was delivered to b's
/// router (`b_waits`) or at once; then each sends three more; what did each hear?
fn punch(kind: NatKind, direct_ms: u64, b_waits: bool) -> Outcome {
    let mut built = pair::build(kind, kind, links(direct_ms), 7).unwrap();
    built.sim.start().unwrap();
    let bind = |host: &warren_netsim::Host| {
        host.spawn_sync(|| {
            let socket = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            socket
        })
        .join()
        .unwrap()
    };
    let (a, b) = (bind(&built.a), bind(&built.b));
    let (to_a, to_b) = (SocketAddr::from((PUBLIC_IPS[0], PORT)), SocketAddr::from((PUBLIC_IPS[1], PORT)));
    a.send_to(b"a1", to_b).unwrap();
    if b_waits {
        // Until the forwarder has handed a's punch to b's router (which handles it at once).
        let (ra, rb) = into_b(kind);
        let deadline = Instant::now() + Duration::from_secs(5);
        while built.sim.link_stats().get(&(ra.clone(), rb.clone())).map_or(0, |s| s.delivered) == 0 {
            assert!(Instant::now() < deadline, "a's punch never crossed");
        }
    }
    b.send_to(b"b1", to_a).unwrap();
    for _ in 0..3 {
        a.send_to(b"a2", to_b).unwrap();
        b.send_to(b"b2", to_a).unwrap();
    }
    let heard = |socket: &UdpSocket| {
        let mut buf = [0u8; 16];
        let started = Instant::now();
        let mut count = 0;
        while started.elapsed() < LISTEN {
            if socket.recv_from(&mut buf).is_ok() {
                count += 1;
            }
        }
        count
    };
    Outcome { a_heard: heard(&a), b_heard: heard(&b) }
}

/// The routers are 1 ms apart and b sends only after a's punch reached b's router: b's router
/// keeps an entry for it, b's punches leave from another port, and nothing ever gets through,
/// either way, on the kernel and in the model alike.
#[test]
fn a_punch_that_arrives_first_breaks_both_directions_on_the_kernel_and_in_the_model() {
    for kind in [NatKind::KernelMasquerade, NatKind::Linux] {
        let outcome = punch(kind, 1, true);
        assert_eq!((outcome.a_heard, outcome.b_heard), (0, 0), "{kind:?}");
        // (b's router moved b's flow to another port: the nat.rs and conntrack.rs unit tests
        // show the port; here only the outcome is visible.)
    }
}

/// 50 ms between the routers and b sending at once: each punch leaves its router before the
/// other's arrives, and everything gets through, on the kernel and in the model alike.
#[test]
fn punches_that_each_leave_before_the_other_arrives_get_through_on_the_kernel_and_in_the_model() {
    for kind in [NatKind::KernelMasquerade, NatKind::Linux] {
        let outcome = punch(kind, 50, false);
        assert_eq!((outcome.a_heard, outcome.b_heard), (4, 4), "{kind:?}");
    }
}
