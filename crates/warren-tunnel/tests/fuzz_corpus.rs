//! Replays the `tunnel_wire` fuzz corpus (`fuzz/corpus/tunnel_wire`) through the checks the
//! fuzz target runs, so CI catches a regression on any input the fuzzer found interesting.

use std::path::PathBuf;

#[test]
fn tunnel_wire_corpus_replays_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tunnel_wire");
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!entries.is_empty(), "corpus {} is empty", dir.display());
    for path in entries {
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| warren_tunnel::wire::fuzz_wire(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}
