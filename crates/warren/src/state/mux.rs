//! warren's stream multiplexer, sans-IO: many streams over one ordered, reliable, encrypted
//! channel (Noise over TCP or uTP). It does what QUIC does for streams and nothing a reliable
//! channel already does: bidirectional and unidirectional streams opened without a round trip,
//! reset and stop codes, per-stream and connection flow control with windows that grow
//! with the throughput (auto-tuning), stream limits a peer must respect, a close with a code and
//! a reason, pings for the round-trip time, keep-alive and idle timeout.
//!
//! The driver feeds it each received message ([`Mux::handle_message`]) and the time
//! ([`Mux::handle_timeout`]), asks it for messages to send ([`Mux::poll_transmit`]) and for what
//! changed ([`Mux::poll_event`]), and calls the stream operations for the application. Frames:
//! [`crate::wire::mux`].
//!
//! Why not yamux: a yamux reset carries no code and a yamux close no reason, it has no
//! unidirectional streams, and a stream limit the opener cannot see; the node's refusals
//! (`UNKNOWN_PROTOCOL`, `BAD_HELLO`) and its unadmitted limits need all four, and bolting them on
//! as a control stream races the data streams. The framing is QUIC's ideas without QUIC's
//! packets: about as much code as the glue yamux would need.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use crate::error::{ConnectionError, StreamError};
use crate::wire::mux::{Frame, FrameError, Frames, Kind, MAX_DATA_HEADER, MAX_MESSAGE};

/// Which end of the connection this is: the dialler opens even-numbered streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Dialled the connection.
    Dialler,
    /// Accepted it.
    Acceptor,
}

/// Streams of each kind either side may open before the other's first STREAMS frame.
pub const INITIAL_STREAMS_BI: u64 = 8;
/// See [`INITIAL_STREAMS_BI`]: one unidirectional stream, for the hello.
pub const INITIAL_STREAMS_UNI: u64 = 1;
/// What either side may send on a new stream before the receiver's first WINDOW for it.
pub const INITIAL_STREAM_WINDOW: u64 = 256 * 1024;
/// What either side may send on all streams before the other's first CONN_WINDOW.
pub const INITIAL_CONN_WINDOW: u64 = 64 * 1024;

/// Application close code of a protocol violation (the same as the node's).
pub const PROTOCOL_VIOLATION: u64 = 4;

/// What one side allows its peer, and its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Concurrent bidirectional streams the peer may have open.
    pub max_bi: u64,
    /// Concurrent unidirectional streams the peer may have open.
    pub max_uni: u64,
    /// A new stream's receive window (at least [`INITIAL_STREAM_WINDOW`], what the peer
    /// assumes before it hears otherwise).
    pub stream_window: u64,
    /// Largest a stream's receive window grows to: auto-tuning doubles it while the reader
    /// keeps up.
    pub max_stream_window: u64,
    /// The connection's receive window over all streams.
    pub conn_window: u64,
    /// A PING goes out after this long without sending anything.
    pub keep_alive: Duration,
    /// The connection closes after this long without receiving anything.
    pub idle_timeout: Duration,
}

impl Config {
    /// The full limits, as warren's QUIC has them: 128 bidirectional streams, one
    /// unidirectional, 2 MiB per stream growing to 8 MiB, 32 MiB per connection, keep-alive
    /// 10 s, idle 30 s.
    pub fn full() -> Self {
        Self {
            max_bi: 128,
            max_uni: 1,
            stream_window: 2 * 1024 * 1024,
            max_stream_window: 8 * 1024 * 1024,
            conn_window: 32 * 1024 * 1024,
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// What an accepted connection allows until the node admits it: the initial limits every
    /// side assumes (8 bidirectional streams, 64 KiB over all), nothing more.
    pub fn unadmitted() -> Self {
        Self {
            max_bi: INITIAL_STREAMS_BI,
            max_uni: INITIAL_STREAMS_UNI,
            conn_window: INITIAL_CONN_WINDOW,
            ..Self::full()
        }
    }
}

/// What the driver learns from [`Mux::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The stream has bytes, its end or its reset to read.
    Readable(u64),
    /// The stream may take more bytes, or was stopped by the peer, or its data all went out.
    Writable(u64),
    /// The peer opened a stream of this kind: [`Mux::accept`] has one.
    Incoming(Kind),
    /// The peer allows more streams of this kind: [`Mux::open`] may succeed now.
    CanOpen(Kind),
    /// The connection closed (see [`Mux::close_reason`]).
    Closed,
}

/// What a read gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Bytes, in order.
    Data(Bytes),
    /// The stream ended: the peer finished it and everything was read.
    End,
    /// Nothing yet: wait for [`Event::Readable`].
    Blocked,
}

