//! One uTP connection (BEP 29), sans-IO: the handshake, sequence and acknowledgement numbers,
//! selective ACKs, retransmission on timeout and on three duplicate or selective ACKs, the
//! receive window, FIN and RESET, with [`super::ledbat`] deciding how much may be in flight.
//!
//! The driver demultiplexes datagrams by address and connection id, feeds each one to its
//! connection ([`Connection::handle_packet`]) with the time, and sends what
//! [`Connection::poll_transmit`] gives until it gives nothing; it wakes the connection at
//! [`Connection::poll_timeout`]. The application writes into a bounded send buffer and reads
//! from a bounded receive buffer.
//!
//! Interoperability with libutp (the reference implementation) rests on its conventions, which
//! BEP 29 leaves implicit:
//! - the dialler picks `recv_id` and sends its SYN with `connection_id = recv_id`, then sends
//!   with `send_id = recv_id + 1`;
//! - the acceptor answers a SYN with a STATE whose `seq_nr` is its first sequence number, and
//!   the dialler takes `ack_nr = seq_nr − 1` from it;
//! - a STATE consumes no sequence number; SYN, DATA and FIN do.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ledbat::Ledbat;
use crate::wire::utp::{MAX_SACK_BYTES, Packet, Type};

/// What a connection allows and how it times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Payload bytes per packet (a 1,500-byte path less IPv6, UDP, uTP and a selective ACK).
    pub max_payload: usize,
    /// Bytes the receive buffer holds (what `wnd_size` advertises at most).
    pub recv_buffer: usize,
    /// Bytes the send buffer holds (written and not yet acknowledged).
    pub send_buffer: usize,
    /// Transmissions of one packet before the connection is given up.
    pub max_transmissions: u32,
    /// Transmissions of the SYN before the connection attempt fails.
    pub max_syn_transmissions: u32,
    /// A STATE goes out after this long without sending anything.
    pub keep_alive: Duration,
    /// The connection closes after this long without receiving anything.
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: 1500 - 40 - 8 - 20 - 2 - MAX_SACK_BYTES,
            recv_buffer: 4 * 1024 * 1024,
            send_buffer: 4 * 1024 * 1024,
            max_transmissions: 8,
            max_syn_transmissions: 4,
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The lowest retransmission timeout (libutp's is 500 ms; warren's loopback tests want less, the
/// internet never does).
pub const MIN_RTO: Duration = Duration::from_millis(200);

/// The timeout before the first round-trip sample.
pub const INITIAL_RTO: Duration = Duration::from_secs(1);

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The SYN went out; no answer yet.
    SynSent,
    /// A SYN came and was answered; nothing else from the dialler yet. No data goes out in
    /// this state: the dialler takes its `ack_nr` from our first STATE, which must come first.
    SynRecv,
    /// Open.
    Connected,
    /// Gone (see [`Connection::close_reason`]).
    Closed,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Both sides finished and everything was acknowledged.
    Finished,
    /// The peer sent a RESET.
    Reset,
    /// Packets went unanswered ([`Config::max_transmissions`]) or nothing came for the idle
    /// timeout.
    TimedOut,
    /// This side reset it.
    Aborted,
}

/// What changed, for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// Bytes (or the end) to read.
    Readable,
    /// Room in the send buffer.
    Writable,
    /// The connection ended.
    Closed(Closed),
}

/// A packet sent and not yet acknowledged.
#[derive(Debug)]
struct Sent {
    seq: u16,
    kind: Type,
    payload: Vec<u8>,
    sent_at: Instant,
    transmissions: u32,
    /// Acknowledged by a selective ACK (kept until the cumulative ACK passes it).
    sacked: bool,
    /// Due for retransmission.
    resend: bool,
}

/// Was `sent`, acknowledged at `now`, resent for nothing? Its acknowledgement came sooner after
/// the retransmission than half the lowest round trip: it must be the first transmission's.
fn was_spurious(min_rtt: Option<Duration>, now: Instant, sent: &Sent) -> bool {
    sent.transmissions > 1 && min_rtt.is_some_and(|m| now < sent.sent_at + m / 2)
}

impl Sent {
    /// Counted in the pipe: sent, not acknowledged, not taken for lost.
    fn in_pipe(&self) -> bool {
        self.transmissions > 0 && !self.sacked && !self.resend
    }
}

/// `a` comes before `b` in sequence space.
fn before(a: u16, b: u16) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}

