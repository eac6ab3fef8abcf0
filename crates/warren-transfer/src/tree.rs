//! Verified streaming: content is addressed by its plain BLAKE3 hash (what `b3sum` prints), and
//! checked 16 KiB at a time.
//!
//! BLAKE3 hashes 1 KiB chunks into a binary tree whose left subtrees always hold a power of two
//! chunks. Every aligned 16 KiB *group* of a file is therefore a whole subtree, with a chaining
//! value of its own that [`blake3::hazmat`] computes from the group's bytes and offset. A file's
//! [`Outboard`] is the list of its groups' chaining values: rebuilding the tree above them gives
//! the root, so an outboard is checked against the root hash before it is trusted, and each group
//! is then checked on its own against its entry, before a byte of it is written.
//!
//! Why not `bao-tree`: its encodings interleave the tree with the data in an order fixed by the
//! request, and its API reads and writes through its own I/O traits. Here the receiver must take
//! groups in any order from several peers, keep what it verified across a crash, and be a plain
//! state machine fed bytes; a flat list of chaining values (32 bytes per 16 KiB, 0.2 % of the
//! file, 2 MiB per GiB) does that with about a hundred lines over `blake3::hazmat`. The cost: a
//! receiver fetches a file's whole outboard before its first group, where bao sends only the
//! nodes on the path of the ranges asked for.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

/// A chunk group: the unit that is verified, requested and resumed.
pub const GROUP: u64 = 16 * 1024;

/// A 32-byte BLAKE3 hash.
pub type Hash = [u8; 32];

/// How many groups a file of `size` bytes has (an empty file has one, empty).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP).max(1)
}

/// The byte range of group `index` in a file of `size` bytes.
pub fn group_range(size: u64, index: u64) -> std::ops::Range<u64> {
    let start = index.saturating_mul(GROUP).min(size);
    start..start.saturating_add(GROUP).min(size)
}

/// The chaining value of group `index` of a file of `size` bytes, from its bytes. A file of one
/// group has no chaining values: its group is checked against the root itself.
pub fn group_cv(data: &[u8], index: u64) -> ChainingValue {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index * GROUP);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Why an outboard or a group was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The outboard does not have one entry per group.
    #[error("the outboard has {got} entries where a {size}-byte file has {want} groups")]
    WrongLength {
        /// The file's size.
        size: u64,
        /// Entries expected.
        want: u64,
        /// Entries given.
        got: u64,
    },
    /// The outboard's tree does not give the root hash: the sender lied or the data is corrupt.
    #[error("the outboard does not match the root hash")]
    WrongRoot,
    /// A group's bytes do not match its chaining value.
    #[error("group {index} does not match its hash")]
    WrongGroup {
        /// The group.
        index: u64,
    },
    /// A group of the wrong length.
    #[error("group {index} has {got} bytes, {want} expected")]
    WrongGroupLength {
        /// The group.
        index: u64,
        /// Its length.
        want: u64,
        /// What came.
        got: u64,
    },
}

/// A file's groups' chaining values, checked against its root hash. The tree above them depends
/// on the group count only, so the exact size within the last group is bound by that group's
/// chaining value, which covers its length: a wrong size fails at the last group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outboard {
    size: u64,
    root: Hash,
    /// One per group; empty for a file of one group (its root is its check).
    cvs: Vec<ChainingValue>,
}

impl Outboard {
    /// Computes the outboard of `data` (a whole file in memory; see [`OutboardBuilder`] for a
    /// stream).
    pub fn of(data: &[u8]) -> Self {
        let mut builder = OutboardBuilder::new(data.len() as u64);
        for chunk in data.chunks(GROUP as usize) {
            builder.push(chunk);
        }
        builder.finish()
    }

    /// Takes a peer's chaining values for a file of `size` bytes and `root`, checked.
    pub fn verified(size: u64, root: Hash, cvs: Vec<ChainingValue>) -> Result<Self, VerifyError> {
        let want = if group_count(size) == 1 { 0 } else { group_count(size) };
        if cvs.len() as u64 != want {
            return Err(VerifyError::WrongLength { size, want, got: cvs.len() as u64 });
        }
        if want > 0 && root_of(size, &cvs) != root {
            return Err(VerifyError::WrongRoot);
        }
        Ok(Self { size, root, cvs })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The chaining values, one per group (none for a one-group file).
    pub fn cvs(&self) -> &[ChainingValue] {
        &self.cvs
    }

    /// How many groups the file has.
    pub fn groups(&self) -> u64 {
        group_count(self.size)
    }

    /// Checks group `index`'s bytes: the proof that they verified, which a
    /// [`Fetch`](crate::fetch::Fetch) takes.
    pub fn verify_group(&self, index: u64, data: &[u8]) -> Result<Checked, VerifyError> {
        let range = group_range(self.size, index);
        if index >= self.groups() || data.len() as u64 != range.end - range.start {
            return Err(VerifyError::WrongGroupLength { index, want: range.end - range.start, got: data.len() as u64 });
        }
        let ok = if self.cvs.is_empty() {
            blake3::hash(data).as_bytes() == &self.root
        } else {
            group_cv(data, index) == self.cvs[index as usize]
        };
        if ok {
            Ok(Checked { root: self.root, index, len: data.len() as u64 })
        } else {
            Err(VerifyError::WrongGroup { index })
        }
    }
}

/// Group `index` of the file `root` names, `len` bytes, verified: only
/// [`Outboard::verify_group`] makes one, so whoever holds one need not hash the bytes again.
/// The check can thus run outside any lock the state machine is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    root: Hash,
    index: u64,
    len: u64,
}

