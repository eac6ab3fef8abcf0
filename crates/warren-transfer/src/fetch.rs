//! The receiver's plan, as a state machine without I/O: which peer is asked for what, what is
//! verified, and what goes back in the queue when a peer fails or leaves.
//!
//! A [`Fetch`] holds a checked manifest, each file's outboard once one is verified, and a bitfield
//! of verified groups per file. Peers are any `Ord + Clone` key. The driver asks
//! [`Fetch::next_request`] for each peer with room (at most [`Config::requests_per_peer`]
//! requests and [`Config::bytes_per_peer`] bytes in flight each), sends it, and feeds back what came: [`Fetch::on_outboard`],
//! [`Fetch::on_group`] (verified before it is accepted, so nothing unverified is ever written),
//! [`Fetch::on_failed`]. Different peers get different ranges; a peer that sends a wrong byte is
//! dropped, its ranges go to the others, and the others keep going.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::manifest::Manifest;
use crate::tree::{Checked, Hash, Outboard, VerifyError, group_count, group_range};
use crate::wire::{MAX_FILES_PER_REQUEST, MAX_GROUPS_PER_REQUEST, Request};

/// How requests are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Groups per request (each 16 KiB).
    pub groups_per_request: u64,
    /// Requests in flight per peer.
    pub requests_per_peer: usize,
    /// Group bytes in flight per peer (a request is started while under it).
    pub bytes_per_peer: u64,
    /// Files of one group each asked for in one request (at most
    /// [`MAX_FILES_PER_REQUEST`], and no more bytes than `groups_per_request` groups).
    pub files_per_request: usize,
}

impl Default for Config {
    /// 64 groups (1 MiB) per request, 4 MiB in flight per peer, in up to 32 requests; small
    /// files (one group each) go 64 to a request.
    fn default() -> Self {
        Self { groups_per_request: 64, requests_per_peer: 32, bytes_per_peer: 4 << 20, files_per_request: 64 }
    }
}

impl Config {
    /// The most group bytes a peer has in flight at once: what a crash can make it send again.
    pub fn max_in_flight(&self) -> u64 {
        // A request may start just under the byte budget.
        self.bytes_per_peer + self.groups_per_request * crate::tree::GROUP
    }
}

/// One request handed to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its id, for the answers.
    pub id: u64,
    /// The file (index in the manifest); the first of them for a request of several files.
    pub file: usize,
    /// The group bytes asked for (the answer's exact length; 0 for an outboard).
    pub bytes: u64,
    /// What to send.
    pub request: Request,
}

/// A group a request is waiting for next, with what to check it against.
#[derive(Debug, Clone)]
pub struct Due {
    /// The file.
    pub file: usize,
    /// The group.
    pub index: u64,
    /// The file's outboard.
    pub outboard: Arc<Outboard>,
}

impl Due {
    /// The group's length.
    pub fn len(&self) -> u64 {
        let range = group_range(self.outboard.size(), self.index);
        range.end - range.start
    }

    /// An empty group (the one group of an empty file)?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A group that passed its check: write `data` at `offset` of file `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The file.
    pub file: usize,
    /// Where in it.
    pub offset: u64,
    /// Did this complete the file?
    pub file_done: bool,
}

/// What went wrong with a peer's answer. The peer is dropped from the fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// It sent something that does not verify.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// It answered a request that is not in flight, or with a group not asked for.
    #[error("an answer to nothing asked for (request {id}, group {index})")]
    Unexpected {
        /// The request.
        id: u64,
        /// The group.
        index: u64,
    },
}

#[derive(Debug)]
struct FileFetch {
    hash: Hash,
    size: u64,
    outboard: Option<Arc<Outboard>>,
    /// Verified groups.
    verified: Bitfield,
    /// Groups some request is fetching.
    claimed: Bitfield,
    /// Groups a failed request had asked for and not brought (counted once each).
    requeued: Bitfield,
    /// Is a request for the outboard in flight?
    outboard_claimed: bool,
    verified_count: u64,
    /// No group below this is free to ask for (all verified or claimed).
    cursor: u64,
}

