//! Hole punching between two peers connected through a relay.
//!
//! The dialler of a relayed connection opens a [`PROTOCOL`] stream on it (so the signalling is
//! end-to-end encrypted; the relay carries it without reading it) and the two sides swap
//! candidates, DCUtR-style:
//!
//! 1. dialler → `Offer { nonce, candidates, reflexive }`, and it starts accepting punches;
//! 2. acceptor → `Answer { candidates, reflexive }`, and it starts accepting punches; the
//!    dialler takes the time this took as the round trip;
//! 3. dialler → `Sync`, waits half that round trip, and both start punching at about the same
//!    moment, from the one UDP socket, on [`SCHEDULE`];
//! 4. a punch that arrives is answered with an acknowledgement (and a punch of our own); the
//!    first acknowledgement makes that address the peer's direct path (see
//!    [`crate::transport::paths`]): the connection moves off the relay without quinn noticing.
//! 5. each side says `Finished` when its schedule is over and keeps answering until the other
//!    has said it too.
//!
//! Port prediction: from the third round on, punches also go to the [`PREDICTED_PORTS`] ports
//! above the peer's reflexive port, which is where a NAT that allocates ports sequentially puts
//! the peer's next mapping (Crust's delta prediction, with a delta of one). Bounded: at most
//! `(candidates + PREDICTED_PORTS) x rounds` packets per attempt.
//!
//! A failed attempt is retried after [`RETRY_AFTER`] (30 s, 2 min, 8 min), then no more: no
//! endless punching every few seconds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::event::Event;
use crate::connection::{Connection, Stream};
use crate::transport::paths::Paths;
use crate::wire::control;
use crate::wire::punch::Message;

/// The protocol of the signalling stream.
pub const PROTOCOL: &str = "warren/punch/1";

/// When each round of punches goes out, from the start of punching. Stops at the first
/// acknowledgement.
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

/// How long after the last round an acknowledgement may still arrive.
pub const LAST_ROUND_GRACE: Duration = Duration::from_millis(750);

/// Ports above the peer's reflexive port also punched (from the third round on).
pub const PREDICTED_PORTS: u16 = 16;

/// Candidates taken from each side at most.
pub const MAX_CANDIDATES: usize = 16;

/// Waits before each retry of a failed attempt.
pub const RETRY_AFTER: [Duration; 3] = [Duration::from_secs(30), Duration::from_secs(120), Duration::from_secs(480)];

/// How long a side waits for the other's `Finished`.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// This node's candidate addresses: the socket's addresses on each interface, and the
/// reflexive address the relay reported.
fn candidates(paths: &Paths) -> (Vec<SocketAddr>, Option<SocketAddr>) {
    // Over TCP the relay sees a TCP mapping, which says nothing about the UDP one.
    let reflexive = paths.relay().filter(|r| !r.is_tcp()).map(|r| r.observed);
    let Ok(local) = paths.local_addr() else { return (Vec::new(), reflexive) };
    let mut out = Vec::new();
    if local.ip().is_unspecified() {
        let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
        let ips = interfaces.iter().map(|i| i.ip()).filter(|ip| !ip.is_loopback() && (ip.is_ipv4() || local.is_ipv6()));
        out.extend(ips.map(|ip| SocketAddr::new(ip, local.port())));
    } else {
        out.push(local);
    }
    out.truncate(MAX_CANDIDATES - 1);
    (out, reflexive)
}

/// How one attempt went, as this side saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    direct: Option<SocketAddr>,
    rounds: u32,
    elapsed: Duration,
}

/// The node's event for an attempt on `conn`.
pub(crate) fn event(conn: &Connection, attempt: Attempt) -> Event {
    let elapsed_ms = attempt.elapsed.as_millis() as u64;
    Event::HolePunch { remote: conn.remote, direct: attempt.direct, rounds: attempt.rounds, elapsed_ms }
}

