//! Transports: listener hooks that carry authenticated, encrypted connections.

pub mod quic;
pub mod tls;
