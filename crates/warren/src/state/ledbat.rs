//! LEDBAT congestion control (RFC 6817), sans-IO, for uTP: a window that fills the bottleneck
//! while the queue it builds stays under a target delay (100 ms), and gives way when another
//! flow (TCP) makes the queue grow.
//!
//! - **Delay samples** are one-way: the peer reports how long after our timestamp each packet
//!   arrived (uTP's `timestamp_difference`), clock offset included. The offset cancels out of
//!   `queuing delay = current delay − base delay`.
//! - **Base delay** is the lowest sample in a history of one minimum per minute, over
//!   [`BASE_HISTORY`] minutes (RFC 6817 §3.4.2): it follows a route change or clock drift within
//!   ten minutes.
//! - **Current delay** is the lowest of the last [`CURRENT_FILTER`] samples, which filters out
//!   one-packet spikes.
//! - **The window** grows by `GAIN × off_target × bytes acked × MSS / cwnd` per ACK, with
//!   `off_target = (TARGET − queuing delay) / TARGET`. It shrinks when the queue is above target,
//!   at most by half per round trip. Loss halves it once per round trip; a retransmission
//!   timeout drops it to one packet. It never falls below [`MIN_CWND_PACKETS`] packets otherwise,
//!   and grows only while the sender uses it.
//! - **Slow start** doubles the window per round trip (as TCP's does) until the queue reaches
//!   3/4 of the target or a loss occurs.
//! - **The latecomer problem.** A flow that starts while another keeps a standing queue takes
//!   that queue for its base delay. It then pushes its share up and the first flow's down. The
//!   fix is LEDBAT++'s *periodic slowdown*: two round trips after slow start ends, and then
//!   again nine times as long after each slowdown as the slowdown lasted (from its start until
//!   the window has regrown), the window drops to [`MIN_CWND_PACKETS`] for two round trips. The queue drains, every flow on the bottleneck
//!   sees the true base delay, and the windows regrow from it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The queuing delay LEDBAT aims at (RFC 6817's upper bound).
pub const TARGET: Duration = Duration::from_millis(100);

/// Window growth per round trip at zero queuing delay, in packets (RFC 6817's GAIN).
pub const GAIN: f64 = 1.0;

/// Minutes of base-delay minima kept.
pub const BASE_HISTORY: usize = 10;

/// Samples the current delay is the minimum of.
pub const CURRENT_FILTER: usize = 4;

/// The smallest window, in packets, outside a timeout.
pub const MIN_CWND_PACKETS: usize = 2;

/// The first window, in packets.
pub const INITIAL_CWND_PACKETS: usize = 4;

/// The congestion controller of one uTP connection.
#[derive(Debug, Clone)]
pub struct Ledbat {
    mss: usize,
    cwnd: f64,
    slow_start: bool,
    /// (start of the minute, lowest sample in it), oldest first.
    base: VecDeque<(Instant, u32)>,
    current: VecDeque<u32>,
    /// The last time the window was cut for loss (once per round trip).
    last_cut: Option<Instant>,
    /// The window before a slowdown, regrown to afterwards.
    slowdown: Slowdown,
}

#[derive(Debug, Clone, Copy)]
enum Slowdown {
    /// Slow start has not ended yet.
    NotYet,
    /// The next slowdown starts at this time.
    Due(Instant),
    /// In a slowdown since `since`, back to `regrow_to` after it.
    Active { since: Instant, regrow_to: f64 },
    /// Regrowing (slow start) to `regrow_to`, in a slowdown that started at `since`.
    Regrowing { regrow_to: f64, since: Instant },
}

impl Ledbat {
    /// A controller for packets of up to `mss` payload bytes.
    pub fn new(mss: usize) -> Self {
        Self {
            mss,
            cwnd: (INITIAL_CWND_PACKETS * mss) as f64,
            slow_start: true,
            base: VecDeque::new(),
            current: VecDeque::new(),
            last_cut: None,
            slowdown: Slowdown::NotYet,
        }
    }

    /// The window: bytes that may be in flight.
    pub fn window(&self) -> usize {
        self.cwnd as usize
    }

    fn min_cwnd(&self) -> f64 {
        (MIN_CWND_PACKETS * self.mss) as f64
    }

    /// Takes a one-way delay sample (microseconds, offset included).
    pub fn on_delay_sample(&mut self, now: Instant, sample: u32) {
        match self.base.back_mut() {
            Some((minute, lowest)) if now.saturating_duration_since(*minute) < Duration::from_secs(60) => {
                *lowest = (*lowest).min(sample);
            }
            _ => {
                self.base.push_back((now, sample));
                if self.base.len() > BASE_HISTORY {
                    self.base.pop_front();
                }
            }
        }
        self.current.push_back(sample);
        if self.current.len() > CURRENT_FILTER {
            self.current.pop_front();
        }
    }

