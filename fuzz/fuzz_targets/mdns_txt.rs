//! Reads arbitrary bytes as DNS-SD TXT record data and turns them into peer metadata and
//! libraries: never a panic, only known keys, bounded values, and what comes out announces
//! back to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::discovery::mdns::fuzz_txt(data);
});