impl Checked {
    /// The file's root hash.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The group.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Is the group empty (the one group of an empty file)?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Builds an [`Outboard`] from a file's bytes in order, group by group.
#[derive(Debug)]
pub struct OutboardBuilder {
    size: u64,
    cvs: Vec<ChainingValue>,
    single: blake3::Hasher,
    pending: Vec<u8>,
}

impl OutboardBuilder {
    /// For a file of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self { size, cvs: Vec::new(), single: blake3::Hasher::new(), pending: Vec::new() }
    }

    /// The next bytes of the file.
    pub fn push(&mut self, mut data: &[u8]) {
        if group_count(self.size) == 1 {
            self.single.update(data);
            return;
        }
        while !data.is_empty() {
            let take = (GROUP as usize - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == GROUP as usize {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let index = self.cvs.len() as u64;
        self.cvs.push(group_cv(&self.pending, index));
        self.pending.clear();
    }

    /// The outboard (panics if the bytes pushed were not `size`).
    pub fn finish(mut self) -> Outboard {
        if group_count(self.size) == 1 {
            let root = *self.single.finalize().as_bytes();
            return Outboard { size: self.size, root, cvs: Vec::new() };
        }
        if !self.pending.is_empty() {
            self.flush();
        }
        assert_eq!(self.cvs.len() as u64, group_count(self.size), "the builder got the whole file");
        let root = root_of(self.size, &self.cvs);
        Outboard { size: self.size, root, cvs: self.cvs }
    }
}

/// The root hash of a file of `size` bytes (more than one group) from its groups' values.
fn root_of(size: u64, cvs: &[ChainingValue]) -> Hash {
    let split = left_subtree_len(size);
    let left = subtree(0, split, cvs);
    let right = subtree(split / GROUP, size - split, cvs);
    *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
}

/// The chaining value of the subtree of `len` bytes starting at group `first`. A subtree longer
/// than a group splits at a power of two chunks, a multiple of the group size, so groups are
/// never cut.
fn subtree(first: u64, len: u64, cvs: &[ChainingValue]) -> ChainingValue {
    if len <= GROUP {
        return cvs[first as usize];
    }
    let split = left_subtree_len(len);
    let left = subtree(first, split, cvs);
    let right = subtree(first + split / GROUP, len - split, cvs);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[test]
    fn the_root_is_the_plain_blake3_hash_at_every_size_around_the_boundaries() {
        let g = GROUP as usize;
        for len in [0, 1, 1023, 1024, 1025, g - 1, g, g + 1, 2 * g, 3 * g + 5, 4 * g, 5 * g - 1, 17 * g + 100, 64 * g] {
            let data = bytes(len);
            let outboard = Outboard::of(&data);
            assert_eq!(outboard.root(), *blake3::hash(&data).as_bytes(), "{len} bytes");
            assert_eq!(outboard.groups(), group_count(len as u64));
            for index in 0..outboard.groups() {
                let range = group_range(len as u64, index);
                outboard.verify_group(index, &data[range.start as usize..range.end as usize]).unwrap();
            }
            let again = Outboard::verified(len as u64, outboard.root(), outboard.cvs().to_vec()).unwrap();
            assert_eq!(again, outboard);
        }
    }

    #[test]
    fn a_wrong_group_or_outboard_is_caught() {
        let data = bytes(5 * GROUP as usize + 3);
        let outboard = Outboard::of(&data);
        let mut group = data[GROUP as usize..2 * GROUP as usize].to_vec();
        group[100] ^= 1;
        assert_eq!(outboard.verify_group(1, &group), Err(VerifyError::WrongGroup { index: 1 }));
        // The right bytes at the wrong index, a short group, a group past the end.
        assert!(outboard.verify_group(2, &data[GROUP as usize..2 * GROUP as usize]).is_err());
        assert!(outboard.verify_group(0, &data[..100]).is_err());
        assert!(outboard.verify_group(9, &[]).is_err());
        let mut cvs = outboard.cvs().to_vec();
        cvs[3][0] ^= 1;
        assert_eq!(Outboard::verified(data.len() as u64, outboard.root(), cvs), Err(VerifyError::WrongRoot));
        let short = outboard.cvs()[..5].to_vec();
        assert!(matches!(
            Outboard::verified(data.len() as u64, outboard.root(), short),
            Err(VerifyError::WrongLength { .. })
        ));
        // A size that lies about the file: with another group count the tree changes and the
        // outboard is refused; within the last group, the tree is the same, and the last group
        // (whose chaining value covers its length) is what fails.
        assert!(Outboard::verified(data.len() as u64 + GROUP, outboard.root(), outboard.cvs().to_vec()).is_err());
        let longer = Outboard::verified(data.len() as u64 + 1, outboard.root(), outboard.cvs().to_vec()).unwrap();
        let mut last = data[5 * GROUP as usize..].to_vec();
        last.push(0);
        assert_eq!(longer.verify_group(5, &last), Err(VerifyError::WrongGroup { index: 5 }));
        // A one-group file is checked against the root directly.
        let small = bytes(100);
        let outboard = Outboard::of(&small);
        assert!(outboard.verify_group(0, &small).is_ok());
        assert!(outboard.verify_group(0, &small[1..]).is_err());
    }

    #[test]
    fn the_builder_takes_the_bytes_in_any_slicing() {
        let data = bytes(3 * GROUP as usize + 777);
        let mut builder = OutboardBuilder::new(data.len() as u64);
        for piece in data.chunks(1000) {
            builder.push(piece);
        }
        assert_eq!(builder.finish(), Outboard::of(&data));
    }
}
