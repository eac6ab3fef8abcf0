//! The sender's side: files and folders added to a [`Provider`] are hashed once (outboards in
//! memory, the bytes read from disk on each request) and served on `warren/transfer/2` (and 1) to any
//! peer that names their hash, many at once, within bounds.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::AsyncWriteExt;
use warren::{P2P, RemoteIdentity, Stream};

use crate::manifest::{Entry, Manifest, ManifestError, check_path};
use crate::tree::{Hash, Outboard, OutboardBuilder, group_range};
use crate::wire::{PROTOCOL, PROTOCOL_V1, Request, Response, check_ranges};

/// Requests served at once, over all peers.
pub const MAX_CONCURRENT: usize = 64;
/// Requests served at once for one peer.
pub const MAX_PER_PEER: usize = 16;
/// Bytes read from disk at a time.
const READ_BUF: usize = 256 * 1024;

/// Why paths could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// A path could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A symbolic link: never sent (its target could be anything on this machine).
    #[error("{0} is a symbolic link: warren sends files and folders, not links")]
    Symlink(PathBuf),
    /// Not a file or a folder (a device, a socket).
    #[error("{0} is neither a file nor a folder")]
    Special(PathBuf),
    /// A name that is not UTF-8 or not a portable path.
    #[error("{path}: {why}")]
    Name {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The manifest would be refused (a clash, too many files).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Nothing to send.
    #[error("nothing to send")]
    Empty,
}

/// A file being served.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    outboard: Outboard,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Requests answered with data.
    pub served: u64,
    /// Requests refused (unknown hash, bad ranges, over a limit).
    pub refused: u64,
    /// Group bytes written to streams (counted as they go, so an answer cut off midway counts
    /// what left).
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Inner {
    manifests: RwLock<HashMap<Hash, Arc<Vec<u8>>>>,
    files: RwLock<HashMap<Hash, Arc<Shared>>>,
    per_peer: Mutex<HashMap<RemoteIdentity, usize>>,
    stats: Mutex<ProviderStats>,
    total: Mutex<usize>,
}

/// Serves content. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Provider {
    inner: Arc<Inner>,
}

/// Frees a request's slots when it ends.
struct Slot<'a> {
    inner: &'a Inner,
    peer: RemoteIdentity,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.inner.total.lock().expect("slot lock") -= 1;
        let mut per_peer = self.inner.per_peer.lock().expect("slot lock");
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

impl Provider {
    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves this provider's content on `p2p` ([`PROTOCOL`], and [`PROTOCOL_V1`] for receivers
    /// of the first version).
    pub fn register(&self, p2p: &P2P) -> Result<(), warren::RegisterError> {
        for name in [PROTOCOL, PROTOCOL_V1] {
            let this = self.clone();
            p2p.register_protocol(name, move |stream| {
                let this = this.clone();
                async move { this.serve(stream).await }
            })?;
        }
        Ok(())
    }

    /// Adds files and folders (each by its own name; a folder with everything under it) and
    /// returns the manifest and its hash, which a receiver asks for. Hashing reads each file
    /// once.
    pub async fn add_paths(&self, paths: &[PathBuf]) -> Result<(Manifest, Hash), AddError> {
        let paths = paths.to_vec();
        let (manifest, shared) =
            tokio::task::spawn_blocking(move || collect(&paths)).await.expect("the hashing task does not panic")?;
        let hash = manifest.hash();
        let mut files = self.inner.files.write().expect("provider lock");
        for file in shared {
            files.insert(file.outboard.root(), Arc::new(file));
        }
        self.inner.manifests.write().expect("provider lock").insert(hash, Arc::new(manifest.to_bytes()));
        Ok((manifest, hash))
    }

    /// Counters so far.
    pub fn stats(&self) -> ProviderStats {
        self.inner.stats.lock().expect("stats lock").clone()
    }

