//! The bootstrap cache (Crust's): a file of the peers and relays that worked (identity,
//! addresses, last success, failure count), loaded at start to reconnect. Bounded, written
//! atomically (a temporary file renamed over the old one), and tolerant of a truncated or
//! corrupted file: that is rebuilt from nothing, with a warning, never an error.
//!
//! File format: the magic `WRNCACHE`, a format version byte, a BLAKE3 hash of the body (32
//! bytes), then the body, a warren-proto encoded [`CacheFile`]. At most [`MAX_FILE_BYTES`].
//! Format 2 (issue 15) adds the addresses on other transports than QUIC
//! ([`CacheEntry::other`]); a format 1 file is still read (its entries have none) and is
//! written back as format 2.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::RemoteIdentity;

/// Most peers kept.
pub const MAX_ENTRIES: usize = 256;
/// Most addresses kept per peer.
pub const MAX_ADDRS: usize = 8;
/// Largest cache file read.
pub const MAX_FILE_BYTES: usize = 64 * 1024;

const MAGIC: &[u8; 8] = b"WRNCACHE";
const FORMAT: u8 = 2;
/// The format before transport-named addresses, still read.
const FORMAT_1: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1 + 32;

/// What the cache knows of one peer.
#[derive(Debug, Clone, PartialEq, Eq, warren_proto::Encode, warren_proto::Decode)]
pub struct CacheEntry {
    /// The peer.
    pub identity: RemoteIdentity,
    /// QUIC addresses it was reached at, newest first.
    #[proto(max_len = 8)]
    pub addrs: Vec<SocketAddr>,
    /// When it last worked, in seconds since the Unix epoch (0: never).
    pub last_success: u64,
    /// Failures since then.
    pub failures: u32,
    /// Is it a relay (a rendezvous point)?
    pub relay: bool,
    /// Addresses on other transports it was reached at (TCP, uTP), newest first.
    #[proto(max_len = 8)]
    pub other: Vec<TransportAddr>,
}

/// An address on a named transport.
#[derive(Debug, Clone, PartialEq, Eq, warren_proto::Encode, warren_proto::Decode)]
pub struct TransportAddr {
    /// The transport (`"tcp"`, `"utp"`).
    #[proto(max_len = 16)]
    pub transport: String,
    /// The address.
    pub addr: SocketAddr,
}

/// The body of the file.
#[derive(Debug, Default, warren_proto::Encode, warren_proto::Decode)]
#[proto(max_bytes = 65536)]
struct CacheFile {
    #[proto(max_len = 256)]
    entries: Vec<CacheEntry>,
}

/// A format 1 entry: QUIC addresses only.
#[derive(Debug, Clone, PartialEq, Eq, warren_proto::Encode, warren_proto::Decode)]
struct CacheEntryV1 {
    identity: RemoteIdentity,
    #[proto(max_len = 8)]
    addrs: Vec<SocketAddr>,
    last_success: u64,
    failures: u32,
    relay: bool,
}

/// A format 1 body.
#[derive(Debug, Default, warren_proto::Encode, warren_proto::Decode)]
#[proto(max_bytes = 65536)]
struct CacheFileV1 {
    #[proto(max_len = 256)]
    entries: Vec<CacheEntryV1>,
}

impl From<CacheEntryV1> for CacheEntry {
    fn from(v1: CacheEntryV1) -> Self {
        let CacheEntryV1 { identity, addrs, last_success, failures, relay } = v1;
        Self { identity, addrs, last_success, failures, relay, other: Vec::new() }
    }
}

impl CacheEntry {
    /// The addresses on `transport` (`"quic"` gives [`CacheEntry::addrs`]), newest first.
    pub fn addresses_on(&self, transport: &str) -> Vec<SocketAddr> {
        if transport == crate::transport::quic::HOOK_NAME {
            return self.addrs.clone();
        }
        self.other.iter().filter(|a| a.transport == transport).map(|a| a.addr).collect()
    }

