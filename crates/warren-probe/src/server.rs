//! `warren probe-server`: an RFC 5780 STUN server on two addresses and two ports (four
//! sockets) that also collects reports.
//!
//! Each Binding request is answered from the socket its CHANGE-REQUEST names, to the port its
//! RESPONSE-PORT names (at the request's source IP), with XOR-MAPPED-ADDRESS, OTHER-ADDRESS,
//! RESPONSE-ORIGIN and SOFTWARE as far as they fit in the request's size, and never more than
//! the bare RFC 5780 answer to a smaller request (see [`stun::answer`]). Each source IP gets a
//! token bucket of requests; the rest are dropped.
//!
//! Reports come over TCP to the primary address: one JSON line (at most
//! [`MAX_REPORT`](crate::report::MAX_REPORT) bytes), answered with one JSON line,
//! `{"ok":true,"id":N}` or `{"ok":false,"error":"…"}`; five per source IP per minute.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::Store;
use crate::report::{MAX_REPORT, Report};
use crate::stun::{self, MAX_DATAGRAM, Slot};

/// Requests per second each source IP may send (burst: twice that).
pub const REQUESTS_PER_SECOND: f64 = 50.0;

/// Reports each source IP may submit per minute.
pub const REPORTS_PER_MINUTE: f64 = 5.0;

/// Source IPs tracked by the rate limiter at once.
const MAX_TRACKED: usize = 10_000;

/// How long a report connection may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Primary IP and port (port 0: any free one).
    pub primary: SocketAddr,
    /// Alternate IP and port (port 0: any free one).
    pub alternate: SocketAddr,
    /// Where reports are stored (None: reports are refused).
    pub db: Option<PathBuf>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Datagrams received.
    pub datagrams: u64,
    /// Binding requests answered.
    pub answered: u64,
    /// Datagrams dropped: not a Binding request, malformed, or no room for an answer.
    pub dropped: u64,
    /// Requests dropped by the rate limit.
    pub rate_limited: u64,
    /// Bytes received in datagrams.
    pub bytes_in: u64,
    /// Bytes sent in answers.
    pub bytes_out: u64,
    /// Reports stored.
    pub reports_stored: u64,
    /// Reports refused.
    pub reports_refused: u64,
}

#[derive(Default)]
struct Counters {
    datagrams: AtomicU64,
    answered: AtomicU64,
    dropped: AtomicU64,
    rate_limited: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    reports_stored: AtomicU64,
    reports_refused: AtomicU64,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The primary and alternate addresses must differ in both IP and port.
    #[error("the alternate address must differ from the primary in both IP and port ({primary} / {alternate})")]
    SameAddress {
        /// Primary.
        primary: SocketAddr,
        /// Alternate.
        alternate: SocketAddr,
    },
    /// The report store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::catalog::StoreError),
}

/// Token buckets per source IP.
struct Limiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    last_sweep: Option<Instant>,
}

impl Limiter {
    fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: HashMap::new(), last_sweep: None }
    }

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            // At most one sweep a second: a flood of new sources costs no scan per packet.
            if self.last_sweep.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
                return false;
            }
            self.last_sweep = Some(now);
            // Forget the sources that have been quiet long enough to have a full bucket again.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (level, at)| *level + now.duration_since(*at).as_secs_f64() * rate < burst);
            if self.buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let (level, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *level < 1.0 {
            return false;
        }
        *level -= 1.0;
        true
    }
}

