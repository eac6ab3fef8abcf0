//! Builds hellos and stream headers from arbitrary input and checks that whatever encodes
//! decodes back to the same value (and that what refuses to encode is really over a limit).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, std::collections::BTreeMap<String, String>, Vec<String>, String)| {
    let (minor, metadata, protocols, header) = input;
    warren::wire::fuzz_roundtrip(minor, metadata, protocols, &header);
});
