//! TCP hole punching by simultaneous open, signalled on a [`TCP_PROTOCOL`] stream of a
//! connection the two peers already have (through the relay, typically).
//!
//! ```text
//! offerer  -> Offer { candidates }     its reflexive and local addresses, with its TCP port
//! answerer <- Answer { candidates }    the same of its own; it starts connecting as it sends
//! (both connect from their TCP listener's port to the other's candidates, again and again)
//! offerer  -> Finished { ok }          the answerer stops
//! ```
//!
//! A candidate's port is the TCP listener's: a NAT that keeps ports (most home NATs, Linux's
//! `masquerade` while the port is free) maps the connect to the same public port, which is what
//! the peer aims at. A NAT that picks another port defeats it (the punch then fails and the
//! connection stays as it was).
//!
//! Who runs Noise as the dialler: the offerer, always, on whatever stream its connect gave. The
//! answerer waits [`PUNCH_FIRST_BYTE`](crate::transport::tcp) for the offerer's first message;
//! if none comes, the offerer's listener took the answerer's SYN as an ordinary connection (the
//! offerer has a public address) and waits for a dialler, so the answerer dials.
//!
//! Limits: at most [`MAX_TCP_CANDIDATES`] candidates are tried, for at most [`PUNCH_TIME`], and
//! a peer gets one punch per [`PUNCH_INTERVAL`]: a connected peer cannot make this node send
//! SYNs at will. Either side's whole attempt, handshake and hello included, ends within
//! [`PUNCH_TIME`] plus the handshake timeout, so a peer that connects and stalls holds nothing.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Direction, P2P};
use crate::RemoteIdentity;
use crate::connection::{Connection, Stream};
use crate::error::{ConnectError, TransportError};
use crate::transport::tcp::{Punched, TcpTransport};
use crate::wire::control;
pub use crate::wire::punch::TCP_PROTOCOL;
use crate::wire::punch::TcpMessage;

/// How long both sides keep connecting.
pub const PUNCH_TIME: Duration = Duration::from_secs(10);

/// Candidates tried from a peer's offer or answer.
pub const MAX_TCP_CANDIDATES: usize = 4;

/// A peer's offers to answer, at most one per this long.
pub const PUNCH_INTERVAL: Duration = Duration::from_secs(10);

fn signalling(error: impl std::fmt::Display) -> ConnectError {
    let addr = SocketAddr::from(([0, 0, 0, 0], 0));
    ConnectError::Transport { addr, error: TransportError::Rendezvous(format!("TCP hole punch: {error}")) }
}

impl P2P {
    /// Opens a direct TCP connection to `remote` by simultaneous open, signalled over the
    /// connection the two already have (relayed, say): both sides connect from their TCP
    /// listeners' ports at once, so that each NAT sees the other's SYN as the answer to its
    /// own. Needs a TCP listener on both sides ([`P2P::listen_tcp`]). On success the node has
    /// the new connection too (it is the one [`P2P::open_connection`] then gives). Ends with an
    /// [`Event::TcpHolePunch`](crate::Event::TcpHolePunch) once the offer went out.
    pub async fn punch_tcp(&self, remote: RemoteIdentity) -> Result<Connection, ConnectError> {
        let tcp = self.inner.tcp.get().cloned().ok_or(ConnectError::NoTransport)?;
        let started = tokio::time::Instant::now();
        let result = self.offer_tcp_punch(&tcp, remote).await;
        self.emit(crate::Event::TcpHolePunch {
            remote,
            direct: result.as_ref().ok().map(Connection::remote_address),
            elapsed_ms: started.elapsed().as_millis() as u64,
            error: result.as_ref().err().map(ToString::to_string),
        });
        result
    }

    /// Whether an open TCP connection to `remote` exists.
    pub(crate) fn has_tcp_connection(&self, remote: &RemoteIdentity) -> bool {
        !self.tcp_connections(remote).is_empty()
    }

    /// Whether this node can offer a TCP hole punch (it has a TCP listener).
    pub(crate) fn can_punch_tcp(&self) -> bool {
        self.inner.tcp.get().is_some()
    }

    async fn offer_tcp_punch(&self, tcp: &TcpTransport, remote: RemoteIdentity) -> Result<Connection, ConnectError> {
        let signal = self.open_connection(&remote).ok_or(ConnectError::NoAddress { remote })?;
        let stream = signal.open_stream(TCP_PROTOCOL).await?;
        let (mut send, mut recv) = stream.into_split();
        let offer = TcpMessage::Offer { candidates: self.tcp_candidates(tcp) };
        control::write(&mut send, &offer).await.map_err(signalling)?;
        let candidates = match control::read::<_, TcpMessage>(&mut recv).await.map_err(signalling)? {
            TcpMessage::Answer { mut candidates } => {
                candidates.truncate(MAX_TCP_CANDIDATES);
                candidates
            }
            other => return Err(signalling(format!("expected an answer, got {other:?}"))),
        };
        let deadline = tokio::time::Instant::now() + PUNCH_TIME;
        let known: Vec<u64> = self.tcp_connections(&remote).iter().map(Connection::id).collect();
        let ours = async {
            let dialled = tcp
                .dial_punched(candidates, deadline, remote)
                .await
                .map_err(|error| ConnectError::Transport { addr: SocketAddr::from(([0, 0, 0, 0], 0)), error })?;
            self.establish(dialled, Direction::Outbound, Some(remote), None).await
        };
        // Or the answerer's connect reached our listener and it dialled us.
        let theirs = async {
            loop {
                let added = self.inner.connection_added.notified();
                if let Some(conn) = self.new_tcp_connection(&remote, &known) {
                    return Ok(conn);
                }
                added.await;
            }
        };
        let raced = async {
            tokio::select! {
                result = ours => match (result, self.new_tcp_connection(&remote, &known)) {
                    (Err(_), Some(theirs)) => Ok(theirs),
                    (result, _) => result,
                },
                conn = theirs => conn,
            }
        };
        // The connects end at the deadline; a peer that connects and then stalls the handshake
        // or the hello is cut off too.
        let limit = PUNCH_TIME + crate::transport::tcp::HANDSHAKE_TIMEOUT;
        let result = tokio::time::timeout(limit, raced).await.unwrap_or_else(|_| {
            Err(ConnectError::Transport {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                error: TransportError::Timeout(limit),
            })
        });
        let _ = control::write(&mut send, &TcpMessage::Finished { ok: result.is_ok() }).await;
        let _ = send.finish();
        result
    }