/// One uTP connection.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    epoch: Instant,
    state: State,
    closed: Option<Closed>,
    recv_id: u16,
    send_id: u16,
    /// The next sequence number this side sends.
    seq_nr: u16,
    /// The last sequence number received in order.
    ack_nr: u16,
    // Sending.
    unsent: VecDeque<u8>,
    flight: VecDeque<Sent>,
    flight_bytes: usize,
    /// Bytes sent and neither acknowledged nor taken for lost: what the window limits (RFC
    /// 6675's pipe).
    pipe: usize,
    peer_window: usize,
    ledbat: Ledbat,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    /// When the retransmission timer fires (while something is in flight).
    rto_at: Option<Instant>,
    dup_acks: u32,
    /// When the newest packet known delivered was sent (RACK's reference for loss).
    newest_delivered: Option<Instant>,
    /// The reordering window, in quarters of the smoothed round trip (1 to 4).
    reorder_quarters: u32,
    /// The lowest round trip measured.
    min_rtt: Option<Duration>,
    fin_wanted: bool,
    fin_sent: bool,
    /// A RESET is due (this side aborted).
    reset_due: bool,
    // Receiving.
    readable: VecDeque<u8>,
    /// Packets not yet taken, by distance from `ack_nr + 1` (index 0 is the next in order;
    /// it is empty except while the receive buffer is full).
    reorder: VecDeque<Option<(Type, Vec<u8>)>>,
    reorder_bytes: usize,
    peer_fin: Option<u16>,
    got_fin: bool,
    /// The delay the peer's last packet took (our clock less its timestamp), echoed back.
    reply_micro: u32,
    ack_due: bool,
    last_sent: Option<Instant>,
    last_received: Instant,
    events: VecDeque<Event>,
    /// Bytes sent again (retransmissions), for tests and statistics.
    retransmitted: u64,
    /// Retransmission timeouts, and packets found lost by selective or duplicate ACKs.
    timeouts: u64,
    fast_losses: u64,
}

impl Connection {
    fn new(now: Instant, epoch: Instant, config: Config, recv_id: u16, send_id: u16, seq_nr: u16) -> Self {
        Self {
            config,
            epoch,
            state: State::SynSent,
            closed: None,
            recv_id,
            send_id,
            seq_nr,
            ack_nr: 0,
            unsent: VecDeque::new(),
            flight: VecDeque::new(),
            flight_bytes: 0,
            pipe: 0,
            peer_window: config.max_payload,
            ledbat: Ledbat::new(config.max_payload),
            srtt: None,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
            rto_at: None,
            dup_acks: 0,
            newest_delivered: None,
            reorder_quarters: 1,
            min_rtt: None,
            fin_wanted: false,
            fin_sent: false,
            reset_due: false,
            readable: VecDeque::new(),
            reorder: VecDeque::new(),
            reorder_bytes: 0,
            peer_fin: None,
            got_fin: false,
            reply_micro: 0,
            ack_due: false,
            last_sent: None,
            last_received: now,
            events: VecDeque::new(),
            retransmitted: 0,
            timeouts: 0,
            fast_losses: 0,
        }
    }

    /// Dials: `recv_id` and the first sequence number are the caller's random picks; `epoch` is
    /// any fixed instant (timestamps count from it). The SYN goes out with the first
    /// [`Connection::poll_transmit`].
    pub fn connect(now: Instant, epoch: Instant, config: Config, recv_id: u16, seq_nr: u16) -> Self {
        let mut conn = Self::new(now, epoch, config, recv_id, recv_id.wrapping_add(1), seq_nr);
        conn.queue(now, Type::Syn, Vec::new());
        conn
    }

    /// Accepts `syn` (a [`Type::Syn`] packet); `seq_nr` is the caller's random pick. The
    /// answering STATE goes out with the first [`Connection::poll_transmit`].
    pub fn accept(now: Instant, epoch: Instant, config: Config, syn: &Packet<'_>, seq_nr: u16) -> Self {
        let mut conn = Self::new(now, epoch, config, syn.connection_id.wrapping_add(1), syn.connection_id, seq_nr);
        conn.state = State::SynRecv;
        conn.ack_nr = syn.seq_nr;
        conn.reply_micro = conn.micros(now).wrapping_sub(syn.timestamp);
        conn.peer_window = syn.wnd_size as usize;
        conn.ack_due = true;
        conn
    }

