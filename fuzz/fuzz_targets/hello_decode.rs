//! Decodes a connection hello from arbitrary bytes: it must never panic, and whatever decodes
//! must re-encode to bytes that decode to the same hello.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::wire::fuzz_hello(data);
});
