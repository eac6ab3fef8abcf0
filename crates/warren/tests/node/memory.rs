//! The node is transport-generic: a second transport, written here against the public
//! `warren::transport` traits alone (in memory, no sockets), carries hellos, protocol routing,
//! refusals, identity checks and closes exactly as QUIC does, without a line of the node knowing.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, watch};
use warren::hook::{BoxFuture, Hook};
use warren::state::path_table::Path;
use warren::transport::{
    Accept, Accepted, ConnectionError, Incoming, Listener, RecvHalf, RecvStream, SendHalf, SendStream, StreamError,
    TransportConnection,
};
use warren::{ConnectError, Event, Identity, P2P, RemoteIdentity, TransportError};

use crate::support::*;

/// The "network": listeners by address.
#[derive(Default)]
struct Net {
    listeners: Mutex<HashMap<SocketAddr, (RemoteIdentity, Accept)>>,
}

struct MemoryListener {
    net: Arc<Net>,
    addr: SocketAddr,
    identity: RemoteIdentity,
}

impl Hook for MemoryListener {
    fn name(&self) -> &str {
        "memory"
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.net.listeners.lock().unwrap().remove(&self.addr);
        })
    }
}

impl Listener for MemoryListener {
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.addr]
    }

    fn dial(
        &self,
        addr: SocketAddr,
        _expected: Option<RemoteIdentity>,
    ) -> BoxFuture<'_, Result<Arc<dyn TransportConnection>, TransportError>> {
        // An in-memory pair has no handshake to abort: the node's check after it reports a
        // wrong identity.
        Box::pin(async move {
            let (theirs, accept) = self
                .net
                .listeners
                .lock()
                .unwrap()
                .get(&addr)
                .cloned()
                .ok_or(TransportError::Timeout(Duration::ZERO))?;
            let (ours, peer) = MemoryConnection::pair((self.identity, self.addr), (theirs, addr));
            let accepted = Accepted { connection: Arc::new(peer), handshake: None };
            accept(Incoming { addr: self.addr, connecting: Box::pin(async move { Ok(accepted) }) });
            Ok(Arc::new(ours) as Arc<dyn TransportConnection>)
        })
    }

    fn start(&self, accept: Accept) {
        self.net.listeners.lock().unwrap().insert(self.addr, (self.identity, accept));
    }
}

type Halves = (SendStream, RecvStream);

/// One end of an in-memory connection: streams are duplex pipes handed to the other end.
#[derive(Debug)]
struct MemoryConnection {
    id: u64,
    peer: RemoteIdentity,
    peer_addr: SocketAddr,
    bi_out: mpsc::UnboundedSender<Halves>,
    bi_in: tokio::sync::Mutex<mpsc::UnboundedReceiver<Halves>>,
    uni_out: mpsc::UnboundedSender<RecvStream>,
    uni_in: tokio::sync::Mutex<mpsc::UnboundedReceiver<RecvStream>>,
    /// This end's closing, as each end sees it.
    closed: watch::Sender<Option<ConnectionError>>,
    peer_closed: watch::Sender<Option<ConnectionError>>,
}

impl MemoryConnection {
    /// `a` is (identity, address) of the dialler, `b` of the listener; each end sees the other's.
    fn pair(a: (RemoteIdentity, SocketAddr), b: (RemoteIdentity, SocketAddr)) -> (Self, Self) {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (bi_ab, bi_b) = mpsc::unbounded_channel();
        let (bi_ba, bi_a) = mpsc::unbounded_channel();
        let (uni_ab, uni_b) = mpsc::unbounded_channel();
        let (uni_ba, uni_a) = mpsc::unbounded_channel();
        let (closed_a, closed_b) = (watch::Sender::new(None), watch::Sender::new(None));
        let end = |peer: (RemoteIdentity, SocketAddr), bi_out, bi_in, uni_out, uni_in, closed, peer_closed| Self {
            id,
            peer: peer.0,
            peer_addr: peer.1,
            bi_out,
            bi_in: tokio::sync::Mutex::new(bi_in),
            uni_out,
            uni_in: tokio::sync::Mutex::new(uni_in),
            closed,
            peer_closed,
        };
        (
            end(b, bi_ab, bi_a, uni_ab, uni_a, closed_a.clone(), closed_b.clone()),
            end(a, bi_ba, bi_b, uni_ba, uni_b, closed_b, closed_a),
        )
    }

