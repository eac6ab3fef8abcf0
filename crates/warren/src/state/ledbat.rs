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
//! - **The window**, as in LEDBAT++ (draft-irtf-iccrg-ledbat-plus-plus §4.2), grows by
//!   `GAIN × bytes acked × MSS / cwnd` per ACK (GAIN packets per round trip) while the queuing
//!   delay is under the target, and above it shrinks multiplicatively, by
//!   `DECREASE × (queuing delay / TARGET − 1) × bytes acked` per ACK, at most by half per round
//!   trip. Two flows then converge to equal windows, as AIMD does: RFC 6817's growth in
//!   proportion to the distance to the target never crosses it, its decrease is linear, and
//!   either keeps whatever split two flows have (warren's bench measured 3 % and 89 %). Loss halves it once per round trip; a retransmission
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

/// LEDBAT++'s decrease constant: above the target the window shrinks by
/// `DECREASE × W × (queuing delay / TARGET − 1)` per round trip.
pub const DECREASE: f64 = 1.0;

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
    /// `lowest` is the lowest queuing delay seen since.
    Active { since: Instant, regrow_to: f64, lowest: Duration },
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
        if let Slowdown::Active { ref mut lowest, .. } = self.slowdown {
            let queuing = self.current.iter().copied().min().zip(self.base.iter().map(|(_, d)| *d).min());
            if let Some((current, base)) = queuing {
                *lowest = (*lowest).min(Duration::from_micros(u64::from(current.saturating_sub(base))));
            }
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
        let change = if off_target >= 0.0 {
            // Below target: GAIN packets per round trip, however close to the target
            // (LEDBAT++). RFC 6817's growth in proportion to the distance approaches the target
            // without ever crossing it, so the decrease below never runs and two flows keep
            // whatever split they started with.
            GAIN * acked as f64 * self.mss as f64 / self.cwnd
        } else {
            // Above target: LEDBAT++'s multiplicative decrease, W × (delay/target − 1) per round
            // trip, so that a larger window gives up more and flows converge to a fair share
            // (RFC 6817's linear decrease keeps whatever split they have). At most halving per
            // round trip: per ACK, a cut of at most half of what was acked.
            (off_target * DECREASE * acked as f64).max(-(acked as f64) / 2.0)
        };
        if change > 0.0 && !limited {
            return;
        }
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
                self.slowdown = Slowdown::Active { since: now, regrow_to: self.cwnd, lowest: Duration::MAX };
                self.cwnd = self.min_cwnd();
            }
            Slowdown::Active { since, regrow_to, lowest } if now.saturating_duration_since(since) >= rtt * 2 => {
                if lowest > TARGET / 4 {
                    // Another flow kept the queue up: this slowdown showed nothing about the base
                    // delay, and regrowing would only hand that flow this one's share. The
                    // window comes back as it was.
                    self.cwnd = regrow_to;
                    self.slowdown = Slowdown::Due(now + now.saturating_duration_since(since) * 9);
                } else {
                    // The queue drained: every flow sees the real base delay now. Regrow fast.
                    self.slowdown = Slowdown::Regrowing { regrow_to, since };
                    self.slow_start = true;
                }
            }
            _ => {}
        }
    }

    /// Packets were lost (a hole the receiver reported): half the window, once per round trip.
    /// In a slowdown, half the window it would have come back to, and the slowdown ends.
    pub fn on_loss(&mut self, now: Instant, rtt: Duration) {
        if self.last_cut.is_some_and(|at| now.saturating_duration_since(at) < rtt) {
            return;
        }
        self.last_cut = Some(now);
        let before = self.interrupt_slowdown(now);
        self.cwnd = (before / 2.0).max(self.min_cwnd());
        if self.slow_start {
            self.end_slow_start(now, rtt);
        }
    }

    /// The retransmission timeout fired: one packet in flight, then slow start back to half the
    /// window there was (TCP's ssthresh), or until the queue nears the target.
    pub fn on_timeout(&mut self, now: Instant) {
        let before = self.interrupt_slowdown(now);
        self.last_cut = Some(now);
        self.cwnd = self.mss as f64;
        self.slow_start = true;
        let regrow_to = (before / 2.0).max(self.min_cwnd());
        let since = match self.slowdown {
            Slowdown::Due(_) | Slowdown::NotYet => now,
            Slowdown::Active { since, .. } | Slowdown::Regrowing { since, .. } => since,
        };
        if !matches!(self.slowdown, Slowdown::NotYet) {
            self.slowdown = Slowdown::Regrowing { regrow_to, since };
        }
    }

    /// The window there was before the slowdown in progress, if one is, which a loss or a
    /// timeout ends (the next one due nine times its length later); else the window.
    fn interrupt_slowdown(&mut self, now: Instant) -> f64 {
        match self.slowdown {
            Slowdown::Active { since, regrow_to, .. } => {
                self.slowdown = Slowdown::Due(now + now.saturating_duration_since(since) * 9);
                regrow_to
            }
            _ => self.cwnd,
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
        // At the target it grows by a packet per round trip, as below it (LEDBAT++).
        let held = cc.window();
        round(&mut cc, &mut now, 100);
        let grown = cc.window() - held;
        assert!((MSS * 9 / 10..=MSS * 11 / 10).contains(&grown), "grew {grown} bytes at the target");
    }

    /// Two windows held at the same queue above target: the decrease is in proportion to each,
    /// so the larger gives up more, and over rounds of growing and shrinking they even out.
    #[test]
    fn above_target_the_decrease_is_multiplicative_and_two_windows_even_out() {
        let mut now = Instant::now();
        let (mut small, mut large) = (Ledbat::new(MSS), Ledbat::new(MSS));
        for cc in [&mut small, &mut large] {
            base(cc, now);
            cc.on_loss(now, RTT); // out of slow start
            cc.slowdown = Slowdown::Due(now + Duration::from_secs(3600));
        }
        small.cwnd = (10 * MSS) as f64;
        large.cwnd = (100 * MSS) as f64;
        let (s0, l0) = (small.window(), large.window());
        let mut t = now;
        round(&mut small, &mut t, 150);
        round(&mut large, &mut now, 150);
        // 150 ms against 100: a third of each window per round trip, capped at half.
        let (s_cut, l_cut) = (s0 - small.window(), l0 - large.window());
        assert!(l_cut > 8 * s_cut, "cuts {s_cut} and {l_cut}");
        // Alternating a round under target and one over, the ratio shrinks towards 1.
        for _ in 0..200 {
            for (cc, clock) in [(&mut small, &mut t), (&mut large, &mut now)] {
                round(cc, clock, 60);
                round(cc, clock, 110);
            }
        }
        let ratio = large.window() as f64 / small.window() as f64;
        assert!(ratio < 1.5, "windows {} and {}: ratio {ratio:.2}", small.window(), large.window());
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
        cc.on_timeout(now);
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

    /// A controller just out of slow start: its first slowdown is due two round trips later.
    fn out_of_slow_start() -> (Ledbat, Instant) {
        let mut now = Instant::now();
        let mut cc = Ledbat::new(MSS);
        base(&mut cc, now);
        for _ in 0..4 {
            round(&mut cc, &mut now, 0);
        }
        round(&mut cc, &mut now, 80);
        (cc, now)
    }

    #[test]
    fn a_periodic_slowdown_drops_to_the_floor_for_two_round_trips_then_regrows() {
        let (mut cc, mut now) = out_of_slow_start();
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

    /// A slowdown during which another flow keeps the queue up teaches nothing: the window comes
    /// back as it was instead of being handed to that flow.
    #[test]
    fn a_slowdown_that_does_not_drain_the_queue_gives_the_window_back() {
        let (mut cc, mut now) = out_of_slow_start();
        let mut before = None;
        let mut floor_seen = false;
        for _ in 0..6 {
            let window = cc.window();
            round(&mut cc, &mut now, 90);
            if cc.window() == MIN_CWND_PACKETS * MSS && !floor_seen {
                floor_seen = true;
                before = Some(window);
            }
        }
        assert!(floor_seen, "the slowdown happened");
        // Two rounds at the floor, then the window is back at once (no slow start), within the
        // growth of the rounds since.
        assert!(!cc.in_slow_start());
        let before = before.unwrap();
        assert!((before..=before + 6 * MSS).contains(&cc.window()), "{} from {before}", cc.window());
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
