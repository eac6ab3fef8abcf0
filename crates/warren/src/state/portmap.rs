//! Port mapping, sans-IO: asks the gateway to forward one external UDP port to the node's
//! socket, with PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD, keeps the mapping renewed and
//! removes it at shutdown. The driver ([`crate::portmap`]) owns the sockets and the clock.
//!
//! Order: PCP first; a gateway that answers "unsupported version" (a NAT-PMP-only one) is asked
//! again in NAT-PMP at once. The SSDP search for a UPnP gateway goes out at the same time, but
//! UPnP is only used once PCP and NAT-PMP have failed ([`PMP_TIMEOUT`] without an answer, or a
//! refusal), so that a gateway speaking all three gets one mapping, not two. With no gateway
//! that answers, the attempt ends after [`SEARCH_TIMEOUT`] ([`Event::Unavailable`]).
//!
//! A mapping is renewed at half its lifetime (re-sent every [`RETRANSMIT`] until it expires,
//! then [`Event::Lost`]). Shutdown sends the deletion (lifetime 0 / `DeletePortMapping`) and
//! waits for its answer at most [`REMOVE_TIMEOUT`].
//!
//! What is taken from the network: answers only from the gateway (address and port), a PCP
//! answer only with the request's nonce and internal port, a NAT-PMP one only for the internal
//! port asked, an SSDP answer only from the gateway and only pointing at the gateway itself.
//! The external address is a candidate like any other: peers only use it after an
//! authenticated challenge there is answered.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::wire::portmap::{self as pmp, Response};
use crate::wire::upnp::{self, HttpUrl, Service, UpnpError};

/// How long PCP and NAT-PMP are given before UPnP is tried.
pub const PMP_TIMEOUT: Duration = Duration::from_millis(750);
/// How long the whole search may take when no gateway answers.
pub const SEARCH_TIMEOUT: Duration = Duration::from_millis(1500);
/// Gap between retransmissions of an unanswered PCP/NAT-PMP request or SSDP search.
pub const RETRANSMIT: Duration = Duration::from_millis(250);
/// How long an HTTP exchange with a UPnP gateway may take (the driver enforces it).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for the gateway to confirm a deletion.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(1);
/// The lifetime asked for.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7200);
/// External ports tried on UPnP when the one asked for is taken.
pub const UPNP_PORT_TRIES: usize = 4;

/// Which protocols to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// PCP.
    pub pcp: bool,
    /// NAT-PMP.
    pub nat_pmp: bool,
    /// UPnP IGD.
    pub upnp: bool,
}

impl Protocols {
    /// All three.
    pub const ALL: Protocols = Protocols { pcp: true, nat_pmp: true, upnp: true };
}

/// The protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Port Control Protocol.
    Pcp,
    /// NAT Port Mapping Protocol.
    NatPmp,
    /// UPnP Internet Gateway Device.
    Upnp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP",
        })
    }
}

/// A mapping the gateway made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Its protocol.
    pub protocol: Protocol,
    /// The external address and port that reach the node's socket.
    pub external: SocketAddrV4,
    /// How long it lasts from when it was made or renewed (zero: until removed, UPnP only).
    pub lifetime: Duration,
}

