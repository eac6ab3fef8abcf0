//! IPv4 packets as the simulator sees them: parsed once (with bounds checks on every field),
//! then rewritten in place by NATs and split by links, checksums kept right.
//!
//! Only what the devices need is interpreted: the IPv4 header, UDP and TCP ports, TCP flags,
//! ICMP type. Anything else is carried as opaque payload.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Largest packet accepted: the IPv4 maximum.
pub const MAX_PACKET: usize = 65_535;

/// IP protocol numbers the devices understand.
pub const ICMP: u8 = 1;
/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;

/// TCP flags.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// Why bytes are not a packet the simulator can forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Longer than [`MAX_PACKET`].
    #[error("packet of {0} bytes exceeds the IPv4 maximum")]
    TooLong(usize),
    /// Shorter than the headers it claims.
    #[error("packet truncated: {0}")]
    Truncated(&'static str),
    /// Not IPv4.
    #[error("IP version {0} is not supported")]
    Version(u8),
    /// A header field is impossible.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// A parsed IPv4 packet. The bytes are exactly one packet (trailing bytes beyond the IPv4 total
/// length are cut off when parsing).
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    bytes: Vec<u8>,
    header_len: usize,
    offload: Offload,
}

/// Size of `struct virtio_net_hdr`, in front of every packet on a TUN device with
/// `IFF_VNET_HDR`.
pub(crate) const VNET_HEADER_LEN: usize = 10;
const VNET_NEEDS_CSUM: u8 = 1;
const VNET_GSO_NONE: u8 = 0;
const VNET_GSO_TCPV4: u8 = 1;
const VNET_GSO_ECN: u8 = 0x80;

/// What a TUN device with offloads left undone in a packet it handed over: a TCP segment larger
/// than one packet, to be cut at `gso_size` bytes of payload (TSO), and a transport checksum
/// holding only the pseudo-header sum. Packets made or parsed here have neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offload {
    /// Payload bytes per segment when the packet is a TCP super-segment; 0 otherwise.
    pub(crate) gso_size: u16,
    /// Is the transport checksum partial (pseudo-header only)?
    pub(crate) partial_checksum: bool,
    /// The segments carry ECN (the `ECN` bit of the virtio GSO type).
    pub(crate) ecn: bool,
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Packet({} ", self.protocol_name())?;
        match (self.src_port(), self.dst_port()) {
            (Some(sp), Some(dp)) => write!(f, "{}:{} -> {}:{}", self.src(), sp, self.dst(), dp)?,
            _ => write!(f, "{} -> {}", self.src(), self.dst())?,
        }
        write!(f, ", {} bytes)", self.len())
    }
}

fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for chunk in &mut chunks {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    fold(sum16(bytes))
}

impl Packet {
    /// Parses `bytes` as an IPv4 packet, checking every length it relies on.
    pub fn parse(mut bytes: Vec<u8>) -> Result<Self, PacketError> {
        if bytes.len() > MAX_PACKET {
            return Err(PacketError::TooLong(bytes.len()));
        }
        if bytes.len() < 20 {
            return Err(PacketError::Truncated("IPv4 header"));
        }
        let version = bytes[0] >> 4;
        if version != 4 {
            return Err(PacketError::Version(version));
        }
        let header_len = usize::from(bytes[0] & 0x0f) * 4;
        if header_len < 20 {
            return Err(PacketError::Malformed("IPv4 header length"));
        }
        let total = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if total < header_len {
            return Err(PacketError::Malformed("IPv4 total length"));
        }
        if bytes.len() < total {
            return Err(PacketError::Truncated("IPv4 payload"));
        }
        bytes.truncate(total);
        let packet = Self { bytes, header_len, offload: Offload::default() };
        if !packet.is_later_fragment() {
            let need = match packet.protocol() {
                UDP => 8,
                TCP => 20,
                ICMP => 8,
                _ => 0,
            };
            if packet.payload().len() < need {
                return Err(PacketError::Truncated("transport header"));
            }
            if packet.protocol() == TCP {
                let data_offset = usize::from(packet.payload()[12] >> 4) * 4;
                if data_offset < 20 || data_offset > packet.payload().len() {
                    return Err(PacketError::Malformed("TCP data offset"));
                }
            }
        }
        Ok(packet)
    }

