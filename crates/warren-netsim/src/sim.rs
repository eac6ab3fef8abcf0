//! A running simulation: hosts in their own network namespaces, each with one TAP device, and a
//! forwarder thread that moves their packets through the sans-IO [`Link`] and [`Nat`] models.
//!
//! The topology is a tree of devices joined by links. Every host, NAT, router, switch or kernel
//! NAT either sits behind a *gateway* (a NAT, router, switch or kernel NAT) or on the
//! "internet", the root, where a packet goes straight to the device owning its destination
//! address through the link between the two. Leaving a device, a packet goes to a neighbour
//! under the same gateway when the two are linked directly, and otherwise up to the gateway;
//! a gateway sends it down to the child whose subtree owns the destination (a host's address,
//! a NAT's public address, a router's subnets, anything behind a switch) or further up.
//! Packets with nowhere to go, or between devices with no link between them, are dropped.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::forward::{Faults, Forwarder, Port, SharedStats};
use crate::link::{Link, LinkConfig, LinkStats};
use crate::nat::{Nat, NatConfig, NatStats};
use crate::pcap::PcapWriter;
use crate::sys;
use crate::topology::Capture;
pub use crate::topology::Node;

/// Name of the interface inside every host.
pub const INTERFACE_NAME: &str = "sim0";

/// The MAC address of a host's interface: locally administered, from its IPv4 address.
pub(crate) fn host_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x00, a, b, c, d]
}

/// MTU of the hosts' devices.
pub const HOST_MTU: u32 = 1500;

/// Why the simulation could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// Creating namespaces needs privilege.
    #[error(
        "creating a network namespace was refused ({0}): the simulator needs root (CAP_NET_ADMIN): run the command with sudo, or inside a user namespace with `unshare -Urn <command>`"
    )]
    NeedsPrivilege(io::Error),
    /// A system call failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        error: io::Error,
    },
    /// A program the simulation needs is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// Two devices want the same address.
    #[error("address {0} is already taken")]
    AddressTaken(Ipv4Addr),
    /// Two devices want the same name.
    #[error("the name {0:?} is already taken")]
    NameTaken(String),
    /// Only NATs, routers, switches and kernel NATs can have devices behind them.
    #[error("{0:?} is not a gateway: only NATs, routers, switches and kernel NATs have devices behind them")]
    NotAGateway(String),
    /// A kernel NAT was asked for a behaviour the kernel has no rule for.
    #[error("a kernel NAT cannot {0}")]
    NoKernelEquivalent(&'static str),
    /// The topology cannot change once started.
    #[error("the simulation is already running")]
    Running,
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SimError {
    move |error| SimError::Io { what, error }
}

/// A host: a network namespace whose only interface besides `lo` is a TAP device with the
/// host's address. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Host {
    inner: Arc<HostInner>,
}

#[derive(Debug)]
struct HostInner {
    name: String,
    ip: Ipv4Addr,
    index: usize,
    namespace: File,
}

impl Host {
    /// The host's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.inner.ip
    }

    /// Runs `make()`'s future on a new thread inside the host's namespace, with its own
    /// current-thread Tokio runtime; the handle returns the future's output.
    pub fn spawn<F, Fut, T>(&self, make: F) -> JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.spawn_sync(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            runtime.block_on(make())
        })
    }

    /// Runs `f` on a new thread inside the host's namespace.
    pub fn spawn_sync<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let host = self.inner.clone();
        std::thread::Builder::new()
            .name(format!("netsim-{}", host.name))
            .spawn(move || {
                sys::enter_namespace(&host.namespace).expect("entering a host's namespace");
                f()
            })
            .expect("spawning a host thread")
    }

    /// A command that runs inside the host's namespace (like `ip netns exec`). The host must
    /// outlive the spawn.
    pub fn command(&self, program: &str) -> std::process::Command {
        command_in(&self.inner.namespace, program)
    }

    /// The host's namespace file (an `nsfs` handle): its inode identifies the namespace.
    pub fn namespace(&self) -> &File {
        &self.inner.namespace
    }
}

