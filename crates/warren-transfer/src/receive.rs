//! The receiver's driver: fetches a manifest's files from one or more providers into a
//! destination folder, verifying every group before it is written, durably resumable.
//!
//! **Where bytes go.** Everything in flight lives under `DEST/.warren-partial/<hash>/`: the
//! manifest, and per file its verified outboard, its partial bytes and a bitfield of the groups
//! known to be on disk. A file appears under its final name only once all of it verified: it is
//! synced, then renamed into place, so nothing half-written is ever left under a final name.
//!
//! **Durability without an fsync per group.** Verified groups are written at once (page cache);
//! every [`CHECKPOINT_EVERY`] the partial files written since are synced with `fdatasync` and the
//! bitfields, snapshotted before the sync, are replaced atomically. Files completed since the
//! last checkpoint are made durable together by one `syncfs`, then renamed into place: ten
//! thousand small files cost one sync, not ten thousand. After a crash of the process
//! (SIGKILL) the page cache still holds what was written after the last checkpoint, so on resume
//! every group past the bitfield that the partial file covers is read back and checked against
//! the outboard: the ones that verify are kept. What is fetched again is what was in flight when
//! the process died: at most the requests in flight per peer, plus the group being written. After
//! a power loss the bitfield is at most one checkpoint old and the re-check catches torn data.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use warren::{P2P, RemoteIdentity};

use crate::aligned::{AlignedBuf, DIRECT_ALIGN};
use crate::fetch::{Config, Due, Fetch, FetchError};
use crate::folders::{FolderError, Folders};
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::tree::{Hash, group_count, group_range};
use crate::wire::{PROTOCOL, Request, Response};

/// Groups read and checked together.
const BATCH: u64 = 16;
/// Files at least this large are written with `O_DIRECT` where the file system allows it.
pub const DIRECT_MIN: u64 = 1 << 20;

/// How often written groups are made durable.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How long a provider may stay silent within an answer.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Failed requests after which a provider is given up (a wrong byte gives it up at once).
pub const MAX_FAILURES: u32 = 3;
/// How long the last provider left, once it has answered, is asked again after its requests
/// start failing: a sender killed and started again (same identity, same address) comes back
/// within it and the receive goes on. With other providers still there it is given up after
/// [`MAX_FAILURES`], and they take over.
pub const RETURN_PATIENCE: Duration = Duration::from_secs(30);
/// The longest wait between two requests to a failing provider.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The folder under the destination that holds transfers in progress.
pub const PARTIAL_DIR: &str = crate::manifest::RESERVED_DIR;

/// What a receive reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is known: this many files and bytes; `kept` bytes were already here.
    Started {
        /// Files.
        files: usize,
        /// Bytes in all.
        total: u64,
        /// Bytes verified from an earlier run.
        kept: u64,
    },
    /// Verified bytes so far.
    Bytes {
        /// Done.
        done: u64,
        /// In all.
        total: u64,
    },
    /// A file is complete under its final name.
    FileDone {
        /// Its path under the destination.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A provider was given up.
    ProviderFailed {
        /// Which.
        provider: RemoteIdentity,
        /// Why.
        error: String,
    },
}

/// How a receive went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Files received.
    pub files: usize,
    /// Bytes of all files.
    pub total: u64,
    /// Bytes verified from an earlier, interrupted run.
    pub kept: u64,
    /// Group bytes fetched in this run, by provider.
    pub fetched: HashMap<RemoteIdentity, u64>,
    /// Group bytes asked for again in this run after a request for them failed (a provider
    /// left, a stream broke): the most any provider sent twice.
    pub asked_again: u64,
}

/// Why a receive failed. What verified stays under [`PARTIAL_DIR`] for the next run.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A file could not be read or written.
    #[error("{}: {}", path.display(), describe_io(error))]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The manifest was refused.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Something is in the way of a file (another file, a symbolic link).
    #[error("{0} is in the way: warren does not overwrite it (move it, or receive into another folder)")]
    InTheWay(PathBuf),
    /// No provider could give what is left.
    #[error("no provider could complete the transfer: {}", reasons.join("; "))]
    Unavailable {
        /// Each provider's failure.
        reasons: Vec<String>,
    },
}

impl From<FolderError> for ReceiveError {
    fn from(error: FolderError) -> Self {
        match error {
            FolderError::InTheWay(path) => Self::InTheWay(path),
            FolderError::Io { path, error } => Self::Io { path, error },
        }
    }
}

fn describe_io(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => {
            "no space left on the device (what verified is kept; free space and run the same receive again)".into()
        }
        _ => error.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReceiveError + '_ {
    move |error| ReceiveError::Io { path: path.to_owned(), error }
}

/// Options.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The destination folder.
    pub out: PathBuf,
    /// How requests are cut.
    pub config: Config,
}

type Report = Arc<dyn Fn(&Progress) + Send + Sync>;

/// One file's place on disk.
#[derive(Debug)]
struct Slot {
    part: PathBuf,
    bits: PathBuf,
    outboard: PathBuf,
    final_path: PathBuf,
    handle: Option<Arc<std::fs::File>>,
    /// The same file opened with `O_DIRECT`, for large files, once a write wanted it.
    direct: Option<Arc<std::fs::File>>,
    /// The file system refused `O_DIRECT` for this file: the page cache it is.
    no_direct: bool,
    /// The partial file is known to hold exactly the file's bytes: a file under [`DIRECT_MIN`]
    /// that completed in this run (every group written through its handle, the last one ending
    /// at its size), so placing it needs no `set_len`.
    sized: bool,
    /// A bitfield file may exist (written by a checkpoint, or left by an earlier run).
    bits_saved: bool,
    dirty: bool,
    /// Every group verified; waiting for the next checkpoint to go into place.
    complete: bool,
    /// Under its final name.
    done: bool,
}

