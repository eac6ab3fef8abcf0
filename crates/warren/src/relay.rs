//! Relays: how a node behind NATs is reached by identity alone.
//!
//! A node keeps one QUIC connection to its home relay, from the same UDP socket it uses for
//! peers ([`client::RelayClient`]). The relay tells it its reflexive address, answers "is this
//! peer here?", and forwards [`frame`]s between the nodes it serves: end-to-end encrypted QUIC
//! packets it cannot read. Two peers connected through the relay then punch a hole
//! ([`crate::punch`]) and move the connection to the direct path when it opens. The server is
//! the `warren-relay` crate.

pub mod client;
pub mod control;
pub mod frame;
