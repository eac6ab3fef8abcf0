//! Arbitrary bytes at the RFC 5780 server (on each of its four sockets), at the client's
//! response reader, and at the report collector: never a panic, never an answer larger than the
//! request or the bare RFC 5780 answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren_probe::fuzz_stun(data);
});
