//! Shared by the warren-probe netsim tests: a server host with two addresses on the
//! simulated internet and a client host, directly on the internet or behind NATs.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use warren_netsim::link::LinkConfig;
use warren_netsim::nat::NatConfig;
use warren_netsim::{Host, KernelNatConfig, KernelPorts, Simulation};
use warren_probe::server::{ProbeServer, ServerConfig};

pub const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const ALTERNATE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub const CLIENT_ON_INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

/// Where the probing host sits.
pub enum Behind {
    /// On the internet, no NAT.
    Nothing,
    /// Behind these NATs, outermost first.
    Nats(Vec<NatConfig>),
    /// Behind the kernel's NAT.
    Kernel(KernelPorts),
}

fn link() -> LinkConfig {
    LinkConfig { latency: Duration::from_millis(2), ..Default::default() }
}

/// The simulation (started), the server host (two addresses) and the client host.
pub fn topology(behind: Behind) -> (Simulation, Host, Host) {
    let mut sim = Simulation::new(11);
    let server = sim.add_host("server", PRIMARY, 24).unwrap();
    sim.add_address(&server, ALTERNATE).unwrap();
    let client = match behind {
        Behind::Nothing => {
            let host = sim.add_host("client", CLIENT_ON_INTERNET, 24).unwrap();
            sim.link(&host, &server, link());
            host
        }
        Behind::Nats(configs) => {
            let mut outer: Option<warren_netsim::Device> = None;
            for (i, config) in configs.into_iter().enumerate() {
                let parent = outer.as_ref().map(|n| n as &dyn warren_netsim::AsNode);
                let nat = sim.add_nat(&format!("nat{i}"), config, parent).unwrap();
                match &outer {
                    Some(parent) => sim.link(&nat, parent, link()),
                    None => sim.link(&nat, &server, link()),
                }
                outer = Some(nat);
            }
            let inner = outer.expect("at least one NAT");
            let host = sim.add_host_behind("client", Ipv4Addr::new(192, 168, 1, 2), 24, &inner).unwrap();
            sim.link(&host, &inner, link());
            host
        }
        Behind::Kernel(ports) => {
            let config = KernelNatConfig {
                public_ip: PUBLIC,
                lan_ip: Ipv4Addr::new(192, 168, 1, 1),
                lan_prefix: 24,
                ports,
                udp_timeout: None,
                unsolicited_tcp: warren_netsim::nat::UnsolicitedTcp::Reset,
            };
            let nat = sim.add_kernel_nat("knat", config, None).unwrap();
            sim.link(&nat, &server, link());
            let host = sim.add_host_behind("client", Ipv4Addr::new(192, 168, 1, 2), 24, &nat).unwrap();
            sim.link(&host, &nat, link());
            host
        }
    };
    sim.start().unwrap();
    (sim, server, client)
}

/// Runs a warren probe server on the server host until the returned sender is used (or
/// dropped); the join handle ends after it shut down.
pub fn warren_server(server: &Host) -> (tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let task = server.spawn(move || async move {
        let config = ServerConfig {
            primary: SocketAddr::from((PRIMARY, 3478)),
            alternate: SocketAddr::from((ALTERNATE, 3479)),
            db: None,
        };
        let server = ProbeServer::spawn(config).await.unwrap();
        ready_tx.send(()).unwrap();
        let _ = stop.await;
        server.shutdown().await;
    });
    ready.recv().unwrap();
    (stop_tx, task)
}
