//! Interop with a STUN implementation nobody here wrote: coturn (Debian's, installed by
//! scripts/setup), in warren-netsim so that its ports and addresses are the test's own.
//!
//! - `warren probe` against `turnserver` (RFC 5780 on two addresses; `-n` ignores the packaged
//!   configuration, which disables RFC 5780): endpoint-independent with no NAT between, and the
//!   NAT's configured behaviour through one.
//! - coturn's client `turnutils_natdiscovery -m -f` against `warren probe-server`: the same
//!   answers, read from its output.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ALTERNATE, Behind, PRIMARY};
use warren_netsim::Host;
use warren_netsim::nat::NatPreset;
use warren_probe::client::{self, ProbeOptions, ProbeResult};
use warren_probe::report::Behaviour;

/// `turnserver` in the server host; killed when dropped.
struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coturn(server: &Host) -> Coturn {
    let mut command: Command = server.command("turnserver");
    command
        .args(["-n", "--stun-only", "-L", &PRIMARY.to_string(), "-L", &ALTERNATE.to_string(), "-p", "3478"])
        .args(["--no-tls", "--no-dtls", "--no-cli", "--log-file", "stdout", "--simple-log"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command.spawn().expect("turnserver runs (scripts/setup installs coturn)");
    Coturn(child)
}

fn probe_coturn(behind: Behind) -> ProbeResult {
    let (_sim, server, client) = common::topology(behind);
    let _coturn = coturn(&server);
    client
        .spawn(move || async move {
            let mut opts = ProbeOptions::new(SocketAddr::from((PRIMARY, 3478)));
            opts.timeout = Duration::from_millis(150);
            // coturn needs a moment to open its sockets: retry test I until it answers.
            for _ in 0..40 {
                let result = client::probe(&opts, |_| {}).await.unwrap();
                if !result.findings.udp_blocked {
                    return result;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("coturn never answered");
        })
        .join()
        .unwrap()
}

#[test]
fn warren_probe_against_coturn_without_nat() {
    let result = probe_coturn(Behind::Nothing);
    assert_eq!(result.findings.no_nat, Some(true), "{result:?}");
    assert_eq!(result.other.map(|o| o.ip()), Some(ALTERNATE.into()), "coturn announced its other address");
    assert_eq!(result.findings.mapping, Some(Behaviour::EndpointIndependent), "{result:?}");
    assert_eq!(result.findings.filtering, Some(Behaviour::EndpointIndependent), "{result:?}");
}

#[test]
fn warren_probe_against_coturn_through_a_port_restricted_nat() {
    let result = probe_coturn(Behind::Nats(vec![NatPreset::PortRestricted.configs(&[common::PUBLIC]).remove(0)]));
    assert_eq!(result.findings.mapping, Some(Behaviour::EndpointIndependent), "{result:?}");
    assert_eq!(result.findings.filtering, Some(Behaviour::AddressAndPortDependent), "{result:?}");
}

/// Runs `turnutils_natdiscovery -m -f PRIMARY` in the client host against a warren probe
/// server; returns its output.
fn natdiscovery(behind: Behind) -> String {
    let (_sim, server, client) = common::topology(behind);
    let (stop, task) = common::warren_server(&server);
    let output = client
        .command("timeout")
        .args(["60", "turnutils_natdiscovery", "-m", "-f", &PRIMARY.to_string()])
        .output()
        .expect("turnutils_natdiscovery runs (scripts/setup installs coturn)");
    let _ = stop.send(());
    task.join().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn coturn_natdiscovery_against_warren_probe_server_without_nat() {
    let out = natdiscovery(Behind::Nothing);
    assert!(out.contains("NAT with Endpoint Independent Mapping!"), "{out}");
    assert!(out.contains("NAT with Endpoint Independent Filtering!"), "{out}");
    // It saw our server's other address.
    assert!(out.contains(&format!("Other addr: : {ALTERNATE}:3479")), "{out}");
}

#[test]
fn coturn_natdiscovery_against_warren_probe_server_through_a_symmetric_nat() {
    let out = natdiscovery(Behind::Nats(vec![NatPreset::Symmetric.configs(&[common::PUBLIC]).remove(0)]));
    assert!(out.contains("NAT with Address and Port Dependent Mapping!"), "{out}");
    assert!(out.contains("NAT with Address and Port Dependent Filtering!"), "{out}");
}
