//! Who answers for which rendezvous key (a pairing nameplate's hash): the table behind
//! `Announce`, `Withdraw` and `Find`. Entries belong to a registration and go with it.
//!
//! Anyone may announce any key, so a list is a set of candidates, never proof: the pairing
//! PAKE decides who knows the code. The table is bounded three ways: [`MAX_FOUND`] nodes per
//! key (the oldest stay listed: a latecomer cannot push an honest inviter out), [`MAX_KEYS`]
//! keys per registration, and the relay's registrations themselves.

use std::collections::HashMap;

use warren::wire::control::{MAX_FOUND, RendezvousKey};
use warren::wire::frame::RawIdentity;

/// Keys one registration may announce at once.
pub const MAX_KEYS: usize = 4;

#[derive(Default)]
pub(crate) struct Rendezvous {
    by_key: HashMap<RendezvousKey, Vec<(RawIdentity, u64)>>,
    by_registration: HashMap<u64, Vec<RendezvousKey>>,
}

impl Rendezvous {
    /// Lists `node` (registration `registration`) for `key`. False if over a limit.
    pub(crate) fn announce(&mut self, key: RendezvousKey, node: RawIdentity, registration: u64) -> bool {
        let keys = self.by_registration.entry(registration).or_default();
        if keys.contains(&key) {
            return true;
        }
        let listed = self.by_key.entry(key).or_default();
        if keys.len() >= MAX_KEYS || listed.len() >= MAX_FOUND {
            if listed.is_empty() {
                self.by_key.remove(&key);
            }
            if keys.is_empty() {
                self.by_registration.remove(&registration);
            }
            return false;
        }
        listed.push((node, registration));
        keys.push(key);
        true
    }

    /// Stops listing registration `registration` for `key`.
    pub(crate) fn withdraw(&mut self, key: RendezvousKey, registration: u64) {
        if let Some(keys) = self.by_registration.get_mut(&registration) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.by_registration.remove(&registration);
            }
        }
        self.unlist(key, registration);
    }

    /// Everything registration `registration` announced goes (it ended).
    pub(crate) fn forget(&mut self, registration: u64) {
        for key in self.by_registration.remove(&registration).unwrap_or_default() {
            self.unlist(key, registration);
        }
    }

    fn unlist(&mut self, key: RendezvousKey, registration: u64) {
        if let Some(listed) = self.by_key.get_mut(&key) {
            listed.retain(|(_, r)| *r != registration);
            if listed.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }

    /// Who answers for `key`, oldest first, each once (a node that registered again is listed
    /// under both registrations until the old one ends).
    pub(crate) fn find(&self, key: &RendezvousKey) -> Vec<RawIdentity> {
        let mut found: Vec<RawIdentity> = Vec::new();
        for (node, _) in self.by_key.get(key).into_iter().flatten() {
            if !found.contains(node) {
                found.push(*node);
            }
        }
        found
    }

    /// Entries held (for tests of the bounds).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.by_key.values().map(Vec::len).sum::<usize>() + self.by_registration.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_listed_oldest_first_and_go_with_their_registration() {
        let mut table = Rendezvous::default();
        let key = [1; 16];
        assert!(table.announce(key, [1; 32], 1));
        assert!(table.announce(key, [2; 32], 2));
        // Announcing again is idempotent.
        assert!(table.announce(key, [1; 32], 1));
        assert_eq!(table.find(&key), vec![[1; 32], [2; 32]]);
        assert_eq!(table.find(&[9; 16]), Vec::<RawIdentity>::new());
        table.withdraw(key, 1);
        assert_eq!(table.find(&key), vec![[2; 32]]);
        table.forget(2);
        assert_eq!(table.find(&key), Vec::<RawIdentity>::new());
        assert_eq!(table.entries(), 0);
        // A node that re-registered: its old registration's entries go, the new one's stay.
        assert!(table.announce(key, [3; 32], 3));
        assert!(table.announce(key, [3; 32], 4));
        assert_eq!(table.find(&key), vec![[3; 32]], "listed once while both registrations live");
        table.forget(3);
        assert_eq!(table.find(&key), vec![[3; 32]]);
    }

    #[test]
    fn a_flood_of_announcers_cannot_push_out_the_first_nor_grow_the_table() {
        let mut table = Rendezvous::default();
        let key = [1; 16];
        assert!(table.announce(key, [0; 32], 0));
        for registration in 1..1000u64 {
            let accepted = table.announce(key, [registration as u8; 32], registration);
            assert_eq!(accepted, registration < MAX_FOUND as u64);
        }
        let found = table.find(&key);
        assert_eq!(found.len(), MAX_FOUND);
        assert_eq!(found[0], [0; 32], "the honest first announcer stays listed first");
        // One registration announcing many keys is held to MAX_KEYS; refusals leave nothing.
        for n in 0..100u8 {
            let accepted = table.announce([n.wrapping_add(2); 16], [7; 32], 5000);
            assert_eq!(accepted, usize::from(n) < MAX_KEYS);
        }
        assert_eq!(table.entries(), 2 * (MAX_FOUND + MAX_KEYS));
    }
}