struct Shared {
    fetch: Mutex<Fetch<RemoteIdentity>>,
    slots: Mutex<Vec<Slot>>,
    manifest: Manifest,
    changed: tokio::sync::Notify,
    report: Report,
    fetched: Mutex<HashMap<RemoteIdentity, u64>>,
    /// Held shared while a batch goes from verified to written, and exclusively by a
    /// checkpoint while it snapshots the bitfields and the complete files: what it then syncs
    /// or places never has a verified batch still being written.
    writes: std::sync::RwLock<()>,
    /// Held by a checkpoint from start to end: two never run at once.
    checkpointing: Mutex<()>,
    /// The folders under the destination, held open.
    folders: Folders,
    /// Providers this receive started with.
    providers: usize,
    /// The receive has ended (its last checkpoint ran, or its future was dropped): a batch
    /// still being checked on a blocking thread is neither accepted nor written. Set under the
    /// write gate, so no batch is half-way through when it is.
    closed: std::sync::atomic::AtomicBool,
}

impl Slot {
    /// File `index`'s place: its state files in `state`, its final path.
    fn new(state: &Path, index: usize, final_path: PathBuf) -> Self {
        Self {
            part: state.join(format!("{index}.part")),
            bits: state.join(format!("{index}.bits")),
            outboard: state.join(format!("{index}.outboard")),
            final_path,
            handle: None,
            direct: None,
            no_direct: false,
            sized: false,
            bits_saved: false,
            dirty: false,
            complete: false,
            done: false,
        }
    }
}

impl Shared {
    fn new(
        manifest: Manifest,
        fetch: Fetch<RemoteIdentity>,
        slots: Vec<Slot>,
        folders: Folders,
        report: Report,
        providers: usize,
    ) -> Self {
        Self {
            fetch: Mutex::new(fetch),
            slots: Mutex::new(slots),
            manifest,
            changed: tokio::sync::Notify::new(),
            report,
            fetched: Mutex::default(),
            writes: std::sync::RwLock::new(()),
            checkpointing: Mutex::new(()),
            folders,
            providers,
            closed: Default::default(),
        }
    }

