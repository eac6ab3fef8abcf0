//! Reads a stream header from arbitrary bytes: it must never panic, never read past the
//! header's limit, and a header that reads must encode back to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::wire::fuzz_stream_header(data);
});