/// A command whose process enters the namespace `namespace` before it runs `program`.
pub(crate) fn command_in(namespace: &File, program: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(program);
    let fd = namespace.as_raw_fd();
    // SAFETY: setns is async-signal-safe and `fd` stays open while the namespace's owner lives.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Something links can join.
pub trait AsNode {
    /// Its node.
    fn node(&self) -> Node;
}

impl AsNode for Host {
    fn node(&self) -> Node {
        Node::Host(self.inner.index)
    }
}

impl AsNode for Node {
    fn node(&self) -> Node {
        *self
    }
}

/// A NAT, router, switch or kernel NAT in the simulation.
#[derive(Debug, Clone)]
pub struct Device {
    node: Node,
    ip: Option<Ipv4Addr>,
    namespace: Option<Arc<File>>,
}

impl Device {
    /// The device's address on its upstream side: a NAT's public address, a router's address;
    /// `None` for a switch.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip
    }

    /// For a kernel NAT, a command run inside its router namespace (to inspect conntrack or
    /// the ruleset); `None` for the simulated devices, which have no namespace.
    pub fn command(&self, program: &str) -> Option<std::process::Command> {
        self.namespace.as_ref().map(|ns| command_in(ns, program))
    }
}

impl AsNode for Device {
    fn node(&self) -> Node {
        self.node
    }
}

/// How a kernel NAT picks external ports (the nftables `masquerade` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelPorts {
    /// Plain `masquerade`: keep the source port when it is free.
    Masquerade,
    /// `masquerade random`.
    Random,
    /// `masquerade fully-random`.
    FullyRandom,
}

impl KernelPorts {
    /// Every variant.
    pub const ALL: [KernelPorts; 3] = [KernelPorts::Masquerade, KernelPorts::Random, KernelPorts::FullyRandom];

    fn flag(self) -> &'static str {
        match self {
            KernelPorts::Masquerade => "",
            KernelPorts::Random => " random",
            KernelPorts::FullyRandom => " fully-random",
        }
    }

    /// The nftables statement, for reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelPorts::Masquerade => "masquerade",
            KernelPorts::Random => "masquerade random",
            KernelPorts::FullyRandom => "masquerade fully-random",
        }
    }
}

/// A real Linux NAT: a router namespace with an upstream TUN device `wan0` holding the public
/// address and a downstream TUN device `lan0` holding the LAN gateway address, IP forwarding
/// on, and an nftables `masquerade` rule on `wan0`. The simulation links both sides like any
/// other device, so impairments and captures apply unchanged; the translation itself is the
/// kernel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNatConfig {
    /// Address on the upstream side.
    pub public_ip: Ipv4Addr,
    /// Gateway address on the LAN side.
    pub lan_ip: Ipv4Addr,
    /// LAN prefix length.
    pub lan_prefix: u8,
    /// Port selection.
    pub ports: KernelPorts,
    /// Sets conntrack's UDP timeouts (`nf_conntrack_udp_timeout` and `_stream`) in the router
    /// namespace; `None` keeps the kernel's (30 s and 120 s).
    pub udp_timeout: Option<Duration>,
    /// What meets a TCP segment from outside that is no reply: `Reset`, the router's own stack
    /// answers (no firewall); `Drop`, an input rule drops new TCP on `wan0` before conntrack
    /// confirms it (a router with a firewall, as most consumer firmware has).
    pub unsolicited_tcp: crate::nat::UnsolicitedTcp,
}

/// The nftables ruleset of a kernel NAT.
fn kernel_nat_ruleset(ports: KernelPorts, unsolicited_tcp: crate::nat::UnsolicitedTcp) -> Result<String, SimError> {
    let input = match unsolicited_tcp {
        crate::nat::UnsolicitedTcp::DropThenUnreachable => {
            return Err(SimError::NoKernelEquivalent(
                "answer an unsolicited SYN 6 s late (nftables' reject answers at once): use Drop or Reset",
            ));
        }
        crate::nat::UnsolicitedTcp::Reset => "",
        crate::nat::UnsolicitedTcp::Drop => {
            "  chain input {\n    type filter hook input priority filter; policy accept;\n    iifname \"wan0\" meta l4proto tcp ct state new drop\n  }\n"
        }
    };
    Ok(format!(
        "table ip warren_netsim {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"wan0\" masquerade{}\n  }}\n{input}}}\n",
        ports.flag()
    ))
}

/// Builds and runs a simulation. Dropping it stops the forwarder; the namespaces and TAP/TUN
/// devices disappear with the last [`Host`] (and kernel-NAT [`Device`]) handle.
pub struct Simulation {
    seed: u64,
    hosts: Vec<(Host, File)>,
    /// Further addresses of hosts (index into `hosts`, address).
    extra_addrs: Vec<(usize, Ipv4Addr)>,
    nats: Vec<NatConfig>,
    routers: Vec<(Ipv4Addr, Vec<(Ipv4Addr, u8)>)>,
    switches: usize,
    kernel_nats: Vec<KernelNatParts>,
    names: HashMap<Node, String>,
    parent: HashMap<Node, Node>,
    links: HashMap<(Node, Node), Link>,
    captures: HashMap<(Node, Node), Capture>,
    interface_captures: HashMap<usize, Capture>,
    stats: Arc<SharedStats>,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
    forwarder: Option<JoinHandle<()>>,
}

