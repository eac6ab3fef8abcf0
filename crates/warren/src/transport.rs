//! Transports: listener hooks that carry authenticated, encrypted, multiplexed connections.
//!
//! [`connection`] is the interface every transport implements ([`Listener`] to dial and accept,
//! [`TransportConnection`] and its streams); [`quic`] is the first implementation, on the
//! [`paths`] socket (relaying and path validation, with [`birthday`] probing's extra sockets)
//! with [`tls`] identities and, in ContactsOnly mode, the contact [`gate`] on its handshakes.
//! [`tcp`] and [`utp_listener`] carry [`noise`]-secured, [`muxed`] connections over TCP and
//! over [`utp`] (LEDBAT), sharing [`secured`].

pub mod birthday;
pub mod connection;
pub mod gate;
pub mod gro;
pub mod muxed;
pub mod noise;
pub mod paths;
pub mod quic;
pub mod secured;
mod slot;
pub mod tcp;
pub mod tls;
mod ttl;
pub mod utp;
pub mod utp_listener;

pub use connection::{
    Accept, Accepted, ConnectionError, Incoming, Listener, RecvHalf, RecvStream, SendHalf, SendStream, StreamError,
    TransportConnection,
};
