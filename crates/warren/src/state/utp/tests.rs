use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::*;
use crate::wire::utp::Packet;

/// A deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1e6 < p
    }
}

/// A datagram in flight: (arrival, sequence, to side, bytes).
type InFlight = Reverse<(Instant, u64, usize, Vec<u8>)>;

/// Two connections over a simulated link: one-way `latency`, up to `jitter` more (which
/// reorders), `loss` per packet, each way.
struct Link {
    now: Instant,
    epoch: Instant,
    rng: Rng,
    latency: Duration,
    jitter: Duration,
    loss: f64,
    queue: BinaryHeap<InFlight>,
    sent: u64,
    dropped: u64,
    sides: [Option<Connection>; 2],
    /// Datagrams side 1 gets before it has a connection (the SYN).
    pending_syn: Vec<Vec<u8>>,
    /// Everything sent in this span is lost.
    blackout: Option<(Instant, Instant)>,
}

impl Link {
    fn new(seed: u64, latency_ms: u64, jitter_ms: u64, loss: f64) -> Self {
        let now = Instant::now();
        let dialler = Connection::connect(now, now, Config::default(), 1000, 1);
        Self {
            now,
            epoch: now,
            rng: Rng(seed),
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            queue: BinaryHeap::new(),
            sent: 0,
            dropped: 0,
            sides: [Some(dialler), None],
            pending_syn: Vec::new(),
            blackout: None,
        }
    }

    fn conn(&mut self, side: usize) -> &mut Connection {
        self.sides[side].as_mut().expect("connected")
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        for side in 0..2 {
            let Some(conn) = self.sides[side].as_mut() else { continue };
            while conn.poll_transmit(self.now, &mut out) {
                self.sent += 1;
                let dark = self.blackout.is_some_and(|(from, to)| (from..to).contains(&self.now));
                if self.rng.chance(self.loss) || dark {
                    self.dropped += 1;
                    continue;
                }
                let jitter = if self.jitter.is_zero() { 0 } else { self.rng.next() % self.jitter.as_micros() as u64 };
                let at = self.now + self.latency + Duration::from_micros(jitter);
                self.queue.push(Reverse((at, self.sent, 1 - side, out.clone())));
            }
        }
    }

    /// Runs until `done` or `limit` of simulated time passes; false on the limit.
    fn run(&mut self, limit: Duration, mut step: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.flush();
            if step(self) {
                return true;
            }
            self.flush();
            let timeouts = self.sides.iter().flatten().filter_map(Connection::poll_timeout).min();
            let arrival = self.queue.peek().map(|Reverse((at, ..))| *at);
            let Some(next) = [timeouts, arrival].into_iter().flatten().min() else { return false };
            if next > end {
                return false;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((at, ..))) = self.queue.peek() {
                if *at > self.now {
                    break;
                }
                let Reverse((_, _, to, bytes)) = self.queue.pop().unwrap();
                let packet = Packet::parse(&bytes).expect("our packets parse");
                match &mut self.sides[to] {
                    Some(conn) => conn.handle_packet(self.now, &packet),
                    None if packet.kind == Type::Syn => {
                        self.sides[to] =
                            Some(Connection::accept(self.now, self.epoch, Config::default(), &packet, 5000));
                    }
                    None => self.pending_syn.push(bytes),
                }
            }
            for conn in self.sides.iter_mut().flatten() {
                if conn.poll_timeout().is_some_and(|at| at <= self.now) {
                    conn.handle_timeout(self.now);
                }
            }
        }
    }
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Sends `a` from the dialler and `b` from the acceptor at once, then closes both; returns
/// what each side read.
fn exchange(link: &mut Link, a: &[u8], b: &[u8], limit: Duration) -> (Vec<u8>, Vec<u8>) {
    let (mut sent, mut got) = ([0usize; 2], [Vec::new(), Vec::new()]);
    let data = [a, b];
    let mut buf = vec![0u8; 64 * 1024];
    let finished = link.run(limit, |link| {
        for side in 0..2 {
            let Some(conn) = link.sides[side].as_mut() else { continue };
            if !matches!(conn.state(), State::Connected | State::SynRecv | State::Closed) {
                continue;
            }
            if sent[side] < data[side].len() {
                sent[side] += conn.write(&data[side][sent[side]..]);
                if sent[side] == data[side].len() {
                    conn.close();
                }
            } else if data[side].is_empty() {
                conn.close();
            }
            while let Some(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got[side].extend_from_slice(&buf[..n]);
            }
        }
        link.sides.iter().all(|c| c.as_ref().is_some_and(|c| c.close_reason().is_some()))
    });
    assert!(
        finished,
        "the exchange did not finish in {limit:?}: got {} and {} bytes; {:?}",
        got[0].len(),
        got[1].len(),
        link.sides
            .iter()
            .flatten()
            .map(|c| (c.state(), c.got_fin, c.fin_sent, c.flight.len(), c.unsent.len()))
            .collect::<Vec<_>>()
    );
    for conn in link.sides.iter().flatten() {
        assert_eq!(conn.close_reason(), Some(Closed::Finished));
    }
    let [x, y] = got;
    (x, y)
}

