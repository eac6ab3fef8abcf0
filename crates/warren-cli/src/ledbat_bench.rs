//! `warren netsim ledbat-bench`: LEDBAT measured through one simulated bottleneck (RFC 6817's
//! claims, issue 15 point 4). Two hosts, one link of `bandwidth` with a drop-tail queue of
//! `queue` and `latency` each way; the sender runs warren's uTP and the kernel's TCP (Cubic),
//! a UDP echo measures the round trip all along, and the receiver counts each flow's bytes in
//! 100 ms buckets.
//!
//! Run 1: idle (the RTT without load), then uTP alone; a TCP flow joins, then leaves (aborted
//! with a RST, so that nothing it buffered keeps flowing). Run 2, a fresh simulation: one uTP
//! flow, a second one from another socket a few seconds later (LEDBAT's latecomer), and Jain's
//! fairness index over their rates once both have settled.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::transport::utp::UtpSocket;
use warren_netsim::Simulation;
use warren_netsim::link::LinkConfig;

const SENDER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const UTP_PORT: u16 = 7000;
const TCP_PORT: u16 = 7001;
const ECHO_PORT: u16 = 7002;
/// Width of a rate bucket.
const BUCKET: Duration = Duration::from_millis(100);
/// A ping every this often.
const PING_EVERY: Duration = Duration::from_millis(50);
/// Flow ids, the first byte of each flow.
const UTP_A: u8 = 0;
const TCP: u8 = 1;
const UTP_B: u8 = 2;
const FLOWS: usize = 3;

/// The bench's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Setup {
    /// The bottleneck's rate, bits per second.
    pub bandwidth_bps: u64,
    /// One-way latency of the link.
    pub latency_ms: u64,
    /// The drop-tail queue, in milliseconds at the bottleneck rate.
    pub queue_ms: u64,
    /// Length of each phase of run 1 (uTP alone, with TCP, alone again).
    pub phase_secs: u64,
    /// Length of run 2 (two uTP flows), and the second flow's head start.
    pub fair_secs: u64,
    /// The second uTP flow starts this long after the first.
    pub latecomer_secs: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            bandwidth_bps: 20_000_000,
            latency_ms: 20,
            queue_ms: 250,
            phase_secs: 20,
            fair_secs: 90,
            latecomer_secs: 5,
        }
    }
}

/// Everything measured, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The setup.
    pub setup: Setup,
    /// Median RTT with the link idle.
    pub idle_rtt_ms: f64,
    /// uTP alone: its goodput over the phase's settled part as a fraction of the link rate.
    pub utp_alone_utilisation: f64,
    /// Median RTT during that part, less the idle RTT: the queueing delay uTP adds.
    pub utp_alone_added_delay_ms: f64,
    /// The 95th percentile of the same.
    pub utp_alone_added_delay_p95_ms: f64,
    /// From TCP's start until its rate over one second first reaches 80 % of the link.
    pub tcp_to_80_percent_secs: Option<f64>,
    /// TCP's share of the link over the settled part of the phase with both.
    pub tcp_utilisation: f64,
    /// uTP's share of the link meanwhile.
    pub utp_with_tcp_utilisation: f64,
    /// From TCP's end until uTP's rate over one second first reaches 80 % of the link.
    pub utp_recovery_secs: Option<f64>,
    /// uTP's share of the link over the settled part of the phase after TCP.
    pub utp_after_tcp_utilisation: f64,
    /// Run 2: each uTP flow's share of the link once both have settled.
    pub two_utp_utilisation: [f64; 2],
    /// Jain's fairness index of those two rates (1 is a fair split).
    pub jain_index: f64,
}

impl Report {
    /// The goals of issue 15 point 4, each with whether it was met.
    pub fn goals(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("uTP alone fills >= 90 % of the link", self.utp_alone_utilisation >= 0.9),
            ("uTP alone adds <= ~100 ms of queueing delay (median <= 110 ms)", self.utp_alone_added_delay_ms <= 110.0),
            ("TCP reaches 80 % of the link within 5 s", self.tcp_to_80_percent_secs.is_some_and(|s| s <= 5.0)),
            ("uTP backs off while TCP runs (< 20 % of the link)", self.utp_with_tcp_utilisation < 0.2),
            ("uTP takes the link back after TCP (>= 80 %)", self.utp_after_tcp_utilisation >= 0.8),
            ("two uTP flows share fairly (Jain >= 0.9)", self.jain_index >= 0.9),
        ]
    }
}

