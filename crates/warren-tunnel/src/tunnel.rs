//! The library tunnel on a [`warren::P2P`] node: [`Tunnel::open`] on the dialling side,
//! [`serve`] on the accepting side. Both run [`Handshake`] over a `warren/tunnel/1` stream
//! inside the already-encrypted connection; the application gets the stream only once both
//! sides verified each other, with the peer's verified role.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warren::connection::Stream;
use warren::{P2P, RemoteIdentity};

use crate::cert::{LibraryId, Role};
use crate::frame::{self, FrameError};
use crate::handshake::{Handshake, Membership, NOT_A_MEMBER, TunnelError};
use crate::unix_now;
use crate::wire::{TUNNEL_PROTOCOL, TunnelMessage};

/// How long the proof may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the drivers find this node's memberships and keep what they learn.
pub trait Libraries: Send + Sync + 'static {
    /// This node's membership of `library`, if any.
    fn membership(&self, library: &LibraryId) -> Option<Membership>;
    /// A tunnel brought a newer revocation list (or a peer's verified membership); store it.
    fn learned(&self, membership: &Membership);
    /// A peer proved its membership (for "proved" in discovery).
    fn proved(&self, _library: &LibraryId, _peer: RemoteIdentity, _role: Role) {}
}

/// Memberships held in memory (tests, and nodes that keep them elsewhere).
#[derive(Default)]
pub struct MemoryLibraries {
    inner: Mutex<HashMap<LibraryId, Membership>>,
    proved: Mutex<Vec<(LibraryId, RemoteIdentity, Role)>>,
}

impl MemoryLibraries {
    /// Adds or replaces a membership.
    pub fn insert(&self, membership: Membership) {
        self.inner.lock().expect("libraries lock").insert(membership.library.id, membership);
    }

    /// The peers that proved their membership, in order.
    pub fn proved_peers(&self) -> Vec<(LibraryId, RemoteIdentity, Role)> {
        self.proved.lock().expect("proved lock").clone()
    }
}

impl Libraries for MemoryLibraries {
    fn membership(&self, library: &LibraryId) -> Option<Membership> {
        self.inner.lock().expect("libraries lock").get(library).cloned()
    }

    fn learned(&self, membership: &Membership) {
        self.insert(membership.clone());
    }

    fn proved(&self, library: &LibraryId, peer: RemoteIdentity, role: Role) {
        self.proved.lock().expect("proved lock").push((*library, peer, role));
    }
}

/// Why [`Tunnel::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// This node is not a member of the library.
    #[error("this node is not a member of library {0}")]
    NotAMember(uuid::Uuid),
    /// The peer could not be reached.
    #[error("could not reach the peer: {0}")]
    Connect(#[from] warren::ConnectError),
    /// The proof failed (refused either way, or the stream failed).
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The proof took too long.
    #[error("the peer did not finish the membership proof within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

/// An open tunnel: a stream to a member whose membership was verified.
pub struct Tunnel {
    /// The stream; application bytes only.
    pub stream: Stream,
    library: LibraryId,
    peer: RemoteIdentity,
    role: Role,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("library", &uuid::Uuid::from_bytes(self.library))
            .field("peer", &self.peer)
            .finish()
    }
}

impl Tunnel {
    /// Opens a tunnel to `peer` in `library`: connects, proves this node's membership and
    /// checks the peer's before returning.
    pub async fn open(
        p2p: &P2P,
        libraries: &dyn Libraries,
        library: LibraryId,
        peer: RemoteIdentity,
    ) -> Result<Tunnel, OpenError> {
        let membership =
            libraries.membership(&library).ok_or(OpenError::NotAMember(uuid::Uuid::from_bytes(library)))?;
        let mut stream = p2p.connect(peer, TUNNEL_PROTOCOL).await?;
        let handshake = Handshake::dial(membership, peer, unix_now());
        let role = tokio::time::timeout(HANDSHAKE_TIMEOUT, drive(&mut stream, handshake, libraries))
            .await
            .map_err(|_| OpenError::Timeout)??;
        Ok(Tunnel { stream, library, peer, role })
    }

    /// The library.
    pub fn library(&self) -> LibraryId {
        self.library
    }

    /// The peer (its identity verified by the connection, its membership by the tunnel).
    pub fn peer(&self) -> RemoteIdentity {
        self.peer
    }

    /// The peer's verified role.
    pub fn role(&self) -> Role {
        self.role
    }
}

/// Runs a handshake to its end over `stream`, storing what it learned.
async fn drive(stream: &mut Stream, mut handshake: Handshake, libraries: &dyn Libraries) -> Result<Role, TunnelError> {
    loop {
        while let Some(message) = handshake.poll_message() {
            if let Err(e) = frame::write(stream, &message).await {
                // A peer that refuses stops reading, but its reason may be waiting.
                match frame::read_soon::<_, TunnelMessage>(stream).await {
                    Some(refusal @ TunnelMessage::Refused { .. }) => handshake.handle(refusal),
                    _ => handshake.handle_closed(e.to_string()),
                }
            }
        }
        if let Some(outcome) = handshake.outcome() {
            if handshake.learned_revocations() {
                libraries.learned(handshake.membership());
            }
            if let Ok(role) = &outcome {
                libraries.proved(&handshake.membership().library.id, stream.remote(), *role);
            } else {
                let _ = stream.finish();
            }
            return outcome;
        }
        match frame::read::<_, TunnelMessage>(stream).await {
            Ok(message) => handshake.handle(message),
            Err(FrameError::Malformed(e)) => handshake.handle_invalid(e),
            Err(e) => handshake.handle_closed(e.to_string()),
        }
    }
}

/// Serves `warren/tunnel/1` on `p2p`: every incoming tunnel is proved, then handed to
/// `handler`; a refused one never reaches it.
pub fn serve<F, Fut>(p2p: &P2P, libraries: Arc<dyn Libraries>, handler: F) -> Result<(), warren::RegisterError>
where
    F: Fn(Tunnel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    p2p.register_protocol(TUNNEL_PROTOCOL, move |mut stream: Stream| {
        let libraries = libraries.clone();
        let handler = handler.clone();
        async move {
            let peer = stream.remote();
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(&mut stream, &*libraries)).await;
            match accepted {
                Ok(Ok((library, role))) => handler(Tunnel { stream, library, peer, role }).await,
                Ok(Err(e)) => tracing::debug!(%peer, "tunnel refused: {e}"),
                Err(_) => tracing::debug!(%peer, "tunnel proof timed out"),
            }
        }
    })
}

async fn accept(stream: &mut Stream, libraries: &dyn Libraries) -> Result<(LibraryId, Role), TunnelError> {
    let first = frame::read::<_, TunnelMessage>(stream).await.map_err(|e| TunnelError::Stream(e.to_string()))?;
    let TunnelMessage::Hello { library, .. } = &first else {
        return Err(TunnelError::Protocol("the first message is not a Hello".into()));
    };
    let library = *library;
    let Some(membership) = libraries.membership(&library) else {
        // The same words as a failed proof: a stranger learns nothing about this node's
        // libraries.
        let refusal = TunnelMessage::Refused { reason: NOT_A_MEMBER.into() };
        let _ = frame::write(stream, &refusal).await;
        let _ = stream.finish();
        return Err(TunnelError::Protocol("a tunnel for a library this node is not in".into()));
    };
    let mut handshake = Handshake::accept(membership, stream.remote(), unix_now());
    handshake.handle(first);
    drive(stream, handshake, libraries).await.map(|role| (library, role))
}