    fn take_slot(&self, peer: RemoteIdentity) -> Option<Slot<'_>> {
        let mut total = self.inner.total.lock().expect("slot lock");
        let mut per_peer = self.inner.per_peer.lock().expect("slot lock");
        let mine = per_peer.entry(peer).or_default();
        if *total >= MAX_CONCURRENT || *mine >= MAX_PER_PEER {
            if *mine == 0 {
                per_peer.remove(&peer);
            }
            return None;
        }
        *total += 1;
        *mine += 1;
        Some(Slot { inner: &self.inner, peer })
    }

    /// Serves one stream: one request.
    pub async fn serve(&self, mut stream: Stream) {
        let peer = stream.remote();
        let request = match warren::wire::control::read::<_, Request>(&mut stream).await {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%peer, %error, "unreadable transfer request");
                return;
            }
        };
        let Some(_slot) = self.take_slot(peer) else {
            return self.refuse(&mut stream, "too many requests at once").await;
        };
        let result = match request {
            Request::Manifest { hash } => {
                let bytes = self.inner.manifests.read().expect("provider lock").get(&hash).cloned();
                match bytes {
                    Some(bytes) => send_bytes(&mut stream, &bytes).await,
                    None => return self.refuse(&mut stream, "no such content here").await,
                }
            }
            Request::Outboard { hash } => match self.file(&hash) {
                Some(file) => send_bytes(&mut stream, file.outboard.cvs().as_flattened()).await,
                None => return self.refuse(&mut stream, "no such file here").await,
            },
            Request::Groups { hash, ranges } => {
                let Some(file) = self.file(&hash) else {
                    return self.refuse(&mut stream, "no such file here").await;
                };
                if let Err(error) = check_ranges(&ranges, file.outboard.groups()) {
                    return self.refuse(&mut stream, &error.to_string()).await;
                }
                let handle = match open_unchanged(&file) {
                    Ok(handle) => handle,
                    Err(reason) => return self.refuse(&mut stream, &reason).await,
                };
                self.send_groups(&mut stream, &file, &handle, &ranges).await
            }
            Request::Files { hashes } => {
                let mut files = Vec::with_capacity(hashes.len());
                for hash in &hashes {
                    match self.file(hash) {
                        Some(file) if file.outboard.groups() == 1 => match open_unchanged(&file) {
                            Ok(handle) => files.push((file, handle)),
                            Err(reason) => return self.refuse(&mut stream, &reason).await,
                        },
                        Some(_) => {
                            return self.refuse(&mut stream, "a file of more than one group asked for whole").await;
                        }
                        None => return self.refuse(&mut stream, "no such file here").await,
                    }
                }
                if files.is_empty() {
                    return self.refuse(&mut stream, "no files asked for").await;
                }
                self.send_files(&mut stream, &files).await
            }
        };
        match result {
            Ok(()) => self.inner.stats.lock().expect("stats lock").served += 1,
            Err(error) => tracing::debug!(%peer, %error, "transfer request ended"),
        }
        let _ = stream.finish();
    }

    fn file(&self, hash: &Hash) -> Option<Arc<Shared>> {
        self.inner.files.read().expect("provider lock").get(hash).cloned()
    }

    async fn refuse(&self, stream: &mut Stream, reason: &str) {
        self.inner.stats.lock().expect("stats lock").refused += 1;
        let _ = warren::wire::control::write(stream, &Response::Refused { reason: reason.to_owned() }).await;
        let _ = stream.finish();
    }

    async fn send_groups(
        &self,
        stream: &mut Stream,
        file: &Shared,
        handle: &std::fs::File,
        ranges: &[(u64, u64)],
    ) -> std::io::Result<()> {
        let size = file.outboard.size();
        let spans: Vec<(u64, u64)> = ranges
            .iter()
            .map(|&(start, end)| (group_range(size, start).start, group_range(size, end - 1).end))
            .collect();
        let len: u64 = spans.iter().map(|(s, e)| e - s).sum();
        warren::wire::control::write(stream, &Response::Ok { len }).await.map_err(std::io::Error::other)?;
        for (start, end) in spans {
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(READ_BUF);
                // Read into a buffer of its own and hand it over: the stream takes it without a
                // copy.
                stream.send_mut().write_chunk(read_piece(handle, at, n)?).await?;
                self.inner.stats.lock().expect("stats lock").bytes += n as u64;
                at += n as u64;
            }
        }
        Ok(())
    }

    /// Sends small files whole, back to back (each at most one group, so at most
    /// [`crate::wire::MAX_FILES_PER_REQUEST`] groups in all), opened by [`open_unchanged`].
    async fn send_files(&self, stream: &mut Stream, files: &[(Arc<Shared>, std::fs::File)]) -> std::io::Result<()> {
        let len: u64 = files.iter().map(|(f, _)| f.outboard.size()).sum();
        let mut bytes = bytes::BytesMut::zeroed(len as usize);
        let mut at = 0usize;
        for (file, handle) in files {
            let size = file.outboard.size() as usize;
            handle.read_exact_at(&mut bytes[at..at + size], 0)?;
            at += size;
        }
        warren::wire::control::write(stream, &Response::Ok { len }).await.map_err(std::io::Error::other)?;
        stream.send_mut().write_chunk(bytes.freeze()).await?;
        self.inner.stats.lock().expect("stats lock").bytes += len;
        Ok(())
    }
}

