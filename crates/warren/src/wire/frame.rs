//! The datagrams warren sends beside QUIC on its one UDP socket: relayed data and hole punches.
//!
//! Every one starts with the byte `0x00` and the magic `WR`. QUIC version 1 never sends a
//! packet whose first byte has the fixed bit (`0x40`) clear unless both ends agreed to grease
//! it, and warren's endpoints never agree to that ([`crate::transport::quic::endpoint_config`]),
//! so the two never collide.
//!
//! ```text
//! data:  00 'W' 'R' 01 | identity (32)              | QUIC packet (up to MAX_PAYLOAD)
//! punch: 00 'W' 'R' 02 | nonce (8) | identity (32)
//! ack:   00 'W' 'R' 03 | nonce (8) | identity (32)
//! ```
//!
//! In a data frame from a node to its relay the identity is the destination; the relay rewrites
//! it to the source before forwarding. The payload is an end-to-end encrypted QUIC packet the
//! relay cannot read. Punches carry the sender's identity and a nonce both peers agreed on over
//! their authenticated connection; a punch with another nonce is ignored.

use crate::RemoteIdentity;

/// The 32 bytes of an identity as a frame carries them, unchecked: receivers look them up among
/// identities they know (checking a curve point per packet would cost more than forwarding it).
pub type RawIdentity = [u8; 32];

/// The first three bytes of every warren datagram that is not QUIC.
pub const MAGIC: [u8; 3] = [0x00, b'W', b'R'];

/// Length of a data frame's header.
pub const DATA_HEADER_LEN: usize = 4 + 32;

/// Length of a punch or punch acknowledgement.
pub const PUNCH_LEN: usize = 4 + 8 + 32;

/// Largest payload a data frame carries: a 1,500-byte MTU less IPv6 and UDP headers and ours.
/// warren's QUIC never sends larger packets (see
/// [`MAX_UDP_PAYLOAD`](crate::transport::quic::MAX_UDP_PAYLOAD)).
pub const MAX_PAYLOAD: usize = 1500 - 48 - DATA_HEADER_LEN;

const KIND_DATA: u8 = 1;
const KIND_PUNCH: u8 = 2;
const KIND_ACK: u8 = 3;

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
    /// "Can you hear me?" from `sender`.
    Punch {
        /// The nonce of the punch session.
        nonce: u64,
        /// Who sent it.
        sender: RawIdentity,
    },
    /// "I heard you" from `sender`.
    Ack {
        /// The nonce of the punch session.
        nonce: u64,
        /// Who sent it.
        sender: RawIdentity,
    },
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
    /// A data frame with a payload over [`MAX_PAYLOAD`], or a punch with trailing bytes.
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
            KIND_PUNCH | KIND_ACK => {
                if datagram.len() < PUNCH_LEN {
                    return Err(FrameError::Truncated);
                }
                if datagram.len() > PUNCH_LEN {
                    return Err(FrameError::TooLong);
                }
                let nonce = u64::from_be_bytes(datagram[4..12].try_into().expect("8 bytes"));
                let sender = identity(&datagram[12..PUNCH_LEN]);
                Ok(if kind == KIND_PUNCH { Frame::Punch { nonce, sender } } else { Frame::Ack { nonce, sender } })
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

fn punch_like(kind: u8, nonce: u64, sender: &RemoteIdentity) -> [u8; PUNCH_LEN] {
    let mut frame = [0; PUNCH_LEN];
    frame[..3].copy_from_slice(&MAGIC);
    frame[3] = kind;
    frame[4..12].copy_from_slice(&nonce.to_be_bytes());
    frame[12..].copy_from_slice(sender.as_bytes());
    frame
}

/// A punch from `sender`.
pub fn punch(nonce: u64, sender: &RemoteIdentity) -> [u8; PUNCH_LEN] {
    punch_like(KIND_PUNCH, nonce, sender)
}

/// A punch acknowledgement from `sender`.
pub fn ack(nonce: u64, sender: &RemoteIdentity) -> [u8; PUNCH_LEN] {
    punch_like(KIND_ACK, nonce, sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn round_trips() {
        let id = Identity::generate().to_remote_identity();
        let frame = data(&id, b"quic bytes");
        let raw = *id.as_bytes();
        assert_eq!(Frame::parse(&frame), Ok(Frame::Data { peer: raw, payload: b"quic bytes" }));
        assert_eq!(Frame::parse(&punch(7, &id)), Ok(Frame::Punch { nonce: 7, sender: raw }));
        assert_eq!(Frame::parse(&ack(u64::MAX, &id)), Ok(Frame::Ack { nonce: u64::MAX, sender: raw }));
    }

    #[test]
    fn hostile_input_is_refused() {
        let id = Identity::generate().to_remote_identity();
        assert_eq!(Frame::parse(b""), Err(FrameError::NotAFrame));
        assert_eq!(Frame::parse(&[0x40, 1, 2, 3]), Err(FrameError::NotAFrame));
        assert_eq!(Frame::parse(&MAGIC), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&[0, b'W', b'R', 9]), Err(FrameError::UnknownKind(9)));
        let frame = data(&id, b"x");
        assert_eq!(Frame::parse(&frame[..DATA_HEADER_LEN - 1]), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&data(&id, &[0; MAX_PAYLOAD + 1])), Err(FrameError::TooLong));
        let p = punch(1, &id);
        assert_eq!(Frame::parse(&p[..PUNCH_LEN - 1]), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&[&p[..], b"x"].concat()), Err(FrameError::TooLong));
    }
}
