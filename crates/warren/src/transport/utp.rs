//! The uTP driver: one UDP socket of its own, one task that feeds every connection's
//! [`crate::state::utp::Connection`] its datagrams and timers and sends what they give, and
//! [`UtpStream`]s (`AsyncRead` + `AsyncWrite`) for the application. Plain BEP 29, no
//! encryption: `warren utp listen/send` speak it to any implementation, and warren peers put
//! Noise and the multiplexer on top (see docs/transports.md).
//!
//! Why uTP has a socket of its own instead of sharing QUIC's: a uTP SYN's first byte (0x41)
//! is also a valid QUIC short-header first byte, so sorting them means looking up connection
//! ids of both protocols per datagram. QUIC's socket already carries warren's relay and
//! path-validation frames, and its receive path is the one throughput depends on. The cost is
//! that a uTP connection cannot ride a hole QUIC punched; punching for uTP is left for later.
//!
//! Limits: 2,048 connections per socket, 256 of them half-open (a SYN answered, nothing else
//! heard), 16 half-open per source address; SYNs beyond them get no answer. Datagrams for no
//! connection are dropped unanswered (no RESET: nothing to amplify).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::admission;
use crate::state::utp::{Closed, Config, Connection, Event, State};
use crate::wire::utp::{Packet, Type};

/// Connections one socket keeps.
pub const MAX_CONNECTIONS: usize = 2048;
/// Half-open connections one socket keeps.
pub const MAX_HALF_OPEN: usize = 256;
/// Half-open connections from one source.
pub const MAX_HALF_OPEN_PER_SOURCE: usize = 16;
/// How long a closed connection stays to answer its peer's last retransmissions.
const LINGER: Duration = Duration::from_secs(5);
/// Accepted connections waiting for [`UtpSocket::accept`].
const ACCEPT_QUEUE: usize = 64;

struct Slot {
    conn: Connection,
    reader: Option<Waker>,
    writer: Option<Waker>,
    connected: Option<Waker>,
    closed_at: Option<Instant>,
}

#[derive(Default)]
struct Table {
    conns: HashMap<(SocketAddr, u16), Slot>,
    stats: Stats,
}

/// What a socket did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// SYNs answered.
    pub accepted: u64,
    /// SYNs left unanswered (limits, or nobody accepting).
    pub refused: u64,
    /// Datagrams that were not uTP or named no connection.
    pub dropped: u64,
}

struct Inner {
    /// quinn's UDP socket: segmentation offload both ways where the kernel has it (GSO sends a
    /// run of equal-sized datagrams to one peer in one call, GRO hands several over at once).
    udp: Arc<dyn quinn::AsyncUdpSocket>,
    epoch: Instant,
    config: Config,
    table: Mutex<Table>,
    wake: Notify,
    incoming: Mutex<Option<mpsc::Sender<UtpStream>>>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<UtpStream>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// A uTP socket: dials, accepts, and drives its connections. Cheap to clone.
#[derive(Clone)]
pub struct UtpSocket {
    inner: Arc<Inner>,
}

fn random_u16() -> u16 {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).expect("the OS random source");
    u16::from_ne_bytes(bytes)
}