#[derive(Debug, Default)]
struct SendState {
    /// Bytes written and not yet transmitted.
    pending: VecDeque<Bytes>,
    pending_len: u64,
    /// Bytes written so far (the offset of the next).
    written: u64,
    /// The peer lets us send up to this offset.
    max: u64,
    /// `finish` was called; `fin_sent` once the frame went out.
    fin: bool,
    fin_sent: bool,
    /// `reset` was called (the RESET is queued).
    reset: bool,
    /// The peer sent STOP with this code.
    stopped: Option<u64>,
    /// The application dropped its half.
    dropped: bool,
}

impl SendState {
    fn done(&self) -> bool {
        self.reset || self.stopped.is_some() || self.fin_sent
    }

    /// The peer has all it will get (for `stopped()`): finished and flushed, reset or stopped.
    fn settled(&self) -> bool {
        self.done()
    }
}

#[derive(Debug)]
struct RecvState {
    buffered: VecDeque<Bytes>,
    /// Highest offset received.
    received: u64,
    /// Offset the application has read to.
    consumed: u64,
    /// The peer may send up to this offset.
    max: u64,
    /// The window now: `max` is kept at `consumed + window` as the application reads.
    window: u64,
    /// When `max` was last raised (auto-tuning).
    raised: Option<Instant>,
    fin: bool,
    /// The peer reset its half, with this code.
    reset: Option<u64>,
    /// The application stopped reading (the STOP is queued); later bytes are dropped.
    stopped: bool,
    /// The application dropped its half.
    dropped: bool,
    /// The application saw the end or the reset.
    seen_end: bool,
}

impl RecvState {
    fn new() -> Self {
        Self {
            buffered: VecDeque::new(),
            received: 0,
            consumed: 0,
            max: INITIAL_STREAM_WINDOW,
            window: INITIAL_STREAM_WINDOW,
            raised: None,
            fin: false,
            reset: None,
            stopped: false,
            dropped: false,
            seen_end: false,
        }
    }

    fn done(&self) -> bool {
        self.stopped || self.seen_end || (self.dropped && (self.fin || self.reset.is_some()))
    }
}

#[derive(Debug)]
struct Stream {
    send: Option<SendState>,
    recv: Option<RecvState>,
}

impl Stream {
    fn done(&self) -> bool {
        self.send.as_ref().is_none_or(|s| s.done() && s.dropped)
            && self.recv.as_ref().is_none_or(|r| r.done() && r.dropped)
    }
}

/// Per kind: the streams one side opened so far and the count it may open.
#[derive(Debug, Clone, Copy)]
struct Counts {
    opened: u64,
    allowed: u64,
}

/// The multiplexer of one connection.
#[derive(Debug)]
pub struct Mux {
    side: Side,
    config: Config,
    streams: HashMap<u64, Stream>,
    /// Streams ours: opened and allowed per kind (bi, uni).
    ours: [Counts; 2],
    /// Streams the peer's: opened and allowed per kind.
    theirs: [Counts; 2],
    /// Peer streams closed since the last STREAMS frame, per kind.
    theirs_closed: [u64; 2],
    /// Peer-opened streams not yet accepted, per kind.
    incoming: [VecDeque<u64>; 2],
    /// Connection flow control: bytes we queued against the peer's limit, and the limit.
    conn_written: u64,
    conn_send_max: u64,
    /// Connection flow control: highest bytes received (every stream's, dropped ones too), read
    /// (or dropped), the limit given, its window and when it was raised.
    conn_received: u64,
    conn_consumed: u64,
    conn_recv_max: u64,
    conn_window: u64,
    conn_raised: Option<Instant>,
    /// Control frames to send, encoded.
    control: Vec<u8>,
    /// Streams whose WINDOW is due.
    windows_due: HashSet<u64>,
    conn_window_due: bool,
    streams_due: [bool; 2],
    /// Streams with data or a FIN to send, in turn.
    sendable: VecDeque<u64>,
    events: VecDeque<Event>,
    /// Closing: the reason, and whether our CLOSE went out (or none is due: the peer closed).
    closed: Option<ConnectionError>,
    close_frame: Option<(u64, Vec<u8>)>,
    /// Timers.
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    ping_out: Option<(u64, Instant)>,
    next_ping_id: u64,
    pong_due: Option<u64>,
    srtt: Option<Duration>,
}

fn kind_of(id: u64) -> Kind {
    if id & 2 == 0 { Kind::Bi } else { Kind::Uni }
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Bi => 0,
        Kind::Uni => 1,
    }
}

