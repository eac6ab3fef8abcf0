//! `warren send PATH… --library LIB` and `warren receive --library LIB`: the transfer, scoped
//! to a library. The sender finds the members online (mDNS hints, `--peer`), opens a library
//! tunnel to each (both prove their membership before anything else), and offers the content
//! inside it: its root hash, file count and size. A receiving member fetches it from that very
//! peer with the ordinary verified transfer, then answers with the outcome.
//!
//! What the tunnel adds to a plain `warren send`: the receiver takes content only from a member
//! that proved itself (a revoked or a foreign device is refused before it can offer anything),
//! and the sender hands the root hash (the capability to fetch) only to members that proved
//! themselves. The provider itself serves whoever presents the hash, as for any `warren send`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::discovery::manual::ManualPeer;
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use warren::{Identity, P2P, RemoteIdentity};
use warren_tunnel::store::{LibraryRecord, Store};
use warren_tunnel::{Tunnel, tunnel};

use crate::output::json_line;
use crate::transfer_ui::human;

/// An offer's size on the wire: root hash, byte count, file count.
pub const OFFER_LEN: usize = 32 + 8 + 4;

/// Longest answer a receiver may give.
pub const MAX_ANSWER: usize = 512;

/// How long a receiver waits, after answering, for the sender to read the answer and close.
const ANSWER_LINGER: Duration = Duration::from_secs(5);

/// How long a member that opened a tunnel may take to make its offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a sending member offers inside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The content's root hash.
    pub hash: warren_transfer::Hash,
    /// Its size in bytes (for the receiver's display: the manifest it fetches is what counts).
    pub bytes: u64,
    /// Its file count (idem).
    pub files: u32,
}

impl Offer {
    /// The offer's bytes.
    pub fn encode(&self) -> [u8; OFFER_LEN] {
        let mut out = [0u8; OFFER_LEN];
        out[..32].copy_from_slice(&self.hash);
        out[32..40].copy_from_slice(&self.bytes.to_be_bytes());
        out[40..].copy_from_slice(&self.files.to_be_bytes());
        out
    }

    /// An offer from its bytes (any 44 bytes are an offer; the hash decides what is fetched).
    pub fn decode(bytes: &[u8; OFFER_LEN]) -> Self {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[..32]);
        let bytes_ = u64::from_be_bytes(bytes[32..40].try_into().expect("8 bytes"));
        let files = u32::from_be_bytes(bytes[40..].try_into().expect("4 bytes"));
        Self { hash, bytes: bytes_, files }
    }
}

/// Reads a receiver's answer: at most [`MAX_ANSWER`] bytes of text, up to the end of the
/// stream. More is an error, not a bigger buffer.
pub async fn read_answer<R: tokio::io::AsyncRead + Unpin>(input: &mut R) -> Result<String, String> {
    let mut answer = Vec::new();
    let read = input.take(MAX_ANSWER as u64 + 1).read_to_end(&mut answer).await;
    read.map_err(|e| format!("the receiver's answer: {e}"))?;
    if answer.len() > MAX_ANSWER {
        return Err(format!("the receiver's answer is over {MAX_ANSWER} bytes"));
    }
    String::from_utf8(answer).map_err(|_| "the receiver's answer is not text".to_owned())
}

/// One member's outcome, as the sender saw it.
struct Delivery {
    peer: RemoteIdentity,
    outcome: Result<String, String>,
}

/// How the sender finds members.
pub struct Reach {
    /// Members to try by address (ID@ADDR).
    pub peers: Vec<ManualPeer>,
    /// Look on the LAN (mDNS) for devices announcing the library.
    pub mdns: bool,
    /// How long to look.
    pub wait: Duration,
}

/// Finds the members of `record` online and offers them `offer` (the provider already serves
/// it on `p2p`). Err if none received it.
pub async fn send(
    p2p: &P2P,
    port: u16,
    store: Arc<Store>,
    record: &LibraryRecord,
    offer: Offer,
    reach: Reach,
    json: bool,
) -> anyhow::Result<()> {
    let mut candidates = crate::library::peer_candidates(p2p, reach.peers)?;
    p2p.add_library(record.id);
    if reach.mdns {
        // Every member that shows up in the window (claims only: each is checked in its tunnel).
        let mdns = MdnsDiscovery::spawn(p2p, port, DiscoveryMode::Enabled);
        crate::library::lan_candidates(p2p, &mdns, &record.id, reach.wait, None, &mut candidates).await;
    }
    if candidates.is_empty() {
        bail!("no member of {:?} is online (none announced it on the LAN, no --peer given)", record.name);
    }
    let mut deliveries = tokio::task::JoinSet::new();
    for peer in candidates {
        let (p2p, store, library) = (p2p.clone(), store.clone(), *record.id.as_bytes());
        deliveries.spawn(async move {
            let outcome = offer_to(&p2p, &store, library, peer, offer).await;
            Delivery { peer, outcome }
        });
    }
    let mut delivered = 0;
    while let Some(done) = deliveries.join_next().await {
        let Delivery { peer, outcome } = done.context("a delivery task failed")?;
        match (&outcome, json) {
            (Ok(answer), true) => {
                json_line(&serde_json::json!({ "event": "delivered", "peer": peer, "answer": answer }))
            }
            (Err(error), true) => {
                json_line(&serde_json::json!({ "event": "not_delivered", "peer": peer, "error": error }))
            }
            (Ok(answer), false) => println!("{peer}: {answer}"),
            (Err(error), false) => println!("{peer}: not delivered: {error}"),
        }
        delivered += usize::from(outcome.is_ok());
    }
    if delivered == 0 {
        bail!("no member of {:?} received it", record.name);
    }
    Ok(())
}

