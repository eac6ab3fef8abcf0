//! Every byte format warren puts on the network, and nothing else: no sockets, no timers, no
//! node. The layers above parse with these and never by hand.
//!
//! - [`hello`]: the hello each connection starts with, and the header of every stream
//!   (re-exported here: `wire::Hello`, `wire::read_stream_header`, …).
//! - [`frame`]: the datagrams beside QUIC on the node's UDP socket (relayed data, path
//!   challenges and responses).
//! - [`control`]: what a node and its relay say on their connection's streams.
//! - [`record`]: the same over the relay's TLS/TCP fallback, as length-prefixed records.
//! - [`punch`]: the hole-punching signalling two peers exchange inside their connection.
//! - [`portmap`]: NAT-PMP and PCP, to ask the gateway for a port mapping.
//! - [`stun`]: STUN binding requests and answers, for the relay's NAT-mapping test.
//! - [`upnp`]: UPnP IGD's search, description and SOAP actions, for the same.

pub mod control;
pub mod frame;
pub mod hello;
pub mod mux;
pub mod portmap;
pub mod punch;
pub mod record;
pub mod stun;
pub mod upnp;
pub mod utp;

pub use self::hello::*;
