//! warren-proto: Rust values straight off an async stream, with hard size limits.
//!
//! [`Encode`] writes a value into a [`Writer`] (a buffer); [`Decode`] reads one from a
//! [`Reader`] wrapping any `AsyncRead`, field by field, with no length prefix around the whole
//! message and no per-message buffer: each field's length is known as it is decoded. The
//! reader reads ahead through one reusable 16 KiB buffer (like a `BufReader`); when a whole
//! message is already in it, it is decoded synchronously, without a single `.await`, and
//! otherwise field by field as the bytes arrive. `#[derive(Encode, Decode)]` writes both for
//! structs and enums.
//!
//! Every length read from the wire is checked against a limit before anything is allocated,
//! and every message has a byte budget, so hostile input costs at most the limits:
//!
//! - `#[proto(max_len = N)]` on a field bounds every length prefix inside that field (a
//!   `Vec`'s count, each `String`'s bytes); on a type it is the default for its fields.
//!   Without either, [`DEFAULT_MAX_LEN`] applies.
//! - `#[proto(max_bytes = N)]` on a type sets its budget as a top-level message (default
//!   [`DEFAULT_MAX_BYTES`]).
//! - `#[proto(varint)]` on an integer field encodes it as a LEB128 varint instead of fixed
//!   little-endian bytes.
//! - `#[proto(default)]` on trailing fields: a message from an older peer that ends before them
//!   decodes with their `Default` (see `docs/wire-format.md` for evolving messages).
//!
//! Errors name the field path and the problem: `Hello.protocols[3]: length 10000000 exceeds
//! max 64`, and tell a cleanly closed stream ([`DecodeErrorKind::Closed`]) from a truncated
//! message.
//!
//! ```
//! use warren_proto::{Decode, Encode, Reader, encode_to_vec};
//!
//! #[derive(Debug, PartialEq, Encode, Decode)]
//! #[proto(max_len = 1024)]
//! struct Greeting {
//!     name: String,
//!     #[proto(max_len = 8)]
//!     tags: Vec<String>,
//! }
//!
//! # futures_lite::future::block_on(async {
//! let bytes = encode_to_vec(&Greeting { name: "ann".into(), tags: vec!["x".into()] }).unwrap();
//! let mut reader = Reader::new(&bytes[..]);
//! let back: Greeting = reader.decode().await.unwrap();
//! assert_eq!(back.name, "ann");
//! // The stream is done: the next decode says so cleanly.
//! assert!(reader.decode::<Greeting>().await.unwrap_err().is_closed());
//! # });
//! ```
//!
//! The wire format (integers, lengths, enums, maps) is specified in `docs/wire-format.md`.

#![warn(missing_docs)]

// Lets the derive's `::warren_proto::…` paths work inside this crate too (its own tests).
extern crate self as warren_proto;

mod buffered;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod impls;
mod reader;
mod writer;

use std::future::Future;

pub use buffered::Buffered;
pub use error::{DecodeError, DecodeErrorKind, EncodeError, PathSegment};
pub use impls::VarInt;
pub use reader::{PREALLOC_BYTES, READ_BUFFER, Reader, decode_from_slice, decode_prefix};
pub use warren_proto_derive::{Decode, Encode};
pub use writer::{WriteError, Writer, encode_to_vec, write_message};

/// Length limit when neither the field nor its type sets one: 1 MiB.
pub const DEFAULT_MAX_LEN: u64 = 1 << 20;

/// Byte budget of a message whose type sets none: 16 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// How deeply recursive values (through `Box<T>`) may nest: deep enough for any real message,
/// shallow enough that the decoder's stack stays small.
pub const MAX_DEPTH: u32 = 64;

/// A value that can be written to the wire.
pub trait Encode {
    /// Appends the value to `w`. Fails if a length is over the limit in force.
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError>;

    /// Appends a slice of values (after its length prefix). `u8` overrides this to copy the
    /// slice at once.
    #[doc(hidden)]
    fn encode_slice(items: &[Self], w: &mut Writer) -> Result<(), EncodeError>
    where
        Self: Sized,
    {
        for (i, item) in items.iter().enumerate() {
            item.encode(w).map_err(|e| e.in_field(&format!("[{i}]")))?;
        }
        Ok(())
    }
}

/// A value that can be read from the wire.
pub trait Decode: Sized {
    /// Reads the value from `r`.
    fn decode<R: tokio::io::AsyncRead + Unpin + Send>(
        r: &mut Reader<R>,
    ) -> impl Future<Output = Result<Self, DecodeError>> + Send;

    /// The synchronous fast path: decodes the value from bytes already buffered, or returns
    /// `None` (not all there, or invalid) to let the async path decode it. Derived types and
    /// the standard types implement it; the default always declines.
    #[doc(hidden)]
    fn decode_buffered(b: &mut Buffered<'_>) -> Option<Self> {
        let _ = b;
        None
    }

    /// The fast path of [`Decode::decode_seq`].
    #[doc(hidden)]
    fn decode_seq_buffered(b: &mut Buffered<'_>, count: usize) -> Option<Vec<Self>> {
        let mut out = Vec::with_capacity(b.prealloc(count, std::mem::size_of::<Self>()));
        for _ in 0..count {
            out.push(Self::decode_buffered(b)?);
        }
        Some(out)
    }

    /// The fast path of [`Decode::decode_array`].
    #[doc(hidden)]
    fn decode_array_buffered<const N: usize>(b: &mut Buffered<'_>) -> Option<[Self; N]> {
        Self::decode_seq_buffered(b, N)?.try_into().ok()
    }

    /// Reads `count` values (after a length prefix already checked against the limit). `u8`
    /// overrides this to read the bytes at once.
    #[doc(hidden)]
    fn decode_seq<R: tokio::io::AsyncRead + Unpin + Send>(
        r: &mut Reader<R>,
        count: usize,
    ) -> impl Future<Output = Result<Vec<Self>, DecodeError>> + Send
    where
        Self: Send,
    {
        async move {
            let mut out = Vec::with_capacity(r.prealloc(count, std::mem::size_of::<Self>()));
            for i in 0..count {
                out.push(Self::decode(r).await.map_err(|e| e.at_index(i as u64))?);
            }
            Ok(out)
        }
    }

    /// Reads a fixed-size array of values. `u8` overrides this to copy `[u8; N]` at once,
    /// without the intermediate vector the default uses.
    #[doc(hidden)]
    fn decode_array<R: tokio::io::AsyncRead + Unpin + Send, const N: usize>(
        r: &mut Reader<R>,
    ) -> impl Future<Output = Result<[Self; N], DecodeError>> + Send
    where
        Self: Send,
    {
        async move {
            let items = Self::decode_seq(r, N).await?;
            Ok(items.try_into().unwrap_or_else(|_| unreachable!("decode_seq returns exactly N items")))
        }
    }
}

/// A type sent as a whole message: it has a name for error paths, a length limit and a budget.
/// `#[derive(Encode, Decode)]` implements it.
pub trait Message: Encode + Decode + Send {
    /// The type's name, first in error paths.
    const NAME: &'static str;
    /// The length limit for its fields.
    const MAX_LEN: u64 = DEFAULT_MAX_LEN;
    /// The most bytes one message may take.
    const MAX_BYTES: u64 = DEFAULT_MAX_BYTES;
}

#[doc(hidden)]
pub mod __private {
    //! Used by the derive's generated code.
    pub use tokio::io::AsyncRead;
}
