//! LAN discovery: DNS-SD over mDNS (RFC 6762/6763) with the `mdns-sd` crate. Each node
//! announces `{remote_identity}._{app_name}._udp.local.` on its QUIC port, with TXT metadata
//! (`name`, `os`, `device_model`, `version`) and one `{library_uuid}={remote_identity}` entry per
//! active library, and browses for the others. A discovered node becomes a `PeerDiscovered`
//! event with its addresses, so `p2p.connect(identity, …)` reaches it by identity alone; its
//! goodbye (or expiry) becomes `PeerExpired`.
//!
//! Modes: [`DiscoveryMode::Enabled`], or [`DiscoveryMode::Disabled`], in which no mDNS socket
//! is even open (so nothing is sent or answered, not even multicast membership reports).
//! Switchable at runtime with [`MdnsDiscovery::set_mode`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::watch;
use uuid::Uuid;

use crate::discovery::HookTasks;
use crate::node::{BoxFuture, Discovery, Hook, P2P, Record};
use crate::{RemoteIdentity, node};

/// Name of this hook, and the source of the peers it reports.
pub const SOURCE: &str = "mdns";

/// Metadata keys announced in the TXT record.
pub const TXT_KEYS: [&str; 4] = [node::NAME, node::OS, node::DEVICE_MODEL, node::VERSION];

/// Largest TXT record announced: the whole answer must fit one mDNS packet (RFC 6762 section
/// 17 allows 9000 bytes, but 1,300 keeps it inside a 1500-byte Ethernet frame with the other
/// records).
pub const MAX_TXT_BYTES: usize = 1300;

/// Most peers kept from mDNS at once: a flood of fake services cannot grow memory without
/// bound. When full, the record seen longest ago (of a peer not connected) makes room for the
/// new one, so real peers still get in.
pub const MAX_PEERS: usize = 1024;

/// Most libraries read from one peer's record.
pub const MAX_LIBRARIES: usize = 64;

/// How long a goodbye waits before it is honoured: RFC 6762 section 10.1 keeps a record one
/// more second, so that its owner can rescue it from a wrong (or forged) goodbye.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// Can a node dial this address, announced in an mDNS record? Not an unspecified, loopback,
/// multicast or broadcast address (a LAN neighbour could point dials at this host's own
/// services or flood a group), nor an IPv6 link-local one (undialable without its interface,
/// which the record does not carry).
pub fn dialable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => {
            !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_unicast_link_local())
                && ip.to_ipv4_mapped().is_none_or(|v4| dialable(IpAddr::V4(v4)))
        }
    }
}

/// What a goodbye said at `said` does, [`GOODBYE_GRACE`] later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goodbye {
    /// The peer is connected: wait until that connection closes, then decide again.
    WaitForClose,
    /// The record came back since (or is gone already): nothing to do.
    Ignore,
    /// Expire the peer's mDNS addresses.
    Honour,
}

fn goodbye_verdict(connected: bool, last_seen: Option<std::time::Instant>, said: std::time::Instant) -> Goodbye {
    match last_seen {
        _ if connected => Goodbye::WaitForClose,
        Some(seen) if seen <= said => Goodbye::Honour,
        _ => Goodbye::Ignore,
    }
}

/// How long shutdown waits for the goodbye packets and the daemon to stop.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// Browse events waiting for this hook; beyond it, records are dropped (see [`drain`]).
const EVENT_QUEUE: usize = 4096;

/// How long to wait before subscribing again when the daemon ended a subscription.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// Whether and how the node takes part in LAN discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscoveryMode {
    /// Announce and browse.
    #[default]
    Enabled,
    /// Neither: no mDNS socket is open.
    Disabled,
    /// Announce only a keyed hash of the identity (no metadata, no libraries) that contacts can
    /// recognise and strangers cannot; metadata goes to mutual contacts over an authenticated
    /// stream (`meta/1`), and the hello carries none.
    ContactsOnly,
}

/// The protocol over which a ContactsOnly node hands its metadata and libraries to a contact
/// that asks (and to nobody else).
pub const METADATA_PROTOCOL: &str = "meta/1";

/// Largest metadata answer read from a contact.
const MAX_METADATA_REPLY: u64 = 16 * 1024;

/// Metadata exchanges tried per contact found, and the pause before the second (the third
/// waits twice as long).
const METADATA_TRIES: u32 = 3;
const METADATA_RETRY: Duration = Duration::from_millis(500);

/// The TXT key carrying a ContactsOnly record's salt.
const SALT_KEY: &str = "s";

/// A record's TXT entries, or why they cannot be announced.
type Txt = Result<Vec<(String, String)>, MdnsError>;

/// How often a ContactsOnly node checks whether its contacts changed (then it announces anew).
const CONTACTS_CHECK: Duration = Duration::from_secs(2);

/// Contacts a ContactsOnly node announces itself to at once (one record each).
pub const MAX_ANNOUNCED_CONTACTS: usize = 16;