/// Bytes per flow per bucket, counted by the receiver, and the pings' RTTs.
struct Meter {
    start: Instant,
    buckets: Mutex<Vec<[u64; FLOWS]>>,
    /// (seconds since start when sent, RTT in ms).
    rtts: Mutex<Vec<(f64, f64)>>,
}

impl Meter {
    fn new(start: Instant) -> Arc<Self> {
        Arc::new(Self { start, buckets: Mutex::default(), rtts: Mutex::default() })
    }

    fn add(&self, flow: u8, bytes: usize) {
        let index = (self.start.elapsed().as_nanos() / BUCKET.as_nanos()) as usize;
        let mut buckets = self.buckets.lock().expect("meter lock");
        if buckets.len() <= index {
            buckets.resize(index + 1, [0; FLOWS]);
        }
        buckets[index][usize::from(flow)] += bytes as u64;
    }

    /// `flow`'s mean rate in bits per second over `[from, to)` seconds.
    fn rate(&self, flow: u8, from: f64, to: f64) -> f64 {
        let buckets = self.buckets.lock().expect("meter lock");
        let (first, last) = ((from / BUCKET.as_secs_f64()) as usize, (to / BUCKET.as_secs_f64()) as usize);
        let bytes: u64 = (first..last).map(|i| buckets.get(i).map_or(0, |b| b[usize::from(flow)])).sum();
        bytes as f64 * 8.0 / (to - from)
    }

    /// The first time in `[from, to)` at which `flow`'s rate over the second ending then
    /// reaches `bps`, as seconds after `from`.
    fn time_to(&self, flow: u8, bps: f64, from: f64, to: f64) -> Option<f64> {
        let step = BUCKET.as_secs_f64();
        let mut end = from + 1.0;
        while end <= to {
            if self.rate(flow, end - 1.0, end) >= bps {
                return Some(end - from);
            }
            end += step;
        }
        None
    }

