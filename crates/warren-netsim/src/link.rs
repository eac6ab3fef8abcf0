//! A one-way link as a sans-IO state machine: packets and the current time go in, packets come
//! out when their delivery time arrives. Latency, jitter (with or without reordering), random
//! and bursty (Gilbert-Elliott) loss, duplication, a bandwidth limit with a bounded drop-tail
//! queue, and an MTU (fragmenting, or answering DF packets with ICMP "fragmentation needed").
//!
//! Every random choice comes from the link's own generator, seeded by the simulation, so the
//! same seed gives the same drops whatever else the simulation does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::packet::Packet;

/// How a link loses packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Never.
    None,
    /// Each packet independently with this probability.
    Random(f64),
    /// Gilbert-Elliott: a two-state chain. In the good state packets are lost with `good_loss`,
    /// in the bad state with `bad_loss`; each packet moves good→bad with `to_bad` and bad→good
    /// with `to_good` (mean burst length 1/`to_good` packets).
    GilbertElliott {
        /// P(good → bad) per packet.
        to_bad: f64,
        /// P(bad → good) per packet.
        to_good: f64,
        /// Loss probability in the good state.
        good_loss: f64,
        /// Loss probability in the bad state.
        bad_loss: f64,
    },
}

/// What a link does to packets.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Each packet's delay varies uniformly in ±`jitter` around `latency` (never below zero).
    pub jitter: Duration,
    /// With jitter, may a packet overtake an earlier one? Real links rarely reorder, so off by
    /// default: delivery times are then pushed to keep order.
    pub reorder: bool,
    /// Loss model.
    pub loss: Loss,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Bits per second the link serialises; `None` for unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Bytes waiting for the wire beyond which new packets are dropped (drop-tail).
    pub queue_bytes: usize,
    /// Largest packet the link carries.
    pub mtu: usize,
    /// The address ICMP "fragmentation needed" comes from (the link's router).
    pub router: Ipv4Addr,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: false,
            loss: Loss::None,
            duplicate: 0.0,
            bandwidth_bps: None,
            queue_bytes: 256 * 1024,
            mtu: 1500,
            router: Ipv4Addr::UNSPECIFIED,
        }
    }
}

impl LinkConfig {
    /// Does this link treat packets one by one (loss, duplication, jitter, a bandwidth limit)?
    /// Then a TCP super-segment must be cut into the packets the wire would carry before it
    /// enters; a link with only latency carries it whole.
    pub fn shapes_packets(&self) -> bool {
        self.loss != Loss::None || self.duplicate > 0.0 || !self.jitter.is_zero() || self.bandwidth_bps.is_some()
    }
}

/// What happened to the packets a link was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets offered.
    pub offered: u64,
    /// Packets delivered (duplicates and fragments counted).
    pub delivered: u64,
    /// Dropped by the loss model.
    pub lost: u64,
    /// Dropped because the queue was full.
    pub queue_drops: u64,
    /// Dropped for exceeding the MTU with DF set.
    pub mtu_drops: u64,
    /// Extra copies made.
    pub duplicated: u64,
}

/// A packet in flight, ordered by delivery time then arrival order.
#[derive(Debug)]
struct InFlight {
    at: Instant,
    seq: u64,
    packet: Packet,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A one-way link.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    rng: ChaCha8Rng,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    wire_free_at: Option<Instant>,
    /// Departure times and sizes of packets still waiting for the wire.
    backlog: std::collections::VecDeque<(Instant, usize)>,
    backlog_bytes: usize,
    last_delivery: Option<Instant>,
    bad_state: bool,
    stats: LinkStats,
}

