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

/// A folder for test `name` with a 256 MiB file `big.bin` of bytes from `seed`.
fn big_file(name: &str, seed: u64) -> (PathBuf, PathBuf, Vec<u8>) {
    let dir = temp_dir(name);
    let file = dir.join("big.bin");
    let data = warren::testing::pseudo_random_bytes(seed, 256 << 20);
    std::fs::write(&file, &data).unwrap();
    (dir, file, data)
}

/// A `warren send` of `paths` on loopback, and its ticket.
struct Sender {
    child: Child,
    ticket: String,
    lines: JsonLines,
}

type JsonLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Starts `command` with its stdout read line by line (its stderr is the test's).
fn spawn(command: &mut Command) -> (Child, JsonLines) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

impl Sender {
    fn start(paths: &[&Path]) -> Self {
        Self::start_with(paths, &["--listen", "127.0.0.1:0"])
    }

    fn start_with(paths: &[&Path], options: &[&str]) -> Self {
        let (child, mut lines) = spawn(warren().args(["send", "--json"]).args(options).args(paths));
        let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(ready["event"], "ready", "{ready}");
        let ticket = ready["ticket"].as_str().unwrap().to_owned();
        Self { child, ticket, lines }
    }

    /// Stops it with SIGINT and returns its last line (`"event": "stopped"`, its counters).
    fn stop(mut self) -> Value {
        let status = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
        let stopped: Value = serde_json::from_str(&self.lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(stopped["event"], "stopped", "{stopped}");
        stopped
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `warren receive --json` of `ticket` into `out`, read until a sixteenth has verified
/// (progress lines come every 50 ms: at 3 Gbit/s another 7 % arrives between two). Returns
/// it, its remaining lines, and the bytes verified by then.
fn receive_a_sixteenth(ticket: &str, out: &Path, total: u64) -> (Child, JsonLines, u64) {
    let (child, mut lines) = spawn(warren().args(["receive", "--json", ticket, "--out"]).arg(out));
    let deadline = Instant::now() + HANG;
    loop {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(Instant::now() < deadline, "no progress");
        assert_ne!(line["event"], "done", "finished before a sixteenth was seen: make the file bigger");
        if line["event"] == "progress" && line["done"].as_u64().unwrap() >= total / 16 {
            return (child, lines, line["done"].as_u64().unwrap());
        }
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
    let (dir, file, data) = big_file("resume", 11);
    let sender = Sender::start(&[&file]);
    let out = dir.join("out");

    // The first receive is killed (SIGKILL) once a sixteenth has arrived.
    let (mut first, _, done_at_kill) = receive_a_sixteenth(&sender.ticket, &out, data.len() as u64);
    first.kill().unwrap();
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
fn a_killed_send_started_again_lets_the_same_receive_go_on() {
    let (dir, file, data) = big_file("sender-killed", 12);
    let keys = dir.join("keys");
    let keys = keys.to_str().unwrap();
    let first = Sender::start_with(&[&file], &["--listen", "127.0.0.1:0", "--data-dir", keys]);
    let ticket: warren_transfer::Ticket = first.ticket.parse().unwrap();
    let out = dir.join("out");

    // The sender is killed (SIGKILL) once a sixteenth has arrived...
    let (receive, lines, done_at_kill) = receive_a_sixteenth(&first.ticket, &out, data.len() as u64);
    drop(first); // kill(2) with SIGKILL, and wait
    // ...and started again with the same identity on the same port: the same ticket.
    let port = ticket.addrs[0].port().to_string();
    let second = Sender::start_with(&[&file], &["--listen", &format!("127.0.0.1:{port}"), "--data-dir", keys]);
    let restarted = Instant::now();
    let deadline = restarted + HANG;
    assert_eq!(second.ticket.parse::<warren_transfer::Ticket>().unwrap(), ticket, "the same ticket");

    // The receive that was running goes on, and finishes.
    let mut done = Value::Null;
    for line in lines {
        let line: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert!(Instant::now() < deadline, "no end");
        if line["event"] == "done" {
            done = line;
        }
    }
    let mut receive = receive;
    assert!(receive.wait().unwrap().success(), "the receive failed");
    assert_eq!(done["event"], "done", "{done}");
    // The restarted sender resets the dead connection (its stateless-reset key comes from its
    // identity), so the receive dials again at once (about 1 s here). Without the reset it
    // would wait out a stalled answer (20 s) or the connection's idle timeout (30 s).
    let after = restarted.elapsed();
    assert!(after < Duration::from_secs(15), "the receive took {after:?} after the restart: no stateless reset?");
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data, "whole and equal");
    let stopped = second.stop();
    let (served, asked_again) = (stopped["bytes"].as_u64().unwrap(), done["asked_again"].as_u64().unwrap());
    let window = warren_transfer::Config::default().max_in_flight();
    println!(
        "sender killed at {done_at_kill} verified bytes; asked again {asked_again}; the restarted sender sent {served} of {}",
        data.len()
    );
    // What the first sender may have sent that was lost is what the receive asked for again:
    // the requests in flight when it died, never more than their window.
    assert!(asked_again <= window, "asked again for {asked_again} bytes, over the {window}-byte window: {done}");
    // The second sender sent only what had not verified (and at least one group: it did work).
    assert!(served > 0 && served <= data.len() as u64 - done_at_kill, "{stopped}");
    drop(receive);
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
    // The floor was measured (each part costs something) and adds up; the bound it gives is a
    // ratio that costs, not a placeholder.
    let floor = &report["floor_cpu_secs_per_gib"];
    let parts: Vec<f64> = ["read", "hash", "write"].iter().map(|k| floor[k].as_f64().unwrap()).collect();
    assert!(parts.iter().all(|&v| v > 0.0), "{floor}");
    assert!((parts.iter().sum::<f64>() - floor["total"].as_f64().unwrap()).abs() < 1e-9, "{floor}");
    let (raw, busy) =
        (report["raw_stream_cpu_secs_per_gib"].as_f64().unwrap(), report["raw_stream_busy"].as_f64().unwrap());
    let bound = report["bound_vs_raw"].as_f64().unwrap();
    assert!(busy > 0.0 && (bound - raw / (raw + parts.iter().sum::<f64>()) / busy).abs() < 1e-9, "{report}");
}
