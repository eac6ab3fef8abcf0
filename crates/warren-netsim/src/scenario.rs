//! Scenario files: a topology and the command each host runs, in TOML. `warren netsim run`
//! loads one with [`Scenario::parse`] and runs it with [`Scenario::run`]. The format is in
//! docs/netsim.md; the shipped examples are in `scenarios/`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::link::{LinkConfig, LinkStats, Loss};
use crate::nat::{Filtering, Mapping, NatConfig, NatPreset, NatStats, PortAssignment, UnsolicitedTcp};
use crate::sim::{AsNode, Device, Host, KernelNatConfig, KernelPorts, SimError, Simulation};

/// Largest scenario file accepted.
pub const MAX_SCENARIO_BYTES: usize = 1 << 20;

/// Why a scenario could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file is not valid TOML for a scenario.
    #[error("not a valid scenario: {0}")]
    Syntax(String),
    /// The file is too large.
    #[error("the scenario is {0} bytes; the limit is {MAX_SCENARIO_BYTES}")]
    TooLarge(usize),
    /// The topology makes no sense.
    #[error("{0}")]
    Invalid(String),
    /// Building or running the simulation failed.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// Starting a host's command failed.
    #[error("starting {host}'s command: {source}")]
    Spawn {
        /// The host.
        host: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random choice.
    #[serde(default)]
    pub seed: u64,
    /// Hard limit for the whole run, in seconds: commands still running then are killed.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Simulated NATs.
    #[serde(default, rename = "nat")]
    pub nats: Vec<NatSpec>,
    /// Real Linux NATs.
    #[serde(default, rename = "kernel_nat")]
    pub kernel_nats: Vec<KernelNatSpec>,
    /// Routers.
    #[serde(default, rename = "router")]
    pub routers: Vec<RouterSpec>,
    /// Switches.
    #[serde(default, rename = "switch")]
    pub switches: Vec<SwitchSpec>,
    /// Hosts.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// Links.
    #[serde(default, rename = "link")]
    pub links: Vec<LinkSpec>,
}

fn default_timeout() -> u64 {
    60
}

/// A simulated NAT: a preset, with any field overridden.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatSpec {
    /// Unique name.
    pub name: String,
    /// Public address.
    pub public_ip: Ipv4Addr,
    /// Starting behaviour (`cgnat` is its carrier layer: put a home NAT behind it).
    #[serde(default = "default_preset")]
    pub preset: NatPreset,
    /// Overrides.
    pub mapping: Option<Mapping>,
    /// Overrides.
    pub filtering: Option<Filtering>,
    /// Overrides.
    pub ports: Option<PortAssignment>,
    /// Overrides: `[first, last]`.
    pub port_range: Option<[u16; 2]>,
    /// Overrides.
    pub hairpinning: Option<bool>,
    /// Overrides.
    pub udp_timeout_secs: Option<u64>,
    /// Overrides.
    pub unsolicited_tcp: Option<UnsolicitedTcp>,
    /// Overrides.
    pub block_udp: Option<bool>,
    /// The gateway this NAT sits behind.
    pub behind: Option<String>,
}

fn default_preset() -> NatPreset {
    NatPreset::PortRestricted
}

impl NatSpec {
    fn config(&self) -> NatConfig {
        let mut config = self.preset.configs(&vec![self.public_ip; self.preset.layers()]).pop().expect("a layer");
        config.mapping = self.mapping.unwrap_or(config.mapping);
        config.filtering = self.filtering.unwrap_or(config.filtering);
        config.ports = self.ports.unwrap_or(config.ports);
        if let Some([first, last]) = self.port_range {
            config.port_range = first..=last;
        }
        config.hairpinning = self.hairpinning.unwrap_or(config.hairpinning);
        if let Some(secs) = self.udp_timeout_secs {
            config.udp_timeout = Duration::from_secs(secs);
        }
        config.unsolicited_tcp = self.unsolicited_tcp.unwrap_or(config.unsolicited_tcp);
        config.block_udp = self.block_udp.unwrap_or(config.block_udp);
        config
    }
}

