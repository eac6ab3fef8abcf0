//! Pairing by short code as sans-IO state machines: [`Invite`] (the code's lifetime and its
//! attempts) and [`Pairing`] (one SPAKE2 exchange with key confirmation, either side).
//!
//! SPAKE2 runs inside a warren connection, which already authenticated both node identities;
//! the PAKE takes those identities as its `A` (inviter) and `B` (joiner), so the agreed key
//! depends on the code *and* on who is at each end. Someone who answers the invite first, or a
//! relay that connects the two devices through itself, is at least one of the ends: its key
//! differs from the honest device's unless it knows the code, and the confirmation fails.
//! Each exchange the inviter starts costs the invite one attempt, counted before any answer, so
//! an attacker who aborts early still pays for its guess.

use std::collections::VecDeque;

use spake2::{Ed25519Group, Identity as SpakeId, Password, Spake2};
use warren::RemoteIdentity;

use crate::code::Code;
use crate::wire::{Grant, PairMessage};

/// How many exchanges an invite allows.
pub const ATTEMPTS: u32 = 3;
/// How long an invite lasts by default (seconds).
pub const INVITE_LIFETIME: u64 = 10 * 60;

/// Why pairing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// The invite's time is up.
    #[error("the invite expired; ask for a new code")]
    Expired,
    /// The invite was used already.
    #[error("the invite was used already; ask for a new code")]
    Used,
    /// Too many wrong codes.
    #[error("too many wrong codes for this invite; it is closed, ask for a new code")]
    TooManyAttempts,
    /// The keys differ: a wrong code, or someone else in the middle.
    #[error("the code did not match (a typo, or another device answered the invite)")]
    Mismatch,
    /// The other side gave up.
    #[error("the other device gave up: {0}")]
    RefusedByPeer(String),
    /// Out-of-order or malformed messages.
    #[error("pairing protocol violation: {0}")]
    Protocol(String),
    /// The stream failed.
    #[error("the pairing stream failed: {0}")]
    Stream(String),
    /// The grant does not verify.
    #[error("the membership the inviter sent does not verify: {0}")]
    BadGrant(String),
    /// Nobody answered for the nameplate.
    #[error("no device answers for code number {0}")]
    NotFound(u16),
    /// The relay could not be asked (not registered, refused, unreachable).
    #[error("the relay: {0}")]
    Relay(String),
}

/// An open invite: its code, expiry and attempts.
#[derive(Debug)]
pub struct Invite {
    code: Code,
    expires_at: u64,
    attempts_left: u32,
    used: bool,
}

impl Invite {
    /// An invite for `code`, open until `expires_at` (Unix seconds).
    pub fn new(code: Code, expires_at: u64) -> Self {
        Self { code, expires_at, attempts_left: ATTEMPTS, used: false }
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// A joiner starts an exchange: costs an attempt, or says why not.
    pub fn begin(&mut self, now: u64) -> Result<Code, PairError> {
        if self.used {
            return Err(PairError::Used);
        }
        if now >= self.expires_at {
            return Err(PairError::Expired);
        }
        if self.attempts_left == 0 {
            return Err(PairError::TooManyAttempts);
        }
        self.attempts_left -= 1;
        Ok(self.code)
    }

    /// An exchange succeeded: the invite is spent.
    pub fn succeeded(&mut self) {
        self.used = true;
    }

    /// Attempts left.
    pub fn attempts_left(&self) -> u32 {
        self.attempts_left
    }

    /// Whether no further exchange can start.
    pub fn is_closed(&self, now: u64) -> bool {
        self.used || now >= self.expires_at || self.attempts_left == 0
    }
}

enum State {
    /// Waiting for the peer's SPAKE2 message.
    AwaitSpake(Spake2<Ed25519Group>),
    /// Key agreed; waiting for the peer's confirmation (`expected`), then (joiner) sending ours.
    AwaitConfirm {
        expected: [u8; 32],
        reply: Option<[u8; 32]>,
    },
    /// (joiner) Confirmed; waiting for the grant.
    AwaitGrant,
    /// (inviter) Both confirmed: the driver sends the grant.
    Confirmed,
    /// (joiner) Got the grant.
    Granted(Box<Grant>),
    Failed(PairError),
}

/// One side of one exchange.
pub struct Pairing {
    inviter: bool,
    inviter_id: RemoteIdentity,
    joiner_id: RemoteIdentity,
    ours: Vec<u8>,
    state: State,
    out: VecDeque<PairMessage>,
}

impl Pairing {
    /// The inviter's side, `me` the inviter, `peer` the joiner the connection authenticated.
    pub fn inviter(code: Code, me: RemoteIdentity, peer: RemoteIdentity) -> Self {
        let (spake, ours) = Spake2::<Ed25519Group>::start_a(
            &Password::new(code.password()),
            &SpakeId::new(me.as_bytes()),
            &SpakeId::new(peer.as_bytes()),
        );
        Self::new(true, me, peer, spake, ours)
    }

