//! One message on a stream: a 4-byte big-endian length, at most [`MAX_MESSAGE`], then its
//! warren-proto encoding. Reads exactly the message, never past it, so application bytes after
//! the handshake stay in the stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warren_proto::Message;

use crate::wire::MAX_MESSAGE;

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Over the limit.
    #[error("a message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(u64),
    /// Does not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Writes one message.
pub async fn write<W: AsyncWrite + Unpin, M: Message>(out: &mut W, message: &M) -> Result<(), FrameError> {
    let body = warren_proto::encode_to_vec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() as u64 > MAX_MESSAGE {
        return Err(FrameError::TooLarge(body.len() as u64));
    }
    let mut framed = Vec::with_capacity(4 + body.len());
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    out.write_all(&framed).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one message; allocates at most [`MAX_MESSAGE`] bytes.
pub async fn read<R: AsyncRead + Unpin, M: Message>(input: &mut R) -> Result<M, FrameError> {
    let mut len = [0; 4];
    input.read_exact(&mut len).await?;
    let len = u64::from(u32::from_be_bytes(len));
    if len > MAX_MESSAGE {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0; len as usize];
    input.read_exact(&mut body).await?;
    warren_proto::decode_from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// After a failed write: the message the peer may have sent before it stopped reading, if one
/// arrives within a second.
pub async fn read_soon<R: AsyncRead + Unpin, M: Message>(input: &mut R) -> Option<M> {
    tokio::time::timeout(std::time::Duration::from_secs(1), read(input)).await.ok()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TunnelMessage;

    #[tokio::test]
    async fn frames_round_trip_and_hostile_lengths_are_refused_before_allocating() {
        let mut buf = Vec::new();
        write(&mut buf, &TunnelMessage::Accept).await.unwrap();
        buf.extend_from_slice(b"application bytes");
        let mut input = &buf[..];
        assert_eq!(read::<_, TunnelMessage>(&mut input).await.unwrap(), TunnelMessage::Accept);
        assert_eq!(input, b"application bytes", "nothing past the message is consumed");

        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(read::<_, TunnelMessage>(&mut &huge[..]).await, Err(FrameError::TooLarge(_))));
        assert!(matches!(read::<_, TunnelMessage>(&mut &[0, 0, 0, 9, 1][..]).await, Err(FrameError::Io(_))));
        assert!(matches!(read::<_, TunnelMessage>(&mut &[0, 0, 0, 1, 0xee][..]).await, Err(FrameError::Malformed(_))));
    }
}
