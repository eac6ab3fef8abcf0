//! `warren library …` end to end: two data directories, pairing on loopback with `--peer`
//! (no mDNS), a wrong code refused, members listed, a garbage store refused naming the file;
//! pairing through a real `warren relay`; `warren send --library` to a member, and a device of
//! another library refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn warren(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warren")).args(args).arg("--data-dir").arg(dir).output().unwrap()
}

/// Kills the child when dropped (a failed assertion must not leave a relay running).
struct Child(std::process::Child);

impl Child {
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Starts `warren ARGS --data-dir DIR`, its output read line by line.
fn spawn(dir: &Path, args: &[&str]) -> (Child, Lines) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (Child(child), lines)
}

/// The next output line, as JSON.
fn next_json(lines: &mut Lines) -> serde_json::Value {
    serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap()
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

    let (mut invite, mut lines) =
        spawn(&a, &["library", "invite", "team", "--listen", "127.0.0.1:0", "--no-mdns", "--json"]);
    let first = next_json(&mut lines);
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

/// Pairing through a real `warren relay` on loopback: the inviter announces the code's number
/// there, the joiner is given nothing but the code and the relay (no mDNS, no --peer).
#[test]
fn a_device_joins_through_the_relay_with_the_code_alone() {
    let (r, a, b) = (temp("relay"), temp("ra"), temp("rb"));
    let (relay, mut relay_lines) = spawn(&r, &["relay", "--listen", "127.0.0.1:0", "--json"]);
    let started = next_json(&mut relay_lines);
    let at = format!("{}@{}", started["identity"].as_str().unwrap(), started["addr"].as_str().unwrap());
    assert!(warren(&a, &["library", "create", "team"]).status.success());

    let invite_args = ["library", "invite", "team", "--listen", "127.0.0.1:0", "--no-mdns", "--relay", &at, "--json"];
    let (mut invite, mut lines) = spawn(&a, &invite_args);
    let first = next_json(&mut lines);
    let code = first["code"].as_str().unwrap().to_string();
    let out = warren(&b, &["library", "join", &code, "--relay", &at, "--no-mdns", "--listen", "127.0.0.1:0", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let joined: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((joined["name"].as_str(), joined["role"].as_str()), (Some("team"), Some("member")));
    assert_eq!(joined["inviter"], first["inviter"]);
    let done: serde_json::Value = serde_json::from_str(&lines.last().unwrap().unwrap()).unwrap();
    assert!(invite.wait().unwrap().success());
    assert_eq!(done["event"], "joined");

    // With the invite closed, nobody answers for the number at the relay any more.
    let args = ["library", "join", &code, "--relay", &at, "--no-mdns", "--listen", "127.0.0.1:0", "--wait", "1"];
    let out = warren(&b, &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no device answers for code number"), "{err}");
    drop(relay);
    for d in [r, a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Pairs `b` into `a`'s new library `name` on loopback (no mDNS); returns the library's id.
fn paired(a: &Path, b: &Path, name: &str) -> String {
    let created = warren(a, &["library", "create", name, "--json"]);
    assert!(created.status.success());
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let (mut invite, mut lines) =
        spawn(a, &["library", "invite", name, "--listen", "127.0.0.1:0", "--no-mdns", "--json"]);
    let first = next_json(&mut lines);
    let peer = format!("{}@{}", first["inviter"].as_str().unwrap(), first["addr"].as_str().unwrap());
    let code = first["code"].as_str().unwrap();
    let out = warren(b, &["library", "join", code, "--peer", &peer, "--no-mdns", "--listen", "127.0.0.1:0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(invite.wait().unwrap().success());
    created["id"].as_str().unwrap().to_owned()
}

/// `warren send --library`: a device of another library (of the same name) is refused by the
/// receiving member before it can offer anything, and the receiver keeps waiting; a member's
/// send arrives, verified, and both sides say so.
#[test]
fn a_member_sends_to_a_member_in_the_library_and_a_stranger_is_refused() {
    let (a, b, c, out) = (temp("sa"), temp("sb"), temp("sc"), temp("sout"));
    let library = paired(&a, &b, "team");
    assert!(warren(&c, &["library", "create", "team"]).status.success());
    let file = a.join("report.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out_dir = out.to_str().unwrap();
    let receive_args =
        ["receive", "--library", &library, "--no-mdns", "--listen", "127.0.0.1:0", "--json", "--out", out_dir];
    let (mut receiver, mut lines) = spawn(&b, &receive_args);
    let waiting = next_json(&mut lines);
    assert_eq!(waiting["event"], "waiting");
    let peer = format!("{}@{}", waiting["identity"].as_str().unwrap(), waiting["addr"].as_str().unwrap());
    let send = |dir: &Path| {
        let file = file.to_str().unwrap();
        warren(dir, &["send", file, "--library", "team", "--peer", &peer, "--no-mdns", "--listen", "127.0.0.1:0"])
    };

    let stranger = send(&c);
    assert!(!stranger.status.success());
    let said = String::from_utf8_lossy(&stranger.stdout);
    assert!(said.contains("not delivered") && said.contains("not a member"), "{said}");
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no member of \"team\" received it"));

    let member = send(&a);
    assert!(member.status.success(), "{}", String::from_utf8_lossy(&member.stdout));
    let said = String::from_utf8_lossy(&member.stdout);
    assert!(said.contains("received it (member): 1 file(s)") && said.contains("verified"), "{said}");
    assert!(receiver.wait().unwrap().success());
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    let offer = events.iter().find(|e| e["event"] == "offer").unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!((offer["role"].as_str(), offer["bytes"].as_u64()), (Some("admin"), Some(data.len() as u64)));
    assert_eq!(std::fs::read(out.join("report.bin")).unwrap(), data);
    for d in [a, b, c, out] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
