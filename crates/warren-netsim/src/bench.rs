//! Forwarding throughput: a TCP stream and a flood of 1400-byte UDP datagrams between two
//! hosts joined by one unimpaired simulated link, against the same between two namespaces
//! joined by a veth pair (the kernel's own path), in the same run.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::link::LinkConfig;
use crate::sim::{Simulation, command_in, in_new_namespace, io_err};
use crate::{SimError, sys};

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;
/// UDP payload size: a 1428-byte IP packet, under a 1500-byte MTU.
pub const UDP_PAYLOAD: usize = 1400;

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Payload bits per second received.
    pub bits_per_sec: f64,
    /// Datagrams (UDP) or 1400-byte segments' worth (TCP) per second received.
    pub packets_per_sec: f64,
}

/// The four measurements of a run and their ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchReport {
    /// TCP through the simulated link.
    pub sim_tcp: Rate,
    /// TCP through the veth pair.
    pub veth_tcp: Rate,
    /// UDP through the simulated link.
    pub sim_udp: Rate,
    /// UDP through the veth pair.
    pub veth_udp: Rate,
}

impl BenchReport {
    /// Simulated TCP throughput as a fraction of veth's.
    pub fn tcp_ratio(&self) -> f64 {
        self.sim_tcp.bits_per_sec / self.veth_tcp.bits_per_sec
    }

    /// Simulated UDP throughput as a fraction of veth's.
    pub fn udp_ratio(&self) -> f64 {
        self.sim_udp.bits_per_sec / self.veth_udp.bits_per_sec
    }
}

/// Runs `f` on a new thread inside the namespace `ns`.
fn spawn_in<T: Send + 'static>(ns: &Arc<File>, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let ns = ns.clone();
    std::thread::spawn(move || {
        sys::enter_namespace(&ns).expect("entering a benchmark namespace");
        f()
    })
}

/// Streams TCP from `a` to `b` for `duration`; the rate the receiver saw.
fn tcp_rate(a: &Arc<File>, b: &Arc<File>, duration: Duration) -> Rate {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let receiver = spawn_in(b, move || {
        let listener = TcpListener::bind((B, TCP_PORT)).expect("binding the TCP receiver");
        ready_tx.send(()).expect("the sender waits");
        let (mut stream, _) = listener.accept().expect("the sender connects");
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut started = None;
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    started.get_or_insert_with(Instant::now);
                    total += n as u64;
                }
            }
        }
        (total, started.map_or(Duration::ZERO, |s| s.elapsed()))
    });
    ready.recv().expect("the receiver binds");
    spawn_in(a, move || {
        let mut stream = TcpStream::connect((B, TCP_PORT)).expect("connecting to the TCP receiver");
        let chunk = vec![0x5au8; 128 * 1024];
        let started = Instant::now();
        while started.elapsed() < duration {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
    })
    .join()
    .expect("the TCP sender does not panic");
    let (bytes, elapsed) = receiver.join().expect("the TCP receiver does not panic");
    rate(bytes, elapsed, bytes as f64 / UDP_PAYLOAD as f64)
}

/// Floods 1400-byte UDP datagrams from `a` to `b` for `duration`; the rate the receiver saw.
fn udp_rate(a: &Arc<File>, b: &Arc<File>, duration: Duration) -> Rate {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let receiver = spawn_in(b, move || {
        let socket = UdpSocket::bind((B, UDP_PORT)).expect("binding the UDP receiver");
        socket.set_read_timeout(Some(Duration::from_secs(1))).expect("a timeout");
        ready_tx.send(()).expect("the sender waits");
        let mut buf = vec![0u8; 2048];
        let (mut count, mut first, mut last) = (0u64, None, Instant::now());
        while let Ok(n) = socket.recv(&mut buf) {
            if n == UDP_PAYLOAD {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                count += 1;
            }
        }
        (count, first.map_or(Duration::ZERO, |f| last - f))
    });
    ready.recv().expect("the receiver binds");
    spawn_in(a, move || {
        let socket = UdpSocket::bind((A, 0)).expect("binding the UDP sender");
        let payload = [0xa5u8; UDP_PAYLOAD];
        let started = Instant::now();
        while started.elapsed() < duration {
            // A full queue (ENOBUFS) only means this datagram is lost, as on a real host.
            let _ = socket.send_to(&payload, (B, UDP_PORT));
        }
    })
    .join()
    .expect("the UDP sender does not panic");
    let (count, elapsed) = receiver.join().expect("the UDP receiver does not panic");
    rate(count * UDP_PAYLOAD as u64, elapsed, count as f64)
}

