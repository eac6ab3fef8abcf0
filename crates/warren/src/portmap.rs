//! Port mapping, driven: asks the node's gateway (PCP, NAT-PMP or UPnP IGD; the sans-IO
//! [`crate::state::portmap`] decides what to say) to forward an external UDP port to the
//! node's QUIC socket, and announces that external address to peers as a hole-punching
//! candidate. With it, a node behind a NAT that maps every destination to another port
//! (symmetric) is reachable at one known address, which its peers' punches can find.
//!
//! Off unless asked for ([`P2P::add_port_mapping`](crate::P2P::add_port_mapping),
//! [`Builder::port_mapping`](crate::endpoint::Builder::port_mapping), `warren node
//! --port-mapping`): it changes the router's configuration, and its search is a multicast on
//! the LAN. The gateway is the default route's (Linux: `/proc/net/route`) unless given.
//!
//! Its own sockets: one UDP socket connected to the gateway's port 5351, one for SSDP (to the
//! group and the gateway's port 1900), a TCP connection per HTTP exchange. A search that finds
//! nothing is repeated after [`RETRY_AFTER`]; at shutdown the mapping is deleted (at most
//! [`REMOVE_TIMEOUT`](crate::state::portmap::REMOVE_TIMEOUT)).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::state::portmap::{DEFAULT_LIFETIME, Mapping, Protocol, Protocols};
use crate::state::portmap::{Event as MapEvent, HTTP_TIMEOUT, PortMapper as State, Transmit};
use crate::transport::paths::Paths;
use crate::wire::portmap::{MAX_MESSAGE, SERVER_PORT};
use crate::wire::upnp::{MAX_HTTP_RESPONSE, MAX_SSDP};

/// Wait before searching again after no gateway mapped a port (or a mapping was lost).
pub const RETRY_AFTER: Duration = Duration::from_secs(300);

/// What to ask of which gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapConfig {
    /// The gateway; None: the default route's.
    pub gateway: Option<Ipv4Addr>,
    /// The protocols to try (all three by default).
    pub protocols: Protocols,
    /// The lifetime asked for (renewed at half of it).
    pub lifetime: Duration,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        Self { gateway: None, protocols: Protocols::ALL, lifetime: DEFAULT_LIFETIME }
    }
}

/// Where the port mapping stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMapStatus {
    /// Asking the gateway.
    Searching,
    /// The gateway forwards `mapping.external` to the node's socket; renewed `renewals` times.
    Mapped {
        /// The mapping.
        mapping: Mapping,
        /// Renewals so far.
        renewals: u32,
    },
    /// No mapping, and why (searched again after [`RETRY_AFTER`]).
    Unavailable(String),
    /// Removed at shutdown.
    Removed,
}

/// Events the node turns into its own.
pub(crate) type PortMapEvents = Box<dyn Fn(&PortMapStatus) + Send + Sync>;

/// The running port mapping of one QUIC socket. Cheap to clone; stops with the node.
#[derive(Debug, Clone)]
pub struct PortMapping {
    status: watch::Receiver<PortMapStatus>,
}

impl PortMapping {
    /// Starts mapping the port of `paths`' socket; runs on `tasks` until `cancel`, then
    /// deletes the mapping.
    pub(crate) fn start(
        paths: Arc<Paths>,
        config: PortMapConfig,
        tasks: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
        on_status: PortMapEvents,
    ) -> Self {
        let (status, receiver) = watch::channel(PortMapStatus::Searching);
        // Read here, on the caller's thread: the route table is per network namespace, and a
        // runtime's worker threads need not be in the caller's.
        let gateway = config.gateway.or_else(default_gateway);
        let driver = Driver { paths, config, status, on_status, cancel };
        tasks.spawn(async move { driver.run(gateway).await });
        Self { status: receiver }
    }

    /// Where it stands now.
    pub fn status(&self) -> PortMapStatus {
        self.status.borrow().clone()
    }

