//! The node's side of a relay: register, keep the registration, reconnect with backoff.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tcp;
use crate::wire::control::{self, Request, Response};
use crate::wire::frame::Frame;
use crate::wire::record::{self as stream, Record};
use crate::node::{BoxFuture, Event, Hook};
use crate::node::Rendezvous;
use crate::transport::paths::{RelayEgress, RelayRoute};
use crate::transport::quic::QuicTransport;
use crate::transport::tls;
use crate::{P2P, RemoteIdentity};

/// Name of this hook.
pub const HOOK_NAME: &str = "relay";

/// How long a relay request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// First wait before reconnecting to a relay; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How to reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayTransport {
    /// QUIC over UDP; if that gets no answer within [`UDP_FIRST`], TLS over TCP.
    #[default]
    Auto,
    /// QUIC over UDP only.
    Udp,
    /// TLS over TCP only (networks that block UDP).
    Tcp,
}

/// How long a QUIC handshake with the relay may take before `Auto` tries TCP.
pub const UDP_FIRST: Duration = Duration::from_secs(3);

/// Which relay to use, and how to get in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relay's identity (checked in the handshake).
    pub identity: RemoteIdentity,
    /// Its address (the same port serves UDP and TCP).
    pub addr: SocketAddr,
    /// Its access token, if it asks for one.
    pub token: Option<String>,
    /// UDP, TCP, or UDP then TCP.
    pub transport: RelayTransport,
}

impl RelayConfig {
    /// The relay `identity` at `addr`, no token, UDP then TCP.
    pub fn new(identity: RemoteIdentity, addr: SocketAddr) -> Self {
        Self { identity, addr, token: None, transport: RelayTransport::Auto }
    }
}

impl std::str::FromStr for RelayConfig {
    type Err = String;

    /// Parses `IDENTITY@ADDR`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, addr) = s.split_once('@').ok_or_else(|| format!("{s:?} is not IDENTITY@ADDRESS"))?;
        let identity = id.parse().map_err(|e| format!("relay identity {id:?}: {e}"))?;
        let addr = addr.parse().map_err(|e| format!("relay address {addr:?}: {e}"))?;
        Ok(Self::new(identity, addr))
    }
}

/// Why a relay could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay refused this node (not on its allow-list, wrong token).
    #[error("the relay refused: {0}")]
    Refused(String),
    /// It could not be reached or broke the protocol.
    #[error("relay: {0}")]
    Failed(String),
    /// The wait for registration ran out.
    #[error("not registered with the relay within {0:?}")]
    Timeout(Duration),
}

/// A node's relay client hook. Cheap to clone.
#[derive(Clone)]
pub struct RelayClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: RelayConfig,
    transport: QuicTransport,
    state: watch::Sender<Status>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    last_error: Mutex<Option<RelayError>>,
    /// The link while registered.
    link: Mutex<Option<RelayLink>>,
}

/// Where the client stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Connecting,
    Registered(SocketAddr),
    Refused(String),
}

impl RelayClient {
    /// Starts keeping a registration with the relay in `config`, on `transport`'s socket.
    pub fn spawn(p2p: &P2P, transport: &QuicTransport, config: RelayConfig) -> Self {
        let (state, _) = watch::channel(Status::Connecting);
        let client = Self {
            inner: Arc::new(ClientInner {
                config,
                transport: transport.clone(),
                state,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                last_error: Mutex::new(None),
                link: Mutex::new(None),
            }),
        };
        let (me, node, transport) = (client.clone(), p2p.clone(), transport.clone());
        let cancel = client.inner.cancel.clone();
        p2p.spawn(client.inner.tasks.track_future(async move {
            cancel.run_until_cancelled(me.run(node, transport)).await;
        }));
        client.inner.tasks.close();
        p2p.register_hook(Arc::new(client.clone()));
        p2p.set_rendezvous(Some(Arc::new(client.clone())));
        client
    }

    /// The relay this client uses.
    pub fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    /// This node's address as the relay sees it, while registered.
    pub fn observed(&self) -> Option<SocketAddr> {
        match *self.inner.state.borrow() {
            Status::Registered(addr) => Some(addr),
            _ => None,
        }
    }

    /// The last error, if the latest attempt failed.
    pub fn last_error(&self) -> Option<RelayError> {
        self.inner.last_error.lock().expect("relay lock poisoned").clone()
    }

