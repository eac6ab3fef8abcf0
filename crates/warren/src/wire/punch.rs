//! The hole-punching signalling two peers exchange on a [`PROTOCOL`] stream of their
//! (relayed, end-to-end encrypted) connection; see [`crate::state::punch`] for what each
//! message means. Each message is a [`control`](super::control) message: a two-byte length,
//! then a warren-proto body, at most [`control::MAX_MESSAGE`](super::control::MAX_MESSAGE)
//! bytes; at most 16 candidates each.

use std::net::SocketAddr;

use warren_proto::{Decode, Encode};

use super::control;

/// The protocol of the signalling stream. Version 2: challenges and responses authenticated
/// with a key of the connection (see [`super::frame`]) replaced version 1's nonces. Version
/// 3: the responder says [`Message::Opened`] and the initiator punches on it, where version 2
/// waited half a round trip plus a margin.
pub const PROTOCOL: &str = "warren/punch/3";

/// A node's NAT, as far as its relay can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// Not known (no relay, no answer from its second port, an older peer).
    #[default]
    Unknown,
    /// No NAT: the relay sees one of the socket's own addresses.
    Open,
    /// Endpoint-independent mapping: every destination sees the same address and port.
    Easy,
    /// Endpoint-dependent mapping with ports close together (port prediction may find them).
    HardSequential,
    /// Endpoint-dependent mapping with random ports (only birthday probing or a port mapping
    /// gets through).
    HardRandom,
}

impl NatType {
    /// A short name for people and JSON.
    pub fn name(self) -> &'static str {
        match self {
            NatType::Unknown => "unknown",
            NatType::Open => "open",
            NatType::Easy => "easy",
            NatType::HardSequential => "hard-sequential",
            NatType::HardRandom => "hard-random",
        }
    }

    /// Endpoint-dependent mapping.
    pub fn is_hard(self) -> bool {
        matches!(self, NatType::HardSequential | NatType::HardRandom)
    }
}

impl std::fmt::Display for NatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a side knows of its own NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct NatInfo {
    /// Its kind (from the relay's two ports).
    pub kind: NatType,
    /// Whether its gateway maps a port to it (PCP, NAT-PMP or UPnP): its first candidate is
    /// then reachable from anywhere.
    pub mapped: bool,
}

/// One signalling message.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// The dialler's offer: its candidate addresses.
    Offer {
        /// The sender's local addresses.
        #[proto(max_len = 16)]
        candidates: Vec<SocketAddr>,
        /// The sender's address as its relay sees it.
        reflexive: Option<SocketAddr>,
        /// The sender's NAT (appended in issue 13; an older peer's offer ends before it).
        #[proto(default)]
        nat: NatInfo,
    },
    /// The answerer's candidates.
    Answer {
        /// The sender's local addresses.
        #[proto(max_len = 16)]
        candidates: Vec<SocketAddr>,
        /// The sender's address as its relay sees it.
        reflexive: Option<SocketAddr>,
        /// The sender's NAT.
        #[proto(default)]
        nat: NatInfo,
    },
    /// The initiator's opens are out: "open, then start punching".
    Sync,
    /// The sender's schedule is over.
    Finished {
        /// Whether it found a direct path.
        ok: bool,
    },
    /// The responder's opens are out (version 3): the initiator starts punching.
    Opened,
}

/// Fuzzing: `data` as a signalling message body. Never panics; what decodes re-encodes.
pub fn fuzz_message(data: &[u8]) {
    if data.len() <= control::MAX_MESSAGE {
        if let Ok(message) = control::decode::<Message>(data) {
            assert!(warren_proto::encode_to_vec(&message).is_ok());
        }
        if let Ok(message) = control::decode::<TcpMessage>(data) {
            assert!(warren_proto::encode_to_vec(&message).is_ok());
        }
    }
}

/// The signalling protocol of a TCP hole punch (simultaneous open; see
/// `crate::node::tcp_punch`), on a stream of an existing (relayed) connection.
pub const TCP_PROTOCOL: &str = "warren/tcp-punch/1";

/// A TCP hole punch's messages: the offerer's candidates (its reflexive and local addresses,
/// each with its TCP listener's port), the answerer's, and the offerer's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum TcpMessage {
    /// The offerer's TCP candidates.
    Offer {
        /// At most 16.
        #[proto(max_len = 16)]
        candidates: Vec<SocketAddr>,
    },
    /// The answerer's TCP candidates; both sides start connecting when it is sent and read.
    Answer {
        /// At most 16.
        #[proto(max_len = 16)]
        candidates: Vec<SocketAddr>,
    },
    /// The offerer has a direct TCP connection (`ok`) or gave up: the answerer stops trying.
    Finished {
        /// Whether it worked.
        ok: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_punch_messages_round_trip_and_hostile_ones_are_refused() {
        let candidates: Vec<SocketAddr> = (0..16).map(|i| SocketAddr::from(([203, 0, 113, i], 4000))).collect();
        for message in [
            TcpMessage::Offer { candidates: candidates.clone() },
            TcpMessage::Answer { candidates: Vec::new() },
            TcpMessage::Finished { ok: true },
        ] {
            let bytes = warren_proto::encode_to_vec(&message).unwrap();
            assert_eq!(control::decode::<TcpMessage>(&bytes).unwrap(), message);
        }
        // 17 candidates: refused at decoding, whoever encoded them.
        let mut too_many = candidates;
        too_many.push(SocketAddr::from(([198, 51, 100, 1], 1)));
        assert!(warren_proto::encode_to_vec(&TcpMessage::Offer { candidates: too_many.clone() }).is_err());
        let mut bytes =
            warren_proto::encode_to_vec(&TcpMessage::Offer { candidates: too_many[..16].to_vec() }).unwrap();
        // Truncated, garbage, and an unknown variant.
        assert!(control::decode::<TcpMessage>(&bytes[..bytes.len() - 1]).is_err());
        assert!(control::decode::<TcpMessage>(&[0xff; 40]).is_err());
        bytes[0] = 9;
        assert!(control::decode::<TcpMessage>(&bytes).is_err());
    }
}
