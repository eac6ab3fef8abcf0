//! The folders under a receive's destination, held open by descriptor: a file goes into place
//! by `renameat2` relative to its folder's descriptor, never by a path looked up again, so a
//! folder swapped for a symbolic link after it was checked cannot send a file elsewhere.
//!
//! Each folder is opened from its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`: a
//! component that is a symbolic link or a file is refused ([`FolderError::InTheWay`]), one that
//! is missing is made (`mkdirat`). Descriptors are kept for the rest of the receive (ten
//! thousand files in ten folders open ten folders), at most [`MAX_OPEN`] at a time.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Folder descriptors kept open at most; past it the cache starts again.
pub const MAX_OPEN: usize = 256;

/// Why a file could not go into place.
#[derive(Debug)]
pub enum FolderError {
    /// Something that is not a folder is where a folder goes, or something is at the final name.
    InTheWay(PathBuf),
    /// The file system refused.
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

/// The destination's folders.
#[derive(Debug)]
pub struct Folders {
    out: PathBuf,
    root: Arc<OwnedFd>,
    /// Folders opened so far, by their path under the destination.
    open: Mutex<HashMap<String, Arc<OwnedFd>>>,
}

fn c_string(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(std::io::Error::other)
}

/// Opens folder `name` in `parent` without following a symbolic link.
fn open_at(parent: RawFd, name: &CString) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and lives for the call; `parent` is an open descriptor.
    let fd = unsafe {
        libc::openat(parent, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Folders {
    /// The folders under `out`, which must exist.
    pub fn open(out: &Path) -> Result<Self, FolderError> {
        let io = |error| FolderError::Io { path: out.to_owned(), error };
        let name = c_string(out.as_os_str().as_bytes()).map_err(io)?;
        let root = open_at(libc::AT_FDCWD, &name).map_err(io)?;
        Ok(Self { out: out.to_owned(), root: Arc::new(root), open: Mutex::default() })
    }

    /// The folder `folder` (a checked path under the destination, `/`-separated; empty for the
    /// destination itself), made where missing.
    fn folder(&self, folder: &str) -> Result<Arc<OwnedFd>, FolderError> {
        if folder.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(fd) = self.open.lock().expect("folder lock").get(folder) {
            return Ok(fd.clone());
        }
        let (parent, name) = folder.rsplit_once('/').unwrap_or(("", folder));
        let parent = self.folder(parent)?;
        let path = || self.out.join(folder);
        let io = |error| FolderError::Io { path: path(), error };
        let c_name = c_string(name.as_bytes()).map_err(io)?;
        let fd = match open_at(parent.as_raw_fd(), &c_name) {
            Ok(fd) => fd,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: as for `open_at`.
                let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), c_name.as_ptr(), 0o755) };
                if rc != 0 {
                    let error = std::io::Error::last_os_error();
                    // Made by someone else meanwhile: opened below like any other.
                    if error.raw_os_error() != Some(libc::EEXIST) {
                        return Err(io(error));
                    }
                }
                open_at(parent.as_raw_fd(), &c_name).map_err(|error| in_the_way(error, path()))?
            }
            Err(error) => return Err(in_the_way(error, path())),
        };
        let fd = Arc::new(fd);
        let mut open = self.open.lock().expect("folder lock");
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        open.insert(folder.to_owned(), fd.clone());
        Ok(fd)
    }

    /// Renames `from` to `path` (a checked path under the destination) unless anything is
    /// there, making its folders where missing.
    pub fn place(&self, from: &Path, path: &str) -> Result<(), FolderError> {
        let (folder, name) = path.rsplit_once('/').unwrap_or(("", path));
        let final_path = || self.out.join(path);
        let io = |error| FolderError::Io { path: final_path(), error };
        let (old, new) = (c_string(from.as_os_str().as_bytes()).map_err(io)?, c_string(name.as_bytes()).map_err(io)?);
        let mut again = true;
        loop {
            let dir = self.folder(folder)?;
            match rename_new(&old, dir.as_raw_fd(), &new) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(FolderError::InTheWay(final_path()));
                }
                // The folder (or one above it) was removed since it was opened: open (make)
                // them again, once.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) && again && !folder.is_empty() => {
                    again = false;
                    self.open.lock().expect("folder lock").clear();
                }
                Err(error) => return Err(io(error)),
            }
        }
    }
}