    /// Ends the receive for batches still on blocking threads (see [`Shared::closed`]).
    fn close(&self) {
        let _gate = self.writes.write().expect("write gate");
        self.closed.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Closes the receive when its future ends, however it ends.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Receives the content `hash` names from `providers` into `options.out`, resuming what an
/// earlier run left.
pub async fn receive(
    p2p: &P2P,
    hash: Hash,
    providers: &[RemoteIdentity],
    options: ReceiveOptions,
    report: impl Fn(&Progress) + Send + Sync + 'static,
) -> Result<Summary, ReceiveError> {
    let out = options.out.clone();
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let state = out.join(PARTIAL_DIR).join(hex(&hash));
    std::fs::create_dir_all(&state).map_err(io(&state))?;
    let manifest = manifest(p2p, hash, providers, &state).await?;
    let mut fetch = Fetch::new(&manifest, options.config);
    let mut slots: Vec<Slot> = manifest
        .entries
        .iter()
        .enumerate()
        .map(|(index, entry)| Slot::new(&state, index, out.join(&entry.path)))
        .collect();
    let kept = resume(&manifest, &mut fetch, &mut slots)?;
    let folders = Folders::open(&out)?;
    let shared = Arc::new(Shared::new(manifest, fetch, slots, folders, Arc::new(report), providers.len()));
    let _close = CloseOnDrop(shared.clone());
    let total = shared.manifest.total_size();
    (shared.report)(&Progress::Started { files: shared.manifest.entries.len(), total, kept });
    // Files that were complete (or empty) go into place at the first checkpoint; the ones
    // already in place are done.
    for (index, entry) in shared.manifest.entries.iter().enumerate() {
        if shared.fetch.lock().expect("fetch lock").file_done(index) {
            let mut slots = shared.slots.lock().expect("slot lock");
            slots[index].complete = true;
            if slots[index].done {
                drop(slots);
                (shared.report)(&Progress::FileDone { path: entry.path.clone(), size: entry.size });
            }
        }
    }
    let mut workers = tokio::task::JoinSet::new();
    for provider in providers {
        for _ in 0..options.config.requests_per_peer.clamp(1, 64) {
            let (p2p, shared, provider) = (p2p.clone(), shared.clone(), *provider);
            workers.spawn(async move { (provider, work(&p2p, &shared, provider).await) });
        }
    }
    // Stopped with the receive, even when its future is dropped. It ends only with an error,
    // which stops the receive at once. Each checkpoint syncs files, so it runs on a blocking
    // thread, not on one of the runtime's.
    let mut checkpoints = AbortOnDrop({
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECKPOINT_EVERY).await;
                if let Err(error) = checkpoint_blocking(&shared, false).await {
                    return error;
                }
            }
        })
    });
    let mut checkpoints_running = true;
    let mut reasons: Vec<String> = Vec::new();
    let mut fatal = None;
    loop {
        let joined = tokio::select! {
            joined = workers.join_next() => joined,
            ended = &mut checkpoints.0, if checkpoints_running => {
                checkpoints_running = false;
                if let Ok(error) = ended {
                    fatal = Some(error);
                    workers.abort_all();
                }
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (provider, result) = match joined {
            Ok(joined) => joined,
            // A request loop that panicked would leave its requests in flight for ever.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => continue,
        };
        match result {
            Ok(()) => {
                // Done: a loop still waiting on a provider that went away has nothing to wait for.
                if shared.fetch.lock().expect("fetch lock").is_done() {
                    workers.abort_all();
                }
            }
            Err(WorkError::Local(error)) => {
                fatal.get_or_insert(error);
                workers.abort_all();
            }
            Err(WorkError::Provider(reason)) => {
                if !reasons.iter().any(|r| r.starts_with(&provider.to_string())) {
                    (shared.report)(&Progress::ProviderFailed { provider, error: reason.clone() });
                    reasons.push(format!("{provider}: {reason}"));
                }
            }
        }
    }
    drop(checkpoints);
    let saved = checkpoint_blocking(&shared, true).await;
    if let Some(error) = fatal {
        return Err(error);
    }
    saved?;
    if !shared.fetch.lock().expect("fetch lock").is_done() {
        if reasons.is_empty() {
            reasons.push("no provider given".into());
        }
        return Err(ReceiveError::Unavailable { reasons });
    }
    debug_assert!(shared.slots.lock().expect("slot lock").iter().all(|s| s.done), "the last checkpoint placed all");
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir(out.join(PARTIAL_DIR));
    let fetched = shared.fetched.lock().expect("fetched lock").clone();
    let asked_again = shared.fetch.lock().expect("fetch lock").requeued();
    Ok(Summary { files: shared.manifest.entries.len(), total, kept, fetched, asked_again })
}

/// The manifest: kept from an earlier run, or fetched from the first provider that has it.
async fn manifest(p2p: &P2P, hash: Hash, providers: &[RemoteIdentity], state: &Path) -> Result<Manifest, ReceiveError> {
    let path = state.join("manifest");
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(manifest) = Manifest::from_bytes(&bytes, &hash) {
            return Ok(manifest);
        }
    }
    let mut reasons = Vec::new();
    for provider in providers {
        let result = async {
            let (len, mut stream) = ask(p2p, *provider, &Request::Manifest { hash }).await?;
            if len > MAX_MANIFEST_BYTES as u64 {
                return Err(format!("a manifest of {len} bytes, over the {MAX_MANIFEST_BYTES}-byte limit"));
            }
            let mut bytes = vec![0; len as usize];
            read_exact(&mut stream, &mut bytes).await?;
            Manifest::from_bytes(&bytes, &hash).map(|m| (m, bytes)).map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok((manifest, bytes)) => {
                write_atomic(&path, &bytes)?;
                return Ok(manifest);
            }
            Err(reason) => reasons.push(format!("{provider}: {reason}")),
        }
    }
    if reasons.is_empty() {
        reasons.push("no provider given".into());
    }
    Err(ReceiveError::Unavailable { reasons })
}

