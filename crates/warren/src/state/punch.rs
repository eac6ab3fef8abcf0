//! One hole-punching attempt between two peers connected through a relay, sans-IO.
//!
//! The dialler of a relayed connection opens a signalling stream on it (end-to-end encrypted;
//! the relay carries it without reading it) and the two sides swap candidates, DCUtR-style:
//!
//! 1. initiator → `Offer { candidates, reflexive }`;
//! 2. responder → `Answer { candidates, reflexive }`; the initiator takes the time this took as
//!    the round trip;
//! 3. opening, then punching. The initiator first *opens* ([`PunchSession::poll_open`]: the
//!    path table challenges every target with a TTL too small to reach the peer's router, which
//!    opens this side's NAT towards it), then sends `Sync` and waits; the responder, on `Sync`,
//!    opens, says `Opened` and starts punching at once; the initiator starts on `Opened`.
//!    Punching follows [`SCHEDULE`]: each round asks the path table to challenge every target
//!    ([`PunchSession::poll_punch`]). So each side's NAT has its mapping before the other's
//!    first full punch arrives, which a Linux router needs: one that sees the peer's punch
//!    before its own host sent anything keeps an entry for it and moves the host's punch to
//!    another port. Each side's opens leave through its NAT before the message that lets the
//!    other side punch (the initiator's before its `Sync`, the responder's before its
//!    `Opened`), so the order holds whatever the delays, with no timed wait: version 2 waited
//!    half the round trip plus a margin, and a loaded machine acting late on the `Sync` lost
//!    the race.
//! 4. the first address the path table validates ([`PunchSession::handle_validated`]) ends the
//!    punching; the connection's packets already take it;
//! 5. each side says `Finished { ok }` when its schedule is over (or it found the path) and
//!    waits up to [`FINISH_TIMEOUT`] for the other's.
//!
//! Port prediction: from the third round on, the [`PREDICTED_PORTS`] ports above the peer's
//! reflexive port are challenged too, which is where a NAT that allocates ports sequentially
//! puts the peer's next mapping (Crust's delta prediction, with a delta of one). Bounded: at most
//! `(MAX_CANDIDATES + PREDICTED_PORTS) x rounds` challenges per attempt.
//!
//! Birthday probing (issue 13): both sides learn each other's [`NatType`] from the offer and
//! answer. Against a side whose NAT gives each destination a random port ([`NatType::HardRandom`])
//! no punch to its reflexive address can work; if the other side's NAT is
//! [`NatType::Easy`] (endpoint-independent mapping), after the first [`BIRTHDAY_AFTER_ROUNDS`]
//! rounds (cheap, and enough where the easy side's filter ignores ports) the hard side opens
//! [`BIRTHDAY_SOCKETS`] extra sockets, each with a TTL-limited challenge to the easy side's
//! reflexive address ([`PunchSession::poll_birthday`]: [`BIRTHDAY_SOCKETS`] random mappings on
//! its NAT, all admitting the easy side), and the easy side sprays authenticated challenges at
//! random ports of the hard side's address, [`SPRAY_BURST`] every [`SPRAY_GAP`],
//! [`SPRAY_BURSTS`] times: each also opens the easy side's filter for that port, and one that
//! meets an open mapping is answered (Tailscale's numbers: 256 sockets and 1,024 probes find each
//! other ~98 % of the time; warren sprays twice that, for ~99.97 %). Two hard sides (without a port mapping) do not punch at all: no
//! round could succeed.
//!
//! States: `AwaitOffer` (responder) / `AwaitAnswer` (initiator) → `AwaitOpened` (initiator) /
//! `AwaitSync` (responder) → `Punching { round }` → `Grace` → `Finishing` → `Done`.
//! Inputs: messages, validations, timeouts, the stream closing. Outputs: messages to send,
//! addresses to challenge, one [`Attempt`] report, the outcome.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::RemoteIdentity;
use crate::state::nat::NatType;
use crate::state::path_table::is_placeholder;
use crate::wire::punch::{Message, NatInfo};

/// When each round of challenges goes out, from the start of punching. Stops at the first
/// validated address.
pub const SCHEDULE: [Duration; 8] = [
    Duration::from_millis(0),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(1750),
    Duration::from_millis(2750),
    Duration::from_millis(4000),
];

/// Slack for the two sides' clocks and a relay path slower one way than the other (birthday
/// probing's [`spray_delay`]).
pub fn open_margin(rtt: Duration) -> Duration {
    (rtt / 8).max(Duration::from_millis(10))
}

/// How long after the last round a validation may still arrive.
pub const LAST_ROUND_GRACE: Duration = Duration::from_millis(750);

/// Ports above the peer's reflexive port also challenged (from the third round on).
pub const PREDICTED_PORTS: u16 = 16;

/// Candidates taken from each side at most.
pub const MAX_CANDIDATES: usize = 16;

/// Rounds sent before birthday probing starts (0, 100 and 250 ms: where the easy side's filter
/// ignores ports, these already work).
pub const BIRTHDAY_AFTER_ROUNDS: usize = 3;

/// When the birthday phase starts, from the start of punching.
pub const BIRTHDAY_AT: Duration = Duration::from_millis(500);

/// Extra sockets the hard side opens.
pub const BIRTHDAY_SOCKETS: usize = 256;

/// Challenges per burst of the easy side's spray.
pub const SPRAY_BURST: usize = 128;

/// Bursts in the spray: 2,048 challenges in all. (Against 256 open mappings among ~64,500
/// ports, 1,024 find one 98 % of the time, 2,048 99.97 %: with 1,024 a NAT-matrix run, eight
/// birthday pairs, lost one pair in seven.)
pub const SPRAY_BURSTS: usize = 16;

/// Gap between bursts.
pub const SPRAY_GAP: Duration = Duration::from_millis(100);

/// How much after the hard side's opens the spray starts: the initiator starts punching when
/// the responder's `Opened` arrives, about half a round trip after the responder started,
/// and opening the sockets takes a moment.
pub fn spray_delay(rtt: Duration) -> Duration {
    rtt / 2 + open_margin(rtt) * 2 + Duration::from_millis(50)
}

/// How this pair punches, decided alike on both sides from both sides' NAT information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Rounds of challenges to the candidates (and predicted ports).
    Rounds,
    /// A few rounds, then birthday probing; `opener`: this side is the hard one.
    Birthday {
        /// This side opens the extra sockets (else it sprays).
        opener: bool,
    },
    /// Nothing can get through: no rounds (the connection stays relayed).
    Skip,
}

/// The plan for a side with `ours` against a peer with `theirs`.
pub fn plan(ours: NatInfo, theirs: NatInfo) -> Plan {
    if ours.mapped || theirs.mapped {
        // A port mapping is reachable from anywhere: a plain round to it works.
        return Plan::Rounds;
    }
    match (ours.kind, theirs.kind) {
        // (A sequential hard side gets rounds, whose predicted ports find it from most easy
        // sides; see docs/nat-traversal.md for the one pair where neither works.)
        (NatType::HardRandom, NatType::Easy) => Plan::Birthday { opener: true },
        (NatType::Easy, NatType::HardRandom) => Plan::Birthday { opener: false },
        (a, b) if a.is_hard() && b.is_hard() => Plan::Skip,
        _ => Plan::Rounds,
    }
}

