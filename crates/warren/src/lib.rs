//! warren: reach another device by its public key alone, always encrypted and authenticated.
//!
//! A tour:
//! - [`Identity`] is a node's Ed25519 secret key; [`RemoteIdentity`] is the public key that
//!   names a node (52 characters of lowercase base32) and [`PeerId`] a hash of it.
//! - [`P2P`] is the node: a peer table, an event bus ([`Event`]), hooks, protocol routing and
//!   shutdown. It does no networking itself.
//! - [`transport::quic::QuicTransport`] is a listener hook carrying QUIC connections, mutually
//!   authenticated with TLS 1.3 raw public keys bound to the identities.
//! - [`discovery::manual::ManualDiscovery`] dials addresses given by hand and keeps them
//!   connected.
//! - Every connection starts with a hello ([`wire::Hello`]: metadata, protocols, wire version);
//!   every stream with a header naming its protocol, routed to the handler registered with
//!   [`P2P::register_protocol`].
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use warren::{Identity, P2P, transport::quic::QuicTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let alice = P2P::new("example", Identity::generate());
//! let bob = P2P::new("example", Identity::generate());
//! let bob_quic = bob.listen_quic("127.0.0.1:0".parse()?).await?;
//! alice.listen_quic("127.0.0.1:0".parse()?).await?;
//!
//! // Bob echoes whatever arrives on "echo/1".
//! bob.register_protocol("echo/1", |mut stream: warren::Stream| async move {
//!     let mut buf = Vec::new();
//!     if stream.read_to_end(&mut buf).await.is_ok() {
//!         let _ = stream.write_all(&buf).await;
//!         let _ = stream.finish();
//!     }
//! })?;
//!
//! // Alice knows Bob's identity and an address (from discovery, or given by hand).
//! alice.discovered("manual", bob.id(), [bob_quic.local_addr()], Default::default());
//! let mut stream = alice.connect(bob.id(), "echo/1").await?;
//! stream.write_all(b"hello").await?;
//! stream.finish()?;
//! let mut echoed = Vec::new();
//! stream.read_to_end(&mut echoed).await?;
//! assert_eq!(echoed, b"hello");
//!
//! drop(stream);
//! alice.shutdown().await;
//! bob.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod connection;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod hook;
pub mod identity;
pub mod node;
pub mod ping;
pub mod relay;
pub mod state;
pub mod transport;
pub mod wire;

pub use connection::{Connection, Stream};
pub use endpoint::{BuildError, Builder};
pub use error::{ConnectError, HelloError, RegisterError, TransportError};
pub use identity::{Identity, IdentityError, PeerId, RemoteIdentity};
pub use node::{ConnectionState, Direction, Event, P2P, PeerInfo, ProtocolHandler};

/// The README's code, compiled as a doc test so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
