//! The demo's library chapter, on a simulated LAN (one switch, mDNS): the desk creates a
//! library and opens an invite; eve, a LAN neighbour who saw the code's number announced,
//! answers for it too and is tried first; the laptop joins by the code (eve's attempt fails, the
//! desk's succeeds), opens a tunnel to the desk, is revoked, and is refused before any byte.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use warren::{Identity, P2P, RemoteIdentity};
use warren_tunnel::pair::{self, Issue};
use warren_tunnel::store::Store;
use warren_tunnel::{Code, Tunnel, unix_now};

/// What the library chapter saw.
pub struct LibraryStory {
    /// How long the laptop took from the code to its membership (mDNS included).
    pub joined_in: Duration,
    /// What eve's invite saw of the laptop's attempt.
    pub eve_saw: String,
    /// The bytes the desk's tunnel handler was handed while the laptop was a member (echoed).
    pub member_bytes: usize,
    /// The laptop's error once revoked.
    pub refused: String,
    /// The bytes the handler was handed in all: no more than `member_bytes`.
    pub handler_bytes: usize,
    /// The laptop's view of the desk after the tunnel: "proved".
    pub desk_source: String,
}

impl LibraryStory {
    /// What the chapter promises: eve's attempt failed, and the handler was handed the
    /// member's bytes and nothing after the revocation.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.eve_saw.contains("did not match") || self.eve_saw.contains("refused"),
            "eve's invite saw: {}",
            self.eve_saw
        );
        anyhow::ensure!(self.handler_bytes == self.member_bytes, "the handler saw bytes after the revocation");
        Ok(())
    }
}

const HELLO: &[u8] = b"hello desk, it is the laptop";

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("warren-demo-library-{name}-{}", std::process::id()))
}

async fn node(name: &str, ip: Ipv4Addr, me: Identity) -> anyhow::Result<(P2P, MdnsDiscovery)> {
    let p2p = P2P::new("warren-demo", me);
    p2p.metadata_mut().insert(warren::node::NAME, name)?;
    let quic = p2p.listen_quic(SocketAddr::from((ip, 0))).await?;
    let mdns = MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
    Ok((p2p, mdns))
}

