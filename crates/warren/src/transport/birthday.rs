//! The extra sockets of birthday probing ([`crate::state::punch`]): on the side behind a NAT
//! that gives every destination a random port, up to [`PER_ATTEMPT`] one-off sockets, each of
//! which opens one random mapping towards the peer. The one the peer's spray finds carries the
//! connection's packets from then on; the others close when the attempt ends.
//!
//! The path table knows a (socket, peer address) pair by an **alias**: an address in
//! `fd57:6172:7265:6e00::/64` (never routed: a ULA prefix warren keeps for this) holding the
//! socket's slot and the peer's IPv4 address, with the peer's port. So the sans-IO table needs
//! no notion of more than one socket: the driver ([`super::paths::Paths`]) sends what the
//! table addresses to an alias through that socket, to the real address, and hands what the
//! socket receives to the table as coming from the alias. Only IPv4 peers.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::RemoteIdentity;

/// Sockets one attempt may open.
pub const PER_ATTEMPT: usize = 256;
/// Sockets open at once at most (over all attempts).
pub const MAX_OPEN: usize = 1024;
/// Winning sockets kept at most; beyond that the oldest closes (its path falls back to the
/// relay and is re-probed there).
pub const MAX_KEPT: usize = 16;

const PREFIX: [u16; 4] = [0xfd57, 0x6172, 0x7265, 0x6e00];

/// The alias of `to` reached through slot `slot`.
pub fn alias(slot: u16, to: SocketAddrV4) -> SocketAddr {
    let [a, b, c, d] = to.ip().octets();
    let ip = Ipv6Addr::new(
        PREFIX[0],
        PREFIX[1],
        PREFIX[2],
        PREFIX[3],
        0,
        slot,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    );
    SocketAddr::new(ip.into(), to.port())
}

/// The slot and real address behind an alias.
pub fn unalias(addr: SocketAddr) -> Option<(u16, SocketAddrV4)> {
    let SocketAddr::V6(v6) = addr else { return None };
    let s = v6.ip().segments();
    if s[..4] != PREFIX || s[4] != 0 {
        return None;
    }
    let [a, b] = s[6].to_be_bytes();
    let [c, d] = s[7].to_be_bytes();
    Some((s[5], SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), v6.port())))
}

/// What an alias stands for, for people: the real address.
pub fn display(addr: SocketAddr) -> SocketAddr {
    unalias(addr).map_or(addr, |(_, real)| SocketAddr::V4(real))
}

struct Slot {
    /// The handle datagrams leave by (the receive loop has the tokio one).
    raw: std::net::UdpSocket,
    peer: RemoteIdentity,
    cancel: CancellationToken,
}

/// A newly opened socket: its slot, the socket, and what stops its receive loop.
pub(crate) struct Opened {
    pub(crate) slot: u16,
    pub(crate) socket: Arc<tokio::net::UdpSocket>,
    pub(crate) cancel: CancellationToken,
}

/// The open extra sockets.
#[derive(Default)]
pub(crate) struct Sockets {
    slots: Mutex<Vec<Option<Slot>>>,
    kept: Mutex<VecDeque<u16>>,
}

impl Sockets {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Slot>>> {
        self.slots.lock().expect("birthday lock poisoned")
    }