    /// The id the peer's packets to this connection carry.
    pub fn recv_id(&self) -> u16 {
        self.recv_id
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why it closed, if it did.
    pub fn close_reason(&self) -> Option<Closed> {
        self.closed
    }

    /// The smoothed round-trip time, once sampled.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The congestion window, in bytes.
    pub fn window(&self) -> usize {
        self.ledbat.window()
    }

    /// The congestion controller (for statistics and tests).
    pub fn ledbat(&self) -> &Ledbat {
        &self.ledbat
    }

    /// Retransmission timeouts and fast-retransmit losses so far.
    pub fn losses(&self) -> (u64, u64) {
        (self.timeouts, self.fast_losses)
    }

    /// Payload bytes sent more than once so far.
    pub fn retransmitted(&self) -> u64 {
        self.retransmitted
    }

    fn micros(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    fn advertised_window(&self) -> u32 {
        self.config.recv_buffer.saturating_sub(self.readable.len() + self.reorder_bytes) as u32
    }

    /// Takes bytes into the send buffer (as many as fit); 0 means wait for [`Event::Writable`].
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.closed.is_some() || self.fin_wanted {
            return 0;
        }
        let room = self.config.send_buffer.saturating_sub(self.unsent.len() + self.flight_bytes);
        let take = data.len().min(room);
        self.unsent.extend(&data[..take]);
        take
    }

    /// True once the FIN went out and the peer acknowledged it and everything before it.
    pub fn all_acknowledged(&self) -> bool {
        self.fin_sent && self.flight.is_empty()
    }

    /// Bytes written and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.unsent.len() + self.flight_bytes
    }

