//! The I/O around a TCP relay link (the record format is [`crate::wire::record`]): keepalive
//! and the writer loop, shared by the node's relay client and the relay server.

/// Idle time before TCP keepalive probes start on a relay link.
pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(15);

/// Turns on TCP keepalive (probes every 5 s after [`KEEPALIVE_IDLE`], 3 tries), so that a
/// relay link whose other end vanished silently is found dead instead of waited on forever.
pub fn keepalive(stream: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(std::time::Duration::from_secs(5))
        .with_retries(3);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "could not turn on TCP keepalive");
    }
}

/// Writes queued records to `writer` until the queue closes or a write fails. rustls holds
/// what the socket did not take yet, so the writer is flushed whenever the queue is empty.
pub async fn write_queued(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    queued: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    write_queued_then(writer, queued, |_| {}).await;
}

/// [`write_queued`], calling `written` with each record once it is out of the queue (the relay
/// keeps a byte budget over all its queues with it).
pub async fn write_queued_then(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    queued: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut written: impl FnMut(&[u8]),
) {
    use tokio::io::AsyncWriteExt;
    while let Some(record) = queued.recv().await {
        let result = writer.write_all(&record).await;
        written(&record);
        if result.is_err() {
            return;
        }
        if queued.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
}