#[derive(Debug)]
struct InFlight<P> {
    peer: P,
    /// The file of an outboard request; the first file of a request for groups.
    file: usize,
    /// Group bytes asked for.
    bytes: u64,
    /// `None` for an outboard request; else the groups still to come, in order, as (file,
    /// group): one file's, or the one group of each of several small files.
    groups: Option<std::collections::VecDeque<(usize, u64)>>,
}

/// The receiver's state.
#[derive(Debug)]
pub struct Fetch<P> {
    config: Config,
    files: Vec<FileFetch>,
    in_flight: HashMap<u64, InFlight<P>>,
    /// Requests and group bytes in flight, per peer.
    per_peer: BTreeMap<P, (usize, u64)>,
    /// No file below this has anything left to ask for.
    file_cursor: usize,
    /// Peers given up: never asked again.
    removed: std::collections::BTreeSet<P>,
    next_id: u64,
    verified_bytes: u64,
    total_bytes: u64,
    /// Bytes of the groups put back in the queue by failed requests, each group once: what
    /// is asked for again, so the most a provider may have sent twice.
    requeued_bytes: u64,
}

impl<P: Ord + Clone + std::fmt::Debug> Fetch<P> {
    /// A fetch of `manifest`'s files, none of them verified yet.
    pub fn new(manifest: &Manifest, config: Config) -> Self {
        let config = Config {
            groups_per_request: config.groups_per_request.clamp(1, MAX_GROUPS_PER_REQUEST),
            requests_per_peer: config.requests_per_peer.max(1),
            bytes_per_peer: config.bytes_per_peer.max(1),
            files_per_request: config.files_per_request.clamp(1, MAX_FILES_PER_REQUEST),
        };
        let files = manifest
            .entries
            .iter()
            .map(|entry| {
                let groups = group_count(entry.size);
                // A file of one group is checked against its hash: it has no outboard to fetch.
                let outboard = (groups == 1)
                    .then(|| Outboard::verified(entry.size, entry.hash, Vec::new()).ok().map(Arc::new))
                    .flatten();
                FileFetch {
                    hash: entry.hash,
                    size: entry.size,
                    outboard,
                    verified: Bitfield::new(groups),
                    claimed: Bitfield::new(groups),
                    requeued: Bitfield::new(groups),
                    outboard_claimed: false,
                    verified_count: 0,
                    cursor: 0,
                }
            })
            .collect();
        Self {
            config,
            files,
            in_flight: HashMap::new(),
            per_peer: BTreeMap::new(),
            removed: Default::default(),
            file_cursor: 0,
            next_id: 0,
            verified_bytes: 0,
            total_bytes: manifest.total_size(),
            requeued_bytes: 0,
        }
    }

    /// Gives file `file` its outboard without asking a peer (one kept from before a restart,
    /// checked again against the file's hash).
    pub fn set_outboard(&mut self, file: usize, cvs: Vec<[u8; 32]>) -> Result<(), VerifyError> {
        let state = &mut self.files[file];
        state.outboard = Some(Arc::new(Outboard::verified(state.size, state.hash, cvs)?));
        Ok(())
    }

    /// File `file`'s outboard, once verified.
    pub fn outboard(&self, file: usize) -> Option<&Arc<Outboard>> {
        self.files[file].outboard.as_ref()
    }

    /// Marks group `index` of `file` as verified without fetching it (the driver checked the
    /// bytes it kept on disk against the outboard). Returns whether that completed the file.
    pub fn mark_verified(&mut self, file: usize, index: u64) -> bool {
        self.verify_done(file, index)
    }

