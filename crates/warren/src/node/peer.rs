//! The peer table: what this node knows about other nodes, and who told it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use serde::Serialize;

use super::event::{Direction, Event};
use crate::RemoteIdentity;

/// Addresses one source may vouch for, for one peer: a longer report keeps its first ones. A
/// source (an mDNS record, say) cannot make dials to a peer try a hundred dead addresses.
pub const MAX_ADDRS_PER_SOURCE: usize = 16;

/// Addresses known for one peer, from all sources together; past it new ones are dropped
/// until some expire.
pub const MAX_ADDRS_PER_PEER: usize = 32;

/// Whether a peer is connected right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectionState {
    /// No open connection.
    Disconnected,
    /// At least one open connection.
    Connected {
        /// The address of the newest connection.
        addr: SocketAddr,
        /// Who dialled the newest connection.
        direction: Direction,
        /// How many connections are open (two peers dialling each other at once get two).
        connections: usize,
    },
}

/// Everything known about one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    /// The peer.
    pub remote: RemoteIdentity,
    /// Candidate addresses, each with the sources (hook names) that vouch for it. An address
    /// is forgotten only when no source vouches for it any more.
    pub addrs: BTreeMap<SocketAddr, BTreeSet<String>>,
    /// Candidate addresses on transports other than QUIC, by transport name (`"tcp"`,
    /// `"utp"`): what [`P2P::discovered_on`](crate::P2P::discovered_on) was told last for each,
    /// at most [`MAX_ADDRS_PER_SOURCE`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub transports: BTreeMap<String, Vec<SocketAddr>>,
    /// The newest metadata seen, from a hello or from discovery.
    pub metadata: BTreeMap<String, String>,
    /// Connection state.
    pub state: ConnectionState,
}

impl PeerInfo {
    fn new(remote: RemoteIdentity) -> Self {
        Self {
            remote,
            addrs: BTreeMap::new(),
            transports: BTreeMap::new(),
            metadata: BTreeMap::new(),
            state: ConnectionState::Disconnected,
        }
    }

    /// The candidate addresses, in a stable order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.addrs.keys().copied().collect()
    }

    /// The candidate addresses on `transport` (`"quic"` gives [`PeerInfo::addresses`]).
    pub fn addresses_on(&self, transport: &str) -> Vec<SocketAddr> {
        match transport {
            "quic" => self.addresses(),
            other => self.transports.get(other).cloned().unwrap_or_default(),
        }
    }

    fn is_forgettable(&self) -> bool {
        self.addrs.is_empty() && self.transports.is_empty() && self.state == ConnectionState::Disconnected
    }
}

/// The table itself. Every method returns the event to broadcast, if any, so the caller can send
/// it after releasing the lock.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    peers: HashMap<RemoteIdentity, PeerInfo>,
}

impl PeerTable {
    pub(crate) fn get(&self, remote: &RemoteIdentity) -> Option<&PeerInfo> {
        self.peers.get(remote)
    }

    pub(crate) fn all(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<_> = self.peers.values().cloned().collect();
        peers.sort_by_key(|p| p.remote);
        peers
    }

    /// `source` vouches for `remote` at `addrs` with `metadata` (an empty map leaves the known
    /// metadata alone). A non-empty `addrs` replaces what `source` said before (its first
    /// [`MAX_ADDRS_PER_SOURCE`] count, and the peer keeps [`MAX_ADDRS_PER_PEER`] at most); an
    /// empty one leaves the addresses alone (a metadata-only report). Returns `PeerDiscovered`
    /// if anything changed.
    pub(crate) fn discovered(
        &mut self,
        source: &str,
        remote: RemoteIdentity,
        addrs: impl IntoIterator<Item = SocketAddr>,
        metadata: BTreeMap<String, String>,
    ) -> Option<Event> {
        let report = one_report(addrs);
        let peer = self.peers.entry(remote).or_insert_with(|| PeerInfo::new(remote));
        let mut changed = false;
        if !report.is_empty() {
            peer.addrs.retain(|addr, sources| {
                if !report.contains(addr) {
                    changed |= sources.remove(source);
                }
                !sources.is_empty()
            });
        }
        for addr in report {
            if peer.addrs.len() >= MAX_ADDRS_PER_PEER && !peer.addrs.contains_key(&addr) {
                continue;
            }
            changed |= peer.addrs.entry(addr).or_default().insert(source.to_owned());
        }
        if !metadata.is_empty() && peer.metadata != metadata {
            peer.metadata = metadata.clone();
            changed = true;
        }
        changed.then(|| Event::PeerDiscovered { remote, source: source.to_owned(), addrs: peer.addresses(), metadata })
    }

