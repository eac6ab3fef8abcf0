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

/// Fuzzing entry point (the `stun_server` target): `data` as a datagram the server answers, as
/// a response the client reads, and as a submitted report. Never panics; an answer is never
/// larger than the datagram or the bare RFC 5780 answer, whichever is larger.
#[doc(hidden)]
pub fn fuzz_stun(data: &[u8]) {
    let primary = std::net::SocketAddr::from(([192, 0, 2, 1], 3478));
    let alternate = std::net::SocketAddr::from(([192, 0, 2, 2], 3479));
    let client = std::net::SocketAddr::from(([203, 0, 113, 9], 40000));
    for slot in stun::Slot::ALL {
        if let Some(answer) = stun::answer(data, slot, client, primary, alternate) {
            assert!(answer.bytes.len() <= data.len().max(stun::BASE_ANSWER_MAX));
            assert!(stun::response(&answer.bytes).is_some(), "the answer reads back");
        }
    }
    let _ = stun::response(data);
    let _ = stun::is_request_for(data, &[0; 12]);
    if let Ok(report) = report::Report::parse(data) {
        assert!(report.check().is_ok());
    }
}
