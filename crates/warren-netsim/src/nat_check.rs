//! Measures a NAT's behaviour from outside with plain sockets, the RFC 4787 way: one client
//! behind the NAT, two servers on the internet (two addresses, two ports on the first), and
//! nothing but the packets that arrive. Works the same on the simulated NATs and on a kernel
//! NAT, so the two can be compared.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::link::LinkConfig;
use crate::nat::{Filtering, Mapping, NatConfig, NatPreset};
use crate::sim::{Device, Host, KernelNatConfig, KernelPorts, SimError, Simulation};

/// The NAT to measure.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// A simulated NAT preset.
    Preset(NatPreset),
    /// A simulated NAT with an explicit configuration (its `public_ip` is replaced).
    Config(NatConfig),
    /// A real Linux NAT, no firewall: the router's own stack answers unsolicited TCP.
    Kernel(KernelPorts),
    /// A real Linux NAT whose firewall drops new TCP from outside (most consumer firmware).
    KernelDropping(KernelPorts),
}

impl Subject {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Subject::Preset(preset) => format!("{preset:?}"),
            Subject::Config(config) => format!(
                "{:?}/{:?}/{:?}{}",
                config.mapping,
                config.filtering,
                config.ports,
                if config.hairpinning { "/hairpin" } else { "" }
            ),
            Subject::Kernel(ports) => format!("kernel {}", ports.name()),
            Subject::KernelDropping(ports) => format!("kernel {}, firewall drops new TCP", ports.name()),
        }
    }
}

/// What unsolicited inbound TCP met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpAnswer {
    /// A RST (the connection was refused).
    Reset,
    /// Nothing (the connection attempt timed out).
    Silence,
}

/// How long an idle UDP mapping lived, when asked to measure it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lifetime {
    /// The configured timeout the NAT was given for the check.
    pub configured_ms: u64,
    /// Did inbound traffic still get through after half the timeout idle?
    pub alive_at_half: bool,
    /// Was it refused after one and a half timeouts idle?
    pub expired_at_one_and_half: bool,
}

/// What the checks saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observed {
    /// Which NAT.
    pub subject: String,
    /// Did a UDP datagram get out at all?
    pub udp: bool,
    /// Mapping behaviour (when UDP works).
    pub mapping: Option<Mapping>,
    /// Filtering behaviour (when UDP works).
    pub filtering: Option<Filtering>,
    /// Was the client's source port kept?
    pub port_preserved: Option<bool>,
    /// Did a packet to the NAT's own public mapping of another inside socket come back in?
    pub hairpin: Option<bool>,
    /// Did an unsolicited packet to a port leave state that moved a later flow from that port
    /// to another (Linux conntrack does; RFC 4787 NATs keep no state for it)? Checked where
    /// ports are preserved (elsewhere every flow's port moves anyway).
    pub unsolicited_moves_port: Option<bool>,
    /// Idle-mapping lifetime, when measured.
    pub lifetime: Option<Lifetime>,
    /// Did an outbound TCP connection work?
    pub tcp: bool,
    /// What unsolicited inbound TCP got.
    pub unsolicited_tcp: TcpAnswer,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const PUBLIC: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(100, 64, 0, 1)];
const SERVER_1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SERVER_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PORT_1: u16 = 3478;
const PORT_2: u16 = 3479;
/// How long a check waits for a datagram that should arrive (the links add 2 ms each way).
const ANSWER_WAIT: Duration = Duration::from_millis(400);