impl Mux {
    /// The multiplexer of a new connection on `side`, allowing the peer what `config` says
    /// (sent in the first message).
    pub fn new(side: Side, config: Config) -> Self {
        let initial =
            [Counts { opened: 0, allowed: INITIAL_STREAMS_BI }, Counts { opened: 0, allowed: INITIAL_STREAMS_UNI }];
        let mut mux = Self {
            side,
            config,
            streams: HashMap::new(),
            ours: initial,
            theirs: initial,
            theirs_closed: [0; 2],
            incoming: [VecDeque::new(), VecDeque::new()],
            conn_written: 0,
            conn_send_max: INITIAL_CONN_WINDOW,
            conn_received: 0,
            conn_consumed: 0,
            conn_recv_max: INITIAL_CONN_WINDOW,
            conn_window: INITIAL_CONN_WINDOW,
            conn_raised: None,
            control: Vec::new(),
            windows_due: HashSet::new(),
            conn_window_due: false,
            streams_due: [false; 2],
            sendable: VecDeque::new(),
            events: VecDeque::new(),
            closed: None,
            close_frame: None,
            last_sent: None,
            last_received: None,
            ping_out: None,
            next_ping_id: 0,
            pong_due: None,
            srtt: None,
        };
        mux.set_config(config);
        mux
    }

