//! The tunnel's membership proof as a sans-IO state machine: fed the peer's messages and the
//! wall-clock time (Unix seconds), polled for the messages to send and the outcome.
//!
//! ```text
//! dialler                                   acceptor
//!   Hello { library, credential, list } ->
//!                                           merges the list, verifies the credential
//!                                       <-  Hello { ..its own.. }   or   Refused { why }
//!   merges, verifies
//!   Accept  or  Refused { why }         ->
//!   application bytes ...                   hands the stream to the application on Accept
//! ```
//!
//! The acceptor shows its own credential only to a verified member, so a stranger that opens a
//! tunnel learns nothing about the acceptor's libraries. Both sides take the other's revocation
//! list before verifying, so a revoked node that carries an old list is refused by any member
//! that has heard of its revocation, and a member that was offline learns of it here.

use std::collections::VecDeque;

use warren::RemoteIdentity;

use crate::cert::{CertError, Credential, LibraryRef, Role};
use crate::revocation::{Offered, Revocations};
use crate::wire::TunnelMessage;

/// What a node holds for one library it is a member of.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The library.
    pub library: LibraryRef,
    /// This node's credential.
    pub credential: Credential,
    /// The revocations it knows.
    pub revocations: Revocations,
}

/// Why a tunnel did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// This side refused the peer.
    #[error("refused {peer}: {reason}")]
    NotAMember {
        /// The peer.
        peer: RemoteIdentity,
        /// Why.
        reason: CertError,
    },
    /// The peer refused this side.
    #[error("the peer refused the tunnel: {0}")]
    RefusedByPeer(String),
    /// The peer sent something out of order or for another library.
    #[error("tunnel protocol violation: {0}")]
    Protocol(String),
    /// The stream failed or closed before the proof was done.
    #[error("the tunnel stream failed: {0}")]
    Stream(String),
}

/// What a non-member is told, whether or not this node is in the library.
pub const NOT_A_MEMBER: &str = "not a member of this library";

#[derive(Debug)]
enum State {
    AwaitHello,
    AwaitAccept(Role),
    Open(Role),
    Failed(TunnelError),
}

/// One side of one tunnel's proof.
#[derive(Debug)]
pub struct Handshake {
    dialler: bool,
    membership: Membership,
    peer: RemoteIdentity,
    now: u64,
    state: State,
    out: VecDeque<TunnelMessage>,
    learned: bool,
}

impl Handshake {
    /// The dialling side: its `Hello` is queued.
    pub fn dial(membership: Membership, peer: RemoteIdentity, now: u64) -> Self {
        let mut this = Self::new(true, membership, peer, now);
        let hello = this.hello();
        this.out.push_back(hello);
        this
    }

    /// The accepting side: it waits for the dialler's `Hello`.
    pub fn accept(membership: Membership, peer: RemoteIdentity, now: u64) -> Self {
        Self::new(false, membership, peer, now)
    }

    fn new(dialler: bool, membership: Membership, peer: RemoteIdentity, now: u64) -> Self {
        Self { dialler, membership, peer, now, state: State::AwaitHello, out: VecDeque::new(), learned: false }
    }

    fn hello(&self) -> TunnelMessage {
        TunnelMessage::Hello {
            library: self.membership.library.id,
            credential: self.membership.credential.clone(),
            revocations: self.membership.revocations.current().cloned(),
        }
    }

    /// Feeds one message from the peer.
    pub fn handle(&mut self, message: TunnelMessage) {
        match (&self.state, message) {
            (State::AwaitHello, TunnelMessage::Hello { library, credential, revocations }) => {
                if library != self.membership.library.id {
                    return self.fail(TunnelError::Protocol("the peer answered for another library".into()), true);
                }
                if let Some(list) = revocations {
                    // A list that does not verify is ignored (the credential check decides).
                    let library = self.membership.library;
                    if let Ok(Offered::Taken) = self.membership.revocations.offer(&library, list, self.now) {
                        self.learned = true;
                    }
                }
                let checked = self.membership.library.verify(
                    &credential,
                    &self.peer,
                    self.now,
                    self.membership.revocations.revoked(),
                );
                match checked {
                    Err(reason) => self.fail(TunnelError::NotAMember { peer: self.peer, reason }, true),
                    Ok(role) if self.dialler => {
                        self.out.push_back(TunnelMessage::Accept);
                        self.state = State::Open(role);
                    }
                    Ok(role) => {
                        let hello = self.hello();
                        self.out.push_back(hello);
                        self.state = State::AwaitAccept(role);
                    }
                }
            }
            (State::AwaitAccept(role), TunnelMessage::Accept) => self.state = State::Open(*role),
            (State::AwaitHello | State::AwaitAccept(_), TunnelMessage::Refused { reason }) => {
                self.fail(TunnelError::RefusedByPeer(reason), false)
            }
            (State::Open(_) | State::Failed(_), _) => {}
            (_, other) => self.fail(TunnelError::Protocol(format!("unexpected {}", name(&other))), true),
        }
    }

