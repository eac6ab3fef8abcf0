//! What kind of NAT a node is behind, sans-IO: RFC 5780's mapping test with the node's relay
//! as the server. The relay's main port saw the node at one address (its registration); a STUN
//! binding request from the same socket to the relay's second port ([`NatProbe`]) shows the
//! mapping towards another destination. The same address both times: endpoint-independent
//! mapping (a punch to the reflexive address can work). Another port: endpoint-dependent, with
//! sequential or random ports. The punch session picks its method from both sides' kinds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::state::punch::PREDICTED_PORTS;
use crate::wire::stun;

/// Gaps between a probe's sends (the first at once).
pub const RESEND: Duration = Duration::from_millis(250);
/// Sends of a probe at most.
pub const SENDS: u32 = 3;
/// How long a probe waits for its answer in all.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

pub use crate::wire::punch::NatType;

/// The kind of NAT from the two observations: `main` (the relay's main port saw the node
/// there), `second` (its second port did), with the socket's own addresses `local`.
pub fn classify(local: &[SocketAddr], main: SocketAddr, second: SocketAddr) -> NatType {
    if local.contains(&main) {
        return NatType::Open;
    }
    if main == second {
        return NatType::Easy;
    }
    let delta = i32::from(second.port()) - i32::from(main.port());
    if main.ip() == second.ip() && delta != 0 && delta.unsigned_abs() <= u32::from(PREDICTED_PORTS) {
        NatType::HardSequential
    } else {
        NatType::HardRandom
    }
}

/// One mapping test: a binding request to the relay's second port, resent until answered.
#[derive(Debug)]
pub struct NatProbe {
    to: SocketAddr,
    tid: [u8; 12],
    started: Instant,
    sends: u32,
    next: Option<Instant>,
    answer: Option<Option<SocketAddr>>,
}

impl NatProbe {
    /// A probe to `to` (the relay's second port) with transaction id `tid` (random), starting
    /// `now`.
    pub fn new(now: Instant, to: SocketAddr, tid: [u8; 12]) -> Self {
        NatProbe { to, tid, started: now, sends: 0, next: Some(now), answer: None }
    }

    /// The next request to send, and where.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, [u8; 20])> {
        let due = self.next.filter(|at| now >= *at && self.answer.is_none())?;
        self.sends += 1;
        self.next = (self.sends < SENDS).then_some(due + RESEND);
        Some((self.to, stun::binding_request(self.tid)))
    }

    /// When to call [`poll_transmit`](Self::poll_transmit) / [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.answer.is_some() {
            return None;
        }
        Some(self.next.map_or(self.started + PROBE_TIMEOUT, |n| n.min(self.started + PROBE_TIMEOUT)))
    }

    /// Time passed: gives up after [`PROBE_TIMEOUT`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.answer.is_none() && now >= self.started + PROBE_TIMEOUT {
            self.answer = Some(None);
        }
    }

    /// A STUN datagram from `from`: the answer if it is one (from the port asked, with the
    /// request's transaction id).
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        if self.answer.is_some() || from != self.to {
            return;
        }
        if let Ok((tid, mapped)) = stun::parse_response(datagram)
            && tid == self.tid
        {
            self.answer = Some(Some(mapped));
        }
    }

    /// Once over: the address the second port saw (None: no answer).
    pub fn outcome(&self) -> Option<Option<SocketAddr>> {
        self.answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_two_observations_tell_the_kind() {
        let local = [a("192.168.1.2:4000")];
        assert_eq!(classify(&[a("198.51.100.7:4000")], a("198.51.100.7:4000"), a("198.51.100.7:4000")), NatType::Open);
        assert_eq!(classify(&local, a("198.51.100.7:4000"), a("198.51.100.7:4000")), NatType::Easy);
        assert_eq!(classify(&local, a("198.51.100.7:4000"), a("198.51.100.7:4001")), NatType::HardSequential);
        assert_eq!(classify(&local, a("198.51.100.7:4000"), a("198.51.100.7:3990")), NatType::HardSequential);
        assert_eq!(classify(&local, a("198.51.100.7:4000"), a("198.51.100.7:51234")), NatType::HardRandom);
        // Another external address for another destination (address pooling): hard too.
        assert_eq!(classify(&local, a("198.51.100.7:4000"), a("198.51.100.8:4001")), NatType::HardRandom);
    }

    #[test]
    fn a_probe_resends_takes_only_its_answer_and_gives_up() {
        let t0 = Instant::now();
        let relay = a("198.51.100.1:3479");
        let mut probe = NatProbe::new(t0, relay, [3; 12]);
        let (to, request) = probe.poll_transmit(t0).unwrap();
        assert_eq!(to, relay);
        assert!(probe.poll_transmit(t0).is_none(), "one send at a time");
        assert_eq!(probe.poll_timeout(), Some(t0 + RESEND));
        let me = a("203.0.113.9:40000");
        let answer = stun::answer(&request, me).unwrap();
        // From elsewhere, or for another transaction: ignored.
        probe.handle_datagram(a("198.51.100.1:3478"), &answer);
        probe.handle_datagram(relay, &stun::answer(&stun::binding_request([4; 12]), a("6.6.6.6:6")).unwrap());
        assert_eq!(probe.outcome(), None);
        probe.handle_datagram(relay, &answer);
        assert_eq!(probe.outcome(), Some(Some(me)));
        assert_eq!(probe.poll_timeout(), None);

        let mut silent = NatProbe::new(t0, relay, [3; 12]);
        let mut sends = 0;
        let mut now = t0;
        while let Some(at) = silent.poll_timeout() {
            now = at;
            sends += std::iter::from_fn(|| silent.poll_transmit(now)).count();
            silent.handle_timeout(now);
        }
        assert_eq!((sends, silent.outcome(), now), (SENDS as usize, Some(None), t0 + PROBE_TIMEOUT));
    }
}