    /// Every change of [`status`](Self::status).
    pub fn watch_status(&self) -> watch::Receiver<PortMapStatus> {
        self.status.clone()
    }
}

/// The default route's gateway, from Linux's route table of the calling thread's network
/// namespace (`/proc/thread-self/net/route`; `/proc/net` is the main thread's).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table =
        std::fs::read_to_string("/proc/thread-self/net/route").or_else(|_| std::fs::read_to_string("/proc/net/route"));
    parse_route_table(&table.ok()?)
}

/// The gateway of the default route in the text of `/proc/net/route`.
fn parse_route_table(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP_GATEWAY: u32 = 0x1 | 0x2;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| fields.get(i).and_then(|f| u32::from_str_radix(f, 16).ok());
        let (destination, gateway, flags) = (hex(1)?, hex(2)?, hex(3)?);
        // The kernel prints the address as the native-endian number of its network-order bytes.
        (destination == 0 && flags & RTF_UP_GATEWAY == RTF_UP_GATEWAY).then(|| Ipv4Addr::from(gateway.to_ne_bytes()))
    })
}

struct Driver {
    paths: Arc<Paths>,
    config: PortMapConfig,
    status: watch::Sender<PortMapStatus>,
    on_status: PortMapEvents,
    cancel: CancellationToken,
}

/// The two UDP sockets a search uses.
struct Sockets {
    pmp: UdpSocket,
    ssdp: UdpSocket,
}

impl Driver {
    fn set(&self, status: PortMapStatus) {
        (self.on_status)(&status);
        self.paths.set_mapped(match &status {
            PortMapStatus::Mapped { mapping, .. } => Some(SocketAddr::V4(mapping.external)),
            _ => None,
        });
        self.status.send_replace(status);
    }

