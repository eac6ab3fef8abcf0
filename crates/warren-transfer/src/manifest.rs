//! What a transfer carries: a manifest of files (relative path, size, mode, BLAKE3 root hash),
//! itself addressed by the BLAKE3 hash of its encoding, so that a ticket's one hash pins every
//! byte of every file. A single file is a manifest of one entry.
//!
//! Paths are checked on both sides: relative, `/`-separated, no empty, `.` or `..` component,
//! no NUL or backslash, at most [`MAX_PATH`] bytes and [`MAX_DEPTH`] components, and no entry
//! inside another entry's path (a file cannot also be a directory). Symbolic links are never
//! sent: the sender refuses them, and the receiver never follows one in the destination (see
//! `store`).

use crate::tree::Hash;

/// Most files in one manifest.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Most components of a path.
pub const MAX_DEPTH: usize = 64;
/// Largest encoded manifest.
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// The folder a receiver keeps transfers in progress in, under its destination: no entry may
/// name it (a manifest could otherwise write over another transfer's state, or its own).
pub const RESERVED_DIR: &str = ".warren-partial";

/// One file.
#[derive(Debug, Clone, PartialEq, Eq, warren_proto::Encode, warren_proto::Decode)]
pub struct Entry {
    /// Where it goes under the destination, `/`-separated.
    #[proto(max_len = 4096)]
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Unix permission bits (`0o777` at most; the receiver keeps the executable bits).
    pub mode: u32,
    /// Its BLAKE3 hash.
    pub hash: Hash,
}

/// A set of files.
#[derive(Debug, Clone, PartialEq, Eq, Default, warren_proto::Encode, warren_proto::Decode)]
#[proto(max_bytes = 16777216)]
pub struct Manifest {
    /// The files, sorted by path.
    #[proto(max_len = 100000)]
    pub entries: Vec<Entry>,
}

/// Why a manifest or a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A path that could leave the destination or is not portable.
    #[error("refused path {path:?}: {why}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Two entries with one path, or a file where another entry needs a directory.
    #[error("path {0:?} appears twice or is both a file and a directory")]
    Clash(String),
    /// Too many entries.
    #[error("more than {MAX_ENTRIES} files")]
    TooMany,
    /// The bytes do not decode.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// The bytes do not hash to the manifest's hash.
    #[error("the manifest does not match its hash")]
    WrongHash,
    /// A mode with more than permission bits.
    #[error("{path:?} has mode {mode:o}, more than permission bits")]
    BadMode {
        /// The path.
        path: String,
        /// The mode.
        mode: u32,
    },
}

/// Checks one path.
pub fn check_path(path: &str) -> Result<(), ManifestError> {
    let bad = |why| Err(ManifestError::BadPath { path: path.to_owned(), why });
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > MAX_PATH {
        return bad("too long");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.contains('\0') || path.contains('\\') {
        return bad("contains NUL or a backslash");
    }
    if path.split('/').next() == Some(RESERVED_DIR) {
        return bad("is under the receiver's folder for transfers in progress");
    }
    let mut depth = 0;
    for component in path.split('/') {
        depth += 1;
        match component {
            "" => return bad("has an empty component"),
            "." | ".." => return bad("has a . or .. component"),
            _ => {}
        }
        // `C:` and the like mean a drive elsewhere.
        if component.len() == 2 && component.ends_with(':') {
            return bad("names a drive");
        }
    }
    if depth > MAX_DEPTH {
        return bad("too deep");
    }
    Ok(())
}

impl Manifest {
    /// A manifest of `entries`, sorted and checked.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = Self { entries };
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks every path and mode, the count, and that no path clashes with another.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooMany);
        }
        for entry in &self.entries {
            check_path(&entry.path)?;
            if entry.mode & !0o777 != 0 {
                return Err(ManifestError::BadMode { path: entry.path.clone(), mode: entry.mode });
            }
        }
        // Sorted by path: a duplicate is next to its twin, and "a" is followed (maybe not at
        // once) by "a/…"; any path that is a prefix-directory of a later one clashes.
        let mut paths: Vec<&str> = self.entries.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        let files: std::collections::HashSet<&str> = paths.iter().copied().collect();
        if files.len() != paths.len() {
            let twin = paths.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]).unwrap_or_default();
            return Err(ManifestError::Clash(twin.to_owned()));
        }
        for path in &paths {
            let mut prefix = *path;
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                if files.contains(parent) {
                    return Err(ManifestError::Clash(parent.to_owned()));
                }
                prefix = parent;
            }
        }
        Ok(())
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        warren_proto::encode_to_vec(self).expect("a checked manifest is within its limits")
    }

    /// The manifest's hash: what a ticket names.
    pub fn hash(&self) -> Hash {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }

    /// Decodes `bytes` (a peer's), checks they hash to `hash`, and checks the manifest.
    pub fn from_bytes(bytes: &[u8], hash: &Hash) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Malformed(format!("{} bytes, over {MAX_MANIFEST_BYTES}", bytes.len())));
        }
        if blake3::hash(bytes).as_bytes() != hash {
            return Err(ManifestError::WrongHash);
        }
        let manifest: Manifest =
            warren_proto::decode_from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// The property the `transfer_wire` fuzz target checks for manifests: any bytes decode to a
