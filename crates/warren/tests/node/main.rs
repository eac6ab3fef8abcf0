//! Integration tests of a warren node over loopback QUIC and TCP (`transports` runs one suite
//! per transport) and, for LAN discovery, in a warren-netsim LAN; one module per behaviour.
//! (One test binary: on a 2-core machine linking one binary beats linking ten.)

mod bootstrap_cache;
mod connect;
mod contacts_only;
mod flood;
mod identity_checks;
mod lan;
mod manual_discovery;
mod memory;
mod portmap;
mod shutdown;
mod support;
mod transports;
mod utp_raw;
mod version;
