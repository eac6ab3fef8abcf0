//! `warren library …` end to end: two data directories, pairing on loopback with `--peer`
//! (no mDNS), a wrong code refused, members listed, a garbage store refused naming the file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn warren(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warren")).args(args).arg("--data-dir").arg(dir).output().unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-cli-library-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_device_joins_by_code_and_a_wrong_code_or_a_broken_store_is_a_clear_error() {
    let (a, b, c) = (temp("a"), temp("b"), temp("c"));
    assert!(warren(&a, &["library", "create", "team"]).status.success());

    let mut invite = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["library", "invite", "team", "--listen", "127.0.0.1:0", "--no-mdns", "--json", "--data-dir"])
        .arg(&a)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(invite.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let code = first["code"].as_str().unwrap().to_string();
    let peer = format!("{}@{}", first["inviter"].as_str().unwrap(), first["addr"].as_str().unwrap());

    // A wrong code (same number, other words) fails with a clear error and costs one attempt.
    let number = code.split('-').next().unwrap();
    let wrong = if code.ends_with("-acid") {
        format!("{number}-acorn-acorn-acorn")
    } else {
        format!("{number}-acid-acid-acid")
    };
    let out = warren(&c, &["library", "join", &wrong, "--peer", &peer, "--no-mdns", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the code did not match"), "{err}");

    let out =
        warren(&b, &["library", "join", &code, "--peer", &peer, "--no-mdns", "--listen", "127.0.0.1:0", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let joined: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((joined["name"].as_str(), joined["role"].as_str()), (Some("team"), Some("member")));
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(invite.wait().unwrap().success());
    assert!(events.iter().any(|e| e["event"] == "attempt_failed"), "{events:?}");
    let done = events.last().unwrap();
    assert_eq!(done["event"], "joined");

    let members = String::from_utf8(warren(&a, &["library", "members", "team"]).stdout).unwrap();
    assert!(members.contains(done["node"].as_str().unwrap()), "{members}");
    let listed = String::from_utf8(warren(&b, &["library", "list"]).stdout).unwrap();
    assert!(listed.contains("team") && listed.contains("member"), "{listed}");

    std::fs::write(b.join("libraries.sqlite"), b"not a database at all, but long enough to look like one").unwrap();
    let out = warren(&b, &["library", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("libraries.sqlite"));
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Kills the child when dropped (a failed assertion must not leave a relay running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pairing through a real `warren relay` on loopback: the inviter announces the code's number
/// there, the joiner is given nothing but the code and the relay (no mDNS, no --peer).
#[test]
fn a_device_joins_through_the_relay_with_the_code_alone() {
    let (r, a, b) = (temp("relay"), temp("ra"), temp("rb"));
    let mut relay = Child(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["relay", "--listen", "127.0.0.1:0", "--json", "--data-dir"])
            .arg(&r)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut relay_lines = BufReader::new(relay.0.stdout.take().unwrap()).lines();
    let started: serde_json::Value = serde_json::from_str(&relay_lines.next().unwrap().unwrap()).unwrap();
    let at = format!("{}@{}", started["identity"].as_str().unwrap(), started["addr"].as_str().unwrap());
    assert!(warren(&a, &["library", "create", "team"]).status.success());

    let mut invite = Child(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["library", "invite", "team", "--listen", "127.0.0.1:0", "--no-mdns", "--relay", &at, "--json"])
            .arg("--data-dir")
            .arg(&a)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(invite.0.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let code = first["code"].as_str().unwrap().to_string();
    let out = warren(&b, &["library", "join", &code, "--relay", &at, "--no-mdns", "--listen", "127.0.0.1:0", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let joined: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((joined["name"].as_str(), joined["role"].as_str()), (Some("team"), Some("member")));
    assert_eq!(joined["inviter"], first["inviter"]);
    let done: serde_json::Value = serde_json::from_str(&lines.last().unwrap().unwrap()).unwrap();
    assert!(invite.0.wait().unwrap().success());
    assert_eq!(done["event"], "joined");

    // With the invite closed, nobody answers for the number at the relay any more.
    let out = warren(&b, &["library", "join", &code, "--relay", &at, "--no-mdns", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no device answers for code number"), "{err}");
    drop(relay);
    for d in [r, a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
