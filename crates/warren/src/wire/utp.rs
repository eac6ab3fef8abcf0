//! uTP packets (BEP 29): a 20-byte header, a chain of extensions (warren reads and writes the
//! selective ACK, extension 1, and skips others), then the payload.
//!
//! ```text
//!  0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! +---------------+---------------+---------------+---------------+
//! | timestamp_difference_microseconds                             |
//! +---------------+---------------+---------------+---------------+
//! | wnd_size                                                      |
//! +---------------+---------------+---------------+---------------+
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! All fields big-endian. An extension is `next type (u8) | length (u8) | bytes`; the header's
//! `extension` names the first, 0 ends the chain. A selective ACK's bytes are a bitmask (a
//! multiple of 4 bytes long) of the packets after `ack_nr + 1`: bit `i` (byte `i / 8`, bit
//! `i % 8`, least significant first) says `ack_nr + 2 + i` arrived.

use std::fmt;

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 20;

/// The only version there is.
pub const VERSION: u8 = 1;

/// Longest selective-ACK bitmask warren reads or writes (256 packets past the hole); longer
/// ones are refused.
pub const MAX_SACK_BYTES: usize = 32;

/// At most this many extensions are walked; a longer chain is refused.
pub const MAX_EXTENSIONS: usize = 4;

/// Largest packet warren accepts (a UDP payload).
pub const MAX_PACKET: usize = 65_507;

const EXT_SACK: u8 = 1;

/// A packet's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Payload.
    Data,
    /// The sender's last packet: the stream ends after `seq_nr - 1`.
    Fin,
    /// An acknowledgement (no payload, no sequence number of its own).
    State,
    /// The connection is gone.
    Reset,
    /// Opens a connection.
    Syn,
}

impl Type {
    fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            0 => Type::Data,
            1 => Type::Fin,
            2 => Type::State,
            3 => Type::Reset,
            4 => Type::Syn,
            _ => return None,
        })
    }

    fn nibble(self) -> u8 {
        match self {
            Type::Data => 0,
            Type::Fin => 1,
            Type::State => 2,
            Type::Reset => 3,
            Type::Syn => 4,
        }
    }
}

/// A parsed packet, borrowing its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Its type.
    pub kind: Type,
    /// The receiver's connection id (as the sender knows it).
    pub connection_id: u16,
    /// The sender's clock, in microseconds (wrapping).
    pub timestamp: u32,
    /// The sender's last one-way delay sample of the receiver's packets, in microseconds.
    pub timestamp_difference: u32,
    /// Bytes the sender can still take into its receive buffer.
    pub wnd_size: u32,
    /// The packet's sequence number.
    pub seq_nr: u16,
    /// The last packet the sender received in order.
    pub ack_nr: u16,
    /// The selective-ACK bitmask, if any (see the module docs).
    pub sack: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

impl fmt::Debug for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("kind", &self.kind)
            .field("connection_id", &self.connection_id)
            .field("seq_nr", &self.seq_nr)
            .field("ack_nr", &self.ack_nr)
            .field("wnd_size", &self.wnd_size)
            .field("sack", &self.sack.map(<[u8]>::len))
            .field("payload", &self.payload.len())
            .finish()
    }
}

/// Why bytes are not a uTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than a header, or an extension runs past the end.
    #[error("truncated uTP packet")]
    Truncated,
    /// Not version 1.
    #[error("uTP version {0}")]
    Version(u8),
    /// A type nibble above 4.
    #[error("uTP type {0}")]
    Type(u8),
    /// A selective ACK not a multiple of 4 bytes, or longer than [`MAX_SACK_BYTES`].
    #[error("selective ACK of {0} bytes")]
    Sack(usize),
    /// More extensions than [`MAX_EXTENSIONS`].
    #[error("too many uTP extensions")]
    Extensions,
    /// Longer than [`MAX_PACKET`].
    #[error("uTP packet of {0} bytes")]
    TooLong(usize),
}

/// True if `datagram` looks like uTP at a glance (version 1, a known type). The first bytes
/// of uTP's five types are 0x01, 0x11, 0x21, 0x31 and 0x41. QUIC sets the fixed bit 0x40 in
/// every packet, so only a SYN (0x41) can be taken for a QUIC short-header packet: a socket
/// shared by both has to look further than the first byte (see docs/transports.md).
pub fn looks_like_utp(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] & 0x0f == VERSION && datagram[0] >> 4 <= 4
}

