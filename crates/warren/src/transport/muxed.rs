//! The driver of [`crate::state::mux`] over a Noise-secured byte stream (TCP today, uTP next):
//! a [`TransportConnection`] whose streams are the multiplexer's.
//!
//! Two tasks per connection: the reader decrypts each message and hands it to the
//! multiplexer; the writer takes the multiplexer's messages, encrypts them (outside the lock)
//! and writes them in batches, and runs its timers. Streams call the multiplexer under the
//! same lock and are woken by its events. Each direction counts its own Noise nonces, so the
//! two tasks never wait for each other's crypto.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use super::connection::{RecvHalf, RecvStream, SendHalf, SendStream, TransportConnection};
use super::noise::{self, Secured};
use crate::RemoteIdentity;
use crate::error::{ConnectionError, StreamError};
use crate::hook::BoxFuture;
use crate::state::mux::{Config, Event, Mux, Read, Side};
use crate::state::path_table::Path;
use crate::wire::mux::Kind;

/// Bytes of encrypted messages the writer hands the socket at once.
const WRITE_BATCH: usize = 256 * 1024;

/// How long a closed connection keeps reading (and dropping) so that its CLOSE is not lost to
/// a TCP reset: the peer closes when it reads the CLOSE.
const LINGER: Duration = Duration::from_secs(2);

/// The round-trip time reported before the first PONG.
const INITIAL_RTT: Duration = Duration::from_millis(100);

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: something to send, or a timer moved.
    wake_writer: Notify,
    /// Stream openers and acceptors wait here, per kind.
    can_open: [Notify; 2],
    incoming: [Notify; 2],
    /// `stopped()` waiters: woken on every change of a sending half.
    settled: Notify,
    closed: watch::Sender<Option<ConnectionError>>,
    /// The connection's and its streams' handles alive: the last one going closes the
    /// connection (as quinn's do).
    handles: AtomicUsize,
}

struct State {
    mux: Mux,
    readers: HashMap<u64, Waker>,
    writers: HashMap<u64, Waker>,
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Bi => 0,
        Kind::Uni => 1,
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes whoever the multiplexer's events concern; wakes the writer if it has output.
    fn dispatch(&self, state: &mut State) {
        while let Some(event) = state.mux.poll_event() {
            match event {
                Event::Readable(id) => {
                    if let Some(waker) = state.readers.remove(&id) {
                        waker.wake();
                    }
                }
                Event::Writable(id) => {
                    if let Some(waker) = state.writers.remove(&id) {
                        waker.wake();
                    }
                    self.settled.notify_waiters();
                }
                Event::Incoming(kind) => self.incoming[slot(kind)].notify_waiters(),
                Event::CanOpen(kind) => self.can_open[slot(kind)].notify_waiters(),
                Event::Closed => {
                    let reason = state.mux.close_reason().cloned();
                    self.closed.send_replace(reason);
                    state.readers.drain().for_each(|(_, w)| w.wake());
                    state.writers.drain().for_each(|(_, w)| w.wake());
                    self.settled.notify_waiters();
                }
            }
        }
        if state.mux.wants_transmit() || state.mux.close_reason().is_some() {
            self.wake_writer.notify_one();
        }
    }

    fn hold(self: &Arc<Self>) -> Arc<Self> {
        self.handles.fetch_add(1, Ordering::Relaxed);
        self.clone()
    }

    /// A handle went: the last one closes the connection.
    fn release(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.with(|s| s.mux.close(0, b"dropped"));
        }
    }

    /// Runs `f` on the multiplexer and dispatches what it caused.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.lock();
        let out = f(&mut state);
        self.dispatch(&mut state);
        out
    }
}

/// A connection over a Noise-secured byte stream.
pub struct MuxConnection {
    shared: Arc<Shared>,
    id: u64,
    transport: &'static str,
    peer: RemoteIdentity,
    remote: SocketAddr,
}

impl std::fmt::Debug for MuxConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxConnection")
            .field("transport", &self.transport)
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("remote", &self.remote)
            .finish()
    }
}

/// What a new connection needs: the byte stream's halves, the keys, which side, what the peer
/// may do at first.
pub struct Parts<R, W> {
    /// The byte stream's reading half.
    pub read: R,
    /// Its writing half.
    pub write: W,
    /// The handshake's result.
    pub secured: Secured,
    /// Dialler or acceptor.
    pub side: Side,
    /// What the peer may do until [`TransportConnection::admit`].
    pub config: Config,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The transport's name (`"tcp"`).
    pub transport: &'static str,
}