/// Runs every check on `subject`. With `lifetime`, the NAT is given that UDP timeout and the
/// mapping's life is checked at half and one and a half times it (which takes that long).
pub fn check(subject: &Subject, lifetime: Option<Duration>, seed: u64) -> Result<Observed, SimError> {
    let mut sim = Simulation::new(seed);
    let link = LinkConfig { latency: Duration::from_millis(1), ..Default::default() };
    // The client sits behind the innermost NAT; the servers talk to the outermost one.
    let (outermost, innermost) = match subject {
        Subject::Kernel(ports) | Subject::KernelDropping(ports) => {
            let unsolicited_tcp = match subject {
                Subject::KernelDropping(_) => crate::nat::UnsolicitedTcp::Drop,
                _ => crate::nat::UnsolicitedTcp::Reset,
            };
            let config = KernelNatConfig {
                public_ip: PUBLIC[0],
                lan_ip: GATEWAY,
                lan_prefix: 24,
                ports: *ports,
                udp_timeout: lifetime,
                unsolicited_tcp,
            };
            let nat = sim.add_kernel_nat("nat", config, None)?;
            (nat.clone(), nat)
        }
        Subject::Preset(_) | Subject::Config(_) => {
            let mut configs = match subject {
                Subject::Preset(preset) => preset.configs(&PUBLIC[..preset.layers()]),
                Subject::Config(config) => vec![NatConfig { public_ip: PUBLIC[0], ..config.clone() }],
                Subject::Kernel(_) | Subject::KernelDropping(_) => unreachable!("handled above"),
            };
            for config in &mut configs {
                if let Some(timeout) = lifetime {
                    config.udp_timeout = timeout;
                }
            }
            // `configs` is innermost first: add from the outside in, each inside the last.
            let mut layers: Vec<Device> = Vec::new();
            for (layer, config) in configs.into_iter().enumerate().rev() {
                let nat = sim.add_nat(&format!("nat{layer}"), config, layers.last().map(|o| o as _))?;
                if let Some(outer) = layers.last() {
                    sim.link(&nat, outer, link.clone());
                }
                layers.push(nat);
            }
            (layers[0].clone(), layers.last().expect("at least one layer").clone())
        }
    };
    let client = sim.add_host_behind("client", CLIENT, 24, &innermost)?;
    let server_1 = sim.add_host("server-1", SERVER_1, 24)?;
    let server_2 = sim.add_host("server-2", SERVER_2, 24)?;
    sim.link(&client, &innermost, link.clone());
    sim.link(&outermost, &server_1, link.clone());
    sim.link(&outermost, &server_2, link);
    sim.start()?;

    let (client_host, server_host) = (client.clone(), server_1.clone());
    let client = Agent::new(&client);
    let s1 = Agent::new(&server_1);
    let s2 = Agent::new(&server_2);
    let (s1a, s1b, s2a) = (s1.bind(PORT_1), s1.bind(PORT_2), s2.bind(PORT_1));
    let at = |ip: Ipv4Addr, port: u16| SocketAddrV4::new(ip, port);

    let mut observed = Observed {
        subject: subject.name(),
        udp: false,
        mapping: None,
        filtering: None,
        port_preserved: None,
        hairpin: None,
        unsolicited_moves_port: None,
        lifetime: None,
        tcp: false,
        unsolicited_tcp: TcpAnswer::Silence,
    };

    // Mapping: one socket to three destinations; compare the mapped addresses they saw.
    let socket = client.bind(40000);
    client.send(socket, at(SERVER_1, PORT_1));
    if let Some(m1) = s1.recv(s1a) {
        observed.udp = true;
        client.send(socket, at(SERVER_1, PORT_2));
        client.send(socket, at(SERVER_2, PORT_1));
        let (m2, m3) = (s1.recv(s1b), s2.recv(s2a));
        observed.mapping = Some(if m2 != Some(m1) {
            Mapping::AddressAndPortDependent
        } else if m3 != Some(m1) {
            Mapping::AddressDependent
        } else {
            Mapping::EndpointIndependent
        });
        observed.port_preserved = Some(m1.port() == 40000);

        // Filtering: after one datagram to server 1's first port, who may answer?
        let socket = client.bind(40001);
        client.send(socket, at(SERVER_1, PORT_1));
        if let Some(mapped) = s1.recv(s1a) {
            s2.send(s2a, mapped);
            s1.send(s1b, mapped);
            let heard = client.drain(socket);
            observed.filtering = Some(if heard.contains(&at(SERVER_2, PORT_1)) {
                Filtering::EndpointIndependent
            } else if heard.contains(&at(SERVER_1, PORT_2)) {
                Filtering::AddressDependent
            } else {
                Filtering::AddressAndPortDependent
            });
        }

        // Hairpinning: two inside sockets send to each other's public mapping.
        let (a, b) = (client.bind(40002), client.bind(40003));
        client.send(a, at(SERVER_1, PORT_1));
        client.send(b, at(SERVER_1, PORT_1));
        if let (Some(ma), Some(mb)) = (s1.recv(s1a), s1.recv(s1a)) {
            client.send(b, ma);
            client.send(a, mb);
            client.send(b, ma);
            observed.hairpin = Some(!client.drain(a).is_empty() || !client.drain(b).is_empty());
        }

        // State left by unsolicited packets: server 1 writes to the port the client's next
        // socket would be mapped to before the client has sent anything from it; then the
        // client sends to server 1 from that socket.
        if observed.port_preserved == Some(true) {
            let public = outermost.ip().expect("a NAT has an address");
            let socket = client.bind(40006);
            s1.send(s1a, at(public, 40006));
            let unsolicited = client.drain(socket);
            client.send(socket, at(SERVER_1, PORT_1));
            if unsolicited.is_empty() {
                observed.unsolicited_moves_port = s1.recv(s1a).map(|mapped| mapped.port() != 40006);
            }
        }

        if let Some(timeout) = lifetime {
            observed.lifetime = Some(measure_lifetime(&client, &s1, s1a, timeout));
        }
    }

    // TCP out, and unsolicited TCP in.
    observed.tcp = tcp_out(&client_host, &server_host);
    observed.unsolicited_tcp = tcp_in(&server_host, outermost.ip().expect("a NAT has an address"));
    Ok(observed)
}

