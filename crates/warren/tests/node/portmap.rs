//! Port mapping against a real gateway: miniupnpd (Debian's `miniupnpd-nftables`, which speaks
//! PCP, NAT-PMP and UPnP IGD) on a router namespace doing nftables `masquerade fully-random`,
//! a node in a host namespace behind it. Nothing of warren-netsim: plain namespaces, veth,
//! nftables. The daemon runs only inside the test's router namespace.
//!
//! Addresses: the router's outside is 11.0.0.10/24. miniupnpd refuses to map on an interface
//! whose address is private or reserved (the documentation ranges included), so the test's
//! own, unconnected namespace uses an ordinary-looking block; nothing leaves it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use warren::portmap::{PortMapConfig, PortMapStatus, PortMapping, Protocol, Protocols};
use warren::{Identity, P2P};

const EXTERNAL: &str = "11.0.0.10";

/// A host behind a router with miniupnpd (or without, for `daemon: false`).
struct Lab {
    prefix: String,
    dir: std::path::PathBuf,
    daemon: Option<Child>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?} failed");
}

impl Lab {
    fn new(daemon: bool) -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("pm{}-{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lab = Lab { prefix, dir, daemon: None };
        for n in ["h", "r", "w"] {
            ip(&["netns", "add", &lab.ns(n)]);
            lab.exec(n, &["ip", "link", "set", "lo", "up"]);
        }
        lab.veth("h", "lan", "192.168.1.2/24", "r", "lan", "192.168.1.1/24");
        lab.veth("r", "wan", &format!("{EXTERNAL}/24"), "w", "wan", "11.0.0.1/24");
        lab.exec("h", &["ip", "route", "add", "default", "via", "192.168.1.1"]);
        lab.exec("r", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // The chains miniupnpd fills (its defaults: table inet filter), and the NAT itself.
        let ruleset = "table inet filter {\n\
            chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n\
            chain miniupnpd { }\n\
            chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n\
            chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; oifname \"wan\" masquerade fully-random; }\n\
            chain prerouting_miniupnpd { }\n\
            chain postrouting_miniupnpd { }\n\
            }\n";
        let rules = lab.dir.join("rules.nft");
        std::fs::write(&rules, ruleset).unwrap();
        lab.exec("r", &["nft", "-f", rules.to_str().unwrap()]);
        if daemon {
            let conf = lab.dir.join("miniupnpd.conf");
            let lease = lab.dir.join("leases");
            let pid = lab.dir.join("miniupnpd.pid");
            std::fs::write(
                &conf,
                format!(
                    "ext_ifname=wan\nlistening_ip=lan\nhttp_port=0\nenable_natpmp=yes\nenable_upnp=yes\nsecure_mode=yes\n\
                     system_uptime=yes\nmin_lifetime=2\nlease_file={}\nuuid=3f5a2b6e-1c9d-4e7f-8a0b-2c4d6e8f0a1b\n\
                     allow 1024-65535 192.168.1.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                    lease.display()
                ),
            )
            .unwrap();
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.ns("r"),
                    "miniupnpd",
                    "-d",
                    "-f",
                    conf.to_str().unwrap(),
                    "-P",
                    pid.to_str().unwrap(),
                ])
                .stdout(Stdio::null())
                .stderr(File::create(lab.dir.join("miniupnpd.log")).unwrap())
                .spawn()
                .expect("miniupnpd runs (scripts/setup installs miniupnpd-nftables)");
            lab.daemon = Some(child);
            // Until it listens for PCP/NAT-PMP and HTTP (the log says so).
            let started = Instant::now();
            while !lab.log().contains("Listening for NAT-PMP/PCP") {
                assert!(started.elapsed() < Duration::from_secs(10), "miniupnpd did not start:\n{}", lab.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        lab
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("miniupnpd.log")).unwrap_or_default()
    }

    fn exec(&self, n: &str, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.ns(n)]).args(args).output().expect("ip netns exec");
        assert!(out.status.success(), "{args:?} in {n}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn veth(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        let (x, y) = (format!("{}x", self.prefix), format!("{}y", self.prefix));
        ip(&["link", "add", &x, "type", "veth", "peer", "name", &y]);
        ip(&["link", "set", &x, "netns", &self.ns(a)]);
        ip(&["link", "set", &y, "netns", &self.ns(b)]);
        for (n, from, to, addr) in [(a, &x, a_if, a_ip), (b, &y, b_if, b_ip)] {
            self.exec(n, &["ip", "link", "set", from, "name", to]);
            self.exec(n, &["ip", "addr", "add", addr, "dev", to]);
            self.exec(n, &["ip", "link", "set", to, "up"]);
        }
    }

    /// The router's NAT rules as nft lists them.
    fn ruleset(&self) -> String {
        self.exec("r", &["nft", "list", "ruleset"])
    }