    /// Opens up to `count` sockets on `ip` (port 0) for `peer`.
    pub(crate) fn open(&self, peer: RemoteIdentity, ip: Ipv4Addr, count: usize) -> Vec<Opened> {
        let mut slots = self.slots();
        let open = slots.iter().filter(|s| s.is_some()).count();
        let count = count.min(PER_ATTEMPT).min(MAX_OPEN.saturating_sub(open));
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let Ok(std) = std::net::UdpSocket::bind((ip, 0)) else { break };
            let (Ok(raw), Ok(())) = (std.try_clone(), std.set_nonblocking(true)) else { break };
            let Ok(socket) = tokio::net::UdpSocket::from_std(std) else { break };
            let index = match slots.iter().position(Option::is_none) {
                Some(free) => free,
                None if slots.len() < MAX_OPEN => {
                    slots.push(None);
                    slots.len() - 1
                }
                None => break,
            };
            let (socket, cancel) = (Arc::new(socket), CancellationToken::new());
            slots[index] = Some(Slot { raw, peer, cancel: cancel.clone() });
            out.push(Opened { slot: index as u16, socket, cancel });
        }
        out
    }

    /// Sends `datagram` to `to` through slot `slot` (with `ttl`, if given). False if the slot
    /// is closed.
    pub(crate) fn send(&self, slot: u16, datagram: &[u8], to: SocketAddrV4, ttl: Option<u8>) -> bool {
        let slots = self.slots();
        let Some(Some(s)) = slots.get(usize::from(slot)) else { return false };
        let to = SocketAddr::V4(to);
        let sent = match ttl {
            Some(ttl) => {
                super::ttl::send(&s.raw, datagram, to, ttl).or_else(|_| s.raw.send_to(datagram, to).map(|_| ()))
            }
            // On the plain handle: tokio's `try_send_to` refuses until its reactor saw the socket
            // writable once. The socket is non-blocking: a full buffer loses the datagram.
            None => s.raw.send_to(datagram, to).map(|_| ()),
        };
        if let Err(error) = sent {
            tracing::trace!(%to, %error, slot, "birthday socket: datagram not sent");
        }
        true
    }

    /// Closes `peer`'s sockets but `keep` (the winner's, if any); the kept ones beyond
    /// [`MAX_KEPT`] close, oldest first.
    pub(crate) fn close(&self, peer: &RemoteIdentity, keep: Option<u16>) {
        let mut slots = self.slots();
        for (index, slot) in slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|s| s.peer == *peer) && Some(index as u16) != keep {
                if let Some(s) = slot.take() {
                    s.cancel.cancel();
                }
            }
        }
        let Some(keep) = keep else { return };
        let mut kept = self.kept.lock().expect("kept lock poisoned");
        kept.retain(|k| *k != keep && slots.get(usize::from(*k)).is_some_and(Option::is_some));
        kept.push_back(keep);
        while kept.len() > MAX_KEPT {
            if let Some(old) = kept.pop_front()
                && let Some(s) = slots.get_mut(usize::from(old)).and_then(Option::take)
            {
                s.cancel.cancel();
            }
        }
    }

    /// How many are open.
    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.slots().iter().filter(|s| s.is_some()).count()
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for slot in self.slots.get_mut().expect("birthday lock poisoned").iter().flatten() {
            slot.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_round_trip_and_are_not_real_addresses() {
        let to: SocketAddrV4 = "203.0.113.7:40000".parse().unwrap();
        let a = alias(255, to);
        assert_eq!(unalias(a), Some((255, to)));
        assert_eq!(display(a), SocketAddr::V4(to));
        assert!(a.to_string().starts_with("[fd57:6172:7265:6e00:0:ff:cb00:7107]"), "{a}");
        for other in
            ["203.0.113.7:40000", "[::ffff:203.0.113.7]:1", "[fd57:6172:7265:6e00:1:0:0:0]:1", "[2001:db8::1]:4"]
        {
            let other: SocketAddr = other.parse().unwrap();
            assert_eq!(unalias(other), None, "{other}");
            assert_eq!(display(other), other);
        }
    }

    #[tokio::test]
    async fn sockets_open_send_and_close_keeping_the_winner() {
        let sockets = Sockets::default();
        let peer = crate::Identity::generate().to_remote_identity();
        let opened = sockets.open(peer, Ipv4Addr::LOCALHOST, 4);
        assert_eq!(opened.len(), 4);
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(to) = receiver.local_addr().unwrap() else { unreachable!() };
        assert!(sockets.send(opened[2].slot, b"hi", to, None));
        let mut buf = [0u8; 8];
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hi"[..], opened[2].socket.local_addr().unwrap()));
        sockets.close(&peer, Some(opened[2].slot));
        assert_eq!(sockets.open_count(), 1);
        assert!(opened[0].cancel.is_cancelled() && !opened[2].cancel.is_cancelled());
        assert!(!sockets.send(opened[0].slot, b"x", to, None), "a closed slot sends nothing");
        // At most PER_ATTEMPT per attempt.
        assert_eq!(sockets.open(peer, Ipv4Addr::LOCALHOST, 10_000).len(), PER_ATTEMPT);
    }
}