/// Opens a request stream to `provider`: the length of the answer, and the stream to read it.
async fn ask(p2p: &P2P, provider: RemoteIdentity, request: &Request) -> Result<(u64, warren::Stream), String> {
    let mut stream = p2p.connect(provider, PROTOCOL).await.map_err(|e| e.to_string())?;
    warren::wire::control::write(&mut stream, request).await.map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(STALL_TIMEOUT, warren::wire::control::read::<_, Response>(&mut stream))
        .await
        .map_err(|_| format!("no answer within {STALL_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    match response {
        Response::Ok { len } => Ok((len, stream)),
        Response::Refused { reason } => Err(format!("refused: {reason}")),
    }
}

async fn read_exact(stream: &mut warren::Stream, buf: &mut [u8]) -> Result<(), String> {
    tokio::time::timeout(STALL_TIMEOUT, stream.read_exact(buf))
        .await
        .map_err(|_| format!("stalled for {STALL_TIMEOUT:?}"))?
        .map(drop)
        .map_err(|e| format!("the stream broke: {e}"))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum WorkError {
    /// This side cannot go on (disk): the whole receive stops.
    Local(ReceiveError),
    /// The provider is given up.
    Provider(String),
}

/// One request loop for `provider`, until nothing is left or it is given up.
async fn work(p2p: &P2P, shared: &Arc<Shared>, provider: RemoteIdentity) -> Result<(), WorkError> {
    let mut failures = 0;
    // Whether this provider has answered a request, and since when it has been failing.
    let mut answered = false;
    let mut failing_since = None;
    let mut retry_at = None;
    // This loop's buffer for batches of groups, made at its first request for groups.
    let mut buf = AlignedBuf::default();
    loop {
        let changed = shared.changed.notified();
        let planned = {
            let mut fetch = shared.fetch.lock().expect("fetch lock");
            // Done, or this provider was given up (by another of its request loops).
            if fetch.is_done() || fetch.is_removed(&provider) {
                return Ok(());
            }
            match retry_at {
                // Backing off; woken early to look again when something changes.
                Some(at) if tokio::time::Instant::now() < at => None,
                _ => {
                    retry_at = None;
                    fetch.next_request(&provider)
                }
            }
        };
        if let Some(at) = retry_at {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = changed => {}
            }
            continue;
        }
        let Some(planned) = planned else {
            // Others hold what is left: wait until something changes (a failure frees it).
            let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
            continue;
        };
        let result = request(p2p, shared, provider, &planned, &mut buf).await;
        // A request's end frees room, an outboard opens a whole file, a failure frees a range:
        // every waiting loop looks again (asking is cheap: the plan keeps cursors).
        shared.changed.notify_waiters();
        match result {
            Ok(()) => {
                failures = 0;
                answered = true;
                failing_since = None;
            }
            Err(RequestError::Local(error)) => {
                shared.fetch.lock().expect("fetch lock").on_failed(planned.id);
                return Err(WorkError::Local(error));
            }
            Err(RequestError::Lied(error)) => {
                // Already dropped by the fetch: everything it held goes to the others.
                shared.fetch.lock().expect("fetch lock").remove_peer(&provider);
                return Err(WorkError::Provider(error.to_string()));
            }
            Err(RequestError::Failed(reason)) => {
                let mut fetch = shared.fetch.lock().expect("fetch lock");
                fetch.on_failed(planned.id);
                failures += 1;
                let since = *failing_since.get_or_insert_with(Instant::now);
                // The last provider left, which had answered, is waited for (it may be
                // restarting); any other is given up after a few failures.
                let last = shared.providers.saturating_sub(fetch.removed_count()) <= 1;
                let waited_for = answered && last && since.elapsed() < RETURN_PATIENCE;
                if failures >= MAX_FAILURES && !waited_for {
                    fetch.remove_peer(&provider);
                    drop(fetch);
                    shared.changed.notify_waiters();
                    return Err(WorkError::Provider(reason));
                }
                drop(fetch);
                let backoff = Duration::from_millis(100u64 << failures.min(8)).min(MAX_BACKOFF);
                retry_at = Some(tokio::time::Instant::now() + backoff);
            }
        }
    }
}

enum RequestError {
    Local(ReceiveError),
    Lied(FetchError),
    Failed(String),
}

async fn request(
    p2p: &P2P,
    shared: &Arc<Shared>,
    provider: RemoteIdentity,
    planned: &crate::fetch::Planned,
    buf: &mut AlignedBuf,
) -> Result<(), RequestError> {
    let (len, mut stream) = ask(p2p, provider, &planned.request).await.map_err(RequestError::Failed)?;
    let entry = &shared.manifest.entries[planned.file];
    match &planned.request {
        Request::Outboard { .. } => {
            let groups = group_count(entry.size);
            let want = if groups == 1 { 0 } else { groups * 32 };
            if len != want {
                let error = crate::tree::VerifyError::WrongLength { size: entry.size, want: want / 32, got: len / 32 };
                shared.fetch.lock().expect("fetch lock").on_failed(planned.id);
                return Err(RequestError::Lied(error.into()));
            }
            let mut bytes = vec![0u8; want as usize];
            read_exact(&mut stream, &mut bytes).await.map_err(RequestError::Failed)?;
            let cvs: Vec<[u8; 32]> = bytes.chunks_exact(32).map(|c| c.try_into().expect("32-byte chunks")).collect();
            shared
                .fetch
                .lock()
                .expect("fetch lock")
                .on_outboard(&provider, planned.id, cvs)
                .map_err(RequestError::Lied)?;
            let path = shared.slots.lock().expect("slot lock")[planned.file].outboard.clone();
            write_atomic(&path, &bytes).map_err(RequestError::Local)?;
            Ok(())
        }
        Request::Groups { .. } | Request::Files { .. } => {
            let want = planned.bytes;
            if len != want {
                return Err(RequestError::Failed(format!("an answer of {len} bytes where {want} were asked for")));
            }
            // Read up to a batch of groups at once, hash them with no lock held (the other
            // request loops and the runtime go on meanwhile), accept them under one lock, and
            // write each file's run of them in one call (a request's groups are one file's,
            // contiguous, or several small files' whole). A large file's batch is written with
            // `O_DIRECT`, which waits for the disk: that part runs on a blocking thread, so the
            // runtime's threads keep serving the network.
            let direct = is_large(entry);
            if buf.len() < (BATCH * crate::tree::GROUP) as usize {
                *buf = AlignedBuf::new((BATCH * crate::tree::GROUP) as usize);
            }
            loop {
                let dues = shared.fetch.lock().expect("fetch lock").next_groups(planned.id, BATCH as usize);
                if dues.is_empty() {
                    return Ok(());
                }
                let total: u64 = dues.iter().map(Due::len).sum();
                read_exact(&mut stream, &mut buf.bytes_mut()[..total as usize]).await.map_err(RequestError::Failed)?;
                let batch = Batch { provider, id: planned.id, dues };
                let taken = if direct {
                    let shared = shared.clone();
                    let owned = std::mem::take(buf);
                    let (back, taken) = match tokio::task::spawn_blocking(move || {
                        let taken = take_batch(&shared, &batch, &owned.bytes()[..total as usize]);
                        (owned, taken)
                    })
                    .await
                    {
                        Ok(done) => done,
                        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                        Err(_) => return Err(RequestError::Failed("the runtime is shutting down".into())),
                    };
                    *buf = back;
                    taken
                } else {
                    take_batch(shared, &batch, &buf.bytes()[..total as usize])
                };
                taken?;
                let (done, total) = shared.fetch.lock().expect("fetch lock").progress();
                (shared.report)(&Progress::Bytes { done, total });
            }
        }
        Request::Manifest { .. } => unreachable!("the fetch never plans a manifest request"),
    }
}

/// A batch of groups read from one request, in order.
struct Batch {
    provider: RemoteIdentity,
    id: u64,
    dues: Vec<Due>,
}

/// Checks a batch's groups (`data`, back to back), accepts those that verify, in order up to the
/// first that does not, and writes them, each file's run in one call; a file they complete is
/// marked for the next checkpoint, and the bytes written are counted for their provider. What
/// verified before a lie is kept. Groups accepted but not written (the disk refused them) are
/// unverified again, so no bitfield names bytes that are not on disk.
fn take_batch(shared: &Shared, batch: &Batch, data: &[u8]) -> Result<(), RequestError> {
    let mut checked = Vec::with_capacity(batch.dues.len());
    let mut lie = None;
    let mut at = 0usize;
    for due in &batch.dues {
        let len = due.len() as usize;
        match due.outboard.verify_group(due.index, &data[at..at + len]) {
            Ok(proof) => checked.push(proof),
            Err(error) => {
                lie = Some(FetchError::from(error));
                break;
            }
        }
        at += len;
    }
    let writing = shared.writes.read().expect("write gate");
    if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
        return Err(RequestError::Failed("the receive has ended".into()));
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut accepted_len = 0usize;
    {
        let mut fetch = shared.fetch.lock().expect("fetch lock");
        for proof in checked {
            match fetch.on_checked(&batch.provider, batch.id, proof) {
                Ok(accepted) => {
                    let len = proof.len() as usize;
                    match runs.last_mut() {
                        Some(run) if run.file == accepted.file => {
                            run.len += len;
                            run.completes |= accepted.file_done;
                        }
                        _ => runs.push(Run {
                            file: accepted.file,
                            offset: accepted.offset,
                            start: accepted_len,
                            len,
                            completes: accepted.file_done,
                        }),
                    }
                    accepted_len += len;
                }
                // The request was taken back meanwhile (its provider given up by another
                // loop): nothing more of it is accepted.
                Err(error) => {
                    lie.get_or_insert(error);
                    break;
                }
            }
        }
    }
    let mut written = 0u64;
    let mut failed = None;
    for (n, run) in runs.iter().enumerate() {
        let large = is_large(&shared.manifest.entries[run.file]);
        if let Err(error) = write_group(shared, run.file, run.offset, &data[run.start..run.start + run.len], large) {
            unaccept(shared, &runs[n..]);
            failed = Some(error);
            break;
        }
        written += run.len as u64;
        if run.completes {
            let mut slots = shared.slots.lock().expect("slot lock");
            let slot = &mut slots[run.file];
            slot.complete = true;
            // A small file is written whole, in one call: nothing more goes through its
            // handle, and ten thousand of them do not hold ten thousand descriptors until the
            // checkpoint places them.
            if !large {
                slot.handle = None;
                slot.direct = None;
                slot.sized = true;
            }
        }
    }
    // Counted with the write, under the gate: a request loop stopped while this runs on a
    // blocking thread (the receive is done) does not lose the count, and the last checkpoint,
    // which closes the receive, sees it.
    *shared.fetched.lock().expect("fetched lock").entry(batch.provider).or_default() += written;
    drop(writing);
    match (failed, lie) {
        (Some(error), _) => Err(RequestError::Local(error)),
        (None, Some(lie)) => Err(RequestError::Lied(lie)),
        (None, None) => Ok(()),
    }
}

/// Takes back runs accepted but not written: their groups are not verified after all, and a
/// file one of them completed (perhaps with another request loop's groups) is not complete.
fn unaccept(shared: &Shared, runs: &[Run]) {
    let mut fetch = shared.fetch.lock().expect("fetch lock");
    let mut slots = shared.slots.lock().expect("slot lock");
    for run in runs {
        let first = run.offset / crate::tree::GROUP;
        let end = (run.offset + run.len as u64).div_ceil(crate::tree::GROUP);
        for index in first..end {
            fetch.unverify(run.file, index);
        }
        slots[run.file].complete = false;
    }
}

/// Groups of one file accepted together, to be written in one call.
struct Run {
    file: usize,
    /// Where in the file.
    offset: u64,
    /// Where in the batch's bytes.
    start: usize,
    len: usize,
    /// The last of the file's groups is among them.
    completes: bool,
}

/// Is this file written with `O_DIRECT` (and its batches on a blocking thread)?
fn is_large(entry: &crate::manifest::Entry) -> bool {
    entry.size >= DIRECT_MIN
}

/// Opens a partial file for writing (and reading back on resume), creating it.
fn open_part(path: &Path, flags: i32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).custom_flags(flags).open(path)
}

