//! The hello and the stream header, encoded with
//! [`warren_proto`] and decoded straight off the QUIC stream.
//!
//! Every limit is enforced while decoding, before anything is allocated: the derive's length
//! limits and byte budgets, then the semantic checks below (metadata keys, protocol names). The
//! format is documented in `docs/wire-format.md`; summarised:
//!
//! ```text
//! hello         = major:u16le minor:u16le metadata protocols [fields of later minors]
//! metadata      = count:varint (key:str value:str){count}
//! protocols     = count:varint name:str{count}
//! str           = len:varint utf8-bytes{len}
//! stream header = name:str
//! ```
//!
//! The acceptor does not answer a stream header: the dialler's data follows the header at once
//! (no round trip). An acceptor without a handler for the protocol resets and stops the stream
//! with the QUIC code [`UNKNOWN_PROTOCOL`](crate::connection::codes::UNKNOWN_PROTOCOL), which the
//! dialler's [`Stream`](crate::Stream) reports as [`ConnectError::UnknownProtocol`](crate::ConnectError).
//!
//! A newer minor version may append fields after `protocols`; older peers stop reading after the
//! fields they know. A new major version is incompatible: `major` and `minor` come first in
//! every version, so a node reads them alone ([`WireVersion`]) before the rest and both sides
//! refuse the connection with a clear error.

use std::collections::BTreeMap;

use tokio::io::AsyncRead;
use warren_proto::{Decode, DecodeError, Encode, EncodeError, Reader};

/// The major wire version this build speaks. Peers with another major version are refused.
pub const WIRE_VERSION_MAJOR: u16 = 1;
/// The minor wire version this build speaks. Minor versions only append to the hello.
pub const WIRE_VERSION_MINOR: u16 = 0;

/// Largest hello accepted, in bytes (its byte budget). The largest hello this version can
/// produce is about 38 KiB (64 metadata entries of 64-byte keys and 255-byte values plus 64
/// protocol names); the budget leaves room for fields a later minor version appends.
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

/// The first four bytes of every hello, in every version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct WireVersion {
    /// Major wire version; peers must agree on it.
    pub major: u16,
    /// Minor wire version; informational, newer minors only append fields.
    pub minor: u16,
}

/// What follows [`WireVersion`] in a version 1 hello.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[proto(max_len = 255, max_bytes = 65532)]
pub struct HelloBody {
    /// The node's metadata.
    pub metadata: BTreeMap<String, String>,
    /// The protocols the node has handlers for.
    #[proto(max_len = 64)]
    pub protocols: Vec<String>,
}

/// What each side of a new connection tells the other before anything else. On the wire it is
/// exactly a [`WireVersion`] followed by a [`HelloBody`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[proto(max_len = 255, max_bytes = 65536)]
pub struct Hello {
    /// Major wire version; peers must agree on it.
    pub major: u16,
    /// Minor wire version; informational, newer minors only append fields.
    pub minor: u16,
    /// The node's metadata (`name`, `os`, `device_model`, `version`, …).
    pub metadata: BTreeMap<String, String>,
    /// The protocols the node has handlers for.
    #[proto(max_len = 64)]
    pub protocols: Vec<String>,
}

impl Hello {
    /// Encodes the hello. Fails if a limit is exceeded, naming the offending field.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        self.validate()?;
        Ok(warren_proto::encode_to_vec(self)?)
    }

    /// Decodes a hello from the start of `bytes`; bytes after it (fields of a newer minor
    /// version) are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        futures_lite::future::block_on(read_hello(&mut Reader::new(bytes)))
    }

    /// Checks what the derive's length limits cannot express: entry counts, key and protocol
    /// name syntax.
    pub fn validate(&self) -> Result<(), WireError> {
        check_len("metadata", self.metadata.len(), MAX_METADATA_ENTRIES)?;
        for (key, value) in &self.metadata {
            check_metadata_entry(key, value)?;
        }
        check_len("protocols", self.protocols.len(), MAX_PROTOCOLS)?;
        self.protocols.iter().try_for_each(|name| check_protocol_name(name))
    }
}

