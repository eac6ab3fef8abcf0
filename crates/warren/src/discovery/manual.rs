//! Manual discovery: addresses the user gave (`--peer ID@ADDR`, `host:port`), for Docker and
//! networks where nothing else works. Each target is dialled, kept connected, and retried with
//! exponential backoff when it fails or drops. An address may name its transport:
//! `tcp://HOST:PORT` or `utp://HOST:PORT` (dialled through this node's listener of that
//! transport); plain `HOST:PORT` (or `quic://`) is QUIC.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::RemoteIdentity;
use tokio_util::sync::CancellationToken;

use crate::discovery::HookTasks;
use crate::node::{BoxFuture, Discovery, Hook, P2P};

/// Name of this hook, and the source of the peers it reports.
pub const SOURCE: &str = "manual";

/// First retry after 1 s, doubling up to 60 s: quick recovery when a peer restarts, and little
/// traffic when it is gone for good.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// See [`RETRY_MIN`].
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Where a manual peer is: an IP socket address, or a host name resolved on every attempt (so a
/// changed DNS record is followed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ManualAddr {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A host name and port.
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for ManualAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(addr) => addr.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for ManualAddr {
    type Err = ManualParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse() {
            return Ok(Self::Socket(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| ManualParseError(format!("{s:?} has no :port")))?;
        let port = port.parse().map_err(|_| ManualParseError(format!("{s:?}: {port:?} is not a port")))?;
        if host.is_empty() || host.contains(['[', ']', ' ', '@']) {
            return Err(ManualParseError(format!("{s:?}: {host:?} is not a host name")));
        }
        Ok(Self::Name { host: host.to_owned(), port })
    }
}

/// A peer given by hand: `ID@ADDR` (the identity is checked) or just `ADDR` (whoever answers
/// is accepted and learned); `ADDR` may start with `tcp://` or `utp://`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManualPeer {
    /// The identity expected at the address, if known.
    pub identity: Option<RemoteIdentity>,
    /// The transport to dial it on, other than QUIC (`"tcp"`, `"utp"`); `None` is QUIC.
    pub transport: Option<&'static str>,
    /// Where to dial.
    pub addr: ManualAddr,
}

/// The transports an address may name, by scheme.
const SCHEMES: [(&str, Option<&str>); 3] = [
    ("quic://", None),
    ("tcp://", Some(crate::transport::tcp::HOOK_NAME)),
    ("utp://", Some(crate::transport::utp_listener::HOOK_NAME)),
];

impl fmt::Display for ManualPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.identity {
            write!(f, "{id}@")?;
        }
        if let Some(transport) = self.transport {
            write!(f, "{transport}://")?;
        }
        self.addr.fmt(f)
    }
}

impl FromStr for ManualPeer {
    type Err = ManualParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (identity, rest) = match s.split_once('@') {
            Some((id, rest)) => (Some(id.parse().map_err(|e| ManualParseError(format!("{id:?}: {e}")))?), rest),
            None => (None, s),
        };
        let (transport, addr) = match SCHEMES.iter().find(|(scheme, _)| rest.starts_with(scheme)) {
            Some((scheme, transport)) => (*transport, &rest[scheme.len()..]),
            None if rest.contains("://") => {
                return Err(ManualParseError(format!("{s:?}: unknown transport (quic://, tcp:// or utp://)")));
            }
            None => (None, rest),
        };
        Ok(Self { identity, transport, addr: addr.parse()? })
    }
}

/// Why a manual peer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a peer address (expected ID@HOST:PORT or HOST:PORT): {0}")]
pub struct ManualParseError(String);

