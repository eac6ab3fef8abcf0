//! Router probing: classify a NAT by the RFC 5780 tests, collect reports, print a catalogue.
//!
//! - [`stun`]: STUN Binding with the RFC 5780 attributes (CHANGE-REQUEST, RESPONSE-PORT,
//!   PADDING, RESPONSE-ORIGIN, OTHER-ADDRESS, XOR-MAPPED-ADDRESS), on the `stun-rs` codec.
//! - [`server`]: an RFC 5780 server on two addresses and two ports (four sockets) that also
//!   collects reports into SQLite.
//! - [`client`]: the tests: mapping, filtering, hairpinning, port preservation, binding
//!   lifetime, UDP blocked, double NAT.
//! - [`report`] and [`catalog`]: what is submitted and how reports are summed up.

pub mod catalog;
pub mod client;
pub mod report;
pub mod server;
pub mod stun;