    /// Waits until registered (returns the observed address) or refused.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<SocketAddr, RelayError> {
        let mut state = self.inner.state.subscribe();
        let wait = async {
            loop {
                match state.borrow_and_update().clone() {
                    Status::Registered(addr) => return Ok(addr),
                    Status::Refused(reason) => return Err(RelayError::Refused(reason)),
                    Status::Connecting => {}
                }
                if state.changed().await.is_err() {
                    return Err(RelayError::Failed("the relay client stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(Err(RelayError::Timeout(timeout)))
    }

    async fn run(self, p2p: P2P, transport: QuicTransport) {
        let config = &self.inner.config;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.register(&p2p, &transport).await {
                Ok(Registration { link, observed, closed }) => {
                    backoff = FIRST_BACKOFF;
                    *self.inner.last_error.lock().expect("relay lock poisoned") = None;
                    let over = if link.is_tcp() { "TCP" } else { "UDP" };
                    transport.paths().set_relay(Some(RelayRoute {
                        identity: config.identity,
                        addr: config.addr,
                        observed,
                        egress: link.egress(),
                    }));
                    *self.inner.link.lock().expect("relay lock poisoned") = Some(link.clone());
                    self.inner.state.send_replace(Status::Registered(observed));
                    tracing::info!(relay = %config.addr, %observed, over, "registered with relay");
                    p2p.emit_event(Event::RelayConnected { relay: config.identity, addr: config.addr, observed });
                    let reason = closed.await;
                    transport.paths().set_relay(None);
                    self.inner.link.lock().expect("relay lock poisoned").take();
                    link.close();
                    self.inner.state.send_replace(Status::Connecting);
                    tracing::info!(relay = %config.addr, %reason, "lost the relay");
                    p2p.emit_event(Event::RelayDisconnected { relay: config.identity, reason });
                }
                Err(RelayError::Refused(reason)) => {
                    tracing::warn!(relay = %config.addr, %reason, "relay refused this node");
                    self.inner.state.send_replace(Status::Refused(reason.clone()));
                    *self.inner.last_error.lock().expect("relay lock poisoned") =
                        Some(RelayError::Refused(reason.clone()));
                    p2p.emit_event(Event::RelayDisconnected { relay: config.identity, reason });
                    // Asking again will not change the answer soon.
                    backoff = MAX_BACKOFF;
                }
                Err(error) => {
                    tracing::debug!(relay = %config.addr, %error, "relay unreachable");
                    *self.inner.last_error.lock().expect("relay lock poisoned") = Some(error);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn register(&self, p2p: &P2P, transport: &QuicTransport) -> Result<Registration, RelayError> {
        let config = &self.inner.config;
        match config.transport {
            RelayTransport::Udp => register_quic(transport, config, crate::node::HANDSHAKE_TIMEOUT).await,
            RelayTransport::Tcp => self.register_tcp(p2p, transport).await,
            RelayTransport::Auto => match register_quic(transport, config, UDP_FIRST).await {
                Err(RelayError::Failed(udp)) => self.register_tcp(p2p, transport).await.map_err(|e| match e {
                    RelayError::Failed(tcp) => RelayError::Failed(format!("over UDP: {udp}; over TCP: {tcp}")),
                    other => other,
                }),
                other => other,
            },
        }
    }

    async fn register_tcp(&self, p2p: &P2P, transport: &QuicTransport) -> Result<Registration, RelayError> {
        let config = &self.inner.config;
        let failed = |e: &dyn std::fmt::Display| RelayError::Failed(e.to_string());
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(config.addr).await.map_err(|e| failed(&e))?;
            let _ = tcp.set_nodelay(true);
            tcp::keepalive(&tcp);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(p2p.identity())));
            let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).map_err(|e| failed(&e))?;
            connector.connect(name, tcp).await.map_err(|e| failed(&e))
        };
        let tls = tokio::time::timeout(crate::node::HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| RelayError::Failed("TCP/TLS handshake timed out".into()))??;
        if tls::peer_identity_tls(tls.get_ref().1) != Some(config.identity) {
            return Err(RelayError::Failed(format!("{} is not the relay {}", config.addr, config.identity)));
        }
        let (mut reader, mut writer) = tokio::io::split(tls);
        let register = stream::control(&Request::Register { token: config.token.clone() }).map_err(|e| failed(&e))?;
        let answer = async {
            writer.write_all(&register).await.map_err(|e| failed(&e))?;
            loop {
                match stream::read(&mut reader).await {
                    Ok(Record::Control(body)) => break control::decode::<Response>(&body).map_err(|e| failed(&e)),
                    // A peer's frame can overtake the answer: registration is already done.
                    Ok(Record::Data(frame)) => {
                        if let Ok(Frame::Data { peer, payload }) = Frame::parse(&frame) {
                            transport.paths().deliver_relayed(&peer, payload);
                        }
                    }
                    Err(error) => break Err(RelayError::Failed(format!("no registration answer: {error}"))),
                }
            }
        };
        let observed = match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Err(_) => return Err(RelayError::Failed("the relay did not answer".into())),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(Response::Registered { observed })) => observed,
            Ok(Ok(Response::Refused { reason })) => return Err(RelayError::Refused(reason)),
            Ok(Ok(other)) => return Err(RelayError::Failed(format!("unexpected answer {other:?}"))),
        };
        let (records, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(stream::QUEUE);
        let lookups: Arc<Mutex<VecDeque<oneshot::Sender<bool>>>> = Arc::default();
        let (closed_tx, closed) = oneshot::channel::<String>();
        let cancel = self.inner.cancel.clone();
        p2p.spawn(self.inner.tasks.track_future(async move {
            tcp::write_queued(&mut writer, &mut queued).await;
            let _ = writer.shutdown().await;
        }));
        let (paths, answers) = (transport.paths().clone(), lookups.clone());
        p2p.spawn(self.inner.tasks.track_future(async move {
            let reason = cancel
                .run_until_cancelled(async {
                    loop {
                        match stream::read(&mut reader).await {
                            Ok(Record::Data(frame)) => {
                                if let Ok(Frame::Data { peer, payload }) = Frame::parse(&frame) {
                                    paths.deliver_relayed(&peer, payload);
                                }
                            }
                            Ok(Record::Control(body)) => {
                                if let Ok(Response::Lookup { online }) = control::decode::<Response>(&body) {
                                    let waiting = answers.lock().expect("lookup lock poisoned").pop_front();
                                    if let Some(waiting) = waiting {
                                        let _ = waiting.send(online);
                                    }
                                }
                            }
                            Err(error) => break format!("relay stream closed: {error}"),
                        }
                    }
                })
                .await;
            let _ = closed_tx.send(reason.unwrap_or_else(|| "shutting down".into()));
        }));
        let closed = Box::pin(async move { closed.await.unwrap_or_else(|_| "relay stream closed".into()) });
        Ok(Registration { link: RelayLink::Tcp(TcpLink { records, lookups }), observed, closed })
    }
}

/// A registration: how to reach the relay, what it saw, and a future that ends (with the
/// reason) when the link is lost.
struct Registration {
    link: RelayLink,
    observed: SocketAddr,
    closed: BoxFuture<'static, String>,
}

/// How a registered node talks to its relay.
#[derive(Debug, Clone)]
pub(crate) enum RelayLink {
    /// The QUIC connection; data frames go beside it on the same UDP socket.
    Quic(quinn::Connection),
    /// The TLS stream over TCP; data frames go in it.
    Tcp(TcpLink),
}

/// The sending half of a TCP link.
#[derive(Debug, Clone)]
pub(crate) struct TcpLink {
    /// Records for the writer task.
    pub(crate) records: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Lookups waiting for their answers, in order.
    lookups: Arc<Mutex<VecDeque<oneshot::Sender<bool>>>>,
}

impl RelayLink {
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, RelayLink::Tcp(_))
    }

