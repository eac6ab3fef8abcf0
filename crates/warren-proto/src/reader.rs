//! [`Reader`]: decodes messages straight off an `AsyncRead`, buffering internally and enforcing
//! the length limit and byte budget of each message.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{DecodeError, DecodeErrorKind, PathSegment};
use crate::{Buffered, Message};

/// Bytes buffered per read from the transport: one syscall serves many small fields.
pub const READ_BUFFER: usize = 16 * 1024;

/// Decodes messages from an async byte stream.
///
/// Keep one `Reader` per stream for its whole life: it reads ahead into an internal buffer, so
/// bytes of the next message may already sit in it. Large byte fields bypass the buffer and are
/// read straight into their destination.
pub struct Reader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    eof: bool,
    consumed: u64,
    budget: u64,
    max_len: u64,
    depth: u32,
}

impl<R> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("buffered", &(self.end - self.pos))
            .field("consumed", &self.consumed)
            .field("budget", &self.budget)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl<R: AsyncRead + Unpin + Send> Reader<R> {
    /// Wraps `inner` with a [`READ_BUFFER`]-byte buffer.
    pub fn new(inner: R) -> Self {
        Self::with_buffer(READ_BUFFER, inner)
    }

    /// Wraps `inner` with a `capacity`-byte buffer (at least 1).
    pub fn with_buffer(capacity: usize, inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            pos: 0,
            end: 0,
            eof: false,
            consumed: 0,
            budget: crate::DEFAULT_MAX_BYTES,
            max_len: crate::DEFAULT_MAX_LEN,
            depth: 0,
        }
    }

    /// Wraps `inner` without reading ahead: every read asks for exactly the bytes the decoder
    /// needs, so after a message the stream is positioned right after it (for a header followed
    /// by someone else's data). Slower for many small fields; only a `#[proto(default)]` field
    /// at the end of a message peeks one byte ahead.
    pub fn unbuffered(inner: R) -> Self {
        Self::with_buffer(1, inner)
    }

    /// Decodes the next message. At the end of the stream (no byte of a new message) the error
    /// is [`DecodeErrorKind::Closed`]; a message cut short is [`DecodeErrorKind::Truncated`].
    pub async fn decode<T: Message>(&mut self) -> Result<T, DecodeError> {
        self.consumed = 0;
        self.depth = 0;
        self.budget = T::MAX_BYTES;
        self.max_len = T::MAX_LEN;
        let in_type = |e: DecodeError| e.within(PathSegment::Type(T::NAME));
        // Fast path: the whole message is already buffered (after at most one read).
        if self.fill().await.map_err(in_type)? {
            let mut buffered = Buffered::new(&self.buf[self.pos..self.end], self.budget, self.max_len);
            if let Some(value) = T::decode_buffered(&mut buffered) {
                let taken = buffered.position();
                self.pos += taken;
                self.consumed = taken as u64;
                return Ok(value);
            }
        }
        T::decode(self).await.map_err(in_type)
    }

    /// The wrapped stream. Bytes already buffered are not in it any more.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.buf[self.pos..self.end].to_vec();
        (self.inner, rest)
    }

    /// The length limit in force.
    pub fn max_len(&self) -> u64 {
        self.max_len
    }

    /// Sets the length limit for what is decoded next; returns the previous one, which the
    /// caller restores (the derive does this around fields with `#[proto(max_len = …)]`).
    pub fn set_max_len(&mut self, max_len: u64) -> u64 {
        std::mem::replace(&mut self.max_len, max_len)
    }

    /// Enters one level of recursive nesting (`Box<T>`), refusing to go past
    /// [`MAX_DEPTH`](crate::MAX_DEPTH): each level costs stack while the decoder runs.
    pub fn enter(&mut self) -> Result<(), DecodeError> {
        if self.depth >= crate::MAX_DEPTH {
            return Err(DecodeError::new(DecodeErrorKind::TooDeep { max: crate::MAX_DEPTH }));
        }
        self.depth += 1;
        Ok(())
    }

    /// Leaves a level entered with [`Reader::enter`].
    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn eof_error(&self) -> DecodeError {
        if self.consumed == 0 {
            DecodeError::new(DecodeErrorKind::Closed)
        } else {
            DecodeError::new(DecodeErrorKind::Truncated)
        }
    }

    fn charge(&mut self, n: u64) -> Result<(), DecodeError> {
        let needed = self.consumed.saturating_add(n);
        if needed > self.budget {
            return Err(DecodeError::new(DecodeErrorKind::OverBudget { needed, budget: self.budget }));
        }
        Ok(())
    }

    async fn fill(&mut self) -> Result<bool, DecodeError> {
        if self.pos < self.end {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.pos = 0;
        self.end = 0;
        let n = self
            .inner
            .read(&mut self.buf)
            .await
            .map_err(|e| DecodeError::new(DecodeErrorKind::Io(e.kind(), e.to_string())))?;
        self.end = n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// True if the stream ended here (nothing buffered, nothing more to read). Trailing fields
    /// marked `#[proto(default)]` use this to take their default when an older peer's message
    /// ends before them.
    pub async fn at_end(&mut self) -> Result<bool, DecodeError> {
        Ok(!self.fill().await?)
    }

    /// Fills `out` completely.
    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), DecodeError> {
        self.charge(out.len() as u64)?;
        // Fast path: all of it is buffered (the common case for small fields).
        if self.end - self.pos >= out.len() {
            out.copy_from_slice(&self.buf[self.pos..self.pos + out.len()]);
            self.pos += out.len();
            self.consumed += out.len() as u64;
            return Ok(());
        }
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.end && out.len() - done >= self.buf.len() {
                // Large reads skip the buffer.
                let n = self
                    .inner
                    .read(&mut out[done..])
                    .await
                    .map_err(|e| DecodeError::new(DecodeErrorKind::Io(e.kind(), e.to_string())))?;
                if n == 0 {
                    self.eof = true;
                    return Err(self.eof_error());
                }
                done += n;
                self.consumed += n as u64;
                continue;
            }
            if !self.fill().await? {
                return Err(self.eof_error());
            }
            let n = (self.end - self.pos).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
            self.consumed += n as u64;
        }
        Ok(())
    }

    /// Reads one byte.
    pub async fn read_u8(&mut self) -> Result<u8, DecodeError> {
        if self.pos < self.end && self.consumed < self.budget {
            let b = self.buf[self.pos];
            self.pos += 1;
            self.consumed += 1;
            return Ok(b);
        }
        let mut b = [0u8; 1];
        self.read_exact(&mut b).await?;
        Ok(b[0])
    }

    /// Reads `N` bytes.
    pub async fn read_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        self.read_exact(&mut out).await?;
        Ok(out)
    }

    /// Reads an unsigned LEB128 varint of at most 10 bytes. Overlong encodings (a needless
    /// trailing zero byte) and values past `u64::MAX` are refused, so every value has exactly
    /// one encoding.
    pub async fn read_varint(&mut self) -> Result<u64, DecodeError> {
        if let Some(result) = self.buffered_varint() {
            return result;
        }
        self.read_varint_slow().await
    }

    /// Decodes a varint that lies wholly in the buffer, without any await; `None` if it does
    /// not (the slow path then reads byte by byte).
    fn buffered_varint(&mut self) -> Option<Result<u64, DecodeError>> {
        let (value, len) = match crate::buffered::parse_varint(&self.buf[self.pos..self.end])? {
            Ok(parsed) => parsed,
            Err(reason) => return Some(Err(DecodeError::invalid(reason))),
        };
        if self.consumed + len as u64 > self.budget {
            return None;
        }
        self.pos += len;
        self.consumed += len as u64;
        Some(Ok(value))
    }

    /// A length-prefixed byte string that lies wholly in the buffer, checked against the length
    /// limit and the budget, taken without any await. `None` if it is not all buffered (the
    /// caller then takes the async path, which re-reads the prefix from the same place).
    pub fn buffered_len_prefixed(&mut self) -> Option<Result<&[u8], DecodeError>> {
        let (pos, consumed) = (self.pos, self.consumed);
        let len = match self.buffered_varint()? {
            Ok(len) => len,
            Err(e) => return Some(Err(e)),
        };
        if len > self.max_len {
            return Some(Err(DecodeError::new(DecodeErrorKind::TooLong { len, max: self.max_len })));
        }
        let len = len as usize;
        if self.end - self.pos < len || self.consumed + len as u64 > self.budget {
            // Not all here (or over budget, which the slow path reports): rewind.
            self.pos = pos;
            self.consumed = consumed;
            return None;
        }
        let start = self.pos;
        self.pos += len;
        self.consumed += len as u64;
        Some(Ok(&self.buf[start..start + len]))
    }

    async fn read_varint_slow(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.read_u8().await?;
            let low = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(DecodeError::invalid("varint overflows u64"));
            }
            value |= low << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(DecodeError::invalid("overlong varint"));
                }
                return Ok(value);
            }
        }
        unreachable!("the tenth byte either ends the varint or is refused")
    }

    /// Reads a length prefix and checks it against the limit in force, before the caller
    /// allocates anything.
    pub async fn read_len(&mut self) -> Result<usize, DecodeError> {
        let len = self.read_varint().await?;
        if len > self.max_len {
            return Err(DecodeError::new(DecodeErrorKind::TooLong { len, max: self.max_len }));
        }
        usize::try_from(len).map_err(|_| DecodeError::new(DecodeErrorKind::TooLong { len, max: usize::MAX as u64 }))
    }

    /// Reads `len` bytes into a new vector, after checking they fit the message's budget. The
    /// vector grows as the bytes arrive (doubling, from what is buffered or [`PREALLOC_BYTES`]):
    /// a length prefix alone reserves nothing its sender has not sent.
    pub async fn read_vec(&mut self, len: usize) -> Result<Vec<u8>, DecodeError> {
        self.charge(len as u64)?;
        if self.end - self.pos >= len {
            let out = self.buf[self.pos..self.pos + len].to_vec();
            self.pos += len;
            self.consumed += len as u64;
            return Ok(out);
        }
        let mut out = Vec::with_capacity(len.min((self.end - self.pos).max(PREALLOC_BYTES)));
        while out.len() < len {
            let start = out.len();
            let step = (len - start).min(out.capacity().max(PREALLOC_BYTES));
            out.resize(start + step, 0);
            self.read_exact(&mut out[start..]).await?;
        }
        Ok(out)
    }

    /// How many elements of `elem_size` bytes (at least 1) may be allocated up front for a
    /// sequence of `count`: what the bytes already buffered (or [`PREALLOC_BYTES`], if fewer)
    /// and the rest of the budget could fill. The sequence grows as its elements arrive.
    pub fn prealloc(&self, count: usize, elem_size: usize) -> usize {
        let left = self.budget.saturating_sub(self.consumed) as usize;
        let arrived = (self.end - self.pos).max(PREALLOC_BYTES);
        count.min(left.min(arrived) / elem_size.max(1))
    }
}

/// Bytes' worth of a sequence reserved before they arrived, at most (issue 14: reserving from
/// the budget let a 3-byte length on a `Vec<[u8; 256]>` take 16 MiB on any stream).
pub const PREALLOC_BYTES: usize = 4096;

/// Decodes one `T` from a complete byte slice, refusing trailing bytes.
pub fn decode_from_slice<T: Message>(bytes: &[u8]) -> Result<T, DecodeError> {
    futures_lite::future::block_on(async {
        let mut reader = Reader::new(bytes);
        let value = reader.decode::<T>().await?;
        if !reader.at_end().await? {
            return Err(DecodeError::invalid("trailing bytes after the message").within(PathSegment::Type(T::NAME)));
        }
        Ok(value)
    })
}

/// Decodes one `T` from the start of a byte slice, ignoring what follows (fields appended by a
/// newer version of the message).
pub fn decode_prefix<T: Message>(bytes: &[u8]) -> Result<T, DecodeError> {
    futures_lite::future::block_on(Reader::new(bytes).decode::<T>())
}