/// Writes verified bytes at `offset` (a group's start) of a partial file. With `direct`, the
/// aligned part goes around the page cache (`O_DIRECT`: no copy into it, no writeback later,
/// about a fifth of the system time per byte on ext4) and the tail under 4 KiB through it; a
/// file system that refuses `O_DIRECT` (tmpfs before Linux 6.6, some FUSE ones) gets everything
/// through the page cache, for that file, from then on.
fn write_group(shared: &Shared, file: usize, offset: u64, data: &[u8], direct: bool) -> Result<(), ReceiveError> {
    let (handle, direct_handle, part) = {
        let mut slots = shared.slots.lock().expect("slot lock");
        let slot = &mut slots[file];
        slot.dirty = true;
        if slot.handle.is_none() {
            slot.handle = Some(Arc::new(open_part(&slot.part, 0).map_err(io(&slot.part))?));
        }
        if direct && !slot.no_direct && slot.direct.is_none() {
            match open_part(&slot.part, libc::O_DIRECT) {
                Ok(handle) => slot.direct = Some(Arc::new(handle)),
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => slot.no_direct = true,
                Err(error) => return Err(ReceiveError::Io { path: slot.part.clone(), error }),
            }
        }
        (slot.handle.clone().expect("opened"), slot.direct.clone(), slot.part.clone())
    };
    let failed = |error| ReceiveError::Io { path: part.clone(), error };
    let mut aligned = 0;
    if let Some(direct) = direct_handle {
        debug_assert!(offset % DIRECT_ALIGN as u64 == 0 && data.as_ptr().addr() % DIRECT_ALIGN == 0);
        aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if aligned > 0 {
            match direct.write_all_at(&data[..aligned], offset) {
                Ok(()) => {}
                // This file system wants another alignment: the page cache for this file.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    let mut slots = shared.slots.lock().expect("slot lock");
                    slots[file].no_direct = true;
                    slots[file].direct = None;
                    aligned = 0;
                }
                Err(error) => return Err(failed(error)),
            }
        }
    }
    if aligned < data.len() {
        let at = offset + aligned as u64;
        handle.write_all_at(&data[aligned..], at).map_err(failed)?;
        // A large file's bytes start for the disk now; a small file's wait for the syncfs
        // that places it with the others (one call for all of them, not one each).
        if direct {
            start_writeback(&handle, at, (data.len() - aligned) as u64);
        }
    }
    Ok(())
}

