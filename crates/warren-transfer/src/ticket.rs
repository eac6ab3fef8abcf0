//! A ticket: everything a receiver needs to fetch content, in one copyable line. It names the
//! sender's identity (checked on connect, so a ticket cannot be redirected to an impostor), its
//! direct addresses, the relay it uses if any, and the content's hash (which pins every byte).
//!
//! Text form: `warren1` then lowercase unpadded base32 of the warren-proto encoding.

use std::net::SocketAddr;
use std::str::FromStr;

use warren::RemoteIdentity;

use crate::tree::Hash;

const PREFIX: &str = "warren1";
const BASE32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// What a receiver needs.
#[derive(Debug, Clone, PartialEq, Eq, warren_proto::Encode, warren_proto::Decode)]
#[proto(max_bytes = 2048)]
pub struct Ticket {
    /// The sender.
    pub provider: RemoteIdentity,
    /// Its direct addresses.
    #[proto(max_len = 16)]
    pub addrs: Vec<SocketAddr>,
    /// Its relay, if it uses one: the relay's identity and address.
    pub relay: Option<(RemoteIdentity, SocketAddr)>,
    /// The manifest's hash.
    pub hash: Hash,
}

/// Why a ticket does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a warren ticket: {0}")]
pub struct TicketError(String);

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = warren_proto::encode_to_vec(self).expect("a ticket is within its limits");
        write!(f, "{PREFIX}{}", BASE32.encode(&bytes).to_lowercase())
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, TicketError> {
        // Case does not matter (a QR code carries it in capitals, which encode more compactly).
        let s = s.trim().to_lowercase();
        let body = s.strip_prefix(PREFIX).ok_or_else(|| TicketError(format!("it does not start with {PREFIX}")))?;
        if body.len() > 4096 {
            return Err(TicketError("too long".into()));
        }
        let bytes = BASE32.decode(body.to_uppercase().as_bytes()).map_err(|e| TicketError(e.to_string()))?;
        warren_proto::decode_from_slice(&bytes).map_err(|e| TicketError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_round_trips_and_garbage_is_refused() {
        let provider = warren::Identity::generate().to_remote_identity();
        let relay = warren::Identity::generate().to_remote_identity();
        let ticket = Ticket {
            provider,
            addrs: vec!["192.168.1.2:4433".parse().unwrap(), "[2001:db8::1]:4433".parse().unwrap()],
            relay: Some((relay, "203.0.113.1:3478".parse().unwrap())),
            hash: [9; 32],
        };
        let text = ticket.to_string();
        assert!(text.starts_with("warren1") && text == text.to_lowercase());
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
        assert_eq!(format!("  {text}\n").parse::<Ticket>().unwrap(), ticket, "pasted with spaces");
        assert_eq!(text.to_uppercase().parse::<Ticket>().unwrap(), ticket, "scanned from a QR code");
        for bad in ["", "warren1", "warren1!!!", "sendme123", &text[..text.len() - 5], &"warren1a".repeat(1000)] {
            assert!(bad.parse::<Ticket>().is_err(), "{bad:?}");
        }
    }
}