/// A component that is a symbolic link (`ELOOP` with `O_NOFOLLOW`) or not a folder is in the
/// way; anything else is the file system's error.
fn in_the_way(error: std::io::Error, path: PathBuf) -> FolderError {
    match error.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => FolderError::InTheWay(path),
        _ => FolderError::Io { path, error },
    }
}

/// Renames `old` to `new` in folder `dir` unless something is there (`ErrorKind::AlreadyExists`),
/// in one atomic step where the file system allows it (`renameat2(RENAME_NOREPLACE)`), else
/// looking first.
fn rename_new(old: &CString, dir: RawFd, new: &CString) -> std::io::Result<()> {
    // SAFETY: both names are NUL-terminated and live for the call; `dir` is an open descriptor.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, old.as_ptr(), dir, new.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    // No such call (ENOSYS: an old kernel, a sandbox), or no such flag for this file system.
    if !matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) {
        return Err(error);
    }
    // SAFETY: as above; `stat` is written by the call.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir, new.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    // SAFETY: as above.
    if unsafe { libc::renameat(libc::AT_FDCWD, old.as_ptr(), dir, new.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp;

    #[test]
    fn a_folder_swapped_for_a_link_after_it_was_opened_gets_nothing() {
        let dir = temp("swap");
        let (out, elsewhere) = (dir.join("out"), dir.join("elsewhere"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let folders = Folders::open(&out).unwrap();
        std::fs::write(dir.join("one"), b"1").unwrap();
        folders.place(&dir.join("one"), "album/docs/one").unwrap();
        assert_eq!(std::fs::read(out.join("album/docs/one")).unwrap(), b"1");
        // The folder moves away and a link to elsewhere takes its place: the next file goes
        // into the folder that was opened (now at its new name), not through the link.
        std::fs::rename(out.join("album"), dir.join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("album")).unwrap();
        std::fs::write(dir.join("two"), b"2").unwrap();
        folders.place(&dir.join("two"), "album/docs/two").unwrap();
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing through the link");
        assert_eq!(std::fs::read(dir.join("moved/docs/two")).unwrap(), b"2");
        // A fresh receive (nothing open yet) refuses the link.
        let fresh = Folders::open(&out).unwrap();
        std::fs::write(dir.join("three"), b"3").unwrap();
        let refused = fresh.place(&dir.join("three"), "album/three").unwrap_err();
        assert!(
            matches!(&refused, FolderError::InTheWay(path) if path.ends_with("album/three") || path.ends_with("album"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn nothing_is_overwritten_and_a_removed_folder_is_made_again() {
        let dir = temp("noreplace");
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("a")).unwrap();
        std::fs::write(out.join("a/taken"), b"mine").unwrap();
        let folders = Folders::open(&out).unwrap();
        std::fs::write(dir.join("new"), b"new").unwrap();
        assert!(matches!(folders.place(&dir.join("new"), "a/taken"), Err(FolderError::InTheWay(_))));
        assert_eq!(std::fs::read(out.join("a/taken")).unwrap(), b"mine");
        assert!(dir.join("new").exists(), "the file that could not go into place is still there");
        folders.place(&dir.join("new"), "a/b/c").unwrap();
        std::fs::remove_dir_all(out.join("a")).unwrap();
        std::fs::write(dir.join("again"), b"again").unwrap();
        folders.place(&dir.join("again"), "a/b/c").unwrap();
        assert_eq!(std::fs::read(out.join("a/b/c")).unwrap(), b"again");
        // A file where a folder goes is in the way.
        std::fs::write(out.join("plain"), b"").unwrap();
        std::fs::write(dir.join("under"), b"").unwrap();
        assert!(matches!(folders.place(&dir.join("under"), "plain/x"), Err(FolderError::InTheWay(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
