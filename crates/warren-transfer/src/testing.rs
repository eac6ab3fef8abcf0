//! Helpers for this crate's unit tests.

use std::path::PathBuf;

/// A fresh, empty folder for test `name` of this process.
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-transfer-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