    /// The other transports it has addresses on, each once.
    pub fn other_transports(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.other.iter().map(|a| a.transport.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The bootstrap cache.
#[derive(Debug)]
pub struct BootstrapCache {
    path: PathBuf,
    entries: BTreeMap<RemoteIdentity, CacheEntry>,
}

/// Why a cache file was not used (it is then rebuilt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the bootstrap cache {path} is unusable ({reason}); starting from an empty one")]
pub struct CacheWarning {
    /// The file.
    pub path: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

// Unix seconds now.
use crate::transport::gate::unix_now as now;

impl BootstrapCache {
    /// Loads the cache at `path`. A missing file is an empty cache; an unusable one (too
    /// large, truncated, corrupted, another format) is an empty cache plus a warning saying
    /// why.
    pub fn load(path: &Path) -> (Self, Option<CacheWarning>) {
        let empty = || Self { path: path.to_owned(), entries: BTreeMap::new() };
        let bytes = match std::fs::File::open(path) {
            Ok(file) => {
                let mut bytes = Vec::new();
                let read =
                    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE_BYTES as u64 + 1), &mut bytes);
                match read {
                    Ok(_) => bytes,
                    Err(e) => return (empty(), Some(Self::warning(path, e.to_string()))),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (empty(), None),
            Err(e) => return (empty(), Some(Self::warning(path, e.to_string()))),
        };
        match Self::parse(&bytes) {
            Ok(entries) => (Self { path: path.to_owned(), entries }, None),
            Err(reason) => (empty(), Some(Self::warning(path, reason))),
        }
    }

    fn warning(path: &Path, reason: String) -> CacheWarning {
        CacheWarning { path: path.to_owned(), reason }
    }

    /// Parses a cache file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<BTreeMap<RemoteIdentity, CacheEntry>, String> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
        }
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a bootstrap cache (bad magic or truncated header)".into());
        }
        let format = bytes[MAGIC.len()];
        if format != FORMAT && format != FORMAT_1 {
            return Err(format!("format {format} (this warren reads {FORMAT_1} and {FORMAT})"));
        }
        let (hash, body) = bytes[MAGIC.len() + 1..].split_at(32);
        if blake3::hash(body).as_bytes() != hash {
            return Err("checksum mismatch (truncated or corrupted)".into());
        }
        let decoded: Vec<CacheEntry> = if format == FORMAT_1 {
            let file: CacheFileV1 = warren_proto::decode_from_slice(body).map_err(|e| e.to_string())?;
            file.entries.into_iter().map(CacheEntry::from).collect()
        } else {
            let file: CacheFile = warren_proto::decode_from_slice(body).map_err(|e| e.to_string())?;
            file.entries
        };
        let mut entries = BTreeMap::new();
        for entry in decoded.into_iter().take(MAX_ENTRIES) {
            entries.insert(entry.identity, entry);
        }
        Ok(entries)
    }

    /// The file's bytes for the current entries.
    pub fn to_bytes(&self) -> Vec<u8> {
        let file = CacheFile { entries: self.entries.values().cloned().collect() };
        let body = warren_proto::encode_to_vec(&file).expect("the cache is bounded below its encoding limits");
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Writes the cache atomically: a temporary file next to it, synced, then renamed over it.
    pub fn save(&self) -> std::io::Result<()> {
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&self.to_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// The entries, best first: most recent success, fewest failures.
    pub fn entries(&self) -> Vec<CacheEntry> {
        let mut entries: Vec<_> = self.entries.values().cloned().collect();
        entries.sort_by_key(|e| (std::cmp::Reverse(e.last_success), e.failures));
        entries
    }

    /// The relays, best first.
    pub fn relays(&self) -> Vec<CacheEntry> {
        self.entries().into_iter().filter(|e| e.relay).collect()
    }

    /// `identity` worked at `addr` over `transport` (`"quic"`, `"tcp"`, `"utp"`): it goes first
    /// in its addresses on that transport, its failures reset.
    pub fn record_success(&mut self, identity: RemoteIdentity, transport: &str, addr: SocketAddr, relay: bool) {
        let entry = self.entries.entry(identity).or_insert_with(|| CacheEntry {
            identity,
            addrs: Vec::new(),
            last_success: 0,
            failures: 0,
            relay,
            other: Vec::new(),
        });
        if transport == crate::transport::quic::HOOK_NAME {
            entry.addrs.retain(|a| *a != addr);
            entry.addrs.insert(0, addr);
            entry.addrs.truncate(MAX_ADDRS);
        } else {
            entry.other.retain(|a| !(a.addr == addr && a.transport == transport));
            entry.other.insert(0, TransportAddr { transport: transport.to_owned(), addr });
            entry.other.truncate(MAX_ADDRS);
        }
        entry.last_success = now();
        entry.failures = 0;
        entry.relay |= relay;
        self.evict();
    }

    /// Reaching `identity` failed.
    pub fn record_failure(&mut self, identity: &RemoteIdentity) {
        if let Some(entry) = self.entries.get_mut(identity) {
            entry.failures = entry.failures.saturating_add(1);
        }
    }

    /// Keeps the best [`MAX_ENTRIES`].
    fn evict(&mut self) {
        while self.entries.len() > MAX_ENTRIES {
            let worst = self
                .entries
                .values()
                .max_by_key(|e| (e.failures, std::cmp::Reverse(e.last_success)))
                .map(|e| e.identity)
                .expect("non-empty");
            self.entries.remove(&worst);
        }
    }
}

/// Name of the cache hook, and the source of the peers it reports.
pub const SOURCE: &str = "cache";

/// A relay's address is its QUIC one (its TCP fallback listens on the same address).
const RELAY_TRANSPORT: &str = crate::transport::quic::HOOK_NAME;

/// How long one reconnection attempt to a cached peer may take.
const RECONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The bootstrap cache as a hook of a node: reports every cached peer (source `cache`) and
/// tries each once at start, records every peer this node dialled successfully (and failures
/// of cached ones), and writes the file after each change and at shutdown.
#[derive(Clone)]
pub struct BootstrapHook {
    inner: std::sync::Arc<HookInner>,
}

struct HookInner {
    p2p: crate::P2P,
    cache: std::sync::Mutex<BootstrapCache>,
    hook: super::HookTasks,
}

impl BootstrapHook {
    /// Loads the cache at `path` for `p2p` and starts; the warning, if any, says why an
    /// unusable file was replaced by an empty cache.
    pub fn spawn(p2p: &crate::P2P, path: &Path) -> (Self, Option<CacheWarning>) {
        let (cache, warning) = BootstrapCache::load(path);
        if let Some(warning) = &warning {
            tracing::warn!(%warning);
        }
        let known = cache.entries();
        let hook = Self {
            inner: std::sync::Arc::new(HookInner {
                p2p: p2p.clone(),
                cache: std::sync::Mutex::new(cache),
                hook: super::HookTasks::default(),
            }),
        };
        let mut events = p2p.subscribe();
        // Relays are not peers: the node's relay client picks one (see `relays`).
        for entry in known.into_iter().filter(|e| !e.relay) {
            p2p.discovered(SOURCE, entry.identity, entry.addrs.clone(), BTreeMap::new());
            for transport in entry.other_transports() {
                p2p.discovered_on(transport, entry.identity, entry.addresses_on(transport));
            }
            let this = hook.clone();
            let task = hook.inner.hook.tasks.track_future(async move {
                let attempt = tokio::time::timeout(RECONNECT_TIMEOUT, this.inner.p2p.connection(entry.identity));
                let cancel = this.inner.hook.cancel.clone();
                if let Some(Ok(Ok(_))) = cancel.run_until_cancelled(attempt).await {
                    return; // recorded by the PeerConnected event
                }
                if !this.inner.hook.cancel.is_cancelled() {
                    this.change(|cache| cache.record_failure(&entry.identity));
                }
            });
            p2p.spawn(task);
        }
        let this = hook.clone();
        let task = hook.inner.hook.tasks.track_future(async move {
            loop {
                let event = tokio::select! {
                    _ = this.inner.hook.cancel.cancelled() => break,
                    event = events.recv() => event,
                };
                match event {
                    // A relayed connection's address is a placeholder: only direct ones are kept.
                    Ok(crate::Event::PeerConnected {
                        remote,
                        path: crate::transport::paths::Path::Direct { addr },
                        transport,
                        direction: crate::Direction::Outbound,
                        ..
                    }) => {
                        this.change(|cache| cache.record_success(remote, transport, addr, false));
                    }
                    Ok(crate::Event::RelayConnected { relay, addr, .. }) => {
                        this.change(|cache| cache.record_success(relay, RELAY_TRANSPORT, addr, true));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        p2p.spawn(task);
        p2p.register_discovery(std::sync::Arc::new(hook.clone()));
        (hook, warning)
    }

    /// The cached entries, best first.
    pub fn entries(&self) -> Vec<CacheEntry> {
        self.inner.cache.lock().expect("cache lock poisoned").entries()
    }

    /// The cached relays, best first: a node given no relay uses the first (its rendezvous
    /// point last time). Relays that worked are recorded from `RelayConnected` events.
    pub fn relays(&self) -> Vec<CacheEntry> {
        self.inner.cache.lock().expect("cache lock poisoned").relays()
    }

    /// Records a relay that worked.
    pub fn record_relay(&self, identity: RemoteIdentity, addr: SocketAddr) {
        self.change(|cache| cache.record_success(identity, RELAY_TRANSPORT, addr, true));
    }

    fn change(&self, f: impl FnOnce(&mut BootstrapCache)) {
        let mut cache = self.inner.cache.lock().expect("cache lock poisoned");
        f(&mut cache);
        if let Err(error) = cache.save() {
            tracing::warn!(%error, path = %cache.path.display(), "could not write the bootstrap cache");
        }
    }
}

/// Pushes the cached peers at start; it neither publishes nor resolves on demand.
impl crate::node::Discovery for BootstrapHook {}

impl crate::node::Hook for BootstrapHook {
    fn name(&self) -> &str {
        SOURCE
    }

    fn shutdown(&self) -> crate::node::BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.hook.stop().await;
            self.change(|_| {});
        })
    }
}

/// The property the `bootstrap_cache` fuzz target checks, also replayed over its corpus: any
/// bytes parse or are refused without panicking, and what parses writes back to bytes that
/// parse to the same entries.
#[doc(hidden)]
pub fn fuzz_cache(data: &[u8]) {
    if let Ok(entries) = BootstrapCache::parse(data) {
        assert!(entries.len() <= MAX_ENTRIES);
        let cache = BootstrapCache { path: PathBuf::new(), entries };
        let again = BootstrapCache::parse(&cache.to_bytes()).expect("a written cache parses");
        assert_eq!(again, cache.entries);
    }
    // The same bytes as a body with a correct header: exercises the decoder past the checksum.
    let mut framed = Vec::with_capacity(HEADER_LEN + data.len());
    framed.extend_from_slice(MAGIC);
    framed.push(FORMAT);
    framed.extend_from_slice(blake3::hash(data).as_bytes());
    framed.extend_from_slice(data);
    if let Ok(entries) = BootstrapCache::parse(&framed) {
        assert!(entries.len() <= MAX_ENTRIES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("bootstrap-cache")
    }

    fn id() -> RemoteIdentity {
        Identity::generate().to_remote_identity()
    }

    #[test]
    fn a_cache_round_trips_through_its_file_atomically() {
        let path = temp("roundtrip");
        let (mut cache, warning) = BootstrapCache::load(&path);
        assert!(warning.is_none() && cache.entries().is_empty(), "a missing file is an empty cache");
        let (peer, relay) = (id(), id());
        cache.record_success(peer, "quic", "10.0.0.1:7000".parse().unwrap(), false);
        cache.record_success(peer, "quic", "10.0.0.2:7000".parse().unwrap(), false);
        cache.record_success(relay, "quic", "203.0.113.1:443".parse().unwrap(), true);
        cache.record_failure(&relay);
        cache.save().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        let (loaded, warning) = BootstrapCache::load(&path);
        assert!(warning.is_none());
        assert_eq!(loaded.entries(), cache.entries());
        let entry = loaded.entries().into_iter().find(|e| e.identity == peer).unwrap();
        assert_eq!(entry.addrs[0], "10.0.0.2:7000".parse().unwrap(), "the newest address first");
        assert_eq!(loaded.relays().len(), 1);
        assert_eq!(loaded.relays()[0].failures, 1);
    }

    #[test]
    fn addresses_keep_their_transport_and_a_format_1_file_still_loads() {
        let path = temp("transports");
        let mut cache = BootstrapCache::load(&path).0;
        let peer = id();
        let (quic, tcp, utp) =
            ("10.0.0.1:7000".parse().unwrap(), "10.0.0.1:7001".parse().unwrap(), "10.0.0.1:7002".parse().unwrap());
        cache.record_success(peer, "quic", quic, false);
        cache.record_success(peer, "tcp", tcp, false);
        cache.record_success(peer, "utp", utp, false);
        cache.record_success(peer, "tcp", tcp, false);
        cache.save().unwrap();
        let entry = BootstrapCache::load(&path).0.entries().remove(0);
        assert_eq!(entry.addrs, [quic], "QUIC addresses stay where format 1 had them");
        assert_eq!(entry.addresses_on("quic"), [quic]);
        assert_eq!(entry.addresses_on("tcp"), [tcp], "recorded twice, kept once");
        assert_eq!(entry.addresses_on("utp"), [utp]);
        assert_eq!(entry.other_transports(), ["tcp", "utp"]);

        // A file of the previous format: read, with no other transports, and written back as 2.
        let v1 = CacheFileV1 {
            entries: vec![CacheEntryV1 {
                identity: peer,
                addrs: vec![quic],
                last_success: 5,
                failures: 1,
                relay: false,
            }],
        };
        let body = warren_proto::encode_to_vec(&v1).unwrap();
        let file = [&MAGIC[..], &[FORMAT_1], blake3::hash(&body).as_bytes(), &body].concat();
        std::fs::write(&path, file).unwrap();
        let (loaded, warning) = BootstrapCache::load(&path);
        assert!(warning.is_none(), "{warning:?}");
        let entry = loaded.entries().remove(0);
        assert_eq!((entry.addrs.clone(), entry.last_success, entry.failures), (vec![quic], 5, 1));
        assert!(entry.other.is_empty());
        loaded.save().unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[MAGIC.len()], FORMAT);
    }

    #[test]
    fn a_broken_file_is_rebuilt_with_a_warning() {
        let path = temp("broken");
        let mut cache = BootstrapCache::load(&path).0;
        cache.record_success(id(), "quic", "10.0.0.1:7000".parse().unwrap(), false);
        cache.save().unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "checksum mismatch"),
            (good[..10].to_vec(), "truncated header"),
            (flipped, "checksum mismatch"),
            (b"garbage".to_vec(), "bad magic"),
            ([&good[..8], &[9u8][..], &good[9..]].concat(), "format 9"),
            (vec![0u8; MAX_FILE_BYTES + 10], "larger than"),
        ];
        for (bytes, reason) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let (loaded, warning) = BootstrapCache::load(&path);
            let warning = warning.expect("a warning").to_string();
            assert!(warning.contains(reason), "{warning}");
            assert!(loaded.entries().is_empty(), "rebuilt from nothing");
            loaded.save().unwrap();
            assert!(BootstrapCache::load(&path).1.is_none(), "and written back whole");
        }
    }

    #[test]
    fn the_cache_stays_bounded_and_drops_the_worst() {
        let mut cache = BootstrapCache::load(&temp("bounded")).0;
        let failing = id();
        cache.record_success(failing, "quic", "10.0.0.1:1".parse().unwrap(), false);
        for _ in 0..5 {
            cache.record_failure(&failing);
        }
        for i in 0..(MAX_ENTRIES + 50) {
            let peer = id();
            for port in 0..20u16 {
                cache.record_success(
                    peer,
                    "quic",
                    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], port)),
                    false,
                );
            }
        }
        let entries = cache.entries();
        assert_eq!(entries.len(), MAX_ENTRIES);
        assert!(entries.iter().all(|e| e.addrs.len() <= MAX_ADDRS));
        assert!(!entries.iter().any(|e| e.identity == failing), "the failing peer went first");
        assert!(cache.to_bytes().len() <= MAX_FILE_BYTES, "a full cache fits the file limit");
    }
}