fn rate(bytes: u64, elapsed: Duration, packets: f64) -> Rate {
    let secs = elapsed.as_secs_f64().max(1e-9);
    Rate { bits_per_sec: bytes as f64 * 8.0 / secs, packets_per_sec: packets / secs }
}

/// Two empty namespaces joined by a veth pair with addresses A and B.
fn veth_pair() -> Result<(File, File), SimError> {
    let ((), a) = in_new_namespace(|| Ok(()))?;
    let ((), b) = in_new_namespace(|| Ok(()))?;
    let b_path = format!("/proc/{}/fd/{}", std::process::id(), std::os::fd::AsRawFd::as_raw_fd(&b));
    let steps: [(&File, Vec<String>); 6] = [
        (&a, "link add va type veth peer name vb".split(' ').map(String::from).collect()),
        (&a, vec!["link".into(), "set".into(), "vb".into(), "netns".into(), b_path]),
        (&a, format!("addr add {A}/24 dev va").split(' ').map(String::from).collect()),
        (&b, format!("addr add {B}/24 dev vb").split(' ').map(String::from).collect()),
        (&a, "link set va up".split(' ').map(String::from).collect()),
        (&b, "link set vb up".split(' ').map(String::from).collect()),
    ];
    for (ns, args) in steps {
        let output = command_in(ns, "ip").args(&args).output().map_err(io_err("running ip (iproute2)"))?;
        if !output.status.success() {
            return Err(SimError::Tool(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
    }
    Ok((a, b))
}

/// Runs the four measurements `rounds` times, each for `duration`, interleaved (veth, then
/// the simulator, for each kind) so a noisy neighbour hurts both alike; reports the medians.
pub fn run(duration: Duration, rounds: usize) -> Result<BenchReport, SimError> {
    let (veth_a, veth_b) = veth_pair()?;
    let (veth_a, veth_b) = (Arc::new(veth_a), Arc::new(veth_b));
    let mut sim = Simulation::new(1);
    let a = sim.add_host("a", A, 24)?;
    let b = sim.add_host("b", B, 24)?;
    sim.link(&a, &b, LinkConfig::default());
    sim.start()?;
    let clone = |host: &crate::Host| host.namespace().try_clone().map(Arc::new).map_err(io_err("cloning a namespace"));
    let (sim_a, sim_b) = (clone(&a)?, clone(&b)?);
    let mut runs: [Vec<Rate>; 4] = Default::default();
    for _ in 0..rounds.max(1) {
        runs[0].push(tcp_rate(&veth_a, &veth_b, duration));
        runs[1].push(tcp_rate(&sim_a, &sim_b, duration));
        runs[2].push(udp_rate(&veth_a, &veth_b, duration));
        runs[3].push(udp_rate(&sim_a, &sim_b, duration));
    }
    let [veth_tcp, sim_tcp, veth_udp, sim_udp] = runs.map(median);
    Ok(BenchReport { sim_tcp, veth_tcp, sim_udp, veth_udp })
}

/// The run with the median rate.
fn median(mut rates: Vec<Rate>) -> Rate {
    rates.sort_by(|x, y| x.bits_per_sec.total_cmp(&y.bits_per_sec));
    rates[rates.len() / 2]
}