    /// The peer sent bytes that are no message.
    pub fn handle_invalid(&mut self, why: String) {
        if !matches!(self.state, State::Open(_) | State::Failed(_)) {
            self.fail(TunnelError::Protocol(why), true);
        }
    }

    /// The stream closed or failed before the proof was done.
    pub fn handle_closed(&mut self, why: String) {
        if !matches!(self.state, State::Open(_) | State::Failed(_)) {
            self.state = State::Failed(TunnelError::Stream(why));
        }
    }

    fn fail(&mut self, error: TunnelError, tell: bool) {
        if tell {
            let reason = match &error {
                // Only a credential the library really signed earns details; anything else
                // gets the words an acceptor outside the library uses, so a stranger cannot
                // learn which libraries this node is in.
                TunnelError::NotAMember {
                    reason: reason @ (CertError::Expired { .. } | CertError::Revoked(_)),
                    ..
                } => {
                    format!("not a member: {reason}")
                }
                TunnelError::NotAMember { .. } => NOT_A_MEMBER.to_string(),
                other => other.to_string(),
            };
            self.out.push_back(TunnelMessage::Refused { reason });
        }
        self.state = State::Failed(error);
    }

    /// The next message to send.
    pub fn poll_message(&mut self) -> Option<TunnelMessage> {
        self.out.pop_front()
    }

    /// `None` while the proof runs; then the peer's verified role, or why not.
    pub fn outcome(&self) -> Option<Result<Role, TunnelError>> {
        match &self.state {
            State::Open(role) => Some(Ok(*role)),
            State::Failed(error) => Some(Err(error.clone())),
            State::AwaitHello | State::AwaitAccept(_) => None,
        }
    }

    /// Whether the peer's revocation list replaced this node's (the driver stores it).
    pub fn learned_revocations(&self) -> bool {
        self.learned
    }

    /// The membership, with what was learned.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
}

