//! The relay client's state, sans-IO: registration with backoff, and lookups matched to their
//! answers by request id.
//!
//! States: `Connecting` (an attempt is due at [`RelayState::next_attempt`]) → `Registered`
//! (observed address known) → back to `Connecting` when the link is lost; `Refused` (the relay
//! said no: retried after [`MAX_BACKOFF`] only). Each failed attempt doubles the wait from
//! [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`]; a registration resets it.
//!
//! Requests (lookups, rendezvous announcements and finds): each gets an id the relay echoes in
//! its answer, so answers may come in any order and an answer nobody asked for (or asked for
//! long ago) is refused, never taken for another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// First wait before reconnecting to a relay; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a lookup may wait for its answer.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lookups waiting for answers at once; more are refused at once (the link is congested).
pub const MAX_LOOKUPS: usize = 256;

/// Where the registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Not registered; trying (again) at the next attempt.
    Connecting,
    /// Registered; the relay sees this node at `observed`.
    Registered {
        /// This node's address as the relay sees it.
        observed: SocketAddr,
    },
    /// The relay refused this node, and why; asked again only after [`MAX_BACKOFF`].
    Refused {
        /// The relay's reason.
        reason: String,
    },
}

/// Why a lookup could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// Not registered with the relay.
    #[error("not registered with the relay")]
    NotRegistered,
    /// Too many lookups are waiting.
    #[error("too many lookups waiting for the relay")]
    Congested,
}

/// The relay client's state. See the module docs.
#[derive(Debug)]
pub struct RelayState {
    registration: Registration,
    backoff: Duration,
    next_attempt: Option<Instant>,
    /// Requests waiting for answers: their deadlines, by id.
    lookups: HashMap<u64, Instant>,
    next_id: u64,
    /// Answers refused (unknown or expired id).
    pub stray_answers: u64,
}

impl RelayState {
    /// A client about to make its first attempt at `now`.
    pub fn new(now: Instant) -> Self {
        RelayState {
            registration: Registration::Connecting,
            backoff: FIRST_BACKOFF,
            next_attempt: Some(now),
            lookups: HashMap::new(),
            next_id: 1,
            stray_answers: 0,
        }
    }

    /// Where the registration stands.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// When the next registration attempt is due (None while registered or attempting).
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// An attempt starts now.
    pub fn attempting(&mut self) {
        self.next_attempt = None;
    }

    /// The attempt succeeded.
    pub fn registered(&mut self, observed: SocketAddr) {
        self.registration = Registration::Registered { observed };
        self.backoff = FIRST_BACKOFF;
        self.next_attempt = None;
    }

    /// The attempt failed (unreachable, broken protocol): next try after the backoff.
    pub fn failed(&mut self, now: Instant) {
        self.registration = Registration::Connecting;
        self.retry(now);
    }

    /// The relay refused: asking again will not change the answer soon.
    pub fn refused(&mut self, now: Instant, reason: String) {
        self.registration = Registration::Refused { reason };
        self.backoff = MAX_BACKOFF;
        self.retry(now);
    }

    /// The registered link was lost: reconnect after the backoff; waiting lookups fail.
    pub fn lost(&mut self, now: Instant) -> Vec<u64> {
        self.registration = Registration::Connecting;
        self.retry(now);
        self.lookups.drain().map(|(id, _)| id).collect()
    }

    fn retry(&mut self, now: Instant) {
        self.next_attempt = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Starts a request (a lookup, an announcement, a find): the id to put in it.
    pub fn lookup(&mut self, now: Instant) -> Result<u64, LookupError> {
        if !matches!(self.registration, Registration::Registered { .. }) {
            return Err(LookupError::NotRegistered);
        }
        if self.lookups.len() >= MAX_LOOKUPS {
            return Err(LookupError::Congested);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.lookups.insert(id, now + LOOKUP_TIMEOUT);
        Ok(id)
    }

    /// The relay answered request `id`: true if one waits for it (false: a stray, refused and
    /// counted).
    pub fn answered(&mut self, id: u64) -> bool {
        let waiting = self.lookups.remove(&id).is_some();
        if !waiting {
            self.stray_answers += 1;
        }
        waiting
    }

    /// Lookup `id` is over (answered, failed or given up): nobody waits for it.
    pub fn forget(&mut self, id: u64) {
        self.lookups.remove(&id);
    }

    /// Lookups whose time ran out by `now` (they fail).
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let expired: Vec<u64> =
            self.lookups.iter().filter(|(_, deadline)| **deadline <= now).map(|(id, _)| *id).collect();
        for id in &expired {
            self.lookups.remove(id);
        }
        expired
    }

    /// When something is due: the next attempt or a lookup's deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lookups.values().copied().chain(self.next_attempt).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets_on_registration() {
        let now = Instant::now();
        let mut state = RelayState::new(now);
        assert_eq!(state.next_attempt(), Some(now));
        let mut waits = Vec::new();
        for _ in 0..10 {
            state.attempting();
            state.failed(now);
            waits.push(state.next_attempt().unwrap() - now);
        }
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert!(waits.windows(2).all(|w| w[1] >= w[0] && w[1] <= MAX_BACKOFF));
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        state.registered("192.0.2.1:5".parse().unwrap());
        assert_eq!(state.next_attempt(), None);
        state.lost(now);
        assert_eq!(state.next_attempt(), Some(now + FIRST_BACKOFF));
        state.refused(now, "no".into());
        assert_eq!(state.next_attempt(), Some(now + MAX_BACKOFF));
        assert_eq!(state.registration(), &Registration::Refused { reason: "no".into() });
    }

    #[test]
    fn answers_match_their_lookups_in_any_order_and_strays_are_refused() {
        let now = Instant::now();
        let mut state = RelayState::new(now);
        assert_eq!(state.lookup(now), Err(LookupError::NotRegistered));
        state.registered("192.0.2.1:5".parse().unwrap());
        let ids: Vec<_> = (0..3).map(|_| state.lookup(now).unwrap()).collect();
        // Answered backwards; a stray and a duplicate are refused.
        assert!(state.answered(ids[2]));
        assert!(!state.answered(999));
        assert!(state.answered(ids[0]));
        assert!(!state.answered(ids[0]));
        assert_eq!(state.stray_answers, 2);
        // The third times out; its late answer is a stray.
        assert_eq!(state.poll_timeout(), Some(now + LOOKUP_TIMEOUT));
        assert_eq!(state.expire(now + LOOKUP_TIMEOUT), vec![ids[1]]);
        assert!(!state.answered(ids[1]));
    }

    #[test]
    fn lookups_are_bounded_and_fail_with_the_link() {
        let now = Instant::now();
        let mut state = RelayState::new(now);
        state.registered("192.0.2.1:5".parse().unwrap());
        for _ in 0..MAX_LOOKUPS {
            state.lookup(now).unwrap();
        }
        assert_eq!(state.lookup(now), Err(LookupError::Congested));
        assert_eq!(state.lost(now).len(), MAX_LOOKUPS);
        assert_eq!(state.lookup(now), Err(LookupError::NotRegistered));
    }

    #[test]
    fn ids_are_never_reused_over_many_cycles() {
        let now = Instant::now();
        let mut state = RelayState::new(now);
        let mut seen = std::collections::HashSet::new();
        for cycle in 0..2000 {
            state.registered("192.0.2.1:5".parse().unwrap());
            let id = state.lookup(now).unwrap();
            assert!(seen.insert(id));
            if cycle % 2 == 0 {
                state.answered(id);
            } else {
                state.lost(now);
            }
        }
    }
}
