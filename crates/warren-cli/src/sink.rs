//! The byte sink the benchmarks and the NAT matrix send to: the dialler sends bytes and
//! finishes; the sink answers with the count.

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::Stream;

/// Protocol of the byte sink: the dialler sends bytes and finishes; the sink answers with the
/// count as a little-endian u64.
pub const SINK: &str = "sink/1";
/// Write size: 1 MiB chunks handed to QUIC without copying.
pub const CHUNK: usize = 1024 * 1024;

/// Counts what arrives on a sink stream, then answers with the count.
pub async fn sink(stream: Stream) {
    let mut halves = stream.into_split();
    if let Ok(count) = count_until_finished(&mut halves).await {
        let _ = halves.0.write_all(&count.to_le_bytes()).await;
        let _ = halves.0.finish();
    }
}

/// What the sink and its sender use of a stream: zero-copy chunks, on a warren stream and on a
/// plain quinn one alike.
pub trait Chunks {
    /// Writes all of `chunk`.
    async fn put(&mut self, chunk: Bytes) -> anyhow::Result<()>;
    /// Finishes the sending half.
    fn end(&mut self) -> anyhow::Result<()>;
    /// The length of the next chunk read, or `None` at the end.
    async fn take(&mut self) -> anyhow::Result<Option<usize>>;
}

impl Chunks for (warren::transport::SendStream, warren::transport::RecvStream) {
    async fn put(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        Ok(self.0.write_chunk(chunk).await?)
    }
    fn end(&mut self) -> anyhow::Result<()> {
        Ok(self.0.finish()?)
    }
    async fn take(&mut self) -> anyhow::Result<Option<usize>> {
        Ok(self.1.read_chunk(usize::MAX).await?.map(|c| c.len()))
    }
}

impl Chunks for (quinn::SendStream, quinn::RecvStream) {
    async fn put(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        Ok(self.0.write_chunk(chunk).await?)
    }
    fn end(&mut self) -> anyhow::Result<()> {
        Ok(self.0.finish()?)
    }
    async fn take(&mut self) -> anyhow::Result<Option<usize>> {
        Ok(self.1.read_chunk(usize::MAX, true).await?.map(|c| c.bytes.len()))
    }
}

pub async fn count_until_finished(stream: &mut impl Chunks) -> anyhow::Result<u64> {
    let mut count = 0u64;
    while let Some(len) = stream.take().await? {
        count += len as u64;
    }
    Ok(count)
}

/// Sends `bytes` bytes in 1 MiB chunks, finishes, and returns the count the sink reports.
pub async fn send_to_sink<S, R>(stream: &mut (S, R), bytes: u64) -> anyhow::Result<u64>
where
    (S, R): Chunks,
    R: tokio::io::AsyncRead + Unpin,
{
    let chunk = Bytes::from(vec![0xa5; CHUNK]);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.put(chunk.slice(..n)).await?;
        left -= n as u64;
    }
    stream.end()?;
    let recv = &mut stream.1;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await.context("reading the sink's count")?;
    Ok(u64::from_le_bytes(count))
}
