//! Pairing on a [`warren::P2P`] node: [`invite`] opens an invite (serves `warren/pair/1` and
//! announces the code's rendezvous library on the LAN; [`InviteHandle::announce_at_relay`]
//! announces it at the node's relay too), [`join`] tries the devices that answer for the
//! code's nameplate (found on the LAN, or at the relay with [`find_at_relay`]) until one
//! proves the code, and checks what it grants. Neither the LAN nor the relay is trusted with
//! anything: whoever answers for a nameplate is only a candidate, and the PAKE decides.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use warren::connection::Stream;
use warren::{P2P, RemoteIdentity};

use crate::cert::{LibraryRef, Role};
use crate::code::Code;
use crate::frame::{self, FrameError};
use crate::handshake::Membership;
use crate::pairing::{Invite, PairError, Pairing};
use crate::revocation::Revocations;
use crate::unix_now;
use crate::wire::{Grant, PAIR_PROTOCOL, PairMessage};

/// How long one exchange may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an inviter waits, after sending the grant, for the joiner to close its side.
const GRANT_LINGER: Duration = Duration::from_secs(5);

/// Builds the grant for a joiner that proved the code.
pub type Issue = dyn Fn(RemoteIdentity) -> Result<Grant, String> + Send + Sync;

/// An open invite. Dropping it closes the invite.
pub struct InviteHandle {
    p2p: P2P,
    code: Code,
    events: mpsc::UnboundedReceiver<Result<RemoteIdentity, PairError>>,
    at_relay: Option<warren::relay::client::RelayClient>,
}

impl InviteHandle {
    /// The code to show.
    pub fn code(&self) -> Code {
        self.code
    }

    /// Waits for a device to join: its identity, or the first failure that closes the invite
    /// (too many wrong codes, expiry). Failed attempts before that are returned as errors too,
    /// so that a caller can show them; call again to keep waiting.
    pub async fn next(&mut self) -> Result<RemoteIdentity, PairError> {
        self.events.recv().await.unwrap_or(Err(PairError::Stream("the invite was closed".into())))
    }

    /// Announces the code's nameplate at the node's relay too, so that a joiner that is not
    /// on this LAN finds this device there ([`find_at_relay`]); renewed whenever the node
    /// registers again, withdrawn when the invite closes. Waits up to `timeout` for the node
    /// to be registered.
    pub async fn announce_at_relay(&mut self, timeout: Duration) -> Result<(), PairError> {
        let relay = registered_relay(&self.p2p, timeout).await?;
        self.at_relay = Some(relay.clone());
        relay.announce(rendezvous_key(self.code.nameplate())).await.map_err(|e| PairError::Relay(e.to_string()))
    }
}

/// The node's relay client, once registered (waiting up to `timeout`).
async fn registered_relay(p2p: &P2P, timeout: Duration) -> Result<warren::relay::client::RelayClient, PairError> {
    let relay = p2p.relay().ok_or_else(|| PairError::Relay("this node has no relay".into()))?;
    relay.wait_registered(timeout).await.map_err(|e| PairError::Relay(e.to_string()))?;
    Ok(relay)
}

/// The key a nameplate is announced under: at a relay, the bytes of its LAN rendezvous UUID.
fn rendezvous_key(nameplate: u16) -> warren::wire::control::RendezvousKey {
    *Code::rendezvous(nameplate).as_bytes()
}

/// The devices the node's relay lists as answering for `nameplate` (candidates for [`join`]:
/// anyone may announce any nameplate, the relay may list whom it likes, and the PAKE decides).
/// Waits up to `timeout` for the node to be registered.
pub async fn find_at_relay(p2p: &P2P, nameplate: u16, timeout: Duration) -> Result<Vec<RemoteIdentity>, PairError> {
    let relay = registered_relay(p2p, timeout).await?;
    let mut found = relay.find(rendezvous_key(nameplate)).await.map_err(|e| PairError::Relay(e.to_string()))?;
    found.retain(|peer| *peer != p2p.id());
    Ok(found)
}

impl Drop for InviteHandle {
    fn drop(&mut self) {
        self.p2p.unregister_protocol(PAIR_PROTOCOL);
        self.p2p.remove_library(&Code::rendezvous(self.code.nameplate()));
        if let Some(relay) = &self.at_relay {
            relay.withdraw(rendezvous_key(self.code.nameplate()));
        }
    }
}

/// Opens an invite for `code` until `expires_at` (Unix seconds); `issue` builds each grant.
/// One invite at a time per node (a second is refused with the registration error).
pub fn invite(
    p2p: &P2P,
    code: Code,
    expires_at: u64,
    issue: Arc<Issue>,
) -> Result<InviteHandle, warren::RegisterError> {
    let state = Arc::new(Mutex::new(Invite::new(code, expires_at)));
    let (events, rx) = mpsc::unbounded_channel();
    let me = p2p.id();
    p2p.register_protocol(PAIR_PROTOCOL, move |mut stream: Stream| {
        let state = state.clone();
        let issue = issue.clone();
        let events = events.clone();
        async move {
            let peer = stream.remote();
            let begun = state.lock().expect("invite lock").begin(unix_now());
            let code = match begun {
                Ok(code) => code,
                Err(e) => {
                    let _ = frame::write(&mut stream, &PairMessage::Failed { reason: e.to_string() }).await;
                    let _ = stream.finish();
                    let _ = events.send(Err(e));
                    return;
                }
            };
            let pairing = Pairing::inviter(code, me, peer);
            let result = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&mut stream, pairing, Some(&*issue)))
                .await
                .unwrap_or(Err(PairError::Stream("the exchange timed out".into())));
            let outcome = match result {
                Ok(_) => {
                    state.lock().expect("invite lock").succeeded();
                    Ok(peer)
                }
                Err(e) => Err(e),
            };
            let _ = events.send(outcome);
        }
    })?;
    p2p.add_library(Code::rendezvous(code.nameplate()));
    Ok(InviteHandle { p2p: p2p.clone(), code, events: rx, at_relay: None })
}