    /// `remote` listens on `transport` (not QUIC) at `addrs`: replaces what was known for that
    /// transport (the first [`MAX_ADDRS_PER_SOURCE`]; none forgets them). True if it changed.
    pub(crate) fn discovered_on(&mut self, transport: &str, remote: RemoteIdentity, addrs: Vec<SocketAddr>) -> bool {
        let report = one_report(addrs);
        let peer = self.peers.entry(remote).or_insert_with(|| PeerInfo::new(remote));
        let before = peer.transports.get(transport).cloned().unwrap_or_default();
        if report.is_empty() {
            peer.transports.remove(transport);
        } else {
            peer.transports.insert(transport.to_owned(), report.clone());
        }
        if peer.is_forgettable() {
            self.peers.remove(&remote);
        }
        before != report
    }

    /// `source` no longer vouches for `remote`. Returns `PeerExpired` if it did before.
    pub(crate) fn expired(&mut self, source: &str, remote: RemoteIdentity) -> Option<Event> {
        let peer = self.peers.get_mut(&remote)?;
        let mut vouched = false;
        peer.addrs.retain(|_, sources| {
            vouched |= sources.remove(source);
            !sources.is_empty()
        });
        let remaining_addrs = peer.addresses();
        if peer.is_forgettable() {
            self.peers.remove(&remote);
        }
        vouched.then(|| Event::PeerExpired { remote, source: source.to_owned(), remaining_addrs })
    }

    /// Records the connection count of `remote` after a change. `newest` is the newest open
    /// connection's address and direction; `metadata`, its hello's (an empty map leaves the
    /// known metadata alone, as in [`PeerTable::discovered`]).
    pub(crate) fn set_connected(
        &mut self,
        remote: RemoteIdentity,
        connections: usize,
        newest: Option<(SocketAddr, Direction)>,
        metadata: Option<&BTreeMap<String, String>>,
    ) {
        let peer = self.peers.entry(remote).or_insert_with(|| PeerInfo::new(remote));
        // An empty hello (a node in ContactsOnly mode sends none) leaves what is known alone:
        // metadata a contact shared over meta/1 must survive the contact's next connection.
        if let Some(metadata) = metadata.filter(|m| !m.is_empty()) {
            peer.metadata = metadata.clone();
        }
        peer.state = match newest {
            Some((addr, direction)) if connections > 0 => ConnectionState::Connected { addr, direction, connections },
            _ => ConnectionState::Disconnected,
        };
        if peer.is_forgettable() {
            self.peers.remove(&remote);
        }
    }
}