/// A real Linux NAT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelNatSpec {
    /// Unique name.
    pub name: String,
    /// Public address.
    pub public_ip: Ipv4Addr,
    /// LAN gateway address and prefix, `"192.168.1.1/24"`.
    pub lan: String,
    /// Port selection.
    #[serde(default = "default_kernel_ports")]
    pub ports: KernelPorts,
    /// conntrack's UDP timeout.
    pub udp_timeout_secs: Option<u64>,
    /// The gateway this NAT sits behind.
    pub behind: Option<String>,
}

fn default_kernel_ports() -> KernelPorts {
    KernelPorts::Masquerade
}

/// A router.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSpec {
    /// Unique name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Subnets it owns, `"10.1.0.0/16"`.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// The gateway it sits behind.
    pub behind: Option<String>,
}

/// A switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    /// Unique name.
    pub name: String,
    /// The gateway it sits behind.
    pub behind: Option<String>,
}

/// A host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Unique name.
    pub name: String,
    /// Address and prefix, `"10.0.0.1/24"`.
    pub ip: String,
    /// The gateway it sits behind.
    pub behind: Option<String>,
    /// Shell command (`sh -c`) run in the host; none leaves the host idle.
    pub run: Option<String>,
    /// Seconds to wait before starting the command.
    #[serde(default)]
    pub start_after_secs: f64,
    /// A daemon is stopped when every other command has finished, instead of awaited.
    #[serde(default)]
    pub daemon: bool,
    /// Write the host interface's packets to this pcap file.
    pub capture: Option<PathBuf>,
}

/// A link between two devices, the same both ways.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// The two devices.
    pub between: [String; 2],
    /// One-way delay.
    #[serde(default)]
    pub latency_ms: f64,
    /// Delay varies uniformly by ± this.
    #[serde(default)]
    pub jitter_ms: f64,
    /// May jittered packets overtake each other?
    #[serde(default)]
    pub reorder: bool,
    /// Random loss probability.
    #[serde(default)]
    pub loss: f64,
    /// Bursty loss instead: `{ to_bad, to_good, good_loss, bad_loss }`.
    pub burst_loss: Option<BurstLoss>,
    /// Duplication probability.
    #[serde(default)]
    pub duplicate: f64,
    /// Bandwidth limit.
    pub bandwidth_mbps: Option<f64>,
    /// Drop-tail queue size.
    pub queue_bytes: Option<usize>,
    /// MTU.
    pub mtu: Option<usize>,
    /// Write the link's packets to this pcap file.
    pub capture: Option<PathBuf>,
}

/// Gilbert-Elliott parameters.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstLoss {
    /// P(good → bad) per packet.
    pub to_bad: f64,
    /// P(bad → good) per packet.
    pub to_good: f64,
    /// Loss in the good state.
    pub good_loss: f64,
    /// Loss in the bad state.
    pub bad_loss: f64,
}