    /// RTTs (ms) of pings sent in `[from, to)`, sorted.
    fn rtts(&self, from: f64, to: f64) -> Vec<f64> {
        let rtts = self.rtts.lock().expect("rtt lock");
        let mut in_range: Vec<f64> = rtts.iter().filter(|(at, _)| (from..to).contains(at)).map(|(_, r)| *r).collect();
        in_range.sort_by(f64::total_cmp);
        in_range
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Jain's fairness index of `rates`.
pub fn jain(rates: &[f64]) -> f64 {
    let sum: f64 = rates.iter().sum();
    let squares: f64 = rates.iter().map(|r| r * r).sum();
    if squares == 0.0 { 0.0 } else { sum * sum / (rates.len() as f64 * squares) }
}

fn simulation(setup: &Setup, seed: u64) -> anyhow::Result<(Simulation, warren_netsim::Host, warren_netsim::Host)> {
    let mut sim = Simulation::new(seed);
    let sender = sim.add_host("sender", SENDER, 24)?;
    let receiver = sim.add_host("receiver", RECEIVER, 24)?;
    let link = LinkConfig {
        latency: Duration::from_millis(setup.latency_ms),
        bandwidth_bps: Some(setup.bandwidth_bps),
        queue_bytes: (setup.bandwidth_bps / 8 * setup.queue_ms / 1000) as usize,
        ..Default::default()
    };
    sim.link(&sender, &receiver, link);
    sim.start()?;
    Ok((sim, sender, receiver))
}

/// The receiver: counts what every uTP and TCP flow brings, echoes pings, until `stop`.
fn receive(receiver: &warren_netsim::Host, meter: Arc<Meter>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let ready = Arc::new(std::sync::Barrier::new(2));
    let up = ready.clone();
    let handle = receiver.spawn(move || async move {
        let utp = UtpSocket::bind((RECEIVER, UTP_PORT).into(), Default::default()).await.expect("uTP bind");
        utp.listen();
        let tcp = tokio::net::TcpListener::bind((RECEIVER, TCP_PORT)).await.expect("TCP bind");
        let echo = tokio::net::UdpSocket::bind((RECEIVER, ECHO_PORT)).await.expect("UDP bind");
        up.wait();
        let count = |meter: Arc<Meter>, mut stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
            let mut buf = vec![0u8; 1 << 16];
            let Ok(flow) = stream.read_u8().await else { return };
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                meter.add(flow.min(FLOWS as u8 - 1), n);
            }
        };
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                Ok(stream) = utp.accept() => { tokio::spawn(count(meter.clone(), Box::new(stream))); }
                Ok((stream, _)) = tcp.accept() => { tokio::spawn(count(meter.clone(), Box::new(stream))); }
                Ok((n, from)) = echo.recv_from(&mut buf) => { let _ = echo.send_to(&buf[..n], from).await; }
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    ready.wait();
    handle
}

/// Writes `flow`'s id, then as fast as `stream` takes it, until `stop`.
async fn send_until(mut stream: impl tokio::io::AsyncWrite + Unpin, flow: u8, stop: Arc<AtomicBool>) {
    let chunk = vec![0x5a; 16 * 1024];
    if stream.write_u8(flow).await.is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        if stream.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Pings the echo every [`PING_EVERY`] until `stop`, recording RTTs as the answers come.
async fn ping(meter: Arc<Meter>, stop: Arc<AtomicBool>) {
    let socket = Arc::new(tokio::net::UdpSocket::bind((SENDER, 0)).await.expect("UDP bind"));
    let (answers, m) = (socket.clone(), meter.clone());
    let receiving = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, _)) = answers.recv_from(&mut buf).await {
            let Ok(sent) = <[u8; 16]>::try_from(&buf[..n]) else { continue };
            let then = Duration::from_nanos(u128::from_be_bytes(sent) as u64);
            let rtt = m.start.elapsed().saturating_sub(then);
            m.rtts.lock().expect("rtt lock").push((then.as_secs_f64(), rtt.as_secs_f64() * 1e3));
        }
    });
    let echo = SocketAddr::from((RECEIVER, ECHO_PORT));
    let mut ticker = tokio::time::interval(PING_EVERY);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let _ = socket.send_to(&meter.start.elapsed().as_nanos().to_be_bytes(), echo).await;
    }
    receiving.abort();
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Runs both runs and measures.
pub fn run(setup: Setup) -> anyhow::Result<Report> {
    let phase = setup.phase_secs as f64;
    // The settled part of a phase: from 5 s in (slow start, TCP's ramp) to its end.
    let settle = 5.0_f64.min(phase / 2.0);
    let idle = 2.0;
    let link = setup.bandwidth_bps as f64;

    // Run 1: idle, uTP alone, with TCP, alone again.
    let (sim, sender, receiver) = simulation(&setup, 1)?;
    let meter = Meter::new(Instant::now());
    let stop_all = flag();
    let receiving = receive(&receiver, meter.clone(), stop_all.clone());
    let m = meter.clone();
    let stops = (stop_all.clone(), flag(), flag());
    let (stop_ping, stop_utp, stop_tcp) = (stops.0.clone(), stops.1.clone(), stops.2.clone());
    let sending = sender.spawn(move || async move {
        let pinging = tokio::spawn(ping(m.clone(), stop_ping.clone()));
        tokio::time::sleep(Duration::from_secs_f64(idle)).await;
        let socket = UtpSocket::bind((SENDER, 0).into(), Default::default()).await.expect("uTP bind");
        let stream = socket.connect((RECEIVER, UTP_PORT).into()).await.expect("uTP connect");
        let utp = tokio::spawn(send_until(stream, UTP_A, stop_utp.clone()));
        tokio::time::sleep(Duration::from_secs_f64(phase)).await;
        let tcp = tokio::net::TcpStream::connect((RECEIVER, TCP_PORT)).await.expect("TCP connect");
        // Leaving means leaving: a RST, not seconds of buffered bytes still draining.
        socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        let tcp_flow = tokio::spawn(send_until(tcp, TCP, stop_tcp.clone()));
        tokio::time::sleep(Duration::from_secs_f64(phase)).await;
        stop_tcp.store(true, Ordering::Relaxed);
        let _ = tcp_flow.await;
        tokio::time::sleep(Duration::from_secs_f64(phase)).await;
        stop_utp.store(true, Ordering::Relaxed);
        let _ = utp.await;
        socket.shutdown().await;
        stop_ping.store(true, Ordering::Relaxed);
        let _ = pinging.await;
    });
    sending.join().map_err(|_| anyhow::anyhow!("the sender panicked"))?;
    stop_all.store(true, Ordering::Relaxed);
    receiving.join().map_err(|_| anyhow::anyhow!("the receiver panicked"))?;
    drop(sim);

    let (utp_start, tcp_start) = (idle, idle + phase);
    let (tcp_end, end) = (tcp_start + phase, tcp_start + 2.0 * phase);
    let idle_rtts = meter.rtts(0.5, idle);
    anyhow::ensure!(!idle_rtts.is_empty(), "no ping came back while the link was idle");
    let idle_rtt = percentile(&idle_rtts, 0.5);
    let loaded = meter.rtts(utp_start + settle, tcp_start);
    let added = |p| percentile(&loaded, p) - idle_rtt;
    let share = |flow, from, to| meter.rate(flow, from, to) / link;

    // Run 2: two uTP flows, the second a latecomer.
    let (sim, sender, receiver) = simulation(&setup, 2)?;
    let fair = Meter::new(Instant::now());
    let stop_all = flag();
    let receiving = receive(&receiver, fair.clone(), stop_all.clone());
    let (late, length) = (setup.latecomer_secs as f64, setup.fair_secs as f64);
    let stop = flag();
    let sending = sender.spawn(move || async move {
        let flow = |id: u8, after: f64, stop: Arc<AtomicBool>| async move {
            tokio::time::sleep(Duration::from_secs_f64(after)).await;
            let socket = UtpSocket::bind((SENDER, 0).into(), Default::default()).await.expect("uTP bind");
            let stream = socket.connect((RECEIVER, UTP_PORT).into()).await.expect("uTP connect");
            send_until(stream, id, stop).await;
            socket.shutdown().await;
        };
        let first = tokio::spawn(flow(UTP_A, 0.0, stop.clone()));
        let second = tokio::spawn(flow(UTP_B, late, stop.clone()));
        tokio::time::sleep(Duration::from_secs_f64(length)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::join!(first, second);
    });
    sending.join().map_err(|_| anyhow::anyhow!("the sender panicked"))?;
    stop_all.store(true, Ordering::Relaxed);
    receiving.join().map_err(|_| anyhow::anyhow!("the receiver panicked"))?;
    drop(sim);
    // Settled: the second half of the time both run.
    let from = late + (length - late) / 2.0;
    let two = [fair.rate(UTP_A, from, length) / link, fair.rate(UTP_B, from, length) / link];

    Ok(Report {
        setup,
        idle_rtt_ms: idle_rtt,
        utp_alone_utilisation: share(UTP_A, utp_start + settle, tcp_start),
        utp_alone_added_delay_ms: added(0.5),
        utp_alone_added_delay_p95_ms: added(0.95),
        tcp_to_80_percent_secs: meter.time_to(TCP, 0.8 * link, tcp_start, tcp_end),
        tcp_utilisation: share(TCP, tcp_start + settle, tcp_end),
        utp_with_tcp_utilisation: share(UTP_A, tcp_start + settle, tcp_end),
        utp_recovery_secs: meter.time_to(UTP_A, 0.8 * link, tcp_end, end),
        utp_after_tcp_utilisation: share(UTP_A, tcp_end + settle, end),
        two_utp_utilisation: two,
        jain_index: jain(&two),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_is_one_for_equal_rates_and_one_over_n_for_one_flow() {
        assert!((jain(&[5.0, 5.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[10.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!((jain(&[3.0, 1.0]) - 0.8).abs() < 1e-12);
        assert_eq!(jain(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn the_meter_counts_rates_and_finds_when_a_rate_is_reached() {
        let meter = Meter::new(Instant::now() - Duration::from_secs(3));
        // 1 MB into the bucket at about 3 s: 8 Mbit/s over the second [2.5, 3.5).
        meter.add(TCP, 1_000_000);
        let rate = meter.rate(TCP, 2.5, 3.5);
        assert!((rate - 8e6).abs() < 1.0, "{rate}");
        assert_eq!(meter.rate(UTP_A, 2.5, 3.5), 0.0);
        let at = meter.time_to(TCP, 7e6, 2.0, 4.0).unwrap();
        assert!((1.0..=1.2).contains(&at), "{at}");
        assert_eq!(meter.time_to(TCP, 9e6, 2.0, 4.0), None);
    }
}