    /// Reads up to `buf.len()` bytes: `Some(0)` at the end of the stream, `None` if nothing is
    /// there yet.
    pub fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.readable.is_empty() {
            return (self.got_fin || self.closed.is_some()).then_some(0);
        }
        let n = buf.len().min(self.readable.len());
        for (slot, byte) in buf.iter_mut().zip(self.readable.drain(..n)) {
            *slot = byte;
        }
        self.deliver();
        // A window that was closed reopens: tell the peer.
        if self.advertised_window() as usize >= self.config.max_payload
            && (self.advertised_window() as usize) < self.config.max_payload + n
        {
            self.ack_due = true;
        }
        Some(n)
    }

    /// Sends a FIN after everything written.
    pub fn close(&mut self) {
        self.fin_wanted = true;
    }

    /// Drops the connection at once and tells the peer (RESET).
    pub fn abort(&mut self) {
        if self.closed.is_none() {
            self.reset_due = true;
            self.finish(Closed::Aborted);
        }
    }

    fn finish(&mut self, why: Closed) {
        if self.closed.is_none() {
            self.closed = Some(why);
            self.state = State::Closed;
            self.rto_at = None;
            self.events.push_back(Event::Closed(why));
            self.events.push_back(Event::Readable);
            self.events.push_back(Event::Writable);
        }
    }

    fn queue(&mut self, now: Instant, kind: Type, payload: Vec<u8>) {
        self.flight_bytes += payload.len();
        self.flight.push_back(Sent {
            seq: self.seq_nr,
            kind,
            payload,
            sent_at: now,
            transmissions: 0,
            sacked: false,
            resend: true,
        });
        self.seq_nr = self.seq_nr.wrapping_add(1);
    }

    /// One packet from the peer (already matched to this connection).
    pub fn handle_packet(&mut self, now: Instant, packet: &Packet<'_>) {
        if self.closed == Some(Closed::Finished) && matches!(packet.kind, Type::Data | Type::Fin) {
            // The peer missed our last ACK: say it again (the driver keeps a finished
            // connection a while for this).
            self.ack_due = true;
            return;
        }
        if self.closed.is_some() {
            return;
        }
        self.last_received = now;
        if packet.kind == Type::Reset {
            self.finish(Closed::Reset);
            return;
        }
        if packet.kind == Type::Syn {
            // Our STATE was lost: the dialler asks again.
            self.ack_due = true;
            return;
        }
        self.reply_micro = self.micros(now).wrapping_sub(packet.timestamp);
        if packet.timestamp_difference != 0 {
            self.ledbat.on_delay_sample(now, packet.timestamp_difference);
        }
        self.peer_window = packet.wnd_size as usize;
        if self.state == State::SynSent {
            if packet.kind != Type::State {
                return;
            }
            self.state = State::Connected;
            self.ack_nr = packet.seq_nr.wrapping_sub(1);
            // Tell the acceptor we heard it, so that it may send.
            self.ack_due = true;
            self.events.push_back(Event::Connected);
        } else if self.state == State::SynRecv {
            self.state = State::Connected;
            self.events.push_back(Event::Connected);
        }
        self.handle_ack(now, packet);
        if matches!(packet.kind, Type::Data | Type::Fin) {
            self.handle_data(packet);
        }
        self.check_finished();
    }

    fn handle_ack(&mut self, now: Instant, packet: &Packet<'_>) {
        let flight_before = self.pipe;
        let mut acked_bytes = 0;
        let mut rtt_sample = None;
        // When the newest packet this ACK covers was sent (for loss detection, below).
        let mut newest_acked: Option<Instant> = None;
        let mut spurious = false;
        // Cumulative: everything up to ack_nr.
        while let Some(first) = self.flight.front() {
            if before(packet.ack_nr, first.seq) {
                break;
            }
            // An ack beyond what we sent is nonsense: ignore the rest.
            if !before(first.seq, self.seq_nr) {
                break;
            }
            let sent = self.flight.pop_front().expect("a front");
            if sent.in_pipe() {
                self.pipe -= sent.payload.len();
            }
            newest_acked = newest_acked.max(Some(sent.sent_at));
            self.flight_bytes -= sent.payload.len();
            if !sent.sacked {
                acked_bytes += sent.payload.len();
            }
            if sent.transmissions == 1 {
                rtt_sample = Some(now.saturating_duration_since(sent.sent_at));
            }
            spurious |= was_spurious(self.min_rtt, now, &sent);
        }
        // Selective: bit i says ack_nr + 2 + i arrived.
        let mut sacked_past_hole = 0;
        if let Some(mask) = packet.sack {
            for sent in &mut self.flight {
                let distance = sent.seq.wrapping_sub(packet.ack_nr).wrapping_sub(2) as usize;
                if distance < mask.len() * 8 && mask[distance / 8] & (1 << (distance % 8)) != 0 {
                    newest_acked = newest_acked.max(Some(sent.sent_at));
                    if !sent.sacked {
                        if sent.in_pipe() {
                            self.pipe -= sent.payload.len();
                        }
                        sent.sacked = true;
                        sent.resend = false;
                        acked_bytes += sent.payload.len();
                        if sent.transmissions == 1 {
                            rtt_sample = Some(now.saturating_duration_since(sent.sent_at));
                        }
                        spurious |= was_spurious(self.min_rtt, now, sent);
                    }
                    sacked_past_hole += 1;
                }
            }
        }
        if let Some(sample) = rtt_sample {
            self.rtt_sample(sample);
        }
        if acked_bytes > 0 || rtt_sample.is_some() {
            self.dup_acks = 0;
            let rtt = self.srtt.unwrap_or(INITIAL_RTO);
            self.ledbat.on_ack(now, acked_bytes, flight_before, rtt);
            self.rto_at = (!self.flight.is_empty()).then(|| now + self.rto);
            self.events.push_back(Event::Writable);
        } else if packet.kind == Type::State && !self.flight.is_empty() {
            self.dup_acks += 1;
        }
        // Loss, as RACK finds it for TCP (RFC 8985): a packet not yet acknowledged that was sent
        // a reordering window or more before the newest packet known delivered is lost,
        // every such packet at once (a burst of losses is repaired in one round trip, not one
        // hole per round trip), a retransmission too (its send time is that of the
        // retransmission). The window (a quarter of a round trip, widened by a quarter each time
        // a retransmission proves spurious) keeps reordering on the path from being taken for
        // loss, and so does asking for three packets selectively acknowledged above a packet
        // (RFC 6675's DupThresh) before it counts as lost. Without selective ACKs, three
        // duplicate ACKs mark the first packet.
        if let Some(at) = newest_acked {
            self.newest_delivered = self.newest_delivered.max(Some(at));
        }
        if spurious {
            // The path reorders more than the window allowed for: widen it, up to a round trip.
            self.reorder_quarters = (self.reorder_quarters + 1).min(4);
        }
        let reorder_window =
            (self.srtt.unwrap_or(INITIAL_RTO) * self.reorder_quarters / 4).max(Duration::from_millis(1));
        let mut lost = 0;
        if sacked_past_hole >= 3
            && let Some(delivered) = self.newest_delivered
        {
            // From the newest back, counting the packets selectively acknowledged above each.
            let mut sacked_above = 0;
            for sent in self.flight.iter_mut().rev() {
                if sent.sacked {
                    sacked_above += 1;
                } else if sacked_above >= 3
                    && !sent.resend
                    && sent.transmissions > 0
                    && sent.sent_at + reorder_window <= delivered
                {
                    self.pipe -= sent.payload.len();
                    sent.resend = true;
                    lost += 1;
                }
            }
        } else if packet.sack.is_none()
            && self.dup_acks >= 3
            && let Some(first) = self.flight.front_mut()
            && first.transmissions > 0
            && !first.resend
        {
            self.pipe -= first.payload.len();
            first.resend = true;
            lost = 1;
        }
        if lost > 0 {
            self.fast_losses += lost;
            self.dup_acks = 0;
            let rtt = self.srtt.unwrap_or(INITIAL_RTO);
            self.ledbat.on_loss(now, rtt);
        }
    }

    fn rtt_sample(&mut self, sample: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(sample, |m| m.min(sample)));
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
        self.rto = (self.srtt.expect("set") + self.rttvar * 4).max(MIN_RTO);
    }

    fn handle_data(&mut self, packet: &Packet<'_>) {
        self.ack_due = true;
        let expected = self.ack_nr.wrapping_add(1);
        if packet.kind == Type::Fin {
            self.peer_fin.get_or_insert(packet.seq_nr);
        }
        if before(packet.seq_nr, expected) {
            return; // a duplicate: the ACK tells the peer
        }
        let distance = packet.seq_nr.wrapping_sub(expected) as usize;
        // Keep it if the window has room for it (at most one window of packets ahead).
        let limit = self.config.recv_buffer / self.config.max_payload.max(1);
        if distance >= limit
            || self.readable.len() + self.reorder_bytes + packet.payload.len() > self.config.recv_buffer
        {
            return;
        }
        if self.reorder.len() <= distance {
            self.reorder.resize_with(distance + 1, || None);
        }
        if self.reorder[distance].is_none() {
            self.reorder_bytes += packet.payload.len();
            self.reorder[distance] = Some((packet.kind, packet.payload.to_vec()));
        }
        self.deliver();
    }

    /// Moves what is now in order into the receive buffer, as far as it has room.
    fn deliver(&mut self) {
        while let Some(Some((_, payload))) = self.reorder.front() {
            if self.readable.len() + payload.len() > self.config.recv_buffer {
                // Kept until the application reads; the window says so.
                return;
            }
            let Some(Some((kind, payload))) = self.reorder.pop_front() else { unreachable!("checked") };
            self.reorder_bytes -= payload.len();
            self.take_in_order(kind, &payload);
        }
    }

    /// Takes the next in-order packet into the receive buffer.
    fn take_in_order(&mut self, kind: Type, payload: &[u8]) {
        self.ack_nr = self.ack_nr.wrapping_add(1);
        self.readable.extend(payload);
        if kind == Type::Fin || self.peer_fin == Some(self.ack_nr) {
            self.got_fin = true;
        }
        if !payload.is_empty() || self.got_fin {
            self.events.push_back(Event::Readable);
        }
    }

    fn check_finished(&mut self) {
        if self.got_fin && self.fin_sent && self.flight.is_empty() && self.closed.is_none() {
            self.finish(Closed::Finished);
        }
    }

    /// The sequence number of the next packet this side would send (for tests).
    pub fn next_seq(&self) -> u16 {
        self.seq_nr
    }

    /// Writes the next packet to send into `out` (cleared first); false when there is none.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        if self.reset_due {
            self.reset_due = false;
            self.write_packet(now, Type::Reset, self.seq_nr, &[], out);
            return true;
        }
        if self.closed.is_some() {
            if self.closed == Some(Closed::Finished) && self.ack_due {
                self.write_packet(now, Type::State, self.seq_nr, &[], out);
                return true;
            }
            return false;
        }
        let window = self.ledbat.window().min(self.peer_window.max(self.config.max_payload));
        let room = self.pipe == 0 || self.pipe + self.config.max_payload <= window;
        // Retransmissions first, as the window allows.
        if room && let Some(index) = self.flight.iter().position(|s| s.resend && s.transmissions > 0) {
            return self.transmit(now, index, out);
        }
        // The SYN, or new packets queued by `queue` (first transmission).
        if let Some(index) = self.flight.iter().position(|s| s.resend && s.transmissions == 0) {
            return self.transmit(now, index, out);
        }
        if self.state == State::Connected {
            if !self.unsent.is_empty() && room {
                let n = self.unsent.len().min(self.config.max_payload);
                let payload: Vec<u8> = self.unsent.drain(..n).collect();
                self.queue(now, Type::Data, payload);
                let index = self.flight.len() - 1;
                return self.transmit(now, index, out);
            }
            if self.fin_wanted && !self.fin_sent && self.unsent.is_empty() {
                self.fin_sent = true;
                self.queue(now, Type::Fin, Vec::new());
                let index = self.flight.len() - 1;
                return self.transmit(now, index, out);
            }
        }
        if self.ack_due {
            self.write_packet(now, Type::State, self.seq_nr, &[], out);
            return true;
        }
        false
    }

    fn transmit(&mut self, now: Instant, index: usize, out: &mut Vec<u8>) -> bool {
        let sent = &mut self.flight[index];
        debug_assert!(!sent.in_pipe());
        sent.resend = false;
        self.pipe += sent.payload.len();
        if sent.transmissions > 0 {
            self.retransmitted += sent.payload.len() as u64;
        }
        sent.transmissions += 1;
        sent.sent_at = now;
        let (kind, seq, payload) = (sent.kind, sent.seq, std::mem::take(&mut sent.payload));
        self.write_packet(now, kind, seq, &payload, out);
        self.flight[index].payload = payload;
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto);
        }
        true
    }

    fn write_packet(&mut self, now: Instant, kind: Type, seq_nr: u16, payload: &[u8], out: &mut Vec<u8>) {
        let sack = self.sack();
        let packet = Packet {
            kind,
            // A SYN names the id the peer will send to us with; everything else the peer's.
            connection_id: if kind == Type::Syn { self.recv_id } else { self.send_id },
            timestamp: self.micros(now),
            timestamp_difference: self.reply_micro,
            wnd_size: self.advertised_window(),
            seq_nr,
            ack_nr: self.ack_nr,
            sack: sack.as_deref(),
            payload,
        };
        packet.encode(out);
        self.ack_due = false;
        self.last_sent = Some(now);
    }

    /// The selective-ACK bitmask of what waits out of order, if anything does.
    fn sack(&self) -> Option<Vec<u8>> {
        let ahead = self.reorder.iter().skip(1);
        if ahead.clone().all(Option::is_none) {
            return None;
        }
        let bits = (self.reorder.len() - 1).min(MAX_SACK_BYTES * 8);
        let mut mask = vec![0u8; bits.div_ceil(32) * 4];
        for (i, slot) in ahead.take(bits).enumerate() {
            if slot.is_some() {
                mask[i / 8] |= 1 << (i % 8);
            }
        }
        Some(mask)
    }

    /// When [`Connection::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let idle = self.last_received + self.config.idle_timeout;
        let keep_alive = self.last_sent.map(|at| at + self.config.keep_alive);
        [self.rto_at, Some(idle), keep_alive].into_iter().flatten().min()
    }

    /// Runs the timers: retransmission, keep-alive, idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if now >= self.last_received + self.config.idle_timeout {
            self.finish(Closed::TimedOut);
            return;
        }
        if let Some(at) = self.rto_at
            && now >= at
        {
            let limit = if self.state == State::SynSent {
                self.config.max_syn_transmissions
            } else {
                self.config.max_transmissions
            };
            if self.flight.front().is_some_and(|s| s.transmissions >= limit) {
                self.finish(Closed::TimedOut);
                return;
            }
            self.rto = (self.rto * 2).min(Duration::from_secs(30));
            self.timeouts += 1;
            self.ledbat.on_timeout(now);
            // Everything not acknowledged is taken for lost (as TCP does on a timeout) and goes
            // again as the window reopens, rather than one packet per timeout.
            for sent in self.flight.iter_mut().filter(|s| s.in_pipe()) {
                sent.resend = true;
                self.pipe -= sent.payload.len();
            }
            self.rto_at = Some(now + self.rto);
        }
        if self.state == State::Connected && self.last_sent.is_some_and(|at| now >= at + self.config.keep_alive) {
            self.ack_due = true;
        }
    }

    /// What changed since the last call, one at a time.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
