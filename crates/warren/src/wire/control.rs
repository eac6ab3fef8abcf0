//! What a node and its relay say to each other on QUIC streams of their connection: each
//! request on a stream of its own, answered once. Messages are [`warren_proto`] bodies after a
//! two-byte big-endian length, at most [`MAX_MESSAGE`] bytes.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warren_proto::{Decode, Encode, Message};

use crate::RemoteIdentity;

/// QUIC close code of a relay refusing a node (allow-list, token, limits).
pub const REFUSED: u32 = 0x52_01;

/// QUIC close code of a relay cutting a node off at its byte limit.
pub const OVER_LIMIT: u32 = 0x52_02;

/// Largest control message, either way.
pub const MAX_MESSAGE: usize = 4096;

/// Longest token a node may present.
pub const MAX_TOKEN: usize = 256;

/// Most nodes a relay lists as answering for one rendezvous key.
pub const MAX_FOUND: usize = 8;

/// A rendezvous key: what a node announces it answers for (a pairing nameplate's hash), so
/// that a peer who knows only the nameplate learns which identities to try. Opaque to the
/// relay.
pub type RendezvousKey = [u8; 16];

/// A node's request.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    /// "Serve me": the first request on a connection. The relay answers `Registered` or
    /// `Refused` (and then closes the connection).
    Register {
        /// The relay's access token, if it asks for one.
        #[proto(max_len = 256)]
        token: Option<String>,
    },
    /// "Is this peer registered with you?"
    Lookup {
        /// Echoed in the answer, so answers match their requests in any order.
        id: u64,
        /// The peer.
        peer: RemoteIdentity,
    },
    /// "List me as answering for `key` while I am registered." Answered `Announced`.
    Announce {
        /// Echoed in the answer.
        id: u64,
        /// The key.
        key: RendezvousKey,
    },
    /// "Stop listing me for `key`." Answered `Announced` (accepted: it is gone).
    Withdraw {
        /// Echoed in the answer.
        id: u64,
        /// The key.
        key: RendezvousKey,
    },
    /// "Who answers for `key`?" Answered `Found`.
    Find {
        /// Echoed in the answer.
        id: u64,
        /// The key.
        key: RendezvousKey,
    },
}

impl Request {
    /// The request's id (the registration has none).
    pub fn id(&self) -> Option<u64> {
        match self {
            Request::Register { .. } => None,
            Request::Lookup { id, .. }
            | Request::Announce { id, .. }
            | Request::Withdraw { id, .. }
            | Request::Find { id, .. } => Some(*id),
        }
    }
}

/// The relay's answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    /// Registered; the relay saw the node's UDP packets come from `observed` (its reflexive
    /// address).
    Registered {
        /// The node's address as the relay sees it.
        observed: SocketAddr,
    },
    /// Not served, and why.
    Refused {
        /// Why.
        #[proto(max_len = 512)]
        reason: String,
    },
    /// Answer to `Lookup`.
    Lookup {
        /// The request's id.
        id: u64,
        /// Whether the peer is registered now.
        online: bool,
    },
    /// Answer to `Announce` and `Withdraw`.
    Announced {
        /// The request's id.
        id: u64,
        /// Whether the node is listed now (`Announce`) or no longer (`Withdraw`); an
        /// announcement over the relay's limits is not.
        accepted: bool,
    },
    /// Answer to `Find`: the nodes registered now that announced the key, oldest first.
    Found {
        /// The request's id.
        id: u64,
        /// Who announced it (anyone may: the answer is a list of candidates to check).
        #[proto(max_len = 8)]
        peers: Vec<RemoteIdentity>,
    },
}

impl Response {
    /// The id of the request this answers (registration answers have none).
    pub fn id(&self) -> Option<u64> {
        match self {
            Response::Registered { .. } | Response::Refused { .. } => None,
            Response::Lookup { id, .. } | Response::Announced { id, .. } | Response::Found { id, .. } => Some(*id),
        }
    }
}

/// Why a control message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The stream failed.
    #[error("relay stream: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is over [`MAX_MESSAGE`].
    #[error("relay message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// The body does not decode.
    #[error("malformed relay message: {0}")]
    Malformed(String),
}

/// Writes one message.
pub async fn write<W: AsyncWrite + Unpin, M: Message>(out: &mut W, message: &M) -> Result<(), ControlError> {
    let body = warren_proto::encode_to_vec(message).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(ControlError::TooLarge(body.len()));
    }
    let mut framed = Vec::with_capacity(2 + body.len());
    framed.extend_from_slice(&(body.len() as u16).to_be_bytes());
    framed.extend_from_slice(&body);
    out.write_all(&framed).await?;
    Ok(())
}

/// Reads one message; never allocates more than [`MAX_MESSAGE`] bytes.
pub async fn read<R: AsyncRead + Unpin, M: Message>(input: &mut R) -> Result<M, ControlError> {
    let mut len = [0; 2];
    input.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_MESSAGE {
        return Err(ControlError::TooLarge(len));
    }
    let mut body = vec![0; len];
    input.read_exact(&mut body).await?;
    decode(&body)
}

/// Decodes one message body (without its length prefix).
pub fn decode<M: Message>(body: &[u8]) -> Result<M, ControlError> {
    warren_proto::decode_from_slice(body).map_err(|e| ControlError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let peer = Identity::generate().to_remote_identity();
        let key = [7; 16];
        for request in [
            Request::Register { token: Some("t".into()) },
            Request::Lookup { id: u64::MAX, peer },
            Request::Announce { id: 1, key },
            Request::Withdraw { id: 2, key },
            Request::Find { id: 3, key },
        ] {
            let mut buf = Vec::new();
            write(&mut buf, &request).await.unwrap();
            assert_eq!(read::<_, Request>(&mut &buf[..]).await.unwrap(), request);
        }
        for response in
            [Response::Announced { id: 1, accepted: true }, Response::Found { id: 3, peers: vec![peer; MAX_FOUND] }]
        {
            let mut buf = Vec::new();
            write(&mut buf, &response).await.unwrap();
            assert_eq!(read::<_, Response>(&mut &buf[..]).await.unwrap(), response);
        }
        // A relay listing more than MAX_FOUND candidates is malformed, not believed.
        let mut buf = Vec::new();
        let too_many = Response::Found { id: 3, peers: vec![peer; MAX_FOUND + 1] };
        assert!(write(&mut buf, &too_many).await.is_err() || read::<_, Response>(&mut &buf[..]).await.is_err());
        // A length over the limit is refused before anything is allocated.
        let huge = [0xff, 0xff];
        assert!(matches!(read::<_, Request>(&mut &huge[..]).await, Err(ControlError::TooLarge(65535))));
        // Truncated body, garbage body, token over its limit.
        assert!(matches!(read::<_, Request>(&mut &[0, 9, 0][..]).await, Err(ControlError::Io(_))));
        assert!(matches!(read::<_, Request>(&mut &[0, 2, 0xee, 0xee][..]).await, Err(ControlError::Malformed(_))));
        let long = Request::Register { token: Some("x".repeat(MAX_TOKEN + 1)) };
        let mut buf = Vec::new();
        assert!(write(&mut buf, &long).await.is_err() || read::<_, Request>(&mut &buf[..]).await.is_err());
    }
}