/// How a direct path was found, from the plainest to the most specific (the order of `Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A round of challenges to a candidate.
    Punched,
    /// A predicted port.
    Predicted,
    /// Birthday probing.
    Birthday,
    /// The peer's (or our) port mapping.
    PortMapping,
}

impl Method {
    /// Its name in output and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Method::Punched => "punched",
            Method::Predicted => "predicted",
            Method::Birthday => "birthday",
            Method::PortMapping => "port-mapping",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Waits before each retry of a failed attempt. The first is longer than a Linux router keeps
/// an unreplied UDP entry (`nf_conntrack_udp_timeout`, 30 s, counted from the last packet of
/// the failed attempt, which ended at most [`LAST_ROUND_GRACE`] after it): what a failed attempt
/// left in the routers' conntrack is gone when the next one starts.
pub const RETRY_AFTER: [Duration; 3] = [Duration::from_secs(35), Duration::from_secs(120), Duration::from_secs(480)];

/// How long a side waits for the other's `Finished`.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a side waits for the other's next signalling message before giving up.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Offers to punch answered per peer at most this often (the dialler's own schedule retries
/// after 35 s at the soonest): a peer cannot make this node send challenge after challenge.
pub const MIN_OFFER_INTERVAL: Duration = Duration::from_secs(10);

/// Peers whose last offer time is remembered at most.
pub const MAX_OFFER_PEERS: usize = 4096;

/// Offers answered per [`OFFER_BUDGET_WINDOW`] from all peers together: identities are free, so
/// the per-peer limit alone let a flood of throwaway keys make the node send an attempt's
/// challenges (up to 256, or 2,048 for birthday probing) for each key.
pub const OFFER_BUDGET: usize = 30;

/// See [`OFFER_BUDGET`].
pub const OFFER_BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// This side's addresses: the socket's on each interface, and the one its relay sees; and what
/// it knows of its NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    /// Local addresses (a port mapping's external address first).
    pub local: Vec<SocketAddr>,
    /// The reflexive address (from the relay over UDP).
    pub reflexive: Option<SocketAddr>,
    /// This side's NAT.
    pub nat: NatInfo,
}

/// Which side of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialler of the relayed connection: sends the offer.
    Initiator,
    /// Answers the offer.
    Responder,
}

/// How one attempt went, as this side saw it (reported once, when its schedule ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The address validated, if any.
    pub direct: Option<SocketAddr>,
    /// Rounds of challenges sent (a spray burst counts as one).
    pub rounds: u32,
    /// From the start of signalling.
    pub elapsed: Duration,
    /// How the path was found (None: it was not, or the other side found it).
    pub method: Option<Method>,
    /// Datagrams this side sent for the attempt (opens, challenges, birthday sockets' opens).
    pub packets: u32,
    /// The plan both sides followed.
    pub plan: Plan,
}

/// Why an attempt ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PunchError {
    /// The peer sent a message out of turn.
    #[error("unexpected signalling message {0}")]
    Unexpected(&'static str),
    /// The peer stopped answering.
    #[error("the peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The signalling stream closed before the attempt ended.
    #[error("the signalling stream closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitOffer { until: Instant },
    AwaitAnswer { sent: Instant },
    AwaitOpened { until: Instant },
    AwaitSync { until: Instant },
    Punching { start: Instant, round: usize },
    Birthday { start: Instant, step: usize },
    Grace { until: Instant },
    Finishing { until: Instant },
    Done,
}

/// One attempt. See the module docs.
#[derive(Debug)]
pub struct PunchSession {
    role: Role,
    phase: Phase,
    started: Instant,
    ours: Candidates,
    on_loopback: bool,
    seed: [u8; 32],
    targets: Vec<SocketAddr>,
    predicted: Vec<SocketAddr>,
    /// The peer's reflexive address and NAT, from its offer or answer.
    their_reflexive: Option<SocketAddr>,
    their_nat: NatInfo,
    /// Their mapped candidate, if they said they have one.
    their_mapped: Option<SocketAddr>,
    plan: Plan,
    rtt: Duration,
    /// When this side sent its answer (responder: the sync's arrival gives the round trip).
    answered: Option<Instant>,
    sprayed: std::collections::HashSet<u16>,
    spray_counter: u64,
    birthday: Option<(SocketAddr, usize)>,
    birthday_opened: bool,
    method: Option<Method>,
    packets: u32,
    direct: Option<SocketAddr>,
    rounds: u32,
    outbox: VecDeque<Message>,
    punches: VecDeque<SocketAddr>,
    opens: VecDeque<SocketAddr>,
    report: Option<Attempt>,
    reported: bool,
    their_ok: Option<bool>,
    error: Option<PunchError>,
}

impl PunchSession {
    /// The initiator's side, starting now: the offer is ready in [`PunchSession::poll_message`].
    /// `on_loopback`: this node is bound to loopback, so loopback candidates are fine. `seed`
    /// (random) picks the ports a birthday spray tries.
    pub fn initiator(now: Instant, ours: Candidates, on_loopback: bool, seed: [u8; 32]) -> Self {
        let mut session = Self::new(Role::Initiator, now, ours, on_loopback, seed);
        let (candidates, reflexive) = session.our_candidates();
        session.outbox.push_back(Message::Offer { candidates, reflexive, nat: session.ours.nat });
        session.phase = Phase::AwaitAnswer { sent: now };
        session
    }

    /// The responder's side, waiting for the offer.
    pub fn responder(now: Instant, ours: Candidates, on_loopback: bool, seed: [u8; 32]) -> Self {
        Self::new(Role::Responder, now, ours, on_loopback, seed)
    }

    fn new(role: Role, now: Instant, ours: Candidates, on_loopback: bool, seed: [u8; 32]) -> Self {
        PunchSession {
            role,
            phase: Phase::AwaitOffer { until: now + SIGNAL_TIMEOUT },
            started: now,
            ours,
            on_loopback,
            seed,
            targets: Vec::new(),
            predicted: Vec::new(),
            their_reflexive: None,
            their_nat: NatInfo::default(),
            their_mapped: None,
            plan: Plan::Rounds,
            rtt: Duration::ZERO,
            answered: None,
            sprayed: std::collections::HashSet::new(),
            spray_counter: 0,
            birthday: None,
            birthday_opened: false,
            method: None,
            packets: 0,
            direct: None,
            rounds: 0,
            outbox: VecDeque::new(),
            punches: VecDeque::new(),
            opens: VecDeque::new(),
            report: None,
            reported: false,
            their_ok: None,
            error: None,
        }
    }

