//! The datagrams warren sends beside QUIC on its one UDP socket: relayed data, and the path
//! challenges and responses that find and keep a direct path between two peers.
//!
//! Every one starts with the byte `0x00` and the magic `WR`. QUIC version 1 never sends a
//! packet whose first byte has the fixed bit (`0x40`) clear unless both ends agreed to grease
//! it, and warren's endpoints never agree to that ([`crate::transport::quic::endpoint_config`]),
//! so the two never collide.
//!
//! ```text
//! data:      00 'W' 'R' 01 | identity (32) | QUIC packet (up to MAX_PAYLOAD)
//! challenge: 00 'W' 'R' 04 | sender (32) | id (8) | target address (18) | tag (16)
//! response:  00 'W' 'R' 05 | sender (32) | id (8) | tag (16)
//! ```
//!
//! In a data frame from a node to its relay the identity is the destination; the relay rewrites
//! it to the source before forwarding. The payload is an end-to-end encrypted QUIC packet the
//! relay cannot read.
//!
//! A challenge asks "are you at `target`?"; the response says "yes, I got challenge `id`".
//! Both carry a tag: the first 16 bytes of a keyed BLAKE3 hash, keyed with a secret both peers
//! export from the TLS session of their connection ([`PathKey`]), over the kind, the id, the
//! target, the sender and the receiver ([`tag`]). Nobody else can make one, a response is good
//! for one challenge only, and a response is smaller than its challenge (no amplification).
//! Addresses are written as 16 bytes (IPv4 as IPv4-mapped IPv6) and a big-endian port.

use crate::RemoteIdentity;

/// The 32 bytes of an identity as a frame carries them, unchecked: receivers look them up among
/// identities they know (checking a curve point per packet would cost more than forwarding it).
pub type RawIdentity = [u8; 32];

/// The first three bytes of every warren datagram that is not QUIC.
pub const MAGIC: [u8; 3] = [0x00, b'W', b'R'];

/// Length of a data frame's header.
pub const DATA_HEADER_LEN: usize = 4 + 32;

/// Length of a challenge.
pub const CHALLENGE_LEN: usize = 4 + 32 + 8 + 18 + TAG_LEN;

/// Length of a response.
pub const RESPONSE_LEN: usize = 4 + 32 + 8 + TAG_LEN;

/// Length of a challenge's or response's tag.
pub const TAG_LEN: usize = 16;

/// The secret two peers share for path validation, exported from their connection's TLS
/// session (RFC 8446 section 7.5) under [`PATH_KEY_LABEL`].
pub type PathKey = [u8; 32];

/// The TLS exporter label of a [`PathKey`].
pub const PATH_KEY_LABEL: &[u8] = b"EXPORTER-warren-path-validation";

/// Largest payload a data frame carries: a 1,500-byte MTU less IPv6 and UDP headers and ours.
/// warren's QUIC never sends larger packets (see
/// [`MAX_UDP_PAYLOAD`](crate::transport::quic::MAX_UDP_PAYLOAD)).
pub const MAX_PAYLOAD: usize = 1500 - 48 - DATA_HEADER_LEN;

const KIND_DATA: u8 = 1;
// Kinds 2 and 3 were the unauthenticated punch and acknowledgement of wire 1.0 (hole punching
// `warren/punch/1`); they are refused as unknown.
const KIND_CHALLENGE: u8 = 4;
const KIND_RESPONSE: u8 = 5;

/// A parsed warren datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A relayed QUIC packet, for or from `peer`.
    Data {
        /// Destination (node to relay) or source (relay to node).
        peer: RawIdentity,
        /// The QUIC packet.
        payload: &'a [u8],
    },
    /// "Are you at `target`?" from `sender`.
    Challenge {
        /// Who sent it (unchecked: look it up among known peers).
        sender: RawIdentity,
        /// The challenge's number, never reused under one key.
        id: u64,
        /// The address the challenge was sent to.
        target: std::net::SocketAddr,
        /// See [`tag`].
        tag: [u8; TAG_LEN],
    },
    /// "I got challenge `id`" from `sender`.
    Response {
        /// Who sent it.
        sender: RawIdentity,
        /// The challenge answered.
        id: u64,
        /// See [`tag`].
        tag: [u8; TAG_LEN],
    },
}

/// What a tag authenticates: a challenge or a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// A challenge.
    Challenge,
    /// A response.
    Response,
}