/// A running probe server.
pub struct ProbeServer {
    primary: SocketAddr,
    alternate: SocketAddr,
    counters: Arc<Counters>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

async fn bind_four(primary: SocketAddr, alternate: SocketAddr) -> Result<[UdpSocket; 4], ServerError> {
    let bind = |addr: SocketAddr| async move {
        UdpSocket::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
    };
    if primary.port() != 0 && alternate.port() != 0 {
        let mut sockets = Vec::new();
        for slot in Slot::ALL {
            sockets.push(bind(slot.addr(primary, alternate)).await?);
        }
        return Ok(sockets.try_into().expect("four sockets"));
    }
    // Free ports: pick two on the primary IP, then take the same two on the alternate IP,
    // trying again if one is taken there.
    let mut last = None;
    for _ in 0..20 {
        let a = bind(SocketAddr::new(primary.ip(), primary.port())).await?;
        let b = bind(SocketAddr::new(primary.ip(), alternate.port())).await?;
        let (p1, p2) = (a.local_addr().expect("bound").port(), b.local_addr().expect("bound").port());
        match (bind(SocketAddr::new(alternate.ip(), p1)).await, bind(SocketAddr::new(alternate.ip(), p2)).await) {
            (Ok(c), Ok(d)) => return Ok([a, b, c, d]),
            (Err(e), _) | (_, Err(e)) => last = Some(e),
        }
    }
    Err(last.expect("twenty attempts"))
}

impl ProbeServer {
    /// Binds the four sockets (and the report listener on the primary address) and serves.
    pub async fn spawn(config: ServerConfig) -> Result<Self, ServerError> {
        let (primary, alternate) = (config.primary, config.alternate);
        if primary.ip() == alternate.ip() || (primary.port() == alternate.port() && primary.port() != 0) {
            return Err(ServerError::SameAddress { primary, alternate });
        }
        let store = match &config.db {
            Some(path) => Some(Arc::new(Mutex::new(Store::open(path)?))),
            None => None,
        };
        let sockets = bind_four(primary, alternate).await?;
        let primary = sockets[0].local_addr().map_err(|source| ServerError::Bind { addr: primary, source })?;
        let alternate = sockets[3].local_addr().map_err(|source| ServerError::Bind { addr: alternate, source })?;
        let reports = TcpListener::bind(primary).await.map_err(|source| ServerError::Bind { addr: primary, source })?;
        let sockets = Arc::new(sockets);
        let counters = Arc::new(Counters::default());
        let limiter = Arc::new(Mutex::new(Limiter::new(REQUESTS_PER_SECOND, 2.0 * REQUESTS_PER_SECOND)));
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        for slot in Slot::ALL {
            let (sockets, counters, limiter, cancel) =
                (sockets.clone(), counters.clone(), limiter.clone(), cancel.clone());
            tasks.spawn(async move {
                cancel.run_until_cancelled(serve_udp(slot, sockets, primary, alternate, counters, limiter)).await;
            });
        }
        let report_limiter = Arc::new(Mutex::new(Limiter::new(REPORTS_PER_MINUTE / 60.0, REPORTS_PER_MINUTE)));
        let (inner, counters2, stop) = (tasks.clone(), counters.clone(), cancel.clone());
        tasks.spawn(async move {
            while let Some(accepted) = stop.run_until_cancelled(reports.accept()).await {
                let (stream, from) = match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: wait a little and go on.
                    Err(error) => {
                        tracing::warn!(%error, "report accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (store, counters, limiter, stop) =
                    (store.clone(), counters2.clone(), report_limiter.clone(), stop.clone());
                inner.spawn(async move {
                    stop.run_until_cancelled(serve_report(stream, from, store, counters, limiter)).await;
                });
            }
        });
        tracing::info!(%primary, %alternate, "probe server listening");
        Ok(Self { primary, alternate, counters, tasks, cancel })
    }

    /// The primary address (as bound).
    pub fn primary(&self) -> SocketAddr {
        self.primary
    }

    /// The alternate address (as bound).
    pub fn alternate(&self) -> SocketAddr {
        self.alternate
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            datagrams: get(&c.datagrams),
            answered: get(&c.answered),
            dropped: get(&c.dropped),
            rate_limited: get(&c.rate_limited),
            bytes_in: get(&c.bytes_in),
            bytes_out: get(&c.bytes_out),
            reports_stored: get(&c.reports_stored),
            reports_refused: get(&c.reports_refused),
        }
    }

    /// Stops serving; the ports are free when it returns.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn serve_udp(
    slot: Slot,
    sockets: Arc<[UdpSocket; 4]>,
    primary: SocketAddr,
    alternate: SocketAddr,
    counters: Arc<Counters>,
    limiter: Arc<Mutex<Limiter>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let Ok((len, source)) = sockets[slot.index()].recv_from(&mut buf).await else { continue };
        counters.datagrams.fetch_add(1, Ordering::Relaxed);
        counters.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        if !limiter.lock().expect("limiter lock poisoned").allow(source.ip(), Instant::now()) {
            counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Longer than MAX_DATAGRAM (the buffer has one byte more): stun::answer drops it unread.
        let Some(answer) = stun::answer(&buf[..len], slot, source, primary, alternate) else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        debug_assert!(answer.bytes.len() <= len.max(stun::BASE_ANSWER_MAX));
        if sockets[answer.from.index()].send_to(&answer.bytes, answer.to).await.is_ok() {
            counters.answered.fetch_add(1, Ordering::Relaxed);
            counters.bytes_out.fetch_add(answer.bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

async fn serve_report(
    mut stream: TcpStream,
    from: SocketAddr,
    store: Option<Arc<Mutex<Store>>>,
    counters: Arc<Counters>,
    limiter: Arc<Mutex<Limiter>>,
) {
    let outcome = async {
        if !limiter.lock().expect("limiter lock poisoned").allow(from.ip(), Instant::now()) {
            return Err("too many reports from this address; try again in a minute".to_owned());
        }
        let store = store.ok_or("this server does not collect reports")?;
        // One line, at most one byte over the limit (which Report::parse then refuses).
        let mut line = Vec::new();
        let mut reader = tokio::io::BufReader::new((&mut stream).take(MAX_REPORT as u64 + 1));
        let read = tokio::io::AsyncBufReadExt::read_until(&mut reader, b'\n', &mut line);
        tokio::time::timeout(REPORT_TIMEOUT, read)
            .await
            .map_err(|_| "report timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let report = Report::parse(&line).map_err(|e| e.to_string())?;
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        tokio::task::spawn_blocking(move || store.lock().expect("store lock poisoned").add(&report, now))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
    .await;
    let reply = match outcome {
        Ok(id) => {
            counters.reports_stored.fetch_add(1, Ordering::Relaxed);
            serde_json::json!({ "ok": true, "id": id })
        }
        Err(error) => {
            counters.reports_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, %error, "report refused");
            serde_json::json!({ "ok": false, "error": error })
        }
    };
    let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_holds_a_source_to_its_rate_and_spares_others() {
        let start = Instant::now();
        let mut limiter = Limiter::new(10.0, 20.0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // One second, 1,000 requests from a: the burst plus the rate get through.
        let passed = (0..1000).filter(|i| limiter.allow(a, start + Duration::from_millis(*i))).count();
        assert!((25..=32).contains(&passed), "{passed}");
        assert!(limiter.allow(b, start + Duration::from_millis(999)));
    }
}
