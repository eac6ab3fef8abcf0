//! What the byte-stream transports (TCP, uTP) share above their byte streams: the Noise
//! handshake of [`super::noise`] in both directions, admission of incoming connections
//! ([`crate::state::admission`], with eviction of a source's oldest), the handshake timeout, the
//! multiplexed connection ([`super::muxed`]), and shutdown. Each transport brings its byte
//! stream ([`ByteStream`]), its way of accepting ([`StreamAcceptor`]) and of dialling.
//!
//! TCP's and uTP's own handshakes have shown that the dialler's address is real, so there is no
//! Retry: a connection admitted must finish Noise within [`HANDSHAKE_TIMEOUT`], and until the
//! node admits it may open 8 streams and send 64 KiB. In ContactsOnly mode the first Noise
//! message must carry a contact's proof ([`super::gate`]); without one the acceptor answers
//! nothing and drops the connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{Accept, Accepted, Incoming, TransportConnection};
use super::gate::ContactGate;
use super::muxed::{MuxConnection, Parts};
use super::noise::{self, NoiseKeys};
use super::slot::{Slot, SlotKind};
use crate::error::{ConnectionError, TransportError};
use crate::state::admission::{self, Admission, Limits, Stats, Verdict};
use crate::state::mux::{Config, Side};
use crate::transport::connection::codes;
use crate::{Identity, RemoteIdentity};

/// An incoming connection must complete the Noise handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream a secured connection runs over, split into halves for its two tasks.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// Splits the stream.
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl ByteStream for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl ByteStream for super::utp::UtpStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// Where a transport's incoming byte streams come from.
pub trait StreamAcceptor: Send + 'static {
    /// The byte stream.
    type Stream: ByteStream;
    /// The next incoming stream and its address.
    fn next(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send + '_;
}

/// A byte-stream transport's shared half: keys, gate, admission and the connections' tasks.
pub struct StreamTransport {
    name: &'static str,
    keys: NoiseKeys,
    gate: Arc<ContactGate>,
    /// Connections' tasks.
    tasks: TaskTracker,
    accept_loop: TaskTracker,
    stop: CancellationToken,
    admission: Arc<Mutex<Admission>>,
    /// Accepted connections by source, oldest first (where an eviction takes one from).
    by_source: Mutex<HashMap<IpAddr, VecDeque<Weak<MuxConnection>>>>,
    /// Every live connection, closed at shutdown.
    live: Mutex<Vec<Weak<MuxConnection>>>,
}

impl StreamTransport {
    /// The shared half of transport `name` for `identity`.
    pub(crate) fn new(name: &'static str, identity: &Identity, gate: Arc<ContactGate>) -> Arc<Self> {
        Arc::new(Self {
            name,
            keys: NoiseKeys::new(identity),
            gate,
            tasks: TaskTracker::new(),
            accept_loop: TaskTracker::new(),
            stop: CancellationToken::new(),
            admission: Arc::default(),
            by_source: Mutex::default(),
            live: Mutex::default(),
        })
    }

    /// The admission counts and verdicts so far.
    pub fn admission(&self) -> (Stats, (usize, usize)) {
        let admission = self.admission.lock().expect("admission lock poisoned");
        (admission.stats(), admission.counts())
    }

    /// Sets the limits on incoming connections; the counts so far are kept.
    pub fn set_admission_limits(&self, limits: Limits) {
        self.admission.lock().expect("admission lock poisoned").set_limits(limits);
    }

    /// Dials: `connect` makes the byte stream and says where it goes (`what` names it in
    /// errors), then the dialler's handshake, then the connection.
    pub(crate) async fn dial<S: ByteStream>(
        &self,
        expected: Option<RemoteIdentity>,
        what: &str,
        connect: impl Future<Output = io::Result<(S, SocketAddr)>>,
    ) -> Result<Arc<dyn TransportConnection>, TransportError> {
        if self.stop.is_cancelled() {
            return Err(TransportError::ShutDown);
        }
        let (mut stream, addr) = connect
            .await
            .map_err(|error| TransportError::Connection(ConnectionError::Transport(format!("{what}: {error}"))))?;
        let proof = expected.and_then(|e| self.gate.server_name_for(&e, super::gate::unix_now()));
        let secured = noise::dial(&mut stream, &self.keys, expected, proof.as_deref()).await?;
        Ok(self.connection(stream, secured, Side::Dialler, addr) as Arc<dyn TransportConnection>)
    }