/// Runs the chapter; `say` prints a line of the story.
pub fn run(say: &dyn Fn(String)) -> anyhow::Result<LibraryStory> {
    let (desk_dir, laptop_dir) = (scratch("desk"), scratch("laptop"));
    for dir in [&desk_dir, &laptop_dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let story = chapter(say, &desk_dir, &laptop_dir);
    for dir in [&desk_dir, &laptop_dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
    story
}

fn chapter(say: &dyn Fn(String), desk_dir: &Path, laptop_dir: &Path) -> anyhow::Result<LibraryStory> {
    let mut sim = warren_netsim::Simulation::new(17);
    let switch = sim.add_switch("lan", None)?;
    let ips = [Ipv4Addr::new(192, 168, 1, 10), Ipv4Addr::new(192, 168, 1, 11), Ipv4Addr::new(192, 168, 1, 66)];
    let [desk_ip, laptop_ip, eve_ip] = ips;
    let desk = sim.add_host_behind("desk", desk_ip, 24, &switch)?;
    let laptop = sim.add_host_behind("laptop", laptop_ip, 24, &switch)?;
    let eve = sim.add_host_behind("eve", eve_ip, 24, &switch)?;
    for host in [&desk, &laptop, &eve] {
        let link = warren_netsim::link::LinkConfig { latency: Duration::from_millis(1), ..Default::default() };
        sim.link(host, &switch, link);
    }
    sim.start()?;

    let desk_key = Identity::generate();
    let desk_id = desk_key.to_remote_identity();
    let desk_store = Store::open(desk_dir)?;
    let record = desk_store.create("family photos", &desk_key)?;
    say(format!("   desk created library {:?} ({}); it holds the library key", record.name, record.id));
    let code = Code::generate();

    // The desk: serves tunnels from its store (so a revocation made in the store applies at
    // once), counts the application bytes its handler is handed, and opens the invite.
    let handler_bytes = Arc::new(AtomicUsize::new(0));
    let (desk_ready_tx, desk_ready) = std::sync::mpsc::channel();
    let (desk_stop_tx, desk_stop) = oneshot::channel::<()>();
    let desk_task = {
        let (dir, seen, record) = (desk_dir.to_path_buf(), handler_bytes.clone(), record.clone());
        let me = Identity::from_secret_bytes(&desk_key.to_secret_bytes());
        desk.spawn(move || async move {
            let store = Arc::new(Store::open(&dir)?);
            let signer = Identity::from_secret_bytes(&me.to_secret_bytes());
            let (p2p, _mdns) = node("desk", desk_ip, me).await?;
            warren_tunnel::tunnel::serve(&p2p, store.clone(), move |mut tunnel: Tunnel| {
                let seen = seen.clone();
                async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = tunnel.stream.read(&mut buf).await {
                        seen.fetch_add(n, Ordering::SeqCst);
                        if tunnel.stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = tunnel.stream.finish();
                }
            })?;
            let issue: Arc<Issue> = {
                let store = store.clone();
                Arc::new(move |joiner| store.grant(&record, &signer, joiner).map_err(|e| e.to_string()))
            };
            let mut invite = pair::invite(&p2p, code, unix_now() + 600, issue)?;
            let _ = desk_ready_tx.send(());
            let joined = tokio::time::timeout(Duration::from_secs(60), invite.next()).await;
            drop(invite);
            let _ = desk_stop.await;
            p2p.shutdown().await;
            anyhow::Ok(joined.map_err(|_| anyhow!("nobody joined"))??)
        })
    };
    desk_ready.recv().map_err(|_| anyhow!("the desk did not start"))?;
    say(format!("   desk: warren library invite -> code {code} (announced on mDNS as nameplate {})", code.nameplate()));

    // Eve saw the nameplate announced and answers for it with a code she made up.
    let (eve_ready_tx, eve_ready) = std::sync::mpsc::channel();
    let eve_task = eve.spawn(move || async move {
        let (p2p, _mdns) = node("eve", eve_ip, Identity::generate()).await?;
        let fake = other_code(code)?;
        let nothing: Arc<Issue> = Arc::new(|_| Err("eve has no library to grant".into()));
        let mut invite = pair::invite(&p2p, fake, unix_now() + 600, nothing)?;
        let _ = eve_ready_tx.send(p2p.id());
        let saw = tokio::time::timeout(Duration::from_secs(60), invite.next()).await;
        drop(invite);
        p2p.shutdown().await;
        anyhow::Ok(match saw {
            Err(_) => "nobody tried eve".to_string(),
            Ok(Ok(who)) => format!("eve paired with {who}"),
            Ok(Err(e)) => e.to_string(),
        })
    });
    let eve_id = eve_ready.recv().map_err(|_| anyhow!("eve did not start"))?;

    // The laptop: joins by the code, trying eve first, opens a tunnel, and again once revoked.
    let (revoked_tx, mut revoked) = mpsc::channel::<()>(1);
    let (member_tx, member) = std::sync::mpsc::channel::<(RemoteIdentity, usize)>();
    let laptop_task = {
        let dir = laptop_dir.to_path_buf();
        laptop.spawn(move || async move {
            let store = Store::open(&dir)?;
            let started = Instant::now();
            let (p2p, mdns) = node("laptop", laptop_ip, Identity::generate()).await?;
            let rendezvous = Code::rendezvous(code.nameplate());
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    let found = mdns.peers_in_library(&rendezvous);
                    if found.contains(&desk_id) && found.contains(&eve_id) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .context("the desk and eve did not both answer for the nameplate on mDNS")?;
            // Eve answered first: the laptop tries her first.
            let joined = pair::join(&p2p, code, &[eve_id, desk_id]).await?;
            let joined_in = started.elapsed();
            anyhow::ensure!(joined.inviter == desk_id, "joined through {}, not the desk", joined.inviter);
            let record = store.join(&joined)?;
            let library = *record.id.as_bytes();

            let mut tunnel = Tunnel::open(&p2p, &store, library, desk_id).await?;
            tunnel.stream.write_all(HELLO).await?;
            let mut echo = vec![0u8; HELLO.len()];
            tunnel.stream.read_exact(&mut echo).await?;
            anyhow::ensure!(echo == HELLO, "the desk echoed something else");
            let role = tunnel.role();
            drop(tunnel);
            let desk_source = store
                .members(&record)?
                .into_iter()
                .find(|m| m.node == desk_id)
                .map(|m| format!("{} ({})", m.source, m.role))
                .unwrap_or_else(|| "unknown".into());
            anyhow::ensure!(role.to_string() == "admin", "the desk proved the role {role}");
            let _ = member_tx.send((p2p.id(), HELLO.len()));

            revoked.recv().await.ok_or_else(|| anyhow!("the demo stopped"))?;
            let refused = match Tunnel::open(&p2p, &store, library, desk_id).await {
                Ok(mut tunnel) => {
                    let _ = tunnel.stream.write_all(b"am I still in?").await;
                    anyhow::bail!("the revoked laptop's tunnel was accepted")
                }
                Err(e) => e.to_string(),
            };
            p2p.shutdown().await;
            anyhow::Ok((joined_in, refused, desk_source))
        })
    };
    let outcome = (|| {
        let (laptop_id, member_bytes) = member.recv().map_err(|_| anyhow!("the laptop stopped before its tunnel"))?;
        say(format!("   laptop joined as {}…; its tunnel to the desk echoed {member_bytes} bytes", short(&laptop_id)));
        let version = desk_store.revoke(&record, &desk_key, laptop_id)?;
        say(format!("   desk: warren library revoke -> revocation list version {version}"));
        anyhow::Ok((laptop_id, member_bytes))
    })();
    let _ = revoked_tx.try_send(());
    let laptop_result = laptop_task.join().map_err(|_| anyhow!("the laptop panicked"))?;
    let _ = desk_stop_tx.send(());
    let desk_result = desk_task.join().map_err(|_| anyhow!("the desk panicked"))?;
    let eve_saw = eve_task.join().map_err(|_| anyhow!("eve panicked"))??;
    let (joined_in, refused, desk_source) = laptop_result?;
    let (laptop_id, member_bytes) = outcome?;
    let joiner = desk_result?;
    anyhow::ensure!(joiner == laptop_id, "the desk paired with {joiner}, not the laptop");
    Ok(LibraryStory {
        joined_in,
        eve_saw,
        member_bytes,
        refused,
        handler_bytes: handler_bytes.load(Ordering::SeqCst),
        desk_source,
    })
}

/// A code with `code`'s nameplate and other words: what an attacker who saw the nameplate
/// announced, but not the words, answers with.
pub(crate) fn other_code(code: Code) -> anyhow::Result<Code> {
    let fake: Code = format!("{}-acid-acid-acid", code.nameplate()).parse().map_err(|e| anyhow!("{e}"))?;
    if fake != code {
        return Ok(fake);
    }
    format!("{}-acorn-acorn-acorn", code.nameplate()).parse().map_err(|e| anyhow!("{e}"))
}

/// An identity's first characters, for the story's lines.
pub(crate) fn short(id: &RemoteIdentity) -> String {
    id.to_string().chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    /// The chapter is the netsim test of pairing on a LAN with an attacker answering first:
    /// eve's attempt fails, the laptop pairs with the desk, and once revoked is refused with
    /// the desk's handler handed nothing more.
    #[test]
    fn eve_answering_first_fails_and_a_revoked_member_is_refused_before_any_byte() {
        let story = super::run(&|line| println!("{line}")).unwrap();
        story.check().unwrap();
        assert_eq!(story.member_bytes, super::HELLO.len());
        assert!(story.refused.contains("revoked"), "{}", story.refused);
        assert!(story.desk_source.starts_with("proved"), "{}", story.desk_source);
    }
}
