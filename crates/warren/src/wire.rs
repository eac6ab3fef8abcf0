//! The bytes warren itself puts on a connection: the hello and the stream header.
//!
//! Every parser here works on bounded input: the hello is read whole with a size limit before
//! it is parsed, and every count and length inside is checked against a limit before anything
//! is allocated. The format is documented in `docs/wire-format.md`.
//!
//! ```text
//! hello           = major:u16le minor:u16le metadata protocols [ignored trailing bytes]
//! metadata        = count:u8 (key:str8 value:str8){count}
//! protocols       = count:u8 (name:str8){count}
//! str8            = len:u8 utf8-bytes{len}
//! stream header   = len:u8 protocol-name-bytes{len}
//! ```
//!
//! The acceptor does not answer a stream header: the dialler's data follows the header at once
//! (no round trip). An acceptor without a handler for the protocol resets and stops the stream
//! with the QUIC code [`UNKNOWN_PROTOCOL`](crate::connection::codes::UNKNOWN_PROTOCOL), which the
//! dialler's [`Stream`](crate::Stream) reports as [`ConnectError::UnknownProtocol`](crate::ConnectError).
//!
//! A newer minor version may append fields after `protocols`; older peers ignore them. A new
//! major version is incompatible and both sides refuse the connection with a clear error.

use std::collections::BTreeMap;

/// The major wire version this build speaks. Peers with another major version are refused.
pub const WIRE_VERSION_MAJOR: u16 = 1;
/// The minor wire version this build speaks. Minor versions only append to the hello.
pub const WIRE_VERSION_MINOR: u16 = 0;

/// Largest hello accepted, in bytes. The largest hello this version can produce is about 38 KiB
/// (64 metadata entries of 255-byte keys and values plus 64 protocol names); the limit leaves
/// room for fields a later minor version appends.
pub const MAX_HELLO_LEN: usize = 64 * 1024;
/// Most metadata entries in a hello.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Longest metadata value, in bytes: 255, so a key=value pair fits a DNS TXT string.
pub const MAX_METADATA_VALUE_LEN: usize = 255;
/// Most protocols a hello lists.
pub const MAX_PROTOCOLS: usize = 64;
/// Longest protocol name, in bytes.
pub const MAX_PROTOCOL_NAME_LEN: usize = 64;

/// What each side of a new connection tells the other before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Major wire version; peers must agree on it.
    pub major: u16,
    /// Minor wire version; informational, newer minors only append fields.
    pub minor: u16,
    /// The node's metadata (`name`, `os`, `device_model`, `version`, …).
    pub metadata: BTreeMap<String, String>,
    /// The protocols the node has handlers for.
    pub protocols: Vec<String>,
}

impl Hello {
    /// Encodes the hello. Fails if a limit is exceeded, naming the offending field.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        check_count("metadata", self.metadata.len(), MAX_METADATA_ENTRIES)?;
        out.push(self.metadata.len() as u8);
        for (key, value) in &self.metadata {
            check_metadata_entry(key, value)?;
            put_str8(&mut out, key);
            put_str8(&mut out, value);
        }
        check_count("protocols", self.protocols.len(), MAX_PROTOCOLS)?;
        out.push(self.protocols.len() as u8);
        for name in &self.protocols {
            check_protocol_name(name)?;
            put_str8(&mut out, name);
        }
        Ok(out)
    }

    /// Decodes a hello. Trailing bytes (fields of a newer minor version) are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_HELLO_LEN {
            return Err(WireError::TooLong { field: "hello", len: bytes.len(), max: MAX_HELLO_LEN });
        }
        let mut cursor = Cursor { bytes, pos: 0 };
        let major = cursor.u16("hello.major")?;
        let minor = cursor.u16("hello.minor")?;
        let count = cursor.u8("hello.metadata")? as usize;
        check_count("metadata", count, MAX_METADATA_ENTRIES)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..count {
            let key = cursor.str8("hello.metadata key")?;
            let value = cursor.str8("hello.metadata value")?;
            check_metadata_entry(key, value)?;
            if metadata.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(WireError::Invalid { field: "hello.metadata", reason: format!("duplicate key {key:?}") });
            }
        }
        let count = cursor.u8("hello.protocols")? as usize;
        check_count("protocols", count, MAX_PROTOCOLS)?;
        let mut protocols = Vec::with_capacity(count);
        for _ in 0..count {
            let name = cursor.str8("hello.protocols")?;
            check_protocol_name(name)?;
            protocols.push(name.to_owned());
        }
        Ok(Self { major, minor, metadata, protocols })
    }
}