    /// The queuing delay now (current delay less base delay), once there are samples.
    pub fn queuing_delay(&self) -> Option<Duration> {
        let base = self.base.iter().map(|(_, d)| *d).min()?;
        let current = self.current.iter().copied().min()?;
        Some(Duration::from_micros(u64::from(current.saturating_sub(base))))
    }

    /// `acked` bytes were newly acknowledged; `flight` bytes were in flight before, `rtt` is
    /// the smoothed round-trip time.
    pub fn on_ack(&mut self, now: Instant, acked: usize, flight: usize, rtt: Duration) {
        let rtt = rtt.max(Duration::from_millis(1));
        self.advance_slowdown(now, rtt);
        if matches!(self.slowdown, Slowdown::Active { .. }) {
            return;
        }
        let Some(queuing) = self.queuing_delay() else { return };
        let off_target = (TARGET.as_secs_f64() - queuing.as_secs_f64()) / TARGET.as_secs_f64();
        // Only a window in use may grow (RFC 6817 §2.4.1: no growth when application-limited).
        let limited = flight + self.mss >= self.window();
        if self.slow_start {
            if queuing >= TARGET * 3 / 4 {
                self.end_slow_start(now, rtt);
            } else if limited {
                self.cwnd += acked as f64;
                if let Slowdown::Regrowing { regrow_to, .. } = self.slowdown
                    && self.cwnd >= regrow_to
                {
                    self.end_slow_start(now, rtt);
                }
                return;
            } else {
                return;
            }
        }
        let change = GAIN * off_target * acked as f64 * self.mss as f64 / self.cwnd;
        if change > 0.0 && !limited {
            return;
        }
        // At most halving per round trip: per ACK, a cut of at most half of what was acked.
        let change = change.max(-(acked as f64) / 2.0);
        self.cwnd = (self.cwnd + change).max(self.min_cwnd());
    }

    fn end_slow_start(&mut self, now: Instant, rtt: Duration) {
        self.slow_start = false;
        self.slowdown = match self.slowdown {
            Slowdown::NotYet => Slowdown::Due(now + rtt * 2),
            // LEDBAT++: the next slowdown comes nine times the last one's length later, the
            // length counted from its start until the window is back (or a loss ends the
            // regrowth).
            Slowdown::Regrowing { since, .. } => Slowdown::Due(now + now.saturating_duration_since(since) * 9),
            other => other,
        };
    }

    /// Moves the periodic slowdown along.
    fn advance_slowdown(&mut self, now: Instant, rtt: Duration) {
        match self.slowdown {
            Slowdown::Due(at) if now >= at => {
                self.slowdown = Slowdown::Active { since: now, regrow_to: self.cwnd };
                self.cwnd = self.min_cwnd();
            }
            Slowdown::Active { since, regrow_to } if now.saturating_duration_since(since) >= rtt * 2 => {
                // The queue drained: every flow sees the real base delay now. Regrow fast.
                self.slowdown = Slowdown::Regrowing { regrow_to, since };
                self.slow_start = true;
            }
            _ => {}
        }
    }

    /// Packets were lost (a hole the receiver reported): half the window, once per round trip.
    pub fn on_loss(&mut self, now: Instant, rtt: Duration) {
        if self.last_cut.is_some_and(|at| now.saturating_duration_since(at) < rtt) {
            return;
        }
        self.last_cut = Some(now);
        self.cwnd = (self.cwnd / 2.0).max(self.min_cwnd());
        if self.slow_start {
            self.end_slow_start(now, rtt);
        }
    }

    /// The retransmission timer fired: one packet in flight until ACKs come again.
    pub fn on_timeout(&mut self, now: Instant, rtt: Duration) {
        self.cwnd = self.mss as f64;
        self.last_cut = Some(now);
        if self.slow_start {
            self.end_slow_start(now, rtt);
        }
    }

    /// True while the window doubles per round trip.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1000;
    const RTT: Duration = Duration::from_millis(50);

    /// Feeds one round trip of ACKs for a full window at `queuing` delay over a base of 20 ms.
    fn round(cc: &mut Ledbat, now: &mut Instant, queuing_ms: u32) {
        let packets = (cc.window() / MSS).max(1);
        for _ in 0..packets {
            cc.on_delay_sample(*now, 20_000 + queuing_ms * 1000);
            cc.on_ack(*now, MSS, cc.window(), RTT);
            *now += RTT / packets as u32;
        }
    }

    fn base(cc: &mut Ledbat, now: Instant) {
        for _ in 0..CURRENT_FILTER {
            cc.on_delay_sample(now, 20_000);
        }
    }