    fn our_candidates(&self) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        let mut local = self.ours.local.clone();
        local.truncate(MAX_CANDIDATES - 1);
        (local, self.ours.reflexive)
    }

    /// Which side this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Takes the peer's candidates in: what will be challenged, and how.
    fn learn(&mut self, candidates: &[SocketAddr], reflexive: Option<SocketAddr>, nat: NatInfo) {
        let (targets, predicted) = targets(candidates, reflexive, self.on_loopback);
        self.targets = targets;
        self.predicted = predicted;
        self.their_reflexive = reflexive.filter(|r| usable(*r) && r.is_ipv4());
        self.their_nat = nat;
        self.their_mapped = if nat.mapped { candidates.first().copied().filter(|a| usable(*a)) } else { None };
        self.plan = plan(self.ours.nat, nat);
        if let Plan::Birthday { .. } = self.plan
            && (self.their_reflexive.is_none() || self.ours.reflexive.is_none())
        {
            self.plan = Plan::Rounds;
        }
    }

    /// The plan this attempt follows (known once the offer or answer arrived).
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// A signalling message from the peer.
    pub fn handle_message(&mut self, now: Instant, message: Message) -> Result<(), PunchError> {
        match (self.phase, message) {
            (Phase::AwaitOffer { .. }, Message::Offer { candidates, reflexive, nat })
                if self.role == Role::Responder =>
            {
                self.learn(&candidates, reflexive, nat);
                let (candidates, reflexive) = self.our_candidates();
                self.outbox.push_back(Message::Answer { candidates, reflexive, nat: self.ours.nat });
                self.answered = Some(now);
                self.phase = Phase::AwaitSync { until: now + SIGNAL_TIMEOUT };
            }
            (Phase::AwaitAnswer { sent }, Message::Answer { candidates, reflexive, nat }) => {
                self.learn(&candidates, reflexive, nat);
                // Opens first: they leave before the `Sync` that sets the responder going.
                self.queue_opens();
                self.outbox.push_back(Message::Sync);
                self.rtt = now.saturating_duration_since(sent);
                self.phase = Phase::AwaitOpened { until: now + SIGNAL_TIMEOUT };
            }
            (Phase::AwaitSync { .. }, Message::Sync) => {
                self.rtt = self.answered.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                // Opens first, again: they leave before the `Opened` that sets the initiator going.
                self.queue_opens();
                self.outbox.push_back(Message::Opened);
                self.phase = Phase::Punching { start: now, round: 0 };
            }
            (Phase::AwaitOpened { .. }, Message::Opened) => self.phase = Phase::Punching { start: now, round: 0 },
            // After a path was found without it (the responder's punch validated first): late,
            // and nothing is left for it to start.
            (Phase::Finishing { .. } | Phase::Done, Message::Opened) if self.role == Role::Initiator => {}
            (_, Message::Finished { ok }) if self.their_ok.is_none() => {
                self.their_ok = Some(ok);
                if matches!(self.phase, Phase::Finishing { .. }) {
                    self.phase = Phase::Done;
                }
            }
            (_, message) => {
                let name = match message {
                    Message::Offer { .. } => "offer",
                    Message::Answer { .. } => "answer",
                    Message::Sync => "sync",
                    Message::Opened => "opened",
                    Message::Finished { .. } => "second finished",
                };
                return Err(self.fail(PunchError::Unexpected(name)));
            }
        }
        self.handle_timeout(now);
        Ok(())
    }

    /// Opens towards every target, if there is a NAT of ours to open: not on loopback, nor with a
    /// public address (the reflexive address is one of our own), where an open could only
    /// reach the peer's router early.
    fn queue_opens(&mut self) {
        let public = self.ours.reflexive.is_some_and(|r| self.ours.local.contains(&r));
        if !self.on_loopback && !public && self.plan != Plan::Skip {
            self.packets += self.targets.len() as u32;
            self.opens.extend(self.targets.iter().copied());
        }
    }

    /// The next `burst` ports of the spray: random, each tried once.
    fn spray_ports(&mut self, burst: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(burst);
        while out.len() < burst && self.sprayed.len() < usize::from(u16::MAX - 1024) {
            self.spray_counter += 1;
            let hash = blake3::keyed_hash(&self.seed, &self.spray_counter.to_le_bytes());
            for pair in hash.as_bytes().chunks(2) {
                let port = 1024 + u16::from_le_bytes([pair[0], pair[1]]) % (u16::MAX - 1023);
                if out.len() < burst && self.sprayed.insert(port) {
                    out.push(port);
                }
            }
        }
        out
    }

    /// When birthday step `step` is due, for a phase that started punching at `start`.
    fn birthday_at(&self, start: Instant, step: usize) -> Instant {
        match self.plan {
            Plan::Birthday { opener: true } => start + BIRTHDAY_AT,
            _ => start + BIRTHDAY_AT + spray_delay(self.rtt) + SPRAY_GAP * step as u32,
        }
    }

    /// When the birthday phase is over for both sides.
    fn birthday_end(&self, start: Instant) -> Instant {
        start + BIRTHDAY_AT + spray_delay(self.rtt) + SPRAY_GAP * SPRAY_BURSTS as u32 + LAST_ROUND_GRACE
    }

    fn fail(&mut self, error: PunchError) -> PunchError {
        if !self.reported && self.report.is_none() {
            self.report = Some(self.attempt(Duration::ZERO));
        }
        self.phase = Phase::Done;
        self.error = Some(error.clone());
        error
    }

    /// The path table validated `addr` for this peer: punching is over, with success.
    pub fn handle_validated(&mut self, now: Instant, addr: SocketAddr) {
        if self.direct.is_some() || matches!(self.phase, Phase::Done | Phase::Finishing { .. }) {
            return;
        }
        self.direct = Some(addr);
        let sprayed = self.their_reflexive.is_some_and(|r| r.ip() == addr.ip() && self.sprayed.contains(&addr.port()));
        let opened = self.plan == (Plan::Birthday { opener: true }) && self.birthday_opened;
        self.method = Some(if Some(addr) == self.their_mapped {
            Method::PortMapping
        } else if self.targets.contains(&addr) {
            Method::Punched
        } else if self.predicted.contains(&addr) {
            Method::Predicted
        } else if sprayed || opened {
            // A sprayed port, or (on the hard side, once its extra sockets are open) the peer
            // reached through one of them.
            Method::Birthday
        } else if self.ours.nat.mapped {
            // The peer's punch reached our port mapping, and its address was challenged back.
            Method::PortMapping
        } else {
            // Where the peer's own punch came from (its NAT's new mapping), challenged back.
            Method::Punched
        });
        if matches!(
            self.phase,
            Phase::Punching { .. }
                | Phase::Birthday { .. }
                | Phase::Grace { .. }
                | Phase::AwaitOpened { .. }
                | Phase::AwaitSync { .. }
        ) {
            self.end_schedule(now);
        }
    }

    /// The signalling stream closed (or failed).
    pub fn handle_closed(&mut self) {
        if !matches!(self.phase, Phase::Done) {
            let finishing = matches!(self.phase, Phase::Finishing { .. });
            let _ = self.fail(PunchError::Closed);
            if finishing {
                // Our side was done; the peer just left without its `Finished`.
                self.error = None;
            }
        }
    }

    fn end_schedule(&mut self, now: Instant) {
        if !self.reported && self.report.is_none() {
            self.report = Some(self.attempt(now.saturating_duration_since(self.started)));
        }
        if matches!(self.phase, Phase::Done) {
            return;
        }
        self.outbox.push_back(Message::Finished { ok: self.direct.is_some() });
        self.phase =
            if self.their_ok.is_some() { Phase::Done } else { Phase::Finishing { until: now + FINISH_TIMEOUT } };
    }

    fn attempt(&self, elapsed: Duration) -> Attempt {
        Attempt {
            direct: self.direct,
            rounds: self.rounds,
            elapsed,
            method: self.direct.and(self.method),
            packets: self.packets,
            plan: self.plan,
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        loop {
            match self.phase {
                Phase::AwaitOffer { until } | Phase::AwaitSync { until } | Phase::AwaitOpened { until }
                    if now >= until =>
                {
                    let _ = self.fail(PunchError::Timeout(SIGNAL_TIMEOUT));
                }
                Phase::AwaitAnswer { sent } if now >= sent + SIGNAL_TIMEOUT => {
                    let _ = self.fail(PunchError::Timeout(SIGNAL_TIMEOUT));
                }
                Phase::Punching { .. } if self.plan == Plan::Skip => self.end_schedule(now),
                Phase::Punching { start, round } if now >= start + SCHEDULE[round] => {
                    self.rounds += 1;
                    self.punches.extend(self.targets.iter().copied());
                    self.packets += self.targets.len() as u32;
                    if round >= 2 {
                        self.punches.extend(self.predicted.iter().copied());
                        self.packets += self.predicted.len() as u32;
                    }
                    let birthday = matches!(self.plan, Plan::Birthday { .. }) && round + 1 == BIRTHDAY_AFTER_ROUNDS;
                    self.phase = match SCHEDULE.get(round + 1) {
                        _ if birthday => Phase::Birthday { start, step: 0 },
                        Some(_) => Phase::Punching { start, round: round + 1 },
                        None => Phase::Grace { until: start + SCHEDULE[round] + LAST_ROUND_GRACE },
                    };
                }
                Phase::Birthday { start, step } if now >= self.birthday_at(start, step) => {
                    let (Some(theirs), Some(_)) = (self.their_reflexive, self.ours.reflexive) else {
                        self.phase = Phase::Grace { until: now };
                        continue;
                    };
                    if self.plan == (Plan::Birthday { opener: true }) {
                        self.birthday = Some((theirs, BIRTHDAY_SOCKETS));
                        self.birthday_opened = true;
                        self.packets += BIRTHDAY_SOCKETS as u32;
                        self.rounds += 1;
                        self.phase = Phase::Grace { until: self.birthday_end(start) };
                    } else {
                        let ports = self.spray_ports(SPRAY_BURST);
                        self.packets += ports.len() as u32;
                        self.rounds += 1;
                        self.punches.extend(ports.into_iter().map(|p| SocketAddr::new(theirs.ip(), p)));
                        self.phase = if step + 1 < SPRAY_BURSTS {
                            Phase::Birthday { start, step: step + 1 }
                        } else {
                            Phase::Grace { until: self.birthday_end(start) }
                        };
                    }
                }
                Phase::Grace { until } if now >= until => self.end_schedule(now),
                Phase::Finishing { until } if now >= until => self.phase = Phase::Done,
                _ => return,
            }
        }
    }

    /// When [`PunchSession::handle_timeout`] wants to run next (None once done).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitOffer { until } | Phase::AwaitSync { until } | Phase::AwaitOpened { until } => Some(until),
            Phase::AwaitAnswer { sent } => Some(sent + SIGNAL_TIMEOUT),
            Phase::Punching { .. } if self.plan == Plan::Skip => Some(self.started),
            Phase::Punching { start, round } => Some(start + SCHEDULE[round]),
            Phase::Birthday { start, step } => Some(self.birthday_at(start, step)),
            Phase::Grace { until } | Phase::Finishing { until } => Some(until),
            Phase::Done => None,
        }
    }

    /// The next message to send the peer.
    pub fn poll_message(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// The next address to open (challenge with a small TTL, [`crate::state::path_table::PathTable::open`]);
    /// take these before [`PunchSession::poll_punch`]'s.
    pub fn poll_open(&mut self) -> Option<SocketAddr> {
        if self.direct.is_some() {
            self.opens.clear();
        }
        self.opens.pop_front()
    }

    /// Birthday probing, on the hard side: open this many extra sockets, each with a
    /// TTL-limited challenge to this address (the easy side's reflexive one). Once.
    pub fn poll_birthday(&mut self) -> Option<(SocketAddr, usize)> {
        if self.direct.is_some() {
            self.birthday = None;
        }
        self.birthday.take()
    }

    /// The next address to challenge.
    pub fn poll_punch(&mut self) -> Option<SocketAddr> {
        if self.direct.is_some() {
            self.punches.clear();
        }
        self.punches.pop_front()
    }

    /// This side's report, once, when its schedule ended (found, exhausted or failed).
    pub fn poll_report(&mut self) -> Option<Attempt> {
        let report = self.report.take();
        if report.is_some() {
            self.reported = true;
        }
        report
    }

    /// Is the attempt over (nothing more to send or wait for)?
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done) && self.outbox.is_empty()
    }

    /// Once done: did either side find a direct path? `Err` if the attempt broke off.
    pub fn outcome(&self) -> Option<Result<bool, PunchError>> {
        if !matches!(self.phase, Phase::Done) {
            return None;
        }
        if let Some(error) = &self.error {
            return Some(Err(error.clone()));
        }
        Some(Ok(self.direct.is_some() || self.their_ok == Some(true)))
    }
}