/// The instance name of the ContactsOnly record that `announcer` publishes for one contact,
/// with `salt`: 26 base32 characters of BLAKE3 keyed with the secret the two share
/// ([`crate::Identity::contact_secret`]). Only that contact (and the announcer) can compute it: a
/// stranger who knows both public keys cannot, so it cannot recognise the node in any session,
/// nor forge a record the contact would take for the announcer's. A new salt per session
/// unlinks the records for everyone else. (Before issue 14 the tag was keyed with the
/// announcer's public key, which anyone who knew the key could recompute.)
pub fn contact_tag(pair_secret: &[u8; 32], announcer: &RemoteIdentity, salt: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new_keyed(pair_secret);
    hasher.update(b"warren 2026 mdns contacts-only instance tag");
    hasher.update(announcer.as_bytes());
    hasher.update(salt);
    crate::identity::base32().encode(&hasher.finalize().as_bytes()[..16])
}

/// What a ContactsOnly node tells a contact over [`METADATA_PROTOCOL`].
#[derive(Debug, Default, warren_proto::Encode, warren_proto::Decode)]
#[proto(max_len = 255, max_bytes = 16384)]
struct MetadataReply {
    metadata: BTreeMap<String, String>,
    #[proto(max_len = 64)]
    libraries: Vec<Uuid>,
}

/// Why discovery could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MdnsError {
    /// The metadata and libraries do not fit a TXT record.
    #[error("the metadata does not fit a DNS-SD TXT record: {0}")]
    TooLarge(String),
    /// The mDNS daemon failed.
    #[error("mDNS: {0}")]
    Daemon(String),
}

/// The TXT record for `metadata` and `libraries`, or why it cannot be announced: every entry
/// must be at most 255 bytes, the whole at most [`MAX_TXT_BYTES`]; nothing is ever cut.
pub fn txt_record(
    identity: &RemoteIdentity,
    metadata: &BTreeMap<String, String>,
    libraries: &[Uuid],
) -> Result<Vec<(String, String)>, MdnsError> {
    let mut entries: Vec<(String, String)> =
        TXT_KEYS.iter().filter_map(|key| metadata.get(*key).map(|value| (key.to_string(), value.clone()))).collect();
    entries.extend(libraries.iter().map(|library| (library.to_string(), identity.to_string())));
    let mut total = 0;
    for (key, value) in &entries {
        let len = key.len() + 1 + value.len();
        if len > 255 {
            return Err(MdnsError::TooLarge(format!("{key}={value:.32}… is {len} bytes; an entry holds 255")));
        }
        total += 1 + len;
    }
    if total > MAX_TXT_BYTES {
        return Err(MdnsError::TooLarge(format!(
            "{} entries take {total} bytes; the record holds {MAX_TXT_BYTES}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// TXT keys naming the port of a listener on another transport than the record's own (QUIC):
/// `tcp=4434`. A peer listens on it at the addresses of the record.
pub const TRANSPORT_KEYS: [&str; 2] = ["tcp", "utp"];

/// The TXT entries for `record`'s other transports (at most one per transport, the first). They
/// are a few bytes each: the margin between [`MAX_TXT_BYTES`] and a packet holds them.
pub fn transport_txt(record: &Record) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, addr) in &record.transports {
        if TRANSPORT_KEYS.contains(name) && !out.iter().any(|(k, _)| k == name) {
            out.push((name.to_string(), addr.port().to_string()));
        }
    }
    out
}

/// The other transports a TXT record names, with their ports: known keys only, a port of 1 to
/// 65,535 in decimal, nothing else.
pub fn parse_transports<'a>(
    entries: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Vec<(&'static str, u16)> {
    let mut out = Vec::new();
    for (key, value) in entries {
        let Some(name) = TRANSPORT_KEYS.iter().find(|k| **k == key) else { continue };
        let port = value
            .filter(|v| v.len() <= 5)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u16>().ok());
        if let Some(port) = port.filter(|p| *p != 0)
            && !out.iter().any(|(n, _)| n == name)
        {
            out.push((*name, port));
        }
    }
    out
}

/// What a TXT record says about a peer: the known metadata keys (values as UTF-8, invalid
/// bytes replaced) and the libraries whose entry names this very identity. Anything else, and
/// any value over 255 bytes, is ignored; at most [`MAX_LIBRARIES`] libraries are read.
pub fn parse_txt<'a>(
    identity: &RemoteIdentity,
    entries: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> (BTreeMap<String, String>, BTreeSet<Uuid>) {
    let mut metadata = BTreeMap::new();
    let mut libraries = BTreeSet::new();
    let me = identity.to_string();
    for (key, value) in entries {
        // A TXT string holds 255 bytes: anything longer did not come from one.
        let Some(value) = value.filter(|v| v.len() <= 255) else { continue };
        if TXT_KEYS.contains(&key) {
            metadata.insert(key.to_owned(), String::from_utf8_lossy(value).into_owned());
        } else if let Ok(library) = Uuid::from_str(key) {
            if value == me.as_bytes() && libraries.len() < MAX_LIBRARIES {
                libraries.insert(library);
            }
        }
    }
    (metadata, libraries)
}

/// The property the `mdns_txt` fuzz target checks, also replayed over its saved corpus: `data`
/// read as TXT record data (length-prefixed strings, each `key=value`, `key` alone, or
/// `key=`) never makes [`parse_txt`] panic, yields only known keys, at most
/// [`MAX_LIBRARIES`] libraries and bounded values, and what it yields announces back
/// ([`txt_record`]) to a record that parses to the same thing.
#[doc(hidden)]
pub fn fuzz_txt(data: &[u8]) {
    let identity = crate::Identity::from_secret_bytes(&[7; 32]).to_remote_identity();
    let mut entries = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (string, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let (key, value) = match string.iter().position(|b| *b == b'=') {
            Some(at) => (&string[..at], Some(&string[at + 1..])),
            None => (string, None),
        };
        if let Ok(key) = std::str::from_utf8(key) {
            entries.push((key, value));
        }
    }
    let transports = parse_transports(entries.iter().copied());
    assert!(transports.len() <= TRANSPORT_KEYS.len() && transports.iter().all(|(_, port)| *port != 0));
    let (metadata, libraries) = parse_txt(&identity, entries);
    assert!(libraries.len() <= MAX_LIBRARIES);
    assert!(metadata.keys().all(|k| TXT_KEYS.contains(&k.as_str())));
    // Each byte of a value becomes at most one replacement character (3 bytes).
    assert!(metadata.values().all(|v| v.len() <= 3 * 255));
    let libraries_list: Vec<Uuid> = libraries.iter().copied().collect();
    if let Ok(txt) = txt_record(&identity, &metadata, &libraries_list) {
        let again = parse_txt(&identity, txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))));
        assert_eq!(again, (metadata, libraries), "a parsed record announces back to itself");
    }
}