    /// How the path table sends data frames over this link.
    fn egress(&self) -> RelayEgress {
        match self {
            RelayLink::Quic(_) => RelayEgress::Udp,
            RelayLink::Tcp(tcp) => RelayEgress::Tcp(tcp.records.clone()),
        }
    }

    /// Asks the relay whether it serves `peer`.
    pub(crate) async fn lookup(&self, peer: RemoteIdentity) -> Result<bool, String> {
        match self {
            RelayLink::Quic(conn) => lookup(conn, peer).await,
            RelayLink::Tcp(tcp) => {
                let record = stream::control(&Request::Lookup { peer }).map_err(|e| e.to_string())?;
                let (tx, rx) = oneshot::channel();
                {
                    // Queued and sent under one lock, so answers come back in queue order.
                    let mut waiting = tcp.lookups.lock().expect("lookup lock poisoned");
                    tcp.records.try_send(record).map_err(|_| "the relay link is congested".to_owned())?;
                    waiting.push_back(tx);
                }
                tokio::time::timeout(REQUEST_TIMEOUT, rx)
                    .await
                    .map_err(|_| "the relay did not answer".to_owned())?
                    .map_err(|_| "the relay link closed".to_owned())
            }
        }
    }

    /// Closes the link.
    pub(crate) fn close(&self) {
        if let RelayLink::Quic(conn) = self {
            conn.close(crate::connection::codes::CLOSED, b"closed");
        }
        // A TCP link closes when its last sender is dropped (the writer then shuts it down).
    }
}

