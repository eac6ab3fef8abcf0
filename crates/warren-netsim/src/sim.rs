//! A running simulation: hosts in their own network namespaces, each with one TUN device, and a
//! forwarder thread that moves their packets through the sans-IO [`Link`] models.
//!
//! So far hosts sit on one simulated switch: each ordered pair of hosts may have a link, and a
//! packet is delivered to the host owning its destination address through the link between
//! them. NATs and routers are not wired in yet (see docs/netsim.md).

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
use crate::packet::{MAX_PACKET, Packet};
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

/// Builds and runs a simulation. Dropping it stops the forwarder; the namespaces and TUN
/// devices disappear with the last [`Host`] handle.
pub struct Simulation {
    seed: u64,
    hosts: Vec<(Host, File)>,
    links: HashMap<(usize, usize), Link>,
    stats: Arc<Mutex<HashMap<(String, String), LinkStats>>>,
    stop: Arc<AtomicBool>,
    forwarder: Option<JoinHandle<()>>,
}

impl Simulation {
    /// An empty simulation; `seed` drives every random choice of its devices.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            hosts: Vec::new(),
            links: HashMap::new(),
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

    /// Connects `a` and `b` with a link in each direction, both with `config`.
    pub fn link(&mut self, a: &Host, b: &Host, config: LinkConfig) {
        for (from, to) in [(a, b), (b, a)] {
            let seed = self.seed ^ ((from.inner.index as u64) << 32) ^ (to.inner.index as u64);
            self.links.insert((from.inner.index, to.inner.index), Link::new(config.clone(), seed));
        }
    }

    /// Per-link counters, by (from, to) host name, as of the last forwarder pass.
    pub fn link_stats(&self) -> HashMap<(String, String), LinkStats> {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Starts forwarding packets.
    pub fn start(&mut self) -> Result<(), SimError> {
        if self.forwarder.is_some() {
            return Err(SimError::Running);
        }
        let mut tuns = Vec::new();
        let mut by_ip = HashMap::new();
        let mut names = Vec::new();
        for (host, tun) in &self.hosts {
            let tun = tun.try_clone().map_err(io_err("cloning a TUN handle"))?;
            set_nonblocking(&tun).map_err(io_err("making a TUN device non-blocking"))?;
            by_ip.insert(host.ip(), host.inner.index);
            names.push(host.name().to_owned());
            tuns.push(tun);
        }
        let forwarder = Forwarder {
            tuns,
            by_ip,
            names,
            links: std::mem::take(&mut self.links),
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

/// The thread that moves packets: reads every TUN device, routes by destination address,
/// runs the link models, writes what they deliver.
struct Forwarder {
    tuns: Vec<File>,
    by_ip: HashMap<Ipv4Addr, usize>,
    names: Vec<String>,
    links: HashMap<(usize, usize), Link>,
    stats: Arc<Mutex<HashMap<(String, String), LinkStats>>>,
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
            for from in readable {
                // Read until the device is drained (the descriptor is non-blocking).
                while let Ok(n) = self.tuns[from].read(&mut buf) {
                    if let Ok(packet) = Packet::parse(buf[..n].to_vec()) {
                        self.route(from, packet, Instant::now());
                    }
                }
            }
            self.deliver(Instant::now());
            self.publish_stats();
        }
    }

    fn route(&mut self, from: usize, packet: Packet, now: Instant) {
        let Some(&to) = self.by_ip.get(&packet.dst()) else { return };
        let Some(link) = self.links.get_mut(&(from, to)) else { return };
        if let Some(reply) = link.send(packet, now) {
            let _ = self.tuns[from].write(reply.as_bytes());
        }
    }

    fn deliver(&mut self, now: Instant) {
        for (&(_, to), link) in self.links.iter_mut() {
            while let Some(packet) = link.poll(now) {
                let _ = self.tuns[to].write(packet.as_bytes());
            }
        }
    }

    fn publish_stats(&self) {
        let mut stats = self.stats.lock().expect("stats lock");
        for (&(from, to), link) in &self.links {
            stats.insert((self.names[from].clone(), self.names[to].clone()), link.stats().clone());
        }
    }
}