impl UtpSocket {
    /// Binds `addr` and starts the driver task. It accepts nothing until
    /// [`UtpSocket::listen`].
    pub async fn bind(addr: SocketAddr, config: Config) -> io::Result<Self> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        let _ = socket2::SockRef::from(&std_socket).set_recv_buffer_size(4 << 20);
        let _ = socket2::SockRef::from(&std_socket).set_send_buffer_size(4 << 20);
        let udp = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std_socket)?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let inner = Arc::new(Inner {
            udp,
            epoch: Instant::now(),
            config,
            table: Mutex::default(),
            wake: Notify::new(),
            incoming: Mutex::new(Some(tx)),
            accepted: tokio::sync::Mutex::new(rx),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.tasks.spawn(drive(inner.clone(), inner.stop.clone()));
        inner.incoming.lock().expect("incoming lock").take();
        Ok(Self { inner })
    }

    /// Starts accepting incoming connections.
    pub fn listen(&self) {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        *self.inner.incoming.lock().expect("incoming lock") = Some(tx);
        *self.inner.accepted.try_lock().expect("not accepting yet") = rx;
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.udp.local_addr()
    }

    /// What the socket did so far.
    pub fn stats(&self) -> Stats {
        self.inner.table.lock().expect("table lock").stats
    }

    /// The next accepted connection (after [`UtpSocket::listen`]).
    pub async fn accept(&self) -> io::Result<UtpStream> {
        self.inner
            .accepted
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the uTP socket is closed"))
    }

    /// Connects to `addr` and completes the handshake.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UtpStream> {
        let key = {
            let mut table = self.inner.table.lock().expect("table lock");
            if table.conns.len() >= MAX_CONNECTIONS {
                return Err(io::Error::other("too many uTP connections"));
            }
            let mut recv_id = random_u16();
            while table.conns.contains_key(&(addr, recv_id))
                || table.conns.contains_key(&(addr, recv_id.wrapping_add(1)))
            {
                recv_id = random_u16();
            }
            let now = Instant::now();
            let conn = Connection::connect(now, self.inner.epoch, self.inner.config, recv_id, random_u16());
            table.conns.insert((addr, recv_id), Slot::new(conn));
            (addr, recv_id)
        };
        self.inner.wake.notify_one();
        let stream = UtpStream { inner: self.inner.clone(), key };
        std::future::poll_fn(|cx| {
            let mut table = self.inner.table.lock().expect("table lock");
            let Some(slot) = table.conns.get_mut(&key) else {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "uTP connect failed")));
            };
            match slot.conn.state() {
                State::Connected => Poll::Ready(Ok(())),
                State::Closed => Poll::Ready(Err(closed_error(slot.conn.close_reason()))),
                _ => {
                    slot.connected = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        Ok(stream)
    }

    /// Stops the driver (connections end without a FIN) and waits for it.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Slot {
    fn new(conn: Connection) -> Self {
        Self { conn, reader: None, writer: None, connected: None, closed_at: None }
    }

    /// Wakes whoever the connection's events concern.
    fn dispatch(&mut self, now: Instant) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::Connected => wake(&mut self.connected),
                Event::Readable => wake(&mut self.reader),
                Event::Writable => wake(&mut self.writer),
                Event::Closed(_) => {
                    self.closed_at.get_or_insert(now);
                    wake(&mut self.connected);
                    wake(&mut self.reader);
                    wake(&mut self.writer);
                }
            }
        }
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

fn closed_error(reason: Option<Closed>) -> io::Error {
    match reason {
        Some(Closed::Reset) => io::Error::new(io::ErrorKind::ConnectionReset, "the uTP peer reset the connection"),
        Some(Closed::TimedOut) => io::Error::new(io::ErrorKind::TimedOut, "the uTP connection timed out"),
        Some(Closed::Aborted) => io::Error::new(io::ErrorKind::ConnectionAborted, "the uTP connection was aborted"),
        Some(Closed::Finished) | None => io::Error::new(io::ErrorKind::BrokenPipe, "the uTP connection is closed"),
    }
}