    /// The joiner's side, `me` the joiner, `peer` the inviter the connection authenticated.
    pub fn joiner(code: Code, me: RemoteIdentity, peer: RemoteIdentity) -> Self {
        let (spake, ours) = Spake2::<Ed25519Group>::start_b(
            &Password::new(code.password()),
            &SpakeId::new(peer.as_bytes()),
            &SpakeId::new(me.as_bytes()),
        );
        Self::new(false, peer, me, spake, ours)
    }

    fn new(
        inviter: bool,
        inviter_id: RemoteIdentity,
        joiner_id: RemoteIdentity,
        spake: Spake2<Ed25519Group>,
        ours: Vec<u8>,
    ) -> Self {
        let out = VecDeque::from([PairMessage::Spake { message: ours.clone() }]);
        Self { inviter, inviter_id, joiner_id, ours, state: State::AwaitSpake(spake), out }
    }

    fn mac(&self, key: &[u8; 32], theirs: &[u8], from_inviter: bool) -> [u8; 32] {
        let (a, b) = if self.inviter { (&self.ours[..], theirs) } else { (theirs, &self.ours[..]) };
        let mut hasher = blake3::Hasher::new_keyed(key);
        hasher.update(if from_inviter { b"inviter" } else { b"joiner\0" });
        hasher.update(self.inviter_id.as_bytes());
        hasher.update(self.joiner_id.as_bytes());
        hasher.update(&(a.len() as u64).to_le_bytes());
        hasher.update(a);
        hasher.update(b);
        *hasher.finalize().as_bytes()
    }

    /// Feeds one message from the peer.
    pub fn handle(&mut self, message: PairMessage) {
        let state = std::mem::replace(&mut self.state, State::AwaitGrant);
        self.state = match (state, message) {
            (state @ (State::Failed(_) | State::Granted(_)), _) => state,
            (_, PairMessage::Failed { reason }) => State::Failed(PairError::RefusedByPeer(reason)),
            (State::AwaitSpake(spake), PairMessage::Spake { message }) => match spake.finish(&message) {
                Err(e) => self.fail(PairError::Protocol(format!("bad SPAKE2 message: {e}"))),
                Ok(shared) => {
                    let key = blake3::derive_key("warren pairing confirm v1", &shared);
                    let expected = self.mac(&key, &message, !self.inviter);
                    let mine = self.mac(&key, &message, self.inviter);
                    if self.inviter {
                        // The inviter confirms first; the joiner only after checking it.
                        self.out.push_back(PairMessage::Confirm { mac: mine });
                        State::AwaitConfirm { expected, reply: None }
                    } else {
                        State::AwaitConfirm { expected, reply: Some(mine) }
                    }
                }
            },
            (State::AwaitConfirm { expected, reply }, PairMessage::Confirm { mac }) => {
                if !constant_time_eq(&expected, &mac) {
                    self.fail(PairError::Mismatch)
                } else if let Some(mine) = reply {
                    self.out.push_back(PairMessage::Confirm { mac: mine });
                    State::AwaitGrant
                } else {
                    State::Confirmed
                }
            }
            (State::AwaitGrant, PairMessage::Grant { grant }) if !self.inviter => State::Granted(grant),
            (_, other) => self.fail(PairError::Protocol(format!("unexpected {}", name(&other)))),
        };
    }