/// The addresses to challenge for a peer's candidates: the reflexive address first (the one most
/// likely to work across NATs), then the usable candidates, at most [`MAX_CANDIDATES`]; and the
/// predicted ports above the reflexive one.
pub fn targets(
    candidates: &[SocketAddr],
    reflexive: Option<SocketAddr>,
    on_loopback: bool,
) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let ok = |a: &SocketAddr| usable(*a) || (on_loopback && a.ip().is_loopback() && a.port() != 0);
    let mut targets: Vec<SocketAddr> = Vec::new();
    let reflexive = reflexive.filter(ok);
    for addr in reflexive.iter().chain(candidates.iter().filter(|a| ok(a))) {
        if targets.len() < MAX_CANDIDATES && !targets.contains(addr) {
            targets.push(*addr);
        }
    }
    let predicted = reflexive
        .map(|r| {
            (1..=PREDICTED_PORTS).filter_map(|d| r.port().checked_add(d).map(|p| SocketAddr::new(r.ip(), p))).collect()
        })
        .unwrap_or_default();
    (targets, predicted)
}

/// Whether a candidate may be challenged: never loopback, unspecified, multicast, broadcast, a
/// relay placeholder or port 0 (the peer chooses the candidates; this node sends to them).
pub fn usable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0
        && !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !broadcast
        && !is_placeholder(addr)
}