/// Opens a tunnel to `peer`, makes the offer and waits for the answer.
async fn offer_to(
    p2p: &P2P,
    store: &Store,
    library: warren_tunnel::cert::LibraryId,
    peer: RemoteIdentity,
    offer: Offer,
) -> Result<String, String> {
    let mut tunnel = Tunnel::open(p2p, store, library, peer).await.map_err(|e| e.to_string())?;
    let role = tunnel.role();
    tunnel.stream.write_all(&offer.encode()).await.map_err(|e| e.to_string())?;
    let answer = read_answer(&mut tunnel.stream).await?;
    // Only now: the receiver holds its node up until this side is done reading.
    let _ = tunnel.stream.finish();
    match answer.strip_prefix("ok ") {
        Some(done) => Ok(format!("received it ({role}): {done}")),
        None => Err(format!("the {role} answered: {answer}")),
    }
}

/// Waits for a member of `record` to offer something, receives it into `out` from that member
/// (verified), answers, and returns.
pub async fn receive(
    p2p: &P2P,
    port: u16,
    store: Arc<Store>,
    record: &LibraryRecord,
    out: &Path,
    mdns: bool,
    json: bool,
) -> anyhow::Result<warren_transfer::Summary> {
    let (offers, mut offered) = tokio::sync::mpsc::channel::<(Tunnel, Offer)>(1);
    let library = *record.id.as_bytes();
    tunnel::serve(p2p, store, move |mut tunnel: Tunnel| {
        let offers = offers.clone();
        async move {
            if tunnel.library() != library {
                let _ = tunnel.stream.write_all(b"refused: this device receives for another library").await;
                let _ = tunnel.stream.finish();
                return;
            }
            let mut bytes = [0u8; OFFER_LEN];
            match tokio::time::timeout(OFFER_TIMEOUT, tunnel.stream.read_exact(&mut bytes)).await {
                Ok(Ok(_)) => {
                    let offer = Offer::decode(&bytes);
                    // One offer is taken; any other gets an answer at once, never a wait.
                    if let Err(refused) = offers.try_send((tunnel, offer)) {
                        let (mut tunnel, _) = refused.into_inner();
                        let _ = tunnel.stream.write_all(b"busy: receiving from another member").await;
                        let _ = tunnel.stream.finish();
                    }
                }
                _ => {
                    let _ = tunnel.stream.write_all(b"refused: no offer").await;
                    let _ = tunnel.stream.finish();
                }
            }
        }
    })?;
    p2p.add_library(record.id);
    let _mdns = mdns.then(|| MdnsDiscovery::spawn(p2p, port, DiscoveryMode::Enabled));
    let (mut tunnel, offer) = offered.recv().await.context("the tunnel stopped")?;
    offered.close();
    let from = tunnel.peer();
    if json {
        json_line(&serde_json::json!({
            "event": "offer", "peer": from, "role": tunnel.role().to_string(), "files": offer.files, "bytes": offer.bytes,
        }));
    } else {
        println!(
            "{from} ({} of {:?}) offers {} file(s), {}",
            tunnel.role(),
            record.name,
            offer.files,
            human(offer.bytes)
        );
    }
    let received = crate::transfer_ui::fetch(p2p, offer.hash, &[from], out, json).await;
    let answer = match &received {
        Ok(summary) => format!("ok {} file(s), {}, verified", summary.files, human(summary.total)),
        Err(error) => format!("error: {error:#}"),
    };
    let answer: String = answer.chars().take(MAX_ANSWER / 4).collect();
    let _ = tunnel.stream.write_all(answer.as_bytes()).await;
    let _ = tunnel.stream.finish();
    // The sender finishes its side once it has read the answer: until then (bounded), the node
    // stays up, so that shutting down cannot drop the answer in flight.
    let mut rest = [0u8; 16];
    let _ = tokio::time::timeout(ANSWER_LINGER, tunnel.stream.read(&mut rest)).await;
    received
}

/// What `warren send --library` and `warren receive --library` share: the device's identity and
/// its store, and the library (a member's only).
pub fn open(data_dir: Option<PathBuf>, library: &str) -> anyhow::Result<(Identity, Arc<Store>, LibraryRecord)> {
    let dir = crate::data_dir(data_dir)?;
    let Some(store) = crate::library::existing_store(&dir)? else {
        bail!("this device is in no library yet ({} has none): `warren library join CODE` first", dir.display());
    };
    let record = store.find(library)?;
    Ok((Identity::load_or_create(&dir)?, store, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip() {
        let offer = Offer { hash: [7; 32], bytes: u64::MAX, files: 3 };
        assert_eq!(Offer::decode(&offer.encode()), offer);
    }

    #[tokio::test]
    async fn an_answer_is_bounded_and_text() {
        assert_eq!(read_answer(&mut &b"ok 1 file"[..]).await.unwrap(), "ok 1 file");
        let long = vec![b'a'; MAX_ANSWER + 1];
        assert!(read_answer(&mut &long[..]).await.unwrap_err().contains("over"));
        assert!(read_answer(&mut &[0xff, 0xfe][..]).await.unwrap_err().contains("not text"));
    }
}