impl Link {
    /// A link with `config`, its randomness seeded by `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            seq: 0,
            wire_free_at: None,
            backlog: Default::default(),
            backlog_bytes: 0,
            last_delivery: None,
            bad_state: false,
            stats: LinkStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// What happened so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    fn lost(&mut self) -> bool {
        match self.config.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.random_bool(p.clamp(0.0, 1.0)),
            Loss::GilbertElliott { to_bad, to_good, good_loss, bad_loss } => {
                let flip = if self.bad_state { to_good } else { to_bad };
                if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                    self.bad_state = !self.bad_state;
                }
                let p = if self.bad_state { bad_loss } else { good_loss };
                self.rng.random_bool(p.clamp(0.0, 1.0))
            }
        }
    }

    fn delay(&mut self) -> Duration {
        if self.config.jitter.is_zero() {
            return self.config.latency;
        }
        let jitter = self.config.jitter.as_secs_f64();
        let offset = self.rng.random_range(-jitter..=jitter);
        Duration::from_secs_f64((self.config.latency.as_secs_f64() + offset).max(0.0))
    }

    /// Offers `packet` to the link at `now`. Returns packets for the *sender's* side: an ICMP
    /// "fragmentation needed" if the packet was too big and had DF set.
    pub fn send(&mut self, packet: Packet, now: Instant) -> Option<Packet> {
        self.stats.offered += 1;
        // A TCP super-segment (see `Packet::wire_len`) counts by the segments it stands for.
        let pieces = if packet.wire_len() <= self.config.mtu {
            vec![packet]
        } else {
            match packet.fragment(self.config.mtu) {
                Some(pieces) => pieces,
                None => {
                    self.stats.mtu_drops += 1;
                    let mtu = u16::try_from(self.config.mtu).unwrap_or(u16::MAX);
                    return Some(packet.fragmentation_needed(self.config.router, mtu));
                }
            }
        };
        if self.lost() {
            self.stats.lost += 1;
            return None;
        }
        if self.config.duplicate > 0.0 && self.rng.random_bool(self.config.duplicate.clamp(0.0, 1.0)) {
            self.stats.duplicated += 1;
            for piece in &pieces {
                self.enqueue(piece.clone(), now);
            }
        }
        for piece in pieces {
            self.enqueue(piece, now);
        }
        None
    }

    fn enqueue(&mut self, packet: Packet, now: Instant) {
        let departs = match self.config.bandwidth_bps {
            None => now,
            Some(bps) => {
                while self.backlog.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, size) = self.backlog.pop_front().expect("checked non-empty");
                    self.backlog_bytes -= size;
                }
                if self.backlog_bytes + packet.len() > self.config.queue_bytes {
                    self.stats.queue_drops += 1;
                    return;
                }
                let start = self.wire_free_at.filter(|t| *t > now).unwrap_or(now);
                let serialise = Duration::from_secs_f64(packet.len() as f64 * 8.0 / bps.max(1) as f64);
                let done = start + serialise;
                self.wire_free_at = Some(done);
                self.backlog.push_back((done, packet.len()));
                self.backlog_bytes += packet.len();
                done
            }
        };
        let mut at = departs + self.delay();
        if !self.config.reorder {
            if let Some(last) = self.last_delivery.filter(|last| *last > at) {
                at = last;
            }
        }
        self.last_delivery = Some(self.last_delivery.map_or(at, |last| last.max(at)));
        self.seq += 1;
        self.in_flight.push(Reverse(InFlight { at, seq: self.seq, packet }));
    }

    /// The next packet due at or before `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Packet> {
        if self.in_flight.peek()?.0.at > now {
            return None;
        }
        self.stats.delivered += 1;
        Some(self.in_flight.pop().expect("peeked").0.packet)
    }

    /// When the next packet is due, for the driver's timer.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|f| f.0.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(i: u32) -> Packet {
        Packet::udp("10.0.0.2:1000".parse().unwrap(), "10.0.1.2:2000".parse().unwrap(), &i.to_be_bytes())
    }

    fn id(p: &Packet) -> u32 {
        u32::from_be_bytes(p.payload()[8..12].try_into().unwrap())
    }

    /// Sends `count` packets `gap` apart and collects (id, delivery time offset).
    fn run(link: &mut Link, count: u32, gap: Duration) -> Vec<(u32, Duration)> {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut now = start;
        for i in 0..count {
            link.send(packet(i), now);
            now += gap;
            while let Some(p) = link.poll(now) {
                out.push((id(&p), now - start));
            }
        }
        while let Some(at) = link.next_delivery() {
            now = now.max(at);
            while let Some(p) = link.poll(now) {
                out.push((id(&p), now - start));
            }
        }
        out
    }

    #[test]
    fn latency_is_exact_without_jitter() {
        let mut link = Link::new(LinkConfig { latency: Duration::from_millis(25), ..Default::default() }, 1);
        let start = Instant::now();
        link.send(packet(0), start);
        assert_eq!(link.next_delivery(), Some(start + Duration::from_millis(25)));
        assert!(link.poll(start + Duration::from_millis(24)).is_none());
        assert_eq!(id(&link.poll(start + Duration::from_millis(25)).unwrap()), 0);
    }

    #[test]
    fn random_loss_matches_the_configured_rate() {
        let mut link = Link::new(LinkConfig { loss: Loss::Random(0.02), ..Default::default() }, 7);
        let delivered = run(&mut link, 10_000, Duration::from_micros(100)).len();
        let loss = 1.0 - delivered as f64 / 10_000.0;
        assert!((0.015..=0.025).contains(&loss), "loss {loss}");
        assert_eq!(link.stats().lost as usize, 10_000 - delivered);
    }

    #[test]
    fn the_same_seed_drops_the_same_packets() {
        let config = LinkConfig { loss: Loss::Random(0.1), jitter: Duration::from_millis(5), ..Default::default() };
        let a = run(&mut Link::new(config.clone(), 42), 2000, Duration::from_millis(1));
        let b = run(&mut Link::new(config.clone(), 42), 2000, Duration::from_millis(1));
        let c = run(&mut Link::new(config, 43), 2000, Duration::from_millis(1));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn gilbert_elliott_losses_come_in_bursts() {
        let loss = Loss::GilbertElliott { to_bad: 0.01, to_good: 0.25, good_loss: 0.0, bad_loss: 1.0 };
        let mut link = Link::new(LinkConfig { loss, ..Default::default() }, 3);
        let delivered: std::collections::HashSet<u32> =
            run(&mut link, 20_000, Duration::from_micros(10)).into_iter().map(|(i, _)| i).collect();
        let mut bursts = Vec::new();
        let mut current = 0;
        for i in 0..20_000 {
            if delivered.contains(&i) {
                if current > 0 {
                    bursts.push(current);
                }
                current = 0;
            } else {
                current += 1;
            }
        }
        let mean_burst = bursts.iter().sum::<u32>() as f64 / bursts.len() as f64;
        // Mean burst length 1/to_good = 4 packets; stationary loss 0.01/(0.01+0.25) ≈ 3.8 %.
        assert!((3.0..=5.0).contains(&mean_burst), "mean burst {mean_burst}");
        let rate = 1.0 - delivered.len() as f64 / 20_000.0;
        assert!((0.025..=0.055).contains(&rate), "loss {rate}");
    }

    #[test]
    fn jitter_spreads_delays_without_reordering_unless_allowed() {
        let config =
            LinkConfig { latency: Duration::from_millis(50), jitter: Duration::from_millis(10), ..Default::default() };
        let in_order = run(&mut Link::new(config.clone(), 9), 2000, Duration::from_millis(1));
        assert!(in_order.windows(2).all(|w| w[0].0 < w[1].0), "order kept");
        let reordering = run(&mut Link::new(LinkConfig { reorder: true, ..config }, 9), 2000, Duration::from_millis(1));
        assert_eq!(reordering.len(), 2000);
        assert!(reordering.windows(2).any(|w| w[0].0 > w[1].0), "some packets overtake");
        // With reordering allowed each delay is latency ± jitter, spread across the range.
        let delays: Vec<f64> = reordering.iter().map(|(i, at)| at.as_secs_f64() * 1e3 - f64::from(*i)).collect();
        let min = delays.iter().cloned().fold(f64::MAX, f64::min);
        let max = delays.iter().cloned().fold(f64::MIN, f64::max);
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!((39.9..41.5).contains(&min), "min {min}");
        assert!(max <= 60.1 && max > 58.5, "max {max}");
        assert!((49.0..=51.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn bandwidth_serialises_and_the_queue_drops_the_tail() {
        // 10 Mbit/s: a 1028-byte packet takes 822.4 µs on the wire.
        let config = LinkConfig { bandwidth_bps: Some(10_000_000), queue_bytes: 10 * 1028, ..Default::default() };
        let mut link = Link::new(config, 1);
        let start = Instant::now();
        let big = |i: u32| {
            let mut payload = vec![0u8; 1000];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            Packet::udp("10.0.0.2:1".parse().unwrap(), "10.0.1.2:2".parse().unwrap(), &payload)
        };
        for i in 0..20 {
            link.send(big(i), start);
        }
        assert_eq!(link.stats().queue_drops, 10, "only 10 packets fit the queue");
        let mut times = Vec::new();
        while let Some(at) = link.next_delivery() {
            link.poll(at).unwrap();
            times.push(at - start);
        }
        assert_eq!(times.len(), 10);
        for (i, t) in times.iter().enumerate() {
            let expected = 1028.0 * 8.0 / 10e6 * (i + 1) as f64;
            assert!((t.as_secs_f64() - expected).abs() < 1e-6, "packet {i} at {t:?}");
        }
        // Offered at a steady 10 Mbit/s, the queue never fills and throughput is the rate.
        let mut link = Link::new(LinkConfig { bandwidth_bps: Some(10_000_000), ..Default::default() }, 1);
        let gap = Duration::from_secs_f64(1028.0 * 8.0 / 10e6);
        let delivered = run(&mut link, 1000, gap);
        assert_eq!(delivered.len(), 1000);
        let last = delivered.last().unwrap().1.as_secs_f64();
        let mbps = 1000.0 * 1028.0 * 8.0 / last / 1e6;
        assert_eq!(link.stats().queue_drops, 0);
        assert!((9.9..=10.1).contains(&mbps), "{mbps} Mbit/s");
    }

    #[test]
    fn duplication_and_mtu() {
        let mut link = Link::new(LinkConfig { duplicate: 0.1, ..Default::default() }, 5);
        let delivered = run(&mut link, 10_000, Duration::from_micros(10)).len();
        let extra = delivered as f64 / 10_000.0 - 1.0;
        assert!((0.09..=0.11).contains(&extra), "duplicates {extra}");

        let mut link =
            Link::new(LinkConfig { mtu: 1280, router: "10.0.0.1".parse().unwrap(), ..Default::default() }, 5);
        let big = Packet::udp("10.0.0.2:1".parse().unwrap(), "10.0.1.2:2".parse().unwrap(), &[0; 1400]);
        let icmp = link.send(big, Instant::now()).expect("DF packet over the MTU is answered");
        assert_eq!(icmp.icmp_type(), Some(3));
        assert_eq!(icmp.src(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(link.stats().mtu_drops, 1);
        assert!(link.poll(Instant::now()).is_none());
    }
}
