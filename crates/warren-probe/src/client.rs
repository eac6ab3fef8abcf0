//! `warren probe`: the RFC 5780 tests against an RFC 5780 server.
//!
//! - UDP blocked: no answer at all to the first request.
//! - Mapping (RFC 5780 4.3), on one socket: Test I to the primary address gives mapped address
//!   M1 and the server's OTHER-ADDRESS; Test II to (alternate IP, primary port) gives M2;
//!   M2 = M1 is endpoint-independent; else Test III to (alternate IP, alternate port) gives
//!   M3; M3 = M2 is address-dependent, else address-and-port-dependent.
//! - Filtering (4.4), on a fresh socket (the mapping tests contacted the other addresses):
//!   Test I; Test II asks for the answer from the other IP and port: it arrives,
//!   endpoint-independent; else Test III asks for it from the other port only: it arrives,
//!   address-dependent, else address-and-port-dependent.
//! - Hairpinning (4.5): a request sent to our own mapped address comes back to us.
//! - Port preservation: the mapped port is our local port.
//! - Binding lifetime (4.6, only when asked; bounded): sockets whose bindings are left idle
//!   for growing times are each asked for by the main socket with RESPONSE-PORT; an answer
//!   that arrives shows the binding still lived. Run side by side, so the whole test takes as
//!   long as the longest wait.
//! - Double NAT: the mapped address is private or carrier-grade shared space while the server
//!   is public: another NAT sits beyond the one the server sees. (From outside, more cannot be
//!   told.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;

use crate::report::{Behaviour, Lifetime, Report};
use crate::stun::{self, MAX_DATAGRAM, Request, Response};

/// How the probe runs.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The server's primary address.
    pub server: SocketAddr,
    /// First wait for an answer; each retry waits twice as long.
    pub timeout: Duration,
    /// Sends per request (first try and retries).
    pub tries: u32,
    /// Idle times to test binding lifetime at (None: no lifetime test).
    pub lifetime: Option<Vec<Duration>>,
}

impl ProbeOptions {
    /// Defaults for `server`: 250 ms, 3 tries (1.75 s before giving up on an answer), no
    /// lifetime test.
    pub fn new(server: SocketAddr) -> Self {
        Self { server, timeout: Duration::from_millis(250), tries: 3, lifetime: None }
    }
}

/// Idle times tried by `--lifetime`, up to `max`.
pub fn lifetime_checkpoints(max: Duration) -> Vec<Duration> {
    [1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600]
        .into_iter()
        .map(Duration::from_secs)
        .filter(|d| *d <= max)
        .collect()
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeResult {
    /// The server probed.
    pub server: SocketAddr,
    /// Our socket's address (the interface the route to the server uses).
    pub local: Option<SocketAddr>,
    /// Where the server saw us (Test I).
    pub mapped: Option<SocketAddr>,
    /// The server's OTHER-ADDRESS.
    pub other: Option<SocketAddr>,
    /// What was measured, in the shape of the report (no public IP; see
    /// [`ProbeResult::report`]).
    #[serde(flatten)]
    pub findings: Report,
    /// What could not be measured and why.
    pub notes: Vec<String>,
}

/// Why the probe could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A local socket failed.
    #[error("probe socket: {0}")]
    Io(#[from] std::io::Error),
}

fn tid() -> [u8; 12] {
    *stun_rs::TransactionId::default().as_bytes()
}

/// Any address and port of `server`'s family.
fn any_addr(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() }
}

async fn fresh_socket(server: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(any_addr(server)).await
}

/// Sends `bytes` from `sender` to `to`, then listens on `listener` for the first datagram
/// `matches` accepts, once per wait in `waits` (a lost request or answer is retried).
async fn ask<T>(
    (sender, listener): (&UdpSocket, &UdpSocket),
    bytes: &[u8],
    to: SocketAddr,
    waits: impl IntoIterator<Item = Duration>,
    mut matches: impl FnMut(&[u8], SocketAddr) -> Option<T>,
) -> std::io::Result<Option<T>> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    for wait in waits {
        sender.send_to(bytes, to).await?;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((len, from))) = tokio::time::timeout_at(deadline, listener.recv_from(&mut buf)).await {
            if let Some(found) = matches(&buf[..len], from) {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// The probe's retry schedule: `opts.tries` waits, doubling from `opts.timeout`.
fn retries(opts: &ProbeOptions) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(opts.timeout), |wait| Some(*wait * 2)).take(opts.tries.max(1) as usize)
}