    /// Runs `test` in a thread inside the host namespace.
    fn in_host<T: Send>(&self, test: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(format!("/run/netns/{}", self.ns("h"))).unwrap();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on an open namespace file; it moves only this thread.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    test()
                })
                .join()
                .expect("the host thread does not panic")
        })
    }

    /// Runs `test` on a tokio runtime in the host namespace.
    fn run<T: Send>(&self, test: impl std::future::Future<Output = T> + Send) -> T {
        self.in_host(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(test))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for n in ["h", "r", "w"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(n)]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `mapping`'s status to satisfy `done`, at most `bound`.
async fn wait_for(mapping: &PortMapping, bound: Duration, done: impl Fn(&PortMapStatus) -> bool) -> PortMapStatus {
    let mut watch = mapping.watch_status();
    match tokio::time::timeout(bound, watch.wait_for(|s| done(s))).await {
        Ok(Ok(status)) => status.clone(),
        _ => panic!("status after {bound:?}: {:?}", mapping.status()),
    }
}

/// A node behind the lab's router asks for a mapping with `protocols`: it gets one by
/// `expected` in under a second, the router's rules forward the port to the node's socket, it
/// is renewed at half its lifetime (twice within one lifetime and a bit), and shutdown removes
/// it from the router.
fn maps_renews_and_removes(protocols: Protocols, expected: Protocol) {
    let lab = Lab::new(true);
    lab.run(async {
        let p2p = P2P::new("portmap-test", Identity::generate());
        let quic = p2p.listen_quic("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let port = quic.local_addr().port();
        let mut events = p2p.subscribe();
        let started = Instant::now();
        let config = PortMapConfig { gateway: None, protocols, lifetime: Duration::from_secs(4) };
        let mapping = p2p.add_port_mapping(&quic, config);
        let status = wait_for(&mapping, Duration::from_secs(5), |s| !matches!(s, PortMapStatus::Searching)).await;
        let took = started.elapsed();
        let PortMapStatus::Mapped { mapping: mapped, .. } = status else {
            panic!("not mapped: {status:?}\nminiupnpd:\n{}", lab.log())
        };
        assert_eq!(mapped.protocol, expected);
        assert_eq!(mapped.external.ip().to_string(), EXTERNAL);
        assert!(took < Duration::from_secs(1), "mapped in {took:?}");
        let forward = format!("192.168.1.2:{port}");
        let rules = lab.ruleset();
        assert!(rules.contains(&forward), "the router forwards to {forward}:\n{rules}");
        let event = events.recv().await.unwrap();
        assert!(
            matches!(&event, warren::Event::PortMapped { protocol, external, .. } if *protocol == expected.to_string() && *external == std::net::SocketAddr::V4(mapped.external)),
            "{event:?}"
        );
        let renewed = wait_for(&mapping, Duration::from_secs(8), |s| matches!(s, PortMapStatus::Mapped { renewals: 2.., .. })).await;
        let PortMapStatus::Mapped { mapping: after, .. } = renewed else { unreachable!() };
        assert_eq!(after.external, mapped.external, "renewals keep the port");
        println!("{expected}: mapped {} in {took:?}, renewed twice", mapped.external);
        let stopping = Instant::now();
        p2p.shutdown().await;
        assert_eq!(mapping.status(), PortMapStatus::Removed);
        let rules = lab.ruleset();
        assert!(!rules.contains(&forward), "removed at shutdown:\n{rules}");
        assert!(stopping.elapsed() < Duration::from_secs(3), "shutdown took {:?}", stopping.elapsed());
    });
}

#[test]
fn pcp_against_miniupnpd_maps_in_under_a_second_renews_and_removes_at_shutdown() {
    maps_renews_and_removes(Protocols::ALL, Protocol::Pcp);
}

#[test]
fn nat_pmp_against_miniupnpd_maps_renews_and_removes() {
    maps_renews_and_removes(Protocols { pcp: false, nat_pmp: true, upnp: false }, Protocol::NatPmp);
}

#[test]
fn upnp_against_miniupnpd_maps_renews_and_removes() {
    maps_renews_and_removes(Protocols { pcp: false, nat_pmp: false, upnp: true }, Protocol::Upnp);
}

/// A router with no port-mapping daemon: one bounded search, a clear reason, and the node
/// works on (a direct dial inside the LAN still does).
#[test]
fn a_router_without_port_mapping_costs_one_short_search() {
    let lab = Lab::new(false);
    lab.run(async {
        let p2p = P2P::new("portmap-test", Identity::generate());
        let quic = p2p.listen_quic("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let started = Instant::now();
        let mapping = p2p.add_port_mapping(&quic, PortMapConfig::default());
        let status = wait_for(&mapping, Duration::from_secs(5), |s| !matches!(s, PortMapStatus::Searching)).await;
        let took = started.elapsed();
        let PortMapStatus::Unavailable(reason) = status else { panic!("{status:?}") };
        assert!(reason.contains("PCP") && reason.contains("UPnP"), "{reason}");
        assert!(took < Duration::from_secs(2), "gave up after {took:?}");
        let stopping = Instant::now();
        p2p.shutdown().await;
        assert!(stopping.elapsed() < Duration::from_secs(1), "shutdown took {:?}", stopping.elapsed());
    });
}