impl LinkSpec {
    fn config(&self) -> Result<LinkConfig, ScenarioError> {
        let probability = |what: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(p)
            } else {
                Err(ScenarioError::Invalid(format!("link {:?}: {what} {p} is not a probability", self.between)))
            }
        };
        let millis = |what: &str, ms: f64| {
            if ms.is_finite() && (0.0..=3_600_000.0).contains(&ms) {
                Ok(Duration::from_secs_f64(ms / 1e3))
            } else {
                Err(ScenarioError::Invalid(format!("link {:?}: {what} {ms} ms is out of range", self.between)))
            }
        };
        let loss = match self.burst_loss {
            Some(b) => Loss::GilbertElliott {
                to_bad: probability("to_bad", b.to_bad)?,
                to_good: probability("to_good", b.to_good)?,
                good_loss: probability("good_loss", b.good_loss)?,
                bad_loss: probability("bad_loss", b.bad_loss)?,
            },
            None if self.loss > 0.0 => Loss::Random(probability("loss", self.loss)?),
            None => Loss::None,
        };
        let defaults = LinkConfig::default();
        Ok(LinkConfig {
            latency: millis("latency", self.latency_ms)?,
            jitter: millis("jitter", self.jitter_ms)?,
            reorder: self.reorder,
            loss,
            duplicate: probability("duplicate", self.duplicate)?,
            bandwidth_bps: match self.bandwidth_mbps {
                Some(mbps) if mbps.is_finite() && mbps > 0.0 => Some((mbps * 1e6) as u64),
                Some(mbps) => {
                    return Err(ScenarioError::Invalid(format!("link {:?}: bandwidth {mbps} Mbit/s", self.between)));
                }
                None => None,
            },
            queue_bytes: self.queue_bytes.unwrap_or(defaults.queue_bytes),
            mtu: match self.mtu {
                Some(mtu) if (68..=65_535).contains(&mtu) => mtu,
                Some(mtu) => return Err(ScenarioError::Invalid(format!("link {:?}: MTU {mtu}", self.between))),
                None => defaults.mtu,
            },
            router: defaults.router,
        })
    }
}

/// Any device of a scenario.
#[derive(Debug, Clone, Copy)]
enum Spec<'a> {
    Nat(&'a NatSpec),
    KernelNat(&'a KernelNatSpec),
    Router(&'a RouterSpec),
    Switch(&'a SwitchSpec),
    Host(&'a HostSpec),
}

impl<'a> Spec<'a> {
    fn name(&self) -> &'a str {
        match self {
            Spec::Nat(s) => &s.name,
            Spec::KernelNat(s) => &s.name,
            Spec::Router(s) => &s.name,
            Spec::Switch(s) => &s.name,
            Spec::Host(s) => &s.name,
        }
    }

    fn behind(&self) -> Option<&'a str> {
        match self {
            Spec::Nat(s) => s.behind.as_deref(),
            Spec::KernelNat(s) => s.behind.as_deref(),
            Spec::Router(s) => s.behind.as_deref(),
            Spec::Switch(s) => s.behind.as_deref(),
            Spec::Host(s) => s.behind.as_deref(),
        }
    }
}

/// Parses `"a.b.c.d/n"`.
fn parse_prefix(text: &str) -> Result<(Ipv4Addr, u8), ScenarioError> {
    let bad = || ScenarioError::Invalid(format!("{text:?} is not an IPv4 address with a prefix, like 10.0.0.1/24"));
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((ip.parse().map_err(|_| bad())?, prefix))
}

/// How a host's command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "code")]
pub enum Outcome {
    /// It exited with this code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// A daemon, stopped at the end.
    Stopped,
    /// Still running at the scenario's timeout, then killed.
    TimedOut,
    /// The host ran no command.
    Idle,
}

impl Outcome {
    /// Did this host do what was asked?
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Exited(Some(0)) | Outcome::Stopped | Outcome::Idle)
    }
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Each host's outcome, in file order.
    pub hosts: Vec<(String, Outcome)>,
    /// Each link direction's counters, sorted.
    pub links: Vec<LinkSummary>,
    /// Each simulated NAT's counters, sorted by name.
    pub nats: Vec<NatSummary>,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

impl Summary {
    /// Did every host do what was asked?
    pub fn ok(&self) -> bool {
        self.hosts.iter().all(|(_, o)| o.ok())
    }
}

/// One link direction's counters.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSummary {
    /// Sending device.
    pub from: String,
    /// Receiving device.
    pub to: String,
    /// Packets offered.
    pub offered: u64,
    /// Packets delivered.
    pub forwarded: u64,
    /// Dropped by the loss model.
    pub lost: u64,
    /// Dropped by the full queue.
    pub queue_drops: u64,
    /// Dropped for the MTU.
    pub mtu_drops: u64,
}