/// A peer's libraries and when its record was last seen.
struct Seen {
    libraries: BTreeSet<Uuid>,
    at: std::time::Instant,
}

/// The mDNS discovery hook.
#[derive(Clone)]
pub struct MdnsDiscovery {
    inner: Arc<MdnsInner>,
}

struct MdnsInner {
    p2p: P2P,
    service_type: String,
    port: u16,
    mode: watch::Sender<DiscoveryMode>,
    /// The node's record as last published to this source (announced again when it changes).
    record: watch::Sender<Option<Record>>,
    /// Peers this hook reports, with their libraries and when their record was last seen.
    peers: Mutex<HashMap<RemoteIdentity, Seen>>,
    /// ContactsOnly records recognised, by full name.
    hashed: Mutex<HashMap<String, RemoteIdentity>>,
    evicted: AtomicU64,
    /// Contacts whose metadata is being fetched: one fetch per contact at a time, however
    /// many records resolve meanwhile.
    fetching: Mutex<std::collections::HashSet<RemoteIdentity>>,
    /// Goodbyes not honoured: the record came back within the grace period.
    goodbyes_ignored: AtomicU64,
    /// Goodbyes held back while the peer was connected.
    goodbyes_deferred: AtomicU64,
    /// Shared with the thread that drains the daemon's events (see [`drain`]).
    ignored: Arc<AtomicU64>,
    last_error: Mutex<Option<String>>,
    hook: HookTasks,
}

impl MdnsDiscovery {
    /// Starts LAN discovery for `p2p`, announcing QUIC port `port`, in `mode`.
    pub fn spawn(p2p: &P2P, port: u16, mode: DiscoveryMode) -> Self {
        let hook = Self {
            inner: Arc::new(MdnsInner {
                p2p: p2p.clone(),
                service_type: format!("_{}._udp.local.", p2p.app_name()),
                port,
                mode: watch::Sender::new(mode),
                record: watch::Sender::new(None),
                peers: Mutex::default(),
                hashed: Mutex::default(),
                ignored: Arc::default(),
                evicted: AtomicU64::new(0),
                fetching: Mutex::default(),
                goodbyes_ignored: AtomicU64::new(0),
                goodbyes_deferred: AtomicU64::new(0),
                last_error: Mutex::default(),
                hook: HookTasks::default(),
            }),
        };
        let weak = p2p.downgrade();
        // Another hook may have registered it already; one handler serves them all.
        let _ = p2p.register_protocol(METADATA_PROTOCOL, move |stream| serve_metadata(weak.clone(), stream));
        // Registered first: the record is published before the first announcement.
        p2p.register_discovery(Arc::new(hook.clone()));
        let task = hook.inner.hook.tasks.track_future(hook.clone().run());
        p2p.spawn(task);
        hook
    }

    /// The current mode.
    pub fn mode(&self) -> DiscoveryMode {
        *self.inner.mode.borrow()
    }

    /// Switches mode; leaving `Enabled` says goodbye and forgets the peers mDNS found.
    pub fn set_mode(&self, mode: DiscoveryMode) {
        self.inner.mode.send_replace(mode);
    }

    /// The service type browsed and announced, `_{app_name}._udp.local.`.
    pub fn service_type(&self) -> &str {
        &self.inner.service_type
    }

