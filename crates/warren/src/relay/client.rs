//! The node's side of a relay: register, keep the registration, reconnect with backoff.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::{self, Request, Response};
use crate::p2p::{BoxFuture, Event, Hook};
use crate::transport::paths::RelayRoute;
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

/// Which relay to use, and how to get in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relay's identity (checked in the handshake).
    pub identity: RemoteIdentity,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Its access token, if it asks for one.
    pub token: Option<String>,
}

impl std::str::FromStr for RelayConfig {
    type Err = String;

    /// Parses `IDENTITY@ADDR`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, addr) = s.split_once('@').ok_or_else(|| format!("{s:?} is not IDENTITY@ADDRESS"))?;
        let identity = id.parse().map_err(|e| format!("relay identity {id:?}: {e}"))?;
        let addr = addr.parse().map_err(|e| format!("relay address {addr:?}: {e}"))?;
        Ok(Self { identity, addr, token: None })
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
        crate::punch::register(p2p);
        let (state, _) = watch::channel(Status::Connecting);
        let client = Self {
            inner: Arc::new(ClientInner {
                config,
                transport: transport.clone(),
                state,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                last_error: Mutex::new(None),
            }),
        };
        let (me, node, transport) = (client.clone(), p2p.clone(), transport.clone());
        let cancel = client.inner.cancel.clone();
        p2p.spawn(client.inner.tasks.track_future(async move {
            cancel.run_until_cancelled(me.run(node, transport)).await;
        }));
        client.inner.tasks.close();
        p2p.register_hook(Arc::new(client.clone()));
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
            match register(&transport, config).await {
                Ok((conn, observed)) => {
                    backoff = FIRST_BACKOFF;
                    *self.inner.last_error.lock().expect("relay lock poisoned") = None;
                    transport.paths().set_relay(Some(RelayRoute {
                        identity: config.identity,
                        addr: config.addr,
                        observed,
                        conn: conn.clone(),
                    }));
                    self.inner.state.send_replace(Status::Registered(observed));
                    tracing::info!(relay = %config.addr, %observed, "registered with relay");
                    p2p.emit_event(Event::RelayConnected { relay: config.identity, addr: config.addr, observed });
                    let reason = conn.closed().await.to_string();
                    transport.paths().set_relay(None);
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
}

async fn register(
    transport: &QuicTransport,
    config: &RelayConfig,
) -> Result<(quinn::Connection, SocketAddr), RelayError> {
    let failed = |e: &dyn std::fmt::Display| RelayError::Failed(e.to_string());
    let endpoint = transport.endpoint().ok_or_else(|| RelayError::Failed("the transport is shut down".into()))?;
    let connecting = endpoint.connect(config.addr, tls::SERVER_NAME).map_err(|e| failed(&e))?;
    let conn = tokio::time::timeout(crate::p2p::HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| RelayError::Failed("handshake timed out".into()))?
        .map_err(|e| failed(&e))?;
    if tls::peer_identity(&conn) != Some(config.identity) {
        conn.close(crate::connection::codes::WRONG_IDENTITY, b"wrong identity");
        return Err(RelayError::Failed(format!("{} is not the relay {}", config.addr, config.identity)));
    }
    let response = request(&conn, &Request::Register { token: config.token.clone() }).await.map_err(|e| {
        // A refusal closes the connection; its reason says why.
        match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                RelayError::Refused(String::from_utf8_lossy(&close.reason).into_owned())
            }
            _ => RelayError::Failed(e),
        }
    })?;
    match response {
        Response::Registered { observed } => Ok((conn, observed)),
        Response::Refused { reason } => Err(RelayError::Refused(reason)),
        other => Err(RelayError::Failed(format!("unexpected answer {other:?}"))),
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
            self.inner.tasks.wait().await;
            let paths = self.inner.transport.paths();
            if let Some(relay) = paths.relay() {
                relay.conn.close(crate::connection::codes::CLOSED, b"shutting down");
                paths.set_relay(None);
            }
        })
    }
}
