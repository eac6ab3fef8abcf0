//! Replays the saved fuzz corpus (`fuzz/corpus/*`) through the same checks the fuzz targets
//! run, so CI catches a regression on any input the fuzzer ever found interesting without
//! needing nightly or libFuzzer.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let inputs: Vec<_> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    inputs
}

#[test]
fn hello_corpus_replays_cleanly() {
    for (path, bytes) in corpus("hello_decode") {
        let outcome = std::panic::catch_unwind(|| warren::wire::fuzz_hello(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn stream_header_corpus_replays_cleanly() {
    for (path, bytes) in corpus("stream_header") {
        let outcome = std::panic::catch_unwind(|| warren::wire::fuzz_stream_header(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn roundtrip_corpus_replays_cleanly() {
    type Input = (u16, std::collections::BTreeMap<String, String>, Vec<String>, String);
    for (path, bytes) in corpus("roundtrip") {
        // libfuzzer-sys builds the target's input with `arbitrary_take_rest`; do the same.
        let Ok((minor, metadata, protocols, header)) =
            <Input as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(&bytes))
        else {
            continue;
        };
        let outcome = std::panic::catch_unwind(|| warren::wire::fuzz_roundtrip(minor, metadata, protocols, &header));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn mdns_txt_corpus_replays_cleanly() {
    for (path, bytes) in corpus("mdns_txt") {
        let outcome = std::panic::catch_unwind(|| warren::discovery::mdns::fuzz_txt(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn bootstrap_cache_corpus_replays_cleanly() {
    for (path, bytes) in corpus("bootstrap_cache") {
        let outcome = std::panic::catch_unwind(|| warren::discovery::cache::fuzz_cache(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn relay_wire_corpus_replays_cleanly() {
    for (path, bytes) in corpus("relay_wire") {
        let outcome = std::panic::catch_unwind(|| warren::relay::fuzz_relay_wire(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn contact_gate_corpus_replays_cleanly() {
    for (path, bytes) in corpus("contact_gate") {
        let outcome = std::panic::catch_unwind(|| warren::transport::gate::fuzz_server_name(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn portmap_corpus_replays_cleanly() {
    for (path, bytes) in corpus("portmap") {
        let outcome = std::panic::catch_unwind(|| {
            warren::wire::portmap::fuzz_response(&bytes);
            warren::wire::upnp::fuzz_upnp(&bytes);
            warren::wire::stun::fuzz_stun(&bytes);
        });
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn mux_frames_corpus_replays_cleanly() {
    for (path, bytes) in corpus("mux_frames") {
        let outcome = std::panic::catch_unwind(|| warren::state::mux::fuzz_messages(std::time::Instant::now(), &bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn noise_handshake_corpus_replays_cleanly() {
    for (path, bytes) in corpus("noise_handshake") {
        let outcome = std::panic::catch_unwind(|| warren::transport::noise::fuzz_handshake(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn utp_packet_corpus_replays_cleanly() {
    for (path, bytes) in corpus("utp_packet") {
        let outcome = std::panic::catch_unwind(|| warren::wire::utp::fuzz_packet(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}