/// Asks the kernel to start writing `len` bytes at `offset` to the disk now, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk works while the network does, so the
/// checkpoint's and the final sync find little left to do. Only a hint: durability still comes
/// from `fdatasync` and `syncfs`, and an error here changes nothing.
fn start_writeback(handle: &std::fs::File, offset: u64, len: u64) {
    // SAFETY: the descriptor is owned by `handle` for the call; the call reads no memory.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(handle),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A partial file written since the last checkpoint: its index, paths and handle.
type Dirty = (usize, PathBuf, PathBuf, Option<Arc<std::fs::File>>);

/// [`checkpoint`] on a blocking thread (it syncs files).
async fn checkpoint_blocking(shared: &Arc<Shared>, last: bool) -> Result<(), ReceiveError> {
    let shared = shared.clone();
    match tokio::task::spawn_blocking(move || checkpoint(&shared, last)).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime is shutting down: the next run resumes from the checkpoint before.
        Err(_) => Ok(()),
    }
}

/// Makes written groups durable: snapshot the bitfields, sync the partial files, then replace
/// the bitfields; then the files completed since go into place, after one `syncfs`. The `last`
/// one closes the receive first: nothing is accepted or written after it.
fn checkpoint(shared: &Shared, last: bool) -> Result<(), ReceiveError> {
    // One checkpoint at a time.
    let _serial = shared.checkpointing.lock().expect("checkpoint lock");
    // The gate is held only while the bitfields are snapshotted: every group they name is
    // written by then, and the syncs below run while the receive goes on writing.
    let gate = shared.writes.write().expect("write gate");
    if last {
        shared.closed.store(true, std::sync::atomic::Ordering::Release);
    }
    let (dirty, complete): (Vec<Dirty>, Vec<usize>) = {
        let mut slots = shared.slots.lock().expect("slot lock");
        let complete = slots.iter().enumerate().filter(|(_, s)| s.complete && !s.done).map(|(i, _)| i).collect();
        let dirty = slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.dirty && !s.done && !s.complete)
            .map(|(i, s)| {
                s.dirty = false;
                (i, s.part.clone(), s.bits.clone(), s.handle.clone())
            })
            .collect();
        (dirty, complete)
    };
    let snapshots: Vec<Vec<u64>> = {
        let fetch = shared.fetch.lock().expect("fetch lock");
        dirty.iter().map(|(file, ..)| fetch.verified_bits(*file).to_vec()).collect()
    };
    drop(gate);
    place(shared, &complete)?;
    for ((index, part, bits, handle), words) in dirty.into_iter().zip(snapshots) {
        if let Some(handle) = handle {
            handle.sync_data().map_err(io(&part))?;
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        write_atomic(&bits, &bytes)?;
        shared.slots.lock().expect("slot lock")[index].bits_saved = true;
    }
    Ok(())
}