    /// Raises (or sets) what the peer is allowed: the node admits a connection with
    /// [`Config::full`]. Limits never shrink below what was already given.
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
        for kind in [Kind::Bi, Kind::Uni] {
            self.allow_more(kind);
        }
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.grow_window(id);
        }
        if config.conn_window > self.conn_window {
            self.conn_window = config.conn_window;
            self.raise_conn_window(None);
        }
    }

    /// Raises stream `id`'s receive window to the configured one, if it is smaller.
    fn grow_window(&mut self, id: u64) {
        let window = self.config.stream_window;
        let Some(recv) = self.streams.get_mut(&id).and_then(|s| s.recv.as_mut()) else { return };
        if recv.window < window && !recv.fin && !recv.stopped {
            recv.window = window;
            recv.max = recv.max.max(recv.consumed + window);
            self.windows_due.insert(id);
        }
    }

    /// Lets the peer have the configured number of streams of `kind` open beyond those closed.
    fn allow_more(&mut self, kind: Kind) {
        let max = match kind {
            Kind::Bi => self.config.max_bi,
            Kind::Uni => self.config.max_uni,
        };
        let allowed = self.theirs_closed[slot(kind)] + max;
        let counts = &mut self.theirs[slot(kind)];
        if allowed > counts.allowed {
            counts.allowed = allowed;
            self.streams_due[slot(kind)] = true;
        }
    }

    fn is_ours(&self, id: u64) -> bool {
        (id & 1 == 1) == (self.side == Side::Acceptor)
    }

    fn stream_id(side: Side, kind: Kind, index: u64) -> u64 {
        index << 2 | u64::from(kind == Kind::Uni) << 1 | u64::from(side == Side::Acceptor)
    }

    /// The smoothed round-trip time, once a PONG came back.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Why the connection closed, or `None` while open.
    pub fn close_reason(&self) -> Option<&ConnectionError> {
        self.closed.as_ref()
    }

    /// True once closed and our CLOSE (if one is due) went out: the driver may end.
    pub fn is_drained(&self) -> bool {
        self.closed.is_some() && self.close_frame.is_none()
    }

    /// Opens a stream of `kind`, or `None` when the peer allows no more yet (wait for
    /// [`Event::CanOpen`]). The peer learns of it with its first data (or its window).
    pub fn open(&mut self, kind: Kind) -> Result<Option<u64>, ConnectionError> {
        self.check_open()?;
        let counts = &mut self.ours[slot(kind)];
        if counts.opened >= counts.allowed {
            return Ok(None);
        }
        let id = Self::stream_id(self.side, kind, counts.opened);
        counts.opened += 1;
        let send = SendState { max: INITIAL_STREAM_WINDOW, ..SendState::default() };
        let recv = (kind == Kind::Bi).then(RecvState::new);
        self.streams.insert(id, Stream { send: Some(send), recv });
        // A window beyond the initial one goes out at once (the peer learns of the stream
        // then, in the same message as its first data if that is written now).
        self.grow_window(id);
        Ok(Some(id))
    }

    /// The peer's next stream of `kind`, if one came.
    pub fn accept(&mut self, kind: Kind) -> Result<Option<u64>, ConnectionError> {
        if let Some(id) = self.incoming[slot(kind)].pop_front() {
            return Ok(Some(id));
        }
        self.check_open()?;
        Ok(None)
    }

    fn check_open(&self) -> Result<(), ConnectionError> {
        match &self.closed {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    fn stream_error(&self) -> StreamError {
        StreamError::Connection(self.closed.clone().unwrap_or(ConnectionError::LocallyClosed))
    }

    /// How many bytes stream `id` may queue now (0: wait for [`Event::Writable`]), or why it
    /// cannot take any.
    pub fn credit(&self, id: u64) -> Result<u64, StreamError> {
        if self.closed.is_some() {
            return Err(self.stream_error());
        }
        let Some(send) = self.streams.get(&id).and_then(|s| s.send.as_ref()) else {
            return Err(StreamError::ClosedLocally);
        };
        if let Some(code) = send.stopped {
            return Err(StreamError::Stopped(code));
        }
        if send.fin || send.reset {
            return Err(StreamError::ClosedLocally);
        }
        Ok(send.max.saturating_sub(send.written).min(self.conn_send_max.saturating_sub(self.conn_written)))
    }

    /// Queues the front of `data` on stream `id` (advancing it), as much as flow control allows;
    /// 0 taken means wait for [`Event::Writable`].
    pub fn write(&mut self, id: u64, data: &mut Bytes) -> Result<usize, StreamError> {
        let take = (data.len() as u64).min(self.credit(id)?) as usize;
        if take == 0 {
            return Ok(0);
        }
        let send = self.streams.get_mut(&id).and_then(|s| s.send.as_mut()).expect("credit checked the stream");
        let chunk = data.split_to(take);
        let was_idle = send.pending.is_empty();
        send.pending.push_back(chunk);
        send.pending_len += take as u64;
        send.written += take as u64;
        self.conn_written += take as u64;
        if was_idle && !self.sendable.contains(&id) {
            self.sendable.push_back(id);
        }
        Ok(take)
    }

    /// Ends stream `id`'s sending half after what was written.
    pub fn finish(&mut self, id: u64) -> Result<(), StreamError> {
        if self.closed.is_some() {
            return Err(self.stream_error());
        }
        let Some(send) = self.streams.get_mut(&id).and_then(|s| s.send.as_mut()) else {
            return Err(StreamError::ClosedLocally);
        };
        if send.stopped.is_some() {
            // The peer has all it wants (it read what it needed and stopped): finishing is
            // moot, not an error (as in quinn, where STOP_SENDING fails writes, not finish).
            return Ok(());
        }
        if send.fin || send.reset {
            return Err(StreamError::ClosedLocally);
        }
        send.fin = true;
        if !self.sendable.contains(&id) {
            self.sendable.push_back(id);
        }
        Ok(())
    }

    /// Abandons stream `id`'s sending half: unsent bytes are dropped, the peer's reads fail
    /// with `code`.
    pub fn reset(&mut self, id: u64, code: u64) {
        if self.closed.is_some() {
            return;
        }
        let Some(send) = self.streams.get_mut(&id).and_then(|s| s.send.as_mut()) else { return };
        if send.reset || send.fin_sent || send.stopped.is_some() {
            return;
        }
        send.reset = true;
        send.pending.clear();
        send.pending_len = 0;
        Frame::Reset { id, code }.encode(&mut self.control);
        self.events.push_back(Event::Writable(id));
    }

    /// True when the peer has all it will get on stream `id`'s sending half (finished and sent,
    /// reset, or stopped); the code if the peer stopped it.
    pub fn send_settled(&self, id: u64) -> Option<Option<u64>> {
        match self.streams.get(&id).and_then(|s| s.send.as_ref()) {
            Some(send) if send.settled() => Some(send.stopped),
            Some(_) if self.closed.is_none() => None,
            Some(send) => Some(send.stopped),
            // Gone: it was settled.
            None => Some(None),
        }
    }

    /// The application dropped stream `id`'s sending half: an unfinished one is finished.
    pub fn drop_send(&mut self, id: u64) {
        if let Some(send) = self.streams.get_mut(&id).and_then(|s| s.send.as_mut()) {
            send.dropped = true;
            if !send.fin && !send.reset && send.stopped.is_none() && self.closed.is_none() {
                send.fin = true;
                if !self.sendable.contains(&id) {
                    self.sendable.push_back(id);
                }
            }
        }
        self.maybe_remove(id);
    }

    /// Reads up to `max` bytes of stream `id`.
    pub fn read(&mut self, now: Instant, id: u64, max: usize) -> Result<Read, StreamError> {
        let srtt = self.srtt;
        let max_window = self.config.max_stream_window;
        let Some(recv) = self.streams.get_mut(&id).and_then(|s| s.recv.as_mut()) else {
            return Err(StreamError::ClosedLocally);
        };
        if recv.stopped {
            return Err(StreamError::ClosedLocally);
        }
        if let Some(code) = recv.reset {
            recv.seen_end = true;
            return Err(StreamError::Reset(code));
        }
        let Some(front) = recv.buffered.front_mut() else {
            if recv.fin {
                recv.seen_end = true;
                return Ok(Read::End);
            }
            return match &self.closed {
                Some(reason) => Err(StreamError::Connection(reason.clone())),
                None => Ok(Read::Blocked),
            };
        };
        let chunk = if front.len() <= max { recv.buffered.pop_front().expect("a front") } else { front.split_to(max) };
        recv.consumed += chunk.len() as u64;
        // Auto-tuning: a window used up within two round trips of the last raise is too small
        // to keep the link full; double it (to the configured ceiling).
        if recv.max - recv.consumed < recv.window / 2 && !recv.fin {
            // (At least 1 ms: a loopback RTT measures about zero.)
            let rtt = srtt.unwrap_or(Duration::from_millis(100)).max(Duration::from_millis(1));
            if recv.raised.is_some_and(|at| now.saturating_duration_since(at) < rtt * 2) {
                recv.window = (recv.window * 2).min(max_window.max(INITIAL_STREAM_WINDOW));
            }
            recv.max = recv.consumed + recv.window;
            recv.raised = Some(now);
            self.windows_due.insert(id);
        }
        self.conn_consumed += chunk.len() as u64;
        self.raise_conn_window(Some(now));
        Ok(Read::Data(chunk))
    }

    fn raise_conn_window(&mut self, now: Option<Instant>) {
        let left = self.conn_recv_max - self.conn_consumed;
        if left >= self.conn_window / 2 && now.is_some() {
            return;
        }
        self.conn_recv_max = self.conn_consumed + self.conn_window;
        self.conn_raised = now.or(self.conn_raised);
        self.conn_window_due = true;
    }

    /// Tells the peer to stop sending on stream `id`; buffered bytes are dropped.
    pub fn stop(&mut self, id: u64, code: u64) {
        let Some(recv) = self.streams.get_mut(&id).and_then(|s| s.recv.as_mut()) else { return };
        if recv.stopped || recv.seen_end {
            return;
        }
        let ended = recv.fin || recv.reset.is_some();
        recv.stopped = true;
        let dropped: u64 = recv.buffered.drain(..).map(|b| b.len() as u64).sum();
        recv.consumed += dropped;
        self.conn_consumed += dropped;
        if !ended && self.closed.is_none() {
            Frame::Stop { id, code }.encode(&mut self.control);
        }
        self.raise_conn_window(None);
    }

    /// The application dropped stream `id`'s receiving half: one not read to its end is
    /// stopped with code 0.
    pub fn drop_recv(&mut self, id: u64) {
        if let Some(recv) = self.streams.get_mut(&id).and_then(|s| s.recv.as_mut()) {
            recv.dropped = true;
            if !recv.seen_end && !recv.stopped {
                self.stop(id, 0);
            }
        }
        self.maybe_remove(id);
    }

    /// Forgets a stream both sides are done with; a peer's stream gives its slot back.
    fn maybe_remove(&mut self, id: u64) {
        if !self.streams.get(&id).is_some_and(Stream::done) {
            return;
        }
        self.streams.remove(&id);
        self.windows_due.remove(&id);
        if !self.is_ours(id) {
            self.theirs_closed[slot(kind_of(id))] += 1;
            self.allow_more(kind_of(id));
        }
    }

    /// Closes the connection with `code` and `reason`: everything after is refused, the CLOSE
    /// goes out with the next message.
    pub fn close(&mut self, code: u64, reason: &[u8]) {
        if self.closed.is_some() {
            return;
        }
        self.close_frame = Some((code, reason.to_vec()));
        self.set_closed(ConnectionError::LocallyClosed);
    }

    /// The channel under the connection ended or failed (the driver says how).
    pub fn channel_lost(&mut self, reason: ConnectionError) {
        if self.closed.is_none() {
            self.set_closed(reason);
        }
        self.close_frame = None;
    }

    fn set_closed(&mut self, reason: ConnectionError) {
        self.closed = Some(reason);
        self.events.push_back(Event::Closed);
        for (id, stream) in &mut self.streams {
            if stream.recv.is_some() {
                self.events.push_back(Event::Readable(*id));
            }
            if stream.send.is_some() {
                self.events.push_back(Event::Writable(*id));
            }
        }
        self.events.push_back(Event::CanOpen(Kind::Bi));
        self.events.push_back(Event::CanOpen(Kind::Uni));
        self.events.push_back(Event::Incoming(Kind::Bi));
        self.events.push_back(Event::Incoming(Kind::Uni));
        self.sendable.clear();
        self.control.clear();
    }

    /// One received message. A protocol violation closes the connection (the CLOSE says why).
    pub fn handle_message(&mut self, now: Instant, message: &[u8]) {
        if self.closed.is_some() {
            return;
        }
        self.last_received = Some(now);
        for frame in Frames::new(message) {
            let result = frame.map_err(Violation::Frame).and_then(|frame| self.handle_frame(now, frame));
            if let Err(violation) = result {
                let reason = violation.to_string();
                self.close(PROTOCOL_VIOLATION, reason.as_bytes());
                self.closed = Some(ConnectionError::Transport(format!("the peer broke the stream protocol: {reason}")));
                return;
            }
            if self.closed.is_some() {
                return;
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame<'_>) -> Result<(), Violation> {
        match frame {
            Frame::Data { id, data, fin } => self.handle_data(id, data, fin)?,
            Frame::Reset { id, code } => {
                if let Some(recv) = self.recv_of_peer_stream(id)? {
                    if recv.reset.is_none() && !recv.fin {
                        recv.reset = Some(code);
                        let dropped: u64 = recv.buffered.drain(..).map(|b| b.len() as u64).sum();
                        recv.consumed += dropped;
                        self.conn_consumed += dropped;
                        self.events.push_back(Event::Readable(id));
                        self.maybe_remove(id);
                    }
                }
            }
            Frame::Stop { id, code } => {
                if let Some(send) = self.send_of(id)? {
                    if send.stopped.is_none() && !send.reset && !send.fin_sent {
                        send.stopped = Some(code);
                        send.pending.clear();
                        send.pending_len = 0;
                        // QUIC answers STOP_SENDING with a RESET_STREAM; so does this.
                        Frame::Reset { id, code }.encode(&mut self.control);
                        self.events.push_back(Event::Writable(id));
                        self.maybe_remove(id);
                    }
                }
            }
            Frame::Window { id, max } => {
                if let Some(send) = self.send_of(id)? {
                    if max > send.max {
                        send.max = max;
                        self.events.push_back(Event::Writable(id));
                    }
                }
            }
            Frame::ConnWindow { max } => {
                if max > self.conn_send_max {
                    self.conn_send_max = max;
                    let writable: Vec<u64> =
                        self.streams.iter().filter(|(_, s)| s.send.is_some()).map(|(id, _)| *id).collect();
                    self.events.extend(writable.into_iter().map(Event::Writable));
                }
            }
            Frame::Streams { kind, count } => {
                let counts = &mut self.ours[slot(kind)];
                if count > counts.allowed {
                    counts.allowed = count;
                    self.events.push_back(Event::CanOpen(kind));
                }
            }
            Frame::Close { code, reason } => {
                let reason = String::from_utf8_lossy(reason).into_owned();
                self.set_closed(ConnectionError::Closed { code, reason });
            }
            Frame::Ping { id } => self.pong_due = Some(id),
            Frame::Pong { id } => {
                if let Some((sent_id, at)) = self.ping_out
                    && sent_id == id
                {
                    let sample = now.saturating_duration_since(at);
                    self.srtt = Some(match self.srtt {
                        None => sample,
                        Some(srtt) => (srtt * 7 + sample) / 8,
                    });
                    self.ping_out = None;
                }
            }
        }
        Ok(())
    }

    /// Checks that a frame may name stream `id`: one of ours we opened, or one of the peer's
    /// within its limit. A peer's stream opens with the first frame that names it, and so do
    /// its lower-numbered ones of the kind (as in QUIC: frames of different streams may arrive
    /// in any order the sender wrote them).
    fn touch(&mut self, id: u64) -> Result<(), Violation> {
        let kind = kind_of(id);
        let index = id >> 2;
        if self.is_ours(id) {
            if index >= self.ours[slot(kind)].opened {
                return Err(Violation::Stream(id, "a stream we never opened"));
            }
            return Ok(());
        }
        let counts = self.theirs[slot(kind)];
        if index < counts.opened {
            return Ok(());
        }
        if index >= counts.allowed {
            return Err(Violation::Stream(id, "more streams than allowed"));
        }
        for index in counts.opened..=index {
            let id = Self::stream_id(self.peer_side(), kind, index);
            let send = (kind == Kind::Bi).then(|| SendState { max: INITIAL_STREAM_WINDOW, ..SendState::default() });
            self.streams.insert(id, Stream { send, recv: Some(RecvState::new()) });
            self.grow_window(id);
            self.incoming[slot(kind)].push_back(id);
            self.events.push_back(Event::Incoming(kind));
        }
        self.theirs[slot(kind)].opened = index + 1;
        Ok(())
    }

    fn peer_side(&self) -> Side {
        match self.side {
            Side::Dialler => Side::Acceptor,
            Side::Acceptor => Side::Dialler,
        }
    }

    fn handle_data(&mut self, id: u64, data: &[u8], fin: bool) -> Result<(), Violation> {
        if self.is_ours(id) && kind_of(id) == Kind::Uni {
            return Err(Violation::Stream(id, "data on a unidirectional stream of ours"));
        }
        self.touch(id)?;
        let len = data.len() as u64;
        self.conn_received += len;
        if self.conn_received > self.conn_recv_max {
            return Err(Violation::Flow("the connection's window"));
        }
        let Some(recv) = self.streams.get_mut(&id).and_then(|s| s.recv.as_mut()) else {
            // A stream this side is done with: its bytes count and go.
            self.conn_consumed += len;
            self.raise_conn_window(None);
            return Ok(());
        };
        if recv.fin || recv.reset.is_some() {
            return Err(Violation::Stream(id, "data after the end"));
        }
        if recv.received + len > recv.max {
            return Err(Violation::Flow("a stream's window"));
        }
        recv.received += len;
        recv.fin = fin;
        if recv.stopped {
            recv.consumed += len;
            self.conn_consumed += len;
            self.raise_conn_window(None);
        } else {
            if !data.is_empty() {
                recv.buffered.push_back(Bytes::copy_from_slice(data));
            }
            if !data.is_empty() || fin {
                self.events.push_back(Event::Readable(id));
            }
        }
        if fin {
            self.maybe_remove(id);
        }
        Ok(())
    }

    fn recv_of_peer_stream(&mut self, id: u64) -> Result<Option<&mut RecvState>, Violation> {
        if self.is_ours(id) && kind_of(id) == Kind::Uni {
            return Err(Violation::Stream(id, "a reset of a unidirectional stream of ours"));
        }
        self.touch(id)?;
        Ok(self.streams.get_mut(&id).and_then(|s| s.recv.as_mut()))
    }

    fn send_of(&mut self, id: u64) -> Result<Option<&mut SendState>, Violation> {
        if !self.is_ours(id) && kind_of(id) == Kind::Uni {
            return Err(Violation::Stream(id, "a stop or window for the peer's unidirectional stream"));
        }
        self.touch(id)?;
        Ok(self.streams.get_mut(&id).and_then(|s| s.send.as_mut()))
    }

    /// The next message to send, written into `out` (cleared first, at most
    /// [`MAX_MESSAGE`] bytes); false when there is nothing to send.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        if let Some((code, reason)) = self.close_frame.take() {
            Frame::Close { code, reason: &reason }.encode(out);
            self.last_sent = Some(now);
            return true;
        }
        if self.closed.is_some() {
            return false;
        }
        out.append(&mut self.control);
        if let Some(id) = self.pong_due.take() {
            Frame::Pong { id }.encode(out);
        }
        for kind in [Kind::Bi, Kind::Uni] {
            if std::mem::take(&mut self.streams_due[slot(kind)]) {
                Frame::Streams { kind, count: self.theirs[slot(kind)].allowed }.encode(out);
            }
        }
        if std::mem::take(&mut self.conn_window_due) {
            Frame::ConnWindow { max: self.conn_recv_max }.encode(out);
        }
        for id in std::mem::take(&mut self.windows_due) {
            if let Some(recv) = self.streams.get(&id).and_then(|s| s.recv.as_ref())
                && !recv.stopped
                && !recv.fin
            {
                Frame::Window { id, max: recv.max }.encode(out);
            }
        }
        let keep_alive = self.last_sent.is_none_or(|at| now.saturating_duration_since(at) >= self.config.keep_alive);
        if (self.ping_out.is_none() && self.srtt.is_none()) || (keep_alive && self.ping_out.is_none()) {
            // The first message measures the round trip; later ones keep the connection alive.
            self.next_ping_id += 1;
            Frame::Ping { id: self.next_ping_id }.encode(out);
            self.ping_out = Some((self.next_ping_id, now));
        }
        self.fill_data(out);
        if out.is_empty() {
            return false;
        }
        self.last_sent = Some(now);
        true
    }

    /// Appends DATA frames from the streams in turn while there is room.
    fn fill_data(&mut self, out: &mut Vec<u8>) {
        let mut turns = self.sendable.len();
        while turns > 0 && out.len() + MAX_DATA_HEADER < MAX_MESSAGE {
            turns -= 1;
            let Some(id) = self.sendable.pop_front() else { break };
            let Some(send) = self.streams.get_mut(&id).and_then(|s| s.send.as_mut()) else { continue };
            if send.reset || send.stopped.is_some() || send.fin_sent || (send.pending.is_empty() && !send.fin) {
                continue;
            }
            let room = MAX_MESSAGE - out.len() - MAX_DATA_HEADER;
            let mut len = 0;
            let header_at = out.len();
            // Header written after the bytes are known: reserve the longest.
            out.resize(header_at + MAX_DATA_HEADER, 0);
            while len < room {
                let Some(front) = send.pending.front_mut() else { break };
                let take = front.len().min(room - len);
                out.extend_from_slice(&front[..take]);
                front.advance(take);
                if front.is_empty() {
                    send.pending.pop_front();
                }
                len += take;
            }
            send.pending_len -= len as u64;
            let fin = send.fin && send.pending.is_empty();
            if fin {
                send.fin_sent = true;
            }
            // Encode the real header and move it flush against the bytes.
            let mut header = Vec::with_capacity(MAX_DATA_HEADER);
            Frame::Data { id, data: &[], fin }.encode(&mut header);
            header.pop();
            crate::wire::mux::put_varint(&mut header, len as u64);
            let start = header_at + MAX_DATA_HEADER - header.len();
            out[start..header_at + MAX_DATA_HEADER].copy_from_slice(&header);
            out.drain(header_at..start);
            if !send.pending.is_empty() || (send.fin && !send.fin_sent) {
                self.sendable.push_back(id);
            }
            if fin {
                self.events.push_back(Event::Writable(id));
                self.maybe_remove(id);
            } else if len > 0 {
                self.events.push_back(Event::Writable(id));
            }
        }
    }

    /// True when [`Mux::poll_transmit`] has something to send now.
    pub fn wants_transmit(&self) -> bool {
        self.close_frame.is_some()
            || (self.closed.is_none()
                && (!self.control.is_empty()
                    || self.pong_due.is_some()
                    || self.conn_window_due
                    || self.streams_due.iter().any(|d| *d)
                    || !self.windows_due.is_empty()
                    || (self.ping_out.is_none() && self.srtt.is_none())
                    || self.sendable_has_data()))
    }

    fn sendable_has_data(&self) -> bool {
        self.sendable.iter().any(|id| {
            self.streams
                .get(id)
                .and_then(|s| s.send.as_ref())
                .is_some_and(|s| !s.reset && s.stopped.is_none() && !s.fin_sent && (!s.pending.is_empty() || s.fin))
        })
    }

    /// When [`Mux::handle_timeout`] wants to run: the keep-alive or the idle timeout.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let idle = self.last_received.map(|at| at + self.config.idle_timeout);
        let keep_alive = self.last_sent.map(|at| at + self.config.keep_alive);
        match (idle, keep_alive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers: the idle timeout closes the connection; the keep-alive makes
    /// [`Mux::poll_transmit`] send a PING.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if self.last_received.is_none() {
            self.last_received = Some(now);
        }
        if self.last_received.is_some_and(|at| now.saturating_duration_since(at) >= self.config.idle_timeout) {
            self.set_closed(ConnectionError::TimedOut);
            return;
        }
        if self.last_sent.is_none_or(|at| now.saturating_duration_since(at) >= self.config.keep_alive) {
            // A lost PONG must not stop the keep-alives.
            self.ping_out = None;
            self.next_ping_id += 1;
            Frame::Ping { id: self.next_ping_id }.encode(&mut self.control);
            self.ping_out = Some((self.next_ping_id, now));
        }
    }

    /// What changed since the last call, one at a time.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes buffered for the application, over all streams (for tests and limits).
    pub fn buffered(&self) -> u64 {
        self.streams
            .values()
            .filter_map(|s| s.recv.as_ref())
            .flat_map(|r| r.buffered.iter())
            .map(|b| b.len() as u64)
            .sum()
    }

    /// Live streams (for tests and limits).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

/// Feeds `data` to an acceptor's multiplexer at `now` as its peer's messages (for the fuzz target):
/// each message is a length byte and that many bytes. Never panics; whatever the peer sends,
/// the acceptor buffers no more than its connection window and keeps no more streams than it
/// allowed.
pub fn fuzz_messages(now: Instant, data: &[u8]) {
    let mut mux = Mux::new(Side::Acceptor, Config::unadmitted());
    let mut rest = data;
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        crate::wire::mux::fuzz_frames(message);
        mux.handle_message(now, message);
        while mux.poll_transmit(now, &mut out) {
            assert!(out.len() <= MAX_MESSAGE);
        }
        while let Ok(Some(id)) = mux.accept(Kind::Bi) {
            let _ = mux.read(now, id, 1000);
        }
        assert!(mux.buffered() <= INITIAL_CONN_WINDOW, "buffered beyond the window");
        assert!(mux.stream_count() as u64 <= INITIAL_STREAMS_BI + INITIAL_STREAMS_UNI, "streams beyond the limit");
    }
}

/// A frame the peer should not have sent.
#[derive(Debug, thiserror::Error)]
enum Violation {
    #[error("{0}")]
    Frame(FrameError),
    #[error("stream {0}: {1}")]
    Stream(u64, &'static str),
    #[error("more data than {0} allows")]
    Flow(&'static str),
}

#[cfg(test)]
mod tests;
