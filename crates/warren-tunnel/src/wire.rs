//! The byte formats: `warren/tunnel/1` (membership proof before application bytes) and
//! `warren/pair/1` (pairing by short code). Every message is one warren-proto value with a
//! byte budget; lists and strings have their own limits.

use warren_proto::{Decode, Encode};

use crate::cert::{Credential, LibraryId};
use crate::revocation::RevocationList;

/// The tunnel's protocol name.
pub const TUNNEL_PROTOCOL: &str = "warren/tunnel/1";
/// The pairing protocol's name.
pub const PAIR_PROTOCOL: &str = "warren/pair/1";

/// Largest tunnel or pairing message: a full revocation list (4096 × 32 bytes) and two
/// credentials fit.
pub const MAX_MESSAGE: u64 = 160 * 1024;

/// Tunnel messages, in order: the dialler's `Hello`, the acceptor's `Hello` (or `Refused`),
/// the dialler's `Accept` (or `Refused`); application bytes only after that.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[proto(max_bytes = 163840)]
// One message per step of a handshake, dropped at once: boxing the hello buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum TunnelMessage {
    /// "I am a member of this library, here is my proof and my revocation list."
    Hello {
        /// The library.
        library: LibraryId,
        /// The sender's credential.
        credential: Credential,
        /// The sender's current revocation list.
        revocations: Option<RevocationList>,
    },
    /// The dialler verified the acceptor.
    Accept,
    /// Refused, and why.
    Refused {
        /// Why.
        #[proto(max_len = 512)]
        reason: String,
    },
}

/// What the inviter hands the joiner once both proved the code.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Grant {
    /// The library's id.
    pub library: LibraryId,
    /// Its name.
    #[proto(max_len = 256)]
    pub name: String,
    /// Its public key.
    pub key: warren::RemoteIdentity,
    /// The joiner's new credential.
    pub credential: Credential,
    /// The inviter's own credential (a member the joiner can check the library against).
    pub inviter: Credential,
    /// The current revocation list.
    pub revocations: Option<RevocationList>,
}

/// Pairing messages: both send `Spake`; the inviter sends `Confirm`, the joiner checks it and
/// sends its own `Confirm`; the inviter checks that and sends `Grant`. `Failed` ends it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[proto(max_bytes = 163840)]
pub enum PairMessage {
    /// A SPAKE2 message (33 bytes for Ed25519).
    Spake {
        /// The message.
        #[proto(max_len = 64)]
        message: Vec<u8>,
    },
    /// Key confirmation: a MAC under the agreed key over the transcript.
    Confirm {
        /// The MAC.
        mac: [u8; 32],
    },
    /// The membership.
    Grant {
        /// What the joiner gets.
        grant: Box<Grant>,
    },
    /// The other side gives up, and why.
    Failed {
        /// Why.
        #[proto(max_len = 512)]
        reason: String,
    },
}

/// The property the `tunnel_wire` fuzz target checks: any bytes decode or are refused without
/// panicking, and what decodes encodes back to itself.
#[doc(hidden)]
pub fn fuzz_wire(data: &[u8]) {
    if let Ok(message) = warren_proto::decode_from_slice::<TunnelMessage>(data) {
        let again = warren_proto::encode_to_vec(&message).expect("a decoded message encodes");
        assert_eq!(warren_proto::decode_from_slice::<TunnelMessage>(&again).expect("and decodes again"), message);
    }
    if let Ok(message) = warren_proto::decode_from_slice::<PairMessage>(data) {
        let again = warren_proto::encode_to_vec(&message).expect("a decoded message encodes");
        assert_eq!(warren_proto::decode_from_slice::<PairMessage>(&again).expect("and decodes again"), message);
    }
}