impl MuxConnection {
    /// Starts the connection's two tasks on `tasks`.
    pub fn spawn<R, W>(parts: Parts<R, W>, tasks: &TaskTracker) -> Arc<Self>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mux: Mux::new(parts.side, parts.config),
                readers: HashMap::new(),
                writers: HashMap::new(),
            }),
            wake_writer: Notify::new(),
            can_open: [Notify::new(), Notify::new()],
            incoming: [Notify::new(), Notify::new()],
            settled: Notify::new(),
            closed: watch::Sender::new(None),
            handles: AtomicUsize::new(1),
        });
        let peer = parts.secured.peer;
        let secured = Arc::new(parts.secured);
        tasks.spawn(read_loop(shared.clone(), secured.clone(), parts.read));
        tasks.spawn(write_loop(shared.clone(), secured, parts.write));
        Arc::new(Self {
            shared,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            transport: parts.transport,
            peer,
            remote: parts.remote,
        })
    }

    /// Completes when the connection closes (holding no handle on it).
    pub fn on_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.shared.closed.subscribe();
        async move {
            let _ = closed.wait_for(Option::is_some).await;
        }
    }

    /// Waits for `ready` to give a value, re-checking after each notification of `notify`.
    async fn wait_for<T>(
        &self,
        notify: &Notify,
        mut ready: impl FnMut(&mut State) -> Result<Option<T>, ConnectionError>,
    ) -> Result<T, ConnectionError> {
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(value) = self.shared.with(&mut ready)? {
                return Ok(value);
            }
            notified.await;
        }
    }

    fn halves(&self, id: u64) -> (SendStream, RecvStream) {
        (SendStream::new(self.send_half(id)), RecvStream::new(self.recv_half(id)))
    }

    fn send_half(&self, id: u64) -> MuxSend {
        MuxSend { shared: self.shared.hold(), id }
    }

    fn recv_half(&self, id: u64) -> MuxRecv {
        MuxRecv { shared: self.shared.hold(), id }
    }
}

impl TransportConnection for MuxConnection {
    fn transport(&self) -> &'static str {
        self.transport
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn peer_identity(&self) -> Option<RemoteIdentity> {
        Some(self.peer)
    }

    fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    fn path(&self) -> Path {
        Path::Direct { addr: self.remote }
    }

    fn rtt(&self) -> Duration {
        self.shared.lock().mux.rtt().unwrap_or(INITIAL_RTT)
    }