/// checked manifest or are refused, without panicking.
#[doc(hidden)]
pub fn fuzz_manifest(data: &[u8]) {
    let hash = *blake3::hash(data).as_bytes();
    if let Ok(manifest) = Manifest::from_bytes(data, &hash) {
        assert!(manifest.entries.len() <= MAX_ENTRIES);
        for entry in &manifest.entries {
            check_path(&entry.path).expect("checked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry { path: path.into(), size: 1, mode: 0o644, hash: [0; 32] }
    }

    #[test]
    fn paths_that_could_leave_the_destination_are_refused() {
        for path in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "./a",
            "..",
            "a\\..\\b",
            "C:/x",
            "a/c:",
            "nul\0byte",
            ".warren-partial",
            ".warren-partial/0123/0.bits",
        ] {
            assert!(check_path(path).is_err(), "{path:?} accepted");
        }
        assert!(check_path(&"a/".repeat(MAX_DEPTH)).is_err());
        assert!(check_path(&"x".repeat(MAX_PATH + 1)).is_err());
        for path in
            ["a", "a/b/c.txt", ".hidden", "a/..b", "...", "a/.warren-partial", ".warren-partial2", "ünïcode/ファイル"]
        {
            check_path(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        }
    }

    #[test]
    fn clashing_entries_are_refused() {
        assert!(matches!(Manifest::new(vec![entry("a"), entry("a")]), Err(ManifestError::Clash(_))));
        assert!(matches!(Manifest::new(vec![entry("a/b"), entry("a")]), Err(ManifestError::Clash(p)) if p == "a"));
        assert!(matches!(Manifest::new(vec![entry("a/b/c"), entry("a/b")]), Err(ManifestError::Clash(_))));
        assert!(Manifest::new(vec![entry("a/b"), entry("a/c"), entry("ab")]).is_ok());
        let mut setuid = entry("x");
        setuid.mode = 0o4755;
        assert!(matches!(Manifest::new(vec![setuid]), Err(ManifestError::BadMode { .. })));
    }

    #[test]
    fn a_manifest_round_trips_and_is_pinned_by_its_hash() {
        let manifest = Manifest::new(vec![entry("b"), entry("a/x")]).unwrap();
        assert_eq!(manifest.entries[0].path, "a/x", "sorted");
        let bytes = manifest.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes, &manifest.hash()).unwrap(), manifest);
        let mut tampered = bytes.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(Manifest::from_bytes(&tampered, &manifest.hash()), Err(ManifestError::WrongHash));
        // A hostile sender's manifest that hashes right but holds a traversal is refused too.
        let evil = Manifest { entries: vec![entry("../../.bashrc")] };
        let bytes = warren_proto::encode_to_vec(&evil).unwrap();
        let hash = *blake3::hash(&bytes).as_bytes();
        assert!(matches!(Manifest::from_bytes(&bytes, &hash), Err(ManifestError::BadPath { .. })));
    }
}