/// Reads a hello straight off a stream: first the version, and only if the major version is
/// ours, the rest. Another major version is [`WireError::IncompatibleVersion`] and nothing more
/// is read, since its layout may differ.
pub async fn read_hello<R: AsyncRead + Unpin + Send>(reader: &mut Reader<R>) -> Result<Hello, WireError> {
    let version: WireVersion = reader.decode().await?;
    if version.major != WIRE_VERSION_MAJOR {
        return Err(WireError::IncompatibleVersion { theirs: version });
    }
    let body: HelloBody = reader.decode().await?;
    let hello =
        Hello { major: version.major, minor: version.minor, metadata: body.metadata, protocols: body.protocols };
    hello.validate()?;
    Ok(hello)
}

/// The header that starts every stream: the protocol's name.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[proto(max_len = 64, max_bytes = 65)]
pub struct StreamHeader {
    /// The protocol, such as `ping/1`.
    pub protocol: String,
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

/// Encodes the header that starts every stream.
pub fn encode_stream_header(protocol: &str) -> Result<Vec<u8>, WireError> {
    check_protocol_name(protocol)?;
    Ok(warren_proto::encode_to_vec(&StreamHeader { protocol: protocol.to_owned() })?)
}

/// Reads a stream header from `reader`, never reading past it (the bytes after it belong to
/// the protocol's handler): at most 1 + [`MAX_PROTOCOL_NAME_LEN`] bytes.
pub async fn read_stream_header<R>(reader: &mut R) -> Result<String, WireError>
where
    R: AsyncRead + Unpin + Send,
{
    let header: StreamHeader = Reader::unbuffered(reader).decode().await?;
    check_protocol_name(&header.protocol)?;
    Ok(header.protocol)
}

/// Why bytes on the wire were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes do not decode (the error names the field).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The value does not encode within the limits.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The peer speaks another major version.
    #[error("incompatible wire version: we speak {WIRE_VERSION_MAJOR}.x, the peer speaks {}.x", theirs.major)]
    IncompatibleVersion {
        /// The peer's version.
        theirs: WireVersion,
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
}

/// The property the `hello_decode` fuzz target checks, also replayed over the saved corpus by
/// the test suite: reading a hello from arbitrary bytes never panics, and a hello that reads
/// survives an encode/decode round trip unchanged.
#[doc(hidden)]
pub fn fuzz_hello(data: &[u8]) {
    if let Ok(hello) = Hello::from_bytes(data) {
        let bytes = hello.to_bytes().expect("a hello that decoded is within the limits");
        assert!(bytes.len() <= data.len(), "re-encoding grew the hello");
        assert_eq!(Hello::from_bytes(&bytes).expect("re-encoded hello decodes"), hello);
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
    assert!(consumed <= 1 + MAX_PROTOCOL_NAME_LEN, "read {consumed} bytes");
    if let Ok(name) = result {
        assert_eq!(encode_stream_header(&name).expect("a read name is valid"), &data[..consumed]);
    }
}

/// The property the `roundtrip` fuzz target checks on values built from arbitrary input, also
/// replayed over the saved corpus: a hello and a stream header that encode decode back to
/// themselves, and what refuses to encode really breaks a limit.
#[doc(hidden)]
pub fn fuzz_roundtrip(minor: u16, metadata: BTreeMap<String, String>, protocols: Vec<String>, header: &str) {
    let hello = Hello { major: WIRE_VERSION_MAJOR, minor, metadata, protocols };
    match hello.to_bytes() {
        Ok(bytes) => assert_eq!(Hello::from_bytes(&bytes).expect("an encoded hello decodes"), hello),
        Err(_) => assert!(hello.validate().is_err(), "encoding refused a valid hello"),
    }
    match encode_stream_header(header) {
        Ok(bytes) => {
            let read = futures_lite::future::block_on(read_stream_header(&mut &bytes[..]));
            assert_eq!(read.expect("an encoded header reads"), header);
        }
        Err(_) => assert!(check_protocol_name(header).is_err(), "encoding refused a valid header"),
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max { Err(WireError::TooLong { field, len, max }) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use warren_proto::DecodeErrorKind;

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
        let bytes = sample().to_bytes().unwrap();
        let expected: &[u8] = b"\x01\x00\x00\x00\x02\x04name\x05alice\x02os\x05linux\x02\x06ping/1\x06echo/1";
        assert_eq!(bytes, expected);
        assert_eq!(Hello::from_bytes(&bytes).unwrap(), sample());
        // A hello is exactly a WireVersion followed by a HelloBody.
        let version = warren_proto::encode_to_vec(&WireVersion { major: 1, minor: 0 }).unwrap();
        let body = HelloBody { metadata: sample().metadata, protocols: sample().protocols };
        assert_eq!([version, warren_proto::encode_to_vec(&body).unwrap()].concat(), bytes);
    }

    #[test]
    fn the_derive_budgets_match_the_documented_limits() {
        use warren_proto::Message;
        assert_eq!(<Hello as Message>::MAX_BYTES, MAX_HELLO_LEN as u64);
        assert_eq!(<HelloBody as Message>::MAX_BYTES + 4, MAX_HELLO_LEN as u64, "the version takes 4 bytes");
        assert_eq!(<StreamHeader as Message>::MAX_LEN, MAX_PROTOCOL_NAME_LEN as u64);
        assert_eq!(<Hello as Message>::MAX_LEN, MAX_METADATA_VALUE_LEN as u64);
    }

    #[test]
    fn long_values_take_two_length_bytes() {
        let mut hello = sample();
        hello.metadata.insert("k".into(), "v".repeat(200));
        let bytes = hello.to_bytes().unwrap();
        let at = bytes.windows(2).position(|w| w == b"\x01k").unwrap() + 2;
        assert_eq!(&bytes[at..at + 2], [0xc8, 0x01], "200 as a varint");
        assert_eq!(Hello::from_bytes(&bytes).unwrap(), hello);
    }

    #[test]
    fn hello_with_appended_fields_of_a_newer_minor_decodes() {
        let mut newer = sample();
        newer.minor = 7;
        let mut bytes = newer.to_bytes().unwrap();
        bytes.extend_from_slice(b"\x03new field from a later minor");
        assert_eq!(Hello::from_bytes(&bytes).unwrap(), newer);
    }

    #[test]
    fn another_major_is_refused_before_reading_the_rest() {
        // Version 2 with a body this version cannot parse.
        let err = Hello::from_bytes(b"\x02\x00\x00\x00\xff\xff\xff").unwrap_err();
        assert_eq!(err, WireError::IncompatibleVersion { theirs: WireVersion { major: 2, minor: 0 } });
        assert_eq!(err.to_string(), "incompatible wire version: we speak 1.x, the peer speaks 2.x");
    }

    #[test]
    fn every_truncation_of_a_hello_is_an_error() {
        let bytes = sample().to_bytes().unwrap();
        let closed = Hello::from_bytes(&[]).unwrap_err();
        assert!(matches!(&closed, WireError::Decode(e) if e.is_closed()), "{closed}");
        for len in 1..bytes.len() {
            match Hello::from_bytes(&bytes[..len]).unwrap_err() {
                WireError::Decode(e) => {
                    assert!(*e.kind() == DecodeErrorKind::Truncated || (len == 4 && e.is_closed()), "len {len}: {e}")
                }
                other => panic!("len {len}: {other}"),
            }
        }
    }

    #[test]
    fn hostile_hellos_are_refused_with_the_field_named() {
        // 255 metadata entries claimed: within the length limit, over the entry limit once read;
        // the stream ends long before.
        let err = Hello::from_bytes(b"\x01\x00\x00\x00\xff\x01").unwrap_err();
        assert_eq!(err.to_string(), "HelloBody.metadata[0].key: message truncated");
        // A key of 10,000,000 bytes.
        let err = Hello::from_bytes(b"\x01\x00\x00\x00\x01\x80\xad\xe2\x04").unwrap_err();
        assert_eq!(err.to_string(), "HelloBody.metadata[0].key: length 10000000 exceeds max 255");
        // A protocol name of 100 bytes: over the field's limit of 64.
        let mut bytes = b"\x01\x00\x00\x00\x00\x01\x64".to_vec();
        bytes.extend_from_slice(&[b'p'; 100]);
        let err = Hello::from_bytes(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "HelloBody.protocols[0]: length 100 exceeds max 64");
        // Invalid UTF-8 in a protocol name.
        let err = Hello::from_bytes(b"\x01\x00\x00\x00\x00\x01\x02\xff\xfe").unwrap_err();
        assert_eq!(err.to_string(), "HelloBody.protocols[0]: invalid UTF-8");
        // Duplicate metadata keys.
        let err = Hello::from_bytes(b"\x01\x00\x00\x00\x02\x01a\x01b\x01a\x01c\x00").unwrap_err();
        assert_eq!(err.to_string(), "HelloBody.metadata[1]: duplicate key");
        // 65 entries: decodes, then fails validation.
        let mut many = b"\x01\x00\x00\x00\x41".to_vec();
        for i in 0..65u8 {
            many.extend_from_slice(&[2, b'k', b'a' + i % 26, 1, b'v']);
            many[5 + i as usize * 5 + 1] = b'A' + i / 26;
        }
        many.push(0);
        let err = Hello::from_bytes(&many).unwrap_err();
        assert_eq!(err, WireError::TooLong { field: "metadata", len: 65, max: MAX_METADATA_ENTRIES });
        // A key with '=' (it would break a DNS TXT record).
        let err = Hello::from_bytes(b"\x01\x00\x00\x00\x01\x03a=b\x01v\x00").unwrap_err();
        assert!(matches!(err, WireError::Invalid { field: "metadata key", .. }), "{err}");
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        let mut hello = sample();
        hello.metadata.insert("x".into(), "v".repeat(256));
        assert_eq!(
            hello.to_bytes().unwrap_err(),
            WireError::TooLong { field: "metadata value", len: 256, max: MAX_METADATA_VALUE_LEN }
        );
        let mut hello = sample();
        hello.protocols = (0..65).map(|i| format!("p/{i}")).collect();
        assert!(matches!(hello.to_bytes().unwrap_err(), WireError::TooLong { field: "protocols", .. }));
    }

    #[tokio::test]
    async fn stream_header_round_trips_reads_nothing_more_and_refuses_hostile_input() {
        let header = encode_stream_header("ping/1").unwrap();
        assert_eq!(header, b"\x06ping/1");
        let stream = [&header[..], b"handler data"].concat();
        let mut rest = &stream[..];
        assert_eq!(read_stream_header(&mut rest).await.unwrap(), "ping/1");
        assert_eq!(rest, b"handler data", "the handler's bytes are left in the stream");

        let oversized = [200u8, 1, 0];
        assert_eq!(
            read_stream_header(&mut &oversized[..]).await.unwrap_err().to_string(),
            "StreamHeader.protocol: length 200 exceeds max 64"
        );
        let err = read_stream_header(&mut &b"\x06pin"[..]).await.unwrap_err();
        assert!(matches!(&err, WireError::Decode(e) if *e.kind() == DecodeErrorKind::Truncated), "{err}");
        assert!(read_stream_header(&mut &b"\x02\x00\x01"[..]).await.is_err());
        assert!(read_stream_header(&mut &b"\x00"[..]).await.is_err());
        assert!(encode_stream_header("").is_err());
        assert!(encode_stream_header(&"p".repeat(65)).is_err());
        assert!(encode_stream_header("has space").is_err());
    }
}