    fn reason(&self) -> Option<ConnectionError> {
        self.closed.borrow().clone()
    }

    /// What the peer sends next on `incoming`, or why the connection closed first.
    async fn next<T>(&self, incoming: &tokio::sync::Mutex<mpsc::UnboundedReceiver<T>>) -> Result<T, ConnectionError> {
        let mut closed = self.closed.subscribe();
        let mut incoming = incoming.lock().await;
        tokio::select! {
            next = incoming.recv() => next.ok_or(ConnectionError::Reset),
            reason = closed.wait_for(Option::is_some) => Err(reason.ok().and_then(|r| r.clone()).unwrap_or(ConnectionError::Reset)),
        }
    }
}

/// A one-way pipe and the reset/stop codes its two ends tell each other.
fn pipe() -> (MemorySend, MemoryRecv) {
    let (write, read) = tokio::io::duplex(64 * 1024);
    let codes = Arc::new(Codes::default());
    (MemorySend { pipe: Some(write), codes: codes.clone() }, MemoryRecv { pipe: read, codes })
}

#[derive(Debug, Default)]
struct Codes {
    reset: Mutex<Option<u64>>,
    stopped: watch::Sender<Option<u64>>,
}

#[derive(Debug)]
struct MemorySend {
    pipe: Option<DuplexStream>,
    codes: Arc<Codes>,
}

impl AsyncWrite for MemorySend {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(code) = *self.codes.stopped.borrow() {
            return Poll::Ready(Err(StreamError::Stopped(code).into_io()));
        }
        match self.pipe.as_mut() {
            Some(pipe) => Pin::new(pipe).poll_write(cx, buf),
            None => Poll::Ready(Err(StreamError::ClosedLocally.into_io())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish().map_err(StreamError::into_io))
    }
}

impl SendHalf for MemorySend {
    fn finish(&mut self) -> Result<(), StreamError> {
        // Dropping the writing end is the reader's end of stream.
        self.pipe.take().map(drop).ok_or(StreamError::ClosedLocally)
    }

    fn reset(&mut self, code: u32) {
        *self.codes.reset.lock().unwrap() = Some(code.into());
        self.pipe = None;
    }

    fn stopped(&self) -> BoxFuture<'static, Option<u64>> {
        let mut stopped = self.codes.stopped.subscribe();
        Box::pin(async move { stopped.wait_for(Option::is_some).await.ok().and_then(|c| *c) })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[derive(Debug)]
struct MemoryRecv {
    pipe: DuplexStream,
    codes: Arc<Codes>,
}

impl AsyncRead for MemoryRecv {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.pipe).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() == before
            && let Some(code) = *self.codes.reset.lock().unwrap()
        {
            return Poll::Ready(Err(StreamError::Reset(code).into_io()));
        }
        polled
    }
}