async fn register_quic(
    transport: &QuicTransport,
    config: &RelayConfig,
    timeout: Duration,
) -> Result<Registration, RelayError> {
    let failed = |e: &dyn std::fmt::Display| RelayError::Failed(e.to_string());
    let endpoint = transport.endpoint().ok_or_else(|| RelayError::Failed("the transport is shut down".into()))?;
    let connecting = endpoint.connect(config.addr, tls::SERVER_NAME).map_err(|e| failed(&e))?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| RelayError::Failed("QUIC handshake timed out".into()))?
        .map_err(|e| failed(&e))?;
    if tls::peer_identity(&conn) != Some(config.identity) {
        conn.close(crate::connection::codes::WRONG_IDENTITY, b"wrong identity");
        return Err(RelayError::Failed(format!("{} is not the relay {}", config.addr, config.identity)));
    }
    let response = request(&conn, &Request::Register { token: config.token.clone() }).await.map_err(|e| {
        // A refusal closes the connection; its reason says why.
        match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) if close.error_code == control::REFUSED => {
                RelayError::Refused(String::from_utf8_lossy(&close.reason).into_owned())
            }
            _ => RelayError::Failed(e),
        }
    })?;
    match response {
        Response::Registered { observed } => {
            let closing = conn.clone();
            let closed = Box::pin(async move { closing.closed().await.to_string() });
            Ok(Registration { link: RelayLink::Quic(conn), observed, closed })
        }
        Response::Refused { reason } => Err(RelayError::Refused(reason)),
        other => Err(RelayError::Failed(format!("unexpected answer {other:?}"))),
    }
}

impl Rendezvous for RelayClient {
    fn resolve(&self, remote: RemoteIdentity) -> BoxFuture<'_, Result<Option<SocketAddr>, String>> {
        Box::pin(async move {
            let paths = self.inner.transport.paths();
            let Some(relay) = paths.relay() else { return Ok(None) };
            let Some(link) = self.inner.link.lock().expect("relay lock poisoned").clone() else { return Ok(None) };
            if !link.lookup(remote).await? {
                return Err(format!("the relay {} does not serve {remote}", relay.addr));
            }
            paths.placeholder_for(remote).map(Some).ok_or_else(|| "too many relayed peers".to_owned())
        })
    }
}

/// Sends one request on a stream of its own and reads the answer.
pub(crate) async fn request(conn: &quinn::Connection, request: &Request) -> Result<Response, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        control::write(&mut send, request).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        control::read::<_, Response>(&mut recv).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| "the relay did not answer".to_owned())?
}

/// Asks the relay on `conn` whether it serves `peer`.
pub(crate) async fn lookup(conn: &quinn::Connection, peer: RemoteIdentity) -> Result<bool, String> {
    match request(conn, &Request::Lookup { peer }).await? {
        Response::Lookup { online } => Ok(online),
        other => Err(format!("unexpected answer from the relay: {other:?}")),
    }
}

impl Hook for RelayClient {
    fn name(&self) -> &str {
        HOOK_NAME
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.cancel.cancel();
            let paths = self.inner.transport.paths();
            if let Some(link) = self.inner.link.lock().expect("relay lock poisoned").take() {
                link.close();
            }
            paths.set_relay(None);
            self.inner.tasks.wait().await;
        })
    }
}
