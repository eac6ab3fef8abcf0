//! warren: reach another device by its public key alone, always encrypted and authenticated.
//!
//! A tour:
//! - [`Identity`] is a node's Ed25519 secret key; [`RemoteIdentity`] is the public key that
//!   names a node (52 characters of lowercase base32) and [`PeerId`] a hash of it.
//! - [`P2P`] is the node. [`P2P::builder`] says everything it is made of (identity, QUIC
//!   sockets, relay, discovery sources, protocol handlers); [`P2P::id`] is its own identity.
//!   It keeps a peer table, one connection per peer (reused, dialled on demand, the known
//!   addresses raced), routes each incoming stream to the handler of the protocol the stream
//!   names, and tells subscribers what happened ([`Event`]).
//! - Connections come from transports ([`transport::Listener`], [`transport::TransportConnection`]:
//!   authenticated, encrypted, multiplexed); the node never learns which. Today's transport is
//!   QUIC with TLS 1.3 raw public keys bound to both identities; dialling identity X yields X or
//!   [`ConnectError::WrongIdentity`]. It starts with a hello
//!   ([`wire::Hello`]: metadata, protocols, wire version). [`Connection::watch_path`] says
//!   whether its packets go direct or through a relay, now and at each change.
//! - Discovery sources ([`node::Discovery`]: mDNS, manual addresses, the bootstrap cache, the
//!   relay) publish this node's [`node::Record`] and resolve peers it has no address for.
//! - Through a relay ([`relay`]) peers reach each other by identity alone; a hole punch then
//!   moves the connection to a direct path validated with keys of the connection itself
//!   ([`state::path_table`]).
//!
//! The crate is layered (docs/architecture.md): [`wire`] (byte formats) → [`state`] (sans-IO
//! state machines) → [`transport`], [`relay`], [`connection`] (drivers) → [`node`] (and
//! [`discovery`], [`endpoint`]).
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use warren::{Identity, P2P, Stream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Bob echoes whatever arrives on "echo/1".
//! let bob = P2P::builder("example", Identity::generate())
//!     .listen_quic("127.0.0.1:0".parse()?)
//!     .protocol("echo/1", |mut stream: Stream| async move {
//!         let mut buf = Vec::new();
//!         if stream.read_to_end(&mut buf).await.is_ok() {
//!             let _ = stream.write_all(&buf).await;
//!             let _ = stream.finish();
//!         }
//!     })
//!     .spawn()
//!     .await?;
//! let alice = P2P::builder("example", Identity::generate()).listen_quic("127.0.0.1:0".parse()?).spawn().await?;
//!
//! // Alice knows Bob's identity and an address (from discovery, or given by hand).
//! alice.discovered("manual", bob.id(), bob.listen_addrs(), Default::default());
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
pub mod portmap;
pub mod relay;
pub mod state;
#[doc(hidden)]
pub mod testing;
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
