//! warren-netsim: a virtual internet for tests (in progress).
//!
//! This first part is the sans-IO core: IPv4 packets ([`packet`]), and the devices that move
//! them, as state machines fed packets and time and returning packets ([`link`], [`nat`]). The
//! namespace, TUN and kernel-NAT plumbing that runs real programs through these devices is not
//! built yet (see the README).

#![warn(missing_docs)]

pub mod link;
pub mod nat;
pub mod packet;