/// One source's report: its first [`MAX_ADDRS_PER_SOURCE`] distinct addresses, in order.
fn one_report(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut report: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        if report.len() == MAX_ADDRS_PER_SOURCE {
            break;
        }
        if !report.contains(&addr) {
            report.push(addr);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn one_peer_many_sources_keeps_what_others_still_vouch_for() {
        let mut table = PeerTable::default();
        let remote = Identity::generate().to_remote_identity();
        let meta: BTreeMap<_, _> = [("name".to_string(), "bob".to_string())].into();
        assert!(table.discovered("mdns", remote, [addr(1), addr(2)], meta.clone()).is_some());
        assert!(table.discovered("manual", remote, [addr(2), addr(3)], BTreeMap::new()).is_some());
        // Nothing new: no event.
        assert_eq!(table.discovered("manual", remote, [addr(3), addr(2)], BTreeMap::new()), None);

        let event = table.expired("mdns", remote).unwrap();
        assert_eq!(
            event,
            Event::PeerExpired { remote, source: "mdns".into(), remaining_addrs: vec![addr(2), addr(3)] }
        );
        let peer = table.get(&remote).unwrap();
        assert_eq!(peer.metadata, meta);
        assert_eq!(peer.addrs[&addr(2)], BTreeSet::from(["manual".to_string()]));
        // Expiring a source that never vouched says nothing.
        assert_eq!(table.expired("mdns", remote), None);
        // The last source going forgets the disconnected peer.
        assert!(table.expired("manual", remote).is_some());
        assert!(table.get(&remote).is_none());
    }

    /// Issue 14, point 5: addresses piled up without limit, and a source's new report added to
    /// its old one instead of replacing it.
    #[test]
    fn a_source_report_replaces_its_last_and_addresses_are_capped() {
        let mut table = PeerTable::default();
        let remote = Identity::generate().to_remote_identity();
        table.discovered("manual", remote, [addr(1)], BTreeMap::new());
        table.discovered("mdns", remote, [addr(1), addr(2)], BTreeMap::new());
        // mDNS now says 3 only: 2 goes, 1 stays (manual still vouches for it).
        assert!(table.discovered("mdns", remote, [addr(3)], BTreeMap::new()).is_some());
        assert_eq!(table.get(&remote).unwrap().addresses(), [addr(1), addr(3)]);
        // A metadata-only report keeps the addresses.
        let meta: BTreeMap<_, _> = [("name".to_string(), "bob".to_string())].into();
        table.discovered("mdns", remote, [], meta);
        assert_eq!(table.get(&remote).unwrap().addresses(), [addr(1), addr(3)]);

        // 10,000 addresses in one report: the first 16 count.
        table.discovered("mdns", remote, (1000..11_000).map(addr), BTreeMap::new());
        let peer = table.get(&remote).unwrap();
        assert_eq!(peer.addrs.len(), 1 + MAX_ADDRS_PER_SOURCE, "manual's one and mDNS's first 16");
        assert!(peer.addrs.contains_key(&addr(1000)) && !peer.addrs.contains_key(&addr(1016)));
        // Many sources: the peer keeps 32 in all, and a source's report still replaces its own.
        for source in 0..10 {
            let base = 20_000 + source * 100;
            table.discovered(&format!("s{source}"), remote, (base..base + 16).map(addr), BTreeMap::new());
        }
        assert_eq!(table.get(&remote).unwrap().addrs.len(), MAX_ADDRS_PER_PEER);
        table.expired("mdns", remote);
        table.discovered("s0", remote, [addr(7)], BTreeMap::new());
        let peer = table.get(&remote).unwrap();
        assert!(peer.addrs.len() <= MAX_ADDRS_PER_PEER);
        assert!(peer.addrs.contains_key(&addr(7)) && !peer.addrs.contains_key(&addr(20_000)));
    }

    #[test]
    fn connected_peer_is_kept_without_addresses() {
        let mut table = PeerTable::default();
        let remote = Identity::generate().to_remote_identity();
        table.set_connected(remote, 1, Some((addr(9), Direction::Inbound)), None);
        assert!(matches!(table.get(&remote).unwrap().state, ConnectionState::Connected { connections: 1, .. }));
        table.set_connected(remote, 0, None, None);
        assert!(table.get(&remote).is_none());
    }

    /// Two contacts in ContactsOnly mode fetch each other's metadata at once: the second
    /// connection's empty hello must not wipe what the first one's exchange brought (it did,
    /// now and then, in the LAN test).
    #[test]
    fn an_empty_hello_keeps_known_metadata_and_a_full_one_replaces_it() {
        let mut table = PeerTable::default();
        let remote = Identity::generate().to_remote_identity();
        let shared: BTreeMap<_, _> = [("name".to_string(), "b".to_string())].into();
        table.set_connected(remote, 1, Some((addr(9), Direction::Outbound)), Some(&BTreeMap::new()));
        table.discovered("mdns", remote, [], shared.clone());
        table.set_connected(remote, 2, Some((addr(9), Direction::Inbound)), Some(&BTreeMap::new()));
        assert_eq!(table.get(&remote).unwrap().metadata, shared);
        let renamed: BTreeMap<_, _> = [("name".to_string(), "b2".to_string())].into();
        table.set_connected(remote, 3, Some((addr(9), Direction::Inbound)), Some(&renamed));
        assert_eq!(table.get(&remote).unwrap().metadata, renamed);
    }
}