    async fn run(self, gateway: Option<Ipv4Addr>) {
        let Some(gateway) = gateway else {
            self.set(PortMapStatus::Unavailable("no IPv4 default gateway".into()));
            return;
        };
        let (internal, sockets) = match self.open(gateway).await {
            Ok(found) => found,
            Err(e) => {
                self.set(PortMapStatus::Unavailable(format!("port mapping with {gateway}: {e}")));
                return;
            }
        };
        loop {
            let nonce = crate::transport::paths::random_bytes();
            let state =
                State::new(Instant::now(), gateway, internal, nonce, self.config.lifetime, self.config.protocols);
            if self.search(state, &sockets).await {
                return;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    self.set(PortMapStatus::Removed);
                    return;
                }
                _ = tokio::time::sleep(RETRY_AFTER) => self.set(PortMapStatus::Searching),
            }
        }
    }

    /// The node socket's address towards `gateway`, and the sockets to ask it with.
    async fn open(&self, gateway: Ipv4Addr) -> std::io::Result<(SocketAddrV4, Sockets)> {
        let local = self.paths.local_addr()?;
        let pmp = UdpSocket::bind(match local.ip() {
            IpAddr::V4(ip) => SocketAddr::from((ip, 0)),
            IpAddr::V6(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        })
        .await?;
        pmp.connect((gateway, SERVER_PORT)).await?;
        let IpAddr::V4(ip) = pmp.local_addr()?.ip() else { unreachable!("an IPv4 socket") };
        let ssdp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        ssdp.set_multicast_if_v4(&ip)?;
        ssdp.set_multicast_ttl_v4(2)?;
        ssdp.set_nonblocking(true)?;
        ssdp.bind(&SocketAddr::from((ip, 0)).into())?;
        let ssdp = UdpSocket::from_std(ssdp.into())?;
        Ok((SocketAddrV4::new(ip, local.port()), Sockets { pmp, ssdp }))
    }

    /// Runs one search and the mapping it finds. True when the node is shutting down.
    async fn search(&self, mut state: State, sockets: &Sockets) -> bool {
        let mut http: JoinSet<(u64, Result<Vec<u8>, String>)> = JoinSet::new();
        let mut shutting = false;
        let mut renewals = 0;
        let (mut pmp_buf, mut ssdp_buf) = (vec![0u8; MAX_MESSAGE + 1], vec![0u8; MAX_SSDP + 1]);
        loop {
            while let Some(transmit) = state.poll_transmit() {
                match transmit {
                    Transmit::Pmp(datagram) => {
                        let _ = sockets.pmp.send(&datagram).await;
                    }
                    Transmit::Ssdp { to, payload } => {
                        let _ = sockets.ssdp.send_to(&payload, to).await;
                    }
                    Transmit::Http { id, to, request } => {
                        http.spawn(async move { (id, exchange(to, &request).await) });
                    }
                }
            }
            while let Some(event) = state.poll_event() {
                match event {
                    MapEvent::Mapped(mapping) => {
                        tracing::info!(protocol = %mapping.protocol, external = %mapping.external, "port mapped");
                        renewals = 0;
                        self.set(PortMapStatus::Mapped { mapping, renewals });
                    }
                    MapEvent::Renewed(mapping) => {
                        renewals += 1;
                        tracing::debug!(protocol = %mapping.protocol, external = %mapping.external, "port mapping renewed");
                        self.status.send_replace(PortMapStatus::Mapped { mapping, renewals });
                    }
                    MapEvent::Unavailable(reason) | MapEvent::Lost(reason) => {
                        tracing::info!(%reason, "no port mapping");
                        self.set(PortMapStatus::Unavailable(reason));
                    }
                    MapEvent::Removed => self.set(PortMapStatus::Removed),
                }
            }
            if state.is_over() {
                return shutting;
            }
            let deadline = state.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = self.cancel.cancelled(), if !shutting => {
                    shutting = true;
                    state.shutdown(Instant::now());
                }
                received = sockets.pmp.recv_from(&mut pmp_buf) => {
                    if let Ok((len, SocketAddr::V4(from))) = received {
                        state.handle_pmp(Instant::now(), from, &pmp_buf[..len]);
                    }
                }
                received = sockets.ssdp.recv_from(&mut ssdp_buf) => {
                    if let Ok((len, SocketAddr::V4(from))) = received {
                        state.handle_ssdp(Instant::now(), from, &ssdp_buf[..len]);
                    }
                }
                Some(Ok((id, answer))) = http.join_next() => state.handle_http(Instant::now(), id, answer),
                _ = sleep_until(deadline) => state.handle_timeout(Instant::now()),
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One HTTP exchange with a UPnP gateway: the whole answer (to the end of the connection), at
/// most [`MAX_HTTP_RESPONSE`] bytes, within [`HTTP_TIMEOUT`].
async fn exchange(to: SocketAddrV4, request: &[u8]) -> Result<Vec<u8>, String> {
    let talk = async {
        let mut stream = TcpStream::connect(to).await.map_err(|e| format!("connecting to {to}: {e}"))?;
        stream.write_all(request).await.map_err(|e| format!("writing to {to}: {e}"))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_HTTP_RESPONSE as u64 + 1)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("reading from {to}: {e}"))?;
        if answer.len() > MAX_HTTP_RESPONSE {
            return Err(format!("{to} answered more than {MAX_HTTP_RESPONSE} bytes"));
        }
        Ok(answer)
    };
    tokio::time::timeout(HTTP_TIMEOUT, talk)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {to} in {HTTP_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_read_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     lan\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     lan\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let expected =
            if cfg!(target_endian = "little") { Ipv4Addr::new(192, 168, 1, 1) } else { Ipv4Addr::new(1, 1, 168, 192) };
        assert_eq!(parse_route_table(table), Some(expected));
        assert_eq!(parse_route_table("Iface\tDestination\tGateway\tFlags\nlan\t0001A8C0\t00000000\t0001\n"), None);
        assert_eq!(parse_route_table(""), None);
    }
}
