//! Hole punching through two real Linux routers (issue 13): `scripts/real-routers`, which
//! builds plain namespaces with nftables `masquerade` on each router, a relay, and a router
//! between the two (as on the internet), then runs `warren node --relay` behind one and
//! `warren ping ID --relay` behind the other. Nothing of warren-netsim is involved. Needs root,
//! ip, nft and, for the port-mapping case, miniupnpd (`scripts/setup`).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/real-routers");
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .env("WARREN_BIN", env!("CARGO_BIN_EXE_warren"))
        .output()
        .expect("running scripts/real-routers");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), format!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr)))
}

/// `masquerade` on both routers: the path turns direct, run after run (it stayed relayed every
/// time before warren opened its own NAT first with TTL-limited challenges).
#[test]
fn masquerade_against_masquerade_goes_direct_every_time() {
    for attempt in 1..=3 {
        let (direct, output) = run(&["--hop", "--count", "6"]);
        assert!(direct && output.contains("RESULT: direct"), "run {attempt}:\n{output}");
        assert!(output.contains("path now direct 198.51.100.10:"), "run {attempt}: direct to router A\n{output}");
    }
}

/// `masquerade fully-random` on both routers (symmetric × symmetric: every destination gets
/// another random port, so no punch can find the other side): relayed, never failed, without
/// help; direct once router A runs miniupnpd and node A asks it for a port mapping
/// (`--port-mapping`), which node A offers as its first candidate.
#[test]
fn symmetric_against_symmetric_goes_direct_with_a_port_mapping_from_miniupnpd() {
    let (direct, output) = run(&["--hop", "--a-ports", "fully-random", "--b-ports", "fully-random", "--count", "4"]);
    assert!(!direct && output.contains("RESULT: not direct (ping exit 0)"), "without a mapping:\n{output}");
    for attempt in 1..=2 {
        let (direct, output) =
            run(&["--hop", "--a-ports", "fully-random", "--b-ports", "fully-random", "--upnp", "--count", "6"]);
        assert!(output.contains("port mapped by the gateway (PCP): 11.0.0.10:"), "run {attempt}:\n{output}");
        assert!(direct && output.contains("path now direct 11.0.0.10:"), "run {attempt}:\n{output}");
    }
}

/// `masquerade` against `masquerade random` and `masquerade fully-random` (per-flow random
/// ports on router B): the NAT test sees B's second mapping on another port, and the punch goes
/// to birthday probing (256 sockets on B, random ports sprayed from A), direct every time here.
#[test]
fn masquerade_against_masquerade_random_goes_direct_by_birthday_probing() {
    for ports in ["random", "fully-random"] {
        for attempt in 1..=2 {
            let (direct, output) = run(&["--hop", "--b-ports", ports, "--count", "8"]);
            assert!(direct && output.contains("path now direct 198.51.100.10:"), "{ports}, run {attempt}:\n{output}");
        }
    }
}
