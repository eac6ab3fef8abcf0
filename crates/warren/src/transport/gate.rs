//! ContactsOnly's handshake gate: in that mode a node answers only handshakes whose ClientHello
//! proves the secret it shares with one of its contacts, so a stranger who reaches the port
//! learns neither the node's identity (its key is in the TLS handshake), nor its metadata, nor
//! its protocols: the handshake fails before the server's certificate goes out.
//!
//! The proof travels in the server name (SNI), the one field of a ClientHello a client sets
//! freely: `<label>.warren.invalid`, the label being 58 base32 characters of a random nonce, a
//! time (Unix seconds) and a tag keyed with the pair's secret ([`Identity::contact_secret`])
//! over the server's identity, the nonce and the time. The server tries its contacts' secrets
//! (a few dozen keyed hashes at most) and takes a proof once: a nonce seen before, or a time
//! more than [`PROOF_WINDOW`] away, is refused, so a proof an on-path attacker copies from a
//! contact's handshake opens nothing later. The proof names the server, so a proof for one
//! node is worthless at another (its contact included). An observer sees a random label, and
//! learns that the dial was a contact's; never whose.
//!
//! Contacts send the proof whenever they dial a contact, whatever their own mode: to anyone but
//! that contact it is random bytes.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use zeroize::Zeroizing;

use crate::{Identity, RemoteIdentity};

/// The server name every dial sends ([`super::tls::SERVER_NAME`]); a contact proof is a label
/// in front of it. Defined here so that the gate does not depend on the TLS module that uses it.
pub const SERVER_NAME: &str = "warren.invalid";

/// How far a proof's time may be from the server's clock (either way), in seconds.
pub const PROOF_WINDOW: u64 = 120;

/// Nonces remembered at most (the oldest are forgotten first; a forgotten one is older than
/// the window anyway unless 4,096 contacts' dials came within it).
pub const MAX_SEEN: usize = 4096;

const NONCE: usize = 16;
const TAG: usize = 16;
const PROOF: usize = NONCE + 4 + TAG;

/// The contacts' secrets, the mode, and the nonces seen. Shared by the node (which sets the
/// mode and contacts) and its transports (which ask it).
#[derive(Debug)]
pub struct ContactGate {
    identity: Arc<Identity>,
    enabled: AtomicBool,
    contacts: RwLock<Vec<(RemoteIdentity, Zeroizing<[u8; 32]>)>>,
    seen: Mutex<Seen>,
}

/// Nonces seen: a set to look them up, and their order to forget the oldest.
type Seen = (HashSet<[u8; NONCE]>, VecDeque<[u8; NONCE]>);

impl ContactGate {
    /// A gate for `identity`: open (Enabled discovery) and with no contacts.
    pub fn new(identity: Arc<Identity>) -> Self {
        Self { identity, enabled: AtomicBool::new(false), contacts: RwLock::default(), seen: Mutex::default() }
    }

    /// Closes the gate (ContactsOnly: only proven contacts get a handshake) or opens it.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Is the gate closed to strangers?
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The node's contacts now.
    pub fn set_contacts(&self, contacts: &[RemoteIdentity]) {
        let secrets = contacts.iter().map(|c| (*c, self.identity.contact_secret(c))).collect();
        *self.contacts.write().expect("contact lock poisoned") = secrets;
    }

    /// The server name to dial `contact` with at `unix_secs`: a fresh proof. None if it is not
    /// a contact (then the plain [`SERVER_NAME`] goes).
    pub fn server_name_for(&self, contact: &RemoteIdentity, unix_secs: u64) -> Option<String> {
        let contacts = self.contacts.read().expect("contact lock poisoned");
        let (_, secret) = contacts.iter().find(|(c, _)| c == contact)?;
        let mut proof = [0u8; PROOF];
        getrandom::fill(&mut proof[..NONCE]).expect("the operating system's random source failed");
        let time = (unix_secs as u32).to_be_bytes();
        proof[NONCE..NONCE + 4].copy_from_slice(&time);
        let nonce: [u8; NONCE] = proof[..NONCE].try_into().expect("16 bytes");
        proof[NONCE + 4..].copy_from_slice(&tag(secret, contact, &nonce, time));
        Some(format!("{}.{}", crate::identity::base32().encode(&proof), SERVER_NAME))
    }

    /// Does a ClientHello naming `server_name` get a handshake at `unix_secs`? Always while the
    /// gate is open; when closed, only with a fresh, valid proof from a contact. The contact it
    /// proves, if any.
    pub fn admit(&self, server_name: Option<&str>, unix_secs: u64) -> Result<Option<RemoteIdentity>, Refusal> {
        let proven = server_name.map(|name| self.check(name, unix_secs));
        match (self.enabled(), proven) {
            (_, Some(Ok(contact))) => Ok(Some(contact)),
            (false, _) => Ok(None),
            (true, Some(Err(refusal))) => Err(refusal),
            (true, None) => Err(Refusal::NoProof),
        }
    }