/// Exponential backoff with jitter, without I/O: the caller sleeps.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `min`, doubles per failure, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, failures: 0 }
    }

    /// The delay before the next attempt after another failure: the nominal delay scaled by a
    /// random factor in [0.5, 1.0], so peers that failed together do not retry in lockstep.
    pub fn next_delay(&mut self, random: u32) -> Duration {
        let nominal = self.min.saturating_mul(1 << self.failures.min(20)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let factor = 0.5 + 0.5 * (random as f64 / u32::MAX as f64);
        nominal.mul_f64(factor)
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The manual discovery hook. Cheap to clone.
#[derive(Clone)]
pub struct ManualDiscovery {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    p2p: P2P,
    targets: Mutex<HashMap<ManualPeer, CancellationToken>>,
    hook: HookTasks,
}

impl ManualDiscovery {
    /// Registers the hook with `p2p` and starts dialling `peers`.
    pub fn spawn(p2p: &P2P, peers: impl IntoIterator<Item = ManualPeer>) -> Self {
        let hook = Self {
            inner: Arc::new(ManualInner { p2p: p2p.clone(), targets: Mutex::default(), hook: HookTasks::default() }),
        };
        for peer in peers {
            hook.add(peer);
        }
        p2p.register_discovery(Arc::new(hook.clone()));
        hook
    }

    /// Adds a target; returns false if it was already there.
    pub fn add(&self, peer: ManualPeer) -> bool {
        let mut targets = self.inner.targets.lock().expect("target lock poisoned");
        if targets.contains_key(&peer) || self.inner.hook.cancel.is_cancelled() {
            return false;
        }
        // A known identity at a literal QUIC address is vouched for at once, so that a caller
        // that connects right after adding it does not race the dialling task.
        if let (Some(id), None, ManualAddr::Socket(addr)) = (peer.identity, peer.transport, &peer.addr) {
            self.inner.p2p.discovered(SOURCE, id, [*addr], BTreeMap::new());
        }
        let cancel = self.inner.hook.cancel.child_token();
        targets.insert(peer.clone(), cancel.clone());
        let p2p = self.inner.p2p.clone();
        let task = self.inner.hook.tasks.track_future(async move {
            cancel.run_until_cancelled(keep_connected(p2p.clone(), peer.clone())).await;
            if let Some(id) = peer.identity {
                p2p.expired(SOURCE, id);
            }
        });
        self.inner.p2p.spawn(task);
        true
    }

    /// Removes a target: it is no longer dialled and no longer vouched for.
    pub fn remove(&self, peer: &ManualPeer) -> bool {
        let token = self.inner.targets.lock().expect("target lock poisoned").remove(peer);
        token.map(|t| t.cancel()).is_some()
    }

    /// The current targets.
    pub fn peers(&self) -> Vec<ManualPeer> {
        let mut peers: Vec<_> = self.inner.targets.lock().expect("target lock poisoned").keys().cloned().collect();
        peers.sort();
        peers
    }
}

/// Pushes the configured addresses as it reaches them; it neither publishes nor resolves.
impl Discovery for ManualDiscovery {}

impl Hook for ManualDiscovery {
    fn name(&self) -> &str {
        SOURCE
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.hook.stop())
    }
}

async fn resolve(addr: &ManualAddr) -> Result<Vec<SocketAddr>, String> {
    match addr {
        ManualAddr::Socket(addr) => Ok(vec![*addr]),
        ManualAddr::Name { host, port } => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map(|addrs| addrs.collect())
            .map_err(|e| format!("cannot resolve {host}: {e}")),
    }
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // Jitter only: a failing random source just means no jitter.
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// Reaches a peer given on `transport` (TCP, uTP): an open connection to a known identity is
/// kept; otherwise each address is dialled through this node's listener of that transport.
/// The addresses become the peer's candidates on the transport ([`P2P::discovered_on`]).
async fn dial_on(
    p2p: &P2P,
    transport: &'static str,
    identity: Option<RemoteIdentity>,
    addrs: Vec<SocketAddr>,
) -> Result<crate::Connection, String> {
    if let Some(id) = identity {
        p2p.discovered_on(transport, id, addrs.iter().copied());
        if let Some(conn) = p2p.open_connection(&id) {
            return Ok(conn);
        }
    }
    let mut errors = Vec::new();
    for addr in addrs {
        match p2p.dial_via(transport, addr, identity).await {
            Ok(conn) => {
                if identity.is_none() {
                    p2p.discovered_on(transport, conn.remote(), [addr]);
                }
                return Ok(conn);
            }
            Err(e) => errors.push(format!("{transport}://{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// Dials `peer` until connected, waits for the connection to close, and starts again.
async fn keep_connected(p2p: P2P, peer: ManualPeer) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut identity = peer.identity;
    loop {
        let attempt = async {
            let addrs = resolve(&peer.addr).await?;
            if let Some(transport) = peer.transport {
                return dial_on(&p2p, transport, identity, addrs).await;
            }
            if let Some(id) = identity {
                p2p.discovered(SOURCE, id, addrs, BTreeMap::new());
                return p2p.connection(id).await.map_err(|e| e.to_string());
            }
            let mut errors = Vec::new();
            for addr in addrs {
                match p2p.dial(addr, None).await {
                    Ok(conn) => {
                        p2p.discovered(SOURCE, conn.remote(), [addr], BTreeMap::new());
                        return Ok(conn);
                    }
                    Err(e) => errors.push(format!("{addr}: {e}")),
                }
            }
            Err(errors.join("; "))
        };
        match attempt.await {
            Ok(conn) => {
                backoff.reset();
                identity = Some(conn.remote());
                let reason = conn.closed().await;
                tracing::debug!(peer = %peer, %reason, "manual peer disconnected");
                if p2p.is_shutting_down() {
                    return;
                }
                tokio::time::sleep(RETRY_MIN).await;
            }
            Err(error) => {
                let delay = backoff.next_delay(random_u32());
                tracing::debug!(peer = %peer, %error, ?delay, "manual peer unreachable, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn parses_peers_with_and_without_identity() {
        let id = Identity::generate().to_remote_identity();
        let peer: ManualPeer = format!("{id}@127.0.0.1:4433").parse().unwrap();
        assert_eq!(
            peer,
            ManualPeer {
                identity: Some(id),
                transport: None,
                addr: ManualAddr::Socket("127.0.0.1:4433".parse().unwrap())
            }
        );
        assert_eq!(peer.to_string(), format!("{id}@127.0.0.1:4433"));
        let tcp: ManualPeer = format!("{id}@tcp://127.0.0.1:4434").parse().unwrap();
        assert_eq!((tcp.identity, tcp.transport), (Some(id), Some("tcp")));
        assert_eq!(tcp.to_string(), format!("{id}@tcp://127.0.0.1:4434"), "round trips");
        let utp: ManualPeer = "utp://host.example:9".parse().unwrap();
        assert_eq!((utp.transport, utp.addr), (Some("utp"), ManualAddr::Name { host: "host.example".into(), port: 9 }));
        let quic: ManualPeer = "quic://127.0.0.1:1".parse().unwrap();
        assert_eq!(quic.transport, None);
        let error = "sctp://127.0.0.1:1".parse::<ManualPeer>().unwrap_err().to_string();
        assert!(error.contains("unknown transport"), "{error}");
        assert!("tcp://".parse::<ManualPeer>().is_err());
        let peer: ManualPeer = "relay.example.org:7000".parse().unwrap();
        assert_eq!(peer.addr, ManualAddr::Name { host: "relay.example.org".into(), port: 7000 });
        let peer: ManualPeer = "[::1]:9".parse().unwrap();
        assert_eq!(peer.addr, ManualAddr::Socket("[::1]:9".parse().unwrap()));
        assert!("nohost".parse::<ManualPeer>().is_err());
        assert!("host:notaport".parse::<ManualPeer>().is_err());
        assert!("bad-id@127.0.0.1:1".parse::<ManualPeer>().is_err());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let full: Vec<_> = (0..9).map(|_| backoff.next_delay(u32::MAX)).collect();
        let secs: Vec<_> = full.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        backoff.reset();
        assert_eq!(backoff.next_delay(0), Duration::from_millis(500));
        assert_eq!(backoff.next_delay(u32::MAX / 2).as_millis(), 1500);
        // Many failures never overflow.
        for _ in 0..100 {
            assert!(backoff.next_delay(7) <= Duration::from_secs(60));
        }
    }
}
