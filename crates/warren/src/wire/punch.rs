//! The hole-punching signalling two peers exchange on a [`PROTOCOL`] stream of their
//! (relayed, end-to-end encrypted) connection; see [`crate::state::punch`] for what each
//! message means. Each message is a [`control`](super::control) message: a two-byte length,
//! then a warren-proto body, at most [`control::MAX_MESSAGE`](super::control::MAX_MESSAGE)
//! bytes; at most 16 candidates each.

use std::net::SocketAddr;

use warren_proto::{Decode, Encode};

use super::control;
use crate::state::nat::NatType;

/// The protocol of the signalling stream. Version 2: challenges and responses authenticated
/// with a key of the connection (see [`super::frame`]) replaced version 1's nonces.
pub const PROTOCOL: &str = "warren/punch/2";

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
    /// "Start punching in half a round trip."
    Sync,
    /// The sender's schedule is over.
    Finished {
        /// Whether it found a direct path.
        ok: bool,
    },
}

/// Fuzzing: `data` as a signalling message body. Never panics; what decodes re-encodes.
pub fn fuzz_message(data: &[u8]) {
    if data.len() <= control::MAX_MESSAGE
        && let Ok(message) = control::decode::<Message>(data)
    {
        assert!(warren_proto::encode_to_vec(&message).is_ok());
    }
}