    fn fail(&mut self, error: PairError) -> State {
        self.out.push_back(PairMessage::Failed { reason: error.to_string() });
        State::Failed(error)
    }

    /// The peer sent bytes that are no message.
    pub fn handle_invalid(&mut self, why: String) {
        if !matches!(self.state, State::Failed(_) | State::Granted(_)) {
            self.state = self.fail(PairError::Protocol(why));
        }
    }

    /// The stream ended before the exchange did.
    pub fn handle_closed(&mut self, why: String) {
        if !matches!(self.state, State::Failed(_) | State::Granted(_) | State::Confirmed) {
            self.state = State::Failed(PairError::Stream(why));
        }
    }

    /// (inviter) Both confirmed the code: the driver should build and send the grant.
    pub fn is_confirmed(&self) -> bool {
        matches!(self.state, State::Confirmed)
    }

    /// (inviter) Queues the grant.
    pub fn send_grant(&mut self, grant: Grant) {
        if self.is_confirmed() {
            self.out.push_back(PairMessage::Grant { grant: Box::new(grant) });
        }
    }

    /// The next message to send.
    pub fn poll_message(&mut self) -> Option<PairMessage> {
        self.out.pop_front()
    }

    /// The error, if it failed.
    pub fn error(&self) -> Option<&PairError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// (joiner) The grant, once received (the driver verifies it).
    pub fn take_grant(&mut self) -> Option<Box<Grant>> {
        match std::mem::replace(&mut self.state, State::AwaitGrant) {
            State::Granted(grant) => {
                self.state = State::Failed(PairError::Protocol("the grant was taken".into()));
                Some(grant)
            }
            other => {
                self.state = other;
                None
            }
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn name(message: &PairMessage) -> &'static str {
    match message {
        PairMessage::Spake { .. } => "Spake",
        PairMessage::Confirm { .. } => "Confirm",
        PairMessage::Grant { .. } => "Grant",
        PairMessage::Failed { .. } => "Failed",
    }
}

#[cfg(test)]
mod tests {
    use warren::Identity;

    use super::*;
    use crate::cert::{LibraryRef, Role, Signer};

    fn id() -> RemoteIdentity {
        Identity::generate().to_remote_identity()
    }

    /// Moves messages both ways until neither side has any.
    fn run(a: &mut Pairing, b: &mut Pairing) {
        loop {
            let mut moved = false;
            while let Some(m) = a.poll_message() {
                b.handle(m);
                moved = true;
            }
            while let Some(m) = b.poll_message() {
                a.handle(m);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn grant_for(joiner: RemoteIdentity) -> Grant {
        let key = Identity::generate();
        let lib = LibraryRef { id: [9; 16], key: key.to_remote_identity() };
        let signer = Signer::LibraryKey(&key);
        Grant {
            library: lib.id,
            name: "photos".into(),
            key: lib.key,
            credential: signer.certify(lib.id, joiner, Role::Member, u64::MAX).unwrap(),
            inviter: signer.certify(lib.id, key.to_remote_identity(), Role::Admin, u64::MAX).unwrap(),
            revocations: None,
        }
    }

    #[test]
    fn the_same_code_pairs_and_the_joiner_gets_the_grant() {
        let code = Code::generate();
        let (i, j) = (id(), id());
        let mut inviter = Pairing::inviter(code, i, j);
        let mut joiner = Pairing::joiner(code, j, i);
        run(&mut inviter, &mut joiner);
        assert!(inviter.is_confirmed(), "{:?}", inviter.error());
        let grant = grant_for(j);
        inviter.send_grant(grant.clone());
        run(&mut inviter, &mut joiner);
        assert_eq!(joiner.take_grant().map(|g| *g), Some(grant));
    }

    #[test]
    fn a_wrong_code_fails_on_both_sides_before_anything_is_granted() {
        let code = Code::generate();
        let mut guess = Code::generate();
        while guess == code {
            guess = Code::generate();
        }
        let (i, j) = (id(), id());
        let mut inviter = Pairing::inviter(code, i, j);
        let mut joiner = Pairing::joiner(guess, j, i);
        run(&mut inviter, &mut joiner);
        assert_eq!(joiner.error(), Some(&PairError::Mismatch));
        assert!(matches!(inviter.error(), Some(PairError::RefusedByPeer(_))));
        assert!(!inviter.is_confirmed());
        // A grant the inviter would send now is not queued.
        inviter.send_grant(grant_for(j));
        assert!(inviter.poll_message().is_none());
    }

    #[test]
    fn an_attacker_that_answers_the_invite_first_is_caught_by_the_joiner() {
        // The attacker saw the nameplate on the LAN and guesses the words.
        let code = Code::generate();
        let (attacker, j) = (id(), id());
        let mut fake = Pairing::inviter(Code::generate(), attacker, j);
        let mut joiner = Pairing::joiner(code, j, attacker);
        run(&mut fake, &mut joiner);
        assert_eq!(joiner.error(), Some(&PairError::Mismatch));
        assert!(!fake.is_confirmed());
    }

    #[test]
    fn a_relay_in_the_middle_that_forwards_every_message_still_fails() {
        // The attacker is the authenticated peer of both devices and passes the PAKE messages
        // through unchanged: each device computes its key with the attacker's identity in it.
        let code = Code::generate();
        let (i, j, m) = (id(), id(), id());
        let mut inviter = Pairing::inviter(code, i, m);
        let mut joiner = Pairing::joiner(code, j, m);
        run(&mut inviter, &mut joiner);
        assert_eq!(joiner.error(), Some(&PairError::Mismatch));
        assert!(!inviter.is_confirmed());
    }

    #[test]
    fn invites_are_single_use_expire_and_limit_attempts() {
        let mut invite = Invite::new(Code::generate(), 100);
        for left in (0..ATTEMPTS).rev() {
            invite.begin(10).unwrap();
            assert_eq!(invite.attempts_left(), left);
        }
        assert_eq!(invite.begin(10), Err(PairError::TooManyAttempts));
        assert!(invite.is_closed(10));

        let mut invite = Invite::new(Code::generate(), 100);
        assert_eq!(invite.begin(100), Err(PairError::Expired));
        invite.begin(99).unwrap();
        invite.succeeded();
        assert_eq!(invite.begin(99), Err(PairError::Used));
    }

    #[test]
    fn hostile_messages_fail_the_exchange_cleanly() {
        let code = Code::generate();
        let (i, j) = (id(), id());
        for bad in [
            PairMessage::Spake { message: vec![0xff; 33] },
            PairMessage::Spake { message: vec![] },
            PairMessage::Confirm { mac: [0; 32] },
            PairMessage::Grant { grant: Box::new(grant_for(j)) },
        ] {
            let mut inviter = Pairing::inviter(code, i, j);
            let _ = inviter.poll_message();
            inviter.handle(bad.clone());
            assert!(matches!(inviter.error(), Some(PairError::Protocol(_))), "{bad:?} -> {:?}", inviter.error());
            assert!(matches!(inviter.poll_message(), Some(PairMessage::Failed { .. })));
        }
        // A grant before the joiner confirmed is refused too.
        let mut joiner = Pairing::joiner(code, j, i);
        joiner.handle(PairMessage::Grant { grant: Box::new(grant_for(j)) });
        assert!(joiner.take_grant().is_none());
        let mut joiner = Pairing::joiner(code, j, i);
        joiner.handle_closed("reset".into());
        assert!(matches!(joiner.error(), Some(PairError::Stream(_))));
    }
}