    /// The packet's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Gives the bytes back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a parsed packet has at least its header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.bytes[12], self.bytes[13], self.bytes[14], self.bytes[15])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.bytes[16], self.bytes[17], self.bytes[18], self.bytes[19])
    }

    /// The IP protocol number.
    pub fn protocol(&self) -> u8 {
        self.bytes[9]
    }

    fn protocol_name(&self) -> String {
        match self.protocol() {
            UDP => "UDP".into(),
            TCP => "TCP".into(),
            ICMP => "ICMP".into(),
            other => format!("proto {other}"),
        }
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.bytes[8]
    }

    /// True if the don't-fragment flag is set.
    pub fn dont_fragment(&self) -> bool {
        self.bytes[6] & 0x40 != 0
    }

    fn fragment_offset_units(&self) -> u16 {
        u16::from_be_bytes([self.bytes[6] & 0x1f, self.bytes[7]])
    }

    fn more_fragments(&self) -> bool {
        self.bytes[6] & 0x20 != 0
    }

    /// True for the second and later fragments of a fragmented packet (they carry no
    /// transport header).
    pub fn is_later_fragment(&self) -> bool {
        self.fragment_offset_units() != 0
    }

    /// Everything after the IPv4 header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }

    fn has_ports(&self) -> bool {
        matches!(self.protocol(), UDP | TCP) && !self.is_later_fragment()
    }

    /// UDP or TCP source port.
    pub fn src_port(&self) -> Option<u16> {
        self.has_ports().then(|| u16::from_be_bytes([self.payload()[0], self.payload()[1]]))
    }

    /// UDP or TCP destination port.
    pub fn dst_port(&self) -> Option<u16> {
        self.has_ports().then(|| u16::from_be_bytes([self.payload()[2], self.payload()[3]]))
    }

    /// Source as a socket address (port 0 without ports).
    pub fn src_endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.src(), self.src_port().unwrap_or(0))
    }

    /// Destination as a socket address (port 0 without ports).
    pub fn dst_endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dst(), self.dst_port().unwrap_or(0))
    }

    /// TCP flags, for TCP packets that carry a header.
    pub fn tcp_flags(&self) -> Option<u8> {
        (self.protocol() == TCP && !self.is_later_fragment()).then(|| self.payload()[13])
    }

    /// ICMP type, for ICMP packets.
    pub fn icmp_type(&self) -> Option<u8> {
        (self.protocol() == ICMP && !self.is_later_fragment()).then(|| self.payload()[0])
    }

    /// Rewrites the source address and (for UDP/TCP) port, fixing the checksums.
    pub fn set_src(&mut self, endpoint: SocketAddrV4) {
        self.rewrite(12, 0, endpoint);
    }

    /// Rewrites the destination address and (for UDP/TCP) port, fixing the checksums.
    pub fn set_dst(&mut self, endpoint: SocketAddrV4) {
        self.rewrite(16, 2, endpoint);
    }

    /// The IP identification field (the fragments of one datagram share it).
    pub fn ip_id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[4], self.bytes[5]])
    }

    /// True for the first fragment of a fragmented packet (offset 0, more to come).
    pub fn is_first_fragment(&self) -> bool {
        self.more_fragments() && !self.is_later_fragment()
    }

    /// Rewrites the source address only (a later fragment has no ports).
    pub fn set_src_ip(&mut self, ip: Ipv4Addr) {
        self.bytes[12..16].copy_from_slice(&ip.octets());
        self.fix_ip_checksum();
    }

    /// Rewrites the destination address only.
    pub fn set_dst_ip(&mut self, ip: Ipv4Addr) {
        self.bytes[16..20].copy_from_slice(&ip.octets());
        self.fix_ip_checksum();
    }

    /// Writes `endpoint` at the address offset `ip_at` and the port offset `port_at` (within the
    /// transport header). A whole segment's transport checksum is recomputed; a first fragment's
    /// covers bytes it does not hold, so it is updated for the changed words (RFC 1624).
    fn rewrite(&mut self, ip_at: usize, port_at: usize, endpoint: SocketAddrV4) {
        let port_at = self.header_len + port_at;
        let words = |b: &[u8]| -> [u16; 3] {
            [u16::from_be_bytes([b[ip_at], b[ip_at + 1]]), u16::from_be_bytes([b[ip_at + 2], b[ip_at + 3]]), 0]
        };
        let mut old = words(&self.bytes);
        if self.has_ports() {
            old[2] = u16::from_be_bytes([self.bytes[port_at], self.bytes[port_at + 1]]);
        }
        self.bytes[ip_at..ip_at + 4].copy_from_slice(&endpoint.ip().octets());
        if self.has_ports() {
            self.bytes[port_at..port_at + 2].copy_from_slice(&endpoint.port().to_be_bytes());
        }
        if !(self.has_ports() && self.more_fragments()) {
            self.fix_checksums();
            return;
        }
        let mut new = words(&self.bytes);
        new[2] = endpoint.port();
        let at = self.header_len + if self.protocol() == UDP { 6 } else { 16 };
        let current = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]);
        if !(self.protocol() == UDP && current == 0) {
            // HC' = ~(~HC + ~m + m') for each changed word.
            let mut sum = u32::from(!current);
            for (m, m2) in old.iter().zip(new) {
                sum += u32::from(!*m) + u32::from(m2);
            }
            let mut value = fold(sum);
            if self.protocol() == UDP && value == 0 {
                value = 0xffff;
            }
            self.bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
        self.fix_ip_checksum();
    }

    /// Decrements the TTL; false if it reached zero (the packet must be dropped).
    pub fn decrement_ttl(&mut self) -> bool {
        if self.bytes[8] <= 1 {
            return false;
        }
        self.bytes[8] -= 1;
        self.fix_ip_checksum();
        true
    }

    fn fix_ip_checksum(&mut self) {
        self.bytes[10] = 0;
        self.bytes[11] = 0;
        let sum = checksum(&self.bytes[..self.header_len]);
        self.bytes[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    /// Recomputes the IPv4 header checksum and the UDP/TCP checksum (over the pseudo-header).
    /// Fragments carry no complete transport segment, so only the IP checksum is fixed there.
    pub fn fix_checksums(&mut self) {
        self.fix_ip_checksum();
        self.offload.partial_checksum = false;
        if !self.has_ports() || self.more_fragments() {
            return;
        }
        let at = self.header_len + if self.protocol() == UDP { 6 } else { 16 };
        if self.protocol() == UDP && self.bytes[at] == 0 && self.bytes[at + 1] == 0 {
            return; // UDP without a checksum stays without one.
        }
        self.bytes[at] = 0;
        self.bytes[at + 1] = 0;
        let segment = &self.bytes[self.header_len..];
        let mut sum = sum16(&self.bytes[12..20]) + u32::from(self.protocol()) + segment.len() as u32;
        sum += sum16(segment);
        let mut value = fold(sum);
        if self.protocol() == UDP && value == 0 {
            value = 0xffff;
        }
        self.bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    /// True if the IPv4 header checksum and (for whole UDP/TCP segments) the transport checksum
    /// are right.
    pub fn checksums_ok(&self) -> bool {
        if checksum(&self.bytes[..self.header_len]) != 0 {
            return false;
        }
        if !self.has_ports() || self.more_fragments() {
            return true;
        }
        if self.protocol() == UDP && self.payload()[6] == 0 && self.payload()[7] == 0 {
            return true;
        }
        let segment = self.payload();
        let sum = sum16(&self.bytes[12..20]) + u32::from(self.protocol()) + segment.len() as u32 + sum16(segment);
        fold(sum) == 0
    }

    /// Parses what a TUN device with `IFF_VNET_HDR` hands over: a 10-byte `virtio_net_hdr`
    /// (native byte order) then the packet. Only TCPv4 segmentation is accepted (the only kind
    /// the devices are offered).
    /// `l2_len` bytes of link-layer header (14 for Ethernet on a TAP device, 0 on TUN) sit
    /// between the two and are skipped.
    pub(crate) fn parse_vnet(frame: &[u8], l2_len: usize) -> Result<Self, PacketError> {
        let (header, rest) =
            frame.split_first_chunk::<VNET_HEADER_LEN>().ok_or(PacketError::Truncated("virtio-net header"))?;
        let bytes = rest.get(l2_len..).ok_or(PacketError::Truncated("link-layer header"))?;
        let gso_size = u16::from_ne_bytes([header[4], header[5]]);
        let offload = match header[1] & !VNET_GSO_ECN {
            VNET_GSO_NONE => Offload { gso_size: 0, partial_checksum: false, ecn: false },
            VNET_GSO_TCPV4 if gso_size > 0 => {
                Offload { gso_size, partial_checksum: false, ecn: header[1] & VNET_GSO_ECN != 0 }
            }
            _ => return Err(PacketError::Malformed("virtio-net GSO type")),
        };
        let mut packet = Self::parse(bytes.to_vec())?;
        packet.offload = Offload { partial_checksum: header[0] & VNET_NEEDS_CSUM != 0, ..offload };
        Ok(packet)
    }

    /// The `virtio_net_hdr` to write in front of this packet to a TUN device with
    /// `IFF_VNET_HDR`: whatever is still left undone, for the receiving kernel to finish.
    /// `l2_len` is the link-layer header the packet is written behind (as in `parse_vnet`).
    pub(crate) fn vnet_header(&self, l2_len: usize) -> [u8; VNET_HEADER_LEN] {
        let mut header = [0u8; VNET_HEADER_LEN];
        let has_ports = self.has_ports();
        let transport_len = match self.protocol() {
            TCP if has_ports => usize::from(self.bytes[self.header_len + 12] >> 4) * 4,
            UDP if has_ports => 8,
            _ => 0,
        };
        if self.offload.gso_size > 0 && self.protocol() == TCP && transport_len > 0 {
            header[1] = VNET_GSO_TCPV4 | if self.offload.ecn { VNET_GSO_ECN } else { 0 };
            header[2..4].copy_from_slice(&((l2_len + self.header_len + transport_len) as u16).to_ne_bytes());
            header[4..6].copy_from_slice(&self.offload.gso_size.to_ne_bytes());
        }
        if self.offload.partial_checksum && transport_len > 0 {
            header[0] = VNET_NEEDS_CSUM;
            header[6..8].copy_from_slice(&((l2_len + self.header_len) as u16).to_ne_bytes());
            let offset: u16 = if self.protocol() == TCP { 16 } else { 6 };
            header[8..10].copy_from_slice(&offset.to_ne_bytes());
        }
        header
    }

    /// The size of the largest packet this one stands for on the wire: its own length, or for
    /// a TCP super-segment, the length of one full segment.
    pub(crate) fn wire_len(&self) -> usize {
        let gso = usize::from(self.offload.gso_size);
        if gso == 0 || self.protocol() != TCP || self.is_later_fragment() {
            return self.len();
        }
        let headers = self.header_len + usize::from(self.bytes[self.header_len + 12] >> 4) * 4;
        self.len().min(headers + gso)
    }

    /// True if nothing is left undone: one wire packet with complete checksums.
    pub(crate) fn is_plain(&self) -> bool {
        self.offload == Offload::default()
    }

    /// Hands `f` the packet as the wire would carry it: a TCP super-segment cut into segments
    /// of at most `gso_size` payload bytes (sequence numbers, IP IDs, lengths and flags as a
    /// NIC doing TSO would set them), every checksum complete.
    pub(crate) fn for_each_plain(mut self, mut f: impl FnMut(Packet)) {
        let offload = self.offload;
        let tcp_header = if self.protocol() == TCP && !self.is_later_fragment() {
            usize::from(self.bytes[self.header_len + 12] >> 4) * 4
        } else {
            0
        };
        let mss = usize::from(offload.gso_size);
        let data_at = self.header_len + tcp_header;
        if mss == 0 || tcp_header == 0 || self.bytes.len() - data_at <= mss {
            self.offload = Offload::default();
            if offload.partial_checksum {
                self.fix_checksums();
            }
            return f(self);
        }
        let (headers, data) = self.bytes.split_at(data_at);
        let seq = u32::from_be_bytes(headers[self.header_len + 4..self.header_len + 8].try_into().expect("4 bytes"));
        let id = u16::from_be_bytes([headers[4], headers[5]]);
        let flags = headers[self.header_len + 13];
        let count = data.len().div_ceil(mss);
        for (i, chunk) in data.chunks(mss).enumerate() {
            let mut bytes = Vec::with_capacity(data_at + chunk.len());
            bytes.extend_from_slice(headers);
            bytes.extend_from_slice(chunk);
            let total = bytes.len() as u16;
            bytes[2..4].copy_from_slice(&total.to_be_bytes());
            bytes[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            let at = self.header_len;
            bytes[at + 4..at + 8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
            let mut segment_flags = flags;
            if i + 1 < count {
                segment_flags &= !(tcp_flags::FIN | tcp_flags::PSH);
            }
            if i > 0 {
                segment_flags &= !tcp_flags::CWR;
            }
            bytes[at + 13] = segment_flags;
            let mut segment = Packet { bytes, header_len: self.header_len, offload: Offload::default() };
            segment.fix_checksums();
            f(segment);
        }
    }

    /// Builds a UDP packet (checksummed; DF set, as QUIC stacks do).
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        let mut segment = Vec::with_capacity(8 + payload.len());
        segment.extend_from_slice(&src.port().to_be_bytes());
        segment.extend_from_slice(&dst.port().to_be_bytes());
        segment.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        segment.extend_from_slice(&[0xff, 0xff]); // non-zero placeholder: computed below
        segment.extend_from_slice(payload);
        Self::build(*src.ip(), *dst.ip(), UDP, true, &segment)
    }

    /// Builds a TCP segment with the given flags, sequence and acknowledgement numbers.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Self {
        let mut segment = Vec::with_capacity(20 + payload.len());
        segment.extend_from_slice(&src.port().to_be_bytes());
        segment.extend_from_slice(&dst.port().to_be_bytes());
        segment.extend_from_slice(&seq.to_be_bytes());
        segment.extend_from_slice(&ack.to_be_bytes());
        segment.push(5 << 4);
        segment.push(flags);
        segment.extend_from_slice(&65535u16.to_be_bytes());
        segment.extend_from_slice(&[0, 0, 0, 0]);
        segment.extend_from_slice(payload);
        Self::build(*src.ip(), *dst.ip(), TCP, true, &segment)
    }

    /// Builds an ICMP message: `type`, `code`, the 4 "rest of header" bytes, then `body`.
    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Self {
        let mut message = vec![kind, code, 0, 0];
        message.extend_from_slice(&rest);
        message.extend_from_slice(body);
        let sum = checksum(&message);
        message[2..4].copy_from_slice(&sum.to_be_bytes());
        Self::build(src, dst, ICMP, false, &message)
    }

    fn build(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, dont_fragment: bool, payload: &[u8]) -> Self {
        let total = 20 + payload.len();
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&[0x45, 0]);
        bytes.extend_from_slice(&(total as u16).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, if dont_fragment { 0x40 } else { 0 }, 0, 64, protocol, 0, 0]);
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(payload);
        let mut packet = Self { bytes, header_len: 20, offload: Offload::default() };
        packet.fix_checksums();
        packet
    }

    /// The ICMP "fragmentation needed" (type 3, code 4) a router at `router` sends back for this
    /// packet when the next hop's MTU is `mtu`: it quotes the header and 8 payload bytes.
    pub fn fragmentation_needed(&self, router: Ipv4Addr, mtu: u16) -> Self {
        let rest = [0, 0, (mtu >> 8) as u8, mtu as u8];
        let quote_len = (self.header_len + 8).min(self.len());
        Self::icmp(router, self.src(), 3, 4, rest, &self.bytes[..quote_len])
    }

    /// The ICMP "port unreachable" (type 3, code 3) a host or router at `from` sends back for
    /// this packet: it quotes the header and 8 payload bytes.
    pub fn port_unreachable(&self, from: Ipv4Addr) -> Self {
        let quote_len = (self.header_len + 8).min(self.len());
        Self::icmp(from, self.src(), 3, 3, [0; 4], &self.bytes[..quote_len])
    }

    /// Splits this packet into fragments of at most `mtu` bytes (payload in multiples of 8 bytes,
    /// as IPv4 requires). `None` if the packet has DF set or the MTU cannot hold a header plus 8
    /// bytes.
    pub fn fragment(&self, mtu: usize) -> Option<Vec<Packet>> {
        if self.len() <= mtu {
            return Some(vec![self.clone()]);
        }
        if self.dont_fragment() || mtu < self.header_len + 8 {
            return None;
        }
        let chunk = (mtu - self.header_len) / 8 * 8;
        let payload = self.payload();
        let base_offset = usize::from(self.fragment_offset_units()) * 8;
        let last_had_more = self.more_fragments();
        let mut out = Vec::new();
        let mut start = 0;
        while start < payload.len() {
            let end = (start + chunk).min(payload.len());
            let more = end < payload.len() || last_had_more;
            let mut bytes = Vec::with_capacity(self.header_len + end - start);
            bytes.extend_from_slice(&self.bytes[..self.header_len]);
            bytes.extend_from_slice(&payload[start..end]);
            let total = bytes.len() as u16;
            bytes[2..4].copy_from_slice(&total.to_be_bytes());
            let offset_units = ((base_offset + start) / 8) as u16;
            bytes[6] = (bytes[6] & 0x40) | if more { 0x20 } else { 0 } | ((offset_units >> 8) as u8 & 0x1f);
            bytes[7] = offset_units as u8;
            let mut fragment = Self { bytes, header_len: self.header_len, offload: Offload::default() };
            fragment.fix_ip_checksum();
            out.push(fragment);
            start = end;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_tcp_super_segment_is_cut_as_a_nic_would_cut_it() {
        let data: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let flags = tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN | tcp_flags::CWR;
        let mut big = Packet::tcp(ep("10.0.0.1:1000"), ep("10.0.0.2:80"), flags, 7_000, 1, &data);
        // What a kernel with TSO hands over: the checksum only over the pseudo-header.
        let header_len = big.header_len;
        big.bytes[header_len + 16..header_len + 18].copy_from_slice(&[0x12, 0x34]);
        big.offload = Offload { gso_size: 1448, partial_checksum: true, ecn: false };
        let frame: Vec<u8> = big.vnet_header(0).iter().chain(big.as_bytes()).copied().collect();
        let parsed = Packet::parse_vnet(&frame, 0).unwrap();
        assert_eq!(parsed.offload, big.offload, "the virtio header round-trips");

        let mut segments = Vec::new();
        parsed.for_each_plain(|p| segments.push(p));
        assert_eq!(segments.len(), 3);
        let mut joined = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            assert!(segment.is_plain() && segment.checksums_ok(), "segment {i}");
            let tcp = segment.payload();
            let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
            assert_eq!(seq, 7_000 + 1448 * i as u32);
            let segment_flags = segment.tcp_flags().unwrap();
            assert_eq!(segment_flags & (tcp_flags::FIN | tcp_flags::PSH) != 0, i == 2, "FIN/PSH only on the last");
            assert_eq!(segment_flags & tcp_flags::CWR != 0, i == 0, "CWR only on the first");
            joined.extend_from_slice(&tcp[20..]);
        }
        assert_eq!(joined, data);
        assert_eq!(segments.iter().map(|s| s.payload().len() - 20).collect::<Vec<_>>(), vec![1448, 1448, 1104]);

        // A small packet with a partial checksum just gets its checksum finished.
        let mut small = Packet::udp(ep("10.0.0.1:1"), ep("10.0.0.2:2"), b"hi");
        small.offload = Offload { gso_size: 0, partial_checksum: true, ecn: false };
        let mut out = Vec::new();
        small.for_each_plain(|p| out.push(p));
        assert!(out.len() == 1 && out[0].is_plain() && out[0].checksums_ok());
        assert!(Packet::parse_vnet(&[0u8; 5], 0).is_err(), "a short frame is refused");
        assert!(Packet::parse_vnet(&[0u8; 12], 14).is_err(), "so is one shorter than its link header");
    }

    #[test]
    fn built_packets_parse_back_with_valid_checksums() {
        let udp = Packet::udp(ep("10.0.0.2:5000"), ep("198.51.100.7:3478"), b"hello");
        let parsed = Packet::parse(udp.as_bytes().to_vec()).unwrap();
        assert_eq!(parsed, udp);
        assert!(parsed.checksums_ok());
        assert_eq!((parsed.src_endpoint(), parsed.dst_endpoint()), (ep("10.0.0.2:5000"), ep("198.51.100.7:3478")));
        assert_eq!(parsed.payload().len(), 13);
        assert!(parsed.dont_fragment());

        let tcp = Packet::tcp(ep("10.0.0.2:40000"), ep("198.51.100.7:80"), tcp_flags::SYN, 7, 0, b"");
        assert!(Packet::parse(tcp.as_bytes().to_vec()).unwrap().checksums_ok());
        assert_eq!(tcp.tcp_flags(), Some(tcp_flags::SYN));
    }

    #[test]
    fn rewriting_addresses_keeps_checksums_valid() {
        let mut packet = Packet::udp(ep("10.0.0.2:5000"), ep("198.51.100.7:3478"), b"payload bytes");
        packet.set_src(ep("203.0.113.1:61000"));
        assert!(packet.checksums_ok());
        assert_eq!(packet.src_endpoint(), ep("203.0.113.1:61000"));
        packet.set_dst(ep("10.0.0.9:1"));
        assert!(packet.checksums_ok());
        let mut tcp = Packet::tcp(ep("10.0.0.2:40000"), ep("198.51.100.7:80"), tcp_flags::ACK, 1, 2, b"GET /");
        tcp.set_src(ep("203.0.113.1:1024"));
        assert!(tcp.checksums_ok());
        assert!(tcp.decrement_ttl());
        assert!(tcp.checksums_ok());
        assert_eq!(tcp.ttl(), 63);
    }

    #[test]
    fn hostile_bytes_are_refused_with_a_reason() {
        assert_eq!(Packet::parse(vec![0x45; 10]), Err(PacketError::Truncated("IPv4 header")));
        assert_eq!(Packet::parse(vec![0x65; 40]), Err(PacketError::Version(6)));
        let mut short_ihl = Packet::udp(ep("1.1.1.1:1"), ep("2.2.2.2:2"), b"x").into_bytes();
        short_ihl[0] = 0x44;
        assert_eq!(Packet::parse(short_ihl), Err(PacketError::Malformed("IPv4 header length")));
        let mut long_total = Packet::udp(ep("1.1.1.1:1"), ep("2.2.2.2:2"), b"x").into_bytes();
        long_total[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(Packet::parse(long_total), Err(PacketError::Truncated("IPv4 payload")));
        let mut no_udp = Packet::udp(ep("1.1.1.1:1"), ep("2.2.2.2:2"), b"").into_bytes();
        no_udp.truncate(24);
        no_udp[2..4].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(Packet::parse(no_udp), Err(PacketError::Truncated("transport header")));
        let mut bad_offset = Packet::tcp(ep("1.1.1.1:1"), ep("2.2.2.2:2"), 0, 0, 0, b"").into_bytes();
        bad_offset[20 + 12] = 0xf0;
        assert_eq!(Packet::parse(bad_offset), Err(PacketError::Malformed("TCP data offset")));
        assert_eq!(Packet::parse(vec![0; MAX_PACKET + 1]), Err(PacketError::TooLong(MAX_PACKET + 1)));
        // Trailing bytes past the total length are cut off, not kept.
        let mut padded = Packet::udp(ep("1.1.1.1:1"), ep("2.2.2.2:2"), b"x").into_bytes();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(Packet::parse(padded).unwrap().len(), 29);
    }

    #[test]
    fn fragments_carry_the_whole_payload_at_the_right_offsets() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut packet = Packet::udp(ep("10.0.0.2:5000"), ep("10.0.1.2:6000"), &payload);
        packet.bytes[6] &= !0x40; // clear DF
        packet.fix_checksums();
        let fragments = packet.fragment(1500).unwrap();
        assert_eq!(fragments.len(), 3);
        let mut rebuilt = Vec::new();
        for (i, fragment) in fragments.iter().enumerate() {
            assert!(fragment.len() <= 1500);
            assert_eq!(usize::from(fragment.fragment_offset_units()) * 8, rebuilt.len());
            assert_eq!(fragment.more_fragments(), i < 2);
            assert!(checksum(&fragment.bytes[..20]) == 0);
            rebuilt.extend_from_slice(fragment.payload());
        }
        assert_eq!(rebuilt, packet.payload());
        // DF packets are not fragmented; the sender gets told the MTU instead.
        let df = Packet::udp(ep("10.0.0.2:5000"), ep("10.0.1.2:6000"), &payload);
        assert!(df.fragment(1500).is_none());
        let icmp = df.fragmentation_needed("10.0.0.1".parse().unwrap(), 1500);
        assert_eq!(icmp.dst(), "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(icmp.icmp_type(), Some(3));
        assert_eq!(&icmp.payload()[6..8], &1500u16.to_be_bytes());
        assert_eq!(checksum(icmp.payload()), 0);
        assert_eq!(&icmp.payload()[8..36], &df.as_bytes()[..28]);
    }
}
