//! [`Buffered`]: the synchronous fast path. When a whole message already sits in a
//! [`Reader`](crate::Reader)'s buffer, it is decoded without a single `.await`.
//!
//! The fast path only ever answers "here is the value" or "not here": on any shortfall or
//! invalid input it returns `None` and the reader decodes the same bytes again on the async
//! path, which produces the canonical error. So both paths accept exactly the same messages,
//! and errors come from one place.

/// A synchronous cursor over buffered bytes with the same length limit, budget and depth
/// limit as the reader it came from.
#[derive(Debug)]
pub struct Buffered<'a> {
    bytes: &'a [u8],
    pos: usize,
    budget: u64,
    max_len: u64,
    depth: u32,
}

/// Decodes the unsigned LEB128 varint at the start of `bytes`: its value and length, an error
/// for an overlong or overflowing encoding, or `None` if `bytes` end before it does. At most 10
/// bytes are looked at; every value has exactly one accepted encoding.
pub(crate) fn parse_varint(bytes: &[u8]) -> Option<Result<(u64, usize), &'static str>> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().take(10).enumerate() {
        if i == 9 && byte > 1 {
            return Some(Err("varint overflows u64"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Some(Err("overlong varint"));
            }
            return Some(Ok((value, i + 1)));
        }
    }
    None
}

impl<'a> Buffered<'a> {
    pub(crate) fn new(bytes: &'a [u8], budget: u64, max_len: u64) -> Self {
        Self { bytes, pos: 0, budget, max_len, depth: 0 }
    }

    /// Bytes taken so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True if no buffered byte is left (the stream may still hold more).
    pub fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    /// Takes `n` bytes, if they are buffered and within the budget.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.bytes.len() && *end as u64 <= self.budget)?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Some(out)
    }

    /// Takes `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// Takes one byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// Takes a LEB128 varint (`None` if overlong or overflowing too).
    pub fn varint(&mut self) -> Option<u64> {
        let (value, len) = parse_varint(&self.bytes[self.pos..])?.ok()?;
        self.take(len)?;
        Some(value)
    }

    /// Takes a length prefix within the limit in force.
    pub fn len(&mut self) -> Option<usize> {
        let len = self.varint()?;
        if len > self.max_len {
            return None;
        }
        usize::try_from(len).ok()
    }

    /// Sets the length limit, returning the previous one.
    pub fn set_max_len(&mut self, max_len: u64) -> u64 {
        std::mem::replace(&mut self.max_len, max_len)
    }

    /// Enters a level of `Box` nesting.
    pub fn enter(&mut self) -> Option<()> {
        (self.depth < crate::MAX_DEPTH).then(|| self.depth += 1)
    }

    /// Leaves a level of nesting.
    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// How many elements may be allocated up front for a sequence of `count`.
    pub fn prealloc(&self, count: usize, elem_size: usize) -> usize {
        count.min((self.bytes.len() - self.pos) / elem_size.max(1)).min(64 * 1024)
    }
}
