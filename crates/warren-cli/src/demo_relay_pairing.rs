//! The demo's second library chapter: pairing through the relay, across two simulated NATs
//! (no shared LAN, so no mDNS). The relay's operator is hostile: it runs a node of its own
//! that answers for the code's nameplate first, and for a while it flips a bit in every frame
//! it forwards. The desk announces its invite at the relay; the laptop asks the relay who
//! answers for the nameplate, is refused a pairing while the relay tampers (a clear error, the
//! invite untouched), fails again when only the operator's node is tried (what a relay hiding
//! the desk would give: "the code did not match"), then tries the operator's node and the desk
//! in the relay's order: the desk grants the membership. The relay's operator listing its node
//! first is, to the laptop, the same as a relay answering `Find` with whatever it likes.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::sync::mpsc;
use warren::relay::client::RelayConfig;
use warren::{Identity, P2P, RemoteIdentity};
use warren_netsim::pair::{self, NatKind, Pair, PairLinks, RELAY_IP};
use warren_tunnel::pair::{self as pairing, Issue};
use warren_tunnel::store::Store;
use warren_tunnel::{Code, unix_now};

use crate::demo_library::{other_code, short};

const RELAY_PORT: u16 = 3478;
const WAIT: Duration = Duration::from_secs(30);

/// What the relay chapter saw.
pub struct RelayPairingStory {
    /// Who the relay listed for the nameplate, in its order: the operator's node first.
    pub listed: Vec<RemoteIdentity>,
    /// The operator's node.
    pub mallory: RemoteIdentity,
    /// The desk.
    pub desk: RemoteIdentity,
    /// The laptop's error while the relay flipped bits.
    pub tampered: String,
    /// The laptop's error when the relay listed only its operator's node.
    pub hidden: String,
    /// Failed attempts the desk's invite saw (none: tampering never reached it).
    pub desk_saw_failures: Vec<String>,
    /// What the operator's invite saw of the laptop's attempt.
    pub mallory_saw: String,
    /// Who granted the laptop its membership, and the role it got.
    pub inviter: RemoteIdentity,
    /// The laptop's role.
    pub role: String,
    /// From the code to the membership, once the relay stopped tampering.
    pub joined_in: Duration,
    /// Who the relay listed for the nameplate once the desk's invite closed.
    pub listed_after: Vec<RemoteIdentity>,
}

impl RelayPairingStory {
    /// What the chapter promises: the relay listed both; tampering gave a clear error; the
    /// operator's node failed; the desk granted; the closed invite was withdrawn.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.listed == vec![self.mallory, self.desk], "the relay listed {:?}", self.listed);
        anyhow::ensure!(
            self.tampered.contains("through the relay"),
            "pairing through a tampering relay: {:?}",
            self.tampered
        );
        anyhow::ensure!(self.hidden.contains("did not match"), "with the desk hidden: {}", self.hidden);
        anyhow::ensure!(self.desk_saw_failures.is_empty(), "the desk's invite saw {:?}", self.desk_saw_failures);
        anyhow::ensure!(
            self.mallory_saw.contains("did not match") || self.mallory_saw.contains("gave up"),
            "the operator's invite saw: {}",
            self.mallory_saw
        );
        anyhow::ensure!(self.inviter == self.desk, "the membership came from {}", self.inviter);
        anyhow::ensure!(self.listed_after == vec![self.mallory], "after the invite closed: {:?}", self.listed_after);
        Ok(())
    }
}

/// What the relay's host is told to do.
enum Operator {
    /// Flip a bit in every forwarded frame (or stop); answered once it applies.
    Tamper(bool, tokio::sync::oneshot::Sender<()>),
    Stop,
}

/// Has the relay tamper (or stop), once it does.
async fn tamper(operator: &mpsc::UnboundedSender<Operator>, on: bool) -> anyhow::Result<()> {
    let (done, applied) = tokio::sync::oneshot::channel();
    operator.send(Operator::Tamper(on, done)).map_err(|_| anyhow!("the relay stopped"))?;
    applied.await.map_err(|_| anyhow!("the relay stopped"))
}

async fn node(relay: RelayConfig, name: &str, me: Identity) -> anyhow::Result<P2P> {
    let p2p = P2P::new("warren-demo", me);
    p2p.metadata_mut().insert(warren::node::NAME, name)?;
    let quic = p2p.listen_quic(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    p2p.add_relay(&quic, relay).wait_registered(WAIT).await.with_context(|| format!("{name}: the relay"))?;
    Ok(p2p)
}

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("warren-demo-relay-pairing-{}", std::process::id()))
}