#[test]
fn a_megabyte_each_way_arrives_intact_over_a_clean_link_and_both_sides_finish() {
    let mut link = Link::new(1, 10, 0, 0.0);
    let (a, b) = (payload(1 << 20, 1), payload(1 << 20, 2));
    let (at_dialler, at_acceptor) = exchange(&mut link, &a, &b, Duration::from_secs(30));
    assert!(at_acceptor == a && at_dialler == b, "{} / {} bytes", at_acceptor.len(), at_dialler.len());
    assert_eq!(link.conn(0).close_reason(), Some(Closed::Finished));
    assert_eq!(link.conn(1).close_reason(), Some(Closed::Finished));
    assert_eq!(link.conn(0).retransmitted(), 0, "nothing lost, nothing resent");
    let rtt = link.conn(0).rtt().unwrap();
    assert!(rtt >= Duration::from_millis(20), "{rtt:?}");
}

#[test]
fn loss_and_reordering_are_repaired_by_selective_acks_and_timeouts() {
    for seed in 1..=5 {
        let mut link = Link::new(seed, 10, 8, 0.02);
        let (a, b) = (payload(1 << 20, 3), payload(300_000, 4));
        let (at_dialler, at_acceptor) = exchange(&mut link, &a, &b, Duration::from_secs(120));
        assert!(at_acceptor == a, "seed {seed}: {} of {} bytes", at_acceptor.len(), a.len());
        assert!(at_dialler == b, "seed {seed}: {} of {} bytes", at_dialler.len(), b.len());
        assert!(link.dropped > 10, "seed {seed}: the link lost {} packets", link.dropped);
        // Resent about what was lost, not everything: under 2.5 x the loss rate of the payload
        // (reordering by up to 8 ms on a 10 ms path still makes a few resends spurious; seeds
        // 1 to 5 resend 2.0 to 3.7 % with 2 % loss each way; 5.1 to 6.3 % before loss
        // detection waited a quarter of a round trip for reordered packets).
        let resent = link.conn(0).retransmitted();
        eprintln!("seed {seed}: resent {:.1} %", resent as f64 * 100.0 / a.len() as f64);
        assert!(resent > 0 && resent < (a.len() as u64) * 5 / 100, "seed {seed}: resent {resent} bytes");
    }
}

/// A second of blackout in the middle of a transfer loses a whole window. On the timeout every
/// packet not acknowledged is taken for lost and resent as the window regrows (slow start back
/// to half the window), not one packet per timeout with the timeout doubling each time (which
/// took uTP tens of seconds to recover in the LEDBAT bench).
#[test]
fn after_a_blackout_the_whole_window_is_resent_and_the_transfer_recovers_within_seconds() {
    let mut link = Link::new(7, 10, 0, 0.0);
    let start = link.now;
    link.blackout = Some((start + Duration::from_millis(100), start + Duration::from_millis(1100)));
    let data = payload(8 << 20, 9);
    let (_, at_acceptor) = exchange(&mut link, &data, &[], Duration::from_secs(60));
    assert!(at_acceptor == data, "{} of {} bytes", at_acceptor.len(), data.len());
    let took = link.now - start;
    let (timeouts, _) = link.conn(0).losses();
    assert!(link.dropped > 50, "the blackout dropped {} packets", link.dropped);
    // 8 MiB over a clean 20 ms round trip takes about a second; the blackout adds its second and
    // two or three timeouts (200, 400, 800 ms).
    assert!(took < Duration::from_secs(5), "took {took:?} with {timeouts} timeouts");
    assert!(timeouts <= 4, "{timeouts} timeouts");
}

