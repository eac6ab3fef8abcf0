//! The node's side of a relay: register, keep the registration, reconnect with backoff.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tcp;
use crate::hook::{BoxFuture, Discovery, Hook};
use crate::state::nat::{self, NatProbe, NatType};
use crate::state::relay::RelayState;
use crate::transport::paths::{Paths, RelayEgress, RelayRoute};
use crate::transport::quic::HANDSHAKE_TIMEOUT;
use crate::transport::quic::QuicTransport;
use crate::transport::tls;
use crate::wire::control::{self, RendezvousKey, Request, Response};
use crate::wire::record::{self as stream, Record};
use crate::{Identity, RemoteIdentity};

/// Name of this hook.
pub const HOOK_NAME: &str = "relay";

/// How long a relay request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::state::relay::{FIRST_BACKOFF, MAX_BACKOFF, Registration as RelayStatus};

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

/// Forgets a lookup when dropped.
struct ForgetLookup<'a>(&'a RelayClient, u64);

impl Drop for ForgetLookup<'_> {
    fn drop(&mut self) {
        self.0.inner.waiting.lock().expect("lookup lock poisoned").remove(&self.1);
        self.0.state().forget(self.1);
    }
}

/// What the relay client reports; the node turns these into its own events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Registered with the relay.
    Connected {
        /// The relay.
        relay: RemoteIdentity,
        /// Its address.
        addr: SocketAddr,
        /// This node's address as the relay sees it.
        observed: SocketAddr,
    },
    /// The relay's two ports told what kind of NAT this node is behind.
    Nat {
        /// The kind.
        nat: crate::state::nat::NatType,
        /// Where the relay's main port and its second port saw the node.
        observed: Vec<SocketAddr>,
    },
    /// The registration was lost or refused.
    Disconnected {
        /// The relay.
        relay: RemoteIdentity,
        /// Why.
        reason: String,
    },
}

/// Where the relay client reports its events.
pub type RelayEvents = Box<dyn Fn(RelayEvent) + Send + Sync>;

/// A node's relay client hook. Cheap to clone.
#[derive(Clone)]
pub struct RelayClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: RelayConfig,
    transport: QuicTransport,
    identity: Arc<Identity>,
    node_tasks: TaskTracker,
    on_event: RelayEvents,
    /// Registration and lookups (sans-IO); `status` mirrors its registration for watchers.
    relay: Mutex<RelayState>,
    status: watch::Sender<RelayStatus>,
    /// Requests over TCP waiting for their answers, by request id.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    /// The rendezvous keys this node answers for: announced at each registration.
    announced: Mutex<BTreeSet<RendezvousKey>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    last_error: Mutex<Option<RelayError>>,
    /// The link while registered.
    link: Mutex<Option<RelayLink>>,
}

impl RelayClient {
    /// Starts keeping a registration with the relay in `config`, on `transport`'s socket, as
    /// `identity`. Its tasks run on `tasks`; what happens is told to `on_event`. A node starts
    /// one with [`P2P::add_relay`](crate::P2P::add_relay).
    pub(crate) fn start(
        identity: Arc<Identity>,
        transport: &QuicTransport,
        config: RelayConfig,
        tasks: &TaskTracker,
        on_event: RelayEvents,
    ) -> Self {
        let (status, _) = watch::channel(RelayStatus::Connecting);
        let client = Self {
            inner: Arc::new(ClientInner {
                config,
                identity,
                transport: transport.clone(),
                relay: Mutex::new(RelayState::new(std::time::Instant::now())),
                status,
                waiting: Mutex::default(),
                announced: Mutex::default(),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                node_tasks: tasks.clone(),
                last_error: Mutex::new(None),
                link: Mutex::new(None),
                on_event,
            }),
        };
        let me = client.clone();
        client.spawn(async move { me.run().await });
        client.inner.tasks.close();
        client
    }

