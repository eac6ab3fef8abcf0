//! warren-tunnel: libraries whose membership is real.
//!
//! A *library* (Spacedrive's word: a logical collection of data shared by several devices)
//! has an id, a name and an Ed25519 signing key. Layers, bottom up (docs/libraries.md has the
//! design and the threat table):
//! - [`cert`]: membership certificates (library key → admin → member, role, expiry);
//! - [`revocation`]: signed, versioned revocation lists and the revoked set a member keeps;
//! - [`code`] and [`words`]: pairing codes (`42-amber-castle-otter`);
//! - [`wire`]: the `warren/tunnel/1` and `warren/pair/1` messages, bounded;
//! - [`handshake`] and [`pairing`]: the sans-IO state machines (no sockets, no clock);
//! - [`tunnel`] and [`pair`]: the tokio drivers on a [`warren::P2P`] node;
//! - [`store`]: libraries, certificates and revocations in SQLite in the data directory.

pub mod cert;
pub mod code;
pub mod frame;
pub mod handshake;
pub mod pair;
pub mod pairing;
pub mod revocation;
pub mod store;
pub mod tunnel;
pub mod wire;
pub mod words;

pub use cert::{CertError, Certificate, Credential, LibraryId, LibraryRef, Role, Signer};
pub use code::Code;
pub use handshake::{Handshake, Membership, TunnelError};
pub use pairing::{Invite, PairError, Pairing};
pub use revocation::{RevocationList, Revocations};
pub use tunnel::{Libraries, MemoryLibraries, OpenError, Tunnel};

/// Now, in Unix seconds (what the state machines are fed).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
