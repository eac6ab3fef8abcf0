//! Arbitrary bytes where a TCP listener expects a dialler's Noise handshake: always an error,
//! never a panic, never a read beyond the 65,535-byte message limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::transport::noise::fuzz_handshake(data);
});
