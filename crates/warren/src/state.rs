//! Protocol state machines, sans-IO: plain structs fed `(now, input)` and polled for what to
//! send, when to wake them and what happened. No tokio, no sockets, no clock: the drivers in
//! [`crate::transport`] and [`crate::node`] own those, and the tests here run thousands of
//! cases (lost, duplicated, reordered and forged inputs) in milliseconds.
//!
//! - [`admission`]: which incoming connection attempts a node takes (caps in handshake, alive,
//!   per source; Retry under load).
//! - [`nat`]: what kind of NAT this node is behind (RFC 5780's mapping test against the relay's
//!   two ports).
//! - [`path_table`]: which path each relayed peer's packets take (relay or direct), found and
//!   kept by authenticated challenges and responses, given up on silence, re-probed after.
//! - [`punch`]: one hole-punching attempt (offer, answer, sync, rounds of challenges with port
//!   prediction, finish) and the limits around attempts.
//! - [`portmap`]: one port mapping asked of the gateway (PCP, NAT-PMP, UPnP IGD): search,
//!   renewal at half its lifetime, removal.
//! - [`relay`]: the relay client's registration (backoff, refusals) and its lookups, matched to
//!   answers by request id.

pub mod admission;
pub mod ledbat;
pub mod mux;
pub mod nat;
pub mod path_table;
pub mod portmap;
pub mod punch;
pub mod relay;
pub mod utp;
