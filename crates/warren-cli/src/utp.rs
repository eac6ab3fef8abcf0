//! `warren utp listen ADDR` and `warren utp send ADDR`: plain BEP 29 uTP (no Noise, no
//! multiplexer), so that anyone can test warren's uTP against another implementation: what
//! one connection brings goes to stdout; stdin goes to the peer.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Subcommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::state::utp::{Closed, Config};
use warren::transport::utp::UtpSocket;

#[derive(Subcommand)]
pub enum UtpCommand {
    /// Accept one uTP connection on ADDR and write what it brings to stdout.
    Listen {
        /// Where to listen (UDP).
        addr: SocketAddr,
    },
    /// Connect to ADDR and send stdin; ends when the peer has acknowledged everything.
    Send {
        /// The peer (UDP).
        addr: SocketAddr,
    },
}

pub async fn run(command: UtpCommand) -> anyhow::Result<()> {
    match command {
        UtpCommand::Listen { addr } => {
            let socket = UtpSocket::bind(addr, Config::default()).await.with_context(|| format!("binding {addr}"))?;
            socket.listen();
            eprintln!("warren utp: listening on {}", socket.local_addr()?);
            let mut stream = socket.accept().await?;
            eprintln!("warren utp: connection from {}", stream.peer_addr());
            let mut stdout = tokio::io::stdout();
            let copied = tokio::io::copy(&mut stream, &mut stdout).await.context("receiving")?;
            stdout.flush().await?;
            eprintln!("warren utp: received {copied} bytes");
            // Let our last ACK reach the peer before the socket goes.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.finished()).await;
            Ok(())
        }
        UtpCommand::Send { addr } => {
            let any: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
            let socket = UtpSocket::bind(any, Config::default()).await?;
            let mut stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 256 * 1024];
            let mut sent = 0u64;
            loop {
                let n = stdin.read(&mut buf).await.context("reading stdin")?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await.context("sending")?;
                sent += n as u64;
            }
            stream.shutdown().await?;
            match stream.finished().await {
                Some(Closed::Finished) => {
                    eprintln!("warren utp: sent {sent} bytes, all acknowledged");
                    Ok(())
                }
                other => anyhow::bail!("the connection ended before everything was acknowledged: {other:?}"),
            }
        }
    }
}
