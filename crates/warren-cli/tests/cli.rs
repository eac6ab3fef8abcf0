//! The `warren` binary, run as real processes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bound on any wait: only catches hangs.
const HANG: Duration = Duration::from_secs(60);

fn warren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warren"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A `warren node --json` process whose stdout lines arrive on a channel.
struct NodeProcess {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Peers that stay up for the whole test: a failed ping of one is a failure.
    steady: std::cell::RefCell<Vec<String>>,
}

impl NodeProcess {
    fn spawn(args: &[&str]) -> Self {
        // These nodes run in the machine's own network namespace: no multicast out of it.
        let mut child = warren()
            .arg("node")
            .arg("--json")
            .args(["--discovery", "disabled"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start warren node");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, steady: Default::default() }
    }

    /// `id` stays up for the whole test: a `PingFailed` for it fails the test at once.
    fn steady_peer(&self, id: &str) {
        self.steady.borrow_mut().push(id.to_owned());
    }

    /// Waits for the first line with `"event": event` that `pick` accepts.
    fn wait_for(&self, event: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("no {event} line"));
            if line["event"] == event && pick(&line) {
                return line;
            }
            // A failure the test waits past would only show as a timeout: say it at once. Only
            // for a steady peer: the node also pings each `warren ping` client that connects,
            // and a client that got its answers and left fails that ping whichever way the race
            // goes (its connection closed, the stream cut, no address left to dial: three
            // messages seen in CI), which is no failure of the node.
            let steady = line["remote"].as_str().is_some_and(|r| self.steady.borrow().iter().any(|s| s == r));
            assert!(line["event"] != "PingFailed" || !steady, "while waiting for {event}: {line}");
        }
    }

    fn terminate(mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
        self.wait_for("Shutdown", |_| true);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "node exited with {status}");
    }
}