/// Puts complete files under their final names: their lengths set, all made durable by one
/// `syncfs`, then each renamed into place with its mode.
fn place(shared: &Shared, files: &[usize]) -> Result<(), ReceiveError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut to_rename = Vec::new();
    {
        let mut slots = shared.slots.lock().expect("slot lock");
        for &file in files {
            let slot = &mut slots[file];
            let entry = &shared.manifest.entries[file];
            slot.direct = None;
            if slot.sized {
                // A handle another request loop opened to write its part of the file after the
                // file's last group (the file is whole either way) is not kept open.
                slot.handle = None;
                to_rename.push(file);
                continue;
            }
            // An empty file, or one verified on disk with no handle open yet.
            let handle = match slot.handle.take() {
                Some(handle) => handle,
                None => Arc::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&slot.part)
                        .map_err(io(&slot.part))?,
                ),
            };
            handle.set_len(entry.size).map_err(io(&slot.part))?;
            to_rename.push(file);
        }
    }
    if !to_rename.is_empty() {
        let state =
            shared.slots.lock().expect("slot lock")[to_rename[0]].part.parent().expect("in a folder").to_owned();
        let started = Instant::now();
        syncfs(&state)?;
        tracing::debug!(files = to_rename.len(), took = ?started.elapsed(), "synced the files to place");
    }
    for file in to_rename {
        let entry = &shared.manifest.entries[file];
        let (part, final_path) = {
            let slots = shared.slots.lock().expect("slot lock");
            (slots[file].part.clone(), slots[file].final_path.clone())
        };
        // The mode is set while the file is still ours alone, then it goes into place through
        // its folder's descriptor.
        let mode = std::fs::Permissions::from_mode(0o644 | (entry.mode & 0o111));
        std::fs::set_permissions(&part, mode).map_err(io(&part))?;
        match shared.folders.place(&part, &entry.path) {
            Ok(()) => {}
            // Something is at the final name (looked at only then, not before every rename):
            // this very file is taken as received, anything else is in the way.
            Err(FolderError::InTheWay(_)) if already_there(&final_path, entry)? => {
                let _ = std::fs::remove_file(&part);
            }
            Err(error) => return Err(error.into()),
        }
        shared.slots.lock().expect("slot lock")[file].done = true;
    }
    for &file in files {
        let entry = &shared.manifest.entries[file];
        {
            let slots = shared.slots.lock().expect("slot lock");
            if slots[file].bits_saved {
                let _ = std::fs::remove_file(&slots[file].bits);
            }
            if group_count(entry.size) > 1 {
                let _ = std::fs::remove_file(&slots[file].outboard);
            }
        }
        (shared.report)(&Progress::FileDone { path: entry.path.clone(), size: entry.size });
    }
    Ok(())
}