struct KernelNatParts {
    public_ip: Ipv4Addr,
    wan: File,
    lan: File,
    _namespace: Arc<File>,
}

impl Simulation {
    /// An empty simulation; `seed` drives every random choice of its devices.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            hosts: Vec::new(),
            extra_addrs: Vec::new(),
            nats: Vec::new(),
            routers: Vec::new(),
            switches: 0,
            kernel_nats: Vec::new(),
            names: HashMap::new(),
            parent: HashMap::new(),
            links: HashMap::new(),
            captures: HashMap::new(),
            interface_captures: HashMap::new(),
            stats: Arc::default(),
            faults: Arc::default(),
            stop: Arc::default(),
            forwarder: None,
        }
    }

    /// The seed this simulation was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Checks that a new device may be added with this name, behind this gateway.
    fn admit(&self, name: &str, behind: Option<&dyn AsNode>) -> Result<(), SimError> {
        if self.forwarder.is_some() {
            return Err(SimError::Running);
        }
        if self.names.values().any(|n| n == name) {
            return Err(SimError::NameTaken(name.to_owned()));
        }
        if let Some(gateway) = behind {
            let node = gateway.node();
            if matches!(node, Node::Host(_)) {
                return Err(SimError::NotAGateway(self.names.get(&node).cloned().unwrap_or_default()));
            }
        }
        Ok(())
    }

    /// Records a new device's name and gateway.
    fn register(&mut self, node: Node, name: &str, behind: Option<&dyn AsNode>) {
        self.names.insert(node, name.to_owned());
        if let Some(gateway) = behind {
            self.parent.insert(node, gateway.node());
        }
    }

    /// Is `ip` already the address of a device in the same address space as a new device
    /// behind `behind`? (Addresses behind different NATs may repeat.)
    fn address_taken(&self, ip: Ipv4Addr, behind: Option<Node>) -> bool {
        let realm = |node: Option<Node>| {
            let mut node = node;
            while let Some(n) = node {
                if matches!(n, Node::Nat(_) | Node::KernelNat(_)) {
                    return Some(n);
                }
                node = self.parent.get(&n).copied();
            }
            None
        };
        let new_realm = realm(behind);
        let hosts = self.hosts.iter().map(|(h, _)| (h.node(), h.ip()));
        let extra = self.extra_addrs.iter().map(|(i, ip)| (self.hosts[*i].0.node(), *ip));
        let hosts = hosts.chain(extra);
        let nats = self.nats.iter().enumerate().map(|(i, c)| (Node::Nat(i), c.public_ip));
        let routers = self.routers.iter().enumerate().map(|(i, r)| (Node::Router(i), r.0));
        let kernel = self.kernel_nats.iter().enumerate().map(|(i, k)| (Node::KernelNat(i), k.public_ip));
        hosts
            .chain(nats)
            .chain(routers)
            .chain(kernel)
            .any(|(node, owned)| owned == ip && realm(self.parent.get(&node).copied()) == new_realm)
    }

    /// Adds a host with address `ip/prefix` in a new network namespace, on the internet.
    pub fn add_host(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<Host, SimError> {
        self.add_host_inner(name, ip, prefix, None)
    }

    /// Adds a host with address `ip/prefix` behind `gateway` (a NAT, router, switch or kernel
    /// NAT; behind a NAT the address is private to that NAT's inside).
    pub fn add_host_behind(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: &impl AsNode,
    ) -> Result<Host, SimError> {
        self.add_host_inner(name, ip, prefix, Some(gateway))
    }

    fn add_host_inner(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
        behind: Option<&dyn AsNode>,
    ) -> Result<Host, SimError> {
        self.admit(name, behind)?;
        if self.address_taken(ip, behind.map(|b| b.node())) {
            return Err(SimError::AddressTaken(ip));
        }
        let (tun, namespace) = in_new_namespace(move || {
            // The simulator carries IPv4 only: IPv6 off, so the host sends no router
            // solicitations or MLD reports nobody would see (a kernel without IPv6 has no
            // such setting, which is fine).
            for key in ["all", "default"] {
                let _ = sys::write_sysctl(&format!("net/ipv6/conf/{key}/disable_ipv6"), "1");
            }
            let tap =
                sys::create_offload_tap(INTERFACE_NAME, host_mac(ip)).map_err(io_err("creating the TAP device"))?;
            sys::configure(INTERFACE_NAME, ip, prefix, HOST_MTU).map_err(io_err("configuring the TAP device"))?;
            Ok(tap)
        })?;
        let index = self.hosts.len();
        let host = Host { inner: Arc::new(HostInner { name: name.to_owned(), ip, index, namespace }) };
        self.register(host.node(), name, behind);
        self.hosts.push((host.clone(), tun));
        Ok(host)
    }

    /// Gives `host` a further address (a /32 on its interface), routed to it like its first:
    /// for servers that need two addresses, such as an RFC 5780 STUN server. Needs the `ip`
    /// program (Debian package `iproute2`).
    pub fn add_address(&mut self, host: &Host, ip: Ipv4Addr) -> Result<(), SimError> {
        if self.forwarder.is_some() {
            // The forwarder's routes were fixed at start: the address would be unreachable.
            return Err(SimError::Running);
        }
        let node = host.node();
        if self.address_taken(ip, self.parent.get(&node).copied()) {
            return Err(SimError::AddressTaken(ip));
        }
        let status = host
            .command("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", INTERFACE_NAME])
            .status()
            .map_err(io_err("running ip addr add"))?;
        if !status.success() {
            return Err(io_err("adding an address")(std::io::Error::other(format!(
                "ip addr add {ip} failed: {status}"
            ))));
        }
        self.extra_addrs.push((host.inner.index, ip));
        Ok(())
    }

    /// Adds a simulated NAT; `behind` puts it inside another gateway (as a home router behind
    /// a carrier NAT).
    pub fn add_nat(&mut self, name: &str, config: NatConfig, behind: Option<&dyn AsNode>) -> Result<Device, SimError> {
        self.admit(name, behind)?;
        if self.address_taken(config.public_ip, behind.map(|b| b.node())) {
            return Err(SimError::AddressTaken(config.public_ip));
        }
        let node = Node::Nat(self.nats.len());
        let device = Device { node, ip: Some(config.public_ip), namespace: None };
        self.register(node, name, behind);
        self.nats.push(config);
        Ok(device)
    }

    /// Adds a router with address `ip` that owns `subnets` (address, prefix length): packets
    /// for those subnets that reach its gateway are sent down to it, and it sends them on to
    /// the child owning the destination. Routers decrement the TTL.
    pub fn add_router(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        subnets: &[(Ipv4Addr, u8)],
        behind: Option<&dyn AsNode>,
    ) -> Result<Device, SimError> {
        self.admit(name, behind)?;
        if self.address_taken(ip, behind.map(|b| b.node())) {
            return Err(SimError::AddressTaken(ip));
        }
        let node = Node::Router(self.routers.len());
        self.register(node, name, behind);
        self.routers.push((ip, subnets.to_vec()));
        Ok(Device { node, ip: Some(ip), namespace: None })
    }

    /// Adds a switch: one layer-2 segment. Unicast goes to the port owning the destination
    /// (or up to the switch's gateway); multicast and broadcast go to every other port.
    pub fn add_switch(&mut self, name: &str, behind: Option<&dyn AsNode>) -> Result<Device, SimError> {
        self.admit(name, behind)?;
        let node = Node::Switch(self.switches);
        self.register(node, name, behind);
        self.switches += 1;
        Ok(Device { node, ip: None, namespace: None })
    }

    /// Adds a real Linux NAT (see [`KernelNatConfig`]). Needs the `nft` program (Debian
    /// package `nftables`).
    pub fn add_kernel_nat(
        &mut self,
        name: &str,
        config: KernelNatConfig,
        behind: Option<&dyn AsNode>,
    ) -> Result<Device, SimError> {
        self.admit(name, behind)?;
        if self.address_taken(config.public_ip, behind.map(|b| b.node())) {
            return Err(SimError::AddressTaken(config.public_ip));
        }
        let ruleset = kernel_nat_ruleset(config.ports, config.unsolicited_tcp)?;
        let KernelNatConfig { public_ip, lan_ip, lan_prefix, .. } = config;
        let ((wan, lan), namespace) = in_new_namespace(move || {
            let wan = sys::create_offload_tun("wan0").map_err(io_err("creating the kernel NAT's wan0"))?;
            sys::configure("wan0", public_ip, 32, HOST_MTU).map_err(io_err("configuring wan0"))?;
            let lan = sys::create_offload_tun("lan0").map_err(io_err("creating the kernel NAT's lan0"))?;
            sys::configure_interface("lan0", lan_ip, lan_prefix, HOST_MTU).map_err(io_err("configuring lan0"))?;
            sys::write_sysctl("net/ipv4/ip_forward", "1").map_err(io_err("enabling IP forwarding"))?;
            Ok((wan, lan))
        })?;
        run_nft(&namespace, &ruleset)?;
        if let Some(timeout) = config.udp_timeout {
            let secs = timeout.as_secs().max(1).to_string();
            std::thread::scope(|scope| {
                scope
                    .spawn(|| -> Result<(), SimError> {
                        sys::enter_namespace(&namespace).map_err(io_err("entering the kernel NAT's namespace"))?;
                        for key in ["nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"] {
                            sys::write_sysctl(&format!("net/netfilter/{key}"), &secs)
                                .map_err(io_err("setting conntrack's UDP timeout"))?;
                        }
                        Ok(())
                    })
                    .join()
                    .expect("the sysctl thread does not panic")
            })?;
        }
        let namespace = Arc::new(namespace);
        let node = Node::KernelNat(self.kernel_nats.len());
        self.register(node, name, behind);
        self.kernel_nats.push(KernelNatParts { public_ip, wan, lan, _namespace: namespace.clone() });
        Ok(Device { node, ip: Some(public_ip), namespace: Some(namespace) })
    }

    /// Connects `a` and `b` with a link in each direction, both with `config`.
    pub fn link(&mut self, a: &impl AsNode, b: &impl AsNode, config: LinkConfig) {
        let (a, b) = (a.node(), b.node());
        for (from, to) in [(a, b), (b, a)] {
            let id = |n: Node| match n {
                Node::Host(i) => i as u64,
                Node::Nat(i) => (1 << 16) | i as u64,
                Node::Router(i) => (2 << 16) | i as u64,
                Node::Switch(i) => (3 << 16) | i as u64,
                Node::KernelNat(i) => (4 << 16) | i as u64,
            };
            let seed = self.seed ^ (id(from) << 32) ^ id(to);
            // "Fragmentation needed" comes from the node in front of the small link, unless the
            // configuration names a router: from 0.0.0.0 a Linux host drops it as martian and
            // path-MTU discovery black-holes.
            let mut config = config.clone();
            if config.router.is_unspecified()
                && let Some(ip) = self.address_of(from)
            {
                config.router = ip;
            }
            self.links.insert((from, to), Link::new(config, seed));
        }
    }

    /// The address a node answers from: a host's, a NAT's public one, a router's; none for a
    /// switch.
    fn address_of(&self, node: Node) -> Option<Ipv4Addr> {
        match node {
            Node::Host(i) => self.hosts.get(i).map(|(host, _)| host.ip()),
            Node::Nat(i) => self.nats.get(i).map(|config| config.public_ip),
            Node::Router(i) => self.routers.get(i).map(|(ip, _)| *ip),
            Node::KernelNat(i) => self.kernel_nats.get(i).map(|parts| parts.public_ip),
            Node::Switch(_) => None,
        }
    }

    /// Writes every packet the link between `a` and `b` delivers, both ways, to a pcap file at
    /// `path` (created or truncated). The file is complete once the simulation is dropped.
    pub fn capture(&mut self, a: &impl AsNode, b: &impl AsNode, path: &Path) -> Result<(), SimError> {
        let capture = open_capture(path)?;
        for key in [(a.node(), b.node()), (b.node(), a.node())] {
            self.captures.insert(key, capture.clone());
        }
        Ok(())
    }

    /// Writes every packet `host`'s interface sends or receives to a pcap file at `path`: what
    /// a capture on `sim0` inside the host would show.
    pub fn capture_interface(&mut self, host: &Host, path: &Path) -> Result<(), SimError> {
        self.interface_captures.insert(host.inner.index, open_capture(path)?);
        Ok(())
    }

    /// Per-link counters, by (from, to) device name: everything forwarded before the call is
    /// counted (the call waits for the forwarder's next pass).
    pub fn link_stats(&self) -> HashMap<(String, String), LinkStats> {
        self.stats.fresh(self.forwarder.is_some()).links.clone()
    }

    /// Per-NAT counters, by name, as fresh as [`link_stats`](Self::link_stats).
    pub fn nat_stats(&self) -> HashMap<String, NatStats> {
        self.stats.fresh(self.forwarder.is_some()).nats.clone()
    }

    /// Faults to inject before or while the simulation runs (blocked address pairs); the
    /// handle may be moved to any thread.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    /// Starts forwarding packets.
    pub fn start(&mut self) -> Result<(), SimError> {
        if self.forwarder.is_some() {
            return Err(SimError::Running);
        }
        let mut ports = Vec::new();
        let mut add_port = |file: &File, port: Port| -> Result<(), SimError> {
            let file = file.try_clone().map_err(io_err("cloning a TUN handle"))?;
            set_nonblocking(&file).map_err(io_err("making a TUN device non-blocking"))?;
            ports.push((file, port));
            Ok(())
        };
        for (index, (_, tun)) in self.hosts.iter().enumerate() {
            add_port(tun, Port::Host(index))?;
        }
        for (index, parts) in self.kernel_nats.iter().enumerate() {
            add_port(&parts.wan, Port::Wan(index))?;
            add_port(&parts.lan, Port::Lan(index))?;
        }
        let nats = self
            .nats
            .iter()
            .enumerate()
            .map(|(index, config)| Nat::new(config.clone(), self.seed ^ (0xa7 << 56) ^ index as u64))
            .collect();
        let mut owned = Vec::new();
        for (index, (host, _)) in self.hosts.iter().enumerate() {
            let extra = self.extra_addrs.iter().filter(|(i, _)| *i == index).map(|(_, ip)| (*ip, 32));
            owned.push((host.node(), std::iter::once((host.ip(), 32)).chain(extra).collect()));
        }
        for (index, config) in self.nats.iter().enumerate() {
            owned.push((Node::Nat(index), vec![(config.public_ip, 32)]));
        }
        for (index, (ip, subnets)) in self.routers.iter().enumerate() {
            let mut prefixes = vec![(*ip, 32)];
            prefixes.extend(subnets.iter().copied());
            owned.push((Node::Router(index), prefixes));
        }
        for (index, parts) in self.kernel_nats.iter().enumerate() {
            owned.push((Node::KernelNat(index), vec![(parts.public_ip, 32)]));
        }
        let forwarder = Forwarder::new(
            ports,
            nats,
            &owned,
            self.parent.clone(),
            self.names.clone(),
            std::mem::take(&mut self.links),
            std::mem::take(&mut self.captures),
            std::mem::take(&mut self.interface_captures),
            self.hosts.iter().map(|(host, _)| host_mac(host.ip())).collect(),
            self.stats.clone(),
            self.faults.clone(),
            self.stop.clone(),
        );
        self.forwarder = Some(
            std::thread::Builder::new()
                .name("netsim-forwarder".into())
                .spawn(move || forwarder.run())
                .map_err(io_err("spawning the forwarder"))?,
        );
        Ok(())
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(forwarder) = self.forwarder.take() {
            let _ = forwarder.join();
        }
    }
}