    /// Accepts from `acceptor` until shutdown, handing the node each admitted connection.
    pub(crate) fn run_accept_loop<A: StreamAcceptor>(self: &Arc<Self>, mut acceptor: A, accept: Accept) {
        let this = self.clone();
        self.accept_loop.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = acceptor.next() => accepted,
                    () = this.stop.cancelled() => return,
                };
                match accepted {
                    Ok((stream, addr)) => {
                        if let Some(incoming) = this.incoming(stream, addr) {
                            accept(incoming);
                        }
                    }
                    Err(error) => {
                        // Out of descriptors, say: wait rather than spin.
                        tracing::debug!(transport = this.name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }

    fn track(&self, conn: &Arc<MuxConnection>) {
        let mut live = self.live.lock().expect("live lock poisoned");
        live.retain(|c| c.strong_count() > 0);
        live.push(Arc::downgrade(conn));
    }

    /// Starts the connection's tasks over a handshaken stream.
    fn connection<S: ByteStream>(
        &self,
        stream: S,
        secured: noise::Secured,
        side: Side,
        remote: SocketAddr,
    ) -> Arc<MuxConnection> {
        let (read, write) = stream.into_halves();
        let config = match side {
            Side::Dialler => Config::full(),
            Side::Acceptor => Config::unadmitted(),
        };
        let parts = Parts { read, write, secured, side, config, remote, transport: self.name };
        let conn = MuxConnection::spawn(parts, &self.tasks);
        self.track(&conn);
        conn
    }

    /// One accepted byte stream, as the node takes it, or None when admission refuses it.
    pub(crate) fn incoming<S: ByteStream>(self: &Arc<Self>, mut stream: S, addr: SocketAddr) -> Option<Incoming> {
        let source = admission::source(addr);
        let verdict = self.admission.lock().expect("admission lock poisoned").on_incoming(source, true);
        match verdict {
            Verdict::Accept | Verdict::Retry => {}
            Verdict::Evict(from) => {
                let oldest = self
                    .by_source
                    .lock()
                    .expect("source lock poisoned")
                    .get_mut(&from)
                    .and_then(VecDeque::pop_front)
                    .and_then(|c| c.upgrade());
                if let Some(oldest) = oldest {
                    oldest.close(codes::EVICTED, b"evicted: the node is full");
                }
            }
            Verdict::Refuse(why) => {
                tracing::debug!(transport = self.name, %addr, ?why, "incoming connection refused");
                return None;
            }
        }
        let handshake_slot = Slot::new(&self.admission, source, SlotKind::Handshake);
        let connection_slot = Slot::new(&self.admission, source, SlotKind::Connection);
        let this = self.clone();
        let connecting = Box::pin(async move {
            let gate = this.gate.clone();
            let handshake = noise::accept(&mut stream, &this.keys, |proof| {
                let proof = (!proof.is_empty()).then_some(proof);
                gate.admit(proof, super::gate::unix_now()).map(drop).map_err(|why| format!("{why:?}"))
            });
            let secured = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))??;
            drop(handshake_slot);
            let conn = this.connection(stream, secured, Side::Acceptor, addr);
            this.hold_until_closed(&conn, connection_slot);
            Ok(Accepted { connection: conn as Arc<dyn TransportConnection>, handshake: None })
        });
        Some(Incoming { addr, connecting })
    }

    /// Keeps `slot` until `conn` closes.
    fn hold_until_closed(self: &Arc<Self>, conn: &Arc<MuxConnection>, slot: Slot) {
        self.by_source
            .lock()
            .expect("source lock poisoned")
            .entry(slot.source)
            .or_default()
            .push_back(Arc::downgrade(conn));
        let (closed, weak, this) = (conn.on_closed(), Arc::downgrade(conn), self.clone());
        self.tasks.spawn(async move {
            closed.await;
            let mut sources = this.by_source.lock().expect("source lock poisoned");
            if let Some(list) = sources.get_mut(&slot.source) {
                list.retain(|c| !c.ptr_eq(&weak) && c.strong_count() > 0);
                if list.is_empty() {
                    sources.remove(&slot.source);
                }
            }
            drop(sources);
            drop(slot);
        });
    }

    /// Stops accepting, closes every connection with [`codes::CLOSED`] and waits for their tasks.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.accept_loop.close();
        self.accept_loop.wait().await;
        let live: Vec<_> = self.live.lock().expect("live lock poisoned").drain(..).collect();
        for conn in live.iter().filter_map(Weak::upgrade) {
            conn.close(codes::CLOSED, b"shutting down");
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}
