//! Replays the saved `stun_server` fuzz corpus through the target's checks.

#[test]
fn stun_server_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/stun_server");
    let entries: Vec<_> = std::fs::read_dir(&dir).expect("the corpus exists").collect();
    assert!(!entries.is_empty());
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| warren_probe::fuzz_stun(&bytes));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}
