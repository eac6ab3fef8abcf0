//! [`Writer`]: encodes messages into a buffer, enforcing the same limits a reader will.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::Message;
use crate::error::EncodeError;

/// Encodes values into a byte buffer. Lengths are checked against the limit in force, the same
/// limit the peer's [`Reader`](crate::Reader) will apply, so an encodable message is a decodable
/// one.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    max_len: u64,
}

impl Writer {
    /// A writer with the default length limit.
    pub fn new() -> Self {
        Self { buf: Vec::new(), max_len: crate::DEFAULT_MAX_LEN }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The length limit in force.
    pub fn max_len(&self) -> u64 {
        self.max_len
    }

    /// Sets the length limit; returns the previous one for the caller to restore.
    pub fn set_max_len(&mut self, max_len: u64) -> u64 {
        std::mem::replace(&mut self.max_len, max_len)
    }

    /// Appends raw bytes.
    pub fn put_bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends an unsigned LEB128 varint.
    pub fn put_varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    /// Appends a length prefix after checking it against the limit in force.
    pub fn put_len(&mut self, len: usize) -> Result<(), EncodeError> {
        let len = len as u64;
        if len > self.max_len {
            return Err(EncodeError::TooLong { field: String::new(), len, max: self.max_len });
        }
        self.put_varint(len);
        Ok(())
    }

    /// Encodes `message` into `self`, checking its limits and budget.
    pub fn message<T: Message>(&mut self, message: &T) -> Result<(), EncodeError> {
        let start = self.buf.len();
        let saved = self.set_max_len(T::MAX_LEN);
        let result = message.encode(self).map_err(|e| e.in_field(T::NAME));
        self.max_len = saved;
        result?;
        let len = (self.buf.len() - start) as u64;
        if len > T::MAX_BYTES {
            self.buf.truncate(start);
            return Err(EncodeError::OverBudget { message: T::NAME, len, budget: T::MAX_BYTES });
        }
        Ok(())
    }
}

/// Encodes `message` into a new vector.
pub fn encode_to_vec<T: Message>(message: &T) -> Result<Vec<u8>, EncodeError> {
    let mut writer = Writer::new();
    writer.message(message)?;
    Ok(writer.buf)
}

/// Why a message could not be written to a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The message breaks a limit.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The stream failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` and writes it to `writer` in one `write_all`.
pub async fn write_message<W, T>(writer: &mut W, message: &T) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin,
    T: Message,
{
    let bytes = encode_to_vec(message)?;
    writer.write_all(&bytes).await?;
    Ok(())
}
