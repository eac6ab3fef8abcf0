//! Arbitrary bytes as a tunnel message and a pairing message: never a panic, what decodes
//! re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren_tunnel::wire::fuzz_wire(data);
});