    fn open_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move {
            let id = self.wait_for(&self.shared.can_open[0], |s| s.mux.open(Kind::Bi)).await?;
            Ok(self.halves(id))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move {
            let id = self.wait_for(&self.shared.incoming[0], |s| s.mux.accept(Kind::Bi)).await?;
            Ok(self.halves(id))
        })
    }

    fn open_uni(&self) -> BoxFuture<'_, Result<SendStream, ConnectionError>> {
        Box::pin(async move {
            let id = self.wait_for(&self.shared.can_open[1], |s| s.mux.open(Kind::Uni)).await?;
            Ok(SendStream::new(self.send_half(id)))
        })
    }

    fn accept_uni(&self) -> BoxFuture<'_, Result<RecvStream, ConnectionError>> {
        Box::pin(async move {
            let id = self.wait_for(&self.shared.incoming[1], |s| s.mux.accept(Kind::Uni)).await?;
            Ok(RecvStream::new(self.recv_half(id)))
        })
    }

    fn admit(&self) {
        self.shared.with(|s| s.mux.set_config(Config::full()));
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.shared.with(|s| s.mux.close(code.into(), reason));
    }

    fn close_reason(&self) -> Option<ConnectionError> {
        self.shared.lock().mux.close_reason().cloned()
    }

    fn closed(&self) -> BoxFuture<'_, ConnectionError> {
        let mut closed = self.shared.closed.subscribe();
        Box::pin(async move {
            match closed.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or(ConnectionError::LocallyClosed),
                Err(_) => ConnectionError::LocallyClosed,
            }
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for MuxConnection {
    fn drop(&mut self) {
        self.shared.release();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, secured: Arc<Secured>, mut read: R) {
    let mut message = Vec::with_capacity(noise::MAX_MESSAGE);
    let mut plaintext = Vec::with_capacity(noise::MAX_MESSAGE);
    let mut closed = shared.closed.subscribe();
    let mut nonce = 0u64;
    let lost = loop {
        let result = tokio::select! {
            result = noise::read_message(&mut read, &mut message) => result,
            _ = closed.wait_for(Option::is_some) => break None,
        };
        if let Err(error) = result {
            break Some(match error.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ConnectionError::Reset,
                _ => ConnectionError::Transport(error.to_string()),
            });
        }
        if let Err(error) = secured.open(nonce, &message, &mut plaintext) {
            break Some(error);
        }
        nonce += 1;
        let now = Instant::now();
        shared.with(|s| s.mux.handle_message(now, &plaintext));
    };
    if let Some(reason) = lost {
        shared.with(|s| s.mux.channel_lost(reason));
        return;
    }
    // Closed: read what still comes (until the peer closes too, or the linger ends), so that
    // the kernel does not answer it with a reset that could overtake our CLOSE.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = vec![0; 64 * 1024];
        while tokio::io::AsyncReadExt::read(&mut read, &mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<Shared>, secured: Arc<Secured>, mut write: W) {
    let mut nonce = 0u64;
    let mut plaintexts: Vec<Vec<u8>> = Vec::new();
    let mut sealed = Vec::new();
    let mut batch = Vec::with_capacity(WRITE_BATCH + noise::MAX_MESSAGE);
    loop {
        let wake = shared.wake_writer.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let now = Instant::now();
        let (count, timeout, drained) = shared.with(|s| {
            if s.mux.poll_timeout().is_some_and(|at| at <= now) {
                s.mux.handle_timeout(now);
            }
            let mut count = 0;
            let mut bytes = 0;
            while bytes < WRITE_BATCH {
                if plaintexts.len() == count {
                    plaintexts.push(Vec::with_capacity(noise::MAX_MESSAGE));
                }
                if !s.mux.poll_transmit(now, &mut plaintexts[count]) {
                    break;
                }
                bytes += plaintexts[count].len();
                count += 1;
            }
            (count, s.mux.poll_timeout(), s.mux.is_drained())
        });
        if count > 0 {
            batch.clear();
            for plaintext in &plaintexts[..count] {
                secured.seal(nonce, plaintext, &mut sealed);
                nonce += 1;
                batch.extend_from_slice(&sealed);
            }
            if let Err(error) = write.write_all(&batch).await {
                let reason = match error.kind() {
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ConnectionError::Reset,
                    _ => ConnectionError::Transport(error.to_string()),
                };
                shared.with(|s| s.mux.channel_lost(reason));
                return;
            }
            continue;
        }
        if drained {
            let _ = write.flush().await;
            let _ = write.shutdown().await;
            return;
        }
        match timeout {
            Some(at) => {
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// The sending half of a multiplexed stream.
pub struct MuxSend {
    shared: Arc<Shared>,
    id: u64,
}

impl std::fmt::Debug for MuxSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxSend").field("id", &self.id).finish()
    }
}

impl MuxSend {
    fn poll_take(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        let id = self.id;
        self.shared.with(|s| match s.mux.write(id, data) {
            Ok(0) => {
                s.writers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(error) => Poll::Ready(Err(error.into_io())),
        })
    }
}

impl AsyncWrite for MuxSend {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let id = self.id;
        // Copies only what flow control takes.
        let credit = self.shared.lock().mux.credit(id);
        let take = match credit {
            Ok(0) => buf.len().min(64 * 1024),
            Ok(credit) => buf.len().min(credit as usize),
            Err(error) => return Poll::Ready(Err(error.into_io())),
        };
        let mut chunk = Bytes::copy_from_slice(&buf[..take]);
        self.poll_take(cx, &mut chunk)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish().map_err(StreamError::into_io))
    }
}

impl SendHalf for MuxSend {
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        self.poll_take(cx, chunk).map_ok(|_| ())
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        let id = self.id;
        self.shared.with(|s| s.mux.finish(id))
    }

    fn reset(&mut self, code: u32) {
        let id = self.id;
        self.shared.with(|s| s.mux.reset(id, code.into()));
    }

    fn stopped(&self) -> BoxFuture<'static, Option<u64>> {
        let (shared, id) = (self.shared.clone(), self.id);
        Box::pin(async move {
            loop {
                let notified = shared.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(code) = shared.lock().mux.send_settled(id) {
                    return code;
                }
                notified.await;
            }
        })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for MuxSend {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.with(|s| {
            s.writers.remove(&id);
            s.mux.drop_send(id);
        });
        self.shared.release();
    }
}

/// The receiving half of a multiplexed stream.
pub struct MuxRecv {
    shared: Arc<Shared>,
    id: u64,
}

impl std::fmt::Debug for MuxRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxRecv").field("id", &self.id).finish()
    }
}

impl MuxRecv {
    fn poll_next(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        let id = self.id;
        let now = Instant::now();
        self.shared.with(|s| match s.mux.read(now, id, max) {
            Ok(Read::Data(bytes)) => Poll::Ready(Ok(Some(bytes))),
            Ok(Read::End) => Poll::Ready(Ok(None)),
            Ok(Read::Blocked) => {
                s.readers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Err(error) => Poll::Ready(Err(error.into_io())),
        })
    }
}

impl AsyncRead for MuxRecv {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let max = buf.remaining();
        if let Some(bytes) = std::task::ready!(self.poll_next(cx, max))? {
            buf.put_slice(&bytes);
        }
        Poll::Ready(Ok(()))
    }
}

impl RecvHalf for MuxRecv {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_next(cx, max)
    }

    fn stop(&mut self, code: u32) {
        let id = self.id;
        self.shared.with(|s| s.mux.stop(id, code.into()));
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for MuxRecv {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.with(|s| {
            s.readers.remove(&id);
            s.mux.drop_recv(id);
        });
        self.shared.release();
    }
}
