//! Reads arbitrary bytes as a bootstrap cache file (and as a cache body behind a valid
//! header): refused or parsed, never a panic, and what parses writes back to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::discovery::cache::fuzz_cache(data);
});
