//! A running simulation: hosts in their own network namespaces, each with one TUN device, and a
//! forwarder thread that moves their packets through the sans-IO [`Link`] models.
//!
//! The topology is a graph of nodes (hosts and NATs) joined by links. A host or NAT may sit
//! behind a NAT; everything else is on the "internet", where a packet goes straight to the node
//! owning its destination address (a public host, or a NAT's public address) through the link
//! between the two. A packet from behind a NAT goes to that NAT (or straight to a neighbour
//! behind the same NAT), is translated, and travels on. Packets between nodes with no link
//! between them are dropped.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::link::{Link, LinkConfig, LinkStats};
use crate::nat::{Nat, NatConfig, NatStats, NatVerdict};
use crate::packet::{MAX_PACKET, Packet};
use crate::pcap::PcapWriter;
use crate::sys;

/// Name of the TUN device inside every host.
pub const TUN_NAME: &str = "sim0";

/// MTU of the hosts' TUN devices.
pub const HOST_MTU: u32 = 1500;

/// Why the simulation could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// Creating namespaces needs privilege.
    #[error(
        "creating a network namespace was refused ({0}): run as root (CAP_NET_ADMIN), e.g. `sudo cargo test`, or inside a user namespace: `unshare -Urn cargo test`"
    )]
    NeedsPrivilege(io::Error),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Two hosts want the same address.
    #[error("address {0} is already taken")]
    AddressTaken(Ipv4Addr),
    /// The topology cannot change once started.
    #[error("the simulation is already running")]
    Running,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SimError {
    move |source| SimError::Io { what, source }
}

/// A host: a network namespace whose only interface besides `lo` is a TUN device with the
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
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(program);
        let fd = self.inner.namespace.as_raw_fd();
        // SAFETY: setns is async-signal-safe and `fd` stays open while the host lives.
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
}

/// A node of the topology: a host or a NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// A host, by index.
    Host(usize),
    /// A NAT, by index.
    Nat(usize),
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

/// A NAT in the simulation.
#[derive(Debug, Clone)]
pub struct NatHandle {
    index: usize,
    public_ip: Ipv4Addr,
}

impl NatHandle {
    /// The NAT's public address.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }
}

impl AsNode for NatHandle {
    fn node(&self) -> Node {
        Node::Nat(self.index)
    }
}

/// Builds and runs a simulation. Dropping it stops the forwarder; the namespaces and TUN
/// devices disappear with the last [`Host`] handle.
pub struct Simulation {
    seed: u64,
    hosts: Vec<(Host, File)>,
    nats: Vec<(String, NatConfig)>,
    behind: HashMap<Node, usize>,
    links: HashMap<(Node, Node), Link>,
    captures: HashMap<(Node, Node), Capture>,
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    forwarder: Option<JoinHandle<()>>,
}

/// A pcap file shared by the two directions of a captured link.
type Capture = Arc<Mutex<PcapWriter<io::BufWriter<File>>>>;