    /// Peers discovered on the LAN that announce `library`.
    pub fn peers_in_library(&self, library: &Uuid) -> Vec<RemoteIdentity> {
        let peers = self.inner.peers.lock().expect("peer lock poisoned");
        let mut found: Vec<_> =
            peers.iter().filter(|(_, seen)| seen.libraries.contains(library)).map(|(id, _)| *id).collect();
        found.sort();
        found
    }

    /// The libraries `remote` announces (empty if mDNS does not know it). A claim, never proof of
    /// membership: anyone on the LAN can announce any library UUID (issue 14, point 8; signed
    /// membership comes with the library tunnel).
    pub fn libraries_of(&self, remote: &RemoteIdentity) -> Vec<Uuid> {
        let peers = self.inner.peers.lock().expect("peer lock poisoned");
        peers.get(remote).map(|seen| seen.libraries.iter().copied().collect()).unwrap_or_default()
    }

    /// Records ignored so far: instance names that are not identities, records beyond
    /// [`MAX_PEERS`], records that arrived while the hook's queue was full (a flood).
    pub fn ignored(&self) -> u64 {
        self.inner.ignored.load(Ordering::Relaxed)
    }

    /// Peers dropped from a full table to make room for a newer record.
    pub fn evicted(&self) -> u64 {
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// Peers currently reported by this hook.
    pub fn peer_count(&self) -> usize {
        self.inner.peers.lock().expect("peer lock poisoned").len()
    }

    /// Why the last announcement was refused, if it was (metadata too large for a TXT record):
    /// the previous announcement then stays.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().expect("error lock poisoned").clone()
    }

