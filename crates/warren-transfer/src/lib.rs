//! warren-transfer: send files and folders to a peer by identity, verified as they stream,
//! resumed after a crash, fetched from several peers at once.
//!
//! Layers, bottom up (docs/transfer.md has the design):
//! - [`tree`]: content addressing by BLAKE3 and the 16 KiB chunk groups each verified alone;
//! - [`manifest`] and [`ticket`]: what a transfer carries and how a receiver names it;
//! - [`wire`]: the `warren/transfer/2` requests and answers, bounded;
//! - [`fetch`]: the receiver's plan as a sans-IO state machine (which peer fetches what, what
//!   is verified, what goes back in the queue);
//! - [`provider`] and [`receive`]: the tokio drivers on a [`warren::P2P`] node, with the files
//!   on disk.

mod aligned;
pub mod fetch;
pub mod folders;
pub mod manifest;
pub mod provider;
pub mod receive;
#[cfg(test)]
mod testing;
pub mod ticket;
pub mod tree;
pub mod wire;

pub use aligned::DIRECT_ALIGN;
pub use fetch::{Config, Fetch};
pub use manifest::{Entry, Manifest};
pub use provider::Provider;
pub use receive::{Progress, ReceiveError, ReceiveOptions, Summary, receive};
pub use ticket::Ticket;
pub use tree::{GROUP, Hash, Outboard};
