//! Parses arbitrary bytes as an IPv4 packet and pushes what parses through the simulator's
//! NAT and link: nothing may panic, and everything they emit must parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren_netsim::fuzz_packet(data);
});