/// When both peers dialled each other through the relay at once, both offers cross: the one
/// from the smaller identity goes on, the other side's is refused. True if `sender`'s offer
/// wins over `receiver`'s own.
pub fn offer_wins(sender: &RemoteIdentity, receiver: &RemoteIdentity) -> bool {
    sender.as_bytes() < receiver.as_bytes()
}

/// Answers offers from each peer at most once per [`MIN_OFFER_INTERVAL`], and from all peers
/// at most [`OFFER_BUDGET`] per [`OFFER_BUDGET_WINDOW`].
#[derive(Debug, Default)]
pub struct OfferLimiter {
    answered: HashMap<RemoteIdentity, Instant>,
    /// When the offers of the last window were answered, oldest first.
    recent: std::collections::VecDeque<Instant>,
}

impl OfferLimiter {
    /// May an offer from `peer` be answered at `now`? Records it if so.
    pub fn may_answer(&mut self, now: Instant, peer: RemoteIdentity) -> bool {
        self.answered.retain(|_, at| now.saturating_duration_since(*at) < MIN_OFFER_INTERVAL);
        while self.recent.front().is_some_and(|at| now.saturating_duration_since(*at) >= OFFER_BUDGET_WINDOW) {
            self.recent.pop_front();
        }
        if self.answered.contains_key(&peer)
            || self.answered.len() >= MAX_OFFER_PEERS
            || self.recent.len() >= OFFER_BUDGET
        {
            return false;
        }
        self.answered.insert(peer, now);
        self.recent.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hostile_candidates_are_not_challenged() {
        for bad in [
            "127.0.0.1:5",
            "0.0.0.0:5",
            "224.0.0.251:5353",
            "255.255.255.255:9",
            "240.0.0.1:9",
            "192.0.2.1:0",
            "[::1]:5",
        ] {
            assert!(!usable(addr(bad)), "{bad}");
        }
        for good in ["192.168.1.2:4000", "203.0.113.9:51000", "[2001:db8::1]:9"] {
            assert!(usable(addr(good)), "{good}");
        }
        // Loopback only for a node bound to loopback; never more than MAX_CANDIDATES.
        let many: Vec<_> = (1..100).map(|p| addr(&format!("192.0.2.1:{p}"))).collect();
        let (t, p) = targets(&many, Some(addr("203.0.113.9:65530")), false);
        assert_eq!(t.len(), MAX_CANDIDATES);
        assert_eq!(t[0], addr("203.0.113.9:65530"), "reflexive first");
        assert_eq!(p.len(), 5, "no port past 65535");
        assert!(targets(&[addr("127.0.0.1:5")], None, false).0.is_empty());
        assert_eq!(targets(&[addr("127.0.0.1:5")], None, true).0, [addr("127.0.0.1:5")]);
    }

    #[test]
    fn schedule_backs_off_and_is_bounded() {
        assert!(SCHEDULE.windows(2).all(|w| w[1] > w[0]));
        let gaps: Vec<_> = SCHEDULE.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "gaps grow: {gaps:?}");
        assert!(RETRY_AFTER.windows(2).all(|w| w[1] > w[0]));
        let per_attempt = (MAX_CANDIDATES + usize::from(PREDICTED_PORTS)) * SCHEDULE.len();
        assert!(per_attempt <= 256, "{per_attempt}");
    }

    #[test]
    fn crossing_offers_have_one_winner_and_offers_are_limited() {
        let (a, b) = (Identity::generate().to_remote_identity(), Identity::generate().to_remote_identity());
        assert_ne!(offer_wins(&a, &b), offer_wins(&b, &a));
        let mut limiter = OfferLimiter::default();
        let now = Instant::now();
        assert!(limiter.may_answer(now, a));
        assert!(!limiter.may_answer(now + Duration::from_secs(9), a));
        assert!(limiter.may_answer(now + Duration::from_secs(9), b));
        assert!(limiter.may_answer(now + MIN_OFFER_INTERVAL, a));
    }

    /// Issue 14, point 6: each throwaway identity could make the node send an attempt's
    /// challenges (256, or 2,048 birthday probes) to hosts of its choosing; 10,000 keys, 10,000
    /// attempts. Now all peers together get OFFER_BUDGET answers a minute.
    #[test]
    fn offers_from_a_flood_of_identities_meet_a_global_budget() {
        let mut limiter = OfferLimiter::default();
        let now = Instant::now();
        let answered = (0..10_000)
            .filter(|i| limiter.may_answer(now + Duration::from_millis(*i), Identity::generate().to_remote_identity()))
            .count();
        assert_eq!(answered, OFFER_BUDGET);
        // A minute after the first answers, the budget is back.
        let later = now + OFFER_BUDGET_WINDOW + Duration::from_secs(10);
        assert!(limiter.may_answer(later, Identity::generate().to_remote_identity()));
    }

    /// A simulated pair of sessions: messages take `one_way`, and the peer is found at `open`
    /// (an address among the targets) if a challenge to it goes out at or after `opens_at`.
    struct Run {
        i: PunchSession,
        r: PunchSession,
        now: Instant,
        /// Messages in flight: (arrival, to initiator?, message).
        flight: Vec<(Instant, bool, Message)>,
        challenges: (usize, usize),
        /// Birthday sockets opened: (when, by the initiator?, how many).
        birthday: Option<(Instant, bool, usize)>,
    }

    fn cands(s: &str) -> Candidates {
        Candidates { local: vec![addr(s)], reflexive: Some(addr(s)), nat: NatInfo::default() }
    }

    impl Run {
        fn new(start: Instant) -> Self {
            Run {
                i: PunchSession::initiator(start, cands("198.51.100.1:4000"), false, [1; 32]),
                r: PunchSession::responder(start, cands("198.51.100.2:5000"), false, [2; 32]),
                now: start,
                flight: Vec::new(),
                challenges: (0, 0),
                birthday: None,
            }
        }

        /// Runs until both are done or 60 s passed. `found(side_is_initiator, target, now)`
        /// says whether a challenge validates.
        fn run(&mut self, one_way: Duration, mut found: impl FnMut(bool, SocketAddr, Instant) -> bool) {
            self.run_with(one_way, |i, t, now, _| found(i, t, now));
        }