/// Checks a metadata entry against the wire limits.
pub fn check_metadata_entry(key: &str, value: &str) -> Result<(), WireError> {
    if key.is_empty() || key.contains('=') || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WireError::Invalid {
            field: "metadata key",
            reason: format!("{key:?} must be non-empty printable ASCII without '='"),
        });
    }
    check_len("metadata key", key.len(), MAX_METADATA_KEY_LEN)?;
    check_len("metadata value", value.len(), MAX_METADATA_VALUE_LEN)
}

/// Checks a protocol name: 1 to 64 bytes of printable ASCII, such as `ping/1`.
pub fn check_protocol_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WireError::Invalid {
            field: "protocol name",
            reason: format!("{name:?} must be non-empty printable ASCII"),
        });
    }
    check_len("protocol name", name.len(), MAX_PROTOCOL_NAME_LEN)
}

/// Encodes the header that starts every stream: the protocol's name.
pub fn encode_stream_header(protocol: &str) -> Result<Vec<u8>, WireError> {
    check_protocol_name(protocol)?;
    let mut out = Vec::with_capacity(1 + protocol.len());
    put_str8(&mut out, protocol);
    Ok(out)
}

/// Reads a stream header from `reader`: at most 1 + [`MAX_PROTOCOL_NAME_LEN`] bytes are read.
pub async fn read_stream_header<R>(reader: &mut R) -> Result<String, WireError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let len = reader.read_u8().await.map_err(|e| WireError::from_io("stream header", e))? as usize;
    check_len("protocol name", len, MAX_PROTOCOL_NAME_LEN)?;
    let mut name = [0u8; MAX_PROTOCOL_NAME_LEN];
    reader.read_exact(&mut name[..len]).await.map_err(|e| WireError::from_io("stream header", e))?;
    let name = std::str::from_utf8(&name[..len])
        .map_err(|_| WireError::Invalid { field: "protocol name", reason: "not UTF-8".into() })?;
    check_protocol_name(name)?;
    Ok(name.to_owned())
}

/// The property the `hello_decode` fuzz target checks, also replayed over the saved corpus by
/// the test suite: decoding arbitrary bytes never panics, and a decoded hello survives an
/// encode/decode round trip unchanged.
#[doc(hidden)]
pub fn fuzz_hello(data: &[u8]) {
    if let Ok(hello) = Hello::decode(data) {
        let bytes = hello.encode().expect("a decoded hello is within the limits");
        assert!(bytes.len() <= data.len(), "re-encoding grew the hello");
        assert_eq!(Hello::decode(&bytes).expect("re-encoded hello decodes"), hello);
    }
}

/// The property the `stream_header` fuzz target checks, also replayed over the saved corpus:
/// reading never panics or reads past the header, and a header that reads encodes back to the
/// bytes it was read from.
#[doc(hidden)]
pub fn fuzz_stream_header(data: &[u8]) {
    let mut reader = data;
    let result = futures_lite::future::block_on(read_stream_header(&mut reader));
    let consumed = data.len() - reader.len();
    assert!(consumed <= 1 + MAX_PROTOCOL_NAME_LEN);
    if let Ok(name) = result {
        assert_eq!(encode_stream_header(&name).expect("a read name is valid"), &data[..consumed]);
    }
}

/// Why bytes on the wire were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream ended cleanly before the message started.
    #[error("{field}: stream closed before the message")]
    Closed {
        /// What was being read.
        field: &'static str,
    },
    /// The message ended in the middle.
    #[error("{field}: message truncated")]
    Truncated {
        /// What was being read.
        field: &'static str,
    },
    /// A length or count exceeds its limit.
    #[error("{field}: length {len} exceeds max {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field's content is not allowed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The transport failed while reading.
    #[error("{field}: {reason}")]
    Io {
        /// What was being read.
        field: &'static str,
        /// The transport's error.
        reason: String,
    },
}

impl WireError {
    fn from_io(field: &'static str, error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Truncated { field }
        } else {
            WireError::Io { field, reason: error.to_string() }
        }
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max { Err(WireError::TooLong { field, len, max }) } else { Ok(()) }
}