#[test]
fn two_node_processes_find_each_other_through_peer_and_exchange_pings() {
    let (dir_a, dir_b) = (temp_dir("a"), temp_dir("b"));
    let a = NodeProcess::spawn(&["--listen", "127.0.0.1:0", "--name", "node-a", "--data-dir", dir_a.to_str().unwrap()]);
    let started = a.wait_for("NodeStarted", |_| true);
    let a_id = started["identity"].as_str().unwrap().to_owned();
    let a_addr = started["addrs"][0].as_str().unwrap().to_owned();
    assert_eq!(started["metadata"]["name"], "node-a");

    let peer = format!("{a_id}@{a_addr}");
    let b = NodeProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--name",
        "node-b",
        "--data-dir",
        dir_b.to_str().unwrap(),
        "--peer",
        &peer,
    ]);
    let b_id = b.wait_for("NodeStarted", |_| true)["identity"].as_str().unwrap().to_owned();
    a.steady_peer(&b_id);
    b.steady_peer(&a_id);

    let connected = b.wait_for("PeerConnected", |l| l["remote"] == a_id.as_str());
    assert_eq!(connected["direction"], "outbound");
    assert_eq!(connected["metadata"]["name"], "node-a");
    let connected = a.wait_for("PeerConnected", |l| l["remote"] == b_id.as_str());
    assert_eq!(connected["direction"], "inbound");
    assert_eq!(connected["metadata"]["name"], "node-b");
    // Each node pings the other once it is connected: a round trip in each direction.
    let ping = b.wait_for("PingResult", |l| l["remote"] == a_id.as_str());
    assert!(ping["rtt_ms"].as_f64().unwrap() > 0.0);
    let ping = a.wait_for("PingResult", |l| l["remote"] == b_id.as_str());
    assert!(ping["rtt_ms"].as_f64().unwrap() > 0.0);

    // A third process pings node A by identity and address.
    let output = warren().args(["ping", &peer, "--count", "3", "--interval-ms", "10", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["remote"], a_id.as_str());
    assert_eq!(report["name"], "node-a");
    assert_eq!(report["rtt_ms"].as_array().unwrap().len(), 3);
    assert!(report["min_ms"].as_f64().unwrap() <= report["max_ms"].as_f64().unwrap());

    a.terminate();
    b.terminate();
    // The identities persisted: the same data directory gives the same identity.
    let output = warren().args(["id", "--data-dir", dir_a.to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), a_id);
    for dir in [dir_a, dir_b] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// `warren node --tcp/--utp ADDR` listens there too; `warren ping --tcp/--utp` reaches it, and
/// so does `warren ping ID@tcp://ADDR` (the address names the transport).
fn a_node_listening_on_another_transport_too_is_pinged_over_it(transport: &str) {
    let dir = temp_dir(transport);
    let flag = format!("--{transport}");
    let node =
        NodeProcess::spawn(&["--listen", "127.0.0.1:0", &flag, "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()]);
    let started = node.wait_for("NodeStarted", |_| true);
    let id = started["identity"].as_str().unwrap();
    let addr = started[transport].as_str().unwrap();
    let output = warren()
        .args(["ping", &flag, &format!("{id}@{addr}"), "--count", "2", "--interval-ms", "10"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains(&format!("over {transport}, identity verified")), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("seq=")).count(), 2, "{stdout}");
    let named = format!("{id}@{transport}://{addr}");
    let output = warren().args(["ping", &named, "--count", "1"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("over {transport}, identity verified")));
    // The QUIC address is no such listener: the same ping there fails.
    let quic = started["addrs"][0].as_str().unwrap();
    let output = warren().args(["ping", &flag, &format!("{id}@{quic}"), "--count", "1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    node.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_node_listening_on_tcp_too_is_pinged_over_tcp() {
    a_node_listening_on_another_transport_too_is_pinged_over_it("tcp");
}

#[test]
fn a_node_listening_on_utp_too_is_pinged_over_utp() {
    a_node_listening_on_another_transport_too_is_pinged_over_it("utp");
}

#[test]
fn ping_of_the_wrong_identity_fails_with_a_one_line_reason() {
    let dir = temp_dir("wrong");
    let node = NodeProcess::spawn(&["--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()]);
    let started = node.wait_for("NodeStarted", |_| true);
    let addr = started["addrs"][0].as_str().unwrap();
    let other_dir = temp_dir("other");
    let output = warren().args(["id", "--data-dir", other_dir.to_str().unwrap()]).output().unwrap();
    let someone_else = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let expected_prefix = format!("warren: wrong identity: dialled {someone_else} but ");

    let output = warren().args(["ping", &format!("{someone_else}@{addr}"), "--count", "1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&expected_prefix), "{stderr}");
    assert!(stderr.contains(started["identity"].as_str().unwrap()), "{stderr}");

    let output = warren().args(["ping", "not-an-identity@127.0.0.1:1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "clap refuses a malformed peer");
    node.terminate();
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(other_dir).unwrap();
}

#[test]
fn id_refuses_a_corrupt_key_file_instead_of_replacing_it() {
    let dir = temp_dir("id");
    let first = warren().args(["id", "--json", "--data-dir", dir.to_str().unwrap()]).output().unwrap();
    assert!(first.status.success());
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(first["identity"].as_str().unwrap().len(), 52);
    assert_eq!(first["peer_id"].as_str().unwrap().len(), 64);

    std::fs::write(dir.join("identity.key"), b"garbage").unwrap();
    let output = warren().args(["id", "--data-dir", dir.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("is corrupt (expected 32 bytes, found 7)"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("identity.key")).unwrap(), b"garbage");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn demo_runs_the_whole_story() {
    let output = warren().args(["demo", "--bytes", "4194304", "--netsim-bytes", "262144", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["stream_bytes"], 4194304);
    assert_eq!(report["wrong_identity_refused"], true);
    assert_eq!(report["unknown_protocol_refused"], true);
    assert!(report["stream_gbps"].as_f64().unwrap() > 0.0);
    assert!(report["ping_bob_to_alice_avg_ms"].as_f64().unwrap() > 0.0);
    // Across the simulated internet: seen as the NAT's address, never faster than the 100 ms
    // the links take, every byte counted by the far side.
    let netsim = &report["netsim"];
    assert!(netsim["seen_at"].as_str().unwrap().starts_with("203.0.113.1:"), "{netsim}");
    assert!(netsim["ping_avg_ms"].as_f64().unwrap() >= 100.0, "{netsim}");
    assert_eq!(netsim["bytes"], 262144);
    // On the simulated LAN: found by mDNS with its name, and pinged by identity.
    let lan = &report["lan"];
    assert_eq!(lan["name"], "desk", "{lan}");
    assert!(lan["ping_avg_ms"].as_f64().unwrap() > 0.0, "{lan}");
}

/// A short run of the throughput benchmark (the full one is `warren bench throughput`).
#[test]
fn bench_throughput_smoke() {
    let output = warren()
        .args(["bench", "throughput", "--bytes", "8388608", "--rounds", "1", "--setups", "3", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in [
        "warren_gbps",
        "quinn_gbps",
        "tcp_gbps",
        "ratio_vs_quinn",
        "ratio_vs_tcp",
        "setup_ms_warren",
        "setup_ms_quinn",
        "warren_tcp_gbps",
        "tls_tcp_gbps",
        "warren_tcp_vs_quinn",
        "warren_tcp_vs_tls_tcp",
        "setup_ms_warren_tcp",
        "utp_gbps",
        "utp_vs_quinn",
    ] {
        let value = report[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(value.is_finite() && value > 0.0, "{key} = {value}");
    }
    let ratio = report["warren_gbps"].as_f64().unwrap() / report["quinn_gbps"].as_f64().unwrap();
    assert!((ratio - report["ratio_vs_quinn"].as_f64().unwrap()).abs() < 1e-9);
}

/// A short run of the flood benchmark (the full one is `warren bench flood`: 10,000
/// handshakes): 1,000 throwaway identities on 4 addresses, each with a hello. The node keeps at
/// most 64 connections per address, and a legitimate peer from another address connects.
#[test]
fn bench_flood_smoke() {
    let output = warren()
        .args(["bench", "flood", "--handshakes", "1000", "--sources", "4", "--connects", "2", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let field = |key: &str| report[key].as_u64().unwrap_or_else(|| panic!("{key} missing: {report}"));
    assert_eq!(field("handshakes"), 1000, "{report}");
    assert!(field("completed") <= 4 * 64, "{report}");
    assert!(field("alive_at_end") <= 4 * 64, "{report}");
    assert_eq!(field("legit_connect_failures"), 0, "{report}");
    assert!(report["legit_connect_ms"].as_array().unwrap().len() >= 2, "{report}");
    assert!(field("rss_peak_kib") > 0, "{report}");
}
