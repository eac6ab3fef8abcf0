//! Hole punching, driven: runs one [`PunchSession`] (the sans-IO attempt in
//! [`crate::state::punch`]) over a [`PROTOCOL`] stream of a relayed connection, hands its
//! challenges to the path table and its validations back to it, and keeps one attempt per
//! peer at a time ([`Attempts`]).

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use crate::RemoteIdentity;
use crate::connection::{Connection, Stream};
pub(crate) use crate::state::punch::Role;
use crate::state::punch::{Attempt, OfferLimiter, PunchSession, offer_wins};
pub use crate::state::punch::{LAST_ROUND_GRACE, MAX_CANDIDATES, PREDICTED_PORTS, RETRY_AFTER, SCHEDULE};
use crate::transport::paths::Paths;
use crate::wire::control;
use crate::wire::punch::Message;
pub use crate::wire::punch::PROTOCOL;

/// The node's event for an attempt with `remote`.
pub(crate) fn event(remote: RemoteIdentity, attempt: Attempt) -> Event {
    let elapsed_ms = attempt.elapsed.as_millis() as u64;
    Event::HolePunch {
        remote,
        direct: attempt.direct.map(crate::transport::birthday::display),
        rounds: attempt.rounds,
        elapsed_ms,
        method: attempt.method,
        packets: attempt.packets,
        plan: match attempt.plan {
            crate::state::punch::Plan::Rounds => "rounds",
            crate::state::punch::Plan::Birthday { .. } => "birthday",
            crate::state::punch::Plan::Skip => "none (both NATs hard)",
        }
        .into(),
    }
}

/// The attempts under way, one per peer, and the limit on answering offers.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    running: HashMap<RemoteIdentity, (Role, u64, CancellationToken)>,
    next: u64,
    offers: OfferLimiter,
}

/// Why an attempt was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("a punch with this peer is under way")]
    UnderWay,
    #[error("our own offer to this peer goes first")]
    OursFirst,
    #[error("offers come too often")]
    TooOften,
}

impl Attempts {
    /// Starts our own attempt with `peer`.
    pub(crate) fn begin_ours(&mut self, peer: RemoteIdentity) -> Result<(u64, CancellationToken), Refusal> {
        if self.running.contains_key(&peer) {
            return Err(Refusal::UnderWay);
        }
        Ok(self.insert(peer, Role::Initiator))
    }

    /// Starts answering `peer`'s offer. Crossing offers (both dialled through the relay at
    /// once): the smaller identity's goes on; ours is cancelled if theirs wins.
    pub(crate) fn begin_theirs(
        &mut self,
        now: Instant,
        me: &RemoteIdentity,
        peer: RemoteIdentity,
    ) -> Result<(u64, CancellationToken), Refusal> {
        match self.running.get(&peer) {
            Some((Role::Responder, ..)) => return Err(Refusal::UnderWay),
            Some((Role::Initiator, ..)) if !offer_wins(&peer, me) => return Err(Refusal::OursFirst),
            _ => {}
        }
        if !self.offers.may_answer(now, peer) {
            return Err(Refusal::TooOften);
        }
        if let Some((_, _, ours)) = self.running.remove(&peer) {
            ours.cancel();
        }
        Ok(self.insert(peer, Role::Responder))
    }

    fn insert(&mut self, peer: RemoteIdentity, role: Role) -> (u64, CancellationToken) {
        self.next += 1;
        let token = CancellationToken::new();
        self.running.insert(peer, (role, self.next, token.clone()));
        (self.next, token)
    }

    /// The attempt `generation` with `peer` ended (a later one is left alone).
    pub(crate) fn end(&mut self, peer: &RemoteIdentity, generation: u64) {
        if self.running.get(peer).is_some_and(|(_, g, _)| *g == generation) {
            self.running.remove(peer);
        }
    }
}

/// Runs one attempt on `stream` (opened by the initiator on `conn`, accepted by the
/// responder). `report` hears of the attempt once this side's schedule is over. Ok(true) if
/// either side found a direct path.
pub(crate) async fn run(
    paths: &std::sync::Arc<Paths>,
    conn: &Connection,
    stream: Stream,
    role: Role,
    report: &(dyn Fn(Attempt) + Sync),
) -> Result<bool, String> {
    let now = Instant::now();
    let on_loopback = paths.local_addr().is_ok_and(|a| a.ip().is_loopback());
    // A NAT test under way (just registered with the relay) decides the method: wait for it.
    paths.settled_nat(crate::state::nat::PROBE_TIMEOUT).await;
    let ours = paths.candidates();
    let seed = crate::transport::paths::random_bytes();
    let mut session = match role {
        Role::Initiator => PunchSession::initiator(now, ours, on_loopback, seed),
        Role::Responder => PunchSession::responder(now, ours, on_loopback, seed),
    };
    let mut validated = paths.subscribe_validated();
    let (mut send, mut recv) = stream.into_split();
    let (messages, mut incoming) = tokio::sync::mpsc::channel(4);
    // Reading is not cancel-safe (a message is a length, then a body), so one future reads
    // and the driver takes whole messages from a channel.
    let reader = async move {
        loop {
            let message = control::read::<_, Message>(&mut recv).await;
            let failed = message.is_err();
            if messages.send(message).await.is_err() || failed {
                break;
            }
        }
        std::future::pending().await
    };
    let driver = async {
        loop {
            // Opens before messages: the initiator's leave before its `Sync`.
            while let Some(target) = session.poll_open() {
                paths.open(&conn.remote, target);
            }
            while let Some((target, count)) = session.poll_birthday() {
                let opened = paths.open_birthday(&conn.remote, target, count);
                tracing::debug!(remote = %conn.remote, %target, opened, "birthday probing: extra sockets open");
            }
            while let Some(message) = session.poll_message() {
                if control::write(&mut send, &message).await.is_err() {
                    session.handle_closed();
                }
            }
            while let Some(target) = session.poll_punch() {
                paths.challenge(&conn.remote, target);
            }
            if let Some(attempt) = session.poll_report() {
                report(attempt);
            }
            if session.is_done() {
                break;
            }
            let deadline = session.poll_timeout().unwrap_or_else(Instant::now);
            tokio::select! {
                message = incoming.recv() => match message {
                    Some(Ok(message)) => {
                        if let Err(error) = session.handle_message(Instant::now(), message) {
                            tracing::debug!(remote = %conn.remote, %error, "hole punching: bad signalling");
                        }
                    }
                    _ => session.handle_closed(),
                },
                found = validated.recv() => match found {
                    Ok((remote, addr)) if remote == conn.remote => session.handle_validated(Instant::now(), addr),
                    Err(RecvError::Lagged(_)) => {
                        if let Some(addr) = paths.direct(&conn.remote) {
                            session.handle_validated(Instant::now(), addr);
                        }
                    }
                    _ => {}
                },
                _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
            }
        }
        let _ = send.finish();
        paths.close_birthday(&conn.remote);
        session.outcome().unwrap_or(Ok(false)).map_err(|e| e.to_string())
    };
    futures_lite::future::or(driver, reader).await
}