fn check_count(field: &'static str, count: usize, max: usize) -> Result<(), WireError> {
    check_len(field, count, max)
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= u8::MAX as usize, "checked by the caller");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(if self.pos == 0 && self.bytes.is_empty() {
            WireError::Closed { field }
        } else {
            WireError::Truncated { field }
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn str8(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let len = self.u8(field)? as usize;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::Invalid { field, reason: "not UTF-8".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hello {
        Hello {
            major: WIRE_VERSION_MAJOR,
            minor: WIRE_VERSION_MINOR,
            metadata: [("name".to_string(), "alice".to_string()), ("os".to_string(), "linux".to_string())]
                .into_iter()
                .collect(),
            protocols: vec!["ping/1".into(), "echo/1".into()],
        }
    }

    #[test]
    fn hello_golden_bytes() {
        let bytes = sample().encode().unwrap();
        let expected: &[u8] = b"\x01\x00\x00\x00\x02\x04name\x05alice\x02os\x05linux\x02\x06ping/1\x06echo/1";
        assert_eq!(bytes, expected);
        assert_eq!(Hello::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn hello_with_appended_fields_of_a_newer_minor_decodes() {
        let mut newer = sample();
        newer.minor = 7;
        let mut bytes = newer.encode().unwrap();
        bytes.extend_from_slice(b"\x03new field from a later minor");
        assert_eq!(Hello::decode(&bytes).unwrap(), newer);
    }

    #[test]
    fn every_truncation_of_a_hello_is_an_error() {
        let bytes = sample().encode().unwrap();
        assert_eq!(Hello::decode(&[]), Err(WireError::Closed { field: "hello.major" }));
        for len in 1..bytes.len() {
            let err = Hello::decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, WireError::Truncated { .. }), "len {len}: {err}");
        }
    }

    #[test]
    fn hostile_hellos_are_refused_with_the_field_named() {
        // 255 metadata entries claimed.
        let err = Hello::decode(b"\x01\x00\x00\x00\xff").unwrap_err();
        assert_eq!(err, WireError::TooLong { field: "metadata", len: 255, max: MAX_METADATA_ENTRIES });
        assert_eq!(err.to_string(), "metadata: length 255 exceeds max 64");
        // Key longer than allowed.
        let mut bytes = b"\x01\x00\x00\x00\x01\x50".to_vec();
        bytes.extend_from_slice(&[b'k'; 0x50]);
        bytes.extend_from_slice(b"\x00\x00");
        assert_eq!(
            Hello::decode(&bytes).unwrap_err(),
            WireError::TooLong { field: "metadata key", len: 0x50, max: MAX_METADATA_KEY_LEN }
        );
        // Invalid UTF-8 in a protocol name.
        let err = Hello::decode(b"\x01\x00\x00\x00\x00\x01\x02\xff\xfe").unwrap_err();
        assert!(matches!(err, WireError::Invalid { field: "hello.protocols", .. }), "{err}");
        // Duplicate metadata keys.
        let err = Hello::decode(b"\x01\x00\x00\x00\x02\x01a\x01b\x01a\x01c\x00").unwrap_err();
        assert!(err.to_string().contains("duplicate key"), "{err}");
        // Oversized as a whole.
        let err = Hello::decode(&vec![0u8; MAX_HELLO_LEN + 1]).unwrap_err();
        assert!(matches!(err, WireError::TooLong { field: "hello", .. }));
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        let mut hello = sample();
        hello.metadata.insert("x".into(), "v".repeat(256));
        assert_eq!(
            hello.encode().unwrap_err(),
            WireError::TooLong { field: "metadata value", len: 256, max: MAX_METADATA_VALUE_LEN }
        );
        let mut hello = sample();
        hello.protocols = (0..65).map(|i| format!("p/{i}")).collect();
        assert!(matches!(hello.encode().unwrap_err(), WireError::TooLong { field: "protocols", .. }));
    }

    #[tokio::test]
    async fn stream_header_round_trips_and_refuses_hostile_input() {
        let header = encode_stream_header("ping/1").unwrap();
        assert_eq!(header, b"\x06ping/1");
        assert_eq!(read_stream_header(&mut &header[..]).await.unwrap(), "ping/1");

        let oversized = [200u8; 201];
        assert_eq!(
            read_stream_header(&mut &oversized[..]).await.unwrap_err(),
            WireError::TooLong { field: "protocol name", len: 200, max: MAX_PROTOCOL_NAME_LEN }
        );
        assert_eq!(
            read_stream_header(&mut &b"\x06pin"[..]).await.unwrap_err(),
            WireError::Truncated { field: "stream header" }
        );
        assert!(read_stream_header(&mut &b"\x02\x00\x01"[..]).await.is_err());
        assert!(encode_stream_header("").is_err());
        assert!(encode_stream_header(&"p".repeat(65)).is_err());
        assert!(encode_stream_header("has space").is_err());
    }
}