    #[test]
    fn an_empty_queue_grows_the_window_and_one_above_target_shrinks_it() {
        let mut now = Instant::now();
        let mut cc = Ledbat::new(MSS);
        base(&mut cc, now);
        let start = cc.window();
        for _ in 0..5 {
            round(&mut cc, &mut now, 0);
        }
        assert!(cc.window() >= start * 16, "slow start doubles: {} from {start}", cc.window());
        // A queue past 3/4 of the target ends slow start; above the target the window shrinks.
        round(&mut cc, &mut now, 90);
        assert!(!cc.in_slow_start());
        let before = cc.window();
        round(&mut cc, &mut now, 200);
        assert!(cc.window() < before, "{} >= {before}", cc.window());
        assert!(cc.window() >= before / 2, "at most halved in a round trip");
        // Held above target, it falls to the floor and stays there.
        for _ in 0..50 {
            round(&mut cc, &mut now, 200);
        }
        assert_eq!(cc.window(), MIN_CWND_PACKETS * MSS);
        // At the target exactly, it holds (off_target = 0).
        let held = cc.window();
        round(&mut cc, &mut now, 100);
        assert_eq!(cc.window(), held);
    }

    #[test]
    fn below_target_it_grows_by_about_gain_packets_per_round_trip() {
        let mut now = Instant::now();
        let mut cc = Ledbat::new(MSS);
        base(&mut cc, now);
        cc.on_loss(now, RTT); // out of slow start
        let before = cc.window();
        round(&mut cc, &mut now, 0);
        let grown = cc.window() - before;
        assert!((MSS * 9 / 10..=MSS * 11 / 10).contains(&grown), "grew {grown} bytes in one round trip");
    }

    #[test]
    fn loss_halves_once_per_round_trip_and_a_timeout_drops_to_one_packet() {
        let mut now = Instant::now();
        let mut cc = Ledbat::new(MSS);
        base(&mut cc, now);
        for _ in 0..5 {
            round(&mut cc, &mut now, 0);
        }
        let before = cc.window();
        cc.on_loss(now, RTT);
        cc.on_loss(now + RTT / 2, RTT);
        assert_eq!(cc.window(), before / 2);
        cc.on_loss(now + RTT * 2, RTT);
        assert_eq!(cc.window(), before / 4);
        cc.on_timeout(now, RTT);
        assert_eq!(cc.window(), MSS);
    }

    #[test]
    fn the_base_delay_is_the_lowest_of_ten_minutes_and_forgets_older_ones() {
        let start = Instant::now();
        let mut cc = Ledbat::new(MSS);
        cc.on_delay_sample(start, 5_000);
        for minute in 1..=10 {
            for _ in 0..CURRENT_FILTER {
                cc.on_delay_sample(start + Duration::from_secs(60 * minute), 30_000);
            }
        }
        // The 5 ms minute was the eleventh back: forgotten; the queue now reads zero.
        assert_eq!(cc.queuing_delay(), Some(Duration::ZERO));
        let mut cc = Ledbat::new(MSS);
        cc.on_delay_sample(start, 5_000);
        for _ in 0..CURRENT_FILTER {
            cc.on_delay_sample(start + Duration::from_secs(120), 30_000);
        }
        assert_eq!(cc.queuing_delay(), Some(Duration::from_millis(25)));
    }

    #[test]
    fn a_periodic_slowdown_drops_to_the_floor_for_two_round_trips_then_regrows() {
        let mut now = Instant::now();
        let mut cc = Ledbat::new(MSS);
        base(&mut cc, now);
        for _ in 0..4 {
            round(&mut cc, &mut now, 0);
        }
        round(&mut cc, &mut now, 80); // slow start ends; the slowdown is due two RTTs later
        let steady = cc.window();
        let mut floor_seen = false;
        for _ in 0..6 {
            round(&mut cc, &mut now, 10);
            floor_seen |= cc.window() == MIN_CWND_PACKETS * MSS;
        }
        assert!(floor_seen, "the slowdown took the window to the floor");
        for _ in 0..10 {
            round(&mut cc, &mut now, 10);
        }
        assert!(cc.window() >= steady, "regrown to {} (was {steady})", cc.window());
    }

    #[test]
    fn an_application_limited_sender_does_not_grow_its_window() {
        let now = Instant::now();
        let mut cc = Ledbat::new(MSS);
        base(&mut cc, now);
        let before = cc.window();
        for _ in 0..100 {
            cc.on_delay_sample(now, 20_000);
            cc.on_ack(now, MSS, MSS, RTT);
        }
        assert_eq!(cc.window(), before);
    }
}
