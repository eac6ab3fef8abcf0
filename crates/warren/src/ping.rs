//! `ping/1`: measures round trips on an authenticated stream.
//!
//! The dialler sends 32 random bytes, the acceptor echoes them, the dialler checks they match;
//! repeated on one stream for as many pings as asked. Messages have a fixed size, so the
//! acceptor allocates nothing per ping whatever the peer sends.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ConnectError, P2P, RemoteIdentity, Stream};

/// The protocol name.
pub const PROTOCOL: &str = "ping/1";

/// Size of one ping payload.
pub const PAYLOAD_LEN: usize = 32;

/// Why a ping failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// Could not open the stream.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The stream failed mid-ping.
    #[error("ping stream failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer echoed other bytes than it was sent.
    #[error("the peer answered a ping with the wrong bytes")]
    Mismatch,
}

/// Registers the `ping/1` responder on `p2p`.
pub fn register(p2p: &P2P) -> Result<(), crate::RegisterError> {
    p2p.register_protocol(PROTOCOL, serve)
}

/// Serves one `ping/1` stream: echoes each 32-byte payload until the dialler finishes.
pub async fn serve(mut stream: Stream) {
    let mut payload = [0u8; PAYLOAD_LEN];
    while stream.read_exact(&mut payload).await.is_ok() {
        if stream.write_all(&payload).await.is_err() {
            return;
        }
    }
    let _ = stream.finish();
}

/// Opens a `ping/1` stream to `remote` and pings it `count` times, returning each round-trip
/// time. Connection setup is not included in the times.
pub async fn ping(p2p: &P2P, remote: RemoteIdentity, count: usize) -> Result<Vec<Duration>, PingError> {
    let mut stream = p2p.connect(remote, PROTOCOL).await?;
    ping_stream(&mut stream, count).await
}

/// Pings `count` times over an open `ping/1` stream.
pub async fn ping_stream(stream: &mut Stream, count: usize) -> Result<Vec<Duration>, PingError> {
    let mut rtts = Vec::with_capacity(count);
    let mut sent = [0u8; PAYLOAD_LEN];
    let mut echoed = [0u8; PAYLOAD_LEN];
    for _ in 0..count {
        getrandom::fill(&mut sent).map_err(|e| std::io::Error::other(e.to_string()))?;
        let start = Instant::now();
        stream.write_all(&sent).await?;
        stream.read_exact(&mut echoed).await?;
        rtts.push(start.elapsed());
        if sent != echoed {
            return Err(PingError::Mismatch);
        }
    }
    Ok(rtts)
}