fn measure_lifetime(client: &Agent, server: &Agent, server_socket: usize, timeout: Duration) -> Lifetime {
    let (alive, gone) = (client.bind(40004), client.bind(40005));
    client.send(alive, SocketAddrV4::new(SERVER_1, PORT_1));
    client.send(gone, SocketAddrV4::new(SERVER_1, PORT_1));
    let started = Instant::now();
    let (m_alive, m_gone) = (server.recv(server_socket), server.recv(server_socket));
    let mut result =
        Lifetime { configured_ms: timeout.as_millis() as u64, alive_at_half: false, expired_at_one_and_half: false };
    if let (Some(m_alive), Some(m_gone)) = (m_alive, m_gone) {
        std::thread::sleep((timeout / 2).saturating_sub(started.elapsed()));
        server.send(server_socket, m_alive);
        result.alive_at_half = !client.drain(alive).is_empty();
        std::thread::sleep((timeout * 3 / 2).saturating_sub(started.elapsed()));
        server.send(server_socket, m_gone);
        result.expired_at_one_and_half = client.drain(gone).is_empty();
    }
    result
}

/// Connects from the client to a TCP listener on `server`.
fn tcp_out(client: &Host, server: &Host) -> bool {
    let (ready_tx, ready) = mpsc::channel();
    let listener = server.spawn_sync(move || {
        let Ok(listener) = TcpListener::bind((SERVER_1, 8080)) else { return false };
        let _ = ready_tx.send(());
        let _ = listener.set_nonblocking(true);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            if listener.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    if ready.recv().is_err() {
        return false;
    }
    let connected = client
        .spawn_sync(|| TcpStream::connect_timeout(&SocketAddr::from((SERVER_1, 8080)), Duration::from_secs(2)).is_ok())
        .join()
        .unwrap_or(false);
    listener.join().unwrap_or(false) && connected
}

/// Opens a TCP connection from `server` to a port of the NAT's public address that no mapping
/// uses: refused (RST) or timed out (silence)?
fn tcp_in(server: &Host, public: Ipv4Addr) -> TcpAnswer {
    server
        .spawn_sync(move || {
            match TcpStream::connect_timeout(&SocketAddr::from((public, 40999)), Duration::from_secs(1)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => TcpAnswer::Reset,
                _ => TcpAnswer::Silence,
            }
        })
        .join()
        .unwrap_or(TcpAnswer::Silence)
}

/// A thread in a host's namespace owning UDP sockets, driven by commands from the checker.
struct Agent {
    commands: mpsc::Sender<Command>,
}

enum Command {
    Bind(u16, mpsc::Sender<usize>),
    Send(usize, SocketAddrV4),
    /// Waits up to [`ANSWER_WAIT`] for one datagram; answers with its source.
    Recv(usize, mpsc::Sender<Option<SocketAddrV4>>),
    /// Collects the sources of everything that arrives within [`ANSWER_WAIT`].
    Drain(usize, mpsc::Sender<Vec<SocketAddrV4>>),
}

impl Agent {
    fn new(host: &Host) -> Self {
        let (commands, inbox) = mpsc::channel::<Command>();
        let ip = host.ip();
        host.spawn_sync(move || {
            let mut sockets: Vec<UdpSocket> = Vec::new();
            let mut by_port = HashMap::new();
            let mut buf = [0u8; 2048];
            let source = |from: SocketAddr| match from {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            };
            for command in inbox {
                match command {
                    Command::Bind(port, reply) => {
                        let socket = UdpSocket::bind((ip, port)).expect("binding a checker socket");
                        by_port.insert(port, sockets.len());
                        let _ = reply.send(sockets.len());
                        sockets.push(socket);
                    }
                    Command::Send(socket, to) => {
                        let _ = sockets[socket].send_to(b"netsim nat-check", to);
                    }
                    Command::Recv(socket, reply) => {
                        let _ = sockets[socket].set_read_timeout(Some(ANSWER_WAIT));
                        let got = sockets[socket].recv_from(&mut buf).ok().and_then(|(_, from)| source(from));
                        let _ = reply.send(got);
                    }
                    Command::Drain(socket, reply) => {
                        let deadline = Instant::now() + ANSWER_WAIT;
                        let mut heard = Vec::new();
                        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                            let _ = sockets[socket].set_read_timeout(Some(left.max(Duration::from_millis(1))));
                            match sockets[socket].recv_from(&mut buf) {
                                Ok((_, from)) => heard.extend(source(from)),
                                Err(_) => break,
                            }
                        }
                        let _ = reply.send(heard);
                    }
                }
            }
        });
        Agent { commands }
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> T {
        let (reply, answer) = mpsc::channel();
        self.commands.send(make(reply)).expect("the agent thread runs");
        answer.recv().expect("the agent thread answers")
    }

    fn bind(&self, port: u16) -> usize {
        self.ask(|reply| Command::Bind(port, reply))
    }

    fn send(&self, socket: usize, to: SocketAddrV4) {
        self.commands.send(Command::Send(socket, to)).expect("the agent thread runs");
    }

    fn recv(&self, socket: usize) -> Option<SocketAddrV4> {
        self.ask(|reply| Command::Recv(socket, reply))
    }

    fn drain(&self, socket: usize) -> Vec<SocketAddrV4> {
        self.ask(|reply| Command::Drain(socket, reply))
    }
}