/// One attempt from the dialler's side. Ok(true) if the path is now direct. `report` hears of
/// the attempt as soon as this side's schedule is over.
pub(crate) async fn initiate(paths: &Paths, conn: &Connection, report: &(dyn Fn(Attempt) + Sync)) -> Result<bool, String> {
    let started = Instant::now();
    let mut stream = conn.open_stream(PROTOCOL).await.map_err(|e| e.to_string())?;
    let nonce = u64::from_le_bytes(random_bytes());
    let acks = (u64::from_le_bytes(random_bytes()), u64::from_le_bytes(random_bytes()));
    let (candidates, reflexive) = candidates(paths);
    let done = paths.begin_punch(conn.remote, nonce, acks, true).ok_or("a punch with this peer is under way")?;
    let _end = EndPunch(paths, conn.remote, nonce);
    write(&mut stream, &Message::Offer { nonce, acks, candidates, reflexive }).await?;
    let Message::Answer { candidates, reflexive } = read(&mut stream).await? else {
        return Err("expected an answer".into());
    };
    let rtt = started.elapsed();
    write(&mut stream, &Message::Sync).await?;
    tokio::time::sleep(rtt / 2).await;
    let outcome = punch(paths, conn, &done, nonce, &candidates, reflexive).await;
    finish(report, &mut stream, outcome, started).await
}

/// The acceptor's side of one attempt, on the signalling `stream` of `conn`.
pub(crate) async fn respond(
    paths: &Paths,
    conn: &Connection,
    mut stream: Stream,
    report: &(dyn Fn(Attempt) + Sync),
) -> Result<bool, String> {
    if !paths.hole_punching() {
        return Err("hole punching is off on this node".to_owned());
    }
    let started = Instant::now();
    let Message::Offer { nonce, acks: (theirs_ack, ours_ack), candidates: theirs, reflexive: their_reflexive } =
        read(&mut stream).await?
    else {
        return Err("expected an offer".to_owned());
    };
    // Punching is for connections through a relay, once per offer interval: a peer cannot
    // use this node to send datagrams at will.
    if !matches!(conn.path(), crate::transport::paths::Path::Relayed { .. }) {
        return Err("the connection is not relayed".to_owned());
    }
    if !paths.may_answer_offer(&conn.remote) {
        return Err("offers come too often".to_owned());
    }
    let Some(done) = paths.begin_punch(conn.remote, nonce, (ours_ack, theirs_ack), false) else {
        return Err("our own offer to this peer goes first".to_owned());
    };
    let _end = EndPunch(paths, conn.remote, nonce);
    let (candidates, reflexive) = candidates(paths);
    write(&mut stream, &Message::Answer { candidates, reflexive }).await?;
    let Message::Sync = read(&mut stream).await? else { return Err("expected sync".to_owned()) };
    let outcome = punch(paths, conn, &done, nonce, &theirs, their_reflexive).await;
    finish(report, &mut stream, outcome, started).await
}

/// Forgets the punch session when the attempt ends, however it ends.
struct EndPunch<'a>(&'a Paths, crate::RemoteIdentity, u64);

impl Drop for EndPunch<'_> {
    fn drop(&mut self) {
        self.0.end_punch(&self.1, self.2);
    }
}

/// Tells the peer we are done, waits until it is too (answering its punches meanwhile), and
/// reports the attempt.
async fn finish(
    report: &(dyn Fn(Attempt) + Sync),
    stream: &mut Stream,
    outcome: (Option<SocketAddr>, u32),
    started: Instant,
) -> Result<bool, String> {
    let (direct, rounds) = outcome;
    report(Attempt { direct, rounds, elapsed: started.elapsed() });
    write(stream, &Message::Finished { ok: direct.is_some() }).await?;
    let theirs = tokio::time::timeout(FINISH_TIMEOUT, read(stream)).await;
    let _ = stream.finish();
    let their_ok = matches!(theirs, Ok(Ok(Message::Finished { ok: true })));
    Ok(direct.is_some() || their_ok)
}

