//! `warren probe-server`, `warren probe` and `warren probe catalog` as real processes on
//! loopback (127.0.0.1 and 127.0.0.2): a probe, its report submitted and counted.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

fn warren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warren"))
}

#[test]
fn probe_submit_and_catalog() {
    let dir = std::env::temp_dir().join(format!("warren-cli-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("reports.db");
    let mut server = warren()
        .args(["probe-server", "--primary", "127.0.0.1:0", "--alternate", "127.0.0.2:0", "--json", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let started: Value = serde_json::from_str(&first).unwrap();
    let primary = started["primary"].as_str().unwrap().to_owned();

    let output = warren().args(["probe", "--server", &primary, "--submit", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["mapping"], "endpoint-independent", "{result}");
    assert_eq!(result["filtering"], "endpoint-independent", "{result}");
    assert_eq!(result["submitted"]["ok"], true, "{result}");
    assert!(result["report"]["public_ip"].is_null(), "anonymised: {result}");

    let human = warren().args(["probe", "--server", &primary]).output().unwrap();
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("mapping          endpoint-independent"), "{text}");

    let _ = server.kill();
    let _ = server.wait();
    let catalog = warren().args(["probe", "catalog", "--json", "--db"]).arg(&db).output().unwrap();
    assert!(catalog.status.success(), "{}", String::from_utf8_lossy(&catalog.stderr));
    let catalog: Value = serde_json::from_slice(&catalog.stdout).unwrap();
    assert_eq!(catalog["reports"], 1, "{catalog}");
    assert_eq!(catalog["mapping_by_filtering"]["endpoint-independent"]["endpoint-independent"], 1, "{catalog}");

    // Nobody at the address: UDP looks blocked, said plainly.
    let nobody = warren().args(["probe", "--server", "127.0.0.1:9", "--timeout-ms", "50"]).output().unwrap();
    let text = String::from_utf8(nobody.stdout).unwrap();
    assert!(text.contains("UDP              blocked"), "{text}");
    // A missing database is one clear error.
    let missing = warren().args(["probe", "catalog", "--db", "/nonexistent/reports.db"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    std::fs::remove_dir_all(&dir).unwrap();
}