        /// [`Run::run`], with when the birthday sockets opened (and by whom) given to `found`.
        fn run_with(
            &mut self,
            one_way: Duration,
            mut found: impl FnMut(bool, SocketAddr, Instant, Option<(Instant, bool, usize)>) -> bool,
        ) {
            let end = self.now + Duration::from_secs(60);
            while !(self.i.is_done() && self.r.is_done()) && self.now < end {
                for (to_i, session) in [(false, &mut self.i), (true, &mut self.r)] {
                    while let Some(m) = session.poll_message() {
                        self.flight.push((self.now + one_way, to_i, m));
                    }
                }
                for (is_i, session) in [(true, &mut self.i), (false, &mut self.r)] {
                    while let Some((_, count)) = session.poll_birthday() {
                        assert!(self.birthday.is_none(), "sockets are opened once");
                        self.birthday = Some((self.now, is_i, count));
                    }
                    while let Some(target) = session.poll_punch() {
                        if is_i {
                            self.challenges.0 += 1
                        } else {
                            self.challenges.1 += 1
                        }
                        if found(is_i, target, self.now, self.birthday) {
                            session.handle_validated(self.now + one_way * 2, target);
                        }
                    }
                }
                let next_msg = self.flight.iter().map(|f| f.0).min();
                let next = [self.i.poll_timeout(), self.r.poll_timeout(), next_msg].into_iter().flatten().min();
                let Some(next) = next else { break };
                self.now = next.max(self.now);
                let (due, rest): (Vec<_>, Vec<_>) = self.flight.drain(..).partition(|f| f.0 <= self.now);
                self.flight = rest;
                for (_, to_i, m) in due {
                    let session = if to_i { &mut self.i } else { &mut self.r };
                    let _ = session.handle_message(self.now, m);
                }
                self.i.handle_timeout(self.now);
                self.r.handle_timeout(self.now);
            }
        }
    }

    #[test]
    fn an_open_path_is_found_in_the_first_round_within_three_rtt_of_the_offer() {
        let start = Instant::now();
        let mut run = Run::new(start);
        let rtt = Duration::from_millis(100);
        run.run(rtt / 2, |_, target, _| target == addr("198.51.100.2:5000") || target == addr("198.51.100.1:4000"));
        let (ri, rr) = (run.i.poll_report().unwrap(), run.r.poll_report().unwrap());
        assert_eq!(ri.direct, Some(addr("198.51.100.2:5000")));
        assert_eq!(rr.direct, Some(addr("198.51.100.1:4000")));
        assert_eq!(ri.rounds, 1);
        // Offer + answer (1 RTT), sync + opened (1 RTT), then the challenge's own round trip;
        // the responder (its clock started with the initiator's) punched on the sync, half an
        // RTT earlier.
        assert!(ri.elapsed <= rtt * 3, "{:?}", ri.elapsed);
        assert!(rr.elapsed <= rtt * 5 / 2, "{:?}", rr.elapsed);
        assert_eq!(run.i.outcome(), Some(Ok(true)));
        assert_eq!(run.r.outcome(), Some(Ok(true)));
    }

    /// Two Linux routers (see `warren_netsim::conntrack`): a side's NAT opens towards the other
    /// when it sends there, opens included (which die before the other router); a punch that
    /// reaches the other router before that router opened leaves an entry that breaks the
    /// attempt for good. `relay` is each direction's one-way relayed delay (initiator to
    /// responder, back), `direct` the one-way delay between the routers. Returns whether each
    /// side validated the direct path.
    fn linux_routers(relay: (Duration, Duration), direct: Duration, use_opens: bool) -> (bool, bool) {
        let start = Instant::now();
        // Each side behind its router: a private local address, a public reflexive one.
        let behind = |local: &str, public: &str| Candidates {
            local: vec![addr(local)],
            reflexive: Some(addr(public)),
            nat: NatInfo::default(),
        };
        let (i_public, r_public) = (addr("198.51.100.1:4000"), addr("198.51.100.2:5000"));
        let mut run = Run::new(start);
        run.i = PunchSession::initiator(start, behind("10.0.1.2:4000", "198.51.100.1:4000"), false, [1; 32]);
        run.r = PunchSession::responder(start, behind("10.0.2.2:5000", "198.51.100.2:5000"), false, [2; 32]);
        // [initiator, responder]: when its NAT opened; whether the other's punch poisoned it.
        let mut opened: [Option<Instant>; 2] = [None, None];
        let mut poisoned = [false, false];
        let mut validated = [false, false];
        // Punches in flight: (arrival at the other router, from the initiator?, moved: the
        // sender's own router was poisoned, so the punch left from another port).
        let mut punches: Vec<(Instant, bool, bool)> = Vec::new();
        let end = start + Duration::from_secs(30);
        while !(run.i.is_done() && run.r.is_done()) && run.now < end {
            let now = run.now;
            for (side, session) in [(0usize, &mut run.i), (1, &mut run.r)] {
                // Only what goes to the peer's public address reaches (or opens towards) its
                // router; the private candidates lead nowhere.
                let peer_public = if side == 0 { r_public } else { i_public };
                while let Some(target) = session.poll_open() {
                    if use_opens && target == peer_public {
                        opened[side].get_or_insert(now);
                    }
                }
                while let Some(m) = session.poll_message() {
                    let delay = if side == 0 { relay.0 } else { relay.1 };
                    run.flight.push((now + delay, side == 1, m));
                }
                while let Some(target) = session.poll_punch() {
                    if target == peer_public {
                        opened[side].get_or_insert(now);
                        punches.push((now + direct, side == 0, poisoned[side]));
                    }
                }
            }
            // Punches arriving now: through if the other router opened first and is clean.
            let (due, rest): (Vec<_>, Vec<_>) = punches.drain(..).partition(|p| p.0 <= now);
            punches = rest;
            for (arrival, from_i, moved) in due {
                let (from, to) = if from_i { (0, 1) } else { (1, 0) };
                if moved || poisoned[to] || opened[to].is_none_or(|at| at > arrival) {
                    poisoned[to] = true;
                    continue;
                }
                // The answer comes back the same way: the challenger validates.
                if !validated[from] {
                    validated[from] = true;
                    let session = if from_i { &mut run.i } else { &mut run.r };
                    let target = if from_i { r_public } else { i_public };
                    session.handle_validated(arrival + direct, target);
                }
            }
            let next_msg = run.flight.iter().map(|f| f.0).min();
            let next_punch = punches.iter().map(|p| p.0).min();
            let next = [run.i.poll_timeout(), run.r.poll_timeout(), next_msg, next_punch].into_iter().flatten().min();
            let Some(next) = next else { break };
            run.now = next.max(run.now);
            let (due, rest): (Vec<_>, Vec<_>) = run.flight.drain(..).partition(|f| f.0 <= run.now);
            run.flight = rest;
            for (_, to_i, m) in due {
                let session = if to_i { &mut run.i } else { &mut run.r };
                let _ = session.handle_message(run.now, m);
            }
            run.i.handle_timeout(run.now);
            run.r.handle_timeout(run.now);
        }
        (validated[0], validated[1])
    }

    #[test]
    fn opening_first_beats_the_linux_router_race_whatever_the_delays() {
        // Routers next to each other (no direct delay at all) or far apart, relay paths
        // symmetric or lopsided by up to a quarter of the round trip.
        let ms = Duration::from_millis;
        for direct in [ms(0), ms(1), ms(10), ms(50)] {
            for relay in [(ms(25), ms(25)), (ms(30), ms(20)), (ms(20), ms(30)), (ms(1), ms(1)), (ms(100), ms(60))] {
                assert_eq!(linux_routers(relay, direct, true), (true, true), "direct {direct:?}, relay {relay:?}");
            }
        }
    }