/// Runs the chapter; `say` prints a line of the story.
pub fn run(say: &dyn Fn(String)) -> anyhow::Result<RelayPairingStory> {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(&dir);
    let story = chapter(say, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    story
}

fn chapter(say: &dyn Fn(String), dir: &std::path::Path) -> anyhow::Result<RelayPairingStory> {
    let Pair { mut sim, relay: relay_host, a: desk_host, b: laptop_host } =
        pair::build(NatKind::PortRestricted, NatKind::Symmetric, PairLinks::default(), 23)?;
    sim.start()?;
    let code = Code::generate();
    let relay_key = Identity::generate();
    let config = RelayConfig::new(relay_key.to_remote_identity(), SocketAddr::from((RELAY_IP, RELAY_PORT)));

    // The relay, and its operator's own node answering for the nameplate with a made-up code.
    let (operator_tx, mut operator) = mpsc::unbounded_channel::<Operator>();
    let (mallory_tx, mallory_ready) = std::sync::mpsc::channel();
    let relay_task = {
        let config = config.clone();
        relay_host.spawn(move || async move {
            let relay =
                warren_relay::Relay::spawn(relay_key, SocketAddr::from((RELAY_IP, RELAY_PORT)), Default::default())
                    .await?;
            let p2p = node(config, "mallory", Identity::generate()).await?;
            let fake = other_code(code)?;
            let nothing: Arc<Issue> = Arc::new(|_| Err("the operator has no library to grant".into()));
            let mut invite = pairing::invite(&p2p, fake, unix_now() + 600, nothing)?;
            invite.announce_at_relay(WAIT).await?;
            let _ = mallory_tx.send(p2p.id());
            let mut saw = None;
            loop {
                tokio::select! {
                    attempt = invite.next(), if saw.is_none() => saw = Some(match attempt {
                        Ok(who) => format!("paired with {who}"),
                        Err(e) => e.to_string(),
                    }),
                    command = operator.recv() => match command {
                        Some(Operator::Tamper(on, done)) => {
                            relay.tamper_with_frames(on);
                            let _ = done.send(());
                        }
                        Some(Operator::Stop) | None => break,
                    },
                }
            }
            drop(invite);
            p2p.shutdown().await;
            relay.shutdown().await;
            anyhow::Ok(saw.unwrap_or_else(|| "nobody tried the operator's node".into()))
        })
    };
    let outcome = (|| {
        let mallory = mallory_ready.recv().map_err(|_| anyhow!("the relay or its operator's node did not start"))?;
        say(format!(
            "   relay up; its operator's node {} answers for nameplate {} first",
            short(&mallory),
            code.nameplate()
        ));
        let story = desk_and_laptop(say, dir, code, config, mallory, &operator_tx, desk_host, laptop_host);
        anyhow::Ok(story)
    })();
    let _ = operator_tx.send(Operator::Stop);
    let mallory_saw = relay_task.join().map_err(|_| anyhow!("the relay panicked"))??;
    let mut story = outcome??;
    story.mallory_saw = mallory_saw;
    Ok(story)
}

/// The desk (behind one NAT) invites and announces at the relay; the laptop (behind another)
/// finds it there and joins, first through the tampering relay, then past the operator's node.
#[allow(clippy::too_many_arguments)]
fn desk_and_laptop(
    say: &dyn Fn(String),
    dir: &std::path::Path,
    code: Code,
    config: RelayConfig,
    mallory: RemoteIdentity,
    operator: &mpsc::UnboundedSender<Operator>,
    desk_host: warren_netsim::Host,
    laptop_host: warren_netsim::Host,
) -> anyhow::Result<RelayPairingStory> {
    let desk_key = Identity::generate();
    let desk = desk_key.to_remote_identity();
    let store = Arc::new(Store::open(dir)?);
    let record = store.create("family photos", &desk_key)?;
    let (desk_ready_tx, desk_ready) = std::sync::mpsc::channel();
    let (close_tx, close) = tokio::sync::oneshot::channel::<()>();
    let (closed_tx, closed) = std::sync::mpsc::channel();
    let (finish_tx, finish) = tokio::sync::oneshot::channel::<()>();
    let desk_task = {
        let config = config.clone();
        desk_host.spawn(move || async move {
            let signer = Identity::from_secret_bytes(&desk_key.to_secret_bytes());
            let p2p = node(config, "desk", desk_key).await?;
            let issue: Arc<Issue> =
                Arc::new(move |joiner| store.grant(&record, &signer, joiner).map_err(|e| e.to_string()));
            let mut invite = pairing::invite(&p2p, code, unix_now() + 600, issue)?;
            invite.announce_at_relay(WAIT).await?;
            let _ = desk_ready_tx.send(());
            // Every attempt the invite saw before the laptop joined (none: the tampered one never
            // reached it).
            let mut failed = Vec::new();
            let joined = loop {
                match tokio::time::timeout(Duration::from_secs(90), invite.next()).await {
                    Err(_) => break Err(anyhow!("nobody joined the desk")),
                    Ok(Ok(joiner)) => break Ok(joiner),
                    Ok(Err(e)) => failed.push(e.to_string()),
                }
            };
            let _ = close.await;
            drop(invite);
            let _ = closed_tx.send(());
            // Still registered while the laptop asks the relay again: what it sees then is the
            // withdrawal, not the relay forgetting a node that left.
            let _ = finish.await;
            p2p.shutdown().await;
            anyhow::Ok((joined?, failed))
        })
    };
    desk_ready.recv().map_err(|_| anyhow!("the desk did not start"))?;
    say(format!("   desk (behind a home NAT): warren library invite --relay … -> code {code}, announced at the relay"));

    let (joined_tx, joined_rx) = std::sync::mpsc::channel::<()>();
    let (after_tx, after) = tokio::sync::oneshot::channel::<()>();
    let operator = operator.clone();
    let laptop_task = laptop_host.spawn(move || async move {
        let p2p = node(config, "laptop", Identity::generate()).await?;
        let listed = pairing::find_at_relay(&p2p, code.nameplate(), WAIT).await?;
        // The operator flips bits in every frame: the pairing cannot even start.
        tamper(&operator, true).await?;
        let tampered = match pairing::join(&p2p, code, &[desk]).await {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        tamper(&operator, false).await?;
        // A relay that hid the desk and listed only its operator's node: the code does not match.
        let hidden = match pairing::join(&p2p, code, &[mallory]).await {
            Ok(joined) => format!("joined through {}", joined.inviter),
            Err(e) => e.to_string(),
        };
        let started = Instant::now();
        let joined = pairing::join(&p2p, code, &listed).await;
        let joined_in = started.elapsed();
        let _ = joined_tx.send(());
        let _ = after.await;
        // The withdrawal is sent in the background: ask until the desk is gone (bounded).
        let asked = Instant::now();
        let listed_after = loop {
            let found = pairing::find_at_relay(&p2p, code.nameplate(), WAIT).await?;
            if !found.contains(&desk) || asked.elapsed() > Duration::from_secs(5) {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        p2p.shutdown().await;
        anyhow::Ok((listed, tampered, hidden, joined?, joined_in, listed_after))
    });
    // Once the laptop is done with the desk, the desk closes its invite, then the laptop asks
    // the relay again.
    let _ = joined_rx.recv();
    let _ = close_tx.send(());
    let _ = closed.recv_timeout(Duration::from_secs(5));
    let _ = after_tx.send(());
    let laptop = laptop_task.join().map_err(|_| anyhow!("the laptop panicked"))?;
    let _ = finish_tx.send(());
    let desk_result = desk_task.join().map_err(|_| anyhow!("the desk panicked"))?;
    let (listed, tampered, hidden, joined, joined_in, listed_after) = laptop?;
    let (_, desk_saw_failures) = desk_result?;
    let names = |ids: &[RemoteIdentity]| ids.iter().map(|id| name(id, mallory, desk)).collect::<Vec<_>>().join(", ");
    say(format!(
        "   laptop (behind another NAT) asks the relay for nameplate {}: {}",
        code.nameplate(),
        names(&listed)
    ));
    say(format!("   relay flips a bit in every frame: the laptop's pairing fails: {tampered}"));
    say(format!("   relay lists only its operator's node: the laptop's pairing fails: {hidden}"));
    say(format!(
        "   relay honest again: the operator's node is tried first and fails; the desk grants: laptop is {} ({:.0} ms)",
        joined.role,
        joined_in.as_secs_f64() * 1000.0
    ));
    say(format!("   desk's invite closed: the relay lists {}", names(&listed_after)));
    Ok(RelayPairingStory {
        listed,
        mallory,
        desk,
        tampered,
        hidden,
        desk_saw_failures,
        mallory_saw: String::new(),
        inviter: joined.inviter,
        role: joined.role.to_string(),
        joined_in,
        listed_after,
    })
}

fn name(id: &RemoteIdentity, mallory: RemoteIdentity, desk: RemoteIdentity) -> String {
    let who = if *id == mallory {
        "the operator's node"
    } else if *id == desk {
        "the desk"
    } else {
        "someone else"
    };
    format!("{who} ({})", short(id))
}

#[cfg(test)]
mod tests {
    /// Needs root (network namespaces). The relay lists its operator's node first; while it
    /// tampers the pairing fails with an error; then the operator's node fails and the desk
    /// grants; the closed invite is withdrawn.
    #[test]
    fn pairing_through_a_hostile_relay_fails_while_it_tampers_and_then_only_the_desk_can_grant() {
        let story = super::run(&|line| eprintln!("{line}")).expect("the chapter runs");
        story.check().expect("the chapter's promises hold");
    }
}