impl Simulation {
    /// An empty simulation; `seed` drives every random choice of its devices.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            hosts: Vec::new(),
            nats: Vec::new(),
            behind: HashMap::new(),
            links: HashMap::new(),
            captures: HashMap::new(),
            stats: Arc::default(),
            stop: Arc::default(),
            forwarder: None,
        }
    }

    /// Adds a host with address `ip/prefix` in a new network namespace.
    pub fn add_host(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<Host, SimError> {
        if self.forwarder.is_some() {
            return Err(SimError::Running);
        }
        if self.hosts.iter().any(|(h, _)| h.ip() == ip) {
            return Err(SimError::AddressTaken(ip));
        }
        let made = std::thread::spawn(move || -> Result<(File, File), SimError> {
            sys::unshare_network().map_err(SimError::NeedsPrivilege)?;
            let tun = sys::create_tun(TUN_NAME).map_err(io_err("creating the TUN device"))?;
            sys::configure(TUN_NAME, ip, prefix, HOST_MTU).map_err(io_err("configuring the TUN device"))?;
            let namespace = sys::current_namespace().map_err(io_err("opening the namespace"))?;
            Ok((tun, namespace))
        })
        .join()
        .expect("the namespace thread does not panic")?;
        let (tun, namespace) = made;
        let host =
            Host { inner: Arc::new(HostInner { name: name.to_owned(), ip, index: self.hosts.len(), namespace }) };
        self.hosts.push((host.clone(), tun));
        Ok(host)
    }

    /// Adds a host with address `ip/prefix` behind `nat` (its address is then private to that
    /// NAT's inside).
    pub fn add_host_behind(&mut self, name: &str, ip: Ipv4Addr, prefix: u8, nat: &NatHandle) -> Result<Host, SimError> {
        let host = self.add_host(name, ip, prefix)?;
        self.behind.insert(host.node(), nat.index);
        Ok(host)
    }

    /// Adds a NAT; `behind` puts it inside another NAT (as a home router behind a carrier NAT).
    pub fn add_nat(
        &mut self,
        name: &str,
        config: NatConfig,
        behind: Option<&NatHandle>,
    ) -> Result<NatHandle, SimError> {
        if self.forwarder.is_some() {
            return Err(SimError::Running);
        }
        let handle = NatHandle { index: self.nats.len(), public_ip: config.public_ip };
        if let Some(outer) = behind {
            self.behind.insert(handle.node(), outer.index);
        }
        self.nats.push((name.to_owned(), config));
        Ok(handle)
    }

    /// Connects `a` and `b` with a link in each direction, both with `config`.
    pub fn link(&mut self, a: &impl AsNode, b: &impl AsNode, config: LinkConfig) {
        let (a, b) = (a.node(), b.node());
        for (from, to) in [(a, b), (b, a)] {
            let id = |n: Node| match n {
                Node::Host(i) => i as u64,
                Node::Nat(i) => (1 << 16) | i as u64,
            };
            let seed = self.seed ^ (id(from) << 32) ^ id(to);
            self.links.insert((from, to), Link::new(config.clone(), seed));
        }
    }

    /// Writes every packet the link between `a` and `b` delivers, both ways, to a pcap file at
    /// `path` (created or truncated). The file is complete once the simulation is dropped.
    pub fn capture(&mut self, a: &impl AsNode, b: &impl AsNode, path: &std::path::Path) -> Result<(), SimError> {
        let file = File::create(path).map_err(io_err("creating the capture file"))?;
        let writer = PcapWriter::new(io::BufWriter::new(file)).map_err(io_err("writing the capture header"))?;
        let capture = Arc::new(Mutex::new(writer));
        for key in [(a.node(), b.node()), (b.node(), a.node())] {
            self.captures.insert(key, capture.clone());
        }
        Ok(())
    }

    /// Per-link counters, by (from, to) node name, as of the last forwarder pass.
    pub fn link_stats(&self) -> HashMap<(String, String), LinkStats> {
        self.stats.lock().expect("stats lock").links.clone()
    }

    /// Per-NAT counters, by name, as of the last forwarder pass.
    pub fn nat_stats(&self) -> HashMap<String, NatStats> {
        self.stats.lock().expect("stats lock").nats.clone()
    }

    /// Starts forwarding packets.
    pub fn start(&mut self) -> Result<(), SimError> {
        if self.forwarder.is_some() {
            return Err(SimError::Running);
        }
        let mut tuns = Vec::new();
        let mut public = HashMap::new();
        let mut inside = HashMap::new();
        let mut names = HashMap::new();
        for (host, tun) in &self.hosts {
            let tun = tun.try_clone().map_err(io_err("cloning a TUN handle"))?;
            set_nonblocking(&tun).map_err(io_err("making a TUN device non-blocking"))?;
            match self.behind.get(&host.node()) {
                Some(&nat) => inside.insert((nat, host.ip()), host.node()),
                None => public.insert(host.ip(), host.node()),
            };
            names.insert(host.node(), host.name().to_owned());
            tuns.push(tun);
        }
        let mut nats = Vec::new();
        for (index, (name, config)) in self.nats.iter().enumerate() {
            let node = Node::Nat(index);
            match self.behind.get(&node) {
                Some(&outer) => inside.insert((outer, config.public_ip), node),
                None => public.insert(config.public_ip, node),
            };
            names.insert(node, name.clone());
            nats.push(Nat::new(config.clone(), self.seed ^ (0xa7 << 56) ^ index as u64));
        }
        let forwarder = Forwarder {
            tuns,
            nats,
            public,
            inside,
            behind: self.behind.clone(),
            names,
            links: std::mem::take(&mut self.links),
            captures: std::mem::take(&mut self.captures),
            stats: self.stats.clone(),
            stop: self.stop.clone(),
        };
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

/// Counters the forwarder publishes.
#[derive(Debug, Default)]
struct Stats {
    links: HashMap<(String, String), LinkStats>,
    nats: HashMap<String, NatStats>,
}

/// The thread that moves packets: reads every TUN device, routes by destination address,
/// runs the link and NAT models, writes what reaches a host.
struct Forwarder {
    tuns: Vec<File>,
    nats: Vec<Nat>,
    /// Owners of public addresses: hosts not behind a NAT, and outermost NATs.
    public: HashMap<Ipv4Addr, Node>,
    /// Owners of addresses inside each NAT.
    inside: HashMap<(usize, Ipv4Addr), Node>,
    behind: HashMap<Node, usize>,
    names: HashMap<Node, String>,
    links: HashMap<(Node, Node), Link>,
    captures: HashMap<(Node, Node), Capture>,
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
}

/// How long the forwarder sleeps at most, so it notices a stop request.
const IDLE_POLL: Duration = Duration::from_millis(20);

impl Forwarder {
    fn run(mut self) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut fds: Vec<libc::pollfd> =
            self.tuns.iter().map(|t| libc::pollfd { fd: t.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next = self.links.values().filter_map(|l| l.next_delivery()).min();
            let wait = next.map_or(IDLE_POLL, |at| at.saturating_duration_since(now).min(IDLE_POLL));
            let timeout_ms = wait.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: `fds` is a live array of pollfd of the given length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            let readable: Vec<usize> =
                fds.iter().enumerate().filter(|(_, fd)| fd.revents & libc::POLLIN != 0).map(|(i, _)| i).collect();
            for host in readable {
                // Read until the device is drained (the descriptor is non-blocking).
                while let Ok(n) = self.tuns[host].read(&mut buf) {
                    if let Ok(packet) = Packet::parse(buf[..n].to_vec()) {
                        let from = Node::Host(host);
                        if let Some(to) = self.next_hop(from, packet.dst()) {
                            self.send(from, to, packet, Instant::now());
                        }
                    }
                }
            }
            self.deliver(Instant::now());
            self.publish_stats();
        }
        for capture in self.captures.values() {
            let _ = capture.lock().expect("capture lock").flush();
        }
    }

    /// Where a packet leaving `from` for `dst` goes next: a neighbour behind the same NAT, the
    /// NAT `from` sits behind, or (on the internet) the owner of `dst`.
    fn next_hop(&self, from: Node, dst: Ipv4Addr) -> Option<Node> {
        match self.behind.get(&from) {
            Some(&nat) => match self.inside.get(&(nat, dst)) {
                Some(&neighbour) if neighbour != from && self.links.contains_key(&(from, neighbour)) => Some(neighbour),
                _ => Some(Node::Nat(nat)),
            },
            None => self.public.get(&dst).copied(),
        }
    }

    fn send(&mut self, from: Node, to: Node, packet: Packet, now: Instant) {
        let Some(link) = self.links.get_mut(&(from, to)) else { return };
        if let Some(reply) = link.send(packet, now) {
            // ICMP "fragmentation needed" goes back to the sender.
            self.arrive(from, to, reply, now);
        }
    }

    /// A packet reached node `at` over the link from `from`.
    fn arrive(&mut self, at: Node, from: Node, packet: Packet, now: Instant) {
        match at {
            Node::Host(host) => {
                let _ = self.tuns[host].write(packet.as_bytes());
            }
            Node::Nat(nat) => {
                let outbound = self.behind.get(&from) == Some(&nat);
                let verdict =
                    if outbound { self.nats[nat].outbound(packet, now) } else { self.nats[nat].inbound(packet, now) };
                let (next, packet) = match verdict {
                    NatVerdict::Forward(packet) if outbound => (self.next_hop(at, packet.dst()), packet),
                    NatVerdict::Forward(packet) | NatVerdict::Hairpin(packet) => {
                        (self.inside.get(&(nat, packet.dst())).copied(), packet)
                    }
                    NatVerdict::Reply(packet) => (Some(from), packet),
                    NatVerdict::Drop(_) => return,
                };
                if let Some(next) = next {
                    self.send(at, next, packet, now);
                }
            }
        }
    }

    fn deliver(&mut self, now: Instant) {
        // Deliveries may feed other links (through NATs); repeat until nothing more is due.
        loop {
            let mut due = Vec::new();
            for (&(from, to), link) in self.links.iter_mut() {
                while let Some(packet) = link.poll(now) {
                    due.push((from, to, packet));
                }
            }
            if due.is_empty() {
                return;
            }
            for (from, to, packet) in due {
                if let Some(capture) = self.captures.get(&(from, to)) {
                    let mut capture = capture.lock().expect("capture lock");
                    // A capture that cannot be written is not worth stopping the simulation.
                    let _ = capture.write_packet(std::time::SystemTime::now(), packet.as_bytes());
                }
                self.arrive(to, from, packet, now);
            }
        }
    }

    fn publish_stats(&self) {
        let mut stats = self.stats.lock().expect("stats lock");
        for (&(from, to), link) in &self.links {
            stats.links.insert((self.names[&from].clone(), self.names[&to].clone()), link.stats().clone());
        }
        for (index, nat) in self.nats.iter().enumerate() {
            stats.nats.insert(self.names[&Node::Nat(index)].clone(), nat.stats().clone());
        }
    }
}