/// Runs `setup` on a thread moved into a new network namespace and returns its result with the
/// namespace's file.
pub(crate) fn in_new_namespace<T: Send + 'static>(
    setup: impl FnOnce() -> Result<T, SimError> + Send + 'static,
) -> Result<(T, File), SimError> {
    std::thread::spawn(move || {
        sys::unshare_network().map_err(SimError::NeedsPrivilege)?;
        let made = setup()?;
        let namespace = sys::current_namespace().map_err(io_err("opening the namespace"))?;
        Ok((made, namespace))
    })
    .join()
    .expect("the namespace thread does not panic")
}

/// Loads an nftables ruleset into `namespace`.
fn run_nft(namespace: &File, ruleset: &str) -> Result<(), SimError> {
    use std::io::Write;
    let mut child = command_in(namespace, "nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| SimError::Tool(format!("running nft: {e} (install the Debian package nftables)")))?;
    child.stdin.take().expect("piped stdin").write_all(ruleset.as_bytes()).map_err(io_err("writing to nft"))?;
    let output = child.wait_with_output().map_err(io_err("waiting for nft"))?;
    if !output.status.success() {
        return Err(SimError::Tool(format!(
            "nft refused the kernel NAT ruleset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

fn open_capture(path: &Path) -> Result<Capture, SimError> {
    let file = File::create(path).map_err(io_err("creating the capture file"))?;
    let writer = PcapWriter::new(io::BufWriter::new(file)).map_err(io_err("writing the capture header"))?;
    Ok(Arc::new(Mutex::new(writer)))
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on an open descriptor.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
