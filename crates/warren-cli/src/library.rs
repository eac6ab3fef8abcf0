//! `warren library …`: create libraries, pair devices into them by short code, list members,
//! revoke. Kept in `libraries.sqlite` in the data directory (warren-tunnel's store).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use warren::discovery::manual::{ManualDiscovery, ManualPeer};
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use warren::{Identity, P2P, RemoteIdentity};
use warren_tunnel::pair::{self, Issue};
use warren_tunnel::pairing::{INVITE_LIFETIME, PairError};
use warren_tunnel::store::{LibraryRecord, Store};
use warren_tunnel::{Code, unix_now};

use crate::output::json_line;
use crate::relay::UseRelay;

/// How long to wait for the relay to register this device.
const RELAY_WAIT: Duration = Duration::from_secs(15);

#[derive(Subcommand)]
pub enum LibraryCommand {
    /// Create a library (a new signing key; this device its first admin).
    Create {
        /// Its name.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// The libraries this device is in.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Invite a device: prints a code (and a QR code on a terminal) for `warren library join`
    /// on the other device, and waits until it joined.
    Invite {
        /// The library (its name or id).
        library: String,
        /// Where to listen (QUIC).
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// How long the code lasts, in seconds.
        #[arg(long, default_value_t = INVITE_LIFETIME)]
        expires: u64,
        /// No mDNS (the joiner then needs --peer or --relay).
        #[arg(long)]
        no_mdns: bool,
        /// Also announce the code's number at this relay, for a joiner that is not on this LAN
        /// (`warren library join CODE --relay` with the same relay).
        #[command(flatten)]
        relay: UseRelay,
        #[command(flatten)]
        common: Common,
    },
    /// Join a library with the code another device's `warren library invite` printed.
    Join {
        /// The code, like 42-amber-castle-otter.
        code: Code,
        /// The inviting device, as ID@HOST:PORT, where mDNS cannot find it (repeatable).
        #[arg(long = "peer", value_name = "ID@ADDR")]
        peers: Vec<ManualPeer>,
        /// Where to listen (QUIC).
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// How long to look for the inviting device (on the LAN, at the relay), in seconds.
        #[arg(long, default_value_t = 15)]
        wait: u64,
        /// No mDNS: only the --peer devices (and those the relay lists).
        #[arg(long)]
        no_mdns: bool,
        /// Also ask this relay who answers for the code's number (the inviter used
        /// `--relay` with the same relay); the pairing then goes through it, across NATs.
        #[command(flatten)]
        relay: UseRelay,
        #[command(flatten)]
        common: Common,
    },
    /// The members this device certified or saw prove their membership.
    Members {
        /// The library (its name or id).
        library: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a device: a new signed revocation list, handed to every member this device or
    /// anyone holding the list opens a tunnel with.
    Revoke {
        /// The library (its name or id).
        library: String,
        /// The device's identity.
        id: RemoteIdentity,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
pub struct Common {
    /// Where the identity and the libraries are kept [default: $WARREN_DATA_DIR, else
    /// ~/.local/share/warren].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

impl Common {
    fn open(&self) -> anyhow::Result<(Identity, Arc<Store>)> {
        let dir = crate::data_dir(self.data_dir.clone())?;
        let identity = Identity::load_or_create(&dir)?;
        Ok((identity, Arc::new(Store::open(&dir)?)))
    }
}

fn describe(record: &LibraryRecord) -> serde_json::Value {
    serde_json::json!({
        "id": record.id.to_string(),
        "name": record.name,
        "key": record.membership.library.key.to_string(),
        "role": record.role().to_string(),
        "holds_key": record.holds_key,
        "expires": record.membership.credential.cert.not_after,
        "revocations_version": record.membership.revocations.version(),
        "revoked": record.membership.revocations.revoked().len(),
    })
}

pub async fn run(command: LibraryCommand) -> anyhow::Result<()> {
    match command {
        LibraryCommand::Create { name, common } => {
            let (me, store) = common.open()?;
            let record = store.create(&name, &me)?;
            if common.json {
                json_line(&describe(&record));
            } else {
                println!("created library {:?} ({}); this device is its admin", record.name, record.id);
            }
        }
        LibraryCommand::List { common } => {
            let (_, store) = common.open()?;
            let all = store.list()?;
            if common.json {
                all.iter().for_each(|r| json_line(&describe(r)));
            } else if all.is_empty() {
                println!("no libraries yet: `warren library create NAME` or `warren library join CODE`");
            }
            for r in all.iter().filter(|_| !common.json) {
                println!("{}  {:<20} {}", r.id, r.name, r.role());
            }
        }
        LibraryCommand::Members { library, common } => {
            let (_, store) = common.open()?;
            let record = store.find(&library)?;
            for m in store.members(&record)? {
                if common.json {
                    json_line(&serde_json::json!({
                        "node": m.node.to_string(), "role": m.role.to_string(), "source": m.source,
                        "revoked": m.revoked, "not_after": m.not_after, "seen": m.seen,
                    }));
                } else {
                    let state = if m.revoked { "REVOKED" } else { "" };
                    println!("{}  {:<6} {:<6} {state}", m.node, m.role, m.source);
                }
            }
        }
        LibraryCommand::Revoke { library, id, common } => {
            let (me, store) = common.open()?;
            let record = store.find(&library)?;
            let version = store.revoke(&record, &me, id)?;
            if common.json {
                json_line(
                    &serde_json::json!({ "revoked": id.to_string(), "library": record.id.to_string(), "version": version }),
                );
            } else {
                println!(
                    "revoked {id} from {:?} (revocation list version {version}); it reaches the other members as they open tunnels with this device or with any member that has it",
                    record.name
                );
            }
        }
        LibraryCommand::Invite { library, listen, expires, no_mdns, relay, common } => {
            invite(library, listen, expires, no_mdns, &relay, common).await?;
        }
        LibraryCommand::Join { code, peers, listen, wait, no_mdns, relay, common } => {
            join(code, peers, listen, wait, no_mdns, &relay, common).await?;
        }
    }
    Ok(())
}

async fn invite(
    library: String,
    listen: SocketAddr,
    expires: u64,
    no_mdns: bool,
    relay: &UseRelay,
    common: Common,
) -> anyhow::Result<()> {
    let (me, store) = common.open()?;
    let record = store.find(&library)?;
    if store.with_signer(&record, &me, |_| ()).is_err() {
        bail!("this device is a member of {:?}, not an admin: only admins invite", record.name);
    }
    let p2p = P2P::new("warren", Identity::from_secret_bytes(&me.to_secret_bytes()));
    let quic = p2p.listen_quic(listen).await?;
    if !no_mdns {
        MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
    }
    let issue: Arc<Issue> = {
        let (store, record) = (store.clone(), record.clone());
        Arc::new(move |joiner| store.grant(&record, &me, joiner).map_err(|e| e.to_string()))
    };
    let code = Code::generate();
    let mut handle = pair::invite(&p2p, code, unix_now() + expires, issue).context("open the invite")?;
    if relay.start(&p2p, &quic, || None).is_some()
        && let Err(e) = handle.announce_at_relay(RELAY_WAIT).await
    {
        drop(handle);
        p2p.shutdown().await;
        bail!("could not announce the invite at the relay: {e}");
    }
    let addr = p2p.record().addrs.first().copied();
    if common.json {
        json_line(&serde_json::json!({
            "event": "invite", "code": code.to_string(), "library": record.id.to_string(),
            "inviter": p2p.id().to_string(), "addr": addr, "expires_in": expires,
        }));
    } else {
        println!("invite to {:?}; on the other device run:\n\n  warren library join {code}\n", record.name);
        if let Some(config) = &relay.relay {
            println!("(from anywhere: warren library join {code} --relay {}@{})\n", config.identity, config.addr);
        } else if let Some(addr) = addr {
            println!("(where mDNS does not reach: warren library join {code} --peer {}@{addr})\n", p2p.id());
        }
        if std::io::stdout().is_terminal() {
            crate::transfer_ui::print_qr(&code.to_string());
        }
        println!("the code works once, for {} minutes, and three wrong codes close it", expires / 60);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(expires);
    let result = loop {
        match tokio::time::timeout_at(deadline, handle.next()).await {
            Err(_) => break Err(anyhow::anyhow!("{}", PairError::Expired)),
            Ok(Ok(joiner)) => break Ok(joiner),
            Ok(Err(e @ (PairError::TooManyAttempts | PairError::Expired | PairError::Used))) => break Err(e.into()),
            Ok(Err(e)) => {
                if common.json {
                    json_line(&serde_json::json!({ "event": "attempt_failed", "error": e.to_string() }));
                } else {
                    eprintln!("a pairing attempt failed: {e}");
                }
            }
        }
    };
    drop(handle);
    p2p.shutdown().await;
    let joiner = result?;
    if common.json {
        json_line(
            &serde_json::json!({ "event": "joined", "node": joiner.to_string(), "library": record.id.to_string() }),
        );
    } else {
        println!("{joiner} joined {:?} as a member", record.name);
    }
    Ok(())
}

async fn join(
    code: Code,
    peers: Vec<ManualPeer>,
    listen: SocketAddr,
    wait: u64,
    no_mdns: bool,
    relay: &UseRelay,
    common: Common,
) -> anyhow::Result<()> {
    let (me, store) = common.open()?;
    let p2p = P2P::new("warren", me);
    let quic = p2p.listen_quic(listen).await?;
    let mut candidates = peer_candidates(&p2p, peers)?;
    if relay.start(&p2p, &quic, || None).is_some() {
        // Whoever the relay lists is a candidate like any other: the PAKE decides. Asked again
        // (every 500 ms, up to --wait) while it lists nobody: the inviter may be announcing.
        let started = Instant::now();
        loop {
            match pair::find_at_relay(&p2p, code.nameplate(), RELAY_WAIT).await {
                Ok(found) => {
                    candidates.extend(found.into_iter().filter(|id| !candidates.contains(id)).collect::<Vec<_>>())
                }
                Err(e) => {
                    p2p.shutdown().await;
                    bail!("could not ask the relay who answers for code number {}: {e}", code.nameplate());
                }
            }
            if !candidates.is_empty() || started.elapsed() >= Duration::from_secs(wait) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if !no_mdns {
        let mdns = MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
        // Everyone answering for the nameplate (the honest inviter and anyone else).
        let rendezvous = Code::rendezvous(code.nameplate());
        let look = Duration::from_secs(wait);
        lan_candidates(&p2p, &mdns, &rendezvous, look, Some(Duration::from_secs(2)), &mut candidates).await;
    }
    if candidates.is_empty() {
        p2p.shutdown().await;
        bail!("{}", PairError::NotFound(code.nameplate()));
    }
    let joined = pair::join(&p2p, code, &candidates).await;
    p2p.shutdown().await;
    let joined = joined?;
    let record = store.join(&joined)?;
    if common.json {
        let mut line = describe(&record);
        line["event"] = "joined".into();
        line["inviter"] = joined.inviter.to_string().into();
        json_line(&line);
    } else {
        println!("joined {:?} ({}) as {}; invited by {}", record.name, record.id, record.role(), joined.inviter);
    }
    Ok(())
}

/// The `--peer` devices as candidates (each must come with its identity: who answers is checked,
/// in the PAKE or the tunnel), handed to manual discovery.
pub fn peer_candidates(p2p: &P2P, peers: Vec<ManualPeer>) -> anyhow::Result<Vec<RemoteIdentity>> {
    let candidates: Vec<RemoteIdentity> = peers.iter().filter_map(|p| p.identity).collect();
    if candidates.len() < peers.len() {
        bail!("give each --peer with its identity (ID@ADDR): who answers is checked");
    }
    ManualDiscovery::spawn(p2p, peers);
    Ok(candidates)
}

/// Adds to `candidates` the devices that announce `library` on the LAN (claims: each is checked
/// after), looking for up to `look`; with `settle`, stops once some are known and `settle` has
/// passed. mDNS reports no event per library, so its table is read every 200 ms.
pub async fn lan_candidates(
    p2p: &P2P,
    mdns: &MdnsDiscovery,
    library: &uuid::Uuid,
    look: Duration,
    settle: Option<Duration>,
    candidates: &mut Vec<RemoteIdentity>,
) {
    let started = Instant::now();
    loop {
        for found in mdns.peers_in_library(library) {
            if !candidates.contains(&found) && found != p2p.id() {
                candidates.push(found);
            }
        }
        let settled = settle.is_some_and(|settle| !candidates.is_empty() && started.elapsed() > settle);
        if settled || started.elapsed() >= look {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The data directory's library store, if it has one (a node that never used libraries gets
/// no file); a broken file is an error naming it.
pub fn existing_store(dir: &std::path::Path) -> anyhow::Result<Option<Arc<Store>>> {
    if !dir.join(warren_tunnel::store::FILE).exists() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Store::open(dir)?)))
}

/// Announces the store's libraries (as claims, like any announcement) and serves the library
/// tunnel from it, so that members can prove they are members to each other. The command-line
/// node serves the proof only: it says who proved what and closes the stream (an application
/// passes a handler of its own to `warren_tunnel::tunnel::serve`). Returns the libraries.
pub fn serve_libraries(p2p: &P2P, store: Arc<Store>, json: bool) -> anyhow::Result<Vec<LibraryRecord>> {
    let records = store.list()?;
    for record in &records {
        p2p.add_library(record.id);
    }
    warren_tunnel::tunnel::serve(p2p, store, move |mut tunnel: warren_tunnel::Tunnel| async move {
        let (peer, role) = (tunnel.peer(), tunnel.role());
        let library = uuid::Uuid::from_bytes(tunnel.library());
        if json {
            json_line(&serde_json::json!({
                "event": "LibraryProved", "peer": peer.to_string(), "library": library.to_string(), "role": role.to_string(),
            }));
        } else {
            println!("library tunnel: {peer} proved it is {role} of {library}");
        }
        let _ = tunnel.stream.finish();
    })?;
    Ok(records)
}

/// What a peer's claim to a library came to.
pub struct Proof {
    /// The peer.
    pub peer: RemoteIdentity,
    /// The library it claimed.
    pub library: uuid::Uuid,
    /// Its verified role, or why the proof failed.
    pub outcome: Result<String, String>,
}

impl Proof {
    /// Prints the outcome as a line of text, or JSON (`proved` / `not_proved`).
    pub fn print(&self, json: bool) {
        let (peer, library) = (self.peer, self.library);
        match (&self.outcome, json) {
            (Ok(role), true) => json_line(&serde_json::json!({
                "event": "proved", "identity": peer, "library": library.to_string(), "role": role,
            })),
            (Err(error), true) => json_line(&serde_json::json!({
                "event": "not_proved", "identity": peer, "library": library.to_string(), "error": error,
            })),
            (Ok(role), false) => println!("  {peer}  proved it is {role} of library {library}"),
            (Err(error), false) => println!("  {peer}  claims library {library} but did not prove it: {error}"),
        }
    }
}

/// Whom a [`ClaimChecker`] asks to prove a claim. The side that opens a tunnel presents its
/// credential first, so whoever it asks learns this device's certificate (role, expiry, issuer)
/// and the library's revocation list, even a non-member repeating an announced UUID.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Every claimer (`warren discover`: the user asked to check).
    Anyone,
    /// Only devices this device already knows as members, not revoked (`warren node` in the
    /// background: it spreads revocations among members without showing its credential to
    /// strangers).
    KnownMembers,
}

/// Claims a checker remembers at most (a neighbour cycling identities cannot grow it further).
pub const MAX_CHECKS: usize = 4096;

/// Proofs a checker runs at once.
pub const CONCURRENT_CHECKS: usize = 8;

/// How long after a failed proof the same claim may be checked again.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Where one claim's check stands.
enum Check {
    Running,
    Proved,
    Failed(Instant),
}

type Claims = std::collections::HashMap<(RemoteIdentity, uuid::Uuid), Check>;

/// Checks peers' claims to this device's libraries, in library tunnels (which also hand each
/// side the other's newer revocation list, so a revocation spreads to every member that meets
/// another): a proved claim once, a failed one again after [`RETRY_AFTER`], at most
/// [`CONCURRENT_CHECKS`] at a time and [`MAX_CHECKS`] remembered. Outcomes go to the channel
/// given.
pub struct ClaimChecker {
    p2p: P2P,
    store: Arc<Store>,
    ask: Ask,
    claims: Arc<std::sync::Mutex<Claims>>,
    running: Arc<tokio::sync::Semaphore>,
    done: tokio::sync::mpsc::UnboundedSender<Proof>,
}

impl ClaimChecker {
    /// A checker on `p2p` for the libraries in `store`, asking `ask`; outcomes to `done`.
    pub fn new(p2p: &P2P, store: Arc<Store>, ask: Ask, done: tokio::sync::mpsc::UnboundedSender<Proof>) -> Self {
        Self {
            p2p: p2p.clone(),
            store,
            ask,
            claims: Default::default(),
            running: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CHECKS)),
            done,
        }
    }

    /// Whether `remote` is a member of `library` this device knows of (certified or proved
    /// before, not revoked).
    fn known(&self, remote: RemoteIdentity, library: uuid::Uuid) -> bool {
        let Ok(record) = self.store.find(&library.to_string()) else { return false };
        let members = self.store.members(&record).unwrap_or_default();
        members.iter().any(|m| m.node == remote && !m.revoked)
    }

    /// `remote` claims `claimed`: asks it to prove each one this device is in.
    pub fn check(&self, remote: RemoteIdentity, claimed: &[uuid::Uuid]) {
        use warren_tunnel::Libraries;
        for &library in claimed {
            if self.store.membership(library.as_bytes()).is_none()
                || (self.ask == Ask::KnownMembers && !self.known(remote, library))
            {
                continue;
            }
            {
                let mut claims = self.claims.lock().expect("claims lock");
                let due = match claims.get(&(remote, library)) {
                    Some(Check::Running | Check::Proved) => false,
                    Some(Check::Failed(at)) => at.elapsed() >= RETRY_AFTER,
                    None => claims.len() < MAX_CHECKS,
                };
                if !due {
                    continue;
                }
                claims.insert((remote, library), Check::Running);
            }
            let (p2p, store, done) = (self.p2p.clone(), self.store.clone(), self.done.clone());
            let (claims, running) = (self.claims.clone(), self.running.clone());
            self.p2p.spawn(async move {
                let Ok(_permit) = running.acquire_owned().await else { return };
                let opened = warren_tunnel::Tunnel::open(&p2p, &*store, *library.as_bytes(), remote).await;
                let outcome = opened.map(|mut t| {
                    let _ = t.stream.finish();
                    t.role().to_string()
                });
                let check = if outcome.is_ok() { Check::Proved } else { Check::Failed(Instant::now()) };
                claims.lock().expect("claims lock").insert((remote, library), check);
                let _ = done.send(Proof { peer: remote, library, outcome: outcome.map_err(|e| e.to_string()) });
            });
        }
    }
}