/// What the driver sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A PCP or NAT-PMP datagram to the gateway's port 5351.
    Pmp(Vec<u8>),
    /// An SSDP search datagram to `to`.
    Ssdp {
        /// The SSDP group or the gateway, port 1900.
        to: SocketAddrV4,
        /// The search.
        payload: Vec<u8>,
    },
    /// One HTTP exchange: connect to `to`, write `request`, read the answer to the end
    /// (at most [`upnp::MAX_HTTP_RESPONSE`] bytes, within [`HTTP_TIMEOUT`]), then
    /// [`PortMapper::handle_http`] with `id`.
    Http {
        /// Matches the answer to the request.
        id: u64,
        /// The gateway's HTTP address.
        to: SocketAddrV4,
        /// The request.
        request: Vec<u8>,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A mapping was made, or renewed with another external address.
    Mapped(Mapping),
    /// The mapping was renewed as it was.
    Renewed(Mapping),
    /// No gateway made a mapping; why, per protocol tried.
    Unavailable(String),
    /// A mapping could not be renewed and has expired (or the gateway refused it).
    Lost(String),
    /// Shutdown is over (the deletion was confirmed, timed out, or there was nothing to
    /// delete).
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpnpAction {
    Describe,
    ExternalIp,
    Add { port: u16, permanent: bool },
    Delete,
}

#[derive(Debug)]
enum Upnp {
    Off,
    /// Searching: the next search is due at the time (None: both sent, waiting).
    Searching(Option<Instant>),
    /// The gateway answered the search; waiting for PCP/NAT-PMP to fail first.
    Found,
    /// An HTTP exchange is under way.
    Asking {
        id: u64,
        action: UpnpAction,
    },
    /// Nothing under way.
    Ready,
    Failed(String),
}

#[derive(Debug)]
enum Pmp {
    Off,
    /// Waiting for an answer; the next retransmission is due at `next`.
    Asking {
        protocol: Protocol,
        next: Instant,
    },
    Failed(String),
}

#[derive(Debug)]
enum Phase {
    Searching,
    Mapped { mapping: Mapping, renew_at: Instant, expires: Option<Instant>, renewing: Option<Instant> },
    Removing { mapping: Mapping, deadline: Instant },
    Over,
}

/// One port mapping's life. See the module docs.
#[derive(Debug)]
pub struct PortMapper {
    gateway: Ipv4Addr,
    internal: SocketAddrV4,
    nonce: [u8; 12],
    lifetime: Duration,
    protocols: Protocols,
    started: Instant,
    phase: Phase,
    pmp: Pmp,
    /// NAT-PMP's answers so far: the external address, and the port mapped with its lifetime.
    natpmp_ip: Option<Ipv4Addr>,
    natpmp_port: Option<(u16, Duration)>,
    upnp: Upnp,
    location: Option<HttpUrl>,
    service: Option<Service>,
    upnp_ip: Option<Ipv4Addr>,
    upnp_tries: usize,
    next_http: u64,
    transmits: Vec<Transmit>,
    events: Vec<Event>,
}

/// An external address worth announcing.
fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

impl PortMapper {
    /// A mapper for the node's socket at `internal` (its LAN address towards `gateway`), with a
    /// random `nonce` (PCP's; it also picks UPnP's fallback ports), asking for `lifetime`.
    pub fn new(
        now: Instant,
        gateway: Ipv4Addr,
        internal: SocketAddrV4,
        nonce: [u8; 12],
        lifetime: Duration,
        protocols: Protocols,
    ) -> Self {
        let mut this = PortMapper {
            gateway,
            internal,
            nonce,
            lifetime: lifetime.clamp(Duration::from_secs(2), Duration::from_secs(u32::MAX as u64)),
            protocols,
            started: now,
            phase: Phase::Searching,
            pmp: Pmp::Off,
            natpmp_ip: None,
            natpmp_port: None,
            upnp: if protocols.upnp { Upnp::Searching(Some(now)) } else { Upnp::Off },
            location: None,
            service: None,
            upnp_ip: None,
            upnp_tries: 0,
            next_http: 0,
            transmits: Vec::new(),
            events: Vec::new(),
        };
        if protocols.pcp || protocols.nat_pmp {
            let protocol = if protocols.pcp { Protocol::Pcp } else { Protocol::NatPmp };
            this.pmp = Pmp::Asking { protocol, next: now };
        }
        this.handle_timeout(now);
        this.check_search_over();
        this
    }

    /// The mapping, while there is one.
    pub fn mapping(&self) -> Option<Mapping> {
        match self.phase {
            Phase::Mapped { mapping, .. } => Some(mapping),
            _ => None,
        }
    }

    /// Whether it is over (unavailable, lost or removed): nothing more will happen.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Over) && self.events.is_empty()
    }

    /// The next datagram or HTTP exchange to start.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        (!self.transmits.is_empty()).then(|| self.transmits.remove(0))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next; None: not until an input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut due: Vec<Instant> = Vec::new();
        match &self.phase {
            Phase::Searching => {
                if let Pmp::Asking { next, .. } = self.pmp {
                    due.push(next.min(self.started + PMP_TIMEOUT));
                }
                if let Upnp::Searching(next) = self.upnp {
                    due.extend(next);
                    due.push(self.started + SEARCH_TIMEOUT);
                }
            }
            Phase::Mapped { renew_at, expires, renewing, .. } => {
                due.push(renewing.unwrap_or(*renew_at));
                due.extend(*expires);
            }
            Phase::Removing { deadline, .. } => due.push(*deadline),
            Phase::Over => {}
        }
        due.into_iter().min()
    }

    fn pmp_requests(&mut self, protocol: Protocol, lifetime: u32, suggested: Option<SocketAddrV4>) {
        let requests = match protocol {
            Protocol::Pcp => vec![pmp::pcp_map_udp(self.internal, self.nonce, suggested, lifetime).to_vec()],
            _ => {
                let port = if lifetime == 0 { 0 } else { suggested.map_or(self.internal.port(), |s| s.port()) };
                let map = pmp::natpmp_map_udp(self.internal.port(), port, lifetime).to_vec();
                if lifetime == 0 { vec![map] } else { vec![pmp::natpmp_external_address().to_vec(), map] }
            }
        };
        self.transmits.extend(requests.into_iter().map(Transmit::Pmp));
    }

    fn lifetime_secs(&self) -> u32 {
        self.lifetime.as_secs() as u32
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Searching => self.search_timeout(now),
            Phase::Mapped { mapping, renew_at, expires, renewing } => {
                let mapping = *mapping;
                if expires.is_some_and(|e| now >= e) {
                    self.phase = Phase::Over;
                    self.events.push(Event::Lost(format!(
                        "the {} mapping {} expired: the gateway did not answer its renewal",
                        mapping.protocol, mapping.external
                    )));
                    return;
                }
                if now < renewing.unwrap_or(*renew_at) {
                    return;
                }
                let gap = if mapping.protocol == Protocol::Upnp { HTTP_TIMEOUT } else { RETRANSMIT };
                *renewing = Some(now + gap);
                match mapping.protocol {
                    Protocol::Upnp => {
                        if !matches!(self.upnp, Upnp::Asking { .. }) {
                            let permanent = mapping.lifetime.is_zero();
                            self.upnp_ask(UpnpAction::Add { port: mapping.external.port(), permanent });
                        }
                    }
                    protocol => self.pmp_requests(protocol, self.lifetime_secs(), Some(mapping.external)),
                }
            }
            Phase::Removing { deadline, .. } => {
                if now >= *deadline {
                    self.phase = Phase::Over;
                    self.events.push(Event::Removed);
                }
            }
            Phase::Over => {}
        }
    }

    fn search_timeout(&mut self, now: Instant) {
        if let Pmp::Asking { protocol, next } = self.pmp {
            if now >= self.started + PMP_TIMEOUT {
                self.pmp = Pmp::Failed(format!("{protocol}: no answer from {} in {PMP_TIMEOUT:?}", self.gateway));
                self.pmp_failed();
            } else if now >= next {
                self.pmp_requests(protocol, self.lifetime_secs(), None);
                self.pmp = Pmp::Asking { protocol, next: now + RETRANSMIT };
            }
        }
        if let Upnp::Searching(next) = self.upnp {
            if now >= self.started + SEARCH_TIMEOUT {
                self.upnp =
                    Upnp::Failed(format!("UPnP: no answer to the search from {} in {SEARCH_TIMEOUT:?}", self.gateway));
            } else if let Some(due) = next.filter(|due| now >= *due) {
                let payload = upnp::m_search();
                let group = SocketAddrV4::new(upnp::SSDP_GROUP, upnp::SSDP_PORT);
                self.transmits.push(Transmit::Ssdp { to: group, payload: payload.clone() });
                self.transmits.push(Transmit::Ssdp { to: SocketAddrV4::new(self.gateway, upnp::SSDP_PORT), payload });
                // Twice, then wait for the answer.
                let first = due < self.started + RETRANSMIT;
                self.upnp = Upnp::Searching(first.then_some(self.started + RETRANSMIT));
            }
        }
        self.check_search_over();
    }

    /// PCP and NAT-PMP are out: UPnP may go on.
    fn pmp_failed(&mut self) {
        if let Upnp::Found = self.upnp {
            self.upnp_ask(UpnpAction::Describe);
        }
    }

    fn check_search_over(&mut self) {
        if !matches!(self.phase, Phase::Searching) {
            return;
        }
        if matches!(self.pmp, Pmp::Off | Pmp::Failed(_)) && matches!(self.upnp, Upnp::Off | Upnp::Failed(_)) {
            let mut reasons = Vec::new();
            if let Pmp::Failed(r) = &self.pmp {
                reasons.push(r.clone());
            }
            if let Upnp::Failed(r) = &self.upnp {
                reasons.push(r.clone());
            }
            if reasons.is_empty() {
                reasons.push("no port-mapping protocol enabled".into());
            }
            self.phase = Phase::Over;
            self.events.push(Event::Unavailable(reasons.join("; ")));
        }
    }

    fn mapped(&mut self, now: Instant, mapping: Mapping) {
        let (renew_at, expires) = if mapping.lifetime.is_zero() {
            // Permanent (a UPnP gateway without leases): added again now and then, in case the
            // gateway restarted.
            (now + self.lifetime / 2, None)
        } else {
            (now + mapping.lifetime / 2, Some(now + mapping.lifetime))
        };
        let event = match &self.phase {
            Phase::Mapped { mapping: old, .. } if old.external == mapping.external => Event::Renewed(mapping),
            Phase::Mapped { .. } | Phase::Searching => Event::Mapped(mapping),
            Phase::Removing { .. } | Phase::Over => return,
        };
        self.phase = Phase::Mapped { mapping, renew_at, expires, renewing: None };
        self.events.push(event);
    }

    /// The gateway refused (or gave nothing usable) for `protocol`.
    fn refused(&mut self, protocol: Protocol, reason: String) {
        match self.phase {
            Phase::Searching => {
                let reason = format!("{protocol}: {reason}");
                if protocol == Protocol::Upnp {
                    self.upnp = Upnp::Failed(reason);
                } else {
                    self.pmp = Pmp::Failed(reason);
                    self.pmp_failed();
                }
                self.check_search_over();
            }
            Phase::Mapped { mapping, .. } => {
                self.phase = Phase::Over;
                self.events
                    .push(Event::Lost(format!("renewing the {protocol} mapping {}: {reason}", mapping.external)));
            }
            Phase::Removing { .. } => {
                self.phase = Phase::Over;
                self.events.push(Event::Removed);
            }
            Phase::Over => {}
        }
    }

    /// The protocol whose answers are expected now.
    fn expecting(&self) -> Option<Protocol> {
        match &self.phase {
            Phase::Searching => match self.pmp {
                Pmp::Asking { protocol, .. } => Some(protocol),
                _ => None,
            },
            Phase::Mapped { mapping, .. } | Phase::Removing { mapping, .. } => Some(mapping.protocol),
            Phase::Over => None,
        }
    }

    /// A datagram arrived on the PCP/NAT-PMP socket from `from`.
    pub fn handle_pmp(&mut self, now: Instant, from: SocketAddrV4, datagram: &[u8]) {
        if from != SocketAddrV4::new(self.gateway, pmp::SERVER_PORT) {
            return;
        }
        let (Some(protocol), Ok(response)) = (self.expecting(), pmp::parse(datagram)) else { return };
        let removing = matches!(self.phase, Phase::Removing { .. });
        let port = self.internal.port();
        match (protocol, response) {
            (
                Protocol::Pcp,
                Response::PcpMap { result, lifetime, nonce, protocol: 17, internal_port, external, .. },
            ) if nonce == self.nonce && internal_port == port => {
                if removing {
                    self.phase = Phase::Over;
                    self.events.push(Event::Removed);
                } else if result == pmp::UNSUPPORTED_VERSION as u8 {
                    self.unsupported_version(now);
                } else if result != 0 {
                    self.refused(Protocol::Pcp, pmp::pcp_result_name(result).into());
                } else {
                    match external.filter(|e| usable(*e.ip()) && e.port() != 0) {
                        Some(external) => {
                            let lifetime = Duration::from_secs(lifetime.into());
                            self.mapped(now, Mapping { protocol: Protocol::Pcp, external, lifetime });
                        }
                        None => self.refused(Protocol::Pcp, format!("no usable external address ({external:?})")),
                    }
                }
            }
            (Protocol::Pcp, Response::NatPmpError { result, .. }) if result == pmp::UNSUPPORTED_VERSION => {
                self.unsupported_version(now)
            }
            (Protocol::Pcp, Response::PcpOther { opcode: 1, result }) if result != 0 && !removing => {
                self.refused(Protocol::Pcp, pmp::pcp_result_name(result).into())
            }
            (Protocol::NatPmp, Response::NatPmpExternal { result: 0, external, .. }) if !removing => {
                if usable(external) {
                    self.natpmp_ip = Some(external);
                    self.natpmp_complete(now);
                } else {
                    self.refused(Protocol::NatPmp, format!("no usable external address ({external})"));
                }
            }
            (Protocol::NatPmp, Response::NatPmpMap { result: 0, internal_port, external_port, lifetime, .. })
                if internal_port == port =>
            {
                if removing {
                    self.phase = Phase::Over;
                    self.events.push(Event::Removed);
                } else if external_port == 0 {
                    self.refused(Protocol::NatPmp, "mapped to port 0".into());
                } else {
                    self.natpmp_port = Some((external_port, Duration::from_secs(lifetime.into())));
                    self.natpmp_complete(now);
                }
            }
            (Protocol::NatPmp, Response::NatPmpMap { result, .. } | Response::NatPmpExternal { result, .. })
            | (Protocol::NatPmp, Response::NatPmpError { result, .. })
                if result != 0 =>
            {
                self.refused(Protocol::NatPmp, pmp::natpmp_result_name(result).into())
            }
            _ => {}
        }
    }

    /// A PCP request was answered "unsupported version": a NAT-PMP gateway.
    fn unsupported_version(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Searching) {
            return;
        }
        if self.protocols.nat_pmp {
            self.pmp = Pmp::Asking { protocol: Protocol::NatPmp, next: now };
            self.search_timeout(now);
        } else {
            self.refused(Protocol::Pcp, "the gateway speaks NAT-PMP only, which is off".into());
        }
    }

    fn natpmp_complete(&mut self, now: Instant) {
        if let (Some(ip), Some((port, lifetime))) = (self.natpmp_ip, self.natpmp_port) {
            self.natpmp_port = None;
            self.mapped(now, Mapping { protocol: Protocol::NatPmp, external: SocketAddrV4::new(ip, port), lifetime });
        }
    }

    /// A datagram arrived on the SSDP socket from `from`.
    pub fn handle_ssdp(&mut self, _now: Instant, from: SocketAddrV4, datagram: &[u8]) {
        if !matches!(self.upnp, Upnp::Searching(_)) || *from.ip() != self.gateway {
            return;
        }
        // Only the gateway's own description: a neighbour cannot point us anywhere else.
        let Ok(location) = upnp::parse_ssdp_response(datagram) else { return };
        if *location.addr.ip() != self.gateway {
            return;
        }
        self.location = Some(location);
        self.upnp = Upnp::Found;
        if matches!(self.pmp, Pmp::Off | Pmp::Failed(_)) {
            self.upnp_ask(UpnpAction::Describe);
        }
    }

    fn upnp_ask(&mut self, action: UpnpAction) {
        let service = self.service.as_ref();
        let (to, request) = match (action, service, &self.location) {
            (UpnpAction::Describe, _, Some(location)) => (location.addr, upnp::get_request(location)),
            (UpnpAction::ExternalIp, Some(s), _) => {
                (s.control.addr, upnp::soap_request(&s.control, &s.service_type, "GetExternalIPAddress", &[]))
            }
            (UpnpAction::Add { port, permanent }, Some(s), _) => {
                let lease = if permanent { 0 } else { self.lifetime_secs() };
                let args = [
                    ("NewRemoteHost", String::new()),
                    ("NewExternalPort", port.to_string()),
                    ("NewProtocol", "UDP".into()),
                    ("NewInternalPort", self.internal.port().to_string()),
                    ("NewInternalClient", self.internal.ip().to_string()),
                    ("NewEnabled", "1".into()),
                    ("NewPortMappingDescription", "warren".into()),
                    ("NewLeaseDuration", lease.to_string()),
                ];
                (s.control.addr, upnp::soap_request(&s.control, &s.service_type, "AddPortMapping", &args))
            }
            (UpnpAction::Delete, Some(s), _) => {
                let Phase::Removing { mapping, .. } = self.phase else { return };
                let args = [
                    ("NewRemoteHost", String::new()),
                    ("NewExternalPort", mapping.external.port().to_string()),
                    ("NewProtocol", "UDP".into()),
                ];
                (s.control.addr, upnp::soap_request(&s.control, &s.service_type, "DeletePortMapping", &args))
            }
            _ => return,
        };
        self.next_http += 1;
        self.upnp = Upnp::Asking { id: self.next_http, action };
        self.transmits.push(Transmit::Http { id: self.next_http, to, request });
    }

    /// The HTTP exchange `id` ended: the whole answer, or why it failed.
    pub fn handle_http(&mut self, now: Instant, id: u64, answer: Result<Vec<u8>, String>) {
        let Upnp::Asking { id: asked, action } = self.upnp else { return };
        if asked != id {
            return;
        }
        self.upnp = Upnp::Ready;
        let outcome = answer.map_err(UpnpError::Io).and_then(|bytes| upnp::parse_http_response(&bytes));
        let step = match (action, outcome) {
            (UpnpAction::Delete, _) => {
                if matches!(self.phase, Phase::Removing { .. }) {
                    self.phase = Phase::Over;
                    self.events.push(Event::Removed);
                }
                return;
            }
            (_, Err(e)) => Err(e),
            (UpnpAction::Describe, Ok((200, body))) => {
                let location = self.location.clone().expect("a description is asked for at a location");
                upnp::parse_description(&body, &location).map(|service| {
                    self.service = Some(service);
                    UpnpAction::ExternalIp
                })
            }
            (UpnpAction::Describe, Ok((status, _))) => Err(UpnpError::Status(status)),
            (UpnpAction::ExternalIp, Ok((status, body))) => {
                upnp::parse_soap_response(status, &body, "GetExternalIPAddress").and_then(|args| {
                    let ip = upnp::argument(&args, "NewExternalIPAddress")?;
                    match ip.parse::<Ipv4Addr>() {
                        Ok(ip) if usable(ip) => {
                            self.upnp_ip = Some(ip);
                            Ok(UpnpAction::Add { port: self.internal.port(), permanent: false })
                        }
                        _ => Err(UpnpError::Malformed("no usable external address")),
                    }
                })
            }
            (UpnpAction::Add { port, permanent }, Ok((status, body))) => {
                match upnp::parse_soap_response(status, &body, "AddPortMapping") {
                    Ok(_) => {
                        let ip = self.upnp_ip.expect("the external address is known before a mapping");
                        let lifetime = if permanent { Duration::ZERO } else { self.lifetime };
                        self.mapped(
                            now,
                            Mapping { protocol: Protocol::Upnp, external: SocketAddrV4::new(ip, port), lifetime },
                        );
                        return;
                    }
                    // Only permanent leases: ask again without one (removed at shutdown).
                    Err(UpnpError::Fault { code: 725, .. }) if !permanent => {
                        Ok(UpnpAction::Add { port, permanent: true })
                    }
                    // The port is someone else's: another one, a few times.
                    Err(UpnpError::Fault { code: 718, .. })
                        if matches!(self.phase, Phase::Searching) && self.upnp_tries + 1 < UPNP_PORT_TRIES =>
                    {
                        self.upnp_tries += 1;
                        let i = 2 * (self.upnp_tries - 1);
                        let port = 1024 + u16::from_be_bytes([self.nonce[i], self.nonce[i + 1]]) % (u16::MAX - 1024);
                        Ok(UpnpAction::Add { port, permanent })
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match step {
            Ok(next) => self.upnp_ask(next),
            Err(e) if matches!(self.phase, Phase::Mapped { .. }) => {
                // A failed renewal: tried again (see handle_timeout) until the mapping expires,
                // unless the gateway refused it outright.
                if let UpnpError::Fault { .. } = e {
                    self.refused(Protocol::Upnp, e.to_string());
                }
            }
            Err(e) => self.refused(Protocol::Upnp, e.to_string()),
        }
    }

    /// Starts removing the mapping (if there is one); [`Event::Removed`] says when it is done.
    pub fn shutdown(&mut self, now: Instant) {
        match self.phase {
            Phase::Mapped { mapping, .. } => {
                self.phase = Phase::Removing { mapping, deadline: now + REMOVE_TIMEOUT };
                match mapping.protocol {
                    Protocol::Upnp => self.upnp_ask(UpnpAction::Delete),
                    protocol => self.pmp_requests(protocol, 0, None),
                }
            }
            Phase::Searching => {
                self.phase = Phase::Over;
                self.events.push(Event::Removed);
            }
            Phase::Removing { .. } | Phase::Over => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const EXTERNAL: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 10);
    const NONCE: [u8; 12] = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2];

    fn internal() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 4000)
    }

    fn server() -> SocketAddrV4 {
        SocketAddrV4::new(GW, pmp::SERVER_PORT)
    }

    fn mapper(now: Instant, protocols: Protocols) -> PortMapper {
        PortMapper::new(now, GW, internal(), NONCE, Duration::from_secs(60), protocols)
    }

    fn drain(m: &mut PortMapper) -> Vec<Transmit> {
        std::iter::from_fn(|| m.poll_transmit()).collect()
    }

    fn events(m: &mut PortMapper) -> Vec<Event> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    /// The gateway's PCP answer to `request`: the same bytes with the response bit, `result`,
    /// and `external` in the assigned fields.
    fn pcp_answer(request: &[u8], result: u8, lifetime: u32, external: SocketAddrV4) -> Vec<u8> {
        let mut b = request.to_vec();
        b[1] |= 0x80;
        b[3] = result;
        b[4..8].copy_from_slice(&lifetime.to_be_bytes());
        b[42..44].copy_from_slice(&external.port().to_be_bytes());
        b[44..60].copy_from_slice(&external.ip().to_ipv6_mapped().octets());
        b
    }

    fn natpmp_external(ip: Ipv4Addr) -> Vec<u8> {
        [&[0u8, 128, 0, 0, 0, 0, 0, 1][..], &ip.octets()].concat()
    }

    fn natpmp_map(internal: u16, external: u16, lifetime: u32) -> Vec<u8> {
        [&[0u8, 129, 0, 0, 0, 0, 0, 1][..], &internal.to_be_bytes(), &external.to_be_bytes(), &lifetime.to_be_bytes()]
            .concat()
    }

    fn http(body: &str) -> Result<Vec<u8>, String> {
        Ok(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
    }

    fn pmp_only(transmits: &[Transmit]) -> Vec<Vec<u8>> {
        transmits.iter().filter_map(|t| if let Transmit::Pmp(b) = t { Some(b.clone()) } else { None }).collect()
    }

    #[test]
    fn pcp_maps_renews_at_half_the_lifetime_and_removes_at_shutdown() {
        let t0 = Instant::now();
        let mut m = mapper(t0, Protocols::ALL);
        let sent = drain(&mut m);
        let requests = pmp_only(&sent);
        assert_eq!(requests.len(), 1);
        assert_eq!(sent.iter().filter(|t| matches!(t, Transmit::Ssdp { .. })).count(), 2, "group and gateway");
        let external = SocketAddrV4::new(EXTERNAL, 4000);
        m.handle_pmp(t0 + Duration::from_millis(2), server(), &pcp_answer(&requests[0], 0, 60, external));
        let mapping = Mapping { protocol: Protocol::Pcp, external, lifetime: Duration::from_secs(60) };
        assert_eq!(events(&mut m), [Event::Mapped(mapping)]);
        let renew = t0 + Duration::from_millis(2) + Duration::from_secs(30);
        assert_eq!(m.poll_timeout(), Some(renew));
        // Nothing goes out before.
        m.handle_timeout(renew - Duration::from_millis(1));
        assert!(drain(&mut m).is_empty());
        m.handle_timeout(renew);
        let again = pmp_only(&drain(&mut m));
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0][42..44], &4000u16.to_be_bytes(), "renewal suggests the current port");
        m.handle_pmp(renew, server(), &pcp_answer(&again[0], 0, 60, external));
        assert_eq!(events(&mut m), [Event::Renewed(mapping)]);
        m.shutdown(renew);
        let delete = pmp_only(&drain(&mut m));
        assert_eq!(u32::from_be_bytes(delete[0][4..8].try_into().unwrap()), 0, "lifetime 0 deletes");
        m.handle_pmp(renew, server(), &pcp_answer(&delete[0], 0, 0, external));
        assert_eq!(events(&mut m), [Event::Removed]);
        assert!(m.is_over());
    }

    #[test]
    fn a_nat_pmp_gateway_is_asked_again_in_nat_pmp() {
        let t0 = Instant::now();
        let mut m = mapper(t0, Protocols { upnp: false, ..Protocols::ALL });
        let _ = drain(&mut m);
        m.handle_pmp(t0, server(), &[0, 129, 0, 1, 0, 0, 0, 0]);
        let requests = pmp_only(&drain(&mut m));
        assert_eq!(requests, [pmp::natpmp_external_address().to_vec(), pmp::natpmp_map_udp(4000, 4000, 60).to_vec()]);
        // Answers in either order; the mapping needs both.
        m.handle_pmp(t0, server(), &natpmp_map(4000, 4001, 60));
        assert!(events(&mut m).is_empty());
        m.handle_pmp(t0, server(), &natpmp_external(EXTERNAL));
        let external = SocketAddrV4::new(EXTERNAL, 4001);
        assert_eq!(
            events(&mut m),
            [Event::Mapped(Mapping { protocol: Protocol::NatPmp, external, lifetime: Duration::from_secs(60) })]
        );
        m.shutdown(t0);
        assert_eq!(pmp_only(&drain(&mut m)), [pmp::natpmp_map_udp(4000, 0, 0).to_vec()]);
        // No answer: the deletion is given up after its timeout.
        m.handle_timeout(t0 + REMOVE_TIMEOUT);
        assert_eq!(events(&mut m), [Event::Removed]);
    }

    #[test]
    fn no_gateway_costs_one_short_bounded_search() {
        let t0 = Instant::now();
        let mut m = mapper(t0, Protocols::ALL);
        let mut sent = drain(&mut m);
        let mut now = t0;
        while let Some(due) = m.poll_timeout() {
            assert!(due >= now, "time never goes back");
            now = due;
            m.handle_timeout(now);
            sent.extend(drain(&mut m));
        }
        assert_eq!(now, t0 + SEARCH_TIMEOUT);
        assert_eq!(pmp_only(&sent).len(), 3, "PCP at 0, 250 and 500 ms");
        assert_eq!(sent.len(), 3 + 4, "and two SSDP searches, each to the group and the gateway");
        let [Event::Unavailable(reason)] = &events(&mut m)[..] else { panic!() };
        assert!(reason.contains("PCP: no answer") && reason.contains("UPnP: no answer"), "{reason}");
        assert!(m.is_over());
    }

    #[test]
    fn answers_not_from_the_gateway_or_not_for_this_request_are_ignored() {
        let t0 = Instant::now();
        let mut m = mapper(t0, Protocols { upnp: false, ..Protocols::ALL });
        let request = pmp_only(&drain(&mut m)).remove(0);
        let attacker = SocketAddrV4::new(EXTERNAL, 6666);
        let good = pcp_answer(&request, 0, 60, attacker);
        // A LAN neighbour: another address, or the gateway's address from another port.
        m.handle_pmp(t0, SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 66), pmp::SERVER_PORT), &good);
        m.handle_pmp(t0, SocketAddrV4::new(GW, 9999), &good);
        // The right source, but a guessed nonce, another internal port, TCP.
        let mut wrong_nonce = good.clone();
        wrong_nonce[24] ^= 1;
        let mut wrong_port = good.clone();
        wrong_port[40..42].copy_from_slice(&4001u16.to_be_bytes());
        let mut tcp = good.clone();
        tcp[36] = 6;
        for answer in [wrong_nonce, wrong_port, tcp, request.clone(), vec![0xff; 2000], vec![]] {
            m.handle_pmp(t0, server(), &answer);
        }
        // A NAT-PMP map answer for someone else's port while asking in PCP.
        m.handle_pmp(t0, server(), &natpmp_map(4000, 1, 60));
        assert!(events(&mut m).is_empty());
        assert_eq!(m.mapping(), None);
        // An unusable external address is a refusal, not a candidate.
        m.handle_pmp(t0, server(), &pcp_answer(&request, 0, 60, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4000)));
        let [Event::Unavailable(reason)] = &events(&mut m)[..] else { panic!() };
        assert!(reason.contains("no usable external address"), "{reason}");
    }

    #[test]
    fn a_refusal_is_reported_and_a_lost_renewal_expires() {
        let t0 = Instant::now();
        let mut m = mapper(t0, Protocols { upnp: false, ..Protocols::ALL });
        let request = pmp_only(&drain(&mut m)).remove(0);
        m.handle_pmp(t0, server(), &pcp_answer(&request, 2, 0, SocketAddrV4::new(EXTERNAL, 0)));
        let [Event::Unavailable(reason)] = &events(&mut m)[..] else { panic!() };
        assert!(reason.contains("PCP: not authorized"), "{reason}");

        let mut m = mapper(t0, Protocols { upnp: false, ..Protocols::ALL });
        let request = pmp_only(&drain(&mut m)).remove(0);
        m.handle_pmp(t0, server(), &pcp_answer(&request, 0, 60, SocketAddrV4::new(EXTERNAL, 4000)));
        let _ = events(&mut m);
        let mut now = t0;
        let mut renewals = 0;
        while let Some(due) = m.poll_timeout() {
            now = due;
            m.handle_timeout(now);
            renewals += pmp_only(&drain(&mut m)).len();
        }
        assert_eq!(now, t0 + Duration::from_secs(60));
        assert_eq!(renewals, 30_000 / 250, "every 250 ms from half the lifetime to the end");
        let [Event::Lost(reason)] = &events(&mut m)[..] else { panic!() };
        assert!(reason.contains("expired"), "{reason}");
    }

    const DESCRIPTION: &str = "<root><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service></serviceList></device></root>";

    fn ssdp(location: &str) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\nST: {}\r\nLOCATION: {location}\r\n\r\n", upnp::SEARCH_TARGET).into_bytes()
    }

    fn soap(action: &str, inner: &str) -> Result<Vec<u8>, String> {
        http(&format!(
            "<s:Envelope><s:Body><u:{action}Response xmlns:u=\"x\">{inner}</u:{action}Response></s:Body></s:Envelope>"
        ))
    }

    fn fault(code: u16) -> Result<Vec<u8>, String> {
        let body = format!(
            "<s:Envelope><s:Body><s:Fault><detail><UPnPError><errorCode>{code}</errorCode><errorDescription>e</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
        );
        Ok(format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
    }

    fn http_request(m: &mut PortMapper) -> (u64, String) {
        match drain(m).pop() {
            Some(Transmit::Http { id, to, request }) => {
                assert_eq!(*to.ip(), GW);
                (id, String::from_utf8(request).unwrap())
            }
            other => panic!("expected an HTTP exchange, got {other:?}"),
        }
    }

    #[test]
    fn upnp_describes_asks_the_address_and_maps_trying_another_port_on_conflict() {
        let t0 = Instant::now();
        let mut m = mapper(t0, Protocols { pcp: false, nat_pmp: false, upnp: true });
        let _ = drain(&mut m);
        // A neighbour answering the search, and the gateway pointing elsewhere, are ignored.
        m.handle_ssdp(
            t0,
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 66), 1900),
            &ssdp("http://192.168.1.66:80/d.xml"),
        );
        m.handle_ssdp(t0, SocketAddrV4::new(GW, 1900), &ssdp("http://10.9.9.9:80/d.xml"));
        assert!(drain(&mut m).is_empty());
        m.handle_ssdp(t0, SocketAddrV4::new(GW, 1900), &ssdp("http://192.168.1.1:5000/rootDesc.xml"));
        let (id, request) = http_request(&mut m);
        assert!(request.starts_with("GET /rootDesc.xml HTTP/1.1\r\n"), "{request}");
        // A stale answer (another id) changes nothing.
        m.handle_http(t0, id + 7, http(DESCRIPTION));
        assert!(drain(&mut m).is_empty());
        m.handle_http(t0, id, http(DESCRIPTION));
        let (id, request) = http_request(&mut m);
        assert!(
            request.starts_with("POST /ctl/IPConn HTTP/1.1") && request.contains("#GetExternalIPAddress\""),
            "{request}"
        );
        m.handle_http(t0, id, soap("GetExternalIPAddress", "<NewExternalIPAddress>11.0.0.10</NewExternalIPAddress>"));
        let (id, request) = http_request(&mut m);
        assert!(
            request.contains("<NewExternalPort>4000</NewExternalPort>")
                && request.contains("<NewInternalClient>192.168.1.2</NewInternalClient>")
        );
        m.handle_http(t0, id, fault(718));
        let (id, request) = http_request(&mut m);
        let port = 1024 + u16::from_be_bytes([NONCE[0], NONCE[1]]) % (u16::MAX - 1024);
        assert!(request.contains(&format!("<NewExternalPort>{port}</NewExternalPort>")), "{request}");
        m.handle_http(t0, id, soap("AddPortMapping", ""));
        let external = SocketAddrV4::new(EXTERNAL, port);
        assert_eq!(
            events(&mut m),
            [Event::Mapped(Mapping { protocol: Protocol::Upnp, external, lifetime: Duration::from_secs(60) })]
        );
        m.shutdown(t0);
        let (id, request) = http_request(&mut m);
        assert!(
            request.contains("#DeletePortMapping\"")
                && request.contains(&format!("<NewExternalPort>{port}</NewExternalPort>"))
        );
        m.handle_http(t0, id, soap("DeletePortMapping", ""));
        assert_eq!(events(&mut m), [Event::Removed]);
    }

    #[test]
    fn upnp_waits_for_pcp_and_nat_pmp_to_fail_first() {
        let t0 = Instant::now();
        let mut m = mapper(t0, Protocols::ALL);
        let _ = drain(&mut m);
        m.handle_ssdp(t0, SocketAddrV4::new(GW, 1900), &ssdp("http://192.168.1.1:5000/rootDesc.xml"));
        assert!(pmp_only(&drain(&mut m)).is_empty() && drain(&mut m).is_empty(), "no HTTP while PCP may still answer");
        let mut now = t0;
        let mut http = None;
        while now < t0 + PMP_TIMEOUT {
            now = m.poll_timeout().unwrap();
            m.handle_timeout(now);
            let sent = drain(&mut m);
            http = sent.iter().find_map(|t| if let Transmit::Http { id, .. } = t { Some(*id) } else { None });
            assert_eq!(http.is_some(), now >= t0 + PMP_TIMEOUT, "{sent:?}");
        }
        // A failed UPnP exchange ends the search with both reasons.
        let id = http.unwrap();
        m.handle_http(now, id, Err("connection refused".into()));
        let [Event::Unavailable(reason)] = &events(&mut m)[..] else { panic!() };
        assert!(reason.contains("PCP: no answer") && reason.contains("UPnP: connection refused"), "{reason}");
    }
}
