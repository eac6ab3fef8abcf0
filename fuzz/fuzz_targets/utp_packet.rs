//! Arbitrary datagrams where uTP expects a packet: the parser never panics, refuses what is not
//! BEP 29 and re-encodes what it accepts to a packet that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::wire::utp::fuzz_packet(data);
});