/// Flushes the whole filesystem that holds `dir` (one call for any number of files).
fn syncfs(dir: &Path) -> Result<(), ReceiveError> {
    let handle = std::fs::File::open(dir).map_err(io(dir))?;
    // SAFETY: syncfs takes an open file descriptor, which `handle` owns for the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&handle)) };
    if rc != 0 {
        return Err(ReceiveError::Io { path: dir.to_owned(), error: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Is this exact file already at its final path (a run that stopped after renaming it)?
/// Anything else there is in the way.
fn already_there(path: &Path, entry: &crate::manifest::Entry) -> Result<bool, ReceiveError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(false) };
    if !meta.is_file() || meta.len() != entry.size {
        return Err(ReceiveError::InTheWay(path.to_owned()));
    }
    let outboard = crate::provider::hash_file(path, entry.size).map_err(io(path))?;
    if outboard.root() == entry.hash { Ok(true) } else { Err(ReceiveError::InTheWay(path.to_owned())) }
}

/// Takes back what an earlier run left: outboards, bitfields, and the groups past the bitfield
/// that the partial file holds and that verify. Returns the bytes kept.
fn resume(manifest: &Manifest, fetch: &mut Fetch<RemoteIdentity>, slots: &mut [Slot]) -> Result<u64, ReceiveError> {
    for (file, (entry, slot)) in manifest.entries.iter().zip(slots.iter_mut()).enumerate() {
        if already_there(&slot.final_path, entry)? {
            for index in 0..group_count(entry.size) {
                fetch.mark_verified(file, index);
            }
            slot.done = true;
            continue;
        }
        if group_count(entry.size) > 1 {
            let Ok(bytes) = std::fs::read(&slot.outboard) else { continue };
            let cvs: Vec<[u8; 32]> = bytes.chunks_exact(32).map(|c| c.try_into().expect("32")).collect();
            if fetch.set_outboard(file, cvs).is_err() {
                continue;
            }
        } else if fetch.set_outboard(file, Vec::new()).is_err() {
            continue;
        }
        let Ok(part) = std::fs::File::open(&slot.part) else {
            if entry.size == 0 {
                fetch.mark_verified(file, 0);
            }
            continue;
        };
        let on_disk = part.metadata().map_err(io(&slot.part))?.len();
        let outboard = fetch.outboard(file).expect("set above").clone();
        // The groups the last checkpoint synced need no second look; the others the partial
        // file covers are read back and checked (they were written after it, or not at all).
        let groups = group_count(entry.size);
        let saved = std::fs::read(&slot.bits).ok();
        slot.bits_saved = saved.is_some();
        let synced = saved.and_then(|bytes| {
            let words = bytes.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8"))).collect();
            crate::fetch::Bitfield::from_words(groups, words)
        });
        let mut buf = vec![0u8; crate::tree::GROUP as usize];
        for index in 0..groups {
            let range = group_range(entry.size, index);
            if range.end > on_disk {
                continue;
            }
            if synced.as_ref().is_some_and(|bits| bits.get(index)) {
                fetch.mark_verified(file, index);
                continue;
            }
            let buf = &mut buf[..(range.end - range.start) as usize];
            part.read_exact_at(buf, range.start).map_err(io(&slot.part))?;
            if outboard.verify_group(index, buf).is_ok() {
                fetch.mark_verified(file, index);
            }
        }
    }
    Ok(fetch.progress().0)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (its own: `N.bits` and
/// `N.outboard` do not share one), synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReceiveError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    result.map_err(io(path))
}

/// Lowercase hex.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Entry;
    use crate::testing::temp;

    /// A receive's shared state for `datas` (no network), each file's partial file in `state`
    /// unless `unwritable` names it: that one's partial file is under a plain file, so the disk
    /// refuses it (ENOTDIR).
    fn shared(datas: &[Vec<u8>], state: &Path, unwritable: usize) -> Shared {
        let entries = datas
            .iter()
            .enumerate()
            .map(|(f, data)| Entry {
                path: format!("f{f}"),
                size: data.len() as u64,
                mode: 0o644,
                hash: *blake3::hash(data).as_bytes(),
            })
            .collect();
        let manifest = Manifest::new(entries).unwrap();
        std::fs::write(state.join("plain"), b"").unwrap();
        let slots = (0..datas.len())
            .map(|f| {
                let mut slot = Slot::new(state, f, state.join(format!("f{f}")));
                if f == unwritable {
                    slot.part = state.join("plain").join(format!("{f}.part"));
                }
                slot
            })
            .collect();
        let fetch = Fetch::new(&manifest, Config::default());
        Shared::new(manifest, fetch, slots, Folders::open(state).unwrap(), Arc::new(|_| {}), 1)
    }

    /// A folder for test `name`, files of these `sizes` (each byte its size), their shared
    /// state there (file `unwritable`'s partial file refused), and the batch that asks for all.
    fn ready(name: &str, sizes: &[usize], unwritable: usize) -> (PathBuf, Vec<Vec<u8>>, Shared, RemoteIdentity, Batch) {
        let dir = temp(name);
        let datas: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![n as u8; n]).collect();
        let shared = shared(&datas, &dir, unwritable);
        let provider = warren::Identity::generate().to_remote_identity();
        let batch = batch(&shared, provider);
        (dir, datas, shared, provider, batch)
    }

    /// The one request the fetch plans for `provider` (small files: all of them), as a batch.
    fn batch(shared: &Shared, provider: RemoteIdentity) -> Batch {
        let mut fetch = shared.fetch.lock().unwrap();
        let planned = fetch.next_request(&provider).unwrap();
        assert!(matches!(planned.request, Request::Files { .. }), "{:?}", planned.request);
        let dues = fetch.next_groups(planned.id, BATCH as usize);
        Batch { provider, id: planned.id, dues }
    }

    #[test]
    fn groups_the_disk_refused_are_not_verified_and_the_ones_before_are_kept() {
        let (dir, datas, shared, provider, batch) = ready("refused", &[100, 200, 300], 1);
        let data: Vec<u8> = datas.concat();

        let result = take_batch(&shared, &batch, &data);
        assert!(matches!(result, Err(RequestError::Local(ReceiveError::Io { .. }))));
        let fetch = shared.fetch.lock().unwrap();
        // The first file was written: verified, complete, counted. The one the disk refused
        // and the one after it are not verified, so no bitfield can name them.
        assert!(fetch.file_done(0));
        assert!(!fetch.is_verified(1, 0) && !fetch.is_verified(2, 0));
        assert_eq!(fetch.progress().0, 100);
        let slots = shared.slots.lock().unwrap();
        assert!(slots[0].complete && !slots[1].complete && !slots[2].complete);
        assert_eq!(std::fs::read(&slots[0].part).unwrap(), datas[0]);
        assert!(!slots[2].part.exists(), "nothing written after the refused file");
        assert_eq!(shared.fetched.lock().unwrap()[&provider], 100, "only what was written is counted");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_at_the_final_name_is_taken_as_received_when_it_is_this_file_and_refused_otherwise() {
        let (dir, datas, shared, _, batch) = ready("in-place", &[100, 200], usize::MAX);
        assert!(take_batch(&shared, &batch, &datas.concat()).is_ok());
        // Meanwhile the same first file, and another second one, appear at the final names.
        std::fs::write(dir.join("f0"), &datas[0]).unwrap();
        std::fs::write(dir.join("f1"), b"someone else's").unwrap();
        place(&shared, &[0]).unwrap();
        let error = place(&shared, &[1]).unwrap_err();
        assert!(matches!(&error, ReceiveError::InTheWay(path) if path.ends_with("f1")), "{error}");
        assert_eq!(std::fs::read(dir.join("f1")).unwrap(), b"someone else's", "not overwritten");
        let slots = shared.slots.lock().unwrap();
        assert!(slots[0].done && !slots[0].part.exists(), "taken as received, its partial file gone");
        assert!(!slots[1].done && slots[1].part.exists(), "kept for a later run");
        drop(slots);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_batch_checked_after_the_receive_ended_is_neither_accepted_nor_written() {
        let (dir, datas, shared, _, batch) = ready("closed", &[100, 200], usize::MAX);
        shared.close();

        let result = take_batch(&shared, &batch, &datas.concat());
        assert!(matches!(result, Err(RequestError::Failed(_))));
        assert_eq!(shared.fetch.lock().unwrap().progress().0, 0);
        assert!(shared.slots.lock().unwrap().iter().all(|s| !s.part.exists()));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