impl<'a> Packet<'a> {
    /// Parses `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        if bytes.len() > MAX_PACKET {
            return Err(PacketError::TooLong(bytes.len()));
        }
        if bytes.len() < HEADER_LEN {
            return Err(PacketError::Truncated);
        }
        let version = bytes[0] & 0x0f;
        if version != VERSION {
            return Err(PacketError::Version(version));
        }
        let kind = Type::from_nibble(bytes[0] >> 4).ok_or(PacketError::Type(bytes[0] >> 4))?;
        let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let mut next = bytes[1];
        let mut at = HEADER_LEN;
        let mut sack = None;
        let mut walked = 0;
        while next != 0 {
            walked += 1;
            if walked > MAX_EXTENSIONS {
                return Err(PacketError::Extensions);
            }
            if at + 2 > bytes.len() {
                return Err(PacketError::Truncated);
            }
            let (kind, len) = (next, usize::from(bytes[at + 1]));
            next = bytes[at];
            let body = bytes.get(at + 2..at + 2 + len).ok_or(PacketError::Truncated)?;
            if kind == EXT_SACK {
                if len == 0 || len % 4 != 0 || len > MAX_SACK_BYTES {
                    return Err(PacketError::Sack(len));
                }
                sack = Some(body);
            }
            at += 2 + len;
        }
        Ok(Self {
            kind,
            connection_id: u16_at(2),
            timestamp: u32_at(4),
            timestamp_difference: u32_at(8),
            wnd_size: u32_at(12),
            seq_nr: u16_at(16),
            ack_nr: u16_at(18),
            sack,
            payload: &bytes[at..],
        })
    }

    /// Appends the packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind.nibble() << 4 | VERSION);
        out.push(if self.sack.is_some() { EXT_SACK } else { 0 });
        out.extend_from_slice(&self.connection_id.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.timestamp_difference.to_be_bytes());
        out.extend_from_slice(&self.wnd_size.to_be_bytes());
        out.extend_from_slice(&self.seq_nr.to_be_bytes());
        out.extend_from_slice(&self.ack_nr.to_be_bytes());
        if let Some(sack) = self.sack {
            debug_assert!(sack.len() % 4 == 0 && sack.len() <= MAX_SACK_BYTES && !sack.is_empty());
            out.push(0);
            out.push(sack.len() as u8);
            out.extend_from_slice(sack);
        }
        out.extend_from_slice(self.payload);
    }

    /// Bytes the header and extensions take.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.sack.map_or(0, |s| 2 + s.len())
    }
}

/// Parses `data` as a packet (for the fuzz target): never panics, and what parses re-encodes
/// to a packet that parses the same (unknown extensions are dropped on the way).
pub fn fuzz_packet(data: &[u8]) {
    let Ok(packet) = Packet::parse(data) else { return };
    let mut again = Vec::new();
    packet.encode(&mut again);
    assert_eq!(Packet::parse(&again).as_ref(), Ok(&packet), "a parsed packet re-encodes to itself");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Type, sack: Option<&'static [u8]>, payload: &'static [u8]) -> Packet<'static> {
        Packet {
            kind,
            connection_id: 0xbeef,
            timestamp: 123_456_789,
            timestamp_difference: 42,
            wnd_size: 1 << 20,
            seq_nr: 65_535,
            ack_nr: 7,
            sack,
            payload,
        }
    }

    #[test]
    fn packets_round_trip_with_and_without_a_selective_ack() {
        for packet in [
            sample(Type::Syn, None, b""),
            sample(Type::Data, None, b"payload"),
            sample(Type::State, Some(&[0b101, 0, 0, 0x80]), b""),
            sample(Type::Fin, Some(&[0xff; 32]), b""),
            sample(Type::Reset, None, b""),
        ] {
            let mut bytes = Vec::new();
            packet.encode(&mut bytes);
            assert_eq!(bytes.len(), packet.header_len() + packet.payload.len());
            assert_eq!(Packet::parse(&bytes), Ok(packet.clone()));
            assert!(looks_like_utp(&bytes));
            fuzz_packet(&bytes);
        }
    }

    #[test]
    fn the_wire_layout_is_bep_29s() {
        let mut bytes = Vec::new();
        sample(Type::Syn, None, b"").encode(&mut bytes);
        assert_eq!(bytes[0], 0x41, "type 4 (SYN) in the high nibble, version 1 in the low");
        assert_eq!(&bytes[2..4], &[0xbe, 0xef]);
        assert_eq!(&bytes[16..20], &[0xff, 0xff, 0, 7]);
    }

    #[test]
    fn unknown_extensions_are_skipped_and_hostile_ones_refused() {
        let mut bytes = Vec::new();
        sample(Type::Data, None, b"xy").encode(&mut bytes);
        // Insert an unknown extension (type 9, 3 bytes) before the payload.
        bytes[1] = 9;
        bytes.splice(HEADER_LEN..HEADER_LEN, [0, 3, 1, 2, 3]);
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!((packet.sack, packet.payload), (None, &b"xy"[..]));
        fuzz_packet(&bytes);
        // Truncations everywhere.
        for cut in 0..bytes.len() {
            let _ = Packet::parse(&bytes[..cut]);
        }
        assert_eq!(Packet::parse(&bytes[..HEADER_LEN + 3]), Err(PacketError::Truncated));
        // A SACK of 3 bytes, one of 36, a chain of 5, version 2, type 5, a jumbo.
        let mut sack3 = bytes.clone();
        sack3[1] = 1;
        assert_eq!(Packet::parse(&sack3), Err(PacketError::Sack(3)));
        let mut long = Vec::new();
        sample(Type::State, None, b"").encode(&mut long);
        long[1] = 1;
        long.extend_from_slice(&[0, 36]);
        long.extend_from_slice(&[0; 36]);
        assert_eq!(Packet::parse(&long), Err(PacketError::Sack(36)));
        let mut chain = Vec::new();
        sample(Type::State, None, b"").encode(&mut chain);
        chain[1] = 9;
        for _ in 0..5 {
            chain.extend_from_slice(&[9, 0]);
        }
        assert_eq!(Packet::parse(&chain), Err(PacketError::Extensions));
        let mut v2 = long.clone();
        v2[0] = 0x42;
        assert_eq!(Packet::parse(&v2), Err(PacketError::Version(2)));
        v2[0] = 0x51;
        assert_eq!(Packet::parse(&v2), Err(PacketError::Type(5)));
        assert_eq!(Packet::parse(&vec![0x41; MAX_PACKET + 1]), Err(PacketError::TooLong(MAX_PACKET + 1)));
    }
}