    fn check(&self, server_name: &str, unix_secs: u64) -> Result<RemoteIdentity, Refusal> {
        let label = server_name.strip_suffix(SERVER_NAME).and_then(|l| l.strip_suffix('.'));
        let label = label.ok_or(Refusal::NoProof)?;
        let proof = crate::identity::base32().decode(label.as_bytes()).map_err(|_| Refusal::Malformed)?;
        let proof: [u8; PROOF] = proof.try_into().map_err(|_| Refusal::Malformed)?;
        let nonce: [u8; NONCE] = proof[..NONCE].try_into().expect("16 bytes");
        let time: [u8; 4] = proof[NONCE..NONCE + 4].try_into().expect("4 bytes");
        // Times are u32 seconds: good until 2106.
        if u64::from(u32::from_be_bytes(time)).abs_diff(unix_secs) > PROOF_WINDOW {
            return Err(Refusal::Stale);
        }
        let me = self.identity.to_remote_identity();
        let contacts = self.contacts.read().expect("contact lock poisoned");
        let contact = contacts
            .iter()
            .find(|(_, secret)| tag(secret, &me, &nonce, time) == proof[NONCE + 4..])
            .map(|(c, _)| *c)
            .ok_or(Refusal::NoContact)?;
        drop(contacts);
        let mut seen = self.seen.lock().expect("seen lock poisoned");
        let (set, order) = &mut *seen;
        if !set.insert(nonce) {
            return Err(Refusal::Replayed);
        }
        order.push_back(nonce);
        if order.len() > MAX_SEEN
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        Ok(contact)
    }
}

/// Why the gate refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No proof in the server name.
    NoProof,
    /// Not a proof's shape.
    Malformed,
    /// Its time is more than [`PROOF_WINDOW`] away.
    Stale,
    /// No contact's secret makes its tag.
    NoContact,
    /// Its nonce was used before.
    Replayed,
}

/// The proof's tag: keyed with the pair's secret, over the server's identity, nonce and time.
fn tag(secret: &[u8; 32], server: &RemoteIdentity, nonce: &[u8; NONCE], time: [u8; 4]) -> [u8; TAG] {
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(b"warren 2026 contacts-only handshake proof");
    hasher.update(server.as_bytes()).update(nonce).update(&time);
    hasher.finalize().as_bytes()[..TAG].try_into().expect("16 bytes")
}

/// Fuzzing: arbitrary bytes as the server name of a ClientHello at a closed gate with one
/// contact. Never panics; never admits anything (a proof needs the contact's secret).
pub fn fuzz_server_name(data: &[u8]) {
    let gate = ContactGate::new(Arc::new(Identity::from_secret_bytes(&[7; 32])));
    gate.set_contacts(&[Identity::from_secret_bytes(&[9; 32]).to_remote_identity()]);
    gate.set_enabled(true);
    let name = String::from_utf8_lossy(data);
    assert!(gate.admit(Some(&name), 1_800_000_000).is_err(), "{name:?} was admitted");
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> (ContactGate, RemoteIdentity) {
        let identity = Arc::new(Identity::generate());
        let id = identity.to_remote_identity();
        (ContactGate::new(identity), id)
    }

    #[test]
    fn a_contact_proves_itself_once_and_strangers_cannot() {
        let (bob, bob_id) = gate();
        let (alice, alice_id) = gate();
        let (mallory, _) = gate();
        bob.set_contacts(&[alice_id]);
        alice.set_contacts(&[bob_id]);
        mallory.set_contacts(&[bob_id]);
        bob.set_enabled(true);
        let now = 1_800_000_000;

        let name = alice.server_name_for(&bob_id, now).unwrap();
        assert!(name.ends_with(".warren.invalid") && name.split('.').next().unwrap().len() == 58, "{name}");
        assert_eq!(bob.admit(Some(&name), now + 5), Ok(Some(alice_id)));
        assert_eq!(bob.admit(Some(&name), now + 6), Err(Refusal::Replayed), "a copied proof opens nothing");
        // A stranger: no proof, or one under a secret Bob does not share with it.
        assert_eq!(bob.admit(Some(super::SERVER_NAME), now), Err(Refusal::NoProof));
        assert_eq!(bob.admit(None, now), Err(Refusal::NoProof));
        let forged = mallory.server_name_for(&bob_id, now).unwrap();
        assert_eq!(bob.admit(Some(&forged), now), Err(Refusal::NoContact));
        assert_eq!(bob.admit(Some("garbage!.warren.invalid"), now), Err(Refusal::Malformed));
        // Stale and future proofs.
        let old = alice.server_name_for(&bob_id, now - PROOF_WINDOW - 1).unwrap();
        assert_eq!(bob.admit(Some(&old), now), Err(Refusal::Stale));
        let ahead = alice.server_name_for(&bob_id, now + PROOF_WINDOW + 1).unwrap();
        assert_eq!(bob.admit(Some(&ahead), now), Err(Refusal::Stale));
        // A proof names its server: Alice's proof for Bob does not open Alice to whoever
        // replays it at her, though she shares the secret.
        alice.set_enabled(true);
        let for_bob = alice.server_name_for(&bob_id, now).unwrap();
        assert_eq!(alice.admit(Some(&for_bob), now), Err(Refusal::NoContact));
        // An open gate lets anyone in, and still recognises a contact's proof.
        bob.set_enabled(false);
        assert_eq!(bob.admit(None, now), Ok(None));
        let fresh = alice.server_name_for(&bob_id, now).unwrap();
        assert_eq!(bob.admit(Some(&fresh), now), Ok(Some(alice_id)));
        // Not a contact: no proof to send.
        assert_eq!(mallory.server_name_for(&alice_id, now), None);
    }

    #[test]
    fn the_nonce_memory_is_bounded() {
        let (bob, bob_id) = gate();
        let (alice, alice_id) = gate();
        bob.set_contacts(&[alice_id]);
        alice.set_contacts(&[bob_id]);
        bob.set_enabled(true);
        for _ in 0..MAX_SEEN + 100 {
            let name = alice.server_name_for(&bob_id, 1000).unwrap();
            assert_eq!(bob.admit(Some(&name), 1000), Ok(Some(alice_id)));
        }
        let seen = bob.seen.lock().unwrap();
        assert_eq!((seen.0.len(), seen.1.len()), (MAX_SEEN, MAX_SEEN));
    }
}