    /// The supervisor: runs a daemon while enabled, none while disabled.
    async fn run(self) {
        let mut mode = self.inner.mode.subscribe();
        loop {
            if self.inner.hook.cancel.is_cancelled() {
                return;
            }
            let current = *mode.borrow_and_update();
            self.inner.p2p.set_contacts_only(current == DiscoveryMode::ContactsOnly);
            if current != DiscoveryMode::Disabled {
                match self.enabled(&mut mode, current).await {
                    // Shut down or switched mode: look again.
                    Ok(()) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "mDNS discovery stopped until the mode changes");
                        *self.inner.last_error.lock().expect("error lock poisoned") = Some(error.to_string());
                    }
                }
            }
            tokio::select! {
                _ = self.inner.hook.cancel.cancelled() => return,
                changed = mode.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Announces and browses until the mode changes or the node shuts down; then says goodbye
    /// and stops the daemon.
    async fn enabled(
        &self,
        mode: &mut watch::Receiver<DiscoveryMode>,
        current: DiscoveryMode,
    ) -> Result<(), MdnsError> {
        let daemon = ServiceDaemon::new().map_err(|e| MdnsError::Daemon(e.to_string()))?;
        let mut record = self.inner.record.subscribe();
        // One salt per session: records of different sessions cannot be linked.
        let salt = (current == DiscoveryMode::ContactsOnly).then(|| {
            let mut salt = [0u8; 10];
            getrandom::fill(&mut salt).expect("the system random source works");
            salt
        });
        let mut registered = self.announce(&daemon, Vec::new(), salt.as_ref());
        // ContactsOnly announces one record per contact: a changed contact list is announced
        // at the next check.
        let mut announced_contacts = self.inner.p2p.contacts();
        let mut contacts_check = tokio::time::interval(CONTACTS_CHECK);
        let browse = || {
            let browser = daemon.browse(&self.inner.service_type).map_err(|e| MdnsError::Daemon(e.to_string()))?;
            drain(browser, self.inner.ignored.clone())
        };
        let result = match browse() {
            Ok(mut browser) => loop {
                tokio::select! {
                    _ = self.inner.hook.cancel.cancelled() => break Ok(()),
                    _ = mode.changed() => break Ok(()),
                    event = browser.recv() => match event {
                        Some(event) => self.handle(event),
                        // The daemon ended the subscription (it does when its channel fills
                        // up, which the drain thread should prevent): subscribe again, at
                        // most once a second, unless the daemon is gone.
                        None => {
                            tracing::warn!("mDNS browser stopped; subscribing again");
                            tokio::select! {
                                _ = self.inner.hook.cancel.cancelled() => break Ok(()),
                                _ = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
                            }
                            match browse() {
                                Ok(again) => browser = again,
                                Err(e) => break Err(e),
                            }
                        }
                    },
                    // The node published a new record (metadata or libraries changed).
                    Ok(()) = record.changed() => {
                        registered = self.announce(&daemon, registered, salt.as_ref());
                    }
                    _ = contacts_check.tick(), if salt.is_some() => {
                        let contacts = self.inner.p2p.contacts();
                        if contacts != announced_contacts {
                            registered = self.announce(&daemon, registered, salt.as_ref());
                            announced_contacts = contacts;
                        }
                    }
                }
            },
            Err(e) => Err(e),
        };
        // Goodbye: unregistering sends the records with TTL 0; wait until they are out.
        for fullname in registered {
            if let Ok(status) = daemon.unregister(&fullname) {
                let _ = tokio::time::timeout(GOODBYE_WAIT, status.recv_async()).await;
            }
        }
        if let Ok(status) = daemon.shutdown() {
            let _ = tokio::time::timeout(GOODBYE_WAIT, status.recv_async()).await;
        }
        self.inner.hashed.lock().expect("hashed lock poisoned").clear();
        let forgotten: Vec<RemoteIdentity> =
            self.inner.peers.lock().expect("peer lock poisoned").drain().map(|(id, _)| id).collect();
        for id in forgotten {
            self.inner.p2p.expired(SOURCE, id);
        }
        result
    }

    /// (Re-)registers this node's service (in ContactsOnly mode, one record per contact, up to
    /// [`MAX_ANNOUNCED_CONTACTS`]); on refusal keeps the previous registrations.
    fn announce(&self, daemon: &ServiceDaemon, registered: Vec<String>, salt: Option<&[u8; 10]>) -> Vec<String> {
        let p2p = &self.inner.p2p;
        let identity = p2p.id();
        let record = self.inner.record.borrow().clone().unwrap_or_else(|| p2p.record());
        // ContactsOnly: a tag only that contact can compute instead of the identity (in the
        // instance and host names), and nothing in TXT but the salt.
        let announcements: Vec<(String, Txt)> = match salt {
            Some(salt) => p2p
                .contacts()
                .into_iter()
                .take(MAX_ANNOUNCED_CONTACTS)
                .map(|contact| {
                    let secret = p2p.identity().contact_secret(&contact);
                    let txt = vec![(SALT_KEY.to_owned(), data_encoding::HEXLOWER.encode(salt))];
                    (contact_tag(&secret, &identity, salt), Ok(txt))
                })
                .collect(),
            None => {
                let txt = txt_record(&identity, &record.metadata, &record.libraries).map(|mut txt| {
                    txt.extend(transport_txt(&record));
                    txt
                });
                vec![(identity.to_string(), txt)]
            }
        };
        let attempt: Result<Vec<String>, MdnsError> =
            announcements.into_iter().map(|(instance, txt)| self.register_one(daemon, &instance, txt)).collect();
        match attempt {
            Ok(fullnames) => {
                *self.inner.last_error.lock().expect("error lock poisoned") = None;
                // Records no longer announced (a contact removed) say goodbye.
                for old in registered.iter().filter(|old| !fullnames.contains(old)) {
                    let _ = daemon.unregister(old);
                }
                fullnames
            }
            Err(error) => {
                tracing::error!(%error, "not announcing the new metadata");
                *self.inner.last_error.lock().expect("error lock poisoned") = Some(error.to_string());
                registered
            }
        }
    }

    /// Registers one record: `instance` with `txt`, at this node's port; its full name.
    fn register_one(&self, daemon: &ServiceDaemon, instance: &str, txt: Txt) -> Result<String, MdnsError> {
        txt.and_then(|txt| {
            let host = format!("{instance}.local.");
            let mut info = ServiceInfo::new(
                &self.inner.service_type,
                instance,
                &host,
                "",
                self.inner.port,
                txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>().as_slice(),
            )
            .map_err(|e| MdnsError::TooLarge(e.to_string()))?
            .enable_addr_auto();
            // Probing (RFC 6762 section 8.1) guards against two hosts picking one name; an
            // instance name here is the node's public key, so another holder of it is the same
            // node. Skipping it saves the 750 ms of probes before the first announcement.
            info.set_requires_probe(false);
            let fullname = info.get_fullname().to_owned();
            daemon.register(info).map_err(|e| MdnsError::Daemon(e.to_string()))?;
            Ok(fullname)
        })
    }

    fn handle(&self, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let contact = self.recognise(&service);
                let Some(id) = contact.or_else(|| self.identity_of(&service.fullname)) else { return };
                if id == self.inner.p2p.id() {
                    return;
                }
                let entries: Vec<_> = service.txt_properties.iter().map(|p| (p.key(), p.val())).collect();
                let (metadata, libraries) = parse_txt(&id, entries.iter().copied());
                let transports = parse_transports(entries);
                let evicted = {
                    let mut peers = self.inner.peers.lock().expect("peer lock poisoned");
                    // Full: the peer whose record was seen longest ago and that is not
                    // connected makes room, so a flood of fake records cannot lock real peers
                    // out (the newest record always gets in) nor grow the table.
                    let evict = (!peers.contains_key(&id) && peers.len() >= MAX_PEERS)
                        .then(|| {
                            peers
                                .iter()
                                .filter(|(peer, _)| self.inner.p2p.open_connection(peer).is_none())
                                .min_by_key(|(_, seen)| seen.at)
                                .map(|(peer, _)| *peer)
                        })
                        .flatten();
                    if let Some(old) = evict {
                        peers.remove(&old);
                    }
                    if peers.len() >= MAX_PEERS && !peers.contains_key(&id) {
                        // Every entry is a connected peer: nothing to give up.
                        self.inner.ignored.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    peers.insert(id, Seen { libraries, at: std::time::Instant::now() });
                    evict
                };
                if let Some(old) = evicted {
                    self.inner.evicted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%old, "mDNS peer table full; the stalest record made room");
                    self.inner.p2p.expired(SOURCE, old);
                }
                let addrs: Vec<SocketAddr> = service
                    .addresses
                    .iter()
                    .map(|ip| ip.to_ip_addr())
                    .filter(|ip| dialable(*ip))
                    .map(|ip| SocketAddr::new(ip, service.port))
                    .collect();
                if service.port == 0 || addrs.is_empty() {
                    self.inner.ignored.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                for (name, port) in transports {
                    let on = addrs.iter().map(|a| SocketAddr::new(a.ip(), port));
                    self.inner.p2p.discovered_on(name, id, on);
                }
                self.inner.p2p.discovered(SOURCE, id, addrs, metadata);
                let first_fetch =
                    contact.is_some() && self.inner.fetching.lock().expect("fetch lock poisoned").insert(id);
                if first_fetch {
                    // A contact in ContactsOnly mode: ask it for its metadata (once at a time).
                    let this = self.clone();
                    let task = self.inner.hook.tasks.track_future(async move {
                        let cancel = this.inner.hook.cancel.clone();
                        cancel.run_until_cancelled(this.fetch_metadata(id)).await;
                        this.inner.fetching.lock().expect("fetch lock poisoned").remove(&id);
                    });
                    self.inner.p2p.spawn(task);
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let known = self.inner.hashed.lock().expect("hashed lock poisoned").get(&fullname).copied();
                let Some(id) = known.or_else(|| self.identity_of(&fullname)) else { return };
                // Anyone on the LAN can send a goodbye for any name. The record goes a second
                // later unless it comes back meanwhile (RFC 6762, section 10.1: the rescue
                // window); a connected peer is there whatever a goodbye says, so for it the
                // goodbye waits until its connections have closed.
                let said = std::time::Instant::now();
                let this = self.clone();
                let task = self.inner.hook.tasks.track_future(async move {
                    let cancel = this.inner.hook.cancel.clone();
                    cancel
                        .run_until_cancelled(async {
                            tokio::time::sleep(GOODBYE_GRACE).await;
                            loop {
                                let connection = this.inner.p2p.open_connection(&id);
                                let seen = this.inner.peers.lock().expect("peer lock poisoned").get(&id).map(|s| s.at);
                                match goodbye_verdict(connection.is_some(), seen, said) {
                                    Goodbye::WaitForClose => {
                                        this.inner.goodbyes_deferred.fetch_add(1, Ordering::Relaxed);
                                        if let Some(connection) = connection {
                                            connection.closed().await;
                                        }
                                    }
                                    Goodbye::Ignore => {
                                        this.inner.goodbyes_ignored.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    Goodbye::Honour => {
                                        this.goodbye(&fullname, id, said);
                                        break;
                                    }
                                }
                            }
                        })
                        .await;
                });
                self.inner.p2p.spawn(task);
            }
            _ => {}
        }
    }

    /// Honours a goodbye for `id` (record `fullname`) said at `said`, unless its record was
    /// seen again since (checked again under the lock).
    fn goodbye(&self, fullname: &str, id: RemoteIdentity, said: std::time::Instant) {
        {
            let mut peers = self.inner.peers.lock().expect("peer lock poisoned");
            if goodbye_verdict(false, peers.get(&id).map(|s| s.at), said) != Goodbye::Honour {
                return;
            }
            peers.remove(&id);
        }
        self.inner.hashed.lock().expect("hashed lock poisoned").remove(fullname);
        self.inner.p2p.expired(SOURCE, id);
    }

    /// Goodbyes not honoured so far: the record came back within the grace period.
    pub fn goodbyes_ignored(&self) -> u64 {
        self.inner.goodbyes_ignored.load(Ordering::Relaxed)
    }

    /// Goodbyes held back because the peer was connected (honoured, if still due, once its
    /// connections close).
    pub fn goodbyes_deferred(&self) -> u64 {
        self.inner.goodbyes_deferred.load(Ordering::Relaxed)
    }

    /// For a ContactsOnly record (a salt in TXT), the contact that announced it for us: the one
    /// whose tag, keyed with the secret we share, its instance name is.
    fn recognise(&self, service: &mdns_sd::ResolvedService) -> Option<RemoteIdentity> {
        let salt = service.txt_properties.get_property_val(SALT_KEY)??;
        let salt = data_encoding::HEXLOWER.decode(salt).ok()?;
        let instance = service.fullname.strip_suffix(&self.inner.service_type)?.strip_suffix('.')?;
        let me = self.inner.p2p.identity();
        let contact =
            self.inner.p2p.contacts().into_iter().find(|c| contact_tag(&me.contact_secret(c), c, &salt) == instance)?;
        self.inner.hashed.lock().expect("hashed lock poisoned").insert(service.fullname.clone(), contact);
        Some(contact)
    }

    /// Asks a contact for its metadata over [`METADATA_PROTOCOL`]; it answers only if we are
    /// its contact too. What it says is reported like a TXT record's content.
    ///
    /// A failed exchange (the connection lost, as when both contacts dial each other at the
    /// same moment and one connection gives way) is tried again, [`METADATA_TRIES`] times in
    /// all; a refusal (an empty answer) is final.
    async fn fetch_metadata(&self, contact: RemoteIdentity) {
        use tokio::io::AsyncReadExt;
        let mut body = Vec::new();
        for attempt in 0..METADATA_TRIES {
            if attempt > 0 {
                tokio::time::sleep(METADATA_RETRY * attempt).await;
            }
            let Ok(mut stream) = self.inner.p2p.connect(contact, METADATA_PROTOCOL).await else { continue };
            let _ = stream.finish();
            if (&mut stream).take(MAX_METADATA_REPLY).read_to_end(&mut body).await.is_ok() {
                break;
            }
            body.clear();
        }
        if body.is_empty() {
            tracing::debug!(%contact, "the contact did not share its metadata");
            return;
        }
        let Ok(reply) = warren_proto::decode_from_slice::<MetadataReply>(&body) else { return };
        let entries = reply.metadata.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        let (metadata, _) = parse_txt(&contact, entries);
        let libraries: BTreeSet<Uuid> = reply.libraries.into_iter().take(MAX_LIBRARIES).collect();
        if let Some(seen) = self.inner.peers.lock().expect("peer lock poisoned").get_mut(&contact) {
            seen.libraries = libraries;
        }
        self.inner.p2p.discovered(SOURCE, contact, [], metadata);
    }

    /// The identity an instance name stands for; other names are counted and ignored.
    fn identity_of(&self, fullname: &str) -> Option<RemoteIdentity> {
        let instance = fullname.strip_suffix(&self.inner.service_type)?.strip_suffix('.')?;
        match RemoteIdentity::from_str(instance) {
            Ok(id) => Some(id),
            Err(_) => {
                self.inner.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(instance, "mDNS instance name is not an identity; ignored");
                None
            }
        }
    }
}

/// mDNS publishes the record (in `Enabled` mode its TXT keys and libraries; in `ContactsOnly` a
/// salted tag) and pushes the peers it hears; it does not resolve on demand (a query would only
/// repeat what browsing already found).
impl Discovery for MdnsDiscovery {
    fn publish(&self, record: &Record) {
        self.inner.record.send_if_modified(|published| {
            let changed = published.as_ref() != Some(record);
            if changed {
                *published = Some(record.clone());
            }
            changed
        });
    }
}

impl Hook for MdnsDiscovery {
    fn name(&self) -> &str {
        SOURCE
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.hook.stop())
    }
}

/// Serves [`METADATA_PROTOCOL`]: the metadata (TXT keys) and libraries, to contacts only;
/// anyone else gets an empty answer.
async fn serve_metadata(node: crate::node::WeakP2P, mut stream: crate::Stream) {
    use tokio::io::AsyncWriteExt;
    let Some(p2p) = node.upgrade() else { return };
    if p2p.is_contact(&stream.remote()) {
        let metadata = p2p.metadata().into_iter().filter(|(k, _)| TXT_KEYS.contains(&k.as_str())).collect();
        let reply = MetadataReply { metadata, libraries: p2p.libraries() };
        if let Ok(body) = warren_proto::encode_to_vec(&reply) {
            let _ = stream.write_all(&body).await;
        }
    }
    let _ = stream.finish();
}

/// Moves browse events from the daemon into a queue of this hook's, on a thread of its own.
///
/// mdns-sd ends a subscription for good when its event channel (1,000 events) is full, which a
/// flood of records does as soon as the hook falls behind; LAN discovery would then be deaf
/// until the mode changes. The thread does nothing but move events, so it keeps up with the
/// daemon; when the hook's own queue ([`EVENT_QUEUE`]) is full, the record is dropped and
/// counted as ignored, as a busy network would drop it, and mDNS's repeated announcements and
/// queries bring real peers back once the flood has passed. The thread ends with the
/// subscription or when the hook stops listening.
fn drain(
    browser: mdns_sd::Receiver<ServiceEvent>,
    ignored: Arc<AtomicU64>,
) -> Result<tokio::sync::mpsc::Receiver<ServiceEvent>, MdnsError> {
    let (queue, events) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    std::thread::Builder::new()
        .name("warren-mdns-events".into())
        .spawn(move || {
            for event in browser.iter() {
                match queue.try_send(event) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        ignored.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        })
        .map_err(|e| MdnsError::Daemon(format!("cannot start the event thread: {e}")))?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    /// Issue 14, point 5: mDNS addresses were used unfiltered; a LAN neighbour could point a
    /// node's dials at its own loopback services, a multicast group or the broadcast address.
    #[test]
    fn only_dialable_lan_addresses_are_taken_from_records() {
        for ok in ["192.168.1.20", "10.0.0.7", "fd00::5", "2001:db8::1", "::ffff:192.168.1.2"] {
            assert!(dialable(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::fb",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!dialable(bad.parse().unwrap()), "{bad}");
        }
    }

    /// Issue 14, point 5: anyone on the LAN can send a goodbye for any record, and one expired
    /// a real peer at once, connected or not. Now a goodbye is honoured only after the grace
    /// second, only if the record did not come back, and for a connected peer only once its
    /// connections have closed.
    #[test]
    fn goodbyes_wait_for_the_rescue_window_and_for_connections_to_close() {
        let said = std::time::Instant::now();
        let before = said - Duration::from_secs(5);
        let after = said + Duration::from_millis(300);
        assert_eq!(goodbye_verdict(true, Some(before), said), Goodbye::WaitForClose, "a connected peer stays");
        assert_eq!(goodbye_verdict(false, Some(before), said), Goodbye::Honour, "a silent record goes");
        assert_eq!(goodbye_verdict(false, Some(after), said), Goodbye::Ignore, "a rescued record stays");
        assert_eq!(goodbye_verdict(false, None, said), Goodbye::Ignore, "already gone");
    }

    #[test]
    fn txt_records_round_trip_and_are_never_cut() {
        let id = Identity::generate().to_remote_identity();
        let metadata: BTreeMap<String, String> =
            [("name", "desk"), ("os", "linux"), ("device_model", "pc"), ("version", "0.1.0"), ("secret", "x")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let libraries = [Uuid::new_v4(), Uuid::new_v4()];
        let txt = txt_record(&id, &metadata, &libraries).unwrap();
        assert_eq!(txt.len(), 6, "four metadata keys and two libraries, nothing else: {txt:?}");
        let entries = txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        let (parsed, libs) = parse_txt(&id, entries);
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed["name"], "desk");
        assert_eq!(libs, libraries.into_iter().collect());

        let mut huge = metadata.clone();
        huge.insert("name".into(), "n".repeat(300));
        let error = txt_record(&id, &huge, &[]).unwrap_err().to_string();
        assert!(error.contains("an entry holds 255"), "{error}");
        let many: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
        let error = txt_record(&id, &metadata, &many).unwrap_err().to_string();
        assert!(error.contains("the record holds 1300"), "{error}");
    }

    #[test]
    fn hostile_txt_entries_are_ignored_or_replaced_never_trusted() {
        let id = Identity::generate().to_remote_identity();
        let other = Identity::generate().to_remote_identity().to_string();
        let library = Uuid::new_v4().to_string();
        let foreign = Uuid::new_v4().to_string();
        let big = vec![b'x'; 100_000];
        let me = id.to_string();
        let entries: Vec<(&str, Option<&[u8]>)> = vec![
            ("name", Some(&[0xff, 0xfe, b'a'][..])),
            ("os", None),
            ("version", Some(&big[..])),
            (library.as_str(), Some(me.as_bytes())),
            (foreign.as_str(), Some(other.as_bytes())),
            ("not-a-uuid", Some(me.as_bytes())),
        ];
        let (metadata, libraries) = parse_txt(&id, entries);
        assert_eq!(metadata["name"], "\u{fffd}\u{fffd}a", "invalid UTF-8 replaced");
        assert!(!metadata.contains_key("os"), "a key without a value says nothing");
        assert!(!metadata.contains_key("version"), "longer than any TXT string can be: ignored");
        assert_eq!(libraries.len(), 1, "only entries naming this identity count");
    }

    #[test]
    fn other_transports_go_in_txt_as_ports_and_hostile_values_are_ignored() {
        let id = crate::Identity::generate().to_remote_identity();
        let record = Record {
            id,
            addrs: vec!["192.168.1.2:4433".parse().unwrap()],
            transports: vec![
                ("tcp", "0.0.0.0:4434".parse().unwrap()),
                ("utp", "0.0.0.0:4435".parse().unwrap()),
                ("tcp", "[::]:9999".parse().unwrap()),
            ],
            metadata: BTreeMap::new(),
            libraries: Vec::new(),
        };
        let txt = transport_txt(&record);
        assert_eq!(txt, [("tcp".to_string(), "4434".to_string()), ("utp".to_string(), "4435".to_string())]);
        let parsed = parse_transports(txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))));
        assert_eq!(parsed, [("tcp", 4434), ("utp", 4435)]);
        let hostile: [(&str, Option<&[u8]>); 7] = [
            ("tcp", Some(b"0")),
            ("tcp", Some(b"65536")),
            ("tcp", Some(b"-1")),
            ("utp", Some(b"000000080")),
            ("utp", None),
            ("quic", Some(b"1")),
            ("tcp", Some(b"\xff")),
        ];
        assert_eq!(parse_transports(hostile), []);
        // The first valid one of a kind counts.
        assert_eq!(parse_transports([("tcp", Some(&b"80"[..])), ("tcp", Some(&b"81"[..]))]), [("tcp", 80)]);
    }
}
