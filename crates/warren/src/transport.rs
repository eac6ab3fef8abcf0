//! Transports: listener hooks that carry authenticated, encrypted connections.

pub mod gro;
pub mod paths;
pub mod quic;
pub mod tls;