/// Sends rounds of punches until one is acknowledged or the schedule ends. Returns the address
/// that answered and the rounds sent.
async fn punch(
    paths: &Paths,
    conn: &Connection,
    done: &tokio::sync::Notify,
    nonce: u64,
    candidates: &[SocketAddr],
    reflexive: Option<SocketAddr>,
) -> (Option<SocketAddr>, u32) {
    let start = tokio::time::Instant::now();
    // A node bound to loopback can only reach loopback anyway (tests, one-machine setups).
    let on_loopback = paths.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let target_ok = |a: &SocketAddr| usable(*a) || (on_loopback && a.ip().is_loopback() && a.port() != 0);
    let mut targets: Vec<SocketAddr> = candidates.iter().copied().filter(target_ok).take(MAX_CANDIDATES).collect();
    let reflexive = reflexive.filter(target_ok);
    if let Some(reflexive) = reflexive.filter(|r| !targets.contains(r)) {
        // The reflexive address first: it is the one most likely to work across NATs.
        targets.insert(0, reflexive);
    }
    let predicted: Vec<SocketAddr> = reflexive
        .map(|r| {
            (1..=PREDICTED_PORTS).filter_map(|d| r.port().checked_add(d).map(|p| SocketAddr::new(r.ip(), p))).collect()
        })
        .unwrap_or_default();
    let mut rounds = 0;
    for (round, at) in SCHEDULE.iter().enumerate() {
        if paths.punched(&conn.remote).is_some() {
            break;
        }
        tokio::select! {
            _ = done.notified() => break,
            _ = tokio::time::sleep_until(start + *at) => {}
        }
        rounds += 1;
        for target in &targets {
            paths.send_punch(nonce, *target);
        }
        if round >= 2 {
            for target in &predicted {
                paths.send_punch(nonce, *target);
            }
        }
    }
    if paths.punched(&conn.remote).is_none() {
        let deadline = start + *SCHEDULE.last().expect("a schedule") + LAST_ROUND_GRACE;
        let _ = tokio::time::timeout_at(deadline, done.notified()).await;
    }
    (paths.punched(&conn.remote), rounds)
}

/// Whether a candidate may be punched: never loopback (unless this node itself is bound to
/// loopback), unspecified, multicast, broadcast, a relay placeholder or port 0 (the peer
/// chooses the candidates; this node sends to them).
fn usable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0
        && !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !broadcast
        && !crate::transport::paths::is_placeholder(addr)
}

async fn write(stream: &mut Stream, message: &Message) -> Result<(), String> {
    control::write(stream, message).await.map_err(|e| e.to_string())
}

async fn read(stream: &mut Stream) -> Result<Message, String> {
    control::read(stream).await.map_err(|e| e.to_string())
}

fn random_bytes() -> [u8; 8] {
    let mut bytes = [0; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_candidates_are_not_punched() {
        for bad in [
            "127.0.0.1:5",
            "0.0.0.0:5",
            "224.0.0.251:5353",
            "255.255.255.255:9",
            "240.0.0.1:9",
            "192.0.2.1:0",
            "[::1]:5",
        ] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
        for good in ["192.168.1.2:4000", "203.0.113.9:51000", "[2001:db8::1]:9"] {
            assert!(usable(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn schedule_backs_off_and_is_bounded() {
        assert!(SCHEDULE.windows(2).all(|w| w[1] > w[0]));
        let gaps: Vec<_> = SCHEDULE.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "gaps grow: {gaps:?}");
        assert!(RETRY_AFTER.windows(2).all(|w| w[1] > w[0]));
        // Packets per attempt, at most.
        let per_attempt = (MAX_CANDIDATES + usize::from(PREDICTED_PORTS)) * SCHEDULE.len();
        assert!(per_attempt <= 256, "{per_attempt}");
    }
}