/// The driver: datagrams in, timers, datagrams out. It ends at [`UtpSocket::shutdown`], or
/// when it holds the last handle on the socket (no socket or stream is left).
async fn drive(inner: Arc<Inner>, stop: CancellationToken) {
    let segments = inner.udp.max_receive_segments().max(1);
    let mut buf = vec![0u8; 65_536 * segments.min(4)];
    let mut meta = [quinn::udp::RecvMeta::default()];
    let mut out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut scratch = Vec::with_capacity(2048);
    let mut poller = inner.udp.clone().create_io_poller();
    loop {
        if Arc::strong_count(&inner) == 1 {
            return;
        }
        let next = {
            let table = inner.table.lock().expect("table lock");
            table.conns.values().filter_map(|s| s.conn.poll_timeout()).min()
        };
        // At least once a second: to notice that the last handle went.
        let next = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let sleep = tokio::time::sleep_until(next.into());
        let mut received = false;
        tokio::select! {
            () = stop.cancelled() => return,
            got = std::future::poll_fn(|cx| {
                let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
                inner.udp.poll_recv(cx, &mut bufs, &mut meta)
            }) => received = got.is_ok(),
            () = inner.wake.notified() => {}
            () = sleep => {}
        }
        let now = Instant::now();
        {
            let mut table = inner.table.lock().expect("table lock");
            // What came, then whatever else is queued, without waiting.
            let mut rounds = 0;
            while received && rounds < 256 {
                let m = meta[0];
                for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                    handle_datagram(&inner, &mut table, now, m.addr, datagram);
                }
                rounds += 1;
                let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
                let mut cx = Context::from_waker(Waker::noop());
                received = matches!(inner.udp.poll_recv(&mut cx, &mut bufs, &mut meta), Poll::Ready(Ok(_)));
            }
            let mut gone = Vec::new();
            for (key, slot) in &mut table.conns {
                if slot.conn.poll_timeout().is_some_and(|at| at <= now) {
                    slot.conn.handle_timeout(now);
                }
                while slot.conn.poll_transmit(now, &mut scratch) {
                    out.push((key.0, std::mem::replace(&mut scratch, Vec::with_capacity(2048))));
                }
                slot.dispatch(now);
                if slot.closed_at.is_some_and(|at| now.saturating_duration_since(at) >= LINGER) {
                    gone.push(*key);
                }
            }
            for key in gone {
                table.conns.remove(&key);
            }
        }
        send_batched(&inner, &mut poller, &mut out).await;
    }
}

/// Sends `out` (emptying it): each run of datagrams to one peer, all of one size but perhaps the
/// last, goes in one call (GSO) where the socket can.
async fn send_batched(
    inner: &Inner,
    poller: &mut Pin<Box<dyn quinn::UdpPoller>>,
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
) {
    let max_segments = inner.udp.max_transmit_segments().clamp(1, 64);
    let mut batch = Vec::with_capacity(64 * 1500);
    let mut index = 0;
    while index < out.len() {
        let (to, size) = (out[index].0, out[index].1.len());
        batch.clear();
        let mut count = 0;
        while index < out.len()
            && count < max_segments
            && out[index].0 == to
            && out[index].1.len() <= size
            && batch.len() + out[index].1.len() <= 65_000
        {
            let last = out[index].1.len() < size;
            batch.extend_from_slice(&out[index].1);
            index += 1;
            count += 1;
            if last {
                break;
            }
        }
        let transmit = quinn::udp::Transmit {
            destination: to,
            ecn: None,
            contents: &batch,
            segment_size: (count > 1).then_some(size),
            src_ip: None,
        };
        loop {
            match inner.udp.try_send(&transmit) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await.is_err() {
                        break;
                    }
                }
                // Lost like any datagram: uTP resends.
                _ => break,
            }
        }
    }
    out.clear();
}

fn handle_datagram(inner: &Arc<Inner>, table: &mut Table, now: Instant, from: SocketAddr, datagram: &[u8]) {
    let Ok(packet) = Packet::parse(datagram) else {
        table.stats.dropped += 1;
        return;
    };
    if packet.kind == Type::Syn {
        // Ours for it is the SYN's id + 1; a repeated SYN goes to the connection it made.
        let key = (from, packet.connection_id.wrapping_add(1));
        if let Some(slot) = table.conns.get_mut(&key) {
            slot.conn.handle_packet(now, &packet);
            return;
        }
        let sender = inner.incoming.lock().expect("incoming lock").clone();
        let Some(sender) = sender.filter(|_| admit(table, from)) else {
            table.stats.refused += 1;
            return;
        };
        let Ok(permit) = sender.try_reserve() else {
            table.stats.refused += 1;
            return;
        };
        let conn = Connection::accept(now, inner.epoch, inner.config, &packet, random_u16());
        table.conns.insert(key, Slot::new(conn));
        table.stats.accepted += 1;
        permit.send(UtpStream { inner: inner.clone(), key });
        return;
    }
    match table.conns.get_mut(&(from, packet.connection_id)) {
        Some(slot) => slot.conn.handle_packet(now, &packet),
        None => table.stats.dropped += 1,
    }
}