    /// Group `index` of `file` was accepted but could not be written (a full disk, an I/O
    /// error): it is not verified after all, so no bitfield names it, and it is free to ask
    /// for again.
    pub fn unverify(&mut self, file: usize, index: u64) {
        let state = &mut self.files[file];
        if !state.verified.get(index) {
            return;
        }
        state.verified.set(index, false);
        state.verified_count -= 1;
        state.cursor = state.cursor.min(index);
        let range = group_range(state.size, index);
        self.verified_bytes -= range.end - range.start;
        self.file_cursor = self.file_cursor.min(file);
    }

    /// Is group `index` of `file` verified?
    pub fn is_verified(&self, file: usize, index: u64) -> bool {
        self.files[file].verified.get(index)
    }

    /// The verified groups of `file`, as a bitfield's bytes (for the resume file).
    pub fn verified_bits(&self, file: usize) -> &[u64] {
        self.files[file].verified.words()
    }

    fn verify_done(&mut self, file: usize, index: u64) -> bool {
        let state = &mut self.files[file];
        if state.verified.get(index) {
            return false;
        }
        state.verified.set(index, true);
        state.claimed.set(index, false);
        state.verified_count += 1;
        let range = group_range(state.size, index);
        self.verified_bytes += range.end - range.start;
        state.verified_count == state.verified.len()
    }

    /// The next request for `peer`, if it has room and anything is left to ask for.
    pub fn next_request(&mut self, peer: &P) -> Option<Planned> {
        let (requests, bytes) = self.per_peer.get(peer).copied().unwrap_or_default();
        if self.removed.contains(peer)
            || requests >= self.config.requests_per_peer
            || bytes >= self.config.bytes_per_peer
        {
            return None;
        }
        // Files below the cursor have nothing left to ask for; it moves past each file whose
        // groups are all verified or claimed, and back when a failure frees some.
        let mut exhausted = true;
        for file in self.file_cursor..self.files.len() {
            let state = &mut self.files[file];
            if state.verified_count == state.verified.len()
                || (state.outboard.is_some() && state.cursor >= state.verified.len())
            {
                if exhausted {
                    self.file_cursor = file + 1;
                }
                continue;
            }
            exhausted = false;
            let Some(_) = &state.outboard else {
                if state.outboard_claimed {
                    continue;
                }
                state.outboard_claimed = true;
                let request = Request::Outboard { hash: state.hash };
                return Some(self.start(peer, file, None, request));
            };
            // The first run of groups neither verified nor claimed, up to a request's worth.
            let free = (state.cursor..state.verified.len()).find(|&i| !state.verified.get(i) && !state.claimed.get(i));
            let Some(start) = free else {
                state.cursor = state.verified.len();
                continue;
            };
            let mut end = start;
            while end < state.verified.len()
                && end - start < self.config.groups_per_request
                && !state.verified.get(end)
                && !state.claimed.get(end)
            {
                state.claimed.set(end, true);
                end += 1;
            }
            state.cursor = end;
            if state.verified.len() == 1 && self.config.files_per_request > 1 {
                return Some(self.start_small(peer, file));
            }
            let request = Request::Groups { hash: state.hash, ranges: vec![(start, end)] };
            return Some(self.start(peer, file, Some((start..end).map(|i| (file, i)).collect()), request));
        }
        None
    }

    /// A request for small file `file` (one group, just claimed) and the free small files
    /// after it, up to [`Config::files_per_request`] and a request's worth of bytes. The
    /// search looks at a bounded number of files past it.
    fn start_small(&mut self, peer: &P, file: usize) -> Planned {
        let budget = self.config.groups_per_request * crate::tree::GROUP;
        let mut picked = vec![file];
        let mut bytes = self.files[file].size;
        let last = self.files.len().min(file + 1 + 4 * self.config.files_per_request);
        for other in file + 1..last {
            if picked.len() >= self.config.files_per_request {
                break;
            }
            let state = &mut self.files[other];
            if state.verified.len() != 1 || state.verified.get(0) || state.claimed.get(0) {
                continue;
            }
            if bytes + state.size > budget {
                break;
            }
            state.claimed.set(0, true);
            state.cursor = 1;
            bytes += state.size;
            picked.push(other);
        }
        let groups = picked.iter().map(|&f| (f, 0)).collect();
        let request = if picked.len() == 1 {
            Request::Groups { hash: self.files[file].hash, ranges: vec![(0, 1)] }
        } else {
            Request::Files { hashes: picked.iter().map(|&f| self.files[f].hash).collect() }
        };
        self.start(peer, file, Some(groups), request)
    }

