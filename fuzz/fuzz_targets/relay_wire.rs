//! Arbitrary bytes as a relay datagram (data frame, punch, acknowledgement), a relay control
//! message either way and a hole-punching message: never a panic, frames re-encode exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::relay::fuzz_relay_wire(data);
});