    #[test]
    fn a_responder_slow_to_act_on_the_sync_still_opens_before_the_first_punch_reaches_it() {
        // The `Sync` takes far longer to reach the responder, and be acted on, than the answer
        // took to come back (a loaded machine, a relay queue): a timed wait would punch too
        // early (a fresh-clone CI run stayed relayed between two kernel NATs); the initiator
        // punches only once the responder said its opens are out.
        let ms = Duration::from_millis;
        for direct in [ms(0), ms(10), ms(50)] {
            for relay in [(ms(60), ms(20)), (ms(200), ms(5)), (ms(1000), ms(1))] {
                assert_eq!(linux_routers(relay, direct, true), (true, true), "direct {direct:?}, relay {relay:?}");
            }
        }
    }

    #[test]
    fn only_a_side_behind_a_nat_opens() {
        let now = Instant::now();
        let answer = Message::Answer {
            candidates: vec![addr("198.51.100.2:5000")],
            reflexive: Some(addr("198.51.100.2:5000")),
            nat: NatInfo::default(),
        };
        let behind = Candidates {
            local: vec![addr("10.0.0.2:4000")],
            reflexive: Some(addr("198.51.100.1:4000")),
            nat: NatInfo::default(),
        };
        for (ours, on_loopback, opens) in
            [(behind.clone(), false, true), (behind, true, false), (cands("198.51.100.1:4000"), false, false)]
        {
            let mut i = PunchSession::initiator(now, ours, on_loopback, [1; 32]);
            i.poll_message();
            i.handle_message(now, answer.clone()).unwrap();
            assert_eq!(i.poll_open().is_some(), opens, "on loopback {on_loopback}");
            // The opens are out before the `Sync`, and no punch goes before the wait.
            assert_eq!(i.poll_message(), Some(Message::Sync));
            assert_eq!(i.poll_punch(), None);
        }
    }

    #[test]
    fn without_opening_close_routers_lose_the_race() {
        // What warren did before opening: simultaneous punches; with the routers close, one
        // side's punch always arrives before the other sent its own.
        let ms = Duration::from_millis;
        assert_eq!(linux_routers((ms(25), ms(25)), ms(0), false), (false, false));
        // Far apart, the simultaneous start was enough.
        assert_eq!(linux_routers((ms(25), ms(25)), ms(50), false), (true, true));
    }

    #[test]
    fn a_closed_path_runs_the_whole_schedule_then_reports_failure() {
        let mut run = Run::new(Instant::now());
        run.run(Duration::from_millis(50), |_, _, _| false);
        let report = run.i.poll_report().unwrap();
        assert_eq!((report.direct, report.rounds), (None, SCHEDULE.len() as u32));
        assert_eq!(run.i.outcome(), Some(Ok(false)));
        assert_eq!(run.r.outcome(), Some(Ok(false)));
        // Two targets (reflexive = local here, so one) and 16 predicted ports from round 3.
        let per_side = SCHEDULE.len() + (SCHEDULE.len() - 2) * usize::from(PREDICTED_PORTS);
        assert_eq!(run.challenges, (per_side, per_side));
        assert!(run.i.poll_report().is_none(), "reported once");
    }

    #[test]
    fn out_of_turn_and_timeouts_end_the_attempt() {
        let now = Instant::now();
        let mut r = PunchSession::responder(now, Candidates::default(), false, [2; 32]);
        assert_eq!(r.handle_message(now, Message::Sync), Err(PunchError::Unexpected("sync")));
        assert_eq!(r.outcome(), Some(Err(PunchError::Unexpected("sync"))));
        let mut r = PunchSession::responder(now, Candidates::default(), false, [2; 32]);
        assert_eq!(r.handle_message(now, Message::Opened), Err(PunchError::Unexpected("opened")));
        // The initiator before its answer, and twice.
        let mut i = PunchSession::initiator(now, Candidates::default(), false, [1; 32]);
        assert_eq!(i.handle_message(now, Message::Opened), Err(PunchError::Unexpected("opened")));
        let answered = || {
            let mut i = PunchSession::initiator(now, Candidates::default(), false, [1; 32]);
            let answer = Message::Answer { candidates: vec![], reflexive: None, nat: NatInfo::default() };
            i.handle_message(now, answer).unwrap();
            i
        };
        let mut i = answered();
        i.handle_message(now, Message::Opened).unwrap();
        assert_eq!(i.handle_message(now, Message::Opened), Err(PunchError::Unexpected("opened")));
        // An initiator whose responder never says `Opened` gives up.
        let mut i = answered();
        i.handle_timeout(now + SIGNAL_TIMEOUT);
        assert_eq!(i.outcome(), Some(Err(PunchError::Timeout(SIGNAL_TIMEOUT))));
        let mut i = PunchSession::initiator(now, Candidates::default(), false, [1; 32]);
        assert!(matches!(i.poll_message(), Some(Message::Offer { .. })));
        i.handle_timeout(now + SIGNAL_TIMEOUT);
        assert_eq!(i.outcome(), Some(Err(PunchError::Timeout(SIGNAL_TIMEOUT))));
        let mut i = PunchSession::initiator(now, Candidates::default(), false, [1; 32]);
        i.handle_closed();
        assert_eq!(i.outcome(), Some(Err(PunchError::Closed)));
    }