/// Sends `req` to `to` until an answer with its transaction id arrives (from anywhere).
async fn transact(
    socket: &UdpSocket,
    to: SocketAddr,
    req: Request,
    opts: &ProbeOptions,
) -> Option<(Response, SocketAddr)> {
    let id = tid();
    let bytes = stun::request(id, req);
    let answer = |datagram: &[u8], from| stun::response(datagram).filter(|r| r.tid == id).map(|r| (r, from));
    ask((socket, socket), &bytes, to, retries(opts), answer).await.ok().flatten()
}

/// The local address of the route to `server`.
fn route_ip(server: SocketAddr) -> Option<IpAddr> {
    let probe = std::net::UdpSocket::bind(any_addr(server)).ok()?;
    probe.connect(server).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

fn is_private_or_shared(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Runs the tests; `progress` hears what is happening (the slow tests wait for answers that
/// may never come).
pub async fn probe(opts: &ProbeOptions, progress: impl Fn(&str)) -> Result<ProbeResult, ProbeError> {
    let server = opts.server;
    let mut result =
        ProbeResult { server, local: None, mapped: None, other: None, findings: Report::empty(), notes: Vec::new() };
    let main = fresh_socket(server).await?;
    let local = route_ip(server).map(|ip| SocketAddr::new(ip, main.local_addr().map(|a| a.port()).unwrap_or(0)));
    result.local = local;

    progress("test I: binding request to the primary address");
    let Some((first, _)) = transact(&main, server, Request::default(), opts).await else {
        result.findings.udp_blocked = true;
        result.notes.push("no answer from the server over UDP: UDP is blocked (or the server is down)".into());
        return Ok(result);
    };
    let m1 = first.mapped;
    result.mapped = Some(m1);
    result.other = first.other;
    let no_nat = local == Some(m1);
    result.findings.no_nat = Some(no_nat);
    if !no_nat {
        result.findings.port_preserved = local.map(|l| l.port() == m1.port());
    }
    if is_private_or_shared(m1.ip()) && !is_private_or_shared(server.ip()) {
        result.findings.double_nat = Some(true);
    }
    let Some(other) = first.other else {
        result.notes.push("the server sent no OTHER-ADDRESS: it does not support RFC 5780 tests".into());
        return Ok(result);
    };

    progress("mapping tests II and III: the same socket to the alternate IP, then the alternate port");
    let alt_ip_primary_port = SocketAddr::new(other.ip(), server.port());
    match transact(&main, alt_ip_primary_port, Request::default(), opts).await {
        None => result.notes.push(format!("no answer from {alt_ip_primary_port}: mapping not measured")),
        Some((second, _)) if second.mapped == m1 => result.findings.mapping = Some(Behaviour::EndpointIndependent),
        Some((second, _)) => match transact(&main, other, Request::default(), opts).await {
            None => result.notes.push(format!("no answer from {other}: mapping not fully measured")),
            Some((third, _)) if third.mapped == second.mapped => {
                result.findings.mapping = Some(Behaviour::AddressDependent)
            }
            Some(_) => result.findings.mapping = Some(Behaviour::AddressAndPortDependent),
        },
    }

    progress("filtering tests (waits for answers that may never come)");
    let fresh = fresh_socket(server).await?;
    if transact(&fresh, server, Request::default(), opts).await.is_none() {
        result.notes.push("no answer on a second socket: filtering not measured".into());
    } else {
        let change_both = Request { change_ip: true, change_port: true, response_port: None };
        let change_port = Request { change_ip: false, change_port: true, response_port: None };
        result.findings.filtering = Some(if transact(&fresh, server, change_both, opts).await.is_some() {
            Behaviour::EndpointIndependent
        } else if transact(&fresh, server, change_port, opts).await.is_some() {
            Behaviour::AddressDependent
        } else {
            Behaviour::AddressAndPortDependent
        });
    }

    if !no_nat {
        progress("hairpinning: a request to our own mapped address");
        result.findings.hairpin = Some(hairpin(&main, m1, opts).await);
    }

    if let Some(checkpoints) = &opts.lifetime {
        let longest = checkpoints.iter().max().copied().unwrap_or_default();
        progress(&format!("binding lifetime: {} idle bindings, the longest waits {longest:?}", checkpoints.len()));
        result.findings.lifetime = lifetime(&main, server, checkpoints, opts).await?;
    }
    Ok(result)
}

async fn hairpin(socket: &UdpSocket, mapped: SocketAddr, opts: &ProbeOptions) -> bool {
    let id = tid();
    let bytes = stun::request(id, Request::default());
    let own_request = |datagram: &[u8], _| stun::is_request_for(datagram, &id).then_some(());
    ask((socket, socket), &bytes, mapped, retries(opts), own_request).await.is_ok_and(|found| found.is_some())
}

/// One idle binding per checkpoint, created at once; at each checkpoint the main socket asks
/// the server to answer to that binding's port; whether the answer arrives bounds the lifetime.
async fn lifetime(
    main: &UdpSocket,
    server: SocketAddr,
    checkpoints: &[Duration],
    opts: &ProbeOptions,
) -> Result<Option<Lifetime>, ProbeError> {
    let mut idle = Vec::new();
    for at in checkpoints {
        let socket = fresh_socket(server).await?;
        if let Some((response, _)) = transact(&socket, server, Request::default(), opts).await {
            // Idle from its last packet on: its answer just arrived.
            idle.push((*at, socket, response.mapped.port(), tokio::time::Instant::now()));
        }
    }
    let mut alive = Vec::new();
    let listen = opts.timeout * 4;
    for (at, socket, port, since) in &idle {
        tokio::time::sleep_until(*since + *at).await;
        // What counts is how long the binding really was idle (an earlier check may have run
        // late), to a tenth of a second.
        let waited = Duration::from_millis((since.elapsed().as_millis() as u64).div_ceil(100) * 100);
        let id = tid();
        let request = stun::request(id, Request { response_port: Some(*port), ..Request::default() });
        // Two asks, in case one is lost, from the main socket; the idle socket only listens
        // (it must not refresh its binding).
        let answer = |datagram: &[u8], _| stun::response(datagram).filter(|r| r.tid == id).map(|_| ());
        let heard = ask((main, socket), &request, server, [listen, listen], answer).await?.is_some();
        alive.push((waited, heard));
    }
    if alive.is_empty() {
        return Ok(None);
    }
    let at_least = alive.iter().filter(|(_, a)| *a).map(|(t, _)| *t).max().unwrap_or_default();
    let at_most = alive.iter().filter(|(t, a)| !*a && *t > at_least).map(|(t, _)| *t).min();
    Ok(Some(Lifetime { at_least_s: at_least.as_secs_f64(), at_most_s: at_most.map(|d| d.as_secs_f64()) }))
}

impl ProbeResult {
    /// The anonymised report: behaviour only; the public IP only if `include_ip`.
    pub fn report(&self, include_ip: bool) -> Report {
        Report { public_ip: if include_ip { self.mapped.map(|m| m.ip()) } else { None }, ..self.findings.clone() }
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let name = |b: Option<Behaviour>| b.map_or("not measured", Behaviour::name);
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        let mut out = format!("server           {}\n", self.server);
        if self.findings.udp_blocked {
            out += "UDP              blocked (no answer at all)\n";
        } else {
            out += &format!(
                "local address    {}\npublic address   {}\n",
                self.local.map_or("unknown".into(), |a| a.to_string()),
                self.mapped.map_or("unknown".into(), |a| a.to_string())
            );
            out += &format!("NAT              {}\n", if self.findings.no_nat == Some(true) { "none" } else { "yes" });
            out += &format!("mapping          {}\n", name(self.findings.mapping));
            out += &format!("filtering        {}\n", name(self.findings.filtering));
            out += &format!("hairpinning      {}\n", yes_no(self.findings.hairpin));
            out += &format!("port preserved   {}\n", yes_no(self.findings.port_preserved));
            if let Some(life) = self.findings.lifetime {
                out += &format!(
                    "binding lifetime at least {} s{}\n",
                    life.at_least_s,
                    life.at_most_s.map_or(" (alive at the longest wait tried)".into(), |m| format!(", at most {m} s"))
                );
            }
            if self.findings.double_nat == Some(true) {
                out += "double NAT       yes (the public address is private or carrier-grade space)\n";
            }
        }
        for note in &self.notes {
            out += &format!("note             {note}\n");
        }
        out
    }
}

/// Sends `report` to the server's collector (TCP, primary address); returns the row id.
pub async fn submit(server: SocketAddr, report: &Report) -> Result<i64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(server).await.map_err(|e| e.to_string())?;
        let mut line = serde_json::to_vec(report).map_err(|e| e.to_string())?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        stream.take(4096).read_to_end(&mut reply).await.map_err(|e| e.to_string())?;
        let reply: serde_json::Value = serde_json::from_slice(&reply).map_err(|e| format!("bad reply: {e}"))?;
        match (reply["ok"].as_bool(), reply["id"].as_i64()) {
            (Some(true), Some(id)) => Ok(id),
            _ => Err(reply["error"].as_str().unwrap_or("refused").to_owned()),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "the collector did not answer".to_owned())?
}