/// May a SYN from `from` open a connection?
fn admit(table: &Table, from: SocketAddr) -> bool {
    if table.conns.len() >= MAX_CONNECTIONS {
        return false;
    }
    let source: IpAddr = admission::source(from);
    let half_open = || table.conns.iter().filter(|(_, s)| s.conn.state() == State::SynRecv);
    half_open().count() < MAX_HALF_OPEN
        && half_open().filter(|((addr, _), _)| admission::source(*addr) == source).count() < MAX_HALF_OPEN_PER_SOURCE
}

/// One uTP connection, for the application: `AsyncRead` and `AsyncWrite`; `shutdown` sends the
/// FIN. Dropping it closes it gracefully too.
pub struct UtpStream {
    inner: Arc<Inner>,
    key: (SocketAddr, u16),
}

impl std::fmt::Debug for UtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtpStream").field("peer", &self.key.0).finish()
    }
}

impl UtpStream {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.key.0
    }

    fn with<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        let mut table = self.inner.table.lock().expect("table lock");
        table.conns.get_mut(&self.key).map(f)
    }

    /// Completes when the connection has ended (both FINs acknowledged, or otherwise); why.
    pub async fn finished(&self) -> Option<Closed> {
        std::future::poll_fn(|cx| {
            let state = self.with(|slot| match slot.conn.close_reason() {
                Some(reason) => Poll::Ready(Some(reason)),
                None => {
                    slot.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            });
            state.unwrap_or(Poll::Ready(None))
        })
        .await
    }

    /// Completes when the peer has acknowledged everything written and the FIN (after
    /// `shutdown`), whether or not it has closed its own side; false if the connection ended
    /// first.
    pub async fn acknowledged(&self) -> bool {
        std::future::poll_fn(|cx| {
            let state = self.with(|slot| {
                if slot.conn.all_acknowledged() {
                    Poll::Ready(true)
                } else if slot.conn.close_reason().is_some() {
                    Poll::Ready(false)
                } else {
                    slot.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            });
            state.unwrap_or(Poll::Ready(false))
        })
        .await
    }

    /// Round-trip time and congestion window, for statistics.
    pub fn stats(&self) -> Option<(Option<Duration>, usize, u64)> {
        self.with(|slot| (slot.conn.rtt(), slot.conn.window(), slot.conn.retransmitted()))
    }
}

impl AsyncRead for UtpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let result = self.with(|slot| {
            let space = buf.initialize_unfilled();
            match slot.conn.read(space) {
                Some(n) => {
                    buf.advance(n);
                    if n == 0 && slot.conn.close_reason().is_some_and(|r| r != Closed::Finished) {
                        return Poll::Ready(Err(closed_error(slot.conn.close_reason())));
                    }
                    Poll::Ready(Ok(n))
                }
                None => {
                    slot.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        match result {
            Some(Poll::Ready(Ok(n))) => {
                if n > 0 {
                    // The window may have reopened: the driver tells the peer.
                    self.inner.wake.notify_one();
                }
                Poll::Ready(Ok(()))
            }
            Some(Poll::Ready(Err(error))) => Poll::Ready(Err(error)),
            Some(Poll::Pending) => Poll::Pending,
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for UtpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = self.with(|slot| {
            if slot.conn.close_reason().is_some() {
                return Poll::Ready(Err(closed_error(slot.conn.close_reason())));
            }
            match slot.conn.write(buf) {
                0 if !buf.is_empty() => {
                    slot.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
                n => Poll::Ready(Ok(n)),
            }
        });
        let result = result.unwrap_or_else(|| Poll::Ready(Err(closed_error(None))));
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.inner.wake.notify_one();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|slot| slot.conn.close());
        self.inner.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        self.with(|slot| slot.conn.close());
        self.inner.wake.notify_one();
    }
}
