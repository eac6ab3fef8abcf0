//! `warren send` and `warren receive` as processes: a folder arrives whole; a receive killed
//! with SIGKILL mid-transfer and started again resumes, fetching again at most what was in
//! flight; a bad ticket and an unreachable sender get a one-line error.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const HANG: Duration = Duration::from_secs(60);

fn warren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warren"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-cli-transfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `warren send` of `paths` on loopback, and its ticket.
struct Sender {
    child: Child,
    ticket: String,
}

impl Sender {
    fn start(paths: &[&Path]) -> Self {
        let mut child = warren()
            .args(["send", "--json", "--listen", "127.0.0.1:0"])
            .args(paths)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(ready["event"], "ready", "{ready}");
        let ticket = ready["ticket"].as_str().unwrap().to_owned();
        Self { child, ticket }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn done_line(output: &std::process::Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let done: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(done["event"], "done", "{done}");
    done
}

#[test]
fn a_killed_receive_resumes_where_it_was() {
    let dir = temp_dir("resume");
    let file = dir.join("big.bin");
    let data = warren::testing::pseudo_random_bytes(11, 96 << 20);
    std::fs::write(&file, &data).unwrap();
    let sender = Sender::start(&[&file]);
    let out = dir.join("out");

    // The first receive is killed (SIGKILL) once an eighth has arrived.
    let mut first = warren()
        .args(["receive", "--json", &sender.ticket, "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + HANG;
    let mut done_at_kill = 0;
    for line in BufReader::new(first.stdout.take().unwrap()).lines() {
        let line: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert!(Instant::now() < deadline, "no progress");
        assert_ne!(line["event"], "done", "finished before the kill: make the file bigger");
        if line["event"] == "progress" && line["done"].as_u64().unwrap() >= data.len() as u64 / 8 {
            done_at_kill = line["done"].as_u64().unwrap();
            first.kill().unwrap();
            break;
        }
    }
    first.wait().unwrap();
    assert!(done_at_kill > 0);
    assert!(!out.join("big.bin").exists(), "nothing under the final name yet");

    // The same receive again: it keeps what verified and fetches the rest.
    let second = warren().args(["receive", "--json", &sender.ticket, "--out"]).arg(&out).output().unwrap();
    let done = done_line(&second);
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data, "whole and equal");
    let (kept, fetched) = (done["kept"].as_u64().unwrap(), done["fetched"].as_u64().unwrap());
    assert_eq!(kept + fetched, data.len() as u64, "{done}");
    // Verified before the kill, but not kept: at most the requests in flight and one group.
    let lost = done_at_kill.saturating_sub(kept);
    println!("killed at {done_at_kill} verified bytes; the second run kept {kept}, fetched {fetched}; lost {lost}");
    // A group counts as verified a moment before it is written, so a kill can lose the batches
    // being written: within the in-flight window, never more.
    let window = warren_transfer::Config::default().max_in_flight();
    assert!(lost <= window, "lost {lost} verified bytes, over the {window}-byte in-flight window: {done}");
    assert!(!out.join(".warren-partial").exists());
    drop(sender);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_ticket_and_an_unreachable_sender_get_one_line_errors() {
    let dir = temp_dir("errors");
    let output = warren().args(["receive", "warren1notaticket"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "clap refuses it");
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a warren ticket"));

    // A real ticket whose sender is gone.
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    let sender = Sender::start(&[&file]);
    let ticket = sender.ticket.clone();
    drop(sender);
    let output = warren().args(["receive", &ticket, "--out"]).arg(dir.join("out")).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("warren: no provider could complete the transfer"), "{stderr}");
    assert!(!dir.join("out").join("f").exists());

    // A missing path on the sender's side.
    let output = warren().args(["send", "--json"]).arg(dir.join("missing")).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("No such file"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `warren bench transfer`, shortened: both contenders run and every ratio is printed.
#[test]
fn bench_transfer_smoke() {
    let output = warren()
        .args(["bench", "transfer", "--bytes", "8388608", "--files", "50", "--rounds", "1", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in ["raw_stream_gbps", "transfer_gbps", "transfer_vs_raw", "small_files_per_sec", "small_transfer_vs_raw"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {report}");
    }
}
