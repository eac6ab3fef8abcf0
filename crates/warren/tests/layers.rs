//! The layers of `crates/warren` point one way (docs/architecture.md): this test reads the
//! sources and fails on an import that goes up a layer, or on I/O or a clock in a state machine.
//! (Module cycles are checked by `.ci/run` with the shared `modcycles` tool.)

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The files of a layer: `name.rs` and everything under `name/`.
fn files(layer: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let single = src().join(format!("{layer}.rs"));
    if single.exists() {
        out.push(single);
    }
    let mut dirs = vec![src().join(layer)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("a readable directory").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    assert!(!out.is_empty(), "no files for layer {layer}");
    out
}

/// A file's code without comments and without its `#[cfg(test)]` module (tests may use clocks);
/// nothing of a test module kept in its own `tests.rs`.
fn code(path: &Path) -> String {
    if path.file_name().is_some_and(|name| name == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("a readable source file");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn forbid(layers: &[&str], needles: &[&str], why: &str) {
    let mut found = Vec::new();
    for layer in layers {
        for path in files(layer) {
            let code = code(&path);
            for needle in needles {
                if code.contains(needle) {
                    found.push(format!("{}: {needle}", path.strip_prefix(src()).unwrap().display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{why}:\n{}", found.join("\n"));
}

#[test]
fn nothing_below_the_node_imports_the_node_or_its_events() {
    forbid(
        &["wire", "state", "transport", "relay", "connection", "hook", "identity", "error"],
        &["crate::node", "crate::P2P", "crate::Event", "crate::discovery", "crate::ping", "P2P::", "WeakP2P"],
        "a layer below the node reaches up into it",
    );
}

#[test]
fn wire_formats_know_nothing_above_them() {
    forbid(
        &["wire"],
        &[
            "crate::state",
            "crate::transport",
            "crate::relay",
            "crate::connection",
            "crate::hook",
            "tokio::net",
            "quinn::Endpoint",
        ],
        "a wire format depends on a layer above it",
    );
}

#[test]
fn state_machines_do_no_io_and_read_no_clock() {
    forbid(
        &["state"],
        &[
            "tokio",
            "quinn",
            "UdpSocket",
            "TcpStream",
            "Instant::now",
            "SystemTime",
            "std::thread",
            "crate::transport",
            "crate::relay",
            "crate::connection",
            "getrandom",
        ],
        "a sans-IO state machine does I/O, reads the clock or knows a driver",
    );
}