    fn start(
        &mut self,
        peer: &P,
        file: usize,
        groups: Option<std::collections::VecDeque<(usize, u64)>>,
        request: Request,
    ) -> Planned {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = groups
            .iter()
            .flatten()
            .map(|&(f, i)| {
                let range = group_range(self.files[f].size, i);
                range.end - range.start
            })
            .sum();
        self.in_flight.insert(id, InFlight { peer: peer.clone(), file, bytes, groups });
        let count = self.per_peer.entry(peer.clone()).or_default();
        count.0 += 1;
        count.1 += bytes;
        Planned { id, file, bytes, request }
    }

    /// The outboard request `id` was answered with `cvs`.
    pub fn on_outboard(&mut self, peer: &P, id: u64, cvs: Vec<[u8; 32]>) -> Result<(), FetchError> {
        let file = match self.in_flight.get(&id) {
            Some(flight) if &flight.peer == peer && flight.groups.is_none() => flight.file,
            _ => return Err(FetchError::Unexpected { id, index: 0 }),
        };
        self.finish(id);
        self.files[file].outboard_claimed = false;
        match self.set_outboard(file, cvs) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.remove_peer(peer);
                Err(error.into())
            }
        }
    }

    /// The next group of request `id` came: checked, then accepted for writing, or refused
    /// (and the peer dropped). [`Fetch::next_groups`] and [`Fetch::on_checked`] do the same
    /// with the hashing left to the caller.
    pub fn on_group(&mut self, peer: &P, id: u64, data: &[u8]) -> Result<Accepted, FetchError> {
        let due = match self.next_groups(id, 1).pop() {
            Some(due) if self.in_flight[&id].peer == *peer => due,
            _ => return Err(FetchError::Unexpected { id, index: u64::MAX }),
        };
        match due.outboard.verify_group(due.index, data) {
            Ok(checked) => self.on_checked(peer, id, checked),
            Err(error) => {
                self.remove_peer(peer);
                Err(error.into())
            }
        }
    }

    /// The next group of request `id` came and verified (against the outboard
    /// [`Fetch::next_groups`] gave): accepted for writing, unless it is not the group this
    /// request waits for from `peer`.
    pub fn on_checked(&mut self, peer: &P, id: u64, checked: Checked) -> Result<Accepted, FetchError> {
        let unexpected = FetchError::Unexpected { id, index: checked.index() };
        let Some(InFlight { peer: owner, groups: Some(groups), .. }) = self.in_flight.get_mut(&id) else {
            return Err(unexpected);
        };
        let Some(&(file, index)) = groups.front() else { return Err(unexpected) };
        let state = &self.files[file];
        if owner != peer || index != checked.index() || checked.root() != state.hash {
            return Err(unexpected);
        }
        let range = group_range(state.size, checked.index());
        if checked.len() != range.end - range.start {
            return Err(unexpected);
        }
        groups.pop_front();
        if groups.is_empty() {
            self.finish(id);
        }
        let file_done = self.verify_done(file, checked.index());
        Ok(Accepted { file, offset: range.start, file_done })
    }

    /// Request `id`'s next `most` groups, in order, each with the outboard to check it
    /// against (none when it is complete or unknown).
    pub fn next_groups(&self, id: u64, most: usize) -> Vec<Due> {
        let Some(flight) = self.in_flight.get(&id) else { return Vec::new() };
        flight
            .groups
            .iter()
            .flatten()
            .take(most)
            .map(|&(file, index)| Due {
                file,
                index,
                outboard: self.files[file].outboard.clone().expect("groups are asked for after the outboard"),
            })
            .collect()
    }

    /// Request `id` failed (the stream broke, the peer refused, a timeout): what it had not
    /// brought goes back in the queue.
    pub fn on_failed(&mut self, id: u64) {
        if let Some(flight) = self.finish(id) {
            match flight.groups {
                None => self.files[flight.file].outboard_claimed = false,
                Some(groups) => {
                    // All in `flight.file` or after it (a request for small files names its
                    // first file there): the file cursor goes back to it once, below.
                    for (file, index) in groups {
                        let state = &mut self.files[file];
                        state.claimed.set(index, false);
                        state.cursor = state.cursor.min(index);
                        if !state.requeued.get(index) {
                            state.requeued.set(index, true);
                            let range = group_range(state.size, index);
                            self.requeued_bytes += range.end - range.start;
                        }
                    }
                }
            }
            self.file_cursor = self.file_cursor.min(flight.file);
        }
    }

    /// `peer` is gone or given up: everything it was asked for goes back in the queue, and it
    /// is not asked again.
    pub fn remove_peer(&mut self, peer: &P) {
        let ids: Vec<u64> = self.in_flight.iter().filter(|(_, f)| &f.peer == peer).map(|(id, _)| *id).collect();
        for id in ids {
            self.on_failed(id);
        }
        self.per_peer.remove(peer);
        self.removed.insert(peer.clone());
    }

    /// Was `peer` given up?
    pub fn is_removed(&self, peer: &P) -> bool {
        self.removed.contains(peer)
    }

    fn finish(&mut self, id: u64) -> Option<InFlight<P>> {
        let flight = self.in_flight.remove(&id)?;
        if let Some((requests, bytes)) = self.per_peer.get_mut(&flight.peer) {
            *requests = requests.saturating_sub(1);
            *bytes = bytes.saturating_sub(flight.bytes);
        }
        Some(flight)
    }

    /// Requests in flight, for `peer`.
    pub fn in_flight(&self, peer: &P) -> usize {
        self.per_peer.get(peer).map_or(0, |(requests, _)| *requests)
    }

    /// Is every group of every file verified?
    pub fn is_done(&self) -> bool {
        self.files.iter().all(|f| f.verified_count == f.verified.len())
    }

    /// Is file `file` complete?
    pub fn file_done(&self, file: usize) -> bool {
        let state = &self.files[file];
        state.verified_count == state.verified.len()
    }

    /// Verified bytes and total bytes.
    pub fn progress(&self) -> (u64, u64) {
        (self.verified_bytes, self.total_bytes)
    }

    /// Bytes of the groups that failed requests had asked for and not brought, each group
    /// counted once however often it failed: asked for again, so the most a provider can have
    /// sent twice.
    pub fn requeued(&self) -> u64 {
        self.requeued_bytes
    }

    /// Peers given up so far.
    pub fn removed_count(&self) -> usize {
        self.removed.len()
    }
}

/// A fixed-size set of bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    len: u64,
    words: Vec<u64>,
}

impl Bitfield {
    /// `len` bits, all clear.
    pub fn new(len: u64) -> Self {
        Self { len, words: vec![0; len.div_ceil(64) as usize] }
    }

    /// From words saved earlier (`None` if they do not fit `len` bits).
    pub fn from_words(len: u64, words: Vec<u64>) -> Option<Self> {
        (words.len() as u64 == len.div_ceil(64)).then_some(Self { len, words })
    }

    /// How many bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No bits at all?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i` (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i` (ignored past the end).
    pub fn set(&mut self, i: u64, value: bool) {
        if i < self.len {
            let word = &mut self.words[(i / 64) as usize];
            if value { *word |= 1 << (i % 64) } else { *word &= !(1 << (i % 64)) }
        }
    }

    /// The words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}

#[cfg(test)]
mod tests;
