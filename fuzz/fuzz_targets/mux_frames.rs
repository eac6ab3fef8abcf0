//! Arbitrary multiplexer messages from a peer (what arrives inside Noise on TCP and uTP): the
//! frame parser never panics and re-encodes what it parses to the same bytes; the state
//! machine never buffers beyond its window or keeps more streams than it allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::state::mux::fuzz_messages(std::time::Instant::now(), data);
});