    /// Runs `future` as a task of this client: cancelled by its shutdown, which waits for it.
    fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.inner.cancel.clone();
        self.inner.node_tasks.spawn(self.inner.tasks.track_future(async move {
            cancel.run_until_cancelled(future).await;
        }));
    }

    /// The relay this client uses.
    pub fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    /// This node's address as the relay sees it, while registered.
    pub fn observed(&self) -> Option<SocketAddr> {
        match *self.inner.status.borrow() {
            RelayStatus::Registered { observed } => Some(observed),
            _ => None,
        }
    }

    /// Lookup answers that matched no lookup waiting for one (late, duplicated or forged by the
    /// relay), dropped.
    pub fn stray_answers(&self) -> u64 {
        self.state().stray_answers
    }

    /// Where the registration stands now, and each change after: `borrow()` for the current
    /// value, `changed().await` for the next.
    pub fn watch_status(&self) -> watch::Receiver<RelayStatus> {
        self.inner.status.subscribe()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RelayState> {
        self.inner.relay.lock().expect("relay lock poisoned")
    }

    fn publish(&self) {
        let status = self.state().registration().clone();
        self.inner.status.send_replace(status);
    }

    /// The last error, if the latest attempt failed.
    pub fn last_error(&self) -> Option<RelayError> {
        self.inner.last_error.lock().expect("relay lock poisoned").clone()
    }

    /// Waits until registered (returns the observed address) or refused.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<SocketAddr, RelayError> {
        let mut state = self.inner.status.subscribe();
        let wait = async {
            loop {
                match state.borrow_and_update().clone() {
                    RelayStatus::Registered { observed } => return Ok(observed),
                    RelayStatus::Refused { reason } => return Err(RelayError::Refused(reason)),
                    RelayStatus::Connecting => {}
                }
                if state.changed().await.is_err() {
                    return Err(RelayError::Failed("the relay client stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(Err(RelayError::Timeout(timeout)))
    }

    async fn run(self) {
        let config = &self.inner.config;
        let transport = &self.inner.transport;
        loop {
            let due = self.state().next_attempt();
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            self.state().attempting();
            match self.register().await {
                Ok(Registration { link, observed, closed }) => {
                    *self.inner.last_error.lock().expect("relay lock poisoned") = None;
                    let over = if link.is_tcp() { "TCP" } else { "UDP" };
                    transport.paths().set_relay(Some(RelayRoute {
                        identity: config.identity,
                        addr: config.addr,
                        observed,
                        egress: link.egress(),
                    }));
                    *self.inner.link.lock().expect("relay lock poisoned") = Some(link.clone());
                    self.state().registered(observed);
                    self.publish();
                    tracing::info!(relay = %config.addr, %observed, over, "registered with relay");
                    (self.inner.on_event)(RelayEvent::Connected {
                        relay: config.identity,
                        addr: config.addr,
                        observed,
                    });
                    // What this node answers for, again: the relay forgot it with the last link.
                    let keys: Vec<RendezvousKey> = self.announced().iter().copied().collect();
                    for key in keys {
                        let client = self.clone();
                        self.spawn(async move {
                            // Withdrawn meanwhile: not announced again (a withdrawal that
                            // overtakes this renewal is sent again once it is answered).
                            if !client.announced().contains(&key) {
                                return;
                            }
                            if let Err(error) = client.ask_announce(key).await {
                                tracing::info!(%error, "rendezvous announcement not renewed");
                            }
                            if !client.announced().contains(&key) {
                                client.send_withdrawal(key).await;
                            }
                        });
                    }
                    if !link.is_tcp() {
                        // The mapping test (the relay's second port), beside the registration.
                        let (paths, client) = (transport.paths().clone(), self.clone());
                        paths.set_nat(paths.nat(), true);
                        self.spawn(async move {
                            let (nat, second) = classify(&paths, config_addr(&client), observed).await;
                            paths.set_nat(nat, false);
                            tracing::info!(%nat, %observed, ?second, "NAT test");
                            let observed = std::iter::once(observed).chain(second).collect();
                            (client.inner.on_event)(RelayEvent::Nat { nat, observed });
                        });
                    }
                    let reason = closed.await;
                    transport.paths().set_relay(None);
                    self.inner.link.lock().expect("relay lock poisoned").take();
                    link.close();
                    let failed = self.state().lost(std::time::Instant::now());
                    self.inner.waiting.lock().expect("lookup lock poisoned").retain(|id, _| !failed.contains(id));
                    self.publish();
                    tracing::info!(relay = %config.addr, %reason, "lost the relay");
                    (self.inner.on_event)(RelayEvent::Disconnected { relay: config.identity, reason });
                }
                Err(RelayError::Refused(reason)) => {
                    tracing::warn!(relay = %config.addr, %reason, "relay refused this node");
                    self.state().refused(std::time::Instant::now(), reason.clone());
                    self.publish();
                    *self.inner.last_error.lock().expect("relay lock poisoned") =
                        Some(RelayError::Refused(reason.clone()));
                    (self.inner.on_event)(RelayEvent::Disconnected { relay: config.identity, reason });
                }
                Err(error) => {
                    tracing::debug!(relay = %config.addr, %error, "relay unreachable");
                    self.state().failed(std::time::Instant::now());
                    *self.inner.last_error.lock().expect("relay lock poisoned") = Some(error);
                }
            }
        }
    }

    fn announced(&self) -> std::sync::MutexGuard<'_, BTreeSet<RendezvousKey>> {
        self.inner.announced.lock().expect("rendezvous lock poisoned")
    }

    /// Asks the relay whether it serves `peer`.
    async fn lookup(&self, peer: RemoteIdentity) -> Result<bool, String> {
        match self.ask(|id| Request::Lookup { id, peer }).await? {
            Response::Lookup { online, .. } => Ok(online),
            other => Err(format!("unexpected answer from the relay: {other:?}")),
        }
    }

    /// Announces that this node answers for `key` (a pairing nameplate's, say), now and at
    /// each registration after, until [`withdraw`](Self::withdraw): a peer that asks the relay
    /// for the key ([`find`](Self::find)) learns this node's identity. Err if the relay does
    /// not list it now (not registered, over the relay's limits); it is still renewed at the
    /// next registration.
    pub async fn announce(&self, key: RendezvousKey) -> Result<(), RelayError> {
        self.announced().insert(key);
        let announced = self.ask_announce(key).await;
        if !self.announced().contains(&key) {
            // Withdrawn while the announcement was on its way: the withdrawal may have got
            // there first.
            self.send_withdrawal(key).await;
        }
        announced
    }

    async fn ask_announce(&self, key: RendezvousKey) -> Result<(), RelayError> {
        match self.ask(|id| Request::Announce { id, key }).await.map_err(RelayError::Failed)? {
            Response::Announced { accepted: true, .. } => Ok(()),
            Response::Announced { accepted: false, .. } => {
                Err(RelayError::Refused("the relay lists no more nodes for this key, or for this node".into()))
            }
            other => Err(RelayError::Failed(format!("unexpected answer from the relay: {other:?}"))),
        }
    }

    /// Stops answering for `key` (the relay is told in the background; it forgets anyway when
    /// the registration ends).
    pub fn withdraw(&self, key: RendezvousKey) {
        if self.announced().remove(&key) {
            let client = self.clone();
            self.spawn(async move { client.send_withdrawal(key).await });
        }
    }

    /// Tells the relay to forget `key`, a few times if it does not answer (a relay over its
    /// request rate drops requests without a word); the relay forgets it anyway with the
    /// registration.
    async fn send_withdrawal(&self, key: RendezvousKey) {
        for attempt in 0..3u32 {
            if self.ask(|id| Request::Withdraw { id, key }).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
    }

    /// The identities registered at the relay now that announced `key`, oldest first (at most
    /// [`control::MAX_FOUND`]). Anyone may announce any key: these are candidates to check,
    /// not proof of anything.
    pub async fn find(&self, key: RendezvousKey) -> Result<Vec<RemoteIdentity>, RelayError> {
        match self.ask(|id| Request::Find { id, key }).await.map_err(RelayError::Failed)? {
            Response::Found { peers, .. } => Ok(peers),
            other => Err(RelayError::Failed(format!("unexpected answer from the relay: {other:?}"))),
        }
    }

    /// Sends the request `make` builds around a fresh id and waits for the answer with that id.
    async fn ask(&self, make: impl FnOnce(u64) -> Request) -> Result<Response, String> {
        let link =
            self.inner.link.lock().expect("relay lock poisoned").clone().ok_or("not registered with the relay")?;
        let id = {
            let mut state = self.state();
            let now = std::time::Instant::now();
            for expired in state.expire(now) {
                self.inner.waiting.lock().expect("lookup lock poisoned").remove(&expired);
            }
            state.lookup(now).map_err(|e| e.to_string())?
        };
        // However this ends (answered, failed, timed out, or the caller gave up and dropped
        // this future), nobody waits for the id any more.
        let _forget = ForgetLookup(self, id);
        let request = make(id);
        match &link {
            RelayLink::Quic(conn) => {
                let answer = request_on(conn, &request).await?;
                // Each request has a stream of its own: an answer with another id is a stray,
                // counted, and this request fails.
                if answer.id() == Some(id) {
                    self.state().answered(id);
                    Ok(answer)
                } else {
                    self.state().stray_answers += 1;
                    Err("the relay answered another request".to_owned())
                }
            }
            RelayLink::Tcp(tcp) => {
                let record = stream::control(&request).map_err(|e| e.to_string())?;
                let (tx, rx) = oneshot::channel();
                self.inner.waiting.lock().expect("lookup lock poisoned").insert(id, tx);
                match tcp.records.try_send(record) {
                    Err(_) => Err("the relay link is congested".to_owned()),
                    Ok(()) => tokio::time::timeout(REQUEST_TIMEOUT, rx)
                        .await
                        .map_err(|_| "the relay did not answer".to_owned())
                        .and_then(|r| r.map_err(|_| "the relay link closed".to_owned())),
                }
            }
        }
    }

    async fn register(&self) -> Result<Registration, RelayError> {
        let (config, transport) = (&self.inner.config, &self.inner.transport);
        match config.transport {
            RelayTransport::Udp => register_quic(transport, config, HANDSHAKE_TIMEOUT).await,
            RelayTransport::Tcp => self.register_tcp().await,
            RelayTransport::Auto => match register_quic(transport, config, UDP_FIRST).await {
                Err(RelayError::Failed(udp)) => self.register_tcp().await.map_err(|e| match e {
                    RelayError::Failed(tcp) => RelayError::Failed(format!("over UDP: {udp}; over TCP: {tcp}")),
                    other => other,
                }),
                other => other,
            },
        }
    }

    async fn register_tcp(&self) -> Result<Registration, RelayError> {
        let (config, transport) = (&self.inner.config, &self.inner.transport);
        let failed = |e: &dyn std::fmt::Display| RelayError::Failed(e.to_string());
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(config.addr).await.map_err(|e| failed(&e))?;
            let _ = tcp.set_nodelay(true);
            tcp::keepalive(&tcp);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(&self.inner.identity)));
            let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).map_err(|e| failed(&e))?;
            connector.connect(name, tcp).await.map_err(|e| failed(&e))
        };
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
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
                    Ok(Record::Data(frame)) => transport.paths().deliver_tcp_frame(&frame),
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
        let (closed_tx, closed) = oneshot::channel::<String>();
        let cancel = self.inner.cancel.clone();
        self.inner.node_tasks.spawn(self.inner.tasks.track_future(async move {
            tcp::write_queued(&mut writer, &mut queued).await;
            let _ = writer.shutdown().await;
        }));
        let (paths, client) = (transport.paths().clone(), self.clone());
        self.inner.node_tasks.spawn(self.inner.tasks.track_future(async move {
            let reason = cancel
                .run_until_cancelled(async {
                    loop {
                        match stream::read(&mut reader).await {
                            Ok(Record::Data(frame)) => paths.deliver_tcp_frame(&frame),
                            Ok(Record::Control(body)) => {
                                // Matched by id: an answer nobody waits for is dropped (and
                                // counted as a stray).
                                if let Ok(answer) = control::decode::<Response>(&body)
                                    && let Some(id) = answer.id()
                                    && client.state().answered(id)
                                {
                                    let waiting =
                                        client.inner.waiting.lock().expect("lookup lock poisoned").remove(&id);
                                    if let Some(waiting) = waiting {
                                        let _ = waiting.send(answer);
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
        Ok(Registration { link: RelayLink::Tcp(TcpLink { records }), observed, closed })
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

    /// Closes the link.
    pub(crate) fn close(&self) {
        if let RelayLink::Quic(conn) = self {
            conn.close(quinn::VarInt::from_u32(crate::transport::connection::codes::CLOSED), b"closed");
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
        conn.close(quinn::VarInt::from_u32(crate::transport::connection::codes::WRONG_IDENTITY), b"wrong identity");
        return Err(RelayError::Failed(format!("{} is not the relay {}", config.addr, config.identity)));
    }
    let response = request_on(&conn, &Request::Register { token: config.token.clone() }).await.map_err(|e| {
        // A refusal closes the connection; its reason says why.
        match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close))
                if close.error_code == quinn::VarInt::from_u32(control::REFUSED) =>
            {
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

fn config_addr(client: &RelayClient) -> SocketAddr {
    client.inner.config.addr
}

/// RFC 5780's mapping test against the relay: its main port saw this node at `observed`; a
/// binding request from the same socket to its second port (the next port number, see
/// `warren_relay`) shows the mapping towards another destination. Unknown if that port does
/// not answer.
async fn classify(paths: &Paths, relay: SocketAddr, observed: SocketAddr) -> (NatType, Option<SocketAddr>) {
    let Some(port) = relay.port().checked_add(1) else { return (NatType::Unknown, None) };
    let tid = crate::transport::paths::random_bytes();
    let mut stun = paths.subscribe_stun();
    let mut probe = NatProbe::new(std::time::Instant::now(), SocketAddr::new(relay.ip(), port), tid);
    loop {
        while let Some((to, request)) = probe.poll_transmit(std::time::Instant::now()) {
            paths.send_stun(&request, to);
        }
        match probe.outcome() {
            Some(Some(second)) => {
                let local = paths.candidates().local;
                return (nat::classify(&local, observed, second), Some(second));
            }
            Some(None) => return (NatType::Unknown, None),
            None => {}
        }
        let Some(deadline) = probe.poll_timeout() else { return (NatType::Unknown, None) };
        tokio::select! {
            received = stun.recv() => match received {
                Ok((from, datagram)) => probe.handle_datagram(from, &datagram),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return (NatType::Unknown, None),
            },
            _ = tokio::time::sleep_until(deadline.into()) => probe.handle_timeout(std::time::Instant::now()),
        }
    }
}

/// The relay is a discovery source that resolves on demand: a peer it serves gets a placeholder
/// address, which the QUIC transport carries through the relay (and hole punching later moves
/// to a direct path). It publishes nothing: registering is the relay client's own job.
impl Discovery for RelayClient {
    fn resolve(&self, remote: RemoteIdentity) -> BoxFuture<'_, Result<Vec<SocketAddr>, String>> {
        Box::pin(async move {
            let paths = self.inner.transport.paths();
            let Some(relay) = paths.relay() else { return Ok(Vec::new()) };
            if !self.lookup(remote).await? {
                return Err(format!("the relay {} does not serve {remote}", relay.addr));
            }
            let placeholder = paths.placeholder_for(remote).ok_or_else(|| "too many relayed peers".to_owned())?;
            // A new connection starts on the relay; an old punched path may be dead.
            paths.forget_direct(&remote);
            Ok(vec![placeholder])
        })
    }
}

/// Sends one request on a stream of its own and reads the answer.
pub(crate) async fn request_on(conn: &quinn::Connection, request: &Request) -> Result<Response, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        control::write(&mut send, request).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        control::read::<_, Response>(&mut recv).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| "the relay did not answer".to_owned())?
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