/// Reads `len` bytes at `offset` into a buffer of their own, which is not zeroed first: the read
/// fills it (zeroing cost a pass over every byte sent). A file that ends early is an error.
fn read_piece(handle: &std::fs::File, offset: u64, len: usize) -> std::io::Result<bytes::Bytes> {
    let mut piece = bytes::BytesMut::with_capacity(len);
    while piece.len() < len {
        let (filled, left) = (piece.len(), len - piece.len());
        let spare = &mut piece.spare_capacity_mut()[..left];
        let at = offset + filled as u64;
        // SAFETY: the kernel writes at most `spare.len()` bytes into `spare`, which is that long
        // and owned by `piece`; the descriptor is `handle`'s for the call.
        let got = unsafe {
            libc::pread(
                std::os::fd::AsRawFd::as_raw_fd(handle),
                spare.as_mut_ptr().cast(),
                spare.len(),
                at as libc::off_t,
            )
        };
        match got {
            0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ended early")),
            got if got > 0 => {
                // SAFETY: the call above initialised `got` bytes right after the current length.
                unsafe { piece.set_len(filled + got as usize) };
            }
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(piece.freeze())
}

/// Opens a file to serve, or says why not: it cannot be read, or it changed since it was
/// hashed (its length differs), and what it would send would not verify.
fn open_unchanged(file: &Shared) -> Result<std::fs::File, String> {
    let path = file.path.display();
    let handle = std::fs::File::open(&file.path).map_err(|e| format!("{path} cannot be read: {e}"))?;
    match handle.metadata() {
        Ok(meta) if meta.len() == file.outboard.size() => Ok(handle),
        Ok(_) => Err(format!("{path} changed since it was added")),
        Err(e) => Err(format!("{path} cannot be read: {e}")),
    }
}

async fn send_bytes(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    warren::wire::control::write(stream, &Response::Ok { len: bytes.len() as u64 })
        .await
        .map_err(std::io::Error::other)?;
    stream.write_all(bytes).await
}

/// Walks `paths`, hashing every file: the manifest and the files to serve.
fn collect(paths: &[PathBuf]) -> Result<(Manifest, Vec<Shared>), AddError> {
    let mut entries = Vec::new();
    let mut shared = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| AddError::Name { path: path.clone(), why: "no UTF-8 file name".into() })?
            .to_owned();
        walk(path, &name, &mut entries, &mut shared)?;
    }
    if entries.is_empty() {
        return Err(AddError::Empty);
    }
    Ok((Manifest::new(entries)?, shared))
}

fn walk(path: &Path, name: &str, entries: &mut Vec<Entry>, shared: &mut Vec<Shared>) -> Result<(), AddError> {
    let io = |error| AddError::Io { path: path.to_owned(), error };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.file_type().is_symlink() {
        return Err(AddError::Symlink(path.to_owned()));
    }
    if meta.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(path).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let child_name = child.file_name();
            let child_name = child_name
                .to_str()
                .ok_or_else(|| AddError::Name { path: child.path(), why: "not UTF-8".into() })?
                .to_owned();
            walk(&child.path(), &format!("{name}/{child_name}"), entries, shared)?;
        }
        return Ok(());
    }
    if !meta.is_file() {
        return Err(AddError::Special(path.to_owned()));
    }
    check_path(name).map_err(|e| AddError::Name { path: path.to_owned(), why: e.to_string() })?;
    let outboard = hash_file(path, meta.len()).map_err(io)?;
    entries.push(Entry {
        path: name.to_owned(),
        size: meta.len(),
        mode: meta.permissions().mode() & 0o777,
        hash: outboard.root(),
    });
    shared.push(Shared { path: path.to_owned(), outboard });
    Ok(())
}

/// A file's outboard, read once.
pub fn hash_file(path: &Path, size: u64) -> std::io::Result<Outboard> {
    let file = std::fs::File::open(path)?;
    let mut builder = OutboardBuilder::new(size);
    let mut buf = vec![0u8; READ_BUF];
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(READ_BUF);
        file.read_exact_at(&mut buf[..n], at)?;
        builder.push(&buf[..n]);
        at += n as u64;
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_is_the_file_s_bytes_and_a_file_that_ends_early_is_an_error() {
        let dir = crate::testing::temp("read-piece");
        let path = dir.join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let handle = std::fs::File::open(&path).unwrap();
        assert_eq!(&read_piece(&handle, 0, 100_000).unwrap()[..], &data[..]);
        assert_eq!(&read_piece(&handle, 12_345, 4096).unwrap()[..], &data[12_345..12_345 + 4096]);
        assert!(read_piece(&handle, 0, 0).unwrap().is_empty());
        // Shrunk after it was opened: the rest is not made up.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(50_000).unwrap();
        let error = read_piece(&handle, 49_000, 2000).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