    /// A tiny deterministic generator.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn thousands_of_random_runs_end_bounded_and_agree() {
        // Random RTTs, random moments at which the path opens (a NAT mapping appearing),
        // random loss of challenges: every run ends within the schedule's bound, reports
        // once, never challenges more than the bound, and finds the path whenever it opened
        // early enough for a round to hit it.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let (mut opened_early, mut found_early) = (0, 0);
        let real = [addr("198.51.100.1:4000"), addr("198.51.100.2:5000")];
        let bound = (MAX_CANDIDATES + usize::from(PREDICTED_PORTS)) * SCHEDULE.len();
        for _ in 0..3000 {
            let start = Instant::now();
            let mut run = Run::new(start);
            let one_way = Duration::from_millis(1 + xorshift(&mut seed) % 300);
            let opens_after = Duration::from_millis(xorshift(&mut seed) % 8000);
            let mut loss = xorshift(&mut seed);
            run.run(one_way, |_, target, now| {
                loss = loss.rotate_left(7) ^ 0x9e37;
                let lost = loss % 4 == 0;
                !lost && now >= start + opens_after && real.contains(&target)
            });
            assert!(run.i.is_done() && run.r.is_done());
            assert!(run.challenges.0 <= bound && run.challenges.1 <= bound);
            let ri = run.i.poll_report().expect("initiator reported");
            let rr = run.r.poll_report().expect("responder reported");
            assert!(ri.rounds as usize <= SCHEDULE.len() && rr.rounds as usize <= SCHEDULE.len());
            let outcome = run.i.outcome().unwrap().unwrap();
            // Either both see success (each found it, or heard the other did), or neither did.
            assert_eq!(outcome, run.r.outcome().unwrap().unwrap());
            assert_eq!(outcome, ri.direct.is_some() || rr.direct.is_some());
            // Opened before the fifth round: three rounds or more still hit it, each lost one
            // time in four per side, so nearly every such run succeeds.
            if opens_after + one_way * 4 < SCHEDULE[4] {
                opened_early += 1;
                found_early += usize::from(outcome);
            }
            assert!(run.now <= start + Duration::from_secs(60));
        }
        assert!(opened_early > 100, "{opened_early}");
        assert!(found_early * 100 >= opened_early * 98, "{found_early} of {opened_early}");
    }

    fn info(kind: NatType) -> NatInfo {
        NatInfo { kind, mapped: false }
    }

    #[test]
    fn the_plan_follows_both_sides_nats() {
        use NatType::*;
        assert_eq!(plan(info(HardRandom), info(Easy)), Plan::Birthday { opener: true });
        assert_eq!(plan(info(Easy), info(HardRandom)), Plan::Birthday { opener: false });
        for (a, b) in [(HardRandom, HardRandom), (HardRandom, HardSequential), (HardSequential, HardSequential)] {
            assert_eq!(plan(info(a), info(b)), Plan::Skip, "{a} x {b}");
            assert_eq!(plan(info(b), info(a)), Plan::Skip, "{b} x {a}");
        }
        for (a, b) in
            [(Easy, Easy), (Easy, HardSequential), (Open, HardRandom), (Unknown, HardRandom), (Unknown, Unknown)]
        {
            assert_eq!(plan(info(a), info(b)), Plan::Rounds, "{a} x {b}");
            assert_eq!(plan(info(b), info(a)), Plan::Rounds, "{b} x {a}");
        }
        // A port mapping on either side: plain rounds reach it.
        assert_eq!(plan(NatInfo { kind: HardRandom, mapped: true }, info(HardRandom)), Plan::Rounds);
    }

    /// `easy_is_initiator`: which side is easy. The hard side's NAT gives each of its extra
    /// sockets a random port (from `seed`); a sprayed challenge validates if it goes to one of
    /// those ports after their opens left (the model NAT admits the easy side there). Returns
    /// the easy side's report, the hard side's, and the challenges the easy side sent.
    fn birthday_run(seed: u64, easy_is_initiator: bool, one_way: Duration) -> (Attempt, Attempt, usize) {
        let start = Instant::now();
        let easy = Candidates {
            local: vec![addr("10.0.1.2:4000")],
            reflexive: Some(addr("198.51.100.1:4000")),
            nat: info(NatType::Easy),
        };
        let hard = Candidates {
            local: vec![addr("10.0.2.2:5000")],
            reflexive: Some(addr("198.51.100.2:5000")),
            nat: info(NatType::HardRandom),
        };
        let mut run = Run::new(start);
        let (i, r) = if easy_is_initiator { (easy, hard) } else { (hard, easy) };
        let mut seeds = [[0u8; 32]; 2];
        seeds[0][..8].copy_from_slice(&seed.to_le_bytes());
        seeds[1][..8].copy_from_slice(&(!seed).to_le_bytes());
        run.i = PunchSession::initiator(start, i, false, seeds[0]);
        run.r = PunchSession::responder(start, r, false, seeds[1]);
        // The hard NAT's random ports for the extra sockets.
        let mut ports = std::collections::HashSet::new();
        let mut counter = 0u64;
        while ports.len() < BIRTHDAY_SOCKETS {
            counter += 1;
            let h = blake3::hash(&[seed.to_le_bytes(), counter.to_le_bytes()].concat());
            ports.insert(1024 + u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]) % (u16::MAX - 1023));
        }
        let hard_ip = addr("198.51.100.2:1").ip();
        run.run_with(one_way, |from_i, target, now, birthday| {
            // Through if the hard side's sockets opened before the probe arrives (both take
            // `one_way` to reach the hard NAT).
            from_i == easy_is_initiator
                && target.ip() == hard_ip
                && ports.contains(&target.port())
                && birthday.is_some_and(|(at, by_i, _)| by_i != easy_is_initiator && at <= now)
        });
        let (ri, rr) = (run.i.poll_report().unwrap(), run.r.poll_report().unwrap());
        let easy_sent = if easy_is_initiator { run.challenges.0 } else { run.challenges.1 };
        if easy_is_initiator { (ri, rr, easy_sent) } else { (rr, ri, easy_sent) }
    }

    #[test]
    fn birthday_probing_finds_a_random_port_nat_from_an_easy_one_within_its_bound() {
        let one_way = Duration::from_millis(50);
        let runs = 200;
        let mut found = 0;
        let mut worst = Duration::ZERO;
        for seed in 0..runs {
            let (easy, hard, sent) = birthday_run(seed, seed % 2 == 0, one_way);
            assert_eq!(easy.plan, Plan::Birthday { opener: false });
            assert_eq!(hard.plan, Plan::Birthday { opener: true });
            assert!(sent <= BIRTHDAY_AFTER_ROUNDS * MAX_CANDIDATES + SPRAY_BURST * SPRAY_BURSTS, "{sent} challenges");
            assert!(easy.packets as usize <= 2 * MAX_CANDIDATES * BIRTHDAY_AFTER_ROUNDS + SPRAY_BURST * SPRAY_BURSTS);
            // Two targets (the easy side's local and reflexive addresses): two opens, three
            // rounds of two, the predicted ports in the third, the extra sockets' opens.
            let expected = 2 + 2 * BIRTHDAY_AFTER_ROUNDS + usize::from(PREDICTED_PORTS) + BIRTHDAY_SOCKETS;
            assert_eq!(hard.packets as usize, expected);
            if let Some(direct) = easy.direct {
                found += 1;
                assert_eq!(easy.method, Some(Method::Birthday), "{direct}");
                worst = worst.max(easy.elapsed);
            }
        }
        // 256 sockets and 2,048 probes: 99.97 % in theory.
        println!("birthday probing found the path in {found} of {runs} runs, the slowest after {worst:?}");
        assert!(found * 100 >= runs * 99, "found in {found} of {runs}");
        assert!(worst <= Duration::from_secs(3), "{worst:?}");
    }

    #[test]
    fn two_hard_sides_send_no_rounds_at_all() {
        let start = Instant::now();
        let hard = |local: &str, public: &str| Candidates {
            local: vec![addr(local)],
            reflexive: Some(addr(public)),
            nat: info(NatType::HardRandom),
        };
        let mut run = Run::new(start);
        run.i = PunchSession::initiator(start, hard("10.0.1.2:4000", "198.51.100.1:4000"), false, [1; 32]);
        run.r = PunchSession::responder(start, hard("10.0.2.2:5000", "198.51.100.2:5000"), false, [2; 32]);
        run.run(Duration::from_millis(50), |_, _, _| panic!("nothing is challenged"));
        let (ri, rr) = (run.i.poll_report().unwrap(), run.r.poll_report().unwrap());
        assert_eq!((ri.plan, ri.rounds, ri.packets, rr.rounds), (Plan::Skip, 0, 0, 0));
        assert_eq!(run.i.outcome(), Some(Ok(false)));
        assert!(ri.elapsed < Duration::from_millis(300), "{:?}", ri.elapsed);
    }
}