fn name(message: &TunnelMessage) -> &'static str {
    match message {
        TunnelMessage::Hello { .. } => "Hello",
        TunnelMessage::Accept => "Accept",
        TunnelMessage::Refused { .. } => "Refused",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use warren::Identity;

    use super::*;
    use crate::cert::Signer;

    const NOW: u64 = 50_000;

    struct Lib {
        key: Identity,
        lib: LibraryRef,
    }

    impl Lib {
        fn new() -> Self {
            let key = Identity::generate();
            Self { lib: LibraryRef { id: [3; 16], key: key.to_remote_identity() }, key }
        }

        fn member(&self, role: Role, not_after: u64) -> (RemoteIdentity, Membership) {
            let id = Identity::generate().to_remote_identity();
            let credential = Signer::LibraryKey(&self.key).certify(self.lib.id, id, role, not_after).unwrap();
            (id, Membership { library: self.lib, credential, revocations: Revocations::default() })
        }
    }

    /// Runs both sides to the end, moving messages; returns (dialler, acceptor) and how many
    /// messages crossed.
    fn run(mut dialler: Handshake, mut acceptor: Handshake) -> (Handshake, Handshake, usize) {
        let mut moved = 0;
        loop {
            let mut progress = false;
            while let Some(m) = dialler.poll_message() {
                acceptor.handle(m);
                moved += 1;
                progress = true;
            }
            while let Some(m) = acceptor.poll_message() {
                dialler.handle(m);
                moved += 1;
                progress = true;
            }
            if !progress {
                return (dialler, acceptor, moved);
            }
        }
    }

    #[test]
    fn two_members_open_and_learn_each_others_role() {
        let lib = Lib::new();
        let (a, ma) = lib.member(Role::Admin, NOW + 100);
        let (b, mb) = lib.member(Role::Member, NOW + 100);
        let (d, acc, moved) = run(Handshake::dial(ma, b, NOW), Handshake::accept(mb, a, NOW));
        assert_eq!(d.outcome(), Some(Ok(Role::Member)));
        assert_eq!(acc.outcome(), Some(Ok(Role::Admin)));
        assert_eq!(moved, 3);
    }

    #[test]
    fn a_stranger_is_refused_and_never_sees_the_acceptors_credential() {
        let lib = Lib::new();
        let other = Lib::new();
        let (a, ma) = lib.member(Role::Member, NOW + 100);
        // A stranger with a credential from another library key for the same library id.
        let (s, ms) = other.member(Role::Member, NOW + 100);
        let mut acceptor = Handshake::accept(ma, s, NOW);
        let mut dialler = Handshake::dial(ms, a, NOW);
        acceptor.handle(dialler.poll_message().unwrap());
        let answer = acceptor.poll_message().unwrap();
        assert!(matches!(&answer, TunnelMessage::Refused { reason } if reason.contains("not a member")), "{answer:?}");
        assert!(acceptor.poll_message().is_none(), "nothing but the refusal goes to a stranger");
        dialler.handle(answer);
        assert!(matches!(dialler.outcome(), Some(Err(TunnelError::RefusedByPeer(_)))));
        assert!(matches!(acceptor.outcome(), Some(Err(TunnelError::NotAMember { .. }))));
    }

    #[test]
    fn expired_and_revoked_members_are_refused_on_both_sides() {
        let lib = Lib::new();
        let (a, ma) = lib.member(Role::Member, NOW + 100);
        let (e, me) = lib.member(Role::Member, NOW);
        let (d, acc, _) = run(Handshake::dial(me, a, NOW), Handshake::accept(ma.clone(), e, NOW));
        assert!(matches!(acc.outcome(), Some(Err(TunnelError::NotAMember { reason: CertError::Expired { .. }, .. }))));
        assert!(matches!(d.outcome(), Some(Err(TunnelError::RefusedByPeer(r))) if r.contains("expired")));

        // The acceptor is the revoked one: the dialler refuses it after its hello.
        let (r, mut mr) = lib.member(Role::Member, NOW + 100);
        let mut ma = ma;
        ma.revocations.revoke(&Signer::LibraryKey(&lib.key), lib.lib.id, r);
        mr.revocations = Revocations::default();
        let (d, acc, _) = run(Handshake::dial(ma, r, NOW), Handshake::accept(mr, a, NOW));
        assert!(matches!(d.outcome(), Some(Err(TunnelError::NotAMember { reason: CertError::Revoked(_), .. }))));
        assert!(matches!(acc.outcome(), Some(Err(TunnelError::RefusedByPeer(_)))));
        // It learned its own revocation from the dialler's hello.
        assert!(acc.learned_revocations());
    }

    #[test]
    fn a_member_that_was_offline_learns_a_revocation_and_then_refuses_the_revoked() {
        let lib = Lib::new();
        let (a, mut ma) = lib.member(Role::Admin, NOW + 100);
        let (b, mb) = lib.member(Role::Member, NOW + 100);
        let (c, mc) = lib.member(Role::Member, NOW + 100);
        ma.revocations.revoke(&Signer::LibraryKey(&lib.key), lib.lib.id, c);
        // b was offline; c can still reach it.
        let (_, acc, _) = run(Handshake::dial(mc.clone(), b, NOW), Handshake::accept(mb.clone(), c, NOW));
        assert_eq!(acc.outcome(), Some(Ok(Role::Member)), "b has not heard yet");
        // b meets a, and learns.
        let (_, acc, _) = run(Handshake::dial(ma, b, NOW), Handshake::accept(mb, a, NOW));
        assert!(acc.learned_revocations());
        let mb = acc.membership().clone();
        assert_eq!(mb.revocations.revoked(), &BTreeSet::from([c]));
        let (d, acc, _) = run(Handshake::dial(mc, b, NOW), Handshake::accept(mb, c, NOW));
        assert!(matches!(acc.outcome(), Some(Err(TunnelError::NotAMember { reason: CertError::Revoked(_), .. }))));
        assert!(matches!(d.outcome(), Some(Err(TunnelError::RefusedByPeer(_)))));
    }

    #[test]
    fn out_of_order_messages_and_a_credential_for_someone_else_fail_cleanly() {
        let lib = Lib::new();
        let (a, ma) = lib.member(Role::Member, NOW + 100);
        let (b, mb) = lib.member(Role::Member, NOW + 100);
        let mut acceptor = Handshake::accept(ma.clone(), b, NOW);
        acceptor.handle(TunnelMessage::Accept);
        assert!(matches!(acceptor.outcome(), Some(Err(TunnelError::Protocol(_)))));
        // b replays a's credential: the subject is not b.
        let stolen = Membership { credential: ma.credential.clone(), ..mb };
        let (_, acc, _) = run(Handshake::dial(stolen, a, NOW), Handshake::accept(ma, b, NOW));
        assert!(matches!(
            acc.outcome(),
            Some(Err(TunnelError::NotAMember { reason: CertError::WrongSubject { .. }, .. }))
        ));
        // A close before the end is a stream error.
        let mut d = Handshake::dial(lib.member(Role::Member, NOW + 1).1, a, NOW);
        d.handle_closed("reset".into());
        assert!(matches!(d.outcome(), Some(Err(TunnelError::Stream(_)))));
    }
}