#[test]
fn the_handshake_follows_libutps_conventions_and_survives_lost_syns() {
    let now = Instant::now();
    let mut dialler = Connection::connect(now, now, Config::default(), 0xfffe, 100);
    let mut out = Vec::new();
    assert!(dialler.poll_transmit(now, &mut out));
    let syn_bytes = out.clone();
    let syn = Packet::parse(&syn_bytes).unwrap();
    assert_eq!((syn.kind, syn.connection_id, syn.seq_nr), (Type::Syn, 0xfffe, 100));
    // Lost: the SYN goes again after the initial timeout, twice.
    assert!(!dialler.poll_transmit(now, &mut out));
    assert_eq!(dialler.poll_timeout(), Some(now + INITIAL_RTO));
    dialler.handle_timeout(now + INITIAL_RTO);
    assert!(dialler.poll_transmit(now + INITIAL_RTO, &mut out));
    assert_eq!(Packet::parse(&out).unwrap().kind, Type::Syn);
    let mut acceptor = Connection::accept(now, now, Config::default(), &syn, 7);
    assert_eq!(acceptor.recv_id(), 0xffff, "the acceptor receives on the SYN's id + 1");
    assert!(acceptor.poll_transmit(now, &mut out));
    let state = Packet::parse(&out).unwrap();
    assert_eq!((state.kind, state.connection_id, state.seq_nr, state.ack_nr), (Type::State, 0xfffe, 7, 100));
    let state_bytes = out.clone();
    dialler.handle_packet(now, &Packet::parse(&state_bytes).unwrap());
    assert_eq!(dialler.state(), State::Connected);
    assert_eq!(dialler.poll_event(), Some(Event::Connected));
    // The dialler's first data: its next sequence number, sent to the acceptor's id, acking 6.
    assert_eq!(dialler.write(b"hi"), 2);
    assert!(dialler.poll_transmit(now, &mut out));
    let data = Packet::parse(&out).unwrap();
    assert_eq!((data.kind, data.connection_id, data.seq_nr, data.ack_nr), (Type::Data, 0xffff, 101, 6));
    // A SYN never answered gives up after its transmissions.
    let mut lonely = Connection::connect(now, now, Config::default(), 1, 1);
    let mut t = now;
    for _ in 0..10 {
        while lonely.poll_transmit(t, &mut out) {}
        t = lonely.poll_timeout().unwrap_or(t);
        lonely.handle_timeout(t);
    }
    assert_eq!(lonely.close_reason(), Some(Closed::TimedOut));
}

#[test]
fn a_reader_that_stops_stalls_the_sender_at_its_window() {
    let mut link = Link::new(9, 5, 0, 0.0);
    let data = payload(20 << 20, 5);
    let mut written = 0;
    // Write for ten simulated seconds without reading.
    link.run(Duration::from_secs(10), |link| {
        let Some(conn) = link.sides[0].as_mut() else { return false };
        if conn.state() == State::Connected {
            written += conn.write(&data[written..]);
        }
        false
    });
    let buffered = link.conn(1).readable.len() + link.conn(1).reorder_bytes;
    assert!(buffered <= Config::default().recv_buffer, "{buffered} buffered");
    assert!(written < data.len(), "the sender was held back");
    assert!(link.conn(1).advertised_window() < Config::default().max_payload as u32);
    // Reading again lets the rest through.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let done = link.run(Duration::from_secs(60), |link| {
        if let Some(conn) = link.sides[0].as_mut() {
            written += conn.write(&data[written..]);
        }
        while let Some(n) = link.sides[1].as_mut().and_then(|c| c.read(&mut buf)) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == data.len()
    });
    assert!(done && got == data, "{} of {} bytes", got.len(), data.len());
}

#[test]
fn a_reset_ends_the_peer_and_hostile_packets_change_nothing() {
    let mut link = Link::new(3, 5, 0, 0.0);
    link.run(Duration::from_secs(2), |link| link.sides[1].is_some());
    link.run(Duration::from_millis(100), |_| false);
    // Garbage in every field, many times: no panic, the connection still works.
    let mut rng = Rng(77);
    for _ in 0..5_000 {
        let payload = vec![0u8; (rng.next() % 1400) as usize];
        let sack: Vec<u8> = (0..4 * (1 + rng.next() % 8)).map(|_| rng.next() as u8).collect();
        let packet = Packet {
            kind: [Type::Data, Type::State, Type::Fin][(rng.next() % 3) as usize],
            connection_id: rng.next() as u16,
            timestamp: rng.next() as u32,
            timestamp_difference: rng.next() as u32,
            wnd_size: rng.next() as u32,
            seq_nr: rng.next() as u16,
            ack_nr: rng.next() as u16,
            sack: rng.chance(0.5).then_some(&sack[..]),
            payload: &payload,
        };
        let now = link.now;
        link.conn(0).handle_packet(now, &packet);
    }
    let now = link.now;
    link.conn(0).abort();
    let mut out = Vec::new();
    assert!(link.conn(0).poll_transmit(now, &mut out));
    let reset = Packet::parse(&out).unwrap();
    assert_eq!(reset.kind, Type::Reset);
    link.conn(1).handle_packet(now, &reset);
    assert_eq!(link.conn(1).close_reason(), Some(Closed::Reset));
    assert_eq!(link.conn(0).close_reason(), Some(Closed::Aborted));
}