/// The tag of a challenge or response: keyed BLAKE3 (the key only the two peers hold) over the
/// kind, `id`, the challenge's `target`, the `sender`'s and the `receiver`'s identities,
/// truncated to [`TAG_LEN`] bytes. Binding both identities and the target means a tag is good
/// for one direction, one address and one challenge.
pub fn tag(
    key: &PathKey,
    kind: TagKind,
    id: u64,
    target: std::net::SocketAddr,
    sender: &RawIdentity,
    receiver: &RawIdentity,
) -> [u8; TAG_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(match kind {
        TagKind::Challenge => b"challenge",
        TagKind::Response => b"response\0",
    });
    hasher.update(&id.to_be_bytes());
    hasher.update(&encode_addr(target));
    hasher.update(sender);
    hasher.update(receiver);
    let mut out = [0; TAG_LEN];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..TAG_LEN]);
    out
}

/// Compares two tags in constant time.
pub fn tags_equal(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn encode_addr(addr: std::net::SocketAddr) -> [u8; 18] {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut out = [0; 18];
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

fn decode_addr(bytes: &[u8]) -> std::net::SocketAddr {
    let octets: [u8; 16] = bytes[..16].try_into().expect("the caller slices 18 bytes");
    let v6 = std::net::Ipv6Addr::from(octets);
    let port = u16::from_be_bytes([bytes[16], bytes[17]]);
    match v6.to_ipv4_mapped() {
        Some(v4) => std::net::SocketAddr::new(v4.into(), port),
        None => std::net::SocketAddr::new(v6.into(), port),
    }
}

/// Why a datagram is not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// It does not start with the magic: probably QUIC.
    #[error("not a warren frame")]
    NotAFrame,
    /// Shorter than its kind's header.
    #[error("frame truncated")]
    Truncated,
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A data frame with a payload over [`MAX_PAYLOAD`], or a challenge or response with
    /// trailing bytes.
    #[error("frame too long")]
    TooLong,
}

/// Does `datagram` start like a warren frame (rather than QUIC)?
pub fn is_frame(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

fn identity(bytes: &[u8]) -> RawIdentity {
    bytes.try_into().expect("the caller slices 32 bytes")
}

fn exact(datagram: &[u8], len: usize) -> Result<&[u8], FrameError> {
    match datagram.len() {
        n if n < len => Err(FrameError::Truncated),
        n if n > len => Err(FrameError::TooLong),
        _ => Ok(datagram),
    }
}

impl<'a> Frame<'a> {
    /// Parses one datagram. Never reads past `datagram` and never allocates.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, FrameError> {
        if !is_frame(datagram) {
            return Err(FrameError::NotAFrame);
        }
        let kind = *datagram.get(3).ok_or(FrameError::Truncated)?;
        match kind {
            KIND_DATA => {
                if datagram.len() < DATA_HEADER_LEN {
                    return Err(FrameError::Truncated);
                }
                let payload = &datagram[DATA_HEADER_LEN..];
                if payload.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLong);
                }
                Ok(Frame::Data { peer: identity(&datagram[4..DATA_HEADER_LEN]), payload })
            }
            KIND_CHALLENGE => {
                let body = exact(datagram, CHALLENGE_LEN)?;
                Ok(Frame::Challenge {
                    sender: identity(&body[4..36]),
                    id: u64::from_be_bytes(body[36..44].try_into().expect("8 bytes")),
                    target: decode_addr(&body[44..62]),
                    tag: body[62..].try_into().expect("16 bytes"),
                })
            }
            KIND_RESPONSE => {
                let body = exact(datagram, RESPONSE_LEN)?;
                Ok(Frame::Response {
                    sender: identity(&body[4..36]),
                    id: u64::from_be_bytes(body[36..44].try_into().expect("8 bytes")),
                    tag: body[44..].try_into().expect("16 bytes"),
                })
            }
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// Writes a data frame header for `peer` into `out` (which must hold [`DATA_HEADER_LEN`] bytes).
pub fn write_data_header(out: &mut [u8], peer: &RawIdentity) {
    out[..3].copy_from_slice(&MAGIC);
    out[3] = KIND_DATA;
    out[4..DATA_HEADER_LEN].copy_from_slice(peer);
}

/// A data frame carrying `payload` for or from `peer`.
pub fn data(peer: &RemoteIdentity, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0; DATA_HEADER_LEN + payload.len()];
    write_data_header(&mut frame, peer.as_bytes());
    frame[DATA_HEADER_LEN..].copy_from_slice(payload);
    frame
}

/// The 44 bytes a challenge and a response start with: magic, kind, sender, id.
fn write_path_head(frame: &mut [u8], kind: u8, sender: &RawIdentity, id: u64) {
    frame[..3].copy_from_slice(&MAGIC);
    frame[3] = kind;
    frame[4..36].copy_from_slice(sender);
    frame[36..44].copy_from_slice(&id.to_be_bytes());
}

/// A challenge from `sender` to `receiver` at `target`, tagged with `key`.
pub fn challenge(
    key: &PathKey,
    id: u64,
    target: std::net::SocketAddr,
    sender: &RawIdentity,
    receiver: &RawIdentity,
) -> [u8; CHALLENGE_LEN] {
    let mut frame = [0; CHALLENGE_LEN];
    write_path_head(&mut frame, KIND_CHALLENGE, sender, id);
    frame[44..62].copy_from_slice(&encode_addr(target));
    frame[62..].copy_from_slice(&tag(key, TagKind::Challenge, id, target, sender, receiver));
    frame
}

/// The response from `sender` to `receiver`'s challenge `id` (sent to `target`).
pub fn response(
    key: &PathKey,
    id: u64,
    target: std::net::SocketAddr,
    sender: &RawIdentity,
    receiver: &RawIdentity,
) -> [u8; RESPONSE_LEN] {
    let mut frame = [0; RESPONSE_LEN];
    write_path_head(&mut frame, KIND_RESPONSE, sender, id);
    frame[44..].copy_from_slice(&tag(key, TagKind::Response, id, target, sender, receiver));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn round_trips() {
        let id = Identity::generate().to_remote_identity();
        let other = *Identity::generate().to_remote_identity().as_bytes();
        let frame = data(&id, b"quic bytes");
        let raw = *id.as_bytes();
        assert_eq!(Frame::parse(&frame), Ok(Frame::Data { peer: raw, payload: b"quic bytes" }));
        let key = [7; 32];
        for target in ["192.0.2.1:4000", "[2001:db8::1]:9", "0.0.0.0:0"] {
            let target: std::net::SocketAddr = target.parse().unwrap();
            let c = challenge(&key, u64::MAX, target, &raw, &other);
            let tag = tag(&key, TagKind::Challenge, u64::MAX, target, &raw, &other);
            assert_eq!(Frame::parse(&c), Ok(Frame::Challenge { sender: raw, id: u64::MAX, target, tag }));
            let r = response(&key, 3, target, &raw, &other);
            let tag = super::tag(&key, TagKind::Response, 3, target, &raw, &other);
            assert_eq!(Frame::parse(&r), Ok(Frame::Response { sender: raw, id: 3, tag }));
        }
        const { assert!(RESPONSE_LEN < CHALLENGE_LEN, "a response never amplifies") };
    }

    #[test]
    fn tags_bind_everything_they_cover() {
        let (a, b) = ([1; 32], [2; 32]);
        let target: std::net::SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let base = tag(&[9; 32], TagKind::Challenge, 1, target, &a, &b);
        assert!(tags_equal(&base, &tag(&[9; 32], TagKind::Challenge, 1, target, &a, &b)));
        for other in [
            tag(&[8; 32], TagKind::Challenge, 1, target, &a, &b),
            tag(&[9; 32], TagKind::Response, 1, target, &a, &b),
            tag(&[9; 32], TagKind::Challenge, 2, target, &a, &b),
            tag(&[9; 32], TagKind::Challenge, 1, "192.0.2.1:4001".parse().unwrap(), &a, &b),
            tag(&[9; 32], TagKind::Challenge, 1, target, &b, &a),
        ] {
            assert!(!tags_equal(&base, &other));
        }
    }

    #[test]
    fn hostile_input_is_refused() {
        let id = Identity::generate().to_remote_identity();
        assert_eq!(Frame::parse(b""), Err(FrameError::NotAFrame));
        assert_eq!(Frame::parse(&[0x40, 1, 2, 3]), Err(FrameError::NotAFrame));
        assert_eq!(Frame::parse(&MAGIC), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&[0, b'W', b'R', 9]), Err(FrameError::UnknownKind(9)));
        // The unauthenticated punches of wire 1.0 are unknown now.
        assert_eq!(Frame::parse(&[0, b'W', b'R', 2]), Err(FrameError::UnknownKind(2)));
        let frame = data(&id, b"x");
        assert_eq!(Frame::parse(&frame[..DATA_HEADER_LEN - 1]), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&data(&id, &[0; MAX_PAYLOAD + 1])), Err(FrameError::TooLong));
        let c = challenge(&[0; 32], 1, "192.0.2.1:1".parse().unwrap(), id.as_bytes(), id.as_bytes());
        assert_eq!(Frame::parse(&c[..CHALLENGE_LEN - 1]), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&[&c[..], b"x"].concat()), Err(FrameError::TooLong));
        let r = response(&[0; 32], 1, "192.0.2.1:1".parse().unwrap(), id.as_bytes(), id.as_bytes());
        assert_eq!(Frame::parse(&r[..RESPONSE_LEN - 1]), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&[&r[..], b"x"].concat()), Err(FrameError::TooLong));
    }
}
