//! Integration tests of a warren node over loopback QUIC, one module per behaviour.
//! (One test binary: on a 2-core machine linking one binary beats linking ten.)

mod connect;
mod hostile;
mod identity_checks;
mod manual_discovery;
mod shutdown;
mod support;
mod version;