/// Runs one exchange; the inviter issues the grant once confirmed, the joiner returns it.
async fn exchange(
    stream: &mut Stream,
    mut pairing: Pairing,
    issue: Option<&Issue>,
) -> Result<Option<Grant>, PairError> {
    loop {
        while let Some(message) = pairing.poll_message() {
            if let Err(e) = frame::write(stream, &message).await {
                // A peer that refuses stops reading, but its reason may be waiting.
                match frame::read_soon::<_, PairMessage>(stream).await {
                    Some(refusal @ PairMessage::Failed { .. }) => pairing.handle(refusal),
                    _ => pairing.handle_closed(e.to_string()),
                }
            }
        }
        if let Some(error) = pairing.error() {
            let _ = stream.finish();
            return Err(error.clone());
        }
        if let Some(grant) = pairing.take_grant() {
            let _ = stream.finish();
            return Ok(Some(*grant));
        }
        if let (true, Some(issue)) = (pairing.is_confirmed(), issue) {
            let grant = issue(stream.remote()).map_err(PairError::BadGrant)?;
            pairing.send_grant(grant);
            while let Some(message) = pairing.poll_message() {
                frame::write(stream, &message).await.map_err(|e| PairError::Stream(e.to_string()))?;
            }
            let _ = stream.finish();
            // Hold the stream until the joiner, having read the grant, closes its side: a node
            // that shuts down right after returning would otherwise drop the grant in flight.
            let mut rest = [0u8; 64];
            let drained = async { while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(GRANT_LINGER, drained).await;
            return Ok(None);
        }
        match frame::read::<_, PairMessage>(stream).await {
            Ok(message) => pairing.handle(message),
            Err(FrameError::Malformed(e)) => pairing.handle_invalid(e),
            Err(e) => pairing.handle_closed(e.to_string()),
        }
    }
}

/// What joining gave: the membership (verified) and the library's name.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The new membership.
    pub membership: Membership,
    /// The library's name.
    pub name: String,
    /// The device that invited.
    pub inviter: RemoteIdentity,
    /// This node's role.
    pub role: Role,
    /// The inviter's role (verified).
    pub inviter_role: Role,
}

/// Tries each candidate (the devices that answer for the code's nameplate, honest or not)
/// until one proves the code and grants a membership that verifies.
pub async fn join(p2p: &P2P, code: Code, candidates: &[RemoteIdentity]) -> Result<Joined, PairError> {
    let mut last = PairError::NotFound(code.nameplate());
    for &inviter in candidates {
        match join_one(p2p, code, inviter).await {
            Ok(joined) => return Ok(joined),
            Err(e) => {
                tracing::info!(%inviter, "pairing attempt failed: {e}");
                // A mismatch says most about what happened; keep it over a later "not found".
                if !matches!(last, PairError::Mismatch) {
                    last = e;
                }
            }
        }
    }
    Err(last)
}

async fn join_one(p2p: &P2P, code: Code, inviter: RemoteIdentity) -> Result<Joined, PairError> {
    let mut stream = p2p.connect(inviter, PAIR_PROTOCOL).await.map_err(|e| PairError::Stream(e.to_string()))?;
    let pairing = Pairing::joiner(code, p2p.id(), inviter);
    let grant = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&mut stream, pairing, None))
        .await
        .unwrap_or(Err(PairError::Stream("the exchange timed out".into())))?
        .ok_or_else(|| PairError::Protocol("no grant".into()))?;
    verify_grant(grant, p2p.id(), inviter, unix_now())
}

/// Checks a grant: the revocation list, the joiner's credential (for this node, signed by the
/// library key or an admin it made), the inviter's credential, and that the inviter (or the
/// library key it holds) issued the joiner's.
pub fn verify_grant(grant: Grant, me: RemoteIdentity, inviter: RemoteIdentity, now: u64) -> Result<Joined, PairError> {
    let library = LibraryRef { id: grant.library, key: grant.key };
    let mut revocations = Revocations::from_parts(None, BTreeSet::new());
    if let Some(list) = grant.revocations {
        revocations.offer(&library, list, now).map_err(|e| PairError::BadGrant(e.to_string()))?;
    }
    let bad = |e: crate::cert::CertError| PairError::BadGrant(e.to_string());
    let role = library.verify(&grant.credential, &me, now, revocations.revoked()).map_err(bad)?;
    let inviter_role = library.verify(&grant.inviter, &inviter, now, revocations.revoked()).map_err(bad)?;
    let issuer = grant.credential.cert.issuer;
    if issuer != inviter && issuer != library.key {
        return Err(PairError::BadGrant(format!("the credential was issued by {issuer}, not the inviter")));
    }
    let membership = Membership { library, credential: grant.credential, revocations };
    Ok(Joined { membership, name: grant.name, inviter, role, inviter_role })
}