impl RecvHalf for MemoryRecv {
    fn stop(&mut self, code: u32) {
        self.codes.stopped.send_replace(Some(code.into()));
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl TransportConnection for MemoryConnection {
    fn transport(&self) -> &'static str {
        "memory"
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn peer_identity(&self) -> Option<RemoteIdentity> {
        Some(self.peer)
    }

    fn remote_address(&self) -> SocketAddr {
        self.peer_addr
    }

    fn path(&self) -> Path {
        Path::Direct { addr: self.peer_addr }
    }

    fn rtt(&self) -> Duration {
        Duration::ZERO
    }

    fn open_bi(&self) -> BoxFuture<'_, Result<Halves, ConnectionError>> {
        Box::pin(async move {
            if let Some(reason) = self.reason() {
                return Err(reason);
            }
            let ((send, their_recv), (their_send, recv)) = (pipe(), pipe());
            let theirs = (SendStream::new(their_send), RecvStream::new(their_recv));
            self.bi_out.send(theirs).map_err(|_| ConnectionError::Reset)?;
            Ok((SendStream::new(send), RecvStream::new(recv)))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<Halves, ConnectionError>> {
        Box::pin(self.next(&self.bi_in))
    }

    fn open_uni(&self) -> BoxFuture<'_, Result<SendStream, ConnectionError>> {
        Box::pin(async move {
            let (send, their_recv) = pipe();
            self.uni_out.send(RecvStream::new(their_recv)).map_err(|_| ConnectionError::Reset)?;
            Ok(SendStream::new(send))
        })
    }

    fn accept_uni(&self) -> BoxFuture<'_, Result<RecvStream, ConnectionError>> {
        Box::pin(self.next(&self.uni_in))
    }

    fn close(&self, code: u32, reason: &[u8]) {
        if self.reason().is_none() {
            self.closed.send_replace(Some(ConnectionError::LocallyClosed));
            let reason = String::from_utf8_lossy(reason).into_owned();
            self.peer_closed.send_if_modified(|r| {
                r.is_none().then(|| *r = Some(ConnectionError::Closed { code: code.into(), reason })).is_some()
            });
        }
    }

    fn close_reason(&self) -> Option<ConnectionError> {
        self.reason()
    }

    fn closed(&self) -> BoxFuture<'_, ConnectionError> {
        Box::pin(async move {
            let mut closed = self.closed.subscribe();
            closed.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()).unwrap_or(ConnectionError::Reset)
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A node whose only transport is the in-memory one, at `addr`.
fn memory_node(net: &Arc<Net>, addr: &str) -> (P2P, SocketAddr) {
    let p2p = P2P::new("warren-test", Identity::generate());
    let addr: SocketAddr = addr.parse().unwrap();
    p2p.register_listener(Arc::new(MemoryListener { net: net.clone(), addr, identity: p2p.id() }));
    warren::ping::register(&p2p).unwrap();
    p2p.register_protocol(ECHO, echo).unwrap();
    (p2p, addr)
}

#[tokio::test]
async fn a_transport_written_outside_warren_carries_everything_the_node_does() {
    let net = Arc::new(Net::default());
    let (alice, _) = memory_node(&net, "198.18.0.1:1");
    let (bob, bob_addr) = memory_node(&net, "198.18.0.2:1");
    let mut bob_events = bob.subscribe();
    introduce(&alice, &bob, bob_addr);

    // Hello, routing and the echo protocol.
    let mut stream = alice.connect(bob.id(), ECHO).await.unwrap();
    stream.write_all(b"over memory").await.unwrap();
    stream.finish().unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"over memory");
    let conn = alice.open_connection(&bob.id()).unwrap();
    assert_eq!(conn.transport_name(), "memory");
    assert!(conn.quic().is_none());
    assert_eq!(conn.remote(), bob.id());
    assert_eq!(conn.path(), Path::Direct { addr: bob_addr });
    assert_eq!(conn.remote_protocols(), bob.protocols());
    let connected = wait_for(&mut bob_events, |e| match e {
        Event::PeerConnected { remote, .. } => Some(*remote),
        _ => None,
    })
    .await;
    assert_eq!(connected, alice.id());
    assert_eq!(warren::ping::ping(&alice, bob.id(), 2).await.unwrap().len(), 2);

    // A protocol bob has no handler for is refused with the generic reset code.
    let mut refused = alice.connect(bob.id(), "nope/1").await.unwrap();
    // On the read, or already on the write if bob was quicker.
    let error = match refused.write_all(b"x").await {
        Ok(()) => refused.read(&mut [0; 8]).await.unwrap_err(),
        Err(error) => error,
    };
    assert_eq!(error.kind(), io::ErrorKind::Unsupported, "{error}");
    assert!(matches!(
        error.get_ref().and_then(|e| e.downcast_ref::<ConnectError>()),
        Some(ConnectError::UnknownProtocol { protocol }) if protocol == "nope/1"
    ));

    // Closing ends the peer on the other side too.
    conn.close();
    let reason = wait_for(&mut bob_events, |e| match e {
        Event::PeerDisconnected { remote, reason } if *remote == alice.id() => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("closed by the peer (code 0)"), "{reason}");

    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn the_node_checks_the_identity_a_foreign_transport_verified() {
    let net = Arc::new(Net::default());
    let (alice, _) = memory_node(&net, "198.18.0.1:1");
    let (bob, bob_addr) = memory_node(&net, "198.18.0.2:1");
    let someone_else = Identity::generate().to_remote_identity();
    alice.discovered("test", someone_else, [bob_addr], Default::default());
    match alice.connection(someone_else).await {
        Err(ConnectError::WrongIdentity { expected, got }) => {
            assert_eq!((expected, got), (someone_else, bob.id()));
        }
        other => panic!("expected a wrong identity, got {other:?}"),
    }
    alice.shutdown().await;
    bob.shutdown().await;
}

/// A discovery source that records what it is published and resolves from a fixed table.
struct Directory {
    published: watch::Sender<Vec<warren::node::Record>>,
    table: HashMap<RemoteIdentity, Result<Vec<SocketAddr>, String>>,
}

impl Hook for Directory {
    fn name(&self) -> &str {
        "directory"
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl warren::node::Discovery for Directory {
    fn publish(&self, record: &warren::node::Record) {
        self.published.send_modify(|all| all.push(record.clone()));
    }

    fn resolve(&self, remote: RemoteIdentity) -> BoxFuture<'_, Result<Vec<SocketAddr>, String>> {
        let answer = self.table.get(&remote).cloned().unwrap_or(Ok(Vec::new()));
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn discovery_sources_get_the_record_as_it_changes_and_resolve_unknown_peers() {
    let net = Arc::new(Net::default());
    let (alice, alice_addr) = memory_node(&net, "198.18.0.1:1");
    let (bob, bob_addr) = memory_node(&net, "198.18.0.2:1");
    let (carol, _) = memory_node(&net, "198.18.0.3:1");
    let stranger = Identity::generate().to_remote_identity();
    let directory = Arc::new(Directory {
        published: watch::Sender::new(Vec::new()),
        table: HashMap::from([(bob.id(), Ok(vec![bob_addr])), (carol.id(), Err("carol is away".to_owned()))]),
    });
    let mut published = directory.published.subscribe();
    alice.register_discovery(directory.clone());

    // Published at once, with the node's identity and listeners; again when metadata changes.
    let first = published.borrow_and_update().last().cloned().expect("published on registration");
    assert_eq!((first.id, first.addrs), (alice.id(), vec![alice_addr]));
    alice.metadata_mut().insert("name", "alice").unwrap();
    let again = tokio::time::timeout(
        HANG,
        published.wait_for(|all| all.iter().any(|r| r.metadata.get("name").is_some_and(|n| n == "alice"))),
    )
    .await
    .expect("republished after the metadata changed")
    .unwrap()
    .last()
    .cloned()
    .unwrap();
    assert_eq!(again.metadata.get("name").map(String::as_str), Some("alice"));

    // Nobody told alice where bob is: the source resolves him.
    assert!(alice.peer(&bob.id()).is_none());
    let mut stream = alice.connect(bob.id(), ECHO).await.unwrap();
    stream.write_all(b"found").await.unwrap();
    stream.finish().unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"found");

    // A source's refusal is reported, and a peer no source knows has no address.
    let refused = alice.connection(carol.id()).await.unwrap_err().to_string();
    assert!(refused.contains("directory: carol is away"), "{refused}");
    assert!(matches!(alice.connection(stranger).await, Err(ConnectError::NoAddress { remote }) if remote == stranger));

    for node in [alice, bob, carol] {
        node.shutdown().await;
    }
}
