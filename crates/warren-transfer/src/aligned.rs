//! Buffers for `O_DIRECT`: the receiver writes a large file's verified groups around the page
//! cache, which needs the buffer's address, the offset and the length aligned.

/// What `O_DIRECT` needs aligned: offsets, lengths and buffer addresses (4 KiB covers every
/// logical block size up to it; a file system that wants more refuses, and the write falls
/// back to the page cache).
pub const DIRECT_ALIGN: usize = 4096;

/// A buffer of `len` bytes (zeroed when made) that start at a [`DIRECT_ALIGN`]-aligned address.
#[derive(Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - storage.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
        Self { storage, start, len }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// Its bytes, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_buffer_starts_aligned_and_has_its_length() {
        for len in [0, 1, 4095, 4096, 256 * 1024 + 7] {
            let mut buf = AlignedBuf::new(len);
            assert_eq!(buf.bytes().as_ptr().addr() % DIRECT_ALIGN, 0, "len {len}");
            assert_eq!(buf.bytes_mut().len(), len);
            assert_eq!(buf.len(), len);
        }
        assert_eq!(AlignedBuf::default().len(), 0);
    }
}