/// One NAT's counters.
#[derive(Debug, Clone, Serialize)]
pub struct NatSummary {
    /// The NAT.
    pub name: String,
    /// Mappings made.
    pub mappings: u64,
    /// Packets translated outbound.
    pub outbound: u64,
    /// Packets translated inbound.
    pub inbound: u64,
    /// Packets dropped.
    pub dropped: u64,
}

/// A line a host's command printed.
#[derive(Debug, Clone)]
pub struct Line {
    /// The host.
    pub host: String,
    /// Printed on stderr?
    pub stderr: bool,
    /// The text, without the newline.
    pub text: String,
}

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Extra environment for every command (the CLI passes `WARREN`, its own path).
    pub env: Vec<(String, String)>,
    /// Relative capture paths are resolved here (default: the current directory).
    pub capture_dir: Option<PathBuf>,
    /// The scenario file's directory, given to commands as `NETSIM_SCENARIO_DIR` (for scripts
    /// shipped next to it).
    pub scenario_dir: Option<PathBuf>,
}

/// The environment variable naming a device's address: `NETSIM_IP_` and the name upper-cased,
/// `-` as `_`.
pub fn ip_variable(name: &str) -> String {
    format!("NETSIM_IP_{}", name.to_uppercase().replace('-', "_"))
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        if text.len() > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge(text.len()));
        }
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Syntax(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let size = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
        if size > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge(size));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::Invalid(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Every device, in file order within each kind.
    fn specs(&self) -> Vec<Spec<'_>> {
        let mut specs = Vec::new();
        specs.extend(self.nats.iter().map(Spec::Nat));
        specs.extend(self.kernel_nats.iter().map(Spec::KernelNat));
        specs.extend(self.routers.iter().map(Spec::Router));
        specs.extend(self.switches.iter().map(Spec::Switch));
        specs.extend(self.hosts.iter().map(Spec::Host));
        specs
    }

    /// The devices in an order where every gateway comes before what sits behind it.
    fn build_order(&self) -> Result<Vec<Spec<'_>>, ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        let specs = self.specs();
        let mut kinds: HashMap<&str, &Spec<'_>> = HashMap::new();
        for spec in &specs {
            if spec.name().is_empty() || spec.name().len() > 32 {
                return invalid(format!("device name {:?} must be 1 to 32 characters", spec.name()));
            }
            if kinds.insert(spec.name(), spec).is_some() {
                return invalid(format!("the name {:?} is used twice", spec.name()));
            }
        }
        for spec in &specs {
            if let Some(gateway) = spec.behind() {
                match kinds.get(gateway) {
                    None => return invalid(format!("{} is behind {gateway:?}, which is not defined", spec.name())),
                    Some(Spec::Host(_)) => {
                        return invalid(format!("{} is behind {gateway:?}, which is a host", spec.name()));
                    }
                    Some(_) => {}
                }
            }
        }
        let mut built: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut order = Vec::new();
        let mut left = specs;
        while !left.is_empty() {
            let (ready, waiting): (Vec<_>, Vec<_>) =
                left.into_iter().partition(|s| s.behind().is_none_or(|g| built.contains(g)));
            if ready.is_empty() {
                return invalid(format!("{} sit behind each other in a loop", waiting[0].name()));
            }
            built.extend(ready.iter().map(|s| s.name()));
            order.extend(ready);
            left = waiting;
        }
        Ok(order)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        let order = self.build_order()?;
        let names: std::collections::HashSet<&str> = order.iter().map(|s| s.name()).collect();
        for host in &self.hosts {
            parse_prefix(&host.ip)?;
            if !(0.0..=3600.0).contains(&host.start_after_secs) {
                return invalid(format!("{}: start_after_secs must be 0 to 3600", host.name));
            }
        }
        for kernel in &self.kernel_nats {
            parse_prefix(&kernel.lan)?;
        }
        for router in &self.routers {
            for subnet in &router.subnets {
                parse_prefix(subnet)?;
            }
        }
        for link in &self.links {
            for end in &link.between {
                if !names.contains(end.as_str()) {
                    return invalid(format!("link {:?}: {end:?} is not defined", link.between));
                }
            }
            if link.between[0] == link.between[1] {
                return invalid(format!("link {:?} joins a device to itself", link.between));
            }
            link.config()?;
        }
        if self.timeout_secs == 0 || self.timeout_secs > 24 * 3600 {
            return invalid("timeout_secs must be 1 to 86400".into());
        }
        Ok(())
    }

    /// Builds the simulation, runs every host's command with its output passed to `on_line`,
    /// and returns the summary once every non-daemon command has ended (or the timeout hit).
    pub fn run(&self, options: &RunOptions, mut on_line: impl FnMut(Line)) -> Result<Summary, ScenarioError> {
        let started = Instant::now();
        let mut sim = Simulation::new(self.seed);
        let mut devices: HashMap<String, Device> = HashMap::new();
        let mut hosts: HashMap<String, Host> = HashMap::new();
        let mut env: Vec<(String, String)> = options.env.clone();
        // A scratch directory the commands share (to pass identities, files), removed after.
        let scratch = Scratch::new()?;
        env.push(("NETSIM_DIR".into(), scratch.0.display().to_string()));
        if let Some(dir) = &options.scenario_dir {
            env.push(("NETSIM_SCENARIO_DIR".into(), dir.display().to_string()));
        }
        let capture_path = |path: &Path| match &options.capture_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        };
        for spec in self.build_order()? {
            let gateway: Option<Device> = spec.behind().map(|b| devices[b].clone());
            let behind = gateway.as_ref().map(|d| d as &dyn AsNode);
            let (name, ip) = match spec {
                Spec::Nat(nat) => {
                    devices.insert(nat.name.clone(), sim.add_nat(&nat.name, nat.config(), behind)?);
                    (&nat.name, Some(nat.public_ip))
                }
                Spec::KernelNat(kernel) => {
                    let (lan_ip, lan_prefix) = parse_prefix(&kernel.lan)?;
                    let config = KernelNatConfig {
                        public_ip: kernel.public_ip,
                        lan_ip,
                        lan_prefix,
                        ports: kernel.ports,
                        udp_timeout: kernel.udp_timeout_secs.map(Duration::from_secs),
                        unsolicited_tcp: crate::nat::UnsolicitedTcp::Reset,
                    };
                    devices.insert(kernel.name.clone(), sim.add_kernel_nat(&kernel.name, config, behind)?);
                    (&kernel.name, Some(kernel.public_ip))
                }
                Spec::Router(router) => {
                    let subnets = router.subnets.iter().map(|s| parse_prefix(s)).collect::<Result<Vec<_>, _>>()?;
                    devices.insert(router.name.clone(), sim.add_router(&router.name, router.ip, &subnets, behind)?);
                    (&router.name, Some(router.ip))
                }
                Spec::Switch(switch) => {
                    devices.insert(switch.name.clone(), sim.add_switch(&switch.name, behind)?);
                    (&switch.name, None)
                }
                Spec::Host(host_spec) => {
                    let (ip, prefix) = parse_prefix(&host_spec.ip)?;
                    let host = match &gateway {
                        Some(gw) => sim.add_host_behind(&host_spec.name, ip, prefix, gw)?,
                        None => sim.add_host(&host_spec.name, ip, prefix)?,
                    };
                    if let Some(path) = &host_spec.capture {
                        sim.capture_interface(&host, &capture_path(path))?;
                    }
                    hosts.insert(host_spec.name.clone(), host);
                    (&host_spec.name, Some(ip))
                }
            };
            if let Some(ip) = ip {
                env.push((ip_variable(name), ip.to_string()));
            }
        }
        let node =
            |name: &str| -> crate::Node { hosts.get(name).map(|h| h.node()).unwrap_or_else(|| devices[name].node()) };
        for spec in &self.links {
            let (a, b) = (node(&spec.between[0]), node(&spec.between[1]));
            sim.link(&a, &b, spec.config()?);
            if let Some(path) = &spec.capture {
                sim.capture(&a, &b, &capture_path(path))?;
            }
        }
        sim.start()?;

        let (lines_tx, lines) = mpsc::channel::<Line>();
        let mut children: Vec<(String, bool, Child)> = Vec::new();
        let mut outcomes: HashMap<String, Outcome> = HashMap::new();
        let mut pending: Vec<&HostSpec> = self.hosts.iter().filter(|h| h.run.is_some()).collect();
        pending.sort_by(|a, b| a.start_after_secs.total_cmp(&b.start_after_secs));
        let deadline = started + Duration::from_secs(self.timeout_secs);
        let mut pending = pending.into_iter().peekable();
        loop {
            // Start what is due.
            while let Some(spec) = pending.next_if(|s| started.elapsed().as_secs_f64() >= s.start_after_secs) {
                let child = spawn(&hosts[&spec.name], spec, &env, &lines_tx)?;
                children.push((spec.name.clone(), spec.daemon, child));
            }
            while let Ok(line) = lines.try_recv() {
                on_line(line);
            }
            for (name, _, child) in &mut children {
                if !outcomes.contains_key(name) {
                    if let Ok(Some(status)) = child.try_wait() {
                        outcomes.insert(name.clone(), Outcome::Exited(status.code()));
                    }
                }
            }
            let waiting = children.iter().any(|(name, daemon, _)| !daemon && !outcomes.contains_key(name));
            if (!waiting && pending.peek().is_none()) || Instant::now() >= deadline {
                break;
            }
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(20)) {
                on_line(line);
            }
        }
        for (name, daemon, child) in &mut children {
            if !outcomes.contains_key(name) {
                stop(child);
                outcomes.insert(name.clone(), if *daemon { Outcome::Stopped } else { Outcome::TimedOut });
            }
        }
        drop(lines_tx);
        // Readers end when the killed processes' pipes close.
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
            on_line(line);
        }
        let mut links: Vec<LinkSummary> = sim
            .link_stats()
            .into_iter()
            .map(|((from, to), s): ((String, String), LinkStats)| LinkSummary {
                from,
                to,
                offered: s.offered,
                forwarded: s.delivered,
                lost: s.lost,
                queue_drops: s.queue_drops,
                mtu_drops: s.mtu_drops,
            })
            .collect();
        links.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        let mut nats: Vec<NatSummary> = sim
            .nat_stats()
            .into_iter()
            .map(|(name, s): (String, NatStats)| NatSummary {
                name,
                mappings: s.mappings_created,
                outbound: s.outbound,
                inbound: s.inbound,
                dropped: s.dropped.values().sum(),
            })
            .collect();
        nats.sort_by(|a, b| a.name.cmp(&b.name));
        let hosts =
            self.hosts.iter().map(|h| (h.name.clone(), outcomes.remove(&h.name).unwrap_or(Outcome::Idle))).collect();
        Ok(Summary { hosts, links, nats, elapsed_ms: started.elapsed().as_millis() as u64 })
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, ScenarioError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("warren-netsim-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ScenarioError::Invalid(format!("creating the scratch directory {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a host's command in its own process group, its output read line by line.
fn spawn(
    host: &Host,
    spec: &HostSpec,
    env: &[(String, String)],
    lines: &mpsc::Sender<Line>,
) -> Result<Child, ScenarioError> {
    use std::os::unix::process::CommandExt;
    let mut command = host.command("sh");
    command
        .arg("-c")
        .arg(spec.run.as_deref().unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NETSIM_HOST", &spec.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().map_err(|source| ScenarioError::Spawn { host: spec.name.clone(), source })?;
    let out = child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>);
    let err = child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>);
    for (pipe, stderr) in [(out, false), (err, true)] {
        let Some(pipe) = pipe else { continue };
        let (lines, host) = (lines.clone(), spec.name.clone());
        std::thread::spawn(move || {
            for text in BufReader::new(pipe).lines() {
                let Ok(text) = text else { break };
                if lines.send(Line { host: host.clone(), stderr, text }).is_err() {
                    break;
                }
            }
        });
    }
    Ok(child)
}

/// Stops a command and everything it started: SIGTERM to its process group, SIGKILL a second
/// later if it is still there.
fn stop(child: &mut Child) {
    let group = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above. The group may already be gone; the error is then ESRCH, ignored.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_HOSTS: &str = r#"
        seed = 3
        [[nat]]
        name = "home"
        public_ip = "203.0.113.1"
        preset = "symmetric"
        hairpinning = true
        [[host]]
        name = "a"
        ip = "192.168.1.2/24"
        behind = "home"
        run = "true"
        [[host]]
        name = "b"
        ip = "198.51.100.1/24"
        [[link]]
        between = ["a", "home"]
        latency_ms = 5
        loss = 0.01
        [[link]]
        between = ["home", "b"]
        burst_loss = { to_bad = 0.01, to_good = 0.5, good_loss = 0.0, bad_loss = 0.8 }
        bandwidth_mbps = 10
    "#;

    #[test]
    fn a_scenario_parses_with_overrides_and_impairments() {
        let scenario = Scenario::parse(TWO_HOSTS).unwrap();
        assert_eq!(scenario.seed, 3);
        let nat = scenario.nats[0].config();
        assert_eq!(nat.mapping, Mapping::AddressAndPortDependent);
        assert!(nat.hairpinning, "overridden");
        let link = scenario.links[0].config().unwrap();
        assert_eq!(link.latency, Duration::from_millis(5));
        assert_eq!(link.loss, Loss::Random(0.01));
        let link = scenario.links[1].config().unwrap();
        assert!(matches!(link.loss, Loss::GilbertElliott { .. }));
        assert_eq!(link.bandwidth_bps, Some(10_000_000));
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let cases = [
            ("seed = \"x\"", "not a valid scenario"),
            ("[[host]]\nname = \"a\"\nip = \"10.0.0.1\"", "not an IPv4 address with a prefix"),
            ("[[host]]\nname = \"a\"\nip = \"10.0.0.1/33\"", "not an IPv4 address with a prefix"),
            ("[[host]]\nname = \"a\"\nip = \"10.0.0.1/24\"\nbehind = \"nowhere\"", "not defined"),
            (
                "[[host]]\nname = \"a\"\nip = \"10.0.0.1/24\"\n[[host]]\nname = \"a\"\nip = \"10.0.0.2/24\"",
                "used twice",
            ),
            ("[[host]]\nname = \"a\"\nip = \"10.0.0.1/24\"\n[[link]]\nbetween = [\"a\", \"b\"]", "not defined"),
            (
                "[[host]]\nname = \"a\"\nip = \"10.0.0.1/24\"\n[[host]]\nname = \"b\"\nip = \"10.0.0.2/24\"\n[[link]]\nbetween = [\"a\", \"b\"]\nloss = 2.0",
                "not a probability",
            ),
            ("[[host]]\nname = \"a\"\nip = \"10.0.0.1/24\"\nbogus = 1", "unknown field"),
            (
                "[[host]]\nname = \"h\"\nip = \"10.0.0.1/24\"\n[[host]]\nname = \"a\"\nip = \"10.0.0.2/24\"\nbehind = \"h\"",
                "which is a host",
            ),
            ("timeout_secs = 0", "timeout_secs"),
            (
                "[[router]]\nname = \"r\"\nip = \"10.0.0.1\"\nbehind = \"s\"\n[[switch]]\nname = \"s\"\nbehind = \"r\"",
                "in a loop",
            ),
        ];
        for (text, expected) in cases {
            let error = Scenario::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let huge = "#".repeat(MAX_SCENARIO_BYTES + 1);
        assert!(matches!(Scenario::parse(&huge), Err(ScenarioError::TooLarge(_))));
    }
}