    /// The open TCP connections to `remote`, oldest first.
    fn tcp_connections(&self, remote: &RemoteIdentity) -> Vec<Connection> {
        let connections = self.inner.connections.lock().expect("connection lock poisoned");
        let list = connections.get(remote).map(Vec::as_slice).unwrap_or_default();
        list.iter().filter(|c| c.close_reason().is_none() && c.transport_name() == "tcp").cloned().collect()
    }

    /// A TCP connection to `remote` whose id is not in `known`, if there is one.
    fn new_tcp_connection(&self, remote: &RemoteIdentity, known: &[u64]) -> Option<Connection> {
        self.tcp_connections(remote).into_iter().rev().find(|c| !known.contains(&c.id()))
    }

    /// This node's TCP candidates: the addresses of its QUIC socket's candidates (local and
    /// reflexive), each with the TCP listener's port; or the listener's own address.
    fn tcp_candidates(&self, tcp: &TcpTransport) -> Vec<SocketAddr> {
        let port = tcp.local_addr().port();
        let mut out = Vec::new();
        if let Some(paths) = self.paths() {
            let candidates = paths.candidates();
            out.extend(candidates.reflexive.map(|r| SocketAddr::new(r.ip(), port)));
            out.extend(candidates.local.iter().map(|a| SocketAddr::new(a.ip(), port)));
        }
        if !tcp.local_addr().ip().is_unspecified() {
            out.insert(0, tcp.local_addr());
        }
        out.dedup();
        out.truncate(MAX_TCP_CANDIDATES);
        out
    }

    /// Registers the TCP hole-punching handler.
    pub(super) fn serve_tcp_punching(&self) {
        let node = self.downgrade();
        let _ = self.register_protocol(TCP_PROTOCOL, move |stream: Stream| {
            let node = node.clone();
            async move {
                let Some(p2p) = node.upgrade() else { return };
                let remote = stream.remote();
                if let Err(error) = p2p.answer_tcp_punch(stream).await {
                    tracing::debug!(%remote, %error, "TCP hole punching (answering) failed");
                }
            }
        });
    }

    async fn answer_tcp_punch(&self, stream: Stream) -> Result<(), String> {
        let remote = stream.remote();
        let tcp = self.inner.tcp.get().cloned().ok_or("no TCP listener")?;
        {
            let now = std::time::Instant::now();
            let mut punches = self.inner.tcp_punches.lock().expect("punch lock poisoned");
            punches.retain(|_, at| now.saturating_duration_since(*at) < PUNCH_INTERVAL);
            if punches.contains_key(&remote) {
                return Err("offers come too often".into());
            }
            punches.insert(remote, now);
        }
        let (mut send, mut recv) = stream.into_split();
        let mut candidates = match control::read::<_, TcpMessage>(&mut recv).await.map_err(|e| e.to_string())? {
            TcpMessage::Offer { candidates } => candidates,
            other => return Err(format!("expected an offer, got {other:?}")),
        };
        candidates.truncate(MAX_TCP_CANDIDATES);
        let answer = TcpMessage::Answer { candidates: self.tcp_candidates(&tcp) };
        control::write(&mut send, &answer).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + PUNCH_TIME;
        // The offerer's `Finished` (or its stream ending) stops the connects and the wait for
        // its first byte, but not a handshake under way: dropped midway, that would leave the
        // offerer a connection it may already have taken, closing under it.
        let (ended, mut finished) = tokio::sync::watch::channel(false);
        let read_finished = async {
            while let Ok(message) = control::read::<_, TcpMessage>(&mut recv).await {
                if matches!(message, TcpMessage::Finished { .. }) {
                    break;
                }
            }
            let _ = ended.send(true);
            std::future::pending::<()>().await
        };
        let punch = async {
            let stop = async |finished: &mut tokio::sync::watch::Receiver<bool>| {
                let _ = finished.wait_for(|ended| *ended).await;
            };
            let opened = tokio::select! {
                opened = tcp.simultaneous_open(&candidates, deadline) => opened.map_err(|e| e.to_string())?,
                () = stop(&mut finished) => return Ok(()),
            };
            let spoke = tokio::select! {
                spoke = TcpTransport::offerer_spoke(&opened.0) => spoke.map_err(|e| e.to_string())?,
                () = stop(&mut finished) => return Ok(()),
            };
            let (stream, addr) = opened;
            match tcp.answer_punched(stream, addr, remote, spoke).await.map_err(|e| e.to_string())? {
                Punched::Incoming(incoming) => self.accept(incoming),
                Punched::Dialled(conn) => {
                    self.establish(conn, Direction::Outbound, Some(remote), None).await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<_, String>(())
        };
        let limit = PUNCH_TIME + crate::transport::tcp::HANDSHAKE_TIMEOUT;
        let raced = async {
            tokio::select! {
                result = punch => result,
                () = read_finished => unreachable!("pends after the offerer's end"),
            }
        };
        tokio::time::timeout(limit, raced).await.unwrap_or_else(|_| Err(format!("no end within {limit:?}")))
    }
}
