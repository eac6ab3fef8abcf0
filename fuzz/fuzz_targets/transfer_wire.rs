//! Arbitrary bytes as a transfer request, a transfer answer header and a manifest: never a
//! panic, what decodes re-encodes to itself, range checks and path checks hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren_transfer::wire::fuzz_wire(data);
});
